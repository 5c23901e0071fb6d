"""The training loop: one loop for every algorithm and every world size, read top to bottom.

Each optimizer step takes ``effective_batch_size`` samples, divides them among ranks by token count, and
splits each rank's share into padding-free micro-batches of at most ``max_tokens_per_gpu`` tokens. Every
micro-batch contributes ``sum(token CE) / step_loss_tokens`` (over all ranks) to the gradient, so the step's
loss and update do not depend on how the step was split, nor on the number of processes.
"""
from __future__ import annotations

import contextlib
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
from hone.layout import FINAL, TrainingLayout, epoch_name
from hone.training.checkpoint import TrainState, load_full_state, save_full_state
from hone.training.distributed import DistEnv, all_reduce_, barrier, full_state_dict, split_among_ranks, unwrap
from hone.training.hooks import AlgorithmHooks
from hone.training.loss import forward_loss_sum
from hone.training.metrics import MetricsWriter, peak_memory_gb, truncate_metrics

_PLACEHOLDER = Tokenized([0], [IGNORE])  # a rank with fewer micro-batches runs these (zero loss, zero grad)


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
    from transformers import get_scheduler

    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=max(total_steps, 1))


def plan_steps(num_samples: int, cfg: TrainConfig) -> tuple[int, int]:
    """(steps per epoch, total steps) for this data and configuration."""
    per_epoch = math.ceil(num_samples / cfg.effective_batch_size)
    total = per_epoch * cfg.num_epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


def train_step(model, samples: list[Tokenized], indices: list[int], lengths: list[int], max_tokens: int,
               device: torch.device, env: DistEnv = DistEnv()) -> tuple[torch.Tensor, int, int]:
    """Forward and backward one optimizer step's samples on every rank.

    Returns (the step's summed token loss over all ranks, the step's loss tokens, the step's tokens).
    """
    n_loss = count_loss_tokens([samples[i] for i in indices])
    shares = split_among_ranks(indices, lengths, env.world_size)
    plans = [micro_batches(share, lengths, max_tokens) for share in shares]
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
    """Run (or continue) the whole training; metrics every step, checkpoints as configured.

    ``on_step`` receives each step's metrics record on rank 0 (e.g. an experiment tracker).
    """
    samples, lengths = data.samples, data.lengths
    per_epoch, total_steps = plan_steps(len(samples), cfg)
    optimizer = make_optimizer(model, hooks, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
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
    checkpoints: list[Path] = []
    bar = tqdm(total=total_steps, initial=state.global_step, desc=f"{hooks.name} training", unit="step",
               disable=not (cfg.progress and env.is_main), dynamic_ncols=True)
    start = time.perf_counter() - state.elapsed_s
    preempted = False
    model.train()
    try:
        with _Preemption() as stop:
            for epoch in range(state.epoch, cfg.num_epochs):
                steps = epoch_steps(len(samples), cfg.effective_batch_size, seed=cfg.seed, epoch=epoch)
                for s in range(state.step_in_epoch, len(steps)):
                    if state.global_step >= total_steps:
                        break
                    t0 = time.perf_counter()
                    loss_sum, n_loss, n_tokens = train_step(model, samples, steps[s], lengths,
                                                            cfg.max_tokens_per_gpu, device, env)
                    hooks.after_backward(model)
                    grad_norm = _grad_norm(params, cfg.max_grad_norm)
                    lr = scheduler.get_last_lr()[0]
                    optimizer.step()
                    hooks.after_optimizer_step(model, optimizer)
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
                    if metrics:
                        record = {
                            "step": state.global_step, "epoch": epoch + 1, "loss": loss, "lr": lr,
                            "grad_norm": grad_norm, "num_samples": len(steps[s]), "num_loss_tokens": n_loss,
                            "num_tokens": n_tokens, "tokens_per_second": n_tokens / dt,
                            "elapsed_s": state.elapsed_s, "peak_memory_gb": peak_memory_gb(device),
                        }
                        if cfg.log_sample_ids:
                            record["sample_ids"] = sorted(steps[s])
                        metrics.write(record)
                        if on_step is not None:
                            on_step(record)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tokens / dt:,.0f}", epoch=epoch + 1)
                    bar.update(1)

                    epoch_done = state.step_in_epoch == len(steps)
                    if epoch_done:
                        state.epoch, state.step_in_epoch = epoch + 1, 0
                        if cfg.checkpoint_at_epoch:
                            checkpoints.append(save_hf(model, tokenizer, hooks, hf_root, epoch_name(epoch + 1), env))
                    every = cfg.checkpoint_interval and state.global_step % cfg.checkpoint_interval == 0
                    preempted = stop.agreed(env, device)
                    if every or preempted or (epoch_done and cfg.accelerate_full_state_at_epoch):
                        save_full_state(output_dir, model, optimizer, scheduler, hooks, state, env,
                                        keep_last=cfg.keep_last_checkpoints)
                    if preempted:
                        break
                if preempted or state.global_step >= total_steps:
                    break
            if cfg.save_final_checkpoint and not preempted:
                checkpoints.append(save_hf(model, tokenizer, hooks, hf_root, FINAL, env))
    finally:
        bar.close()
        if metrics:
            metrics.close()
    nan = float("nan")
    return TrainSummary(
        steps=state.global_step, epochs_completed=state.epoch, first_loss=state.first_loss or nan,
        final_loss=state.last_loss if state.last_loss is not None else nan, samples_seen=state.samples_seen,
        tokens_seen=state.tokens_seen, elapsed_s=time.perf_counter() - start, checkpoints=checkpoints,
        preempted=preempted, resumed_from=resume)
