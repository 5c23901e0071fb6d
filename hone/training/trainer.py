"""The training loop: one loop for every algorithm and every world size, read top to bottom.

Each optimizer step takes ``effective_batch_size`` samples, divides them among ranks by token count, and
splits each rank's share into padding-free micro-batches of at most ``max_tokens_per_gpu`` tokens. Every
micro-batch contributes ``sum(token CE) / step_loss_tokens`` (over all ranks) to the gradient, so the step's
loss and update do not depend on how the step was split, nor on the number of processes.

Around the steps, with Training Hub's meaning: validation loss on the held-out samples every
``validation_frequency`` steps, Hugging Face checkpoints named as its backends name them (every ``save_samples``
samples, at a new best validation loss, after each epoch, at the end: :class:`~hone.training.checkpoint.HFCheckpoints`)
and its callback hooks (:mod:`hone.training.callbacks`).
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from hone.config import TrainConfig
from hone.data.batching import PackedBatch, count_loss_tokens, epoch_steps, micro_batches, pack
from hone.data.prepare import PreparedData
from hone.data.tokenize import IGNORE, Tokenized
from hone.errors import HoneError
from hone.layout import FINAL, TrainingLayout, epoch_name
from hone.logs import progress_enabled
from hone.training.callbacks import CallbackRunner, check_callbacks
from hone.training.checkpoint import HFCheckpoints, TrainState, load_full_state, save_full_state
from hone.training.distributed import DistEnv, all_reduce_, barrier, full_state_dict, split_among_ranks, unwrap
from hone.training.hooks import AlgorithmHooks
from hone.training.loss import forward_loss_sum
from hone.training.metrics import MetricsWriter, peak_memory_gb, truncate_metrics

log = logging.getLogger("hone")
_PLACEHOLDER = Tokenized([0], [IGNORE])  # a rank with fewer micro-batches runs these (zero loss, zero grad)
# schedulers stepped with a metric (the validation loss) instead of once per step; those that take no arguments
METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")
NO_KWARGS_SCHEDULERS = ("constant", "constant_with_warmup")


@dataclass
class TrainSummary:
    steps: int
    epochs_completed: int
    first_loss: float
    final_loss: float
    samples_seen: int
    tokens_seen: int
    elapsed_s: float
    checkpoints: list[Path]
    preempted: bool = False
    resumed_from: Path | None = None


def make_optimizer(model, hooks: AlgorithmHooks, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = hooks.parameter_groups(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, foreach=True)


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    """transformers' ``lr_scheduler`` with ``lr_scheduler_kwargs`` as its scheduler-specific arguments."""
    from transformers import get_scheduler

    if cfg.lr_scheduler_kwargs and cfg.lr_scheduler in NO_KWARGS_SCHEDULERS:
        raise HoneError(f"lr_scheduler={cfg.lr_scheduler!r} takes no lr_scheduler_kwargs "
                        f"(got {cfg.lr_scheduler_kwargs})", where="lr_scheduler_kwargs",
                        fix="drop lr_scheduler_kwargs, or choose a scheduler that has arguments")
    try:
        return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                             num_training_steps=max(total_steps, 1),
                             scheduler_specific_kwargs=dict(cfg.lr_scheduler_kwargs) or None)
    except (TypeError, ValueError) as err:
        raise HoneError(f"lr_scheduler={cfg.lr_scheduler!r} with lr_scheduler_kwargs={cfg.lr_scheduler_kwargs}: "
                        f"{err}", where="lr_scheduler_kwargs",
                        fix="pass the keyword arguments of transformers' scheduler function for that name "
                            "(e.g. {\"num_cycles\": 2} for cosine_with_restarts, {\"min_lr_rate\": 0.1} for "
                            "cosine_with_min_lr, {\"factor\": 0.5, \"patience\": 2} for reduce_lr_on_plateau)",
                        ) from None


