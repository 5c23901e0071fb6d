"""Process groups, sharding (FSDP2 / DDP) and the division of a step's samples among ranks."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import get_args

import torch
import torch.distributed as dist

from hone.config import DistributedConfig
from hone.errors import HoneError
from hone.models.structure import block_modules, unwrap

log = logging.getLogger("hone")
# instructlab-training's FSDPOptions (what Training Hub's fsdp_options holds)
FSDP_OPTION_KEYS = ("sharding_strategy", "cpu_offload_params")
SHARDING_STRATEGIES = get_args(DistributedConfig.model_fields["fsdp_sharding_strategy"].annotation)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands. ``world_size == 1`` and no process group means a plain local run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    nnodes: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher that sets the env:// variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


COLLECTIVE_TIMEOUT_ENV = "INSTRUCTLAB_NCCL_TIMEOUT_MS"  # instructlab-training's (Training Hub's) name
DEFAULT_COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def collective_timeout(env: dict[str, str] | None = None) -> timedelta:
    """How long a collective may wait for the other ranks: ``INSTRUCTLAB_NCCL_TIMEOUT_MS`` milliseconds, as
    instructlab-training reads it (the OpenShift AI SFT pipelines set it), else 30 minutes (torch's NCCL
    default of 10 is short for a first checkpoint of a large model on a slow volume)."""
    text = (os.environ if env is None else env).get(COLLECTIVE_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_COLLECTIVE_TIMEOUT
    try:
        ms = int(text)
    except ValueError:
        ms = 0
    if ms <= 0:
        raise HoneError(f"{COLLECTIVE_TIMEOUT_ENV}={text!r} is not a positive number of milliseconds",
                        where=COLLECTIVE_TIMEOUT_ENV, fix="set it to e.g. 600000 (10 minutes), or unset it")
    return timedelta(milliseconds=ms)


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group when launched by torchrun; otherwise a single-process environment."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistEnv()
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=collective_timeout())
    nnodes = max(1, world // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    return DistEnv(rank, world, local, nnodes)


def local_device(device: torch.device, env: DistEnv) -> torch.device:
    """The device of this rank (cuda:LOCAL_RANK on GPU)."""
    if device.type == "cuda" and env.enabled:
        return torch.device("cuda", env.local_rank)
    return device


def split_among_ranks(indices: list[int], lengths: list[int], world_size: int) -> list[list[int]]:
    """Divide one step's samples among ranks, balanced by token count (longest first, to the lightest rank).

    Every rank computes the same division from the same inputs, so no communication is needed.
    """
    shares: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        shares[r].append(i)
        load[r] += lengths[i]
    return shares


@dataclass(frozen=True)
class FSDPPlan:
    """How the model is sharded: ``fsdp_sharding_strategy`` and ``fsdp_options`` resolved together."""

    sharding_strategy: str
    cpu_offload_params: bool = False


def fsdp_plan(cfg: DistributedConfig) -> FSDPPlan:
    """Read Training Hub's ``fsdp_options`` (instructlab's FSDPOptions keys) over ``fsdp_sharding_strategy``.

    An unknown key, a bad value, or a strategy that disagrees with an explicitly given
    ``fsdp_sharding_strategy`` is a :class:`HoneError`.
    """
    opts = dict(cfg.fsdp_options or {})
    unknown = sorted(set(opts) - set(FSDP_OPTION_KEYS))
    if unknown:
        raise HoneError(f"unknown fsdp_options key(s): {', '.join(map(repr, unknown))}", where="fsdp_options",
                        fix=f"use only {', '.join(FSDP_OPTION_KEYS)}")
    strategy = cfg.fsdp_sharding_strategy
    if opts.get("sharding_strategy") is not None:
        given = str(getattr(opts["sharding_strategy"], "value", opts["sharding_strategy"])).upper()
        if given not in SHARDING_STRATEGIES:
            raise HoneError(f"unknown fsdp_options sharding_strategy {opts['sharding_strategy']!r}",
                            where="fsdp_options.sharding_strategy", fix=f"use one of {', '.join(SHARDING_STRATEGIES)}")
        if "fsdp_sharding_strategy" in cfg.model_fields_set and given != strategy:
            raise HoneError(f"fsdp_options sharding_strategy={given} disagrees with fsdp_sharding_strategy={strategy}",
                            where="parameters fsdp_options and fsdp_sharding_strategy", fix="give the strategy once")
        strategy = given
    offload = opts.get("cpu_offload_params")
    if offload is not None and not isinstance(offload, bool):
        raise HoneError(f"fsdp_options cpu_offload_params must be true or false (got {offload!r})",
                        where="fsdp_options.cpu_offload_params", fix="pass a boolean")
    if offload and strategy == "NO_SHARD":
        raise HoneError("fsdp_options cpu_offload_params needs FSDP sharding; NO_SHARD trains with DDP",
                        where="parameters fsdp_options and fsdp_sharding_strategy",
                        fix="use FULL_SHARD, SHARD_GRAD_OP or HYBRID_SHARD, or drop cpu_offload_params")
    return FSDPPlan(strategy, bool(offload))


def resolve_fsdp_options(cfg: DistributedConfig) -> DistributedConfig:
    """``cfg`` with the sharding strategy of ``fsdp_options`` folded into ``fsdp_sharding_strategy`` (so that
    torchrun workers, which receive every field explicitly, see the two agree)."""
    plan = fsdp_plan(cfg)
    if plan.sharding_strategy == cfg.fsdp_sharding_strategy:
        return cfg
    return cfg.model_copy(update={"fsdp_sharding_strategy": plan.sharding_strategy})


def shard_model(model: torch.nn.Module, cfg: DistributedConfig, env: DistEnv, device: torch.device,
                ) -> torch.nn.Module:
    """Wrap for data parallelism: FSDP2 per block and at the root (parameters offloaded to the CPU with
    ``fsdp_options={"cpu_offload_params": True}``), or DDP for NO_SHARD."""
    plan = fsdp_plan(cfg)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if not env.enabled:
        if plan.cpu_offload_params:
            log.warning("fsdp_options cpu_offload_params: a single process trains unsharded, nothing is offloaded")
        return model
    if plan.sharding_strategy == "NO_SHARD":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if plan.sharding_strategy == "HYBRID_SHARD":
        per_node = env.world_size // env.nnodes
        mesh = init_device_mesh(device.type, (env.nnodes, per_node), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    reshard = plan.sharding_strategy != "SHARD_GRAD_OP"
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if plan.cpu_offload_params else OffloadPolicy()
    for layer in block_modules(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard, offload_policy=offload)
    return model


def apply_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each transformer block in backward instead of storing its activations."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (apply_activation_checkpointing as
                                                                             _apply, checkpoint_wrapper)

    blocks = {id(m) for m in block_modules(model)}
    if not blocks:
        raise HoneError("activation_checkpointing: no transformer blocks found in the model",
                        where="activation_checkpointing", fix="turn it off for this architecture")
    _apply(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=lambda m: id(m) in blocks)


def all_reduce_(tensor: torch.Tensor, env: DistEnv, op=None) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def full_state_dict(model: torch.nn.Module, env: DistEnv) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict on rank 0's CPU (a collective: every rank must call it); None elsewhere
    and in single-process runs (where the model itself is saved)."""
    if not env.enabled:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if env.is_main else None


def destroy(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
