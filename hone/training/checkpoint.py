"""Checkpoints. Full-state ones (model, optimizer, scheduler, data position, every rank's RNG, algorithm state)
with ``torch.distributed.checkpoint``, written so that a checkpoint is visible only when complete; and the names
of the Hugging Face ones (:class:`HFCheckpoints`).

Layout: ``<ckpt_output_dir>/checkpoints/step_<NNNNNNNN>/`` holding the DCP shards, ``trainer_state.json``,
``scheduler.pt``, ``algorithm_state.pt``, ``rng_rank<r>.pt`` and, written last, ``COMPLETE``. Every rank
writes into ``.step_<N>.tmp``; rank 0 renames it into place after all ranks are done, so a crash while
saving leaves only a temporary directory that is never picked up (and is removed by the next save).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed.checkpoint as dcp

from hone.errors import HoneError
from hone.layout import (BEST_VAL_LOSS_SUFFIX, LAST_EPOCH, SAMPLES_PREFIX, STEP_PREFIX, TrainingLayout, adapter_dir,
                         samples_name)
from hone.layout import STEP_DIR as _STEP_DIR
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
    best_val_loss: float | None = None  # the lowest validation loss saved so far (save_best_val_loss)
    saved_samples: int = 0              # samples_seen at the last save_samples checkpoint


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


class HFCheckpoints:
    """Names the Hugging Face checkpoints as Training Hub's backends do, writing each set of weights once.

    A checkpoint is written as ``samples_<N>`` (N = samples trained so far; ``samples_<N>.0`` with
    ``float_spelling``, OSFT's mini-trainer spelling), or as the one ``last_epoch`` directory rewritten by every
    save with ``keep_last_only`` (instructlab); a new best validation loss as ``samples_<N>_best_val_loss``.
    hone's names (``epoch_<n>``, ``final``) and any second name of weights already written at the same N are
    relative links, so they keep working when the run directory moves. ``write(name)`` writes the weights
    (a collective); links and pruning are done on the main rank.
    """

    def __init__(self, hf_root: Path, write: Callable[[str], Path], *, float_spelling: bool = False,
                 keep_last_only: bool = False, is_main: bool = True) -> None:
        self.hf_root, self.write = Path(hf_root), write
        self.float_spelling, self.keep_last_only, self.is_main = float_spelling, keep_last_only, is_main
        self._samples: int | None = None  # the sample count of the weights written last ...
        self._written: list[str] = []     # ... and the directories holding them
        self.named: Path | None = None    # the last checkpoint under Training Hub's name (what on_save reports)

    def save(self, samples: int, alias: str | None = None) -> Path:
        """A checkpoint after ``samples`` samples, also named ``alias``; returns the ``alias`` path if given."""
        name = LAST_EPOCH if self.keep_last_only else samples_name(samples, float_spelling=self.float_spelling)
        self._put(samples, name, stable_only=False)
        self.named = self._result(name)
        if alias is not None:
            self._link(alias, name)
        if self.keep_last_only:
            self._prune(keep={name, alias})
        return self._result(alias or name)

    def save_best(self, samples: int) -> Path:
        """The checkpoint of a new best validation loss (``samples_<N>_best_val_loss``)."""
        name = samples_name(samples, float_spelling=self.float_spelling, best_val_loss=True)
        self._put(samples, name, stable_only=True)
        if self.keep_last_only:
            self._prune(keep={name, LAST_EPOCH})
        self.named = self._result(name)
        return self.named

    def _put(self, samples: int, name: str, *, stable_only: bool) -> None:
        """Make ``name`` hold the current weights: a link to a directory already holding them, else a write.
        ``stable_only``: never link to ``last_epoch`` (rewritten by the next save)."""
        held = [n for n in self._written if not (stable_only and n == LAST_EPOCH)] if samples == self._samples else []
        if name in held:
            return
        if held:
            self._link(name, held[0])
            return
        for old in (self.hf_root / name, adapter_dir(self.hf_root, name)):
            if self.is_main and old.is_symlink():
                old.unlink()  # a link left by an earlier save: the weights now go here
        self.write(name)
        if samples != self._samples:
            self._samples, self._written = samples, []
        self._written.append(name)

    def _link(self, name: str, target: str) -> None:
        if not self.is_main or name == target:
            return
        for link, to in ((name, target), (adapter_dir("", name).name, adapter_dir("", target).name)):
            if (self.hf_root / to).exists():
                relative_link(self.hf_root / link, to)

    def _prune(self, keep: set[str | None]) -> None:
        """keep_last_only: remove every other checkpoint (the newest best-validation-loss one stays)."""
        if not self.is_main or not self.hf_root.is_dir():
            return
        keep = {k for k in keep if k}
        best = [p.name for p in self.hf_root.iterdir() if p.name.endswith(BEST_VAL_LOSS_SUFFIX) and p.is_dir()]
        if best:
            keep.add(max(best, key=lambda n: float(n[len(SAMPLES_PREFIX):-len(BEST_VAL_LOSS_SUFFIX)])))
        keep |= {adapter_dir("", k).name for k in keep}
        for entry in self.hf_root.iterdir():
            if entry.name.startswith(".") or entry.name in keep:
                continue
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            else:
                shutil.rmtree(entry, ignore_errors=True)

    def _result(self, name: str) -> Path:
        path = self.hf_root / name
        adapter = adapter_dir(self.hf_root, name)
        return adapter if not path.exists() and adapter.exists() else path


def relative_link(link: Path, target: str) -> Path:
    """Point ``link`` at its sibling ``target`` (a relative link), replacing whatever ``link`` was."""
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp, target_is_directory=True)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)  # a directory of that name from an earlier run
    os.replace(tmp, link)
    return link