def check_options(cfg: TrainConfig, *, model: bool = True) -> None:
    """Refuse settings that cannot work together, before any data or weights are loaded (HoneError); with
    ``model``, also a local model directory that cannot load (:func:`hone.models.load.check_model_dir`)."""
    validating = cfg.validation_split > 0 or cfg.validation_data_path is not None
    if cfg.validation_split > 0 and cfg.validation_data_path is not None:
        raise HoneError("validation_split and validation_data_path both choose the validation data",
                        where="parameters validation_split and validation_data_path", fix="give one of them")
    if validating and cfg.validation_frequency is None:  # both Training Hub backends require it
        raise HoneError("validation data needs validation_frequency (optimizer steps between validations)",
                        where="parameters validation_split / validation_data_path and validation_frequency",
                        fix="pass validation_frequency, e.g. 50")
    if cfg.save_best_val_loss and not validating:
        raise HoneError("save_best_val_loss needs a validation loss, and there is no validation data",
                        where="parameters save_best_val_loss and validation_split",
                        fix="pass validation_split (e.g. 0.1) or validation_data_path, and validation_frequency")
    if cfg.lr_scheduler in METRIC_SCHEDULERS:
        if not validating:
            raise HoneError(f"lr_scheduler={cfg.lr_scheduler!r} is stepped with the validation loss, and there is "
                            "no validation data", where="parameters lr_scheduler and validation_split",
                            fix="pass validation_split and validation_frequency, or choose another lr_scheduler")
        if cfg.warmup_steps:
            raise HoneError(f"lr_scheduler={cfg.lr_scheduler!r} has no warm-up (warmup_steps={cfg.warmup_steps})",
                            where="parameters lr_scheduler and warmup_steps", fix="set warmup_steps=0")
    check_callbacks(cfg.callbacks)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate)
    make_scheduler(probe, cfg, 1)  # bad lr_scheduler_kwargs fail here, not after loading the model
    if model and cfg.model_path and not cfg.model_path.startswith("oci://"):
        from hone.models.load import check_model_dir, resolve_model_path

        src = resolve_model_path(cfg.model_path)  # a hub id stays as it is (checked when downloaded)
        if Path(src).is_dir():
            check_model_dir(src, trust_remote_code=cfg.trust_remote_code)


@torch.no_grad()
def validation_loss(model, samples: list[Tokenized], batch_size: int, max_tokens: int, device: torch.device,
                    env: DistEnv = DistEnv(), max_samples: int | None = None) -> dict[str, float | int]:
    """Token-mean cross-entropy over ``samples`` (every rank's share, summed across ranks), in eval mode.

    The samples are taken ``batch_size`` at a time, divided among ranks and packed as training steps are; every
    rank runs the same number of forward passes (placeholders where it has none), as sharded models need.
    """
    lengths = [len(s.input_ids) for s in samples]
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    n_batches = 0
    for start in range(0, len(samples), batch_size):
        shares = split_among_ranks(list(range(start, min(start + batch_size, len(samples)))), lengths, env.world_size)
        plans = [micro_batches(share, lengths, max_tokens, max_samples) for share in shares]
        mine = plans[env.rank]
        for j in range(max(len(p) for p in plans)):
            loss_sum += forward_loss_sum(model, pack([samples[i] for i in mine[j]] if j < len(mine)
                                                     else [_PLACEHOLDER]).to(device))
        n_batches += sum(len(p) for p in plans)
    all_reduce_(loss_sum, env)
    model.train(was_training)
    n_tokens = count_loss_tokens(samples)
    # mini-trainer's names, and instructlab's val_num_tokens (its count of loss tokens)
    return {"val_loss": loss_sum.item() / n_tokens, "val_num_samples": len(samples),
            "val_num_loss_counted_tokens": n_tokens, "val_num_tokens": n_tokens, "val_num_batches": n_batches}


def _logged(window: list[dict]) -> dict:
    """One metrics record for the steps since the last one: the last step's, with the loss averaged over the
    window and the counts summed (as transformers' logging_steps does)."""
    out = dict(window[-1])
    if len(window) > 1:
        out["loss"] = sum(r["loss"] for r in window) / len(window)
        for key in ("num_samples", "num_loss_tokens", "num_tokens"):
            out[key] = sum(r[key] for r in window)
        out["logged_steps"] = len(window)
    return out


def check_positions(model, lengths: list[int], env: DistEnv = DistEnv()) -> None:
    """Samples longer than the model's position range: an error for learned absolute positions (an index out
    of range deep in the embedding), a warning for rotary ones (they run, beyond what the model was trained on)."""
    config = getattr(unwrap(model, peft=True), "config", None)
    if config is None or not lengths:
        return
    longest = max(lengths)
    absolute = getattr(config, "n_positions", None)  # GPT-2 style learned position embeddings
    if isinstance(absolute, int) and longest > absolute:
        n = sum(x > absolute for x in lengths)
        raise HoneError(f"{n} training sample(s) are longer than the model's {absolute} positions (n_positions; the "
                        f"longest has {longest} tokens)", where="parameter max_seq_len",
                        fix=f"set max_seq_len to at most {absolute} (longer samples are then left out)")
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and longest > limit and env.is_main:
        n = sum(x > limit for x in lengths)
        log.warning("%d training sample(s) are longer than the model's max_position_embeddings (%d; the longest has "
                    "%d tokens): the model was not trained on positions that far; lower max_seq_len to %d to "
                    "leave them out", n, limit, longest, limit)


