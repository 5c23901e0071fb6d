"""The experiment trackers of a training run: MLflow (:mod:`hone.registry.tracking`), Weights & Biases and
TensorBoard, several at once, each turned on as Training Hub turns it on.

Turning on (Training Hub's rule, as instructlab-training applies it; a parameter wins over its variable):

- MLflow: any ``mlflow_*`` parameter, or ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME`` in the environment;
- Weights & Biases: ``wandb_project`` or ``WANDB_PROJECT`` (``wandb_entity`` / ``WANDB_ENTITY`` and
  ``wandb_run_name`` / ``WANDB_RUN_NAME`` only say where and under what name); wandb's own variables
  (``WANDB_MODE=offline``, ``WANDB_DIR``, ``WANDB_API_KEY``...) work as wandb documents them;
- TensorBoard: ``tensorboard_log_dir``.

Every tracker follows :class:`~hone.training.run.RunTracker` (``start`` with the run's parameters, secrets
redacted; ``log_step`` with each ``training_metrics.jsonl`` record, metrics under the same names; ``finish``).
A tracker whose package is missing is an error when the run is configured; one that cannot start fails the run
before training; a failure later logs one warning and training goes on without that tracker.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hone.errors import HoneError
from hone.registry.tracking import MLflowTracker, expand_run_name, require_package, step_metrics, summary_metrics
from hone.secrets import scrub_mapping, scrub_text, secret_env_values

log = logging.getLogger("hone")


def _first_line(err: BaseException) -> str:
    """An underlying library's message, secrets masked, on one line."""
    return (scrub_text(str(err)).strip() or type(err).__name__).splitlines()[0]


def tracker_from_config(train_cfg: Any, env: Mapping[str, str] | None = None) -> Any:
    """The run's tracker (one, or a :class:`CompositeTracker` of several), or ``None`` when none is on."""
    env = os.environ if env is None else env
    trackers: list[Any] = []
    mlflow = MLflowTracker.from_config(train_cfg, env)
    if mlflow is not None:
        trackers.append(mlflow)
    project = getattr(train_cfg, "wandb_project", None) or env.get("WANDB_PROJECT")
    if project:
        require_package("wandb", "Weights & Biases", "parameter wandb_project" if getattr(
            train_cfg, "wandb_project", None) else "environment variable WANDB_PROJECT", "tracking")
        trackers.append(WandbTracker(project, getattr(train_cfg, "wandb_entity", None) or env.get("WANDB_ENTITY"),
                                     getattr(train_cfg, "wandb_run_name", None) or env.get("WANDB_RUN_NAME"),
                                     run_dir=None if env.get("WANDB_DIR") else train_cfg.ckpt_output_dir))
    if getattr(train_cfg, "tensorboard_log_dir", None):
        require_package("tensorboard", "TensorBoard", "parameter tensorboard_log_dir", "tracking")
        trackers.append(TensorBoardTracker(train_cfg.tensorboard_log_dir))
    if len(trackers) > 1:
        return CompositeTracker(trackers)
    return trackers[0] if trackers else None


