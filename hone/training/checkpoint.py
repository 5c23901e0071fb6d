"""Full-state checkpoints (model, optimizer, scheduler, data position, every rank's RNG, algorithm state)
with ``torch.distributed.checkpoint``, written so that a checkpoint is visible only when complete.

Layout: ``<ckpt_output_dir>/checkpoints/step_<NNNNNNNN>/`` holding the DCP shards, ``trainer_state.json``,
``scheduler.pt``, ``algorithm_state.pt``, ``rng_rank<r>.pt`` and, written last, ``COMPLETE``. Every rank
writes into ``.step_<N>.tmp``; rank 0 renames it into place after all ranks are done, so a crash while
saving leaves only a temporary directory that is never picked up (and is removed by the next save).
"""
from __future__ import annotations

import json
import random
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from hone.errors import HoneError
from hone.layout import STEP_DIR as _STEP_DIR
from hone.layout import STEP_PREFIX, TrainingLayout
from hone.training.distributed import DistEnv, barrier, unwrap

COMPLETE = "COMPLETE"


@dataclass
class TrainState:
    """Where the run is: enough to continue exactly."""

    epoch: int = 0              # current epoch (0-based)
    step_in_epoch: int = 0      # optimizer steps already done in this epoch
    global_step: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    world_size: int = 1


def checkpoints_dir(output_dir: Path) -> Path:
    return TrainingLayout(output_dir).checkpoints


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / "trainer_state.json").is_file()


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or None."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and is_complete(p)]
    return max(done, key=lambda p: int(_STEP_DIR.match(p.name).group(1)), default=None)


def resolve_resume(resume_from: str | None, output_dir: Path) -> Path | None:
    """``None`` (fresh start), ``'auto'`` (latest complete checkpoint, or fresh when there is none) or a path."""
    if resume_from is None:
        return None
    if resume_from == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume_from)
    if not is_complete(path):
        raise HoneError(f"{path} is not a complete hone checkpoint (no {COMPLETE} marker or trainer_state.json)",
                        where="resume_from",
                        fix="pass a directory under <ckpt_output_dir>/checkpoints/ that has a COMPLETE file, "
                            "or resume_from='auto'")
    return path


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dicts(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(unwrap(model), optimizer)


def save_full_state(output_dir: Path, model, optimizer, scheduler, hooks, state: TrainState, env: DistEnv,
                    keep_last: int = 2) -> Path:
    """Write a complete, resumable checkpoint of the current step (a collective: every rank calls it)."""
    root = checkpoints_dir(output_dir)
    final = TrainingLayout(output_dir).full_state(state.global_step)
    tmp = root / f".{final.name}.tmp"
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(env)
    model_sd, optim_sd = _state_dicts(model, optimizer)
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=not env.enabled)
    torch.save(_rng_state(), tmp / f"rng_rank{env.rank}.pt")
    if env.is_main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(hooks.state_dict(), tmp / "algorithm_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
    barrier(env)
    if env.is_main:
        (tmp / COMPLETE).write_text("")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _prune(root, keep_last)
    barrier(env)
    return final


def _prune(root: Path, keep_last: int) -> None:
    done = sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name) and is_complete(p)), key=lambda p: p.name)
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".{STEP_PREFIX}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def load_full_state(path: Path, model, optimizer, scheduler, hooks, env: DistEnv) -> TrainState:
    """Restore everything :func:`save_full_state` wrote (a collective)."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = TrainState(**json.loads((path / "trainer_state.json").read_text()))
    hooks.load_state_dict(torch.load(path / "algorithm_state.pt", weights_only=False))
    model_sd, optim_sd = _state_dicts(model, optimizer)
    loaded = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(loaded, checkpoint_id=str(path), no_dist=not env.enabled)
    set_state_dict(unwrap(model), optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng_rank{env.rank}.pt"
    if rng.is_file() and state.world_size == env.world_size:
        _set_rng_state(torch.load(rng, weights_only=False))
    return state
