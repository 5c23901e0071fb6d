"""``hone eval`` / ``hone.evaluate``: evaluate a model (and optionally its base) and write the results.

Everything that can be wrong with the inputs (model paths, eval data, task names, task data) is checked before
the first model is loaded. Each model is then loaded once: the holdout task runs on it, and lm-eval runs on the
same in-memory model (``HFLM(pretrained=model)``), or through vLLM. Outputs are written to a temporary
directory and renamed into place, so ``output_dir`` never holds half a result:

    eval_config.json     the resolved parameters
    eval_results.json    lm-eval's results (without per-sample logs) + ``hone``: model, holdout summary
    metrics.json         flat ``task/metric`` -> value (holdout metrics as ``holdout/<metric>``)
    samples.jsonl        with log_samples: one line per example (task, prompt, target, prediction, scores)
    base/                with a base model: its eval_results.json, metrics.json (and samples.jsonl)
    comparison.md/.json/.png   with a base model: every metric, its change, forgetting flagged
"""
from __future__ import annotations

import gc
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hone.config import EvalConfig
from hone.errors import HoneError
from hone.evaluation import harness, holdout
from hone.evaluation.compare import MetricChange, compare, write_comparison
from hone.io import atomic_dir, atomic_write_text
from hone.layout import TrainingLayout
from hone.secrets import redact_uri

log = logging.getLogger("hone")

OUTPUT_MARKERS = ("eval_config.json", "metrics.json")  # files that show a directory holds an evaluation


@dataclass
class ModelEval:
    """What one model scored."""

    label: str                                  # "tuned" or "base"
    model_path: str
    metrics: dict[str, float]                   # task/metric -> value
    higher_is_better: dict[str, bool | None]
    raw: dict[str, Any]                         # eval_results.json
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalResult:
    output_dir: Path
    metrics: dict[str, float]
    base_metrics: dict[str, float] | None = None
    comparison: list[MetricChange] | None = None
    forgetting: list[str] = field(default_factory=list)   # metrics flagged as dropped beyond the threshold
    files: dict[str, Path] = field(default_factory=dict)
    elapsed_s: float = 0.0


def evaluate(model_path: str, output_dir: str, **kwargs: Any) -> EvalResult:
    """Evaluate ``model_path`` on lm-eval tasks and/or the holdout split; compare with ``base_model_path``.

    Keyword arguments are the fields of :class:`hone.config.EvalConfig`: ``base_model_path``, ``tasks``
    (names, or one comma-separated string), ``include_path`` (local task directories), ``eval_data_path``,
    ``limit``, ``batch_size``, ``backend`` (hf|vllm), ``device``, ``dtype``, ``max_new_tokens``, ``max_seq_len``,
    ``num_fewshot``, ``apply_chat_template``, ``log_samples``, ``forgetting_threshold``, ``trust_remote_code``,
    ``overwrite``.
    """
    return run_evaluation(EvalConfig.from_flat({"model_path": model_path, "output_dir": output_dir, **kwargs}))


def run_evaluation(cfg: EvalConfig) -> EvalResult:
    start = time.monotonic()
    out = Path(cfg.output_dir).expanduser()
    model_path = resolve_model(cfg.model_path, "model_path (--model)")
    base_path = resolve_model(cfg.base_model_path, "base_model_path (--base)") if cfg.base_model_path else None
    _check_output_dir(out, [model_path, base_path], cfg.overwrite)
    samples = holdout.read_holdout(cfg.eval_data_path, limit=cfg.limit, where="eval_data_path (--eval-data)") \
        if cfg.eval_data_path else None
    plan = harness.resolve_tasks(cfg.tasks, cfg.include_path)
    if plan is not None:
        harness.check_backend(cfg.backend)
    tasks = plan.load() if plan else None  # loads every task's data now: a bad task fails before any model loads

    evals: dict[str, ModelEval] = {}
    for label, path in ([("base", base_path)] if base_path else []) + [("tuned", model_path)]:
        evals[label] = evaluate_model(cfg, label, path, samples, plan, tasks)
        tasks = None  # lm-eval mutates tasks: the next model gets fresh ones
    tuned, base = evals["tuned"], evals.get("base")

    rows = None
    if base is not None:
        better = {**base.higher_is_better, **tuned.higher_is_better}
        rows = compare(base.metrics, tuned.metrics, better, cfg.forgetting_threshold)
    result = EvalResult(out, tuned.metrics, base.metrics if base else None, rows,
                        [r.name for r in rows or [] if r.forgetting])
    with atomic_dir(out) as tmp:
        atomic_write_text(tmp / "eval_config.json", json.dumps(_config_record(cfg, model_path, base_path), indent=2) + "\n")
        _write_model(tuned, tmp, cfg.log_samples)
        if base is not None:
            _write_model(base, tmp / "base", cfg.log_samples)
            write_comparison(rows, tmp, base_label=redact_uri(base_path), tuned_label=redact_uri(model_path),
                             threshold=cfg.forgetting_threshold)
        names = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
    result.files = {str(n): out / n for n in names}
    result.elapsed_s = time.monotonic() - start
    return result


