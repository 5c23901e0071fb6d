"""The training loop: one loop for every algorithm, read top to bottom.

Each optimizer step takes ``effective_batch_size`` samples, split into padding-free micro-batches of at most
``max_tokens_per_gpu`` tokens. Every micro-batch contributes ``sum(token CE) / step_loss_tokens`` to the
gradient, so the step's loss and update do not depend on how the step was split.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hone.config import TrainConfig
from hone.data.batching import count_loss_tokens, epoch_steps, micro_batches, pack
from hone.data.prepare import PreparedData
from hone.training.hooks import AlgorithmHooks
from hone.training.loss import forward_loss_sum
from hone.training.metrics import MetricsWriter, peak_memory_gb


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


def make_optimizer(model, hooks: AlgorithmHooks, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
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


def train_step(model, samples, indices: list[int], lengths: list[int], max_tokens: int,
               device: torch.device) -> tuple[torch.Tensor, int, int]:
    """Forward and backward one optimizer step's samples. Returns (loss sum tensor, loss tokens, tokens)."""
    step_samples = [samples[i] for i in indices]
    n_loss = count_loss_tokens(step_samples)
    loss_sum = torch.zeros((), device=device)
    for mb in micro_batches(indices, lengths, max_tokens):
        batch = pack([samples[i] for i in mb]).to(device)
        mb_sum = forward_loss_sum(model, batch)
        (mb_sum / n_loss).backward()
        loss_sum += mb_sum.detach()
    return loss_sum, n_loss, sum(lengths[i] for i in indices)


def train(model, tokenizer, data: PreparedData, cfg: TrainConfig, hooks: AlgorithmHooks, output_dir: Path,
          device: torch.device) -> TrainSummary:
    """Run the whole training; writes metrics every step and Hugging Face checkpoints per epoch / at the end."""
    samples, lengths = data.samples, data.lengths
    per_epoch, total_steps = plan_steps(len(samples), cfg)
    optimizer = make_optimizer(model, hooks, cfg, device)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    metrics = MetricsWriter(output_dir / "training_metrics.jsonl")
    hf_root = output_dir / "hf_format"
    checkpoints: list[Path] = []
    bar = tqdm(total=total_steps, desc=f"{hooks.name} training", unit="step", disable=not cfg.progress,
               dynamic_ncols=True)
    step = samples_seen = tokens_seen = 0
    first_loss = final_loss = float("nan")
    start = time.perf_counter()
    model.train()
    try:
        for epoch in range(cfg.num_epochs):
            for indices in epoch_steps(len(samples), cfg.effective_batch_size, seed=cfg.seed, epoch=epoch):
                if step >= total_steps:
                    break
                t0 = time.perf_counter()
                loss_sum, n_loss, n_tokens = train_step(model, samples, indices, lengths, cfg.max_tokens_per_gpu,
                                                        device)
                hooks.after_backward(model)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                hooks.after_optimizer_step(model, optimizer)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss = (loss_sum / n_loss).item()  # the step's one host-device sync
                step += 1
                samples_seen += len(indices)
                tokens_seen += n_tokens
                dt = time.perf_counter() - t0
                first_loss = loss if step == 1 else first_loss
                final_loss = loss
                metrics.write({
                    "step": step, "epoch": epoch + 1, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                    "num_samples": len(indices), "num_loss_tokens": n_loss, "num_tokens": n_tokens,
                    "tokens_per_second": n_tokens / dt, "elapsed_s": time.perf_counter() - start,
                    "peak_memory_gb": peak_memory_gb(device),
                })
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tokens / dt:,.0f}", epoch=epoch + 1)
                bar.update(1)
            else:
                if cfg.checkpoint_at_epoch:
                    checkpoints.append(hooks.save(model, tokenizer, hf_root, f"epoch_{epoch + 1}"))
                continue
            break  # max_steps reached inside the epoch
        if cfg.save_final_checkpoint:
            checkpoints.append(hooks.save(model, tokenizer, hf_root, "final"))
    finally:
        bar.close()
        metrics.close()
    epochs_done = min(cfg.num_epochs, step // per_epoch) if per_epoch else 0
    return TrainSummary(step, epochs_done, first_loss, final_loss, samples_seen, tokens_seen,
                        time.perf_counter() - start, checkpoints)
