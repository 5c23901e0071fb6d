"""Liger kernels (Training Hub's ``use_liger``): Triton RMSNorm, SwiGLU and RoPE patched into a loaded model.

Only on CUDA and when ``liger-kernel`` is installed; hone's own fused, chunked LM-head loss stays in place
either way (Liger's cross-entropy kernels are not applied: the loss is computed by hone.training.loss).
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("hone")


def apply_liger(model: Any, device: Any, *, say: bool = True) -> bool:
    """Patch ``model`` in place with Liger's kernels when possible, else say why not. True if applied."""
    info = log.info if say else log.debug
    if getattr(device, "type", str(device)) != "cuda":
        info("use_liger: Liger kernels need CUDA; on %s hone's fused LM-head loss is used instead", device)
        return False
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        info("use_liger: liger-kernel is not installed (pip install liger-kernel); hone's fused LM-head loss "
             "is used instead")
        return False
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    info("use_liger: Liger RMSNorm, SwiGLU and RoPE kernels applied (%s)", type(model).__name__)
    return True
