"""A model's structure, found from its modules (never from its name): the transformer blocks, the linear layers
inside them, and the model under the wrappers training puts around it.

Every part of hone that needs "the blocks" uses :func:`transformer_blocks`: FSDP shards and activation
checkpointing wraps each block, LoRA adapts the linear layers inside them, OSFT constrains their weight matrices
and measures each block's importance.
"""
from __future__ import annotations

from functools import lru_cache

from torch import nn

# the prefix activation checkpointing (``checkpoint_wrapper``) adds to the names of a wrapped block's contents
CHECKPOINT_PREFIX = "_checkpoint_wrapped_module."


def transformer_blocks(model: nn.Module) -> list[str]:
    """Names of the transformer blocks of ``model``, in model order (the outermost ones only).

    The first rule that finds any wins:

    1. the modules whose class the model lists in ``_no_split_modules`` (Hugging Face's notion of "one
       transformer block", every tower of a multimodal model included);
    2. the elements of every ``nn.ModuleList`` of identical modules (``layers``, ``h``, ...);
    3. the elements of the ``nn.ModuleList`` holding the most parameters.

    An empty list when the model has none of these.
    """
    block_classes = set(getattr(model, "_no_split_modules", None) or ())
    names = [n for n, m in model.named_modules() if n and plain_class(m).__name__ in block_classes]
    if not names:
        for n, m in model.named_modules():
            if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1:
                names.extend(_children(n, m))
    if not names:
        lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        if lists:
            n, m = max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
            names = _children(n, m)
    outer: list[str] = []
    for n in sorted(set(names), key=len):  # a block inside another block is part of it
        if not any(n.startswith(o + ".") for o in outer):
            outer.append(n)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(outer, key=order.__getitem__)


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks themselves (see :func:`transformer_blocks`)."""
    return [model.get_submodule(n) for n in transformer_blocks(model)]


def block_of(name: str, blocks: list[str]) -> int | None:
    """The index in ``blocks`` of the block holding the module or parameter ``name``; None outside every block."""
    return next((i for i, b in enumerate(blocks) if name.startswith(b + ".")), None)


def linear_types() -> tuple[type, ...]:
    """The linear layer classes: ``nn.Linear`` (bitsandbytes' Linear4bit / Linear8bitLt subclass it) and
    transformers' ``Conv1D`` (GPT-2 style projections)."""
    return _linear_types()


def linear_layers(model: nn.Module, *, any_matrix: bool = False) -> list[str]:
    """Names of the linear layers inside the transformer blocks, in model order.

    A linear layer is an instance of :func:`linear_types` (what peft can adapt); with ``any_matrix``, also any
    other module holding its own 2-D ``weight`` (a fused or custom projection, an MoE router), never an embedding.
    """
    blocks = transformer_blocks(model)
    linear = linear_types()
    out = []
    for n, m in model.named_modules():
        if block_of(n, blocks) is None:
            continue
        w = m._parameters.get("weight")
        if isinstance(m, linear) or (any_matrix and w is not None and w.ndim == 2 and not isinstance(m, nn.Embedding)):
            out.append(n)
    return out


def unwrap(model: nn.Module, *, peft: bool = False) -> nn.Module:
    """The model under the wrappers training puts around it: DDP and FSDP1 (``.module``), ``torch.compile``
    (``._orig_mod``) and, with ``peft``, peft's ``PeftModel`` (its base model). FSDP2 and activation checkpointing
    change the model in place and are not unwrapped (see :func:`plain_class` and :data:`CHECKPOINT_PREFIX`)."""
    inner = model
    for _ in range(8):
        if isinstance(inner, nn.parallel.DistributedDataParallel) or type(inner).__name__ == "FullyShardedDataParallel":
            inner = inner.module
        elif isinstance(getattr(inner, "_orig_mod", None), nn.Module):
            inner = inner._orig_mod
        elif peft and callable(getattr(inner, "get_base_model", None)):
            inner = inner.get_base_model()
        else:
            break
    return inner


def plain_class(module: nn.Module) -> type:
    """The module's own class (FSDP2's ``fully_shard`` swaps in a generated ``FSDP<Class>`` subclass)."""
    cls = type(module)
    fsdp = _fsdp_module()
    return cls if fsdp is None else next(c for c in cls.__mro__ if not issubclass(c, fsdp))


def plain_name(name: str) -> str:
    """A parameter or module name without the activation-checkpointing wrapper's part."""
    return name.replace(CHECKPOINT_PREFIX, "")


def _children(name: str, modules: nn.ModuleList) -> list[str]:
    return [f"{name}.{i}" if name else str(i) for i in range(len(modules))]


@lru_cache(maxsize=1)
def _linear_types() -> tuple[type, ...]:
    types: list[type] = [nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D

        types.append(Conv1D)
    except ImportError:  # pragma: no cover - transformers always has it
        pass
    return tuple(types)


@lru_cache(maxsize=1)
def _fsdp_module() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch builds without distributed
        return None
    return FSDPModule


__all__ = ["CHECKPOINT_PREFIX", "block_modules", "block_of", "linear_layers", "linear_types", "plain_class",
           "plain_name", "transformer_blocks", "unwrap"]
