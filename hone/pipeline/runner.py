"""The local pipeline runner: the four stages in one process, with a run directory, a manifest and caching.

    <run-dir>/
      manifest.json        parameters (tokens redacted), and per stage: status, start, duration, the content
                           hashes of its inputs and outputs, its summary or its error
      01-dataset/ 02-training/ 03-evaluation/ 04-registration/    each stage's outputs + stage.json
      report.html          self-contained (images inlined)

A stage is skipped when the manifest says it completed with the same input hash and its outputs are still
the files it wrote (same sizes and modification times as recorded). Its input hash covers its parameters, the
content of a local dataset file and the output hashes of the stages it reads, so changing anything upstream
reruns everything downstream. A failed stage keeps the outputs of the stages before it; the next run starts
at the failed stage (training resumes from its last checkpoint).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from hone.errors import HoneError
from hone.io import atomic_write_text, content_sha256
from hone.layout import (CHECKPOINTS_DIR, MANIFEST, REPORT, STAGE_DIRS, STAGE_FILE, STAGES,  # noqa: F401
                         PipelineLayout, TrainingLayout)

log = logging.getLogger("hone")
from hone.pipeline import params as P
from hone.pipeline.stages import StageResult

MANIFEST_VERSION = 1
VERSION = "phase_04_registry_man_version"


@dataclass
class PipelineRun:
    """The outcome of :func:`run_pipeline`."""

    run_dir: Path
    algorithm: str
    values: dict[str, Any]
    stages: dict[str, dict[str, Any]]
    results: dict[str, StageResult] = field(default_factory=dict)
    report: Path | None = None

    def stage_dir(self, stage: str) -> Path:
        return PipelineLayout(self.run_dir).stage(stage)

    @property
    def model_dir(self) -> Path:
        return self.stage_dir("training") / self.results["training"].files["model"]

    @property
    def model_id(self) -> str:
        return self.results["registration"].summary["model_id"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _skipped(rel: Path) -> bool:
    """Files that are not a stage's result: hidden ones and training checkpoints (kept only to resume)."""
    return rel.name.startswith(".") or CHECKPOINTS_DIR in rel.parts


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not _skipped(p.relative_to(directory)))


def fingerprint(directory: Path) -> dict[str, list[int]]:
    """Relative path -> [size, mtime_ns] of every output file: a cheap check that outputs are unchanged."""
    return {str(f.relative_to(directory)): [f.stat().st_size, f.stat().st_mtime_ns] for f in _files(directory)}


def _local_path(uri: str) -> Path | None:
    from hone.data.sources import file_uri_path

    if uri[:5].lower() == "file:":
        try:
            p = file_uri_path(uri)  # RFC 8089 forms: file://localhost/..., percent-encoding
        except HoneError:
            return None
    elif "://" in uri:
        return None
    else:
        p = Path(uri).expanduser()
    return p if p.exists() else None


STAGE_INPUTS = {"dataset": (), "training": ("dataset",), "evaluation": ("dataset", "training"),
                "registration": ("dataset", "training", "evaluation")}


def stage_key(stage: str, algorithm: str, values: Mapping[str, Any], upstream: Mapping[str, str],
              extra: Mapping[str, Any]) -> dict[str, Any]:
    """What a stage's result depends on (hashed to decide whether it can be reused)."""
    own = P.stage_params(stage, values)  # only the parameters the stage reads (the table says which)
    if stage == "dataset":
        local = _local_path(values[P.DATA_URI])
        if local is not None:
            own["data_content_sha256"] = content_sha256(local, _skipped)
    if stage == "training":
        model = _local_path(values["phase_02_train_man_model"])
        if model is not None and model.is_dir():
            own["base_model_fingerprint"] = sha256_json(fingerprint(model))
    return {"stage": stage, "algorithm": algorithm, "params": own,
            "upstream": {s: upstream[s] for s in STAGE_INPUTS[stage]}, **extra}


class Progress:
    """Per-stage progress lines (to stderr by default)."""

    def __init__(self, echo: Callable[[str], None] | None = None):
        self.echo = echo or (lambda line: print(line, flush=True))

    def start(self, i: int, stage: str) -> None:
        self.echo(f"[{i}/4] {stage} ...")

    def done(self, i: int, stage: str, seconds: float, summary: str, cached: bool) -> None:
        how = "cached" if cached else f"done in {seconds:.1f}s"
        self.echo(f"[{i}/4] {stage}: {how}" + (f" — {summary}" if summary else ""))

    def failed(self, i: int, stage: str, seconds: float, run_dir: Path | None = None,
               default_dir: bool = False) -> None:
        self.echo(f"[{i}/4] {stage}: FAILED after {seconds:.1f}s")
        if run_dir is not None:
            self.echo(resume_hint(run_dir, stage, default_dir))


