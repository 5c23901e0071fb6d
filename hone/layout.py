"""Where a run's files are: the one place that names them.

Two layouts, both small frozen values over a root directory (nothing here touches the disk unless asked):

:class:`TrainingLayout` — a training output directory (``ckpt_output_dir``)::

    <root>/
      hf_format/samples_<N>/      a model after N training samples, as Training Hub's backends name it
                                  (``samples_<N>.0`` for OSFT, as mini-trainer counts samples in a float;
                                  ``last_epoch/`` instead with keep_last_checkpoint_only, as instructlab)
      hf_format/samples_<N>_best_val_loss/   the model at a new lowest validation loss (save_best_val_loss)
      hf_format/final, epoch_<n>  hone's names of the final and per-epoch models: relative links to the
                                  ``samples_<N>`` directory holding them (the weights are written once)
      hf_format/<name>_adapter/   LoRA: the adapter beside each model (``final_adapter`` for ``final``)
      checkpoints/step_<NNNNNNNN>/  full-state checkpoints (resumable)
      data/                       the processed data (unless ``data_output_dir`` is set): data.jsonl,
                                  eval.jsonl, report.json
      training_metrics.jsonl      one record per optimizer step
      training_params.json        the run's parameters (its identity)
      training_result.json        where the outputs are and the headline figures (written last)
      loss_chart.png, loss_chart.html
      .hone-launch.json           the configuration handed to torchrun workers
      .hone-callbacks.pkl         the run's callback objects, pickled for the torchrun workers

:class:`PipelineLayout` — a local pipeline run directory::

    <run_dir>/
      manifest.json
      report.html
      01-dataset/ 02-training/ 03-evaluation/ 04-registration/    each with its stage.json

This module is the lowest layer: it imports only the standard library.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# -- a training output directory ---------------------------------------------------------------------------
HF_DIR = "hf_format"
FINAL = "final"
EPOCH_PREFIX = "epoch_"
SAMPLES_PREFIX = "samples_"
LAST_EPOCH = "last_epoch"  # instructlab's one directory, rewritten by every save, with keep_last_checkpoint_only
BEST_VAL_LOSS_SUFFIX = "_best_val_loss"  # mini-trainer's suffix of a checkpoint saved at a new best validation loss
ADAPTER_SUFFIX = "_adapter"
DATA_DIR = "data"
# inside the processed-data directory (written by hone.data.prepare)
PROCESSED_SAMPLES_FILE = "data.jsonl"
PROCESSED_EVAL_FILE = "eval.jsonl"
PROCESSED_REPORT_FILE = "report.json"
PROCESSED_VALIDATION_FILE = "validation.jsonl"  # the samples held out for validation loss (validation_split)
# token samples (hone.data.samples): ``samples/`` in a prepared dataset directory (``hone data prepare --tokenizer``),
# else cached under the hone home, ``<home>/token-samples/<key>`` (the key hashes the train rows, the tokenizer and
# the settings that shape the samples)
HOME_ENV = "HONE_HOME"
DEFAULT_HOME = "hone-runs"
TOKEN_SAMPLES_DIR = "samples"
TOKEN_SAMPLES_CACHE = "token-samples"
CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step_"
STEP_DIR = re.compile(r"^step_(\d+)$")
METRICS_FILE = "training_metrics.jsonl"
PARAMS_FILE = "training_params.json"
RESULT_FILE = "training_result.json"
LOSS_CHART_PNG = "loss_chart.png"
LOSS_CHART_HTML = "loss_chart.html"
LAUNCH_FILE = ".hone-launch.json"
CALLBACKS_FILE = ".hone-callbacks.pkl"
# Everything a run writes into its output directory; ``overwrite`` removes exactly these, never anything else.
RUN_OUTPUTS = (HF_DIR, DATA_DIR, CHECKPOINTS_DIR, METRICS_FILE, LOSS_CHART_PNG, LOSS_CHART_HTML, PARAMS_FILE,
               RESULT_FILE, LAUNCH_FILE, CALLBACKS_FILE)
# How far above a model directory its run directory may be (``<run>/hf_format/<name>``, and a little slack).
_RUN_DEPTH = 3


def _path(obj: object, name: str) -> None:
    object.__setattr__(obj, name, Path(getattr(obj, name)))


@dataclass(frozen=True)
class TrainingLayout:
    """The files of one training output directory (``TrainingLayout(cfg.train.ckpt_output_dir)``)."""

    root: Path

    def __post_init__(self) -> None:
        _path(self, "root")

    # Hugging Face checkpoints
    @property
    def hf_root(self) -> Path:
        return self.root / HF_DIR

    def model(self, name: str) -> Path:
        """The Hugging Face checkpoint ``name`` (``final``, ``epoch_<n>``, ``samples_<N>``)."""
        return self.hf_root / name

    def adapter(self, name: str = FINAL) -> Path:
        """The LoRA adapter written beside checkpoint ``name``."""
        return adapter_dir(self.hf_root, name)

    @property
    def final_model(self) -> Path:
        return self.model(FINAL)

    @property
    def final_adapter(self) -> Path:
        return self.adapter(FINAL)

    def epoch(self, n: int) -> Path:
        return self.model(epoch_name(n))

    # files
    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def params(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE

    @property
    def loss_chart_png(self) -> Path:
        return self.root / LOSS_CHART_PNG

    @property
    def loss_chart_html(self) -> Path:
        return self.root / LOSS_CHART_HTML

    @property
    def launch_config(self) -> Path:
        return self.root / LAUNCH_FILE

    @property
    def callbacks_payload(self) -> Path:
        """The run's callbacks, pickled by the launcher for the torchrun workers (beside the launch config)."""
        return self.root / CALLBACKS_FILE

    @property
    def data(self) -> Path:
        """The processed data, unless the run names another directory (``data_output_dir``)."""
        return self.root / DATA_DIR

    @property
    def data_report(self) -> Path:
        """The processed data's report (in the default data directory)."""
        return self.data / PROCESSED_REPORT_FILE

    # full-state checkpoints
    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    def full_state(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every path a run writes here (what ``overwrite`` removes)."""
        return tuple(self.root / name for name in RUN_OUTPUTS)

    def is_run(self) -> bool:
        """Whether this directory holds a hone training run (its parameters file)."""
        return self.params.is_file()

    @classmethod
    def of_model(cls, model_dir: str | Path) -> "TrainingLayout | None":
        """The training output directory a model directory belongs to (``<run>/hf_format/<name>``), if any."""
        p = Path(model_dir).resolve()
        for candidate in (p, *list(p.parents)[:_RUN_DEPTH]):
            if (candidate / PARAMS_FILE).is_file():
                return cls(candidate)
        return None


def epoch_name(n: int) -> str:
    return f"{EPOCH_PREFIX}{n}"


def samples_name(samples: int, *, float_spelling: bool = False, best_val_loss: bool = False) -> str:
    """``samples_<N>`` as instructlab names a checkpoint, ``samples_<N>.0`` with ``float_spelling`` (mini-trainer,
    OSFT's backend, counts samples in a float), with ``_best_val_loss`` for a new best validation loss."""
    count = f"{float(samples)}" if float_spelling else f"{int(samples)}"
    return f"{SAMPLES_PREFIX}{count}{BEST_VAL_LOSS_SUFFIX if best_val_loss else ''}"


def step_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def adapter_dir(hf_root: str | Path, name: str) -> Path:
    """Where the adapter of checkpoint ``name`` is written (``hf_format/final_adapter`` for ``final``)."""
    return Path(hf_root) / f"{name}{ADAPTER_SUFFIX}"


# -- a pipeline run directory ------------------------------------------------------------------------------
STAGES = ("dataset", "training", "evaluation", "registration")
STAGE_DIRS = {name: f"{i:02d}-{name}" for i, name in enumerate(STAGES, 1)}
STAGE_FILE = "stage.json"
MANIFEST = "manifest.json"
REPORT = "report.html"


@dataclass(frozen=True)
class PipelineLayout:
    """The files of one local pipeline run directory."""

    run_dir: Path

    def __post_init__(self) -> None:
        _path(self, "run_dir")

    def stage(self, name: str) -> Path:
        """The output directory of stage ``name`` (one of :data:`STAGES`)."""
        try:
            return self.run_dir / STAGE_DIRS[name]
        except KeyError:
            raise KeyError(f"unknown pipeline stage {name!r} (stages: {', '.join(STAGES)})") from None

    def stage_file(self, name: str) -> Path:
        """Stage ``name``'s result file (its summary and the files it wrote)."""
        return self.stage(name) / STAGE_FILE

    @property
    def stages(self) -> dict[str, Path]:
        """Every stage's output directory, in order."""
        return {name: self.stage(name) for name in STAGES}

    @property
    def manifest(self) -> Path:
        return self.run_dir / MANIFEST

    @property
    def report(self) -> Path:
        return self.run_dir / REPORT


def hone_home(home: str | Path | None = None) -> Path:
    """hone's own directory (embedded registry, pipeline runs and stage store, token-sample cache): ``home``,
    else ``$HONE_HOME``, else ``./hone-runs``."""
    return Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()

