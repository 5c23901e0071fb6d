"""Token-summed cross-entropy: each step's loss is normalised by the step's loss-token count by the caller.

:func:`forward_loss_sum` gives the same value as ``summed_cross_entropy(model(...).logits, targets)`` (float32
cross-entropy over every position whose target is not IGNORE) with less work and memory:

* **Only positions with a target reach the LM head.** Prompt tokens and each sample's last position have no
  target (about 40% of a chat SFT row); projecting them onto the vocabulary is wasted work. The positions are
  taken from the targets when they are on the CPU (free). On an accelerator that would cost a host-device sync,
  so there every position is scored unless the batch carries host-computed ``loss_positions``.
* **Fused, chunked LM head + cross-entropy** for plain Hugging Face causal LMs (the architectures in
  ``FUSED_MODEL_TYPES``, not wrapped, no hooks on the root module, an ``nn.Linear`` head with plain tensors, no
  autocast): the backbone's hidden states go through the head a chunk of rows at a time, and the gradients of
  the head and of the hidden states are computed in the same pass, so the ``[T, V]`` float32 logits (and their
  log-softmax and gradient) never exist at once.
* Anything else (a peft ``PeftModel``, FSDP/DDP wrappers, other architectures) is called through its own
  ``forward``, with ``logits_to_keep`` selecting the target positions when the model accepts it, or plainly.
"""
from __future__ import annotations

import inspect
import weakref

import torch
import torch.nn.functional as F

from hone.data.tokenize import IGNORE
from hone.models.structure import unwrap

# Causal LMs whose forward is exactly ``lm_head(backbone(...).last_hidden_state)`` (no logit scaling or
# soft-capping): only these are taken apart for the fused head.
FUSED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Logits elements per chunk of the fused head (64 MiB in float32); at least MIN_CHUNK_ROWS rows per chunk.
CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK_ROWS = 128
_SCALING_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                  "lm_head_multiplier", "attn_logit_softcapping_final")


def summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of token cross-entropies over positions whose target is not IGNORE (computed in float32)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def forward_loss_sum(model: torch.nn.Module, batch) -> torch.Tensor:
    """Forward a packed batch and return its summed token loss (float32 scalar)."""
    positions = _loss_positions(batch)
    if positions is not None and positions.numel() == 0:
        positions = None  # nothing to score: the plain path returns a connected zero
    parts = _fused_parts(model)
    if parts is not None and batch.input_ids.shape[0] == 1:
        backbone, head = parts
        hidden = backbone(input_ids=batch.input_ids, position_ids=batch.position_ids,
                          use_cache=False).last_hidden_state  # [1, T, H]
        targets = batch.targets.reshape(-1)
        if positions is not None:
            rows, targets = hidden[0].index_select(0, positions), targets.index_select(0, positions)
            all_valid = True
        else:
            rows, all_valid = hidden[0], False
        return linear_cross_entropy_sum(rows, head.weight, head.bias, targets, all_valid=all_valid)
    if positions is not None and batch.input_ids.shape[0] == 1 and _accepts_logits_to_keep(model):
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                       logits_to_keep=positions).logits  # [1, N, V]
        return summed_cross_entropy(logits, batch.targets.reshape(-1).index_select(0, positions))
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    return summed_cross_entropy(logits, batch.targets)


def linear_cross_entropy_sum(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             targets: torch.Tensor, *, all_valid: bool = False,
                             chunk_rows: int | None = None) -> torch.Tensor:
    """``summed_cross_entropy(F.linear(x, weight, bias), targets)`` for ``x`` of shape [N, H], computed in row
    chunks so that no [N, V] tensor is materialised. ``all_valid`` promises that no target is IGNORE."""
    if chunk_rows is None:
        chunk_rows = max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(weight.shape[0], 1))
    want_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                             or (bias is not None and bias.requires_grad))
    return _LinearCrossEntropy.apply(x, weight, bias, targets, all_valid, chunk_rows, want_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked LM head + summed cross-entropy; the gradients for a unit upstream gradient are computed in the
    forward pass (softmax minus one-hot, per chunk) and only scaled in backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, all_valid, chunk_rows, want_grad):
        need_x = want_grad and ctx.needs_input_grad[0]
        need_w = want_grad and ctx.needs_input_grad[1]
        need_b = want_grad and bias is not None and ctx.needs_input_grad[2]
        n = x.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for s in range(0, n, chunk_rows):
            e = min(s + chunk_rows, n)
            xc, tc = x[s:e], targets[s:e]
            if all_valid:
                valid, safe = None, tc
            else:
                valid = tc != IGNORE
                safe = tc.masked_fill(~valid, 0)
            z = F.linear(xc, weight, bias).float()  # [c, V]: the logits of this chunk, in float32 as summed_cross_entropy
            lse = torch.logsumexp(z, dim=-1)
            token_loss = lse - z.gather(1, safe.unsqueeze(1)).squeeze(1)
            loss += token_loss.sum() if valid is None else token_loss.masked_fill(~valid, 0.0).sum()
            if not (need_x or need_w or need_b):
                continue
            g = z.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
            g.scatter_add_(1, safe.unsqueeze(1), torch.full((e - s, 1), -1.0, dtype=g.dtype, device=g.device))
            if valid is not None:
                g.mul_(valid.unsqueeze(1))
            if need_b:
                grad_b += g.sum(0)
            g = g.to(x.dtype)
            if need_x:
                torch.mm(g, weight, out=grad_x[s:e])
            if need_w:
                if grad_w.dtype == g.dtype:
                    grad_w.addmm_(g.t(), xc)
                else:
                    grad_w += torch.mm(g.t(), xc).float()
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        if grad_x is not None:
            grad_x = grad_x * grad_out.to(grad_x.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_out).to(ctx.weight_dtype)
        if grad_b is not None:
            grad_b = (grad_b * grad_out).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