def resume_hint(run_dir: Path, stage: str, default_dir: bool) -> str:
    """What a failed run prints: where its outputs are and how to go on from the failed stage."""
    run_dir = Path(run_dir).resolve()
    hint = f"run directory: {run_dir}; rerun the same command to resume from the {stage} stage"
    if default_dir:  # the default directory's name hashes the parameters: a changed one means a new directory
        hint += f" (to change parameters and keep the finished stages, add --run-dir {run_dir})"
    return hint


def headline(stage: str, s: Mapping[str, Any]) -> str:
    if stage == "dataset":
        return f"{s['train_rows']} train / {s['eval_rows']} eval rows ({s['format']})"
    if stage == "training":
        return f"{s['steps']} steps, loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}"
    if stage == "evaluation":
        return f"{len(s['metrics'])} metrics" + (f", {len(s['forgetting'])} flagged as forgetting"
                                                 if s.get("forgetting") else "")
    return str(s.get("model_id", ""))


def default_run_dir(algorithm: str, values: Mapping[str, Any], home: str | Path | None = None) -> Path:
    """``<hone home>/pipelines/<algorithm>-<hash of the parameters>``: the same command reuses the same run."""
    from hone.registry.base import hone_home

    return hone_home(home) / "pipelines" / f"{algorithm}-{sha256_json(P.public(values))[:10]}"


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    path = PipelineLayout(run_dir).manifest
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # a manifest cut short: every stage reruns


