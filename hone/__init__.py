"""hone: fine-tune language models with SFT, OSFT and LoRA."""
from __future__ import annotations

from hone.errors import HoneError
from hone.version import __version__


def sft(model_path: str, data_path: str, ckpt_output_dir: str, **kwargs):
    """Supervised fine-tuning with Training Hub's parameter names. See ``hone.api.sft``."""
    from hone.api import sft as _sft  # lazy: `import hone` stays light

    return _sft(model_path, data_path, ckpt_output_dir, **kwargs)


def osft(model_path: str, data_path: str, ckpt_output_dir: str, **kwargs):
    """Orthogonal Subspace Fine-Tuning. See ``hone.api.osft``."""
    from hone.api import osft as _osft

    return _osft(model_path, data_path, ckpt_output_dir, **kwargs)


def lora_sft(model_path: str, data_path: str, ckpt_output_dir: str, **kwargs):
    """LoRA / QLoRA fine-tuning. See ``hone.api.lora_sft``."""
    from hone.api import lora_sft as _lora_sft

    return _lora_sft(model_path, data_path, ckpt_output_dir, **kwargs)


def evaluate(model_path: str, output_dir: str, **kwargs):
    """Evaluate a model on lm-eval tasks and the holdout split; with ``base_model_path``, compare with the base
    and flag forgetting. See ``hone.evaluation.run.evaluate``."""
    from hone.evaluation.run import evaluate as _evaluate

    return _evaluate(model_path, output_dir, **kwargs)


def run_pipeline(data: str, **kwargs):
    """The four stages (dataset, training, evaluation, registration) locally, with a run directory, caching
    and report.html. See ``hone.pipeline.runner.run_pipeline``."""
    from hone.pipeline.runner import run_pipeline as _run_pipeline

    return _run_pipeline(data, **kwargs)


__all__ = ["HoneError", "sft", "osft", "lora_sft", "evaluate", "run_pipeline", "__version__"]
