"""Can an evaluation's task data be had? Checked in a second or two, before a long training starts.

A built-in lm-eval task reads a Hugging Face hub dataset (its YAML's ``dataset_path``). Offline
(``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) that works only when the dataset is in the local cache; online
the hub must answer. Local tasks (``include_path`` directories, YAML files) read local files and are always
available; groups and tags are left to lm-eval.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from hone.errors import HoneError

_TASK = re.compile(r"^[\"']?task[\"']?\s*:\s*[\"']?([^\s\"']+)[\"']?\s*$", re.M)
_DATASET = re.compile(r"^dataset_path\s*:\s*[\"']?([^\s\"'#]+)", re.M)
_INCLUDE = re.compile(r"^include\s*:\s*[\"']?([^\s\"'#]+)", re.M)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    return _truthy("HF_HUB_OFFLINE") or _truthy("HF_DATASETS_OFFLINE")


def builtin_datasets(names: list[str]) -> dict[str, str]:
    """Task name -> the hub dataset its built-in lm-eval YAML reads (following one ``include``), for the names
    that are built-in tasks (not groups, tags or unknown names)."""
    import lm_eval.tasks

    wanted, out = set(names), {}
    for f in Path(lm_eval.tasks.__file__).parent.rglob("*.yaml"):
        text = f.read_text(errors="replace")
        m = _TASK.search(text)
        if not m or m.group(1) not in wanted:
            continue
        ds = _DATASET.search(text)
        if ds is None and (inc := _INCLUDE.search(text)) and (f.parent / inc.group(1)).is_file():
            ds = _DATASET.search((f.parent / inc.group(1)).read_text(errors="replace"))
        if ds is not None:
            out[m.group(1)] = ds.group(1)
    return out


def cached(dataset: str) -> bool:
    """True when the hub dataset is in the local Hugging Face caches (hub files or prepared datasets)."""
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}"
    prepared = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    return hub.is_dir() or (prepared / dataset.replace("/", "___")).is_dir()


def hub_reachable(timeout: float = 3.0) -> bool:
    import requests
    from huggingface_hub import constants

    try:
        requests.head(constants.ENDPOINT, timeout=timeout)
        return True
    except requests.RequestException:
        return False


def check_task_data(names: list[str], *, where: str = "tasks (--tasks)") -> None:
    """Raise :class:`HoneError` naming each built-in task whose dataset cannot be had now, with the choices."""
    datasets = builtin_datasets([n for n in names if not n.endswith((".yaml", ".yml"))])
    need = {t: d for t, d in datasets.items() if not Path(d).exists() and not cached(d)}
    if not need:
        return
    if offline():
        why = "offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set) and not in the local cache"
    elif hub_reachable():
        return
    else:
        why = "the Hugging Face hub cannot be reached and they are not in the local cache"
    listed = ", ".join(f"{t} ({d})" for t, d in sorted(need.items()))
    raise HoneError(f"evaluation data unavailable for {listed}: {why}", where=where,
                    fix="evaluate only local tasks (an --include-path directory of task YAMLs), or no lm-eval task "
                        "(an empty task list: the holdout split is still scored), or download the datasets once "
                        "with network access")
