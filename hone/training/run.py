"""One training run from a resolved configuration: data -> model -> algorithm hooks -> trainer -> outputs.

With more than one process asked for (and not already under torchrun) the run is handed to torchrun, whose
workers come back here; every rank prepares the same data and model, rank 0 writes the shared outputs.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from hone.config import RunConfig
from hone.data.prepare import prepare_data
from hone.data.report import DatasetReport
from hone.errors import HoneError
from hone.io import atomic_write_text
from hone.layout import PARAMS_FILE, RESULT_FILE, RUN_OUTPUTS, TrainingLayout  # noqa: F401  (re-exported)
from hone.models.load import load_model, load_tokenizer, resolve_device, resolve_dtype
from hone.training.checkpoint import checkpoints_dir, latest_checkpoint, resolve_resume
from hone.training.distributed import (DistEnv, barrier, destroy, init_distributed, local_device, resolve_fsdp_options,
                                      shard_model)
from hone.training.hooks import AlgorithmHooks
from hone.training.launch import launch, needs_launch, resolve_launch
from hone.training.metrics import read_metrics, write_loss_charts
from hone.training.trainer import METRIC_SCHEDULERS, check_options, plan_steps, train

log = logging.getLogger("hone")

MIN_STEPS = 10            # fewer optimizer steps than this rarely trains anything: say so before the run
MAX_DROPPED_SHARE = 0.1   # warn when max_seq_len drops this share of the samples or more


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
    data_report: DatasetReport
    model_info: dict[str, Any] = field(default_factory=dict)
    status: str = "completed"  # or "preempted" (SIGTERM: a full-state checkpoint was written)
    resumed_from: Path | None = None
    world_size: int = 1

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainResult":
        paths = {"output_dir", "final_model_dir", "metrics_path", "loss_chart_png", "loss_chart_html",
                 "params_path", "data_dir", "resumed_from"}
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for k in paths:
            if kw.get(k) is not None:
                kw[k] = Path(kw[k])
        kw["checkpoints"] = [Path(p) for p in kw.get("checkpoints", [])]
        kw["data_report"] = DatasetReport.from_json(kw["data_report"])
        return cls(**kw)

    # -- Training Hub's result mapping: result["model"], result["tokenizer"], result["trainer"] ----------------
    def keys(self) -> list[str]:
        """What ``result[...]`` gives: the final model and its tokenizer (when one was saved), and ``trainer``."""
        return (["model", "tokenizer"] if self.final_model_dir is not None else []) + ["trainer"]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> Any:
        """Loaded on first use from ``final_model_dir`` (safetensors; remote code only if the run allowed it)."""
        if key not in self.keys():
            raise KeyError(key if key in ("model", "tokenizer", "trainer") else
                           f"{key!r} (a TrainResult holds {', '.join(self.keys())}; its figures are attributes)")
        cache = self.__dict__.setdefault("_loaded", {})
        if key not in cache:
            cache[key] = FinishedTrainer(self) if key == "trainer" else self._load(key)
        return cache[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def _load(self, key: str) -> Any:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(self.final_model_dir)
        params = json.loads(self.params_path.read_text()) if self.params_path.is_file() else {}
        remote = bool(params.get("trust_remote_code", False))
        if key == "tokenizer":
            return AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
        if (path / "adapter_config.json").is_file():  # LoRA with save_merged=False: the adapter on its base
            from peft import AutoPeftModelForCausalLM

            return AutoPeftModelForCausalLM.from_pretrained(path, dtype="auto", trust_remote_code=remote)
        return AutoModelForCausalLM.from_pretrained(path, dtype="auto", use_safetensors=True,
                                                    trust_remote_code=remote)


class FinishedTrainer:
    """``result["trainer"]``: the closest honest counterpart of the trainer Training Hub's LoRA backend returns
    (a TRL ``SFTTrainer``). hone's trainer is a loop, not an object, so this is a read-only view of the finished
    run: ``model`` and ``tokenizer``/``processing_class`` (loaded on first use), ``state.log_history`` (the
    per-step records of training_metrics.jsonl), ``state.global_step``, ``state.epoch`` and ``args.output_dir``."""

    def __init__(self, result: TrainResult):
        from types import SimpleNamespace

        self.result = result
        history = read_metrics(result.metrics_path) if Path(result.metrics_path).is_file() else []
        self.state = SimpleNamespace(log_history=history, global_step=result.steps, epoch=result.epochs_completed)
        self.args = SimpleNamespace(output_dir=str(result.output_dir))

    @property
    def model(self) -> Any:
        return self.result["model"] if "model" in self.result else None

    @property
    def tokenizer(self) -> Any:
        return self.result["tokenizer"] if "tokenizer" in self.result else None

    processing_class = tokenizer


def saved_params(cfg: RunConfig) -> dict[str, Any]:
    """The run's identity as written to training_params.json (a signed data URL loses its signature)."""
    from hone.secrets import redact_uri

    params = cfg.to_flat(include_volatile=False)
    params["data_path"] = redact_uri(params["data_path"])
    return params


