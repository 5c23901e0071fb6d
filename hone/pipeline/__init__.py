"""The four-stage pipeline: stage functions, the local runner, the report, and the KFP pipelines."""
