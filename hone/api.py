"""The Python API, with Training Hub's parameter names."""
from __future__ import annotations

import os
from typing import Any

from hone.config import RunConfig
from hone.training.run import TrainResult


def run(cfg: RunConfig) -> TrainResult:
    """Run a resolved configuration: its algorithm's hooks, and MLflow tracking when ``mlflow_*`` is set."""
    from hone.algorithms import hooks_for
    from hone.training.run import run_training

    tracker = None
    t = cfg.train
    on_rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 tracks
    if on_rank0 and (t.mlflow_tracking_uri or t.mlflow_experiment_name or t.mlflow_run_name):
        from hone.registry.tracking import MLflowTracker  # mlflow is imported only when tracking is asked for

        tracker = MLflowTracker.from_config(t)
    return run_training(cfg, hooks_for(cfg), tracker)


def train(algorithm: str, params: dict[str, Any], source: str = "keyword arguments") -> TrainResult:
    """Resolve flat parameters for ``algorithm`` and run it."""
    return run(RunConfig.from_flat(algorithm, params, source))


def sft(model_path: str, data_path: str, ckpt_output_dir: str, **kwargs: Any) -> TrainResult:
    """Supervised fine-tuning (all parameters) of ``model_path`` on the chat data at ``data_path``.

    Keyword arguments use Training Hub's names (``num_epochs``, ``effective_batch_size``, ``learning_rate``,
    ``max_seq_len``, ``max_tokens_per_gpu``, ``warmup_steps``, ``lr_scheduler``, ``seed``, ``beta1``, ``beta2``,
    ``eps``, ``weight_decay``, ``checkpoint_at_epoch``, ``save_final_checkpoint``, ``unmask_messages``,
    ``use_processed_dataset``, ``is_pretraining``, ``block_size``, ``document_column_name``,
    ``data_output_dir``, ...; ``hone train sft --help`` lists all). An unknown name is an error.
    """
    return train("sft", {"model_path": model_path, "data_path": data_path, "ckpt_output_dir": ckpt_output_dir,
                         **kwargs})


def osft(model_path: str, data_path: str, ckpt_output_dir: str, *, unfreeze_rank_ratio: float,
         **kwargs: Any) -> TrainResult:
    """Orthogonal Subspace Fine-Tuning: learn new tasks while the top singular directions of every target
    matrix stay frozen. ``unfreeze_rank_ratio`` in [0, 1] is the trainable fraction (1 = plain SFT).

    Takes everything :func:`sft` takes, plus ``target_patterns``, ``rank_policy`` and ``osft_svd_cache_dir``.
    """
    return train("osft", {"model_path": model_path, "data_path": data_path, "ckpt_output_dir": ckpt_output_dir,
                          "unfreeze_rank_ratio": unfreeze_rank_ratio, **kwargs})


def lora_sft(model_path: str, data_path: str, ckpt_output_dir: str, **kwargs: Any) -> TrainResult:
    """LoRA (or QLoRA with ``load_in_4bit``) supervised fine-tuning through peft, with assistant-only loss.

    Takes everything :func:`sft` takes, plus ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``,
    ``use_rslora``, ``use_dora``, ``init_lora_weights``, ``load_in_4bit``, ``load_in_8bit``,
    ``bnb_4bit_quant_type``, ``bnb_4bit_compute_dtype``, ``bnb_4bit_use_double_quant`` and ``save_merged``.
    ``learning_rate`` defaults to 2e-4. Writes the adapter to ``hf_format/final_adapter/`` and the merged model
    to ``hf_format/final/``.
    """
    return train("lora", {"model_path": model_path, "data_path": data_path, "ckpt_output_dir": ckpt_output_dir,
                          **kwargs})
