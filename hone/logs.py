"""hone's own output on stderr: log lines, warnings and progress bars, with other packages' noise kept out.

Three verbosities, chosen with ``hone --quiet`` / ``hone --verbose`` (:func:`configure`) and handed to the
processes hone starts (torchrun workers, pipeline stages) in the environment variable ``HONE_VERBOSITY``:

- ``normal``: hone's lines (``hone: ...``) and warnings (``hone: warning: ...``); progress bars when stderr is
  a terminal; the INFO lines, progress bars and known harmless warnings of transformers, lm-eval, MLflow,
  datasets... silenced (:func:`quiet_logger`, :func:`harmless_warnings`, :func:`third_party_bars`);
- ``quiet``: warnings, errors and results only: no INFO line, no progress bar;
- ``verbose``: hone's lines plus the raw output of the packages it uses.

Under torchrun only rank 0 prints INFO lines and progress bars; the other ranks print warnings and errors.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from typing import Any, Iterable, Iterator

ENV = "HONE_VERBOSITY"
VERBOSITIES = ("quiet", "normal", "verbose")
LOGGER = "hone"
FORMAT = "hone: %(message)s"

# (category, message regex) of warnings other packages print on every run although nothing is wrong
HARMLESS_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # transformers 5 deprecates the property peft reads when it wraps a model (every LoRA run, twice)
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)
# environment switches of other packages' progress bars and advisory output (read when they are imported)
_QUIET_ENV = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def verbosity() -> str:
    """``quiet``, ``normal`` or ``verbose`` (``HONE_VERBOSITY``; ``normal`` when unset or unknown)."""
    value = os.environ.get(ENV, "normal").strip().lower()
    return value if value in VERBOSITIES else "normal"


def is_quiet() -> bool:
    return verbosity() == "quiet"


def is_verbose() -> bool:
    return verbosity() == "verbose"


def is_main_rank() -> bool:
    """Whether this process prints (rank 0 under torchrun, or no torchrun)."""
    return os.environ.get("RANK", "0") in ("", "0")


def _interactive(stream: Any) -> bool:
    if "ipykernel" in sys.modules:  # a notebook: its stderr is no terminal, yet tqdm.auto draws a widget there
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_enabled(requested: bool | None = True) -> bool:
    """Whether to draw a progress bar: asked for (``progress=False`` turns it off), not ``--quiet``, rank 0, and
    stderr is a terminal (or a notebook). Logs and pipes get no bar characters."""
    return bool(requested) and not is_quiet() and is_main_rank() and _interactive(sys.stderr)


def progress(iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None, unit: str = "row",
             enabled: bool | None = True, **kwargs: Any):
    """A tqdm bar (rate and ETA) on stderr, drawn only when :func:`progress_enabled`; a no-op bar otherwise."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_enabled(enabled), **kwargs)


def quiet_logger(*names: str, level: int = logging.ERROR) -> None:
    """Raise the level of other packages' loggers (their INFO chatter off) unless ``--verbose``. Call it after
    importing the package: some (MLflow) set their own level when imported."""
    if is_verbose():
        return
    for name in names:
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def harmless_warnings() -> Iterator[None]:
    """Inside: the warnings of :data:`HARMLESS_WARNINGS` are not shown (unless ``--verbose``)."""
    if is_verbose():
        yield
        return
    with warnings.catch_warnings():
        for category, message in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def third_party_bars() -> None:
    """Other packages' own progress bars off (hone draws its own) unless ``--verbose``: datasets', the hub's,
    MLflow's and transformers'."""
    if is_verbose():
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if "datasets" in sys.modules:  # the variable is read at import; an imported datasets is told directly
        with contextlib.suppress(Exception):
            sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        with contextlib.suppress(Exception):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()


class Formatter(logging.Formatter):
    """``hone: message``, ``hone: warning: message``, ``hone: error: message``; another package's record (shown
    with --verbose, or a warning) is named by its logger: ``lm_eval.evaluator: message``."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        ours = record.name == LOGGER or record.name.startswith(LOGGER + ".")
        kind = "error: " if record.levelno >= logging.ERROR else "warning: " if record.levelno >= logging.WARNING \
            else ""
        if kind and message.startswith(kind):
            kind = ""
        return f"{LOGGER if ours else record.name}: {kind}{message}"


_original_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one hone line: ``hone: warning: FutureWarning: ... (transformers/modeling_utils.py)``."""
    if file is not None and file is not sys.stderr:
        _original_showwarning(message, category, filename, lineno, file, line)
        return
    where = re.sub(r"^.*(site-packages|dist-packages)[/\\]", "", str(filename))
    logging.getLogger(LOGGER).warning("%s: %s (%s:%s)", category.__name__, message, where, lineno)


def configure(level: str | None = None) -> str:
    """Set up this process's output (the ``hone`` command and torchrun workers call it once).

    ``level`` (``quiet``/``normal``/``verbose``) is exported in ``HONE_VERBOSITY`` for child processes; ``None``
    keeps what the environment says. Returns the verbosity in force.
    """
    if level is not None:
        if level not in VERBOSITIES:
            raise ValueError(f"verbosity must be one of {', '.join(VERBOSITIES)}, not {level!r}")
        os.environ[ENV] = level
    current = verbosity()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=FORMAT, stream=sys.stderr)
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:  # the console handler (not a test's capture handler)
            handler.setFormatter(Formatter())
    # other packages' INFO lines only with --verbose; hone's own unless --quiet, and only on rank 0
    root.setLevel(logging.INFO if current == "verbose" else logging.WARNING)
    quiet = current == "quiet" or not is_main_rank()
    logging.getLogger(LOGGER).setLevel(logging.WARNING if quiet else logging.INFO)
    if current == "verbose":
        warnings.showwarning = _original_showwarning
    else:
        third_party_bars()
        for category, message in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        warnings.showwarning = _show_warning  # the warnings that remain, folded into hone's lines
    return current


__all__ = ["ENV", "HARMLESS_WARNINGS", "Formatter", "configure", "harmless_warnings", "is_main_rank", "is_quiet",
           "is_verbose", "progress", "progress_enabled", "quiet_logger", "third_party_bars", "verbosity"]