def check_output_dir(out: Path, cfg: RunConfig, *, remove: bool = True) -> None:
    """Refuse an output directory that holds a different run (or unrelated files) unless overwrite is set,
    and a directory holding this run's checkpoints unless resuming."""
    if not out.exists():
        return
    if not out.is_dir():
        raise HoneError(f"output path exists and is not a directory: {out}", where="ckpt_output_dir",
                        fix="choose another ckpt_output_dir")
    params = TrainingLayout(out).params
    if params.is_file():
        previous = json.loads(params.read_text())
        current = saved_params(cfg)
        # where the run lives is not what it is: a moved (or copied) run directory still resumes
        diff = sorted(k for k in set(previous) | set(current)
                      if k != "ckpt_output_dir" and previous.get(k) != current.get(k))
        if not diff:
            if cfg.train.resume_from is None and latest_checkpoint(out) and not cfg.train.overwrite:
                raise HoneError(f"{out} holds resumable checkpoints of this run", where="ckpt_output_dir",
                                fix="pass resume_from='auto' (--resume-from auto) to continue it, or overwrite=True "
                                    "to start again")
            if not cfg.train.overwrite:
                return
            what = ""
        else:
            what = f"{out} holds a different run (differs in: {', '.join(diff[:8])})"
    elif any(p not in (TrainingLayout(out).launch_config, TrainingLayout(out).callbacks_payload)
             for p in out.iterdir()):
        what = f"{out} is not empty and holds no hone run"
    else:
        return
    if not cfg.train.overwrite:
        raise HoneError(what, where="ckpt_output_dir", fix="choose a new ckpt_output_dir, or pass --overwrite "
                        "(overwrite=True) to replace that run's outputs")
    if remove:
        for target in TrainingLayout(out).outputs:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def plan_warnings(num_samples: int, run: RunConfig, report: DatasetReport | None = None) -> list[str]:
    """One line per setting that would waste the run, each with its fix (logged on rank 0 before training):
    too few optimizer steps, ``effective_batch_size`` larger than the dataset, a large share of the samples
    dropped by ``max_seq_len`` (all of them is an error already: :func:`hone.data.prepare.tokenize_samples`),
    and a learning-rate warm-up that lasts the whole run."""
    cfg = run.train
    out: list[str] = []
    batch, epochs = cfg.effective_batch_size, cfg.num_epochs
    per_epoch, total = plan_steps(num_samples, cfg)
    natural = per_epoch * epochs
    if natural < MIN_STEPS and total == natural:  # a max_steps cap below that is the user's own choice
        steps_needed = -(-MIN_STEPS // epochs)  # ceil: steps per epoch for MIN_STEPS in all
        smaller = max(1, num_samples // steps_needed)
        fix = (f"lower effective_batch_size (e.g. {smaller} gives {-(-num_samples // smaller) * epochs} steps) "
               f"or raise num_epochs" if smaller < batch else "raise num_epochs or add data")
        out.append(f"only {natural} optimizer step{'s' if natural != 1 else ''} ({num_samples} samples, "
                   f"effective_batch_size {batch}, num_epochs {epochs}): {fix}")
    if batch > num_samples:
        out.append(f"effective_batch_size {batch} is larger than the dataset ({num_samples} samples): every step "
                   f"takes all {num_samples} and an epoch is one step; lower effective_batch_size to at most "
                   f"{num_samples}")
    if report is not None and report.mode != "pretraining" and report.dropped_too_long:
        seen = report.samples + report.dropped_too_long + report.dropped_no_loss_tokens
        share = report.dropped_too_long / max(seen, 1)
        if share >= MAX_DROPPED_SHARE:
            longest = (report.token_lengths or {}).get("max")
            out.append(f"{report.dropped_too_long} of {seen} samples ({share:.0%}) are longer than max_seq_len="
                       f"{run.data.max_seq_len} tokens and are left out: raise max_seq_len"
                       + (f" (the longest has {longest} tokens)" if longest else "")
                       + " or shorten the conversations")
    warms = cfg.lr_scheduler not in ("constant", *METRIC_SCHEDULERS)
    if warms and cfg.warmup_steps and cfg.warmup_steps >= total:
        out.append(f"warmup_steps={cfg.warmup_steps} is not below the run's {total} optimizer step"
                   f"{'s' if total != 1 else ''}: the learning rate is still warming up when training ends and "
                   f"never reaches learning_rate={cfg.learning_rate:g}; lower warmup_steps (e.g. "
                   f"{max(0, total // 10)}) or train longer")
    return out


class RunTracker(Protocol):
    """An experiment tracker fed by rank 0 (e.g. MLflow); built above this layer and passed in."""

    def start(self, params: dict[str, Any], *, resume: bool = False) -> Any: ...
    def log_step(self, record: dict[str, Any]) -> None: ...
    def finish(self, result: Any = None, *, status: str | None = None) -> None: ...


def run_training(cfg: RunConfig, hooks: AlgorithmHooks, tracker: RunTracker | None = None) -> TrainResult:
    """Validate inputs, prepare data, load the model, train, and write every output under ckpt_output_dir.

    ``tracker`` is used in the process that holds rank 0 (the workers build their own when launched).
    """
    t = cfg.train
    out = Path(t.ckpt_output_dir)
    hooks.validate()
    check_options(t)
    cfg = cfg.model_copy(update={"distributed": resolve_fsdp_options(cfg.distributed)})
    plan = resolve_launch(cfg.distributed)
    if needs_launch(plan):
        return _launch(cfg, plan)

    device = resolve_device(t.device)
    env = init_distributed(device)
    try:
        return _run(cfg, hooks, out, local_device(device, env), env, tracker if env.is_main else None)
    finally:
        destroy(env)


def _launch(cfg: RunConfig, plan) -> TrainResult:
    out = Path(cfg.train.ckpt_output_dir)
    check_output_dir(out, cfg)
    resolve_resume(cfg.train.resume_from, out)
    # the workers must not redo the overwrite (it would delete what the launcher just wrote)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"overwrite": False})})
    log.info("launching torchrun: %d node(s) x %d process(es)", plan.nnodes, plan.nproc_per_node)
    code = launch(cfg, plan)
    if code != 0:
        raise HoneError(f"distributed training failed (torchrun exit status {code})", where="the worker log above",
                        fix="read the first error printed by a worker")
    result_file = TrainingLayout(out).result
    if not result_file.is_file():  # other nodes see it only when ckpt_output_dir is shared (it must be)
        raise HoneError(f"training finished but {result_file} is not visible on node {plan.node_rank}",
                        where="ckpt_output_dir",
                        fix="put ckpt_output_dir on storage every node shares (an RWX volume on Kubernetes)")
    return TrainResult.from_json(json.loads(result_file.read_text()))


def _run(cfg: RunConfig, hooks: AlgorithmHooks, out: Path, device: torch.device, env: DistEnv,
         tracker: RunTracker | None) -> TrainResult:
    t = cfg.train
    check_output_dir(out, cfg, remove=env.is_main)
    barrier(env)
    resume = resolve_resume(t.resume_from, out)
    dtype = resolve_dtype(t.dtype, device)

    # Everything that can fail on the user's input fails here, before any weights are loaded.
    tokenizer = load_tokenizer(t.model_path, trust_remote_code=t.trust_remote_code)
    layout = TrainingLayout(out)
    data_dir = Path(cfg.data.data_output_dir) if cfg.data.data_output_dir else layout.data
    data = prepare_data(cfg.data, tokenizer, data_dir if env.is_main else None, seed=t.seed,
                        validation_split=t.validation_split, validation_data_path=t.validation_data_path)
    params_path = layout.params
    if env.is_main:
        log.info("data: %s", data.report.summary())
        for line in plan_warnings(len(data.samples), cfg, data.report):
            log.warning(line)
        atomic_write_text(params_path, json.dumps(saved_params(cfg), indent=2) + "\n")

    torch.manual_seed(t.seed)
    model = load_model(t.model_path, dtype=dtype, device=device, trust_remote_code=t.trust_remote_code, training=True,
                       **hooks.load_kwargs())
    if t.use_liger:
        from hone.models.liger import apply_liger

        apply_liger(model, device, say=env.is_main)  # every rank patches its model; rank 0 says what happened
    model = hooks.prepare_model(model, data=data, device=device)
    info = hooks.describe(model)
    if env.is_main:
        log.info("model: %s trainable of %s parameters%s", f"{info['trainable_parameters']:,}",
                 f"{info['total_parameters']:,}", f"; resuming from {resume}" if resume else "")
    model = shard_model(model, cfg.distributed, env, device)

    if tracker:
        tracker.start(saved_params(cfg), resume=resume is not None)
    try:
        summary = train(model, tokenizer, data, t, hooks, out, device, env, resume=resume,
                        on_step=tracker.log_step if tracker else None)
    except BaseException:
        if tracker:
            tracker.finish(status="FAILED")
        raise
    final = summary.checkpoints[-1] if t.save_final_checkpoint and summary.checkpoints and not summary.preempted \
        else None
    png, page = layout.loss_chart_png, layout.loss_chart_html
    result = TrainResult(
        output_dir=out, final_model_dir=final,
        checkpoints=summary.checkpoints, metrics_path=layout.metrics, loss_chart_png=png,
        loss_chart_html=page, params_path=params_path, data_dir=data_dir, steps=summary.steps,
        epochs_completed=summary.epochs_completed, first_loss=summary.first_loss, final_loss=summary.final_loss,
        samples_trained=summary.samples_seen, tokens_trained=summary.tokens_seen, elapsed_s=summary.elapsed_s,
        data_report=data.report, model_info=info, status="preempted" if summary.preempted else "completed",
        resumed_from=summary.resumed_from, world_size=env.world_size,
    )
    if env.is_main:
        metrics = [m for m in read_metrics(result.metrics_path) if "loss" in m]  # not the val_loss records
        if metrics:
            write_loss_charts(metrics, out, title=f"{hooks.name} training loss")
        atomic_write_text(layout.result, json.dumps(result.to_json(), indent=2) + "\n")
        if tracker:
            tracker.finish(result)
        if summary.preempted:
            log.info("stopped on SIGTERM after step %d; full state saved under %s (resume with resume_from='auto')",
                     summary.steps, checkpoints_dir(out))
    barrier(env)
    return result
