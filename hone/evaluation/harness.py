"""lm-evaluation-harness through its Python API: task resolution, the model wrapper, flat metrics.

Task resolution indexes only what it needs. Local task directories (``include_path``) are indexed alone
(``TaskManager(include_defaults=False)``, milliseconds); lm-eval's ~14,000 built-in YAMLs (10-30 s to index) are
indexed only when a requested name is not local, after a cheap text scan has confirmed that lm-eval knows it.
Relative ``data_files`` / ``data_dir`` / ``dataset_path`` in a local task YAML are resolved from the YAML's
directory when the file exists there (lm-eval itself resolves them from the current directory), so
``--include-path examples/eval/tasks`` works from anywhere.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone.errors import HoneError, suggest
from hone.logs import is_verbose, progress, quiet_logger, third_party_bars

log = logging.getLogger("hone")

CPU_BATCH_SIZE = 8  # "auto" on CPU: lm-eval's auto-detection would try 64 rows of the model's full context


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise HoneError("lm-eval is not installed, so lm-eval tasks cannot run", where="tasks / include_path",
                        fix="pip install 'hone[eval]' (or evaluate only the holdout split with eval_data_path)") from None


# -- tasks --------------------------------------------------------------------------------------------------------
@dataclass
class TaskPlan:
    """Requested task names resolved against a TaskManager that knows all of them."""

    names: list[str]
    manager: Any                  # lm_eval.tasks.TaskManager
    uses_defaults: bool           # whether lm-eval's built-in tasks were indexed
    include_paths: list[Path]

    def load(self) -> list[Any]:
        """Fresh Task/Group objects (each evaluation gets its own: lm-eval mutates them)."""
        built = []
        for name in self.names:
            try:
                obj = self.manager.load([name])
            except Exception as err:  # noqa: BLE001 - lm-eval/datasets raise many types; name the task
                raise _load_error(name, self.manager, err) from None
            built += list(obj.get("groups", {}).values()) or list(obj["tasks"].values())
        return _top_level(built)


def _top_level(objs: list[Any]) -> list[Any]:
    """Drop tasks that a requested group already holds (lm-eval rejects duplicates)."""
    from lm_eval.api.group import Group

    inside = {t.task_name for g in objs if isinstance(g, Group) for t in g.get_all_tasks()}
    inside |= {sg.name for g in objs if isinstance(g, Group) for sg in g.get_all_groups()}
    out, seen = [], set()
    for o in objs:
        name = o.name if isinstance(o, Group) else o.task_name
        if name in seen or name in inside:
            continue
        seen.add(name)
        out.append(o)
    return out


def split_names(tasks: list[str] | str | None) -> list[str]:
    if not tasks:
        return []
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    return [t.strip() for item in items for t in str(item).split(",") if t.strip()]


def resolve_tasks(tasks: list[str] | str | None, include_path: list[str] | str | None) -> TaskPlan | None:
    """Check every requested name (or take every task of the include paths when none is named); None when
    there is nothing for lm-eval to run."""
    checked = _check_names(tasks, include_path)
    if checked is None:
        return None
    names, paths, local, missing = checked
    if not missing:
        return TaskPlan(names, local, False, paths)
    from lm_eval.tasks import TaskManager

    log.info("indexing lm-eval's built-in tasks for %s (takes 10-30 s)", ", ".join(missing))
    full = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=True)
    _resolve_relative_paths(full)
    return TaskPlan(names, full, True, paths)


def check_task_names(tasks: list[str] | str | None, include_path: list[str] | str | None) -> None:
    """:func:`resolve_tasks`'s checks of the names and directories, without indexing lm-eval's built-in tasks
    (about 1 s): for checking an evaluation's configuration before a long training."""
    _check_names(tasks, include_path)


