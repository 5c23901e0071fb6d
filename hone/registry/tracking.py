"""Log a training run to MLflow while it runs (Training Hub's ``mlflow_tracking_uri``, ``mlflow_experiment_name``,
``mlflow_run_name``).

The trainer calls three methods on rank 0: :meth:`MLflowTracker.start` with the run's parameters,
:meth:`MLflowTracker.log_step` with each line it writes to ``training_metrics.jsonl``, and
:meth:`MLflowTracker.finish` with the :class:`~hone.training.run.TrainResult` (or a status when training failed).
A tracking store that cannot be opened fails the run at ``start`` (before any training time is spent); a
failure later only disables tracking, with one warning: training never stops because MLflow did.

Tracking turns on as in Training Hub (instructlab-training's rule): any ``mlflow_*`` parameter, or the environment
variable ``MLFLOW_TRACKING_URI`` or ``MLFLOW_EXPERIMENT_NAME``; each parameter falls back to its ``MLFLOW_*`` variable.
Run names may hold the placeholders ``{time}``, ``{utc_time}``, ``{rank}`` and ``{local_rank}``.

The run is tagged with the output directory, so a later ``hone registry register`` into the same store logs
the model into this run instead of creating another one.
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

from hone.errors import HoneError
from hone.secrets import scrub_mapping, scrub_text, secret_env_values

log = logging.getLogger("hone")

_SKIP = {"step", "sample_ids"}
_FLUSH_EVERY_S = 2.0      # metrics are sent in batches at most this far apart (and at the end)
_FLUSH_EVERY_STEPS = 50
_SUMMARY = ("final_loss", "first_loss", "samples_trained", "tokens_trained", "elapsed_s")


def step_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric fields of one ``training_metrics.jsonl`` record (loss, lr, grad_norm, tokens_per_second,
    val_loss...), under their own names; ``step`` is the x axis."""
    return {k: float(v) for k, v in record.items()
            if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}


def summary_metrics(result: Any) -> dict[str, float]:
    """The run's summary figures (``training_final_loss``...) from a :class:`~hone.training.run.TrainResult`."""
    values = {f"training_{k}": getattr(result, k, None) for k in _SUMMARY}
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v}


def expand_run_name(name: str | None) -> str | None:
    """Training Hub's run-name placeholders: ``{time}``, ``{utc_time}``, ``{rank}``, ``{local_rank}``."""
    if not name:
        return name
    for key, value in (("{time}", dt.datetime.now().isoformat()), ("{utc_time}", dt.datetime.now(dt.timezone.utc)),
                       ("{rank}", os.environ.get("RANK", 0)), ("{local_rank}", os.environ.get("LOCAL_RANK", 0))):
        name = name.replace(key, str(value))
    return name


def require_package(package: str, what: str, where: str, extra: str) -> None:
    """A clear error, before any training time is spent, when the tracker's package is not installed."""
    if importlib.util.find_spec(package) is None:
        raise HoneError(f"{what} tracking needs the {package} package, which is not installed", where=where,
                        fix=f"pip install {package}  (or pip install 'hone[{extra}]')")


