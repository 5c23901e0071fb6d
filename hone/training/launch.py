"""Start ``torch.distributed.run`` (torchrun) when more than one process is asked for.

Precedence is Training Hub's: explicit arguments, then the ``PET_*`` variables that Kubeflow Trainer sets in
every pod, then defaults. Under torchrun already, nothing is launched: the process joins the group.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from hone.config import DistributedConfig, RunConfig
from hone.errors import HoneError
from hone.io import atomic_write_text
from hone.layout import TrainingLayout
from hone.training.callbacks import dump_callbacks
from hone.training.distributed import under_torchrun


# The process torchrun starts (the composition root beside hone.api): ``python -m hone.worker CONFIG``.
WORKER_MODULE = "hone.worker"


@dataclass(frozen=True)
class LaunchPlan:
    nproc_per_node: int
    nnodes: int
    node_rank: int
    rdzv_id: str | None
    rdzv_endpoint: str | None
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def _env(name: str) -> str | None:
    value = os.environ.get(f"PET_{name.upper()}")
    return value if value not in (None, "") else None


def _nproc(value: int | str | None) -> int:
    if value is None:
        return 1
    if isinstance(value, int):
        return value
    if value == "gpu":
        if not torch.cuda.is_available():
            raise HoneError("nproc_per_node='gpu' but no CUDA GPU is visible", where="nproc_per_node",
                            fix="pass an integer (CPU processes) or run on a GPU machine")
        return torch.cuda.device_count()
    if value == "auto":
        return torch.cuda.device_count() if torch.cuda.is_available() else 1
    try:
        n = int(value)
    except ValueError:
        raise HoneError(f"invalid nproc_per_node {value!r}", where="nproc_per_node or PET_NPROC_PER_NODE",
                        fix="use an integer, auto or gpu") from None
    if n < 1:
        raise HoneError(f"nproc_per_node must be at least 1 (got {n})", where="nproc_per_node",
                        fix="use a positive integer")
    return n


def resolve_launch(cfg: DistributedConfig) -> LaunchPlan:
    """Arguments first, then PET_* environment variables, then defaults."""
    def pick(name: str, cast=str):
        given = getattr(cfg, name)
        if given is not None:
            return given
        env = _env(name)
        if env is None:
            return None
        try:
            return cast(env)
        except ValueError:
            raise HoneError(f"invalid PET_{name.upper()}={env!r}", where=f"environment variable PET_{name.upper()}",
                            fix="set it to a valid value or pass the parameter explicitly") from None

    nproc_raw = pick("nproc_per_node")
    rdzv_endpoint = pick("rdzv_endpoint")
    master_addr, master_port = pick("master_addr"), pick("master_port", int)
    if rdzv_endpoint and cfg.rdzv_endpoint is None and (cfg.master_addr or cfg.master_port):
        rdzv_endpoint = None  # explicit static rendezvous arguments beat an inherited PET_RDZV_ENDPOINT
    if rdzv_endpoint and (cfg.master_addr or cfg.master_port):
        raise HoneError("master_addr/master_port and rdzv_endpoint are mutually exclusive",
                        where="parameters master_addr, master_port, rdzv_endpoint",
                        fix="use one rendezvous style")
    return LaunchPlan(
        nproc_per_node=_nproc(nproc_raw),
        nnodes=pick("nnodes", int) or 1,
        node_rank=pick("node_rank", int) or 0,
        rdzv_id=pick("rdzv_id"),
        rdzv_endpoint=rdzv_endpoint,
        master_addr=master_addr or "127.0.0.1",
        master_port=master_port or 0,
    )


def needs_launch(plan: LaunchPlan) -> bool:
    """More than one process wanted and not already inside torchrun."""
    return plan.world_size > 1 and not under_torchrun()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(plan: LaunchPlan, config_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={plan.nproc_per_node}",
           f"--nnodes={plan.nnodes}", f"--node_rank={plan.node_rank}"]
    if plan.rdzv_endpoint:
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={plan.rdzv_endpoint}", f"--rdzv_id={plan.rdzv_id or 'hone'}"]
    else:
        port = plan.master_port or (_free_port() if plan.nnodes == 1 else 29500)
        cmd += [f"--master_addr={plan.master_addr}", f"--master_port={port}"]
    return cmd + ["-m", WORKER_MODULE, str(config_file)]


def launch(cfg: RunConfig, plan: LaunchPlan) -> int:
    """Run this configuration under torchrun and wait; SIGTERM/SIGINT are passed on to the workers' launcher.

    Returns torchrun's exit status. The workers write every output (``training_result.json`` included).
    """
    out = Path(cfg.train.ckpt_output_dir)
    layout = TrainingLayout(out)
    config_file = atomic_write_text(layout.launch_config, json.dumps(cfg.to_flat(), indent=2))
    if cfg.train.callbacks:  # live objects: pickled beside the config (hone.worker reads them back)
        dump_callbacks(list(cfg.train.callbacks), layout.callbacks_payload)
    else:
        layout.callbacks_payload.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                           str(max(1, (os.cpu_count() or 1) // plan.nproc_per_node)))}
    proc = subprocess.Popen(torchrun_command(plan, config_file), env=env)

    def forward(signum, _frame):
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