def plan_steps(num_samples: int, cfg: TrainConfig) -> tuple[int, int]:
    """(steps per epoch, total steps) for this data and configuration."""
    per_epoch = math.ceil(num_samples / cfg.effective_batch_size)
    total = per_epoch * cfg.num_epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


def train_step(model, samples: list[Tokenized], indices: list[int], lengths: list[int], max_tokens: int,
               device: torch.device, env: DistEnv = DistEnv(), max_samples: int | None = None
               ) -> tuple[torch.Tensor, int, int]:
    """Forward and backward one optimizer step's samples on every rank.

    Returns (the step's summed token loss over all ranks, the step's loss tokens, the step's tokens).
    """
    n_loss = count_loss_tokens([samples[i] for i in indices])
    shares = split_among_ranks(indices, lengths, env.world_size)
    plans = [micro_batches(share, lengths, max_tokens, max_samples) for share in shares]
    mine, rounds = plans[env.rank], max(len(p) for p in plans)  # every rank runs the same number of passes
    scale = env.world_size / n_loss  # data-parallel gradients are averaged over ranks; undo that
    loss_sum = torch.zeros((), device=device)
    for j in range(rounds):
        batch: PackedBatch = pack([samples[i] for i in mine[j]] if j < len(mine) else [_PLACEHOLDER]).to(device)
        sync = j == rounds - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            mb_sum = forward_loss_sum(model, batch)
            (mb_sum * scale).backward()
        loss_sum += mb_sum.detach()
    all_reduce_(loss_sum, env)
    return loss_sum, n_loss, sum(lengths[i] for i in indices)


def oom_safe_step(model, optimizer, samples: list[Tokenized], indices: list[int], lengths: list[int],
                  max_tokens: int, device: torch.device, env: DistEnv = DistEnv(), max_samples: int | None = None
                  ) -> tuple[torch.Tensor, int, int, int]:
    """:func:`train_step`, surviving out-of-memory: a ``torch.OutOfMemoryError`` in the step zeroes the
    gradients, halves the micro-batch token budget and redoes the step with smaller micro-batches (the loss is
    normalised per step, so the update is the same). Returns train_step's figures and the budget that worked
    (the run keeps it). A sample longer than the halved budget cannot be split: that stops the run
    (:class:`HoneError` naming the sample). With several processes an OOM is not retried (the ranks would
    disagree on the micro-batches): it stops the run with the same advice."""
    longest = max(indices, key=lambda i: lengths[i])
    while True:
        # a sample longer than a budget halved earlier (it fitted max_tokens_per_gpu) gets a micro-batch alone
        this_step = max(max_tokens, lengths[longest])
        try:
            return (*train_step(model, samples, indices, lengths, this_step, device, env, max_samples), max_tokens)
        except torch.OutOfMemoryError as err:
            first = (str(err).strip().splitlines() or [""])[0][:200]
        optimizer.zero_grad(set_to_none=True)  # the failed attempt's partial gradients must not count
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        max_tokens = this_step
        halved = max_tokens // 2
        fix = (f"lower max_seq_len below {lengths[longest]} (longer samples are left out), or train on a device "
               "with more memory (or with activation_checkpointing, or LoRA)")
        if env.enabled and env.world_size > 1:
            raise HoneError(f"out of memory in a micro-batch of at most {max_tokens} tokens ({first})",
                            where="parameter max_tokens_per_gpu",
                            fix=f"lower max_tokens_per_gpu (e.g. to {halved}) and resume (--resume-from auto)")
        if halved < lengths[longest]:
            raise HoneError(f"out of memory: sample {longest} ({lengths[longest]} tokens) does not fit in memory "
                            f"even in a micro-batch of at most {max(halved, 1)} tokens ({first})",
                            where=f"training sample {longest} (max_tokens_per_gpu {max_tokens}, halved after "
                                  "out-of-memory)", fix=fix)
        log.warning("out of memory in a micro-batch of at most %d tokens: redoing the step with at most %d tokens "
                    "per micro-batch (kept for the rest of the run)", max_tokens, halved)
        max_tokens = halved


