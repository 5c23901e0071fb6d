"""Training algorithms: each supplies :class:`hone.training.hooks.AlgorithmHooks` for the one trainer."""
from __future__ import annotations

from hone.config import RunConfig
from hone.training.hooks import AlgorithmHooks


def hooks_for(cfg: RunConfig) -> AlgorithmHooks:
    """The hooks implementing ``cfg.algorithm``."""
    if cfg.algorithm == "sft":
        from hone.algorithms.sft import SFTHooks

        return SFTHooks()
    if cfg.algorithm == "osft":
        from hone.algorithms.osft import OSFTHooks

        return OSFTHooks(cfg.osft, seed=cfg.train.seed)
    if cfg.algorithm == "lora":
        from hone.algorithms.lora import LoRAHooks

        return LoRAHooks(cfg.lora)
    raise NotImplementedError(cfg.algorithm)  # config.ALGORITHMS already rejected unknown names
