"""Token-summed cross-entropy: each step's loss is normalised by the step's loss-token count by the caller."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hone.data.tokenize import IGNORE


def summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of token cross-entropies over positions whose target is not IGNORE (computed in float32)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def forward_loss_sum(model: torch.nn.Module, batch) -> torch.Tensor:
    """Forward a packed batch and return its summed token loss."""
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    return summed_cross_entropy(logits, batch.targets)