class MLflowTracker:
    """One MLflow run for one training run. Use :meth:`from_config`; ``None`` there means tracking is off."""

    def __init__(self, tracking_uri: str | None = None, experiment_name: str | None = None,
                 run_name: str | None = None, *, run_dir: str | Path | None = None, home: str | Path | None = None):
        from hone.registry.mlflow_backend import MLflowRegistry

        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        self.store = MLflowRegistry(home=home, tracking_uri=uri, experiment_name=experiment_name or "hone")
        self.run_name = run_name
        self.run_dir = Path(run_dir).resolve() if run_dir else None
        self.run_id: str | None = None
        self._pending: list[Any] = []
        self._last_flush = 0.0
        self._broken = False

    @classmethod
    def from_config(cls, train_cfg: Any, env: Mapping[str, str] | None = None) -> "MLflowTracker | None":
        """A tracker when any ``mlflow_*`` parameter is set on the training configuration, or
        ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME`` in the environment (``MLFLOW_RUN_NAME`` only names
        the run); the store defaults to the embedded one under ``$HONE_HOME``."""
        env = os.environ if env is None else env
        uri, experiment, name = (getattr(train_cfg, f"mlflow_{k}", None) or env.get(f"MLFLOW_{k.upper()}") or None
                                 for k in ("tracking_uri", "experiment_name", "run_name"))
        params = [f"parameter {k}" for k in ("mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name")
                  if getattr(train_cfg, k, None)]
        envs = [f"environment variable {k}" for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME") if env.get(k)]
        if not (params or envs):
            return None
        require_package("mlflow", "MLflow", (params or envs)[0], "registry")
        return cls(uri, experiment, expand_run_name(name), run_dir=getattr(train_cfg, "ckpt_output_dir", None))

    # -- the three calls -------------------------------------------------------------------------------
    def start(self, params: Mapping[str, Any], *, resume: bool = False) -> str:
        """Open the run (a resumed training continues its unfinished run) and log the parameters."""
        from mlflow.entities import Param

        from hone.registry.mlflow_backend import RUN_DIR_TAG, _param_text, _store_errors

        store = self.store
        client = store.client
        with _store_errors("cannot start MLflow tracking", store.where):
            exp_id = store.experiment_id()
            if resume and self.run_dir is not None:
                self.run_id = self._unfinished_run(exp_id)
                if self.run_id:
                    client.update_run(self.run_id, status="RUNNING")
            if self.run_id is None:
                from hone.version import __version__

                tags = {"hone_version": __version__}
                if self.run_dir is not None:
                    tags[RUN_DIR_TAG] = str(self.run_dir)
                run = client.create_run(exp_id, run_name=self.run_name, tags=tags)
                self.run_id = run.info.run_id
                clean = scrub_mapping(dict(params), secret_env_values())
                items = [Param(k, _param_text(v)) for k, v in clean.items() if v is not None]
                for i in range(0, len(items), 100):
                    client.log_batch(self.run_id, params=items[i:i + 100])
        log.info("MLflow tracking: run %s in experiment %r of %s", self.run_id, store.experiment_name, store.where)
        return self.run_id

    def log_step(self, record: Mapping[str, Any]) -> None:
        """One ``training_metrics.jsonl`` record: every numeric field becomes a metric at ``record['step']``."""
        from mlflow.entities import Metric

        if self.run_id is None or self._broken:
            return
        now = int(time.time() * 1000)
        step = int(record["step"])
        self._pending += [Metric(k, v, now, step) for k, v in step_metrics(record).items()]
        if len(self._pending) >= _FLUSH_EVERY_STEPS * 8 or time.monotonic() - self._last_flush >= _FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if not self._pending or self.run_id is None or self._broken:
            return
        batch, self._pending = self._pending, []
        try:
            for i in range(0, len(batch), 1000):
                self.store.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
        except Exception as err:  # tracking must never stop training
            self._broken = True
            log.warning("MLflow tracking stopped (training goes on): %s", scrub_text(str(err)).splitlines()[0])
        self._last_flush = time.monotonic()

    def finish(self, result: Any = None, *, status: str | None = None) -> None:
        """Send what is pending, the run's summary figures and its charts, and close the run:
        FINISHED, KILLED (preempted: a resumed training continues it) or FAILED (``status='FAILED'``)."""
        from mlflow.entities import Metric

        from hone.registry.mlflow_backend import stage_artifacts

        if self.run_id is None:
            return
        self.flush()
        client = self.store.client
        if status is None:
            status = "KILLED" if getattr(result, "status", "completed") == "preempted" else "FINISHED"
        try:
            if result is not None and not self._broken:
                now = int(time.time() * 1000)
                metrics = [Metric(k, v, now, 0) for k, v in summary_metrics(result).items()]
                if metrics:
                    client.log_batch(self.run_id, metrics=metrics)
                out = getattr(result, "output_dir", None) or self.run_dir
                if out is not None:
                    import tempfile

                    with tempfile.TemporaryDirectory() as tmp:
                        staged = stage_artifacts(Path(out), (), Path(tmp), secret_env_values())
                        if staged:
                            client.log_artifacts(self.run_id, tmp)
            client.set_terminated(self.run_id, status)
        except Exception as err:
            log.warning("MLflow tracking could not close run %s: %s", self.run_id,
                        scrub_text(str(err)).splitlines()[0])

    # -- helpers -------------------------------------------------------------------------------------------
    def _unfinished_run(self, exp_id: str) -> str | None:
        from hone.registry.mlflow_backend import RUN_DIR_TAG

        if "'" in str(self.run_dir):
            return None
        runs = self.store.client.search_runs(
            [exp_id], f"tags.`{RUN_DIR_TAG}` = '{self.run_dir}' and attributes.status != 'FINISHED'",
            max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None