def _check_names(tasks: list[str] | str | None, include_path: list[str] | str | None
                 ) -> tuple[list[str], list[Path], Any, list[str]] | None:
    """(names, include paths, the include paths' TaskManager, names only lm-eval's built-ins hold), or None."""
    names = split_names(tasks)
    paths = [Path(p).expanduser() for p in ([include_path] if isinstance(include_path, str) else include_path or [])]
    for p in paths:
        if not p.is_dir():
            raise HoneError(f"task directory not found: {p}", where="include_path (--include-path)",
                            fix="pass a directory of lm-eval task YAML files")
    if not names and not paths:
        return None
    require_lm_eval()
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    local = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=False)
    _resolve_relative_paths(local)
    if not names:
        names = sorted(n for n, e in local.task_index.items() if e.kind in (Kind.TASK, Kind.PY_TASK))
        if not names:
            raise HoneError(f"no lm-eval task YAML found in {', '.join(map(str, paths))}" + _unreadable(paths),
                            where="include_path (--include-path)",
                            fix="add YAML files with a `task: NAME` key, or name the tasks with --tasks")
        return names, paths, local, []
    missing = [n for n in names if n not in local.task_index and not _is_yaml_file(n)]
    if missing:
        known = default_task_names()
        unknown = [n for n in missing if n not in known]
        if unknown:
            hint = suggest(unknown[0], set(known) | set(local.task_index))
            raise HoneError(
                f"unknown evaluation task {unknown[0]!r}" + (f": {hint}" if hint else "") + _unreadable(paths),
                where="tasks (--tasks)",
                fix="use a task lm-eval registers (`lm-eval ls tasks` lists them), a task YAML file, or a task "
                    "defined in a directory passed with --include-path")
    return names, paths, local, missing


def _is_yaml_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).expanduser().is_file()