def resolve_model(path: str, where: str) -> str:
    """A model directory or hub id; a training output directory means its final model (hf_format/final)."""
    from hone.models.load import resolve_model_path

    p = Path(path).expanduser()
    final = TrainingLayout(p).final_model
    if p.is_dir() and not (p / "config.json").is_file() and (final / "config.json").is_file():
        log.info("%s is a training output directory: evaluating its final model %s", path, final)
        path = str(final)
    try:
        return resolve_model_path(path)
    except HoneError as err:
        raise HoneError(err.what, where=where, fix=err.fix) from None


def _check_output_dir(out: Path, models: list[str | None], overwrite: bool) -> None:
    for m in models:
        mp = Path(m).expanduser() if m else None
        if mp is not None and mp.exists() and (out.resolve() == mp.resolve() or out.resolve() in mp.resolve().parents):
            raise HoneError(f"the output directory {out} holds the model {m}; writing the results would replace it",
                            where="output_dir (--output)", fix="choose a separate directory for the evaluation")
    if out.exists() and not out.is_dir():
        raise HoneError(f"{out} exists and is not a directory", where="output_dir (--output)",
                        fix="choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).is_file() for m in OUTPUT_MARKERS) and not overwrite:
        raise HoneError(f"{out} is not empty and does not hold an earlier evaluation; its contents would be replaced",
                        where="output_dir (--output)",
                        fix="choose a new or empty directory, or pass --overwrite to replace it")


def evaluate_model(cfg: EvalConfig, label: str, path: str, samples: list[holdout.HoldoutSample] | None,
                   plan: harness.TaskPlan | None, tasks: list[Any] | None) -> ModelEval:
    """Load one model and run the holdout task and the lm-eval tasks on it."""
    import torch

    from hone.models.load import load_model, load_tokenizer, resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    log.info("evaluating the %s model %s on %s", label, path, device)
    model = tokenizer = None
    if samples is not None or cfg.backend == "hf":  # vLLM loads the model itself; the holdout needs it here
        try:
            tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
            model = load_model(path, dtype=dtype, device=device, trust_remote_code=cfg.trust_remote_code)
        except HoneError as err:
            raise HoneError(err.what, where=f"{label} model: {path}", fix=err.fix) from None
        model.eval()
    metrics: dict[str, float] = {}
    better: dict[str, bool | None] = {}
    raw: dict[str, Any] = {"results": {}}
    records: list[dict[str, Any]] = []
    hold = None
    if samples is not None:
        gen_batch = cfg.batch_size if isinstance(cfg.batch_size, int) else (8 if device.type == "cpu" else 32)
        hold = holdout.run_holdout(model, tokenizer, samples, device=device, max_new_tokens=cfg.max_new_tokens,
                                   batch_size=gen_batch, max_seq_len=cfg.max_seq_len, desc=f"holdout ({label})")
        for k, v in hold.metrics.items():
            metrics[f"{holdout.TASK}/{k}"] = v
            better[f"{holdout.TASK}/{k}"] = holdout.HIGHER_IS_BETTER.get(k)
        records += hold.records
    if plan is not None:
        if cfg.backend == "vllm" and model is not None:
            model = None  # free the GPU for vLLM's engine
            _free(torch)
        lm = harness.make_lm(cfg.backend, model=model, tokenizer=tokenizer, model_path=path,
                             batch_size=cfg.batch_size, device=device, dtype=cfg.dtype,
                             trust_remote_code=cfg.trust_remote_code,
                             gpu_memory_utilization=0.4 if cfg.base_model_path else 0.8)
        results = harness.run_tasks(lm, plan, tasks, limit=cfg.limit, num_fewshot=cfg.num_fewshot,
                                    apply_chat_template=cfg.apply_chat_template, log_samples=cfg.log_samples)
        lm_metrics, lm_better = harness.flatten(results)
        metrics.update(lm_metrics)
        better.update(lm_better)
        if cfg.log_samples:
            records += harness.sample_records(results)
        raw = harness.json_safe(results)
        del lm
    raw["hone"] = {"label": label, "model": redact_uri(path),
                   "holdout": {**hold.summary(), "eval_data_path": redact_uri(cfg.eval_data_path)} if hold else None}
    model = None
    _free(torch)
    return ModelEval(label, path, metrics, better, raw, records)


def _free(torch) -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write_model(ev: ModelEval, directory: Path, log_samples: bool) -> None:
    atomic_write_text(directory / "eval_results.json", json.dumps(ev.raw, indent=2) + "\n")
    atomic_write_text(directory / "metrics.json", json.dumps(
        {k: (v if math.isfinite(v) else None) for k, v in sorted(ev.metrics.items())}, indent=2) + "\n")
    if log_samples:
        atomic_write_text(directory / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in ev.samples))


def _config_record(cfg: EvalConfig, model_path: str, base_path: str | None) -> dict[str, Any]:
    from hone.version import __version__

    versions = {"hone": __version__}
    try:
        from importlib.metadata import version

        versions["lm_eval"] = version("lm_eval")
    except Exception:  # noqa: BLE001 - lm-eval is optional
        pass
    record = {**cfg.model_dump(mode="json"), "resolved_model_path": model_path, "resolved_base_model_path": base_path}
    # paths may be URIs with credentials (https://user:token@..., presigned s3 URLs): never saved
    record = {k: [redact_uri(x) for x in v] if isinstance(v, list) else redact_uri(v) if isinstance(v, str) else v
              for k, v in record.items()}
    return {**record, "versions": versions}
