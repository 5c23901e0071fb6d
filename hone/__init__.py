"""hone: fine-tune language models with SFT, OSFT and LoRA."""
from __future__ import annotations

from hone.errors import HoneError
from hone.version import __version__


# Signatures with every keyword and its default: hone/__init__.pyi (generated from the schema).
def sft(*args, **kwargs):
    """Supervised fine-tuning with Training Hub's call shape and parameter names. See ``hone.api.sft``."""
    from hone.api import sft as _sft  # lazy: `import hone` stays light

    return _sft(*args, **kwargs)


def osft(*args, **kwargs):
    """Orthogonal Subspace Fine-Tuning, with Training Hub's call shape (or hone's). See ``hone.api.osft``."""
    from hone.api import osft as _osft

    return _osft(*args, **kwargs)


def lora_sft(*args, **kwargs):
    """LoRA / QLoRA fine-tuning with Training Hub's call shape. See ``hone.api.lora_sft``."""
    from hone.api import lora_sft as _lora_sft

    return _lora_sft(*args, **kwargs)


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

# Training Hub's other public names, imported on first use (`import hone` stays light).
_LAZY = {
    **dict.fromkeys(["Algorithm", "Backend", "AlgorithmRegistry", "create_algorithm", "SFTAlgorithm",
                     "OSFTAlgorithm", "LoRASFTAlgorithm", "InstructLabTrainingSFTBackend", "MiniTrainerOSFTBackend",
                     "UnslothLoRABackend", "estimate", "BasicEstimator", "OSFTEstimator", "OSFTEstimatorExperimental",
                     "LoRAEstimator", "QLoRAEstimator"], "hone.hub"),
    "plot_loss": "hone.training.plot",
    "TrainingHubCallback": "hone.training.callbacks",
    "TrainingHubContext": "hone.training.callbacks",
}
__all__ += list(_LAZY)
_LAZY["TrainResult"] = "hone.training.run"  # the stub's header names it already


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hone' has no attribute {name!r}")