def _unreadable(paths: list[Path]) -> str:
    """' (these YAML files could not be read: ...)' for broken YAML files in the include paths."""
    from lm_eval.tasks._yaml_loader import load_yaml

    bad = []
    for root in paths:
        for f in sorted(root.glob("**/*.yaml")):
            try:
                load_yaml(f, resolve_func=False)
            except Exception as err:  # noqa: BLE001
                bad.append(f"{f}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    return f" (these task files could not be read: {'; '.join(bad[:5])})" if bad else ""


@functools.lru_cache(maxsize=1)
def default_task_names() -> frozenset[str]:
    """Every name lm-eval's built-in task index would hold (a superset), from a text scan of its YAML files
    (about 1 s instead of parsing them all)."""
    import lm_eval.tasks

    key = re.compile(r"^[\"']?(task|group|tag)[\"']?\s*:[ \t]*(.*)$", re.M)
    item = re.compile(r"^\s*-\s*(.+)$")
    names: set[str] = set()
    for f in Path(lm_eval.tasks.__file__).parent.rglob("*"):
        if f.suffix not in (".yaml", ".yml", "") or not f.is_file():
            continue
        is_task_file = f.suffix == ".yaml"  # other files are `include`d templates: only their tags register
        text = f.read_text(errors="replace")
        for m in key.finditer(text):
            if not is_task_file and m.group(1) != "tag":
                continue
            value = m.group(2).split(" #")[0].strip()
            if value.startswith("["):
                names.update(v.strip().strip("'\"") for v in value.strip("[]").split(",") if v.strip())
            elif value:
                names.add(value.strip("'\""))
            elif m.group(1) == "tag":
                for line in text[m.end():].split("\n")[1:]:
                    it = item.match(line)
                    if not it:
                        break
                    names.add(it.group(1).split(" #")[0].strip().strip("'\""))
    return frozenset(names)


def _resolve_relative_paths(manager) -> None:
    """Make a task's relative local data paths relative to its YAML file (see the module docstring)."""
    factory = getattr(manager, "_factory", None)
    original = getattr(factory, "_load_full_config", None)
    if original is None:  # another lm-eval version: keep its own (current-directory) rule
        return

    def load_full_config(entry, overrides=None):
        cfg = original(entry, overrides)
        if getattr(entry, "yaml_path", None):
            _rebase(cfg, Path(entry.yaml_path).parent)
        return cfg

    factory._load_full_config = load_full_config


def _rebase(cfg: dict[str, Any], base: Path) -> None:
    def fix(p: Any) -> Any:
        if not isinstance(p, str) or "://" in p or Path(p).is_absolute():
            return p
        if any(ch in p for ch in "*?["):
            return str(base / p) if any(base.glob(p)) else p
        return str(base / p) if (base / p).exists() else p

    kwargs = cfg.get("dataset_kwargs")
    if isinstance(kwargs, dict):
        files = kwargs.get("data_files")
        if isinstance(files, dict):
            kwargs["data_files"] = {k: [fix(x) for x in v] if isinstance(v, list) else fix(v) for k, v in files.items()}
        elif isinstance(files, list):
            kwargs["data_files"] = [fix(x) for x in files]
        elif files is not None:
            kwargs["data_files"] = fix(files)
        if "data_dir" in kwargs:
            kwargs["data_dir"] = fix(kwargs["data_dir"])
    path = cfg.get("dataset_path")
    if isinstance(path, str) and (path.startswith((".", "/")) or os.sep in path) and (base / path).is_dir():
        cfg["dataset_path"] = str(base / path)


_LOCAL_BUILDERS = {"json", "csv", "text", "parquet", "arrow", "pandas", "imagefolder", "audiofolder", "webdataset"}


def _load_error(name: str, manager, err: Exception) -> HoneError:
    entry = manager.task_index.get(name)
    yaml_path = getattr(entry, "yaml_path", None)
    cfg = getattr(entry, "cfg", None) or {}
    dataset = cfg.get("dataset_path")
    first = str(err).splitlines()[0] if str(err) else ""
    detail = f"{type(err).__name__}: {first}"[:400]
    where = f"tasks (--tasks): {name}" + (f" ({yaml_path})" if yaml_path else "")
    hub_dataset = isinstance(dataset, str) and dataset not in _LOCAL_BUILDERS and not Path(dataset).exists()
    unreachable = isinstance(err, ConnectionError) or any(
        s in str(err) for s in ("OfflineModeIsEnabled", "huggingface.co", "on the Hub"))
    if hub_dataset or unreachable:
        offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "") not in ("", "0")]
        why = f" (offline: {', '.join(offline)} set)" if offline else ""
        what = f"its dataset {dataset!r}" if hub_dataset else "a dataset"
        return HoneError(
            f"lm-eval task {name!r} needs {what} from the Hugging Face hub, which cannot be "
            f"reached{why}: {detail}", where=where,
            fix="run where the hub is reachable (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE unset), pre-download the "
                "dataset into the datasets cache, or evaluate offline with a local task: a YAML with "
                "`dataset_path: json` and `dataset_kwargs: {data_files: ...}` in a directory passed with --include-path")
    return HoneError(f"lm-eval task {name!r} cannot be loaded: {detail}", where=where,
                     fix="check the task YAML (relative data_files are read from the YAML's directory) and its data")


# -- the model ----------------------------------------------------------------------------------------------------
def check_backend(backend: str) -> None:
    """Fail before any model is loaded when the backend cannot run here."""
    if backend != "vllm":
        return
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        raise HoneError("the vllm backend needs the vllm package, which is not installed", where="backend (--backend)",
                        fix="pip install vllm on a GPU machine, or use --backend hf")
    if not torch.cuda.is_available():
        raise HoneError("the vllm backend needs a GPU and none is available", where="backend (--backend)",
                        fix="use --backend hf (runs on CPU or GPU)")