class _Preemption:
    """SIGTERM (what Kubernetes sends before preemption) asks for a checkpoint at the end of the step."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> "_Preemption":
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._old = None
        return self

    def _handle(self, _signum, _frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def agreed(self, env: DistEnv, device: torch.device) -> bool:
        """Whether any rank was asked to stop (all ranks must checkpoint the same step)."""
        if not env.enabled:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        all_reduce_(flag, env, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def _grad_norm(params, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def save_hf(model, tokenizer, hooks: AlgorithmHooks, hf_root: Path, name: str, env: DistEnv) -> Path:
    """Hugging Face checkpoint gathered to rank 0 (a collective when distributed)."""
    state = full_state_dict(model, env)
    path = hooks.save(unwrap(model), tokenizer, hf_root, name, state_dict=state) if env.is_main else hf_root / name
    barrier(env)
    return path


def train(model, tokenizer, data: PreparedData, cfg: TrainConfig, hooks: AlgorithmHooks, output_dir: Path,
          device: torch.device, env: DistEnv = DistEnv(), resume: Path | None = None,
          on_step: Callable[[dict], None] | None = None) -> TrainSummary:
    """Run (or continue) the whole training; metrics every step, validation and checkpoints as configured.

    ``on_step`` receives each record written to ``training_metrics.jsonl`` on rank 0 (e.g. an experiment
    tracker): a step's metrics, and a ``val_loss`` record after each validation. ``cfg.callbacks`` are called
    at each point of the run (:class:`~hone.training.callbacks.CallbackRunner`).
    """
    check_options(cfg, model=False)  # the model is loaded already
    samples, lengths = data.samples, data.lengths
    check_positions(model, lengths, env)
    validating = bool(data.validation) and cfg.validation_frequency is not None
    per_epoch, total_steps = plan_steps(len(samples), cfg)
    optimizer = make_optimizer(model, hooks, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    by_metric = cfg.lr_scheduler in METRIC_SCHEDULERS
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = TrainState(world_size=env.world_size)
    if resume is not None:
        state = load_full_state(resume, model, optimizer, scheduler, hooks, env)
        state.world_size = env.world_size
        optimizer.zero_grad(set_to_none=True)
    layout = TrainingLayout(output_dir)
    metrics_path = layout.metrics
    if env.is_main and resume is not None:
        truncate_metrics(metrics_path, state.global_step)
    metrics = MetricsWriter(metrics_path, append=resume is not None) if env.is_main else None
    hf_root = layout.hf_root
    hf = HFCheckpoints(hf_root, lambda name: save_hf(model, tokenizer, hooks, hf_root, name, env),
                       float_spelling=hooks.name == "osft", keep_last_only=cfg.keep_last_checkpoint_only,
                       is_main=env.is_main)
    hub = CallbackRunner(cfg.callbacks, rank=env.rank, output_dir=output_dir)
    checkpoints: list[Path] = []
    window: list[dict] = []  # step records not yet written (logging_steps > 1)

    def record(entry: dict) -> None:
        if metrics:
            metrics.write(entry)
            if on_step is not None:
                on_step(entry)

    def saved(path: Path, epoch: int, loss: float | None) -> None:
        checkpoints.append(path)  # hone's name (final, epoch_<n>); callbacks get Training Hub's, as upstream
        hub.fire("on_save", step=state.global_step, epoch=epoch, loss=loss,
                 metrics={"checkpoint_path": str(hf.named)})

    if validating and env.is_main:
        log.info("validation: %d held-out samples, every %d steps", len(data.validation), cfg.validation_frequency)
    bar = tqdm(total=total_steps, initial=state.global_step, desc=f"{hooks.name} training", unit="step",
               disable=not (env.is_main and progress_enabled(cfg.progress)), dynamic_ncols=True)
    start = time.perf_counter() - state.elapsed_s
    budget = cfg.max_tokens_per_gpu  # halved for the rest of the run by each out-of-memory step
    preempted = False
    model.train()
    hub.fire("on_train_begin", step=state.global_step, epoch=state.epoch, loss=state.last_loss)
    try:
        with _Preemption() as stop:
            for epoch in range(state.epoch, cfg.num_epochs):
                steps = epoch_steps(len(samples), cfg.effective_batch_size, seed=cfg.seed, epoch=epoch)
                hub.fire("on_epoch_begin", step=state.global_step, epoch=epoch, loss=state.last_loss)
                for s in range(state.step_in_epoch, len(steps)):
                    if state.global_step >= total_steps:
                        break
                    t0 = time.perf_counter()
                    hub.fire("on_step_begin", step=state.global_step, epoch=epoch, loss=state.last_loss)
                    loss_sum, n_loss, n_tokens, budget = oom_safe_step(
                        model, optimizer, samples, steps[s], lengths, budget, device, env,
                        cfg.micro_batch_max_samples)
                    hooks.after_backward(model)
                    grad_norm = _grad_norm(params, cfg.max_grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    hooks.after_optimizer_step(model, optimizer)
                    if not by_metric:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    loss = (loss_sum / n_loss).item()  # the step's one host-device sync
                    dt = time.perf_counter() - t0
                    state.global_step += 1
                    state.step_in_epoch = s + 1
                    state.samples_seen += len(steps[s])
                    state.tokens_seen += n_tokens
                    state.first_loss = loss if state.first_loss is None else state.first_loss
                    state.last_loss = loss
                    state.elapsed_s = time.perf_counter() - start
                    step_record = {
                        "step": state.global_step, "epoch": epoch + 1, "loss": loss, "lr": lr,
                        "grad_norm": grad_norm, "num_samples": len(steps[s]), "num_loss_tokens": n_loss,
                        "num_tokens": n_tokens, "tokens_per_second": n_tokens / dt,
                        "elapsed_s": state.elapsed_s, "peak_memory_gb": peak_memory_gb(device),
                    }
                    if cfg.log_sample_ids:
                        step_record["sample_ids"] = sorted(steps[s])
                    window.append(step_record)
                    now = dict(step=state.global_step, epoch=epoch, loss=loss, learning_rate=lr)  # epochs completed
                    if state.global_step % cfg.logging_steps == 0 or state.global_step >= total_steps \
                            or state.step_in_epoch == len(steps):
                        step_record = _logged(window)
                        window.clear()
                        record(step_record)
                        hub.fire("on_log", **now, metrics=step_record)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tokens / dt:,.0f}", epoch=epoch + 1)
                    bar.update(1)

                    val_loss = None
                    if validating and state.global_step % cfg.validation_frequency == 0:
                        val = validation_loss(model, data.validation, cfg.effective_batch_size,
                                              cfg.max_tokens_per_gpu, device, env,
                                              cfg.validation_micro_batch_max_samples)
                        val_loss = float(val["val_loss"])
                        val_record = {"step": state.global_step, "epoch": epoch + 1, **val}
                        record(val_record)
                        if by_metric:
                            scheduler.step(val_loss)
                        hub.fire("on_evaluate", **now, metrics=val_record)
                    if cfg.save_samples and state.samples_seen >= state.saved_samples + cfg.save_samples:
                        state.saved_samples = state.samples_seen
                        saved(hf.save(state.samples_seen), epoch, loss)
                    if cfg.save_best_val_loss and val_loss is not None and (
                            state.best_val_loss is None
                            or state.best_val_loss - val_loss > cfg.val_loss_improvement_threshold):
                        state.best_val_loss = val_loss
                        saved(hf.save_best(state.samples_seen), epoch, loss)
                    hub.fire("on_step_end", **now, metrics=step_record)

                    epoch_done = state.step_in_epoch == len(steps)
                    if epoch_done:
                        state.epoch, state.step_in_epoch = epoch + 1, 0
                        if cfg.checkpoint_at_epoch:
                            saved(hf.save(state.samples_seen, alias=epoch_name(epoch + 1)), epoch + 1, loss)
                        hub.fire("on_epoch_end", **{**now, "epoch": epoch + 1})
                    every = cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0
                    preempted = stop.agreed(env, device)
                    if preempted and window:  # the steps not yet logged go into the record before stopping
                        record(_logged(window))
                        window.clear()
                    if every or preempted or (epoch_done and cfg.accelerate_full_state_at_epoch):
                        save_full_state(output_dir, model, optimizer, scheduler, hooks, state, env,
                                        keep_last=cfg.keep_last_checkpoints)
                    if preempted:
                        break
                if preempted or state.global_step >= total_steps:
                    break
            if cfg.save_final_checkpoint and not preempted:
                saved(hf.save(state.samples_seen, alias=FINAL), state.epoch, state.last_loss)
    finally:
        bar.close()
        if metrics:
            metrics.close()
    hub.fire("on_train_end", step=state.global_step, epoch=state.epoch, loss=state.last_loss)
    nan = float("nan")
    return TrainSummary(
        steps=state.global_step, epochs_completed=state.epoch, first_loss=state.first_loss or nan,
        final_loss=state.last_loss if state.last_loss is not None else nan, samples_seen=state.samples_seen,
        tokens_seen=state.tokens_seen, elapsed_s=time.perf_counter() - start, checkpoints=checkpoints,
        preempted=preempted, resumed_from=resume)
