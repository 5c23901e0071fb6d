"""Fine-tuning on Kubernetes through Kubeflow Trainer (TrainJob), with the kubeflow SDK.

    import hone.kube as kube

    job = kube.submit("sft", "train.yaml", num_nodes=2, resources_per_node={"gpu": 1, "memory": "64Gi"},
                      image="quay.io/me/hone:0.1", pvc="shared")
    kube.wait_for(job.name, timeout=3600, delete_on_failure=True)
    for line in kube.logs(job.name):
        print(line)

``submit(..., dry_run=True)`` renders the manifest with no cluster; ``backend="local"`` runs the same job on
this machine; :func:`train` offers the Training Operator ``train()`` shape. See docs/kubernetes.md.
"""
from __future__ import annotations

from hone.kube.api import train
from hone.kube.config import DEFAULT_SECRETS, KubeJobConfig, SecretEnv
from hone.kube.credentials import ClusterAccess
from hone.kube.manifest import JobPlan, manifest_yaml
from hone.kube.submit import Submission, prepare, submit
from hone.kube.watch import JobStatus, StepStatus, delete, list_jobs, logs, status, wait_for

__all__ = ["ClusterAccess", "DEFAULT_SECRETS", "JobPlan", "JobStatus", "KubeJobConfig", "SecretEnv", "StepStatus",
           "Submission", "delete", "list_jobs", "logs", "manifest_yaml", "prepare", "status", "submit", "train",
           "wait_for"]