def make_lm(backend: str, *, model=None, tokenizer=None, model_path: str | None = None, batch_size: int | str = "auto",
            device=None, dtype: str = "auto", trust_remote_code: bool = False, gpu_memory_utilization: float = 0.8):
    """An lm-eval model: HFLM over the already-loaded ``model``, or vLLM (loads ``model_path`` itself;
    ``gpu_memory_utilization`` is lowered by the caller when two engines may have to coexist, as vLLM does not
    always release GPU memory in-process)."""
    require_lm_eval()
    if backend == "vllm":
        check_backend(backend)
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(pretrained=model_path, tokenizer=model_path, dtype=dtype, batch_size=batch_size,
                    trust_remote_code=trust_remote_code, gpu_memory_utilization=gpu_memory_utilization, seed=1234)
    from lm_eval.models.huggingface import HFLM

    if batch_size == "auto" and getattr(device, "type", str(device)) == "cpu":
        batch_size = CPU_BATCH_SIZE
    quiet_logger("lm_eval.models.huggingface", level=logging.ERROR)  # "pretrained is not a str" notes
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_batch_size=64,
                trust_remote_code=trust_remote_code)


def run_tasks(lm, plan: TaskPlan, tasks: list[Any] | None = None, *, limit: int | float | None = None,
              num_fewshot: int | None = None, apply_chat_template: bool = False, log_samples: bool = False,
              bootstrap_iters: int = 1000) -> dict[str, Any]:
    """``simple_evaluate`` on ``tasks`` (default: freshly loaded from ``plan``); returns lm-eval's results dict."""
    from lm_eval import simple_evaluate

    try:
        with lm_eval_output():
            results = simple_evaluate(model=lm, tasks=tasks if tasks is not None else plan.load(),
                                      task_manager=plan.manager, limit=limit, num_fewshot=num_fewshot,
                                      apply_chat_template=apply_chat_template, log_samples=log_samples,
                                      bootstrap_iters=bootstrap_iters)
    except HoneError:
        raise
    except Exception as err:  # noqa: BLE001
        raise HoneError(f"lm-eval failed: {type(err).__name__}: {err}"[:600], where=f"tasks {', '.join(plan.names)}",
                        fix="check the task definitions (doc_to_text/doc_to_target/doc_to_choice fields exist in the "
                            "data) and the limit/num_fewshot values") from err
    if results is None:
        raise HoneError("lm-eval returned no results (not the main process)", where="evaluation",
                        fix="run hone eval as a single process")
    return results


# lm-eval modules that draw tqdm bars (bound at import as ``tqdm``); lm_eval.api.metrics imports it when it
# bootstraps, so the ``tqdm`` module's own attribute is swapped too while lm-eval runs
_BAR_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface",
                "lm_eval.models.vllm_causallms")


def _hone_bar(iterable: Any = None, *args: Any, **kwargs: Any):
    """An lm-eval progress bar drawn as hone's (:func:`hone.logs.progress`: on a terminal, not with --quiet)."""
    if args:  # tqdm's positional form beyond the iterable (lm-eval does not use it): keep it as it is
        from tqdm.std import tqdm

        return tqdm(iterable, *args, **kwargs)
    desc = kwargs.pop("desc", None) or "building requests"
    desc = desc[:1].lower() + desc[1:]
    disabled = bool(kwargs.pop("disable", False))
    kwargs.setdefault("unit", "request")
    return progress(iterable, desc=f"lm-eval: {desc}", enabled=not disabled, **kwargs)


