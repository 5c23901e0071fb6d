"""One training run from a resolved configuration: data -> model -> algorithm hooks -> trainer -> outputs."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hone.config import RunConfig
from hone.data.prepare import DataReport, prepare_data
from hone.errors import HoneError
from hone.io import atomic_write_text
from hone.models.load import load_model, load_tokenizer, resolve_device, resolve_dtype
from hone.training.hooks import AlgorithmHooks
from hone.training.metrics import read_metrics, write_loss_charts
from hone.training.trainer import train

log = logging.getLogger("hone")

PARAMS_FILE = "training_params.json"
# What a run writes into ckpt_output_dir; --overwrite removes exactly these, never anything else.
RUN_OUTPUTS = ("hf_format", "data", "training_metrics.jsonl", "loss_chart.png", "loss_chart.html", PARAMS_FILE,
               "training_result.json")


@dataclass
class TrainResult:
    """Where a run's outputs are, and its headline figures."""

    output_dir: Path
    final_model_dir: Path | None
    checkpoints: list[Path]
    metrics_path: Path
    loss_chart_png: Path
    loss_chart_html: Path
    params_path: Path
    data_dir: Path
    steps: int
    epochs_completed: int
    first_loss: float
    final_loss: float
    samples_trained: int
    tokens_trained: int
    elapsed_s: float
    data_report: DataReport
    model_info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return json.loads(json.dumps(d, default=str))


def check_output_dir(out: Path, cfg: RunConfig) -> None:
    """Refuse an output directory that holds a different run (or unrelated files) unless overwrite is set."""
    if not out.exists():
        return
    if not out.is_dir():
        raise HoneError(f"output path exists and is not a directory: {out}", where="ckpt_output_dir",
                        fix="choose another ckpt_output_dir")
    params = out / PARAMS_FILE
    if params.is_file():
        previous = json.loads(params.read_text())
        current = cfg.to_flat(include_volatile=False)
        diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if not diff:
            return
        what = f"{out} holds a different run (differs in: {', '.join(diff[:8])})"
    elif any(out.iterdir()):
        what = f"{out} is not empty and holds no hone run"
    else:
        return
    if not cfg.train.overwrite:
        raise HoneError(what, where="ckpt_output_dir", fix="choose a new ckpt_output_dir, or pass --overwrite "
                        "(overwrite=True) to replace that run's outputs")
    for name in RUN_OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def run_training(cfg: RunConfig, hooks: AlgorithmHooks) -> TrainResult:
    """Validate inputs, prepare data, load the model, train, and write every output under ckpt_output_dir."""
    t = cfg.train
    out = Path(t.ckpt_output_dir)
    hooks.validate()
    check_output_dir(out, cfg)
    device = resolve_device(t.device)
    dtype = resolve_dtype(t.dtype, device)

    # Everything that can fail on the user's input fails here, before any weights are loaded.
    tokenizer = load_tokenizer(t.model_path, trust_remote_code=t.trust_remote_code)
    data_dir = Path(cfg.data.data_output_dir) if cfg.data.data_output_dir else out / "data"
    data = prepare_data(cfg.data, tokenizer, data_dir)
    log.info("data: %s", data.report.summary())
    params_path = atomic_write_text(out / PARAMS_FILE, json.dumps(cfg.to_flat(include_volatile=False), indent=2) + "\n")

    torch.manual_seed(t.seed)
    model = load_model(t.model_path, dtype=dtype, device=device, trust_remote_code=t.trust_remote_code,
                       **hooks.load_kwargs())
    model = hooks.prepare_model(model, data=data, device=device)
    info = hooks.describe(model)
    log.info("model: %s trainable of %s parameters", f"{info['trainable_parameters']:,}", f"{info['total_parameters']:,}")

    summary = train(model, tokenizer, data, t, hooks, out, device)
    metrics = read_metrics(out / "training_metrics.jsonl")
    png, page = write_loss_charts(metrics, out, title=f"{hooks.name} training loss") if metrics else (
        out / "loss_chart.png", out / "loss_chart.html")
    final = out / "hf_format" / "final"
    result = TrainResult(
        output_dir=out, final_model_dir=final if t.save_final_checkpoint else None, checkpoints=summary.checkpoints,
        metrics_path=out / "training_metrics.jsonl", loss_chart_png=png, loss_chart_html=page,
        params_path=params_path, data_dir=data_dir, steps=summary.steps, epochs_completed=summary.epochs_completed,
        first_loss=summary.first_loss, final_loss=summary.final_loss, samples_trained=summary.samples_seen,
        tokens_trained=summary.tokens_seen, elapsed_s=summary.elapsed_s, data_report=data.report, model_info=info,
    )
    atomic_write_text(out / "training_result.json", json.dumps(result.to_json(), indent=2) + "\n")
    return result
