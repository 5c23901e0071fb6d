"""A model's lineage (base model, data, settings, scores, where it was made) and its flat metadata form.

Both backends store the same flat mapping: MLflow as model-version tags (and run params/metrics), the Kubeflow
Model Registry as custom properties. Keys follow the seeds' registry component: ``base_model``,
``training_<parameter>``, ``eval_<metric>``, ``pipeline_*``, plus ``dataset_uri``, ``dataset_sha256``,
``algorithm`` and ``hone_version``. Every value goes through :mod:`hone.secrets` first.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

from hone.errors import HoneError
from hone.io import content_sha256
from hone.layout import METRICS_FILE, PARAMS_FILE, RESULT_FILE, TrainingLayout
from hone.secrets import REDACTED, scrub_mapping, scrub_text, secret_env_values

log = logging.getLogger("hone")

Scalar = Union[str, int, float, bool]
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-./: ]")

# Where an evaluation stage may leave its results in a run directory (the explicit route is eval_results=).
EVAL_CANDIDATES = ("eval", "evaluation", "eval_results.json")
# Summary figures of training_result.json that become training_<name> metadata.
RESULT_FIELDS = ("final_loss", "first_loss", "steps", "epochs_completed", "samples_trained", "tokens_trained",
                 "elapsed_s", "status", "world_size")
# Parameters mapped to their own lineage keys rather than training_<name>.
_OWN_KEYS = {"algorithm": "algorithm", "model_path": "base_model", "data_path": "dataset_uri"}


@dataclass
class Source:
    """Where the model was made: a Kubeflow pipeline run (model_source_* in the Kubeflow registry) or not."""

    pipeline_name: str | None = None
    pipeline_run_id: str | None = None
    pipeline_run_name: str | None = None
    namespace: str | None = None

    @classmethod
    def from_env(cls, **given: str | None) -> "Source":
        """Explicit values, else ``HONE_PIPELINE_*`` variables (set by hone's pipeline components)."""
        env = {"pipeline_name": "HONE_PIPELINE_NAME", "pipeline_run_id": "HONE_PIPELINE_RUN_ID",
               "pipeline_run_name": "HONE_PIPELINE_RUN_NAME", "namespace": "HONE_PIPELINE_NAMESPACE"}
        return cls(**{k: given.get(k) or os.environ.get(v) or None for k, v in env.items()})

    def model_source(self, fallback_name: str | None = None) -> dict[str, str | None]:
        """The ``model_source_*`` arguments of the Kubeflow client's ``register_model``, as the seeds' component sets them."""
        if self.pipeline_run_id or self.pipeline_name:
            return {"model_source_kind": "kfp", "model_source_class": "pipelinerun",
                    "model_source_name": self.pipeline_run_name or self.pipeline_name or None,
                    "model_source_id": self.pipeline_run_id or None, "model_source_group": self.namespace or None}
        return {"model_source_kind": "hone", "model_source_class": "run", "model_source_name": fallback_name,
                "model_source_id": None, "model_source_group": None}


@dataclass
class Lineage:
    """Everything recorded about where a model came from."""

    base_model: str | None = None
    algorithm: str | None = None
    dataset_uri: str | None = None
    dataset_sha256: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, Any] = field(default_factory=dict)
    source: Source = field(default_factory=Source)
    hone_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None
    reports: list[str] = field(default_factory=list)  # evaluation files to keep with the model

    def metadata(self) -> dict[str, Scalar]:
        """The flat, secret-free mapping both registries store."""
        known = secret_env_values()
        out: dict[str, Any] = {"hone_version": self.hone_version}
        for key in ("base_model", "algorithm", "dataset_uri", "dataset_sha256"):
            out[key] = getattr(self, key)
        out.update({f"training_{k}": v for k, v in self.hyperparameters.items()})
        out.update({f"training_{k}": v for k, v in self.training.items()})
        out.update({f"eval_{k}": v for k, v in self.eval_metrics.items()})
        out.update({f"pipeline_{k}" if not k.startswith("pipeline_") else k: v
                    for k, v in asdict(self.source).items()})
        clash = sorted(set(self.extra) & {k for k, v in out.items() if v is not None})
        if clash:
            raise HoneError(f"metadata key(s) {', '.join(clash)} are recorded by hone's lineage", where="--metadata",
                            fix="use another key name")
        out.update(self.extra)
        return flatten(scrub_mapping({k: v for k, v in out.items() if v is not None and v != ""}, known))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested mappings -> ``a_b`` keys; lists -> JSON text; NaN/inf -> text; None dropped."""
    out: dict[str, Scalar] = {}
    for key, value in data.items():
        name = safe_key(f"{prefix}{key}")
        if value is None:
            continue
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}_"))
        elif isinstance(value, bool):
            out[name] = value
        elif isinstance(value, int):
            out[name] = value
        elif isinstance(value, float):
            out[name] = value if math.isfinite(value) else str(value)
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(list(value), default=str)
        else:
            out[name] = str(value)
    return out


def safe_key(key: str) -> str:
    """Metadata keys both registries accept: letters, digits and ``_ - . / : space`` (others become ``_``)."""
    return _UNSAFE_KEY.sub("_", key)[:250] or "_"


def sha256_of(path: str | Path) -> str | None:
    """Content SHA-256 of a file, or of a directory (relative paths and contents, in sorted order); None when
    ``path`` is neither."""
    p = Path(path)
    return content_sha256(p) if p.is_file() or p.is_dir() else None


def eval_results_file(source: str | Path) -> Path:
    """An evaluation output directory -> its ``metrics.json`` (hone's flat scores; else ``eval_results.json``)."""
    path = Path(source)
    if path.is_dir():
        for name in ("metrics.json", "eval_results.json", "results.json"):
            if (path / name).is_file():
                return path / name
        raise HoneError(f"no evaluation results in {path}", where="--eval-results",
                        fix="pass the evaluation output directory (with metrics.json) or a results JSON file")
    if not path.is_file():
        raise HoneError(f"evaluation results not found: {path}", where="--eval-results",
                        fix="pass the evaluation output directory (with metrics.json) or a results JSON file")
    return path


def eval_reports(source: str | Path) -> list[Path]:
    """The evaluation's files worth keeping next to the model (scores, comparison with the base model)."""
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    names = ("metrics.json", "eval_results.json", "eval_config.json", "comparison.md", "comparison.json",
             "comparison.png")
    found = [folder / n for n in names if (folder / n).is_file()]
    return found if path.is_dir() else sorted({path, *found})


def read_eval_metrics(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Numeric evaluation results, flat: hone's ``metrics.json`` (``{"task/metric": x}``) as is; lm-eval's
    ``{"results": {task: {"acc,none": x}}}`` -> ``task_acc``; any other JSON mapping -> its numeric leaves."""
    if isinstance(source, Mapping):
        data: Any = source
        where = "eval_results"
    else:
        path = eval_results_file(source)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise HoneError(f"evaluation results are not JSON: {err}", where=str(path),
                            fix="pass the JSON file written by the evaluation stage") from None
        where = str(path)
    if not isinstance(data, Mapping):
        raise HoneError("evaluation results must be a JSON object", where=where,
                        fix="pass {metric: value} or lm-eval's results JSON")
    if isinstance(data.get("results"), Mapping):
        out: dict[str, Any] = {}
        for task, metrics in data["results"].items():
            if not isinstance(metrics, Mapping):
                continue
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    name = metric[:-5] if metric.endswith(",none") else metric.replace(",", "_")
                    out[f"{task}_{name}"] = value
        return out
    return {k: v for k, v in flatten(data).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def find_run_dir(model_dir: str | Path | None) -> Path | None:
    """The training output directory a model directory belongs to (``<run>/hf_format/<name>``), if any."""
    if model_dir is None:
        return None
    layout = TrainingLayout.of_model(model_dir)
    return layout.root if layout else None


def find_eval_results(run_dir: Path | None) -> Path | None:
    if run_dir is None:
        return None
    for name in EVAL_CANDIDATES:
        p = run_dir / name
        if p.is_file() or (p.is_dir() and ((p / "metrics.json").is_file() or (p / "eval_results.json").is_file())):
            return p
    return None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HoneError(f"cannot read {path.name}: {err}", where=str(path),
                        fix="point --run-dir at a complete hone training output directory") from None
    return data if isinstance(data, dict) else {}


def build_lineage(model_dir: str | Path | None = None, *, run_dir: str | Path | None = None,
                  eval_results: str | Path | Mapping[str, Any] | None = None,
                  metadata: Mapping[str, Any] | None = None, source: Source | None = None,
                  base_model: str | None = None, dataset_uri: str | None = None,
                  dataset_sha256: str | None = None) -> Lineage:
    """Collect the lineage of ``model_dir`` from its training run directory (found from the model directory
    when not given), evaluation results and explicit values (which win)."""
    from hone.version import __version__

    run = Path(run_dir) if run_dir else find_run_dir(model_dir)
    if run_dir and not (Path(run_dir) / PARAMS_FILE).is_file():
        raise HoneError(f"{run_dir} is not a hone training output directory (no {PARAMS_FILE})", where="--run-dir",
                        fix="pass the ckpt_output_dir of the training run")
    params: dict[str, Any] = read_json(run / PARAMS_FILE) if run else {}
    result: dict[str, Any] = read_json(run / RESULT_FILE) if run and (run / RESULT_FILE).is_file() else {}
    training = {k: result[k] for k in RESULT_FIELDS if result.get(k) is not None}
    if run and "final_loss" not in training and (run / METRICS_FILE).is_file():
        lines = [ln for ln in (run / METRICS_FILE).read_text().splitlines() if ln.strip()]
        if lines:
            last = json.loads(lines[-1])
            training.update(final_loss=last.get("loss"), steps=last.get("step"))
    data_path = dataset_uri or params.get("data_path")
    digest = dataset_sha256
    if digest is None and data_path:
        local = _local_data(str(data_path))
        digest = sha256_of(local) if local is not None and local.exists() else None
        if digest is None:
            log.info("dataset %s is not a local path here: dataset_sha256 not recorded (pass it explicitly)",
                     scrub_text(str(data_path)))
    evals: dict[str, Any] = {}
    reports: list[str] = []
    eval_src = eval_results if eval_results is not None else find_eval_results(run)
    if eval_src is not None:
        evals = read_eval_metrics(eval_src)
        if not isinstance(eval_src, Mapping):
            reports = [str(p) for p in eval_reports(eval_src)]
    model_base = base_model or params.get("model_path")
    if model_base is None and model_dir is not None and (Path(model_dir) / "config.json").is_file():
        cfg = read_json(Path(model_dir) / "config.json")
        model_base = cfg.get("_name_or_path") or None
    return Lineage(
        base_model=model_base, algorithm=params.get("algorithm"), dataset_uri=data_path, dataset_sha256=digest,
        hyperparameters={k: v for k, v in params.items() if k not in _OWN_KEYS}, training=training,
        eval_metrics=evals, source=source or Source.from_env(), hone_version=__version__,
        extra=dict(metadata or {}), run_dir=str(run) if run else None, reports=reports,
    )


def parse_metadata(pairs: list[str] | tuple[str, ...]) -> dict[str, Scalar]:
    """``k=v`` strings (the CLI's --metadata) -> a mapping; numbers and true/false are typed."""
    out: dict[str, Scalar] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise HoneError(f"metadata must be key=value, got {scrub_text(pair)!r}", where="--metadata",
                            fix="write --metadata team=nlp")
        out[key.strip()] = _typed(value)
    return out


def _typed(text: str) -> Scalar:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _local_data(uri: str) -> Path | None:
    """The local path of a data URI (a path or any RFC 8089 ``file:`` form), else None."""
    from hone.data.sources import file_uri_path

    if uri[:5].lower() == "file:":
        try:
            return file_uri_path(uri)
        except HoneError:
            return None
    return None if "://" in uri else Path(uri).expanduser()


__all__ = ["Lineage", "Source", "build_lineage", "flatten", "parse_metadata", "read_eval_metrics", "sha256_of",
           "find_run_dir", "REDACTED"]