def _quiet_git_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` without git's "fatal: not a git repository" on stderr."""
    import subprocess

    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL,  # noqa: S607
                                       cwd=os.getcwd()).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError, OSError):
        from lm_eval.loggers.utils import get_commit_from_path

        return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def lm_eval_output():
    """While lm-eval runs: its progress bars are hone's (one rule for every bar: a terminal, not --quiet; each
    bar gone once done), its INFO lines and the datasets/hub progress bars are off, and git's complaint outside
    a repository is not printed. With ``hone --verbose``: lm-eval's own output, untouched."""
    import sys

    import tqdm as tqdm_module

    if is_verbose():
        yield
        return
    third_party_bars()
    lm_log = logging.getLogger("lm_eval")
    if lm_log.level == logging.NOTSET:  # lm-eval's INFO lines would drown hone's own; keep its warnings
        lm_log.setLevel(logging.WARNING)
    swapped: list[tuple[Any, str, Any]] = []
    for name in _BAR_MODULES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "tqdm"):
            swapped.append((module, "tqdm", module.tqdm))
    swapped.append((tqdm_module, "tqdm", tqdm_module.tqdm))
    evaluator = sys.modules.get("lm_eval.evaluator")
    if evaluator is not None and hasattr(evaluator, "get_git_commit_hash"):
        swapped.append((evaluator, "get_git_commit_hash", evaluator.get_git_commit_hash))
    try:
        for module, attr, _ in swapped:
            setattr(module, attr, _quiet_git_hash if attr == "get_git_commit_hash" else _hone_bar)
        yield
    finally:
        for module, attr, original in swapped:
            setattr(module, attr, original)


# -- results ------------------------------------------------------------------------------------------------------
def metric_key(task: str, metric: str, filt: str) -> str:
    """``task/metric`` (``task/metric.filter`` for filters other than lm-eval's ``none``)."""
    return f"{task}/{metric}" if filt == "none" else f"{task}/{metric}.{filt}"


def flatten(results: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool | None]]:
    """(``task/metric`` -> value, ``task/metric`` -> higher is better) from lm-eval's results (stderr left out)."""
    values: dict[str, float] = {}
    better: dict[str, bool | None] = {}
    hib = results.get("higher_is_better", {})
    for task, row in results.get("results", {}).items():
        for key, value in row.items():
            if "," not in key:
                continue
            metric, filt = key.split(",", 1)
            if metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = metric_key(task, metric, filt)
            values[name] = float(value)
            better[name] = hib.get(task, {}).get(metric)
    return values, better


def sample_records(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``{task, doc_id, prompt, target, prediction, <metrics>}`` per logged lm-eval sample."""
    out = []
    configs = results.get("configs", {})
    for task, samples in results.get("samples", {}).items():
        kind = configs.get(task, {}).get("output_type")
        for s in samples:
            rec: dict[str, Any] = {"task": task, "doc_id": s.get("doc_id")}
            try:
                rec.update(_sample_fields(kind, s))
            except Exception:  # noqa: BLE001 - an unusual task shape: keep the raw fields
                rec.update(prompt=None, target=s.get("target"), prediction=s.get("filtered_resps"))
            for m in s.get("metrics", []):
                v = s.get(m)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    rec[m] = v
            out.append(json.loads(json.dumps(rec, default=str)))
    return out


def _sample_fields(kind: str | None, s: dict[str, Any]) -> dict[str, Any]:
    args, resps, target = s["arguments"], s["filtered_resps"], s.get("target")
    if kind == "multiple_choice":
        choices = [a[1] for a in args]
        scores = [r[0] if isinstance(r, (list, tuple)) else r for r in resps]
        best = max(range(len(scores)), key=lambda i: scores[i])
        gold = choices[target] if isinstance(target, int) and 0 <= target < len(choices) else target
        return {"prompt": args[0][0], "target": gold, "prediction": choices[best], "choices": choices}
    if kind == "generate_until":
        return {"prompt": args[0][0], "target": target, "prediction": resps[0] if isinstance(resps, list) else resps}
    if kind == "loglikelihood":
        return {"prompt": args[0][0], "target": args[0][1], "prediction": None}
    if kind == "loglikelihood_rolling":
        return {"prompt": None, "target": args[0][0], "prediction": None}
    return {"prompt": args[0][0] if args and isinstance(args[0], (list, tuple)) else None, "target": target,
            "prediction": resps}


def json_safe(results: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's results without the per-sample logs, as plain JSON values (NaN/inf become null)."""
    from lm_eval.utils import handle_non_serializable

    slim = {k: v for k, v in results.items() if k != "samples"}
    return _finite(json.loads(json.dumps(slim, default=handle_non_serializable)))


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
