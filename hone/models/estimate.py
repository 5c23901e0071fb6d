"""Peak memory per GPU of a hone training run, from the model's config alone (no weights are loaded).

The model is built on the ``meta`` device from its ``config.json``, so every parameter's shape is exact. The
peak is the largest of the phases of a step, each the sum of what is alive then (``b`` = bytes of the parameter
dtype, ``S`` = the FSDP2 shard count, the world size when sharded):

    weights      base parameters / S                  (LoRA: frozen base; QLoRA: 4-bit block weights + fp32 rest)
    optimizer    AdamW's two moments, trainable x b / S   (LoRA adapters are float32: 4 bytes)
    gradients    trainable x b / S                    (OSFT's targets are whole matrices: full gradients)
    osft bases   the frozen subspaces' tensors        (their row-side tensors / S under FSDP2)
    activations  what autograd saves for backward over one micro-batch of T tokens, per decoder layer
                 (7H + 2KV + 4I)·b + 2H·4  [SFT/OSFT]   -- q, attention out, o_proj in, norms, k, v, MLP;
                 the RMSNorms keep float32 copies
                 (5H + 2KV + 4I)·b + 2H·4 + n_ad·r·4  [LoRA, adapter dtype = b]
                 (2H + 2KV + 3I)·b + (6H + I)·4 + 2H·4 + n_ad·r·4  [LoRA on a 16-bit base: peft casts each
                 adapter's input to float32]
                 (counted with autograd's saved-tensor hooks on Qwen2 with hone's per-sample attention: no
                 T x T term), plus T·(2H·4 + 2·d·b) after the blocks; with activation checkpointing only each
                 block's input (T·H·b) plus one block recomputed
    loss         hone's fused chunked LM head (SFT/OSFT): the [chunk, V] float32 logits of one chunk, the hidden
                 states' gradient (T·H·b) and the head's float32 gradient (twice, V·H·4) -- the [T, V] logits
                 never exist; a peft model goes through its own forward: [T, V] logits in b plus float32
                 log-softmax and its gradient
    gather       FSDP2 unshards one block at a time (two with prefetch): 2 blocks' parameters (and gradients)

    forward/backward = weights + optimizer + osft bases + activations + loss + gather
                       + gradients (accumulating micro-batches)  |  + max(0, gradients - activations) (one)
    optimizer step   = weights + optimizer + osft bases + gradients + one trainable-sized temporary
                       (foreach AdamW's sqrt of the second moment)

Gradient accumulation is assumed unless the step's tokens per GPU fit one micro-batch. Not counted: the CUDA
context and library workspaces (a few hundred MiB), allocator fragmentation -- the upper bound allows 25%.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from hone.errors import HoneError

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FUSED_LOSS_CHUNK_ELEMENTS = 1 << 24  # hone.training.loss.CHUNK_ELEMENTS (logits elements per chunk)
FUSED_LOSS_MIN_ROWS = 128            # hone.training.loss.MIN_CHUNK_ROWS
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights, 8-bit absmax per 64, fp32 per 256 blocks
ADAPTER_BYTES = 4  # peft keeps adapters in float32 (autocast_adapter_dtype)


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a decoder-only transformer, read from its config."""

    num_params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    block_params: int  # parameters of the largest transformer block

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def meta_model(model_path: str, *, trust_remote_code: bool = False) -> torch.nn.Module:
    """The causal LM of ``model_path`` on the meta device (only its config is read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from hone.models.load import _hub_error, quiet_transformers, resolve_model_path

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _hub_error(model_path, err) from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def model_shape(model: torch.nn.Module) -> ModelShape:
    from hone.models.structure import block_modules

    c = model.config
    c = getattr(c, "text_config", None) or c
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    blocks = block_modules(model)
    if not blocks:
        raise HoneError(f"cannot find the transformer blocks of {type(model).__name__}", where="model_path",
                        fix="the estimate knows decoder-only transformers with a list of layers")
    return ModelShape(
        num_params=sum(p.numel() for p in model.parameters()), layers=len(blocks), hidden=c.hidden_size,
        intermediate=getattr(c, "intermediate_size", None) or 4 * c.hidden_size, heads=heads,
        kv_heads=getattr(c, "num_key_value_heads", None) or heads, head_dim=head_dim, vocab=c.vocab_size,
        block_params=max(sum(p.numel() for p in b.parameters()) for b in blocks))


@dataclass
class MemoryEstimate:
    """The estimated peak per GPU, in bytes: its components and the phase that sets it."""

    model_path: str
    algorithm: str
    tokens_per_gpu: int
    world_size: int
    dtype: str
    components: dict[str, int]
    phases: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def bounds(self) -> tuple[int, int, int]:
        """(lower, expected, upper): -10%, the estimate, +25% (fragmentation, CUDA context, workspaces)."""
        return int(0.9 * self.total), int(self.total), int(1.25 * self.total)

    def breakdown(self) -> str:
        lines = [f"Estimate for {self.model_path} ({self.algorithm}, {self.dtype}, {self.tokens_per_gpu} tokens "
                 f"per GPU, {self.world_size} GPU(s)):"]
        lines += [f"  {name:<12} {_size(v):>10}" for name, v in self.components.items()]
        lines.append(f"  peak: {_size(self.total)} per GPU, in the {self.peak_phase} phase")
        return "\n".join(lines)

    def verdict(self, gpu_memory: int) -> str:
        low, mid, high = self.bounds
        gib = _size
        if high <= gpu_memory:
            head = "The proposed training setup should fit"
        elif mid <= gpu_memory:
            head = "The proposed training setup will likely fit"
        elif low <= gpu_memory:
            head = "The proposed training setup may fit but is not recommended"
        else:
            head = "The proposed training setup will not fit"
        advice = "" if high <= gpu_memory else \
            "; to need less, lower max_tokens_per_gpu, add GPUs or turn on activation_checkpointing"
        return f"{head} in {gib(gpu_memory)} per GPU: expected {gib(mid)} (between {gib(low)} and {gib(high)}){advice}"


def estimate_memory(
    model_path: str, algorithm: str, *, tokens_per_gpu: int, world_size: int = 1, dtype: str = "bfloat16",
    trust_remote_code: bool = False, lora_r: int = 16, load_in_4bit: bool = False,
    activation_checkpointing: bool = False, sharded: bool = True, accumulating: bool = True,
    osft_targets: Callable[[torch.nn.Module, torch.dtype], list[tuple[tuple[int, int], int, int]]] | None = None,
    lora_targets: Callable[[torch.nn.Module], list[tuple[int, int]]] | None = None,
) -> MemoryEstimate:
    """The peak memory per GPU of training ``model_path`` with ``algorithm`` (sft, osft, lora).

    ``osft_targets(model, dtype)`` -> [(shape, replicated basis bytes, row-sharded basis bytes)], with -1 bytes
    for a fully frozen target; ``lora_targets(model)`` -> [(in_features, out_features)] of the adapted modules.
    Both are chosen by the algorithms' own code (see :func:`hone.hub.estimate_detail`).
    ``accumulating``: a step takes more than one micro-batch (gradients are alive during the forward pass).
    """
    if dtype not in DTYPE_BYTES:
        raise HoneError(f"unknown dtype {dtype!r}", where="dtype", fix=f"use one of {', '.join(DTYPE_BYTES)}")
    if tokens_per_gpu < 1 or world_size < 1:
        raise HoneError("tokens_per_gpu and world_size must be positive", where="estimate",
                        fix="pass max_tokens_per_gpu (or batch_size and max_seq_len) and num_gpus >= 1")
    model = meta_model(model_path, trust_remote_code=trust_remote_code)
    s = model_shape(model)
    b = DTYPE_BYTES[dtype]
    shards = world_size if sharded else 1
    T, H, I, KV, L, V = tokens_per_gpu, s.hidden, s.intermediate, s.kv_dim, s.layers, s.vocab
    details: dict[str, Any] = {"num_params": s.num_params, "layers": L, "hidden": H, "intermediate": I,
                               "vocab": V}
    bases = 0.0
    step_dtype_bytes = b
    if algorithm in ("sft", "osft"):
        trainable = s.num_params
        weights = s.num_params * b
        grad_bytes = trainable * b
        if algorithm == "osft":
            if osft_targets is None:
                raise HoneError("an OSFT estimate needs its targets", where="estimate_memory",
                                fix="call hone.hub.estimate_detail (it picks them as training does)")
            targets = osft_targets(model, getattr(torch, dtype))
            frozen = sum(shape[0] * shape[1] for shape, rep, _ in targets if rep < 0)
            trainable -= frozen
            grad_bytes = trainable * b
            bases = sum(rep + rows / shards for _, rep, rows in targets if rep >= 0)
            details.update(osft_targets=len(targets), osft_basis_bytes=int(bases))
        layer = (7 * H + 2 * KV + 4 * I) * b + 2 * H * 4
        chunk = min(T, max(FUSED_LOSS_MIN_ROWS, FUSED_LOSS_CHUNK_ELEMENTS // V))
        loss = chunk * V * (4 + b) + T * H * b + 2 * V * H * 4
    elif algorithm == "lora":
        if lora_targets is None:
            raise HoneError("a LoRA estimate needs its target modules", where="estimate_memory",
                            fix="call hone.hub.estimate_detail (it picks them as training does)")
        shapes = lora_targets(model)
        trainable = sum(lora_r * (i + o) for i, o in shapes)
        adapted = sum(i * o for i, o in shapes)
        if load_in_4bit:  # the block linears in NF4; everything else cast to float32 by peft's kbit preparation
            weights = adapted * NF4_BYTES_PER_PARAM + (s.num_params - adapted) * 4
            activation_checkpointing = True  # prepare_model_for_kbit_training turns it on
            b = DTYPE_BYTES["bfloat16"]
        else:
            weights = s.num_params * b
        weights += trainable * ADAPTER_BYTES
        grad_bytes = trainable * ADAPTER_BYTES
        step_dtype_bytes = ADAPTER_BYTES
        per_layer_adapters = len(shapes) / L
        if b == ADAPTER_BYTES:
            layer = (5 * H + 2 * KV + 4 * I) * b
        else:
            layer = (2 * H + 2 * KV + 3 * I) * b + (6 * H + I) * ADAPTER_BYTES
        layer += 2 * H * 4 + per_layer_adapters * lora_r * ADAPTER_BYTES
        loss = T * V * (b + 4 + 4)  # logits, float32 log-softmax, its gradient
        details.update(lora_modules=len(shapes), lora_parameters=trainable)
    else:
        raise HoneError(f"unknown algorithm {algorithm!r}", where="estimate_memory", fix="use sft, osft or lora")
    details["trainable_parameters"] = trainable

    weights /= shards
    optimizer = 2 * trainable * step_dtype_bytes / shards
    grads = grad_bytes / shards
    outside = T * (2 * H * 4 + 2 * s.head_dim * b)  # final norm, rotary tables
    if activation_checkpointing:
        activations = T * H * b * L + T * layer + outside
    else:
        activations = T * layer * L + outside
    gather = 2 * s.block_params * (b + (b if algorithm != "lora" else 0)) if shards > 1 else 0
    resident = weights + optimizer + bases
    if accumulating:
        fwd_bwd = resident + grads + activations + loss + gather
    else:  # backward frees a layer's activations as it allocates that layer's gradients
        fwd_bwd = resident + max(grads, activations) + loss + gather
    step = resident + grads + trainable * step_dtype_bytes / shards
    components = {"weights": weights, "optimizer": optimizer, "gradients": grads, "osft_bases": bases,
                  "activations": activations, "loss": loss, "fsdp_gather": gather}
    return MemoryEstimate(model_path=str(model_path), algorithm=algorithm, tokens_per_gpu=T, world_size=world_size,
                          dtype=dtype, components={k: int(v) for k, v in components.items()},
                          phases={"forward/backward": int(fwd_bwd), "optimizer step": int(step)},
                          details=details)


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"