def run_pipeline(data: str | None = None, *, algorithm: str = "sft", model: str | None = None,
                 params: Mapping[str, Any] | None = None, run_dir: str | Path | None = None,
                 force: bool | str = False, registry: Any = None, origins: Mapping[str, str] | None = None,
                 progress: Progress | None = None, report: bool = True,
                 fail_stage: str | None = None) -> PipelineRun:
    """Run the four stages locally. Only ``data`` (or ``params[phase_01_dataset_man_data_uri]``) is required.

    ``params`` uses the pipeline parameter names (``hone pipeline params``); ``model`` and ``data`` are
    shortcuts for ``phase_02_train_man_model`` and the data URI. ``force`` reruns every stage (True) or
    one stage and those after it (its name). ``registry`` is a :class:`hone.config.RegistryConfig` used
    when no Kubeflow registry address (``phase_04_registry_man_address``) is given; by default the embedded
    MLflow registry under the hone home (``$HONE_HOME``, else ``./hone-runs``). ``registry=False`` (or
    ``registry_backend="none"``) skips registration (``SKIPPED``).
    """
    from hone.pipeline import stages as S

    P.check_algorithm(algorithm)
    given = dict(params or {})
    origins = dict(origins or {})
    if data is not None:
        given[P.DATA_URI] = data
        origins[P.DATA_URI] = "--data"
    if model is not None:
        given["phase_02_train_man_model"] = model
        origins["phase_02_train_man_model"] = "--model"
    values = P.resolve(algorithm, given, origins)
    _check_model_available(values["phase_02_train_man_model"], "--model" if model else "phase_02_train_man_model")
    run_path = Path(run_dir).expanduser() if run_dir else default_run_dir(algorithm, values)
    if run_path.exists() and not run_path.is_dir():
        raise HoneError(f"run directory {run_path} is a file", where="--run-dir", fix="choose a directory")
    if force and force is not True and force not in STAGES:
        raise HoneError(f"unknown stage {force!r}", where="--force", fix=f"use one of {', '.join(STAGES)}")
    run_path.mkdir(parents=True, exist_ok=True)
    layout = PipelineLayout(run_path)
    progress = progress or Progress()
    registry = default_registry(registry)

    previous = _read_manifest(run_path)
    if previous and previous.get("algorithm") not in (None, algorithm):
        raise HoneError(f"{run_path} holds a {previous['algorithm']} pipeline run", where="--run-dir",
                        fix="choose another --run-dir for this algorithm")
    old_stages = previous.get("stages", {}) if previous.get("version") == MANIFEST_VERSION else {}
    manifest: dict[str, Any] = {"version": MANIFEST_VERSION, "hone_version": _hone_version(), "algorithm": algorithm,
                                "params": P.public(values), "created": previous.get("created", _now()),
                                "updated": _now(), "status": "running", "stages": dict(old_stages)}
    forced = set(STAGES) if force is True else set(STAGES[STAGES.index(force):]) if force else set()
    extra = {"registry": _registry_identity(registry)} if registry is not None else {}
    run = PipelineRun(run_path, algorithm, values, manifest["stages"])
    out_hashes: dict[str, str] = {}
    eval_checked = False

    def save() -> None:
        manifest["updated"] = _now()
        atomic_write_text(layout.manifest, json.dumps(manifest, indent=2, default=str) + "\n")

    for i, stage in enumerate(STAGES, 1):
        out = layout.stage(stage)
        key = stage_key(stage, algorithm, values, out_hashes, extra if stage == "registration" else {})
        key_hash = sha256_json(key)
        old = old_stages.get(stage, {})
        if (stage not in forced and old.get("status") == "completed" and old.get("inputs_sha256") == key_hash
                and out.is_dir() and (out / STAGE_FILE).is_file() and fingerprint(out) == old.get("fingerprint")):
            run.results[stage] = StageResult.read(out)
            out_hashes[stage] = old["outputs_sha256"]
            manifest["stages"][stage] = {**old, "cached": True}
            progress.done(i, stage, 0.0, headline(stage, run.results[stage].summary), cached=True)
            continue
        if stage not in forced:
            reused = _from_store(stage, key_hash, out)
            if reused is not None:  # the same inputs ran in another run directory: its outputs, not a rerun
                run.results[stage] = StageResult.read(out)
                out_hashes[stage] = reused["outputs_sha256"]
                manifest["stages"][stage] = {**reused, "inputs_sha256": key_hash, "inputs": key,
                                             "fingerprint": fingerprint(out), "cached": True}
                for later in STAGES[i:]:
                    manifest["stages"].pop(later, None)
                save()
                progress.done(i, stage, 0.0, headline(stage, run.results[stage].summary), cached=True)
                continue
        if stage in ("dataset", "training") and not eval_checked:
            # what the evaluation stage would refuse (a misspelled task...) fails now, not after training
            S.check_evaluation(values)
            eval_checked = True
        # Training that failed (or was killed) with the same inputs keeps its directory: it resumes from its
        # last checkpoint. Everything else starts clean.
        resumable = (stage == "training" and stage not in forced and old.get("inputs_sha256") == key_hash
                     and old.get("status") in ("failed", "running") and TrainingLayout(out).is_run())
        if out.exists() and not resumable:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        started, t0 = _now(), time.monotonic()
        manifest["stages"][stage] = {"status": "running", "started": started, "inputs_sha256": key_hash,
                                     "inputs": key}
        for later in STAGES[i:]:
            manifest["stages"].pop(later, None)  # outputs after a rerun stage are no longer valid
        save()
        progress.start(i, stage)
        try:
            if fail_stage == stage:  # fault injection for tests of resumption
                raise HoneError(f"injected failure in the {stage} stage", where="fail_stage", fix="run again")
            dirs = layout.stages
            if stage == "dataset":
                result = S.dataset_stage(values, out)
            elif stage == "training":
                result = S.training_stage(algorithm, values, dirs["dataset"], out)
            elif stage == "evaluation":
                result = S.evaluation_stage(values, dirs["training"], dirs["dataset"], out)
            else:
                result = S.registration_stage(values, dirs["training"], dirs["evaluation"], dirs["dataset"], out,
                                              registry=registry, pipeline_run=str(run_path),
                                              next_free_version=VERSION not in {P.UPSTREAM_ALIASES.get(k, k)
                                                                                for k in given})
            result.write(out)
        except BaseException as err:
            seconds = time.monotonic() - t0
            manifest["stages"][stage].update(status="failed", duration_s=round(seconds, 2), error=_error_text(err))
            manifest["status"] = "failed"
            save()
            progress.failed(i, stage, seconds, run_path, default_dir=run_dir is None)
            if report:
                try:
                    _write_report(run, manifest)
                except Exception as report_err:  # never hide the stage's own error behind the report's
                    log.warning("could not write %s: %s", layout.report, report_err)
            raise
        seconds = time.monotonic() - t0
        run.results[stage] = result
        out_hashes[stage] = content_sha256(out, _skipped)
        manifest["stages"][stage].update(status="completed", duration_s=round(seconds, 2), finished=_now(),
                                         outputs_sha256=out_hashes[stage], fingerprint=fingerprint(out),
                                         summary=result.summary, files=result.files)
        save()
        _to_store(stage, key_hash, out, manifest["stages"][stage])
        progress.done(i, stage, seconds, headline(stage, result.summary), cached=False)
    manifest["status"] = "completed"
    save()
    if report:
        run.report = _write_report(run, manifest)
    return run


