"""Per-sample ("varlen") SDPA for padding-free packed rows.

hone trains on packed rows: several samples laid end to end in one row of batch size 1, with ``position_ids``
restarting at 0 for each sample. With ``attn_implementation="sdpa"``, transformers sees the restarts and builds
a boolean block-diagonal causal mask of shape ``[1, 1, T, T]`` for the whole row, and SDPA with an explicit mask
computes every block of the row, masked or not: attention costs ``(sum of lengths)^2`` instead of
``sum(length^2)``, plus the mask itself (``T^2`` bytes; 100 MB for a 10,000-token row). On CPU, and on a GPU
without FlashAttention, that is the largest cost of a step on long rows.

:data:`VARLEN_SDPA` (``"hone_varlen_sdpa"``) is an attention implementation registered with transformers'
``AttentionInterface`` and ``AttentionMaskInterface``:

* the **mask function** builds no mask for the packed training case (no padding mask, batch 1, query length equal
  to key length, no cache offset, plain causal attention), so no ``T x T`` tensor exists; anything else gets
  exactly the mask that ``sdpa`` would get (``transformers.masking_utils.sdpa_mask``);
* the **attention function** splits the row where ``position_ids`` stop counting up by one (the boundaries
  transformers' own ``find_packed_sequence_indices`` uses) and runs causal SDPA on each sample. It falls back to
  transformers' ``sdpa_attention_forward`` for whatever it does not handle: an attention mask, batch > 1,
  a single query token or query length != key length (generation with a cache), sliding-window layers,
  non-causal modules, extra score terms (position bias, soft-capping, sinks), a paged cache.

GQA (``enable_gqa`` or repeated key/value heads, as ``sdpa_attention_forward`` chooses), ``scaling`` and
``dropout`` are passed through, and the output layout is ``sdpa_attention_forward``'s: ``[batch, T, heads, dim]``.

Training uses it through :func:`hone.models.load.load_model` (``training=True``) for the architectures in
:data:`SUPPORTED_MODEL_TYPES`; evaluation and generation load plain ``sdpa``. The implementation is not written
into saved ``config.json`` files (transformers does not serialise ``_attn_implementation``).
Escape hatch: ``HONE_ATTN_IMPLEMENTATION=sdpa`` (or ``eager``, ``flash_attention_2``, ...) sets the training
attention explicitly.
"""
from __future__ import annotations

import os
import weakref
from collections import Counter

import torch
import torch.nn.functional as F

VARLEN_SDPA = "hone_varlen_sdpa"
ENV_VAR = "HONE_ATTN_IMPLEMENTATION"

# Architectures whose decoder passes ``position_ids`` to the attention function and whose full-attention mask
# is plain causal (+ packing): the per-sample split computes exactly what their sdpa mask allows.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"})

# Keyword arguments that change the attention scores; with any of them set, the call goes to stock SDPA.
_SCORE_KWARGS = ("position_bias", "softcap", "s_aux", "cache", "sinks")

#: How often each path ran in this process ("varlen" or "fallback"); tests and benchmarks read it.
calls: Counter = Counter()

_segments_cache: tuple[weakref.ref, int, list[int]] | None = None


def register() -> str:
    """Register the attention and mask functions with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if VARLEN_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
    if VARLEN_SDPA not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(VARLEN_SDPA, varlen_sdpa_mask)
    return VARLEN_SDPA


def supports_varlen(config) -> bool:
    """Whether a model config has only plain causal full-attention layers of a supported architecture."""
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if not getattr(config, "is_causal", True) or getattr(config, "attention_chunk_size", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return True


def enable_for_training(model) -> str:
    """Switch a loaded sdpa model to :data:`VARLEN_SDPA` when its config allows; returns the implementation
    in use. Models on another implementation (eager, flash_attention_*, flex) are left as they are."""
    current = getattr(model.config, "_attn_implementation", None)
    if current != "sdpa" or not supports_varlen(model.config):
        return current
    register()
    model.set_attn_implementation(VARLEN_SDPA)
    return model.config._attn_implementation


def requested_implementation() -> str | None:
    """The training attention set in the environment (``HONE_ATTN_IMPLEMENTATION``), if any."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    from transformers import AttentionInterface

    register()
    known = ["eager", *AttentionInterface().valid_keys()]
    if value not in known:
        from hone.errors import HoneError

        raise HoneError(f"unknown attention implementation {value!r}", where=f"environment variable {ENV_VAR}",
                        fix=f"use one of {', '.join(known)}, or unset {ENV_VAR} for hone's default")
    return value


def varlen_sdpa_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                     attention_mask=None, config=None, use_vmap: bool = False, **kwargs):
    """``sdpa_mask``, except that the packed training case gets no mask at all (the attention function splits the
    row per sample itself): no padding mask, batch 1, q_length == kv_length, no offsets, a plain causal config."""
    if (attention_mask is None and batch_size == 1 and q_length == kv_length and _is_zero(q_offset)
            and _is_zero(kv_offset) and not use_vmap and kwargs.get("local_size") is None
            and "allow_is_bidirectional_skip" not in kwargs and config is not None and supports_varlen(config)):
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, config=config, use_vmap=use_vmap, **kwargs)


def varlen_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal SDPA per packed sample; ``sdpa_attention_forward`` for anything else. Shapes as transformers
    passes them: query ``[B, H, T, D]``, key/value ``[B, H_kv, S, D]``; returns ``([B, T, H, D], None)``."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    t = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (attention_mask is not None or position_ids is None or query.shape[0] != 1 or key.shape[2] != t or t <= 1
            or not causal or kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
            or any(kwargs.get(k) is not None for k in _SCORE_KWARGS) or kwargs.get("output_attentions")
            or position_ids.numel() != t):
        calls["fallback"] += 1
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    calls["varlen"] += 1
    sdpa_kwargs = {}
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        if key.shape[-1] == value.shape[-1] <= 256:  # as transformers decides for an unmasked call on CUDA/CPU
            sdpa_kwargs["enable_gqa"] = True
        else:
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    bounds = _segment_bounds(position_ids)
    if len(bounds) == 2:
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True,
                                             **sdpa_kwargs)
    else:
        out = torch.cat([F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                                        dropout_p=dropout, scale=scaling, is_causal=True,
                                                        **sdpa_kwargs)
                         for s, e in zip(bounds[:-1], bounds[1:])], dim=2)
    return out.transpose(1, 2).contiguous(), None


def segment_bounds(position_ids: torch.Tensor) -> list[int]:
    """Sample boundaries of a packed row ``[0, b1, ..., T]``: a sample starts wherever a position is not the
    previous one plus one (as in ``transformers.masking_utils.find_packed_sequence_indices``)."""
    flat = position_ids.reshape(-1)
    t = flat.numel()
    if t == 0:
        return [0]
    starts = (torch.diff(flat) != 1).nonzero().flatten().add_(1).tolist()  # the row's one host-device sync
    return [0, *starts, t]


def _segment_bounds(position_ids: torch.Tensor) -> list[int]:
    """:func:`segment_bounds`, computed once per forward: every layer receives the same position_ids tensor."""
    global _segments_cache
    cached = _segments_cache
    if cached is not None and cached[0]() is position_ids and cached[1] == position_ids._version:
        return cached[2]
    bounds = segment_bounds(position_ids)
    _segments_cache = (weakref.ref(position_ids), position_ids._version, bounds)
    return bounds


def _is_zero(offset) -> bool:
    if isinstance(offset, torch.Tensor):
        return offset.numel() == 1 and int(offset) == 0
    return offset == 0
