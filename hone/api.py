"""The Python API, with Training Hub's parameter names."""
from __future__ import annotations

import logging
import os
from typing import Any

from hone.config import RunConfig
from hone.training.run import TrainResult

log = logging.getLogger("hone")


def run(cfg: RunConfig) -> TrainResult:
    """Run a resolved configuration: its algorithm's hooks, and the trackers (MLflow, Weights & Biases,
    TensorBoard) that its parameters or the environment turn on (:mod:`hone.registry.trackers`)."""
    from hone.algorithms import hooks_for
    from hone.registry.trackers import tracker_from_config  # each tracker's package is imported when it starts
    from hone.training.run import run_training

    tracker = tracker_from_config(cfg.train) if os.environ.get("RANK", "0") == "0" else None  # only rank 0 tracks
    return run_training(cfg, hooks_for(cfg), tracker)


def train(algorithm: str, params: dict[str, Any], source: str = "keyword arguments") -> TrainResult:
    """Resolve flat parameters for ``algorithm`` and run it."""
    params = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in params.items()}
    cfg = RunConfig.from_flat(algorithm, params, source)
    if cfg.train.backend is not None and os.environ.get("RANK", "0") == "0":
        log.info("backend=%r: accepted for Training Hub compatibility; hone trains with its own engine",
                 cfg.train.backend)
    return run(cfg)


# Training Hub's positional parameters, in its order (the rest are keywords).
SFT_POSITIONAL = ("model_path", "data_path", "ckpt_output_dir", "backend")
OSFT_POSITIONAL = ("model_path", "data_path", "unfreeze_rank_ratio", "effective_batch_size", "max_tokens_per_gpu",
                   "max_seq_len", "learning_rate", "ckpt_output_dir", "data_output_dir", "backend")
# hone's own order: the output directory third, the ratio as a keyword
OSFT_HONE_POSITIONAL = ("model_path", "data_path", "ckpt_output_dir")
LORA_POSITIONAL = SFT_POSITIONAL


def bind(function: str, names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional ``args`` named by ``names``, merged with ``kwargs`` (Python's own errors for misuse)."""
    if len(args) > len(names):
        raise TypeError(f"{function}() takes {len(names)} positional arguments but {len(args)} were given")
    params = dict(kwargs)
    for name, value in zip(names, args):
        if name in params:
            raise TypeError(f"{function}() got multiple values for argument {name!r}")
        params[name] = value
    missing = [n for n in ("model_path", "data_path", "ckpt_output_dir") if n not in params]
    if missing:
        raise TypeError(f"{function}() missing required argument(s): {', '.join(map(repr, missing))}")
    return params


def sft(*args: Any, **kwargs: Any) -> TrainResult:
    """Supervised fine-tuning (all parameters) of ``model_path`` on the chat data at ``data_path``.

    Called like Training Hub's ``sft(model_path, data_path, ckpt_output_dir, backend=..., **kwargs)``, with its
    keyword names (``num_epochs``, ``effective_batch_size``, ``learning_rate``, ``max_seq_len``,
    ``max_tokens_per_gpu``, ``save_samples``, ``warmup_steps``, ...; ``hone train sft --help`` and the stub
    ``hone/__init__.pyi`` list all, with their defaults). An unknown name is an error.
    """
    return train("sft", bind("sft", SFT_POSITIONAL, args, kwargs))


def osft(*args: Any, **kwargs: Any) -> TrainResult:
    """Orthogonal Subspace Fine-Tuning: learn new tasks while the top singular directions of every target
    matrix stay frozen. ``unfreeze_rank_ratio`` in [0, 1] is the trainable fraction (1 = plain SFT).

    Two call shapes: Training Hub's ``osft(model_path, data_path, unfreeze_rank_ratio, effective_batch_size,
    max_tokens_per_gpu, max_seq_len, learning_rate, ckpt_output_dir, ...)`` and hone's
    ``osft(model_path, data_path, ckpt_output_dir, unfreeze_rank_ratio=..., ...)`` (a text third argument is
    the output directory). Takes everything :func:`sft` takes, plus the OSFT parameters.
    """
    third_is_dir = len(args) >= 3 and isinstance(args[2], (str, os.PathLike))
    names = OSFT_HONE_POSITIONAL if third_is_dir else OSFT_POSITIONAL
    return train("osft", bind("osft", names, args, kwargs))


def lora_sft(*args: Any, **kwargs: Any) -> TrainResult:
    """LoRA (or QLoRA with ``load_in_4bit``) supervised fine-tuning through peft, with assistant-only loss.

    Called like Training Hub's ``lora_sft(model_path, data_path, ckpt_output_dir, backend=..., **kwargs)``
    with every one of its keywords and defaults (3 epochs, ``max_seq_len`` 2048, ``learning_rate`` 2e-4, linear
    schedule with 10 warm-up steps, ``micro_batch_size`` 2, ...; docs/lora.md maps each one), plus everything
    :func:`sft` takes. Writes the adapter to ``hf_format/final_adapter/`` and the merged model to
    ``hf_format/final/``.
    """
    params = bind("lora_sft", LORA_POSITIONAL, args, kwargs)
    if params.get("callbacks") is not None and not isinstance(params["callbacks"], (list, tuple)):
        params["callbacks"] = [params["callbacks"]]  # Training Hub takes one callback or a list
    return train("lora", params)