class CompositeTracker:
    """Several trackers fed the same calls. If one cannot start, those already started are closed as failed."""

    def __init__(self, trackers: Sequence[Any]):
        self.trackers = list(trackers)

    def start(self, params: Mapping[str, Any], *, resume: bool = False) -> list[Any]:
        started: list[Any] = []
        try:
            for tracker in self.trackers:
                tracker.start(params, resume=resume)
                started.append(tracker)
        except BaseException:
            for tracker in started:
                tracker.finish(status="FAILED")
            raise
        return started

    def log_step(self, record: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_step(record)

    def finish(self, result: Any = None, *, status: str | None = None) -> None:
        for tracker in self.trackers:
            tracker.finish(result, status=status)


class _Guarded:
    """A tracker that stops, with one warning, at its first failure after it started."""

    label = "tracking"
    _broken = False

    def _guard(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._broken:
            return
        try:
            call(*args, **kwargs)
        except Exception as err:  # tracking must never stop training
            self._broken = True
            log.warning("%s tracking stopped (training goes on): %s", self.label, _first_line(err))


class WandbTracker(_Guarded):
    """One Weights & Biases run. Its local files (``wandb/<run>/``, the whole run with ``WANDB_MODE=offline``)
    go under ``run_dir`` (the output directory), or where ``WANDB_DIR`` says when ``run_dir`` is None."""

    label = "Weights & Biases"

    def __init__(self, project: str, entity: str | None = None, run_name: str | None = None, *,
                 run_dir: str | Path | None = None):
        self.project, self.entity, self.run_name = project, entity, run_name
        self.run_dir = Path(run_dir) if run_dir else None
        self.run: Any = None

    def start(self, params: Mapping[str, Any], *, resume: bool = False) -> str:
        import wandb

        wandb_log = logging.getLogger("wandb")
        if wandb_log.level == logging.NOTSET:  # its INFO chatter (settings, the whole config) off, unless configured
            wandb_log.setLevel(logging.WARNING)
        kwargs: dict[str, Any] = {"project": self.project, "entity": self.entity,
                                  "name": expand_run_name(self.run_name),
                                  "config": scrub_mapping(dict(params), secret_env_values())}
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            kwargs["dir"] = str(self.run_dir)
        try:
            self.run = wandb.init(**kwargs)
        except Exception as err:
            raise HoneError(f"cannot start Weights & Biases tracking: {_first_line(err)}",
                            where=f"wandb project {self.project!r}",
                            fix="log in (wandb login, or WANDB_API_KEY in the environment), or set "
                                "WANDB_MODE=offline to keep the run on disk") from None
        log.info("Weights & Biases tracking: run %s in project %r (files in %s)", self.run.id, self.project,
                 Path(self.run.dir).parent)
        return self.run.id

    def log_step(self, record: Mapping[str, Any]) -> None:
        if self.run is not None:
            self._guard(self.run.log, step_metrics(record), step=int(record["step"]))

    def finish(self, result: Any = None, *, status: str | None = None) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            if result is not None and not self._broken:
                run.summary.update(summary_metrics(result))
            if getattr(result, "status", None) == "preempted":
                run.mark_preempting()
            run.finish(exit_code=1 if status == "FAILED" else 0)
        except Exception as err:
            log.warning("Weights & Biases tracking could not close run %s: %s", run.id, _first_line(err))


class TensorBoardTracker(_Guarded):
    """TensorBoard event files in ``<log_dir>/<time>_rank<rank>/`` (Training Hub's run directory name): the
    parameters on the HPARAMS tab, every step metric as a scalar at its step."""

    label = "TensorBoard"

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.run_dir: Path | None = None
        self.writer: Any = None

    def start(self, params: Mapping[str, Any], *, resume: bool = False) -> str:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = self.log_dir / expand_run_name("{time}_rank{rank}")
        clean = scrub_mapping(dict(params), secret_env_values())
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in clean.items() if v is not None}
        try:
            self.writer = SummaryWriter(log_dir=str(self.run_dir), flush_secs=30)
            self.writer.add_hparams(hparams, {}, run_name=".")
        except OSError as err:
            raise HoneError(f"cannot write TensorBoard logs: {err.strerror or err}", where=str(self.run_dir),
                            fix="set tensorboard_log_dir to a writable directory") from None
        log.info("TensorBoard tracking: event files in %s", self.run_dir)
        return str(self.run_dir)

    def log_step(self, record: Mapping[str, Any]) -> None:
        if self.writer is not None:
            self._guard(self._scalars, step_metrics(record), int(record["step"]))

    def _scalars(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def finish(self, result: Any = None, *, status: str | None = None) -> None:
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        try:
            writer.close()
        except Exception as err:
            log.warning("TensorBoard tracking could not close %s: %s", self.run_dir, _first_line(err))
