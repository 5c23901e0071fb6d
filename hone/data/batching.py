"""Padding-free batching: samples per optimizer step, micro-batches under a token budget, packed rows."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from hone.data.tokenize import IGNORE, Tokenized


def epoch_steps(num_samples: int, effective_batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Shuffle sample indices (seeded per epoch) and cut them into optimizer steps; the last step may be short."""
    order = list(range(num_samples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i:i + effective_batch_size] for i in range(0, num_samples, effective_batch_size)]


def micro_batches(indices: list[int], lengths: list[int], max_tokens: int,
                  max_samples: int | None = None) -> list[list[int]]:
    """Split one step's samples into as few micro-batches of at most ``max_tokens`` tokens (and at most
    ``max_samples`` samples, when given) as first-fit decreasing finds (the loss is normalised per step, so how
    a step is split does not change the update)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: -lengths[i]):
        n = lengths[i]
        if n > max_tokens:
            raise ValueError(f"sample of {n} tokens exceeds max_tokens_per_gpu={max_tokens}")
        for b, free in enumerate(room):
            if n <= free and (max_samples is None or len(bins[b]) < max_samples):
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_tokens - n)
    return bins


@dataclass
class PackedBatch:
    """One row of concatenated samples. ``targets[t]`` is the label of token t+1 within the same sample."""

    input_ids: torch.Tensor      # [1, T]
    position_ids: torch.Tensor   # [1, T], restarting at 0 for each sample
    targets: torch.Tensor        # [1, T], IGNORE where no loss (incl. each sample's last position)
    num_samples: int

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device, non_blocking=True),
                           self.position_ids.to(device, non_blocking=True),
                           self.targets.to(device, non_blocking=True), self.num_samples)


def pack(samples: list[Tokenized]) -> PackedBatch:
    """Concatenate samples into one row; the next-token shift is done per sample so no target crosses
    a sample boundary."""
    ids, pos, tgt = [], [], []
    for s in samples:
        n = len(s.input_ids)
        ids += s.input_ids
        pos += range(n)
        tgt += s.labels[1:] + [IGNORE]
    as_row = lambda x: torch.tensor(x, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return PackedBatch(as_row(ids), as_row(pos), as_row(tgt), len(samples))


def count_loss_tokens(samples: list[Tokenized]) -> int:
    """Loss-counted targets after the shift (a sample's first token is never a target)."""
    return sum(s.num_loss_tokens for s in samples)
