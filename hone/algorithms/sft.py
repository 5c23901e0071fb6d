"""SFT: full fine-tuning of every parameter; the trainer's default hooks are exactly that."""
from __future__ import annotations

from hone.training.hooks import AlgorithmHooks


class SFTHooks(AlgorithmHooks):
    name = "sft"
