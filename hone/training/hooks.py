"""The algorithm hook interface of the one training loop.

An algorithm (SFT, OSFT, LoRA) prepares the model and plugs into a few points of the loop; the loop itself
(batching, loss, accumulation, clipping, scheduling, metrics, checkpoints) is never copied.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class AlgorithmHooks:
    """Defaults are plain full fine-tuning; subclasses override what their algorithm changes."""

    name = "sft"

    @classmethod
    def from_config(cls, cfg: Any) -> "AlgorithmHooks":
        """Build the hooks from a resolved :class:`hone.config.RunConfig` (its own section is ``cfg.method``)."""
        return cls()

    def validate(self) -> None:
        """Check the environment before anything is loaded (e.g. CUDA for 4-bit); raise HoneError."""

    def load_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for ``from_pretrained`` (e.g. a quantization config)."""
        return {}

    def prepare_model(self, model: torch.nn.Module, *, data=None, device: torch.device | None = None
                      ) -> torch.nn.Module:
        """Called once after loading (freeze, wrap, decompose...). Returns the model to train.

        ``data`` (a :class:`hone.data.prepare.PreparedData`) is there for algorithms that measure the model
        on a few batches first.
        """
        return model

    def parameter_groups(self, model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: decay on matrices, none on biases and norms."""
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        return [g for g in ({"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}) if g["params"]]

    def after_backward(self, model: torch.nn.Module) -> None:
        """Gradients of the whole step are accumulated; called before clipping."""

    def after_optimizer_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Parameters were just updated."""

    def state_dict(self) -> dict[str, Any]:
        """Algorithm state saved with full checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def export_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain Hugging Face model to save (e.g. with adapters merged)."""
        return model

    def save(self, model: torch.nn.Module, tokenizer, hf_root: Path, name: str,
             state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the checkpoint ``hf_root/name`` in Hugging Face format (atomically), on rank 0.

        ``state_dict`` is the whole model gathered from every rank when training is sharded (the local
        ``model`` then holds only a shard); None in single-process runs.
        """
        from hone.models.save import save_hf_dir

        return save_hf_dir(self.export_model(model), tokenizer, hf_root / name, state_dict=state_dict)

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        """Figures for the run report (trainable / total parameters)."""
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"trainable_parameters": trainable, "total_parameters": total}
