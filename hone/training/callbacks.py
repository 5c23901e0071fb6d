"""Training Hub's callback protocol: ``TrainingHubCallback`` objects called at each point of the run.

The same classes and hook names as ``training_hub.callbacks`` (a subclass written for Training Hub works here
unchanged, and any object with some of the ``on_*`` methods is accepted): every hook receives a
:class:`TrainingHubContext`. As in Training Hub's backend adapters, hooks run on rank 0 only unless the
callback sets ``run_on_all_ranks = True``, and an exception raised by a hook never stops training (it is logged
once per callback and hook).

Under torchrun the callback objects are pickled by the launcher (:func:`dump_callbacks`, next to the launch
configuration) and unpickled in every worker (:func:`load_callbacks`), instance state included: a class
defined in the user's script (``__main__``) travels by value, one from an importable module by reference.
"""
from __future__ import annotations

import logging
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from hone.errors import HoneError

log = logging.getLogger("hone")

HOOKS = ("on_train_begin", "on_epoch_begin", "on_step_begin", "on_log", "on_evaluate", "on_save", "on_step_end",
         "on_epoch_end", "on_train_end")


@dataclass
class TrainingHubContext:
    """The training state every hook receives (Training Hub's fields).

    ``epoch`` and ``step`` count what is completed, as mini-trainer's context does: ``epoch`` is 0 during the
    first epoch and 1 from its ``on_epoch_end``; ``step`` is the optimizer step just taken (from ``on_log`` to
    ``on_step_end``), or the steps taken before it in ``on_step_begin``. ``metrics`` holds the step's record in
    ``on_log``/``on_step_end``, the validation figures (``val_loss``...) in ``on_evaluate`` and
    ``checkpoint_path`` (Training Hub's ``samples_<N>`` name) in ``on_save``.
    """

    step: int = 0
    epoch: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    is_main_process: bool = True
    output_dir: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


class TrainingHubCallback:
    """Base class of run callbacks: every hook is a no-op; override the ones you need."""

    run_on_all_ranks: bool = False

    def on_train_begin(self, context: TrainingHubContext) -> None:
        """After setup, before the first step."""

    def on_epoch_begin(self, context: TrainingHubContext) -> None:
        """At the start of each epoch."""

    def on_step_begin(self, context: TrainingHubContext) -> None:
        """Before each optimizer step's forward passes."""

    def on_log(self, context: TrainingHubContext) -> None:
        """When a step's metrics are recorded."""

    def on_evaluate(self, context: TrainingHubContext) -> None:
        """After the validation loss is measured."""

    def on_save(self, context: TrainingHubContext) -> None:
        """After a Hugging Face checkpoint is written (``metrics['checkpoint_path']``)."""

    def on_step_end(self, context: TrainingHubContext) -> None:
        """At the end of each optimizer step (after its checkpoints)."""

    def on_epoch_end(self, context: TrainingHubContext) -> None:
        """At the end of each epoch."""

    def on_train_end(self, context: TrainingHubContext) -> None:
        """After training (and the final checkpoint)."""


def check_callbacks(callbacks: Iterable[Any] | Any | None) -> list[Any]:
    """The callbacks as a list; a class instead of an instance, or an object with no hook, is a HoneError."""
    if callbacks is None:
        return []
    items = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    for cb in items:
        name = getattr(cb, "__name__", type(cb).__name__)
        if isinstance(cb, type):
            raise HoneError(f"callbacks: {name} is a class, not a callback object", where="callbacks",
                            fix=f"pass an instance: callbacks=[{name}()]")
        if not any(callable(getattr(cb, hook, None)) for hook in HOOKS):
            raise HoneError(f"callbacks: {name} has none of the hooks {', '.join(HOOKS)}", where="callbacks",
                            fix="subclass hone.training.callbacks.TrainingHubCallback (or Training Hub's) and "
                                "override the hooks you need")
    return items


class CallbackRunner:
    """Calls every callback's hook with a fresh context, on the ranks it asked for, never letting it fail the run."""

    def __init__(self, callbacks: Iterable[Any] | None, *, rank: int, output_dir: str | Path) -> None:
        self.callbacks = check_callbacks(callbacks)
        self.is_main = rank == 0
        self.base = TrainingHubContext(is_main_process=self.is_main, output_dir=str(output_dir))
        self._reported: set[tuple[int, str]] = set()

    def _runs_here(self, cb: Any) -> bool:
        return self.is_main or bool(getattr(cb, "run_on_all_ranks", False))

    def fire(self, hook: str, *, step: int, epoch: int, loss: float | None = None,
             learning_rate: float | None = None, metrics: dict[str, Any] | None = None) -> None:
        """Call ``hook`` on every callback that runs on this rank; each gets its own copy of the context."""
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is None or not self._runs_here(cb):
                continue
            context = replace(self.base, step=step, epoch=epoch, loss=loss, learning_rate=learning_rate,
                              metrics=dict(metrics or {}))
            try:
                method(context)
            except Exception:  # a callback never stops training
                key = (id(cb), hook)
                if key not in self._reported:
                    self._reported.add(key)
                    log.exception("callback %s.%s raised (ignored; further errors of this hook are not logged)",
                                  type(cb).__name__, hook)


def dump_callbacks(callbacks: list[Any], path: str | Path) -> Path:
    """Pickle ``callbacks`` for the torchrun workers, with this process's import path (so that a class from a
    module this process imported is found there too)."""
    import dill  # a dependency of datasets; pickles classes defined in __main__ by value

    try:
        payload = dill.dumps(callbacks, recurse=True)
    except Exception as err:
        raise HoneError(f"callbacks cannot be sent to the torchrun workers: {err}", where="callbacks",
                        fix="define callback classes at module level and keep their state picklable "
                            "(no open files, locks or live connections)") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)  # private (0600): it is code
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump({"sys_path": list(sys.path), "callbacks": payload}, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_callbacks(path: str | Path) -> list[Any]:
    """Unpickle what :func:`dump_callbacks` wrote (in a torchrun worker)."""
    import dill

    data = pickle.loads(Path(path).read_bytes())
    sys.path.extend(p for p in data["sys_path"] if p not in sys.path)
    try:
        return dill.loads(data["callbacks"])
    except Exception as err:
        raise HoneError(f"the callbacks could not be rebuilt in a torchrun worker: {err}", where=str(path),
                        fix="define callback classes in the training script or in a module the workers can "
                            "import (not inside a function)") from None