# -- recognising what the fast paths may take apart ---------------------------------------------------------------

def _loss_positions(batch) -> torch.Tensor | None:
    """Indices (1-D, into the flattened row) of the positions with a target, or None to score every position."""
    given = getattr(batch, "loss_positions", None)
    if given is not None:
        return given
    targets = batch.targets
    if targets.device.type != "cpu":
        return None  # nonzero() would wait for the device
    return (targets.reshape(-1) != IGNORE).nonzero().squeeze(1)


_FUSED_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[type, bool]]" = weakref.WeakKeyDictionary()
_KEEP_CACHE: dict[type, bool] = {}


def _fused_parts(model: torch.nn.Module):
    """(backbone, lm_head) when ``model`` is a plain causal LM that the fused head reproduces exactly, else None."""
    if torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu"):
        return None
    if model._forward_hooks or model._forward_pre_hooks or _global_hooks():
        return None
    cached = _FUSED_CACHE.get(model)
    if cached is None or cached[0] is not type(model):  # fully_shard, for one, changes the class in place
        cached = (type(model), _recognise(model))
        _FUSED_CACHE[model] = cached
    if not cached[1]:
        return None
    head = model.get_output_embeddings()
    backbone = getattr(model, model.base_model_prefix, None)
    # re-checked on every call: wrapping (FSDP, peft) may happen after the first micro-batch
    if type(head) is not torch.nn.Linear or not _plain_tensor(head.weight) or backbone is None:
        return None
    if head._forward_hooks or head._forward_pre_hooks:
        return None
    return backbone, head


def _recognise(model: torch.nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    if not isinstance(model, PreTrainedModel) or _is_fsdp(model):
        return False
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in FUSED_MODEL_TYPES:
        return False
    if any(getattr(config, a, None) not in (None, 1.0) for a in _SCALING_ATTRS):
        return False
    if type(model).__name__ not in {f"{n}ForCausalLM" for n in ("Llama", "Mistral", "Qwen2", "Qwen3")}:
        return False  # e.g. an FSDP-generated subclass, or a sequence-classification head
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings()
    if not isinstance(backbone, torch.nn.Module) or type(head) is not torch.nn.Linear:
        return False
    return all(_plain_tensor(p) for p in head.parameters())


def _plain_tensor(t: torch.Tensor) -> bool:
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def _is_fsdp(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        FSDPModule = ()  # noqa: N806
    return any(isinstance(m, FSDPModule) or type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())


def _global_hooks() -> bool:
    mod = torch.nn.modules.module
    return bool(getattr(mod, "_global_forward_hooks", None) or getattr(mod, "_global_forward_pre_hooks", None))


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model(..., logits_to_keep=positions)`` reaches a causal LM forward that slices by positions."""
    outer = unwrap(model)  # under DDP / FSDP1 / torch.compile, a peft model (if any)
    cfg = getattr(outer, "active_peft_config", None)
    if cfg is not None and getattr(cfg, "is_prompt_learning", False):
        return False  # virtual tokens shift the positions
    cls = type(unwrap(outer, peft=True))
    if cls not in _KEEP_CACHE:
        try:
            _KEEP_CACHE[cls] = "logits_to_keep" in inspect.signature(cls.forward).parameters
        except (TypeError, ValueError):
            _KEEP_CACHE[cls] = False
    return _KEEP_CACHE[cls]
