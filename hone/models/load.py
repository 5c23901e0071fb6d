"""Load a base model and its tokenizer: a local Hugging Face directory or a hub id (safetensors only)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from hone.errors import HoneError

log = logging.getLogger("hone")


def quiet_transformers() -> None:
    """Silence transformers' own progress bars (hone shows its own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model_path(model_path: str) -> str:
    """Return a local directory or a hub id; raise a clear error for a local path that does not exist."""
    if model_path.startswith("oci://"):
        from hone.models.oci import pull_model  # ModelCar image -> cached local directory

        model_path = str(pull_model(model_path))
    p = Path(model_path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise HoneError(f"{p} is not a Hugging Face model directory (no config.json)", where="model_path",
                            fix="point model_path at a directory written by save_pretrained")
        return str(p)
    if p.exists() or model_path.startswith((".", "/", "~")) or not _HUB_ID.match(model_path):
        raise HoneError(f"model path does not exist: {model_path}", where="model_path",
                        fix="pass an existing model directory or a Hugging Face hub id such as Qwen/Qwen2.5-1.5B-Instruct")
    return model_path


def _hub_error(model_path: str, err: Exception) -> HoneError:
    return HoneError(f"cannot load {model_path!r}: not a local directory and the Hugging Face hub gave: "
                     f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                     where="model_path",
                     fix="pass a local model directory (offline machines cannot download hub ids), or set HF_TOKEN "
                         "for a gated model")


def load_tokenizer(model_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    src = resolve_model_path(model_path)
    try:
        return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _hub_error(model_path, err) from None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HoneError(f"invalid device {device!r}", where="device", fix="use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HoneError("device is cuda but no GPU is available", where="device", fix="use device=auto or cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_model(model_path: str, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               trust_remote_code: bool = False, attn_implementation: str | None = "sdpa", training: bool = False,
               **kwargs):
    """Load a causal LM from safetensors weights, ready for padding-free training (``use_cache=False``).

    ``training=True`` (hone's trainer) picks the attention for packed rows: the ``HONE_ATTN_IMPLEMENTATION``
    environment variable when set, else per-sample SDPA (:mod:`hone.models.attention`) when the model is on
    ``sdpa`` and its architecture is supported. Evaluation and generation load with ``training=False`` and keep
    ``attn_implementation`` as given.
    """
    from transformers import AutoModelForCausalLM

    from hone.models import attention

    quiet_transformers()
    src = resolve_model_path(model_path)
    if training and (requested := attention.requested_implementation()):
        attn_implementation = requested
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, **kwargs,
        )
    except (OSError, ValueError) as err:
        raise _hub_error(model_path, err) from None
    # Packed rows restart position_ids per sample; with the KV cache enabled, SDPA lets packed samples
    # attend to each other (measured: logit difference 8.4 vs 4.5e-6), so the cache stays off in training.
    model.config.use_cache = False
    if training and not attention.requested_implementation():
        attention.enable_for_training(model)
    if training:
        log.info("attention: %s", model.config._attn_implementation)
    if getattr(model, "hf_device_map", None) or getattr(model, "is_quantized", False):
        return model  # placed by from_pretrained (quantized weights cannot be moved with .to)
    return model.to(device)