def _write_report(run: PipelineRun, manifest: dict[str, Any]) -> Path:
    from hone.pipeline.report import write_report

    return write_report(run.run_dir, manifest)


def _error_text(err: BaseException) -> str:
    if isinstance(err, HoneError):
        return str(err)
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def _hone_version() -> str:
    from hone.version import __version__

    return __version__


def default_registry(registry: Any = None) -> Any:
    """The registry of a local run: ``registry`` as given; None -> the embedded MLflow registry under the hone
    home (resolved now, so that the registration stage's cache key names it); False -> registration off."""
    from hone.config import RegistryConfig
    from hone.registry.base import hone_home

    if registry is None:
        return RegistryConfig(registry_backend="mlflow", registry_home=str(hone_home()))
    if registry is False:
        return RegistryConfig(registry_backend="none")
    if (isinstance(registry, RegistryConfig) and registry.registry_backend == "mlflow"
            and not registry.registry_home and not registry.registry_tracking_uri):
        return registry.model_copy(update={"registry_home": str(hone_home())})
    return registry


def _registry_identity(registry: Any) -> dict[str, Any]:
    dump = registry.model_dump(mode="json") if hasattr(registry, "model_dump") else {"registry": str(registry)}
    return {k: v for k, v in dump.items() if "token" not in k}


def _check_model_available(model: str, where: str) -> None:
    """Fail before any stage when the base model can be neither found locally nor downloaded."""
    from hone.models.load import resolve_model_path

    if model.startswith("oci://"):
        return  # pulled by the training stage
    fix = ("pass --model with a local model directory (e.g. one made by `hone tiny-model --output tiny/`) "
           "or a hub id you can download")
    try:
        local = resolve_model_path(model)
        if Path(local).is_dir():
            return
        from huggingface_hub import hf_hub_download

        hf_hub_download(local, "config.json")  # cached, or a small download; offline it fails fast
    except HoneError as err:
        raise HoneError(f"base model {model!r} is not available: {err.what}", where=where, fix=fix) from None
    except Exception as err:  # hub errors: offline mode, not found, gated, no network
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else \
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise HoneError(f"base model {model!r} is not available ({why})", where=where, fix=fix) from None


# -- the stage store: completed stages by the hash of their inputs, shared by every run directory -----------
STORE_DIR = "stage-store"
_STORE_META = ".hone-stage.json"


def _store_path(stage: str, key_hash: str) -> Path:
    from hone.registry.base import hone_home

    return hone_home(None) / STORE_DIR / stage / key_hash


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same file system: no second copy of a model's weights
    except OSError:
        shutil.copy2(src, dst)


def _from_store(stage: str, key_hash: str, out: Path) -> dict[str, Any] | None:
    """Fill ``out`` with the stored outputs of a stage that ran with these inputs; its manifest entry, or None."""
    src = _store_path(stage, key_hash)
    meta = src / _STORE_META
    if not (meta.is_file() and (src / STAGE_FILE).is_file()):
        return None
    try:
        entry = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, symlinks=True, copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns(_STORE_META))
    return {**entry, "reused_from": str(src)}


def _to_store(stage: str, key_hash: str, out: Path, entry: Mapping[str, Any]) -> None:
    """Keep a completed stage's outputs (not its resumable checkpoints) under the hash of its inputs."""
    dest = _store_path(stage, key_hash)
    if dest.is_dir():
        return
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(out, tmp, symlinks=True, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(CHECKPOINTS_DIR))
        keep = {k: entry[k] for k in ("status", "duration_s", "finished", "outputs_sha256", "summary", "files")
                if k in entry}
        (tmp / _STORE_META).write_text(json.dumps(keep, default=str) + "\n")
        tmp.rename(dest)
    except OSError as err:  # a full disk or a concurrent writer: the run itself is complete
        log.warning("could not keep the %s stage in %s: %s", stage, dest.parent, err)
        shutil.rmtree(tmp, ignore_errors=True)
