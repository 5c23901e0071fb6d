"""Configuration schemas, one per concern.

The Python keyword arguments, the YAML config file and the CLI flags are all *flat* (Training Hub's
parameter names, e.g. ``learning_rate``, ``max_seq_len``); :meth:`RunConfig.from_flat` routes each name
to the section that owns it, so all three skins resolve to the same object.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hone.errors import HoneError, embedded, suggest
from hone.secrets import MODEL_REGISTRY_TOKEN_ENV


class HoneModel(BaseModel):
    """A pydantic model whose validators' :class:`HoneError` reaches the caller as it was raised."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            inner = embedded(err)
            if inner is not None:
                raise inner from None
            raise


class Section(HoneModel):
    """A group of parameters. Unknown names are rejected by :meth:`RunConfig.from_flat`."""

    # allow_inf_nan=False: every float parameter must be finite (learning_rate: .inf is an error, not a run)
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)
    # Parameters needed to run but not part of the run's identity (not compared when reusing an output dir).
    volatile: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: Any) -> Any:
        """A boolean where a number is expected is a mistake (pydantic would take true as 1)."""
        if isinstance(v, bool) and info.field_name in cls.model_fields:
            kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
            if kinds & {int, float} and bool not in kinds and Any not in kinds:
                raise ValueError(f"a boolean ({str(v).lower()}) is not a number: give a number")
        return v


class DataConfig(Section):
    """Where the training data is and how it becomes tokens."""

    volatile: ClassVar[frozenset[str]] = frozenset(
        {"max_errors", "s3_endpoint_url", "s3_region", "pvc_root", "data_num_workers"})

    data_path: str = Field(description="Training data: a local file or directory, file://, pvc://path, "
                                       "s3://bucket/key, https://..., or a hub dataset (hf://org/name[:config]"
                                       "[@revision]); JSONL, JSON, Parquet, CSV or a save_to_disk directory.")
    data_format: Literal["auto", "messages", "conversations", "alpaca", "prompt_completion", "text", "processed"] = \
        Field("auto", description="Row layout; auto detects it (messages, ShareGPT conversations, Alpaca, "
                                  "prompt/completion, plain text, processed input_ids/labels).")
    column_names: dict[str, str] = Field(default_factory=dict, description="Columns holding the format's fields "
                                         "under other names, {field: column}: e.g. {\"instruction\": \"question\", "
                                         "\"output\": \"answer\"} (alpaca); needs an explicit data_format.")
    split: str | None = Field(None, description="Split of a hub or save_to_disk dataset (default: train, train_sft, "
                                                "train_gen, training, else the first).")
    subset: int = Field(0, ge=0, description="Use a seeded random sample of this many rows (0 = every row).")
    train_split_ratio: float = Field(1.0, gt=0, description="Fraction of the rows used for training; the rest is the "
                                                            "eval split (>= 1.0: every row trains).")
    max_errors: int = Field(20, gt=0, description="Invalid rows listed in full (all are counted).")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint for s3:// data (MinIO, ODF); "
                                                          "default $AWS_ENDPOINT_URL.")
    s3_region: str | None = Field(None, description="S3 region; default $AWS_REGION or $AWS_DEFAULT_REGION.")
    pvc_root: str | None = Field(None, description="Mount root of pvc:// paths; default $HONE_PVC_ROOT or /workspace.")
    data_num_workers: int | None = Field(None, gt=0, description="Processes that tokenize the data (default: every "
                                                                 "core, for large datasets).")
    max_seq_len: int = Field(8192, gt=0, description="Longest sample in tokens; longer samples are dropped, never truncated.")
    unmask_messages: bool = Field(False, description="Train on every role except system (not only assistant turns).")
    use_processed_dataset: bool = Field(False, description="Rows already hold input_ids and labels.")
    is_pretraining: bool = Field(False, description="Rows are raw documents: tokenize, join with EOS, cut into blocks.")
    block_size: int | None = Field(None, gt=0, description="Tokens per block; required when is_pretraining.")
    document_column_name: str = Field("document", description="Column holding the text when is_pretraining.")
    data_output_dir: str | None = Field(None, description="Where processed data is written (default <ckpt_output_dir>/data).")

    @field_validator("column_names", mode="before")
    @classmethod
    def _column_text(cls, v: Any) -> Any:  # the CLI passes a mapping as text
        return {} if v is None else _json_mapping(v)

    @field_validator("data_output_dir")
    @classmethod
    def _output_dir(cls, v: str | None, info: Any) -> str | None:
        return _writable_dir(v, info.field_name)

    @model_validator(mode="after")
    def _format_flags_agree(self) -> "DataConfig":
        if self.column_names and self.data_format == "auto":
            raise HoneError("column_names needs an explicit data_format (the format is detected from the standard "
                            "field names)", where="parameters column_names and data_format",
                            fix="set data_format, e.g. alpaca or messages")
        if self.is_pretraining and self.block_size is None:  # Training Hub raises here too
            raise HoneError("is_pretraining=True needs block_size", where="parameters is_pretraining and block_size",
                            fix="pass block_size (tokens per document block, e.g. 2048)")
        for flag, fmt in (("use_processed_dataset", "processed"), ("is_pretraining", "text")):
            if getattr(self, flag) and self.data_format not in ("auto", fmt):
                raise HoneError(f"data_format={self.data_format!r} contradicts {flag}=True (which reads {fmt!r} rows)",
                                where=f"parameters data_format and {flag}", fix=f"drop data_format, or set it to {fmt}")
        return self


class TrainConfig(Section):
    """The model, the optimisation and the outputs."""

    # Not part of the run's identity; the MLflow URI may hold credentials, so it never reaches saved params.
    volatile: ClassVar[frozenset[str]] = frozenset({"overwrite", "progress", "resume_from", "log_sample_ids",
                                                    "mlflow_tracking_uri", "mlflow_experiment_name",
                                                    "mlflow_run_name", "wandb_project", "wandb_entity",
                                                    "wandb_run_name", "tensorboard_log_dir", "callbacks", "backend"})
    # live Python objects: passed to the run, never written to JSON (training_params.json, torchrun's config)
    runtime_only: ClassVar[frozenset[str]] = frozenset({"callbacks"})
    # Python API only (no CLI flag): live objects, and Training Hub's backend names
    python_only: ClassVar[frozenset[str]] = frozenset({"callbacks", "backend"})

    model_path: str = Field(description="Base model: a local Hugging Face directory or a hub id.")
    ckpt_output_dir: str = Field(description="Output directory for checkpoints, metrics and charts.")
    num_epochs: int = Field(1, gt=0, description="Passes over the training data.")
    effective_batch_size: int = Field(128, gt=0, description="Samples per optimizer step.")
    learning_rate: float = Field(5e-6, gt=0, description="Peak learning rate.")
    max_tokens_per_gpu: int = Field(10000, gt=0, description="Token budget of one micro-batch (padding-free).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    lr_scheduler: str = Field("cosine", description="Learning-rate schedule after warm-up: any transformers "
                                                    "scheduler (cosine, linear, constant, constant_with_warmup, "
                                                    "cosine_with_restarts, polynomial, inverse_sqrt, "
                                                    "reduce_lr_on_plateau, cosine_with_min_lr, warmup_stable_decay).")
    lr_scheduler_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra arguments of the "
                                                "scheduler (transformers' scheduler_specific_kwargs, e.g. "
                                                "{\"num_cycles\": 2} or {\"min_lr_rate\": 0.1}).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (default: all epochs).")
    seed: int = Field(42, description="Random seed (shuffling, initialisation of new weights).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables clipping).")
    checkpoint_at_epoch: bool = Field(True, description="Save a Hugging Face checkpoint after each epoch: "
                                      "hf_format/samples_<N>/ (N = samples seen), also reachable as epoch_<n>/.")
    save_final_checkpoint: bool = Field(True, description="Save the model at the end: hf_format/samples_<N>/, "
                                        "also reachable as hf_format/final/.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Parameter dtype: auto = float32 on CPU, bfloat16 on GPU.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    trust_remote_code: bool = Field(False, description="Allow model code from the model repository (off unless asked).")
    checkpoint_every_steps: int | None = Field(
        None, gt=0, description="Write a full-state (resumable) checkpoint every N optimizer steps.")
    save_samples: int = Field(0, ge=0, description="Save a Hugging Face checkpoint hf_format/samples_<N>/ each time "
                                                  "another N training samples have been seen (0 = off).")
    use_liger: bool = Field(False, description="Liger kernels (RMSNorm, SwiGLU, RoPE) when liger-kernel and CUDA are "
                                               "there; hone's own fused, chunked LM-head loss is used either way.")
    accelerate_full_state_at_epoch: bool = Field(
        False, description="Write a full-state (resumable) checkpoint at the end of every epoch.")
    keep_last_checkpoints: int = Field(2, gt=0, description="Full-state checkpoints kept on disk (oldest removed).")
    resume_from: str | None = Field(
        None, description="Resume from a full-state checkpoint directory, or 'auto' for the latest complete one.")
    log_sample_ids: bool = Field(False, description="Record each step's sample indices in training_metrics.jsonl.")
    mlflow_tracking_uri: str | None = Field(
        None, description="Log the run to MLflow as it trains (sqlite:///..., http://...); with only an experiment "
                          "or run name: the embedded store under $HONE_HOME.")
    mlflow_experiment_name: str | None = Field(None, description="MLflow experiment of the run (default hone).")
    mlflow_run_name: str | None = Field(None, description="MLflow run name.")
    wandb_project: str | None = Field(None, description="Weights & Biases project: log the run there (wandb "
                                                        "installed; WANDB_MODE=offline writes it locally).")
    wandb_entity: str | None = Field(None, description="Weights & Biases team or user.")
    wandb_run_name: str | None = Field(None, description="Weights & Biases run name.")
    tensorboard_log_dir: str | None = Field(None, description="Write TensorBoard event files (loss, learning rate, "
                                                              "grad norm, throughput) to this directory.")
    callbacks: list[Any] | None = Field(None, description="TrainingHubCallback objects (one or a list) called at each "
                                                          "point of the run (Python API only).")
    backend: str | None = Field(None, description="Training Hub's backend name for this algorithm; accepted for "
                                                  "compatibility: hone always trains with its own engine.")
    validation_split: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of the training rows held out to "
                                    "measure validation loss (0 = none).")
    validation_data_path: str | None = Field(None, description="Validation data read like data_path (same "
                                             "format and settings) whose loss is measured; instead of "
                                             "validation_split.")
    validation_frequency: int | None = Field(None, gt=0, description="Measure validation loss every N optimizer "
                                             "steps (required with validation data).")
    save_best_val_loss: bool = Field(False, description="Save a checkpoint hf_format/samples_<N>_best_val_loss/ at "
                                                        "each new lowest validation loss.")
    val_loss_improvement_threshold: float = Field(0.0, ge=0.0, description="A validation loss counts as better "
                                                  "only when it drops by more than this.")
    keep_last_checkpoint_only: bool = Field(False, description="Write every Hugging Face checkpoint to "
                                                               "hf_format/last_epoch/ (replacing the previous one).")
    max_batch_len: int | None = Field(None, gt=0, description="instructlab-training's name for max_tokens_per_gpu.")
    micro_batch_max_samples: int | None = Field(None, gt=0, description="At most this many samples per micro-batch "
                                                "(default: as many as max_tokens_per_gpu holds).")
    validation_micro_batch_max_samples: int | None = Field(None, gt=0, description="The same cap for validation "
                                                           "micro-batches.")
    logging_steps: int = Field(1, gt=0, description="Write a metrics record every N optimizer steps (loss averaged "
                                                    "over them; the last step is always written).")
    overwrite: bool = Field(False, description="Replace an output directory that holds a different run.")
    progress: bool = Field(True, description="Show a progress bar.")

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < 2**64:  # torch.manual_seed takes at most 64 bits
            raise ValueError("the seed must be between 0 and 2**64-1 (18446744073709551615)")
        return v

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        return _device_name(v)

    @field_validator("ckpt_output_dir", "tensorboard_log_dir")
    @classmethod
    def _output_dir(cls, v: str | None, info: Any) -> str | None:
        return _writable_dir(v, info.field_name)

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _mlflow_store(cls, v: str | None, info: Any) -> str | None:
        return _tracking_store(v, info.field_name)

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler_name(cls, v: str) -> str:
        from transformers.trainer_utils import SchedulerType  # the names get_scheduler accepts

        names = [t.value for t in SchedulerType]
        if v not in names:
            hint = suggest(v, names)
            raise HoneError(f"unknown lr_scheduler {v!r}" + (f": {hint}" if hint else ""), where="lr_scheduler",
                            fix=f"use one of {', '.join(names)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _max_batch_len(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_batch_len") is not None:
            given = data.get("max_tokens_per_gpu")
            if given is not None and given != data["max_batch_len"]:
                raise HoneError(f"max_batch_len ({data['max_batch_len']}) and max_tokens_per_gpu ({given}) disagree: "
                                "they are the same setting", where="parameters max_batch_len and max_tokens_per_gpu",
                                fix="give one of them")
            data = {**data, "max_tokens_per_gpu": data["max_batch_len"], "max_batch_len": None}
        return data

    @field_validator("lr_scheduler_kwargs", mode="before")
    @classmethod
    def _no_kwargs(cls, v: Any) -> Any:
        return {} if v is None else v  # Training Hub: None means no extra arguments

    @field_validator("callbacks", mode="before")
    @classmethod
    def _one_callback(cls, v: Any) -> Any:
        return [v] if v is not None and not isinstance(v, (list, tuple)) else v


class DistributedConfig(Section):
    """How many processes, where they meet, and how the model is sharded (torchrun + FSDP2).

    Launch values not given are read from the ``PET_*`` variables Kubeflow Trainer sets, then defaulted.
    """

    volatile: ClassVar[frozenset[str]] = frozenset(
        {"nproc_per_node", "nnodes", "node_rank", "rdzv_id", "rdzv_endpoint", "master_addr", "master_port"})

    nproc_per_node: int | Literal["auto", "gpu"] | None = Field(
        None, description="Processes per node: an int, auto (GPUs, else 1) or gpu (every GPU). Default: "
                          "$PET_NPROC_PER_NODE or 1.")
    nnodes: int | None = Field(None, gt=0, description="Number of nodes (default $PET_NNODES or 1).")
    node_rank: int | None = Field(None, ge=0, description="This node's rank (default $PET_NODE_RANK or 0).")
    rdzv_id: str | int | None = Field(None, description="Rendezvous id shared by all nodes (c10d rendezvous).")
    rdzv_endpoint: str | None = Field(None, description="host:port of the c10d rendezvous (not with master_addr).")
    master_addr: str | None = Field(None, description="Address of rank 0 (static rendezvous; not with rdzv_endpoint).")
    master_port: int | None = Field(None, gt=0, lt=65536, description="Port of rank 0 (default 29500).")
    fsdp_sharding_strategy: Literal["FULL_SHARD", "HYBRID_SHARD", "SHARD_GRAD_OP", "NO_SHARD"] = Field(
        "FULL_SHARD", description="FSDP2 sharding when more than one process runs (NO_SHARD = DDP).")
    activation_checkpointing: bool = Field(False, description="Recompute each block's activations in backward.")
    fsdp_options: dict[str, Any] | None = Field(None, description="Training Hub's FSDP options: sharding_strategy "
                                                "(as fsdp_sharding_strategy), cpu_offload_params (offload parameters "
                                                "and optimizer state to CPU).")

    @field_validator("fsdp_options", mode="before")
    @classmethod
    def _fsdp_options_object(cls, v: Any) -> Any:
        """instructlab-training's ``FSDPOptions`` (a pydantic model, its enums) as a plain mapping."""
        if v is not None and not isinstance(v, dict) and hasattr(v, "model_dump"):
            v = v.model_dump()
        if isinstance(v, dict):
            v = {k: getattr(x, "value", x) if not isinstance(x, (str, bool, int, float)) else x for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _one_rendezvous(self) -> "DistributedConfig":
        if self.rdzv_endpoint and (self.master_addr or self.master_port):
            raise HoneError("master_addr/master_port and rdzv_endpoint are mutually exclusive",
                            where="parameters master_addr, master_port, rdzv_endpoint",
                            fix="use master_addr/master_port (static) or rdzv_endpoint (c10d), not both")
        if isinstance(self.nproc_per_node, int) and self.nproc_per_node < 1:
            raise HoneError(f"nproc_per_node must be at least 1 (got {self.nproc_per_node})",
                            where="nproc_per_node", fix="pass a positive int, auto or gpu")
        return self


class OSFTConfig(Section):
    """Orthogonal Subspace Fine-Tuning (Nayak et al. 2025, arXiv:2504.07097)."""

    unfreeze_rank_ratio: float = Field(
        ge=0.0, le=1.0,
        description="Fraction of each target matrix's singular directions that train (0 = all frozen, 1 = SFT).")
    target_patterns: list[str] | None = Field(
        None, description="Regular expressions over parameter names choosing the target matrices "
                          "(default: attention and MLP projections of every block).")
    rank_policy: Literal["uniform", "adaptive"] = Field(
        "uniform", description="uniform: the same ratio everywhere; adaptive: per layer from an importance score.")
    osft_svd_cache_dir: str | None = Field(
        None, description="Directory caching the SVD of the targets, keyed by a hash of the weights.")
    osft: bool = Field(True, description="False: train every parameter (plain SFT through the OSFT entry point, as "
                                         "mini-trainer does).")
    osft_memory_efficient_init: bool = Field(False, description="Accepted for Training Hub scripts; no effect there "
                                             "either (mini-trainer made memory-efficient initialization automatic). "
                                             "hone decomposes one target matrix at a time anyway.")


class LoRAConfig(Section):
    """LoRA / QLoRA adapters through peft, plus Training Hub's lora_sft names for shared settings.

    The Training Hub names default to None ("not given": Training Hub's default applies, as each description
    says); :meth:`onto_shared` turns them into the shared settings (batch, dtype, checkpoints, validation, data
    format) once the whole configuration is known.
    """

    lora_r: int = Field(16, gt=0, description="Adapter rank.")
    lora_alpha: int = Field(32, gt=0, description="Adapter scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt (default: every linear projection inside the transformer blocks).")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    init_lora_weights: bool | str = Field(True, description="peft initialisation (true, false, gaussian, pissa, ...).")
    rank_pattern: dict[str, int] | None = Field(None, description="Adapter rank per module name pattern (peft "
                                                "rank_pattern, e.g. {\"q_proj\": 32}); others use lora_r.")
    alpha_pattern: dict[str, int] | None = Field(None, description="lora_alpha per module name pattern (peft "
                                                 "alpha_pattern).")
    loftq_config: dict[str, Any] | None = Field(None, description="LoftQ initialisation settings; refused: LoftQ "
                                                "rewrites the base weights (see docs/lora.md).")
    load_in_4bit: bool = Field(False, description="QLoRA: load the base in 4 bit (needs CUDA and bitsandbytes).")
    load_in_8bit: bool = Field(False, description="Load the base in 8 bit (needs CUDA and bitsandbytes).")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit quantisation type.")
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Compute dtype of 4-bit layers.")
    bnb_4bit_use_double_quant: bool = Field(True, description="Quantise the quantisation constants too.")
    save_merged: bool = Field(True, description="Also write the merged full model to hf_format/final/.")
    finetune_vision_layers: bool | None = Field(None, description="Vision-language models: adapt the vision "
                                                "encoder's linear layers too (default false; an error on a text model).")
    finetune_language_layers: bool | None = Field(None, description="Adapt the language model's layers (default "
                                                  "true).")
    enable_model_splitting: bool | None = Field(None, description="Spread the model over every GPU of this "
                                                "machine (device_map=balanced) in one process; needs 2+ GPUs.")
    flash_attention: bool | None = Field(None, description="True: FlashAttention-2 kernels (CUDA and the "
                                         "flash-attn package; else hone's per-sample SDPA, with a warning).")
    tf32: bool | None = Field(None, description="TensorFloat-32 matmuls on CUDA (torch.backends.*.allow_tf32); "
                              "default: PyTorch's setting. True needs a CUDA device.")
    # Training Hub's names for shared settings (see onto_shared)
    micro_batch_size: int | None = Field(None, gt=0, description="Samples per GPU per forward pass (default 2): "
                                         "effective_batch_size = micro_batch_size x gradient_accumulation_steps "
                                         "x processes when effective_batch_size is not given.")
    gradient_accumulation_steps: int | None = Field(None, gt=0, description="Forward passes per optimizer step "
                                                    "(default 1), in effective_batch_size as above.")
    bf16: bool | None = Field(None, description="True: dtype=bfloat16; False (without fp16): float32. Default: "
                              "dtype (auto = bfloat16 on GPU).")
    fp16: bool | None = Field(None, description="True: dtype=float16 (not with bf16=True).")
    sample_packing: bool | None = Field(None, description="Pack several samples per micro-batch (default true; "
                                        "hone packs padding-free without cross-sample attention).")
    save_steps: int | None = Field(None, gt=0, description="Resumable checkpoint every N optimizer steps "
                                   "(default 500), as the trainer's checkpoint-<step>: checkpoint_every_steps.")
    save_total_limit: int | None = Field(None, gt=0, description="Full-state checkpoints kept (default 3): "
                                         "keep_last_checkpoints.")
    save_model: bool | None = Field(None, description="Save the final model (default true): save_final_checkpoint.")
    eval_data_path: str | None = Field(None, description="Validation data read like data_path (same format): "
                                       "validation_data_path.")
    eval_steps: int | None = Field(None, gt=0, description="Validation loss every N optimizer steps (default 500 "
                                   "with eval_data_path): validation_frequency.")
    per_device_eval_batch_size: int | None = Field(None, gt=0, description="Samples per GPU per validation "
                                                   "forward pass.")
    dataset_type: Literal["chat_template", "alpaca", "passthrough"] | None = Field(
        None, description="Training Hub's row layout: chat_template (messages), alpaca (instruction/input/output) "
                          "or passthrough (detected); default: detected from the rows.")
    field_messages: str | None = Field(None, description="Column holding the messages (chat_template).")
    field_instruction: str | None = Field(None, description="Column holding the instruction (alpaca).")
    field_input: str | None = Field(None, description="Column holding the optional input (alpaca).")
    field_output: str | None = Field(None, description="Column holding the output (alpaca).")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _module_names(cls, v: Any) -> Any:
        """Module names given as one comma-separated text (``q_proj,v_proj``), or a list with such entries."""
        items = [v] if isinstance(v, str) else v
        if isinstance(items, (list, tuple)) and all(isinstance(t, str) for t in items):
            names = [n.strip() for t in items for n in t.split(",") if n.strip()]
            return names or None
        return v

    @field_validator("init_lora_weights", mode="before")
    @classmethod
    def _bool_words(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        return v

    @field_validator("rank_pattern", "alpha_pattern", "loftq_config", mode="before")
    @classmethod
    def _json_text(cls, v: Any) -> Any:  # the CLI passes a mapping as JSON text
        return _json_mapping(v)

    @model_validator(mode="after")
    def _applicable(self) -> "LoRAConfig":
        if self.loftq_config is not None:
            raise HoneError("loftq_config is not supported: LoftQ initialisation replaces the base weights, so the "
                            "saved adapter would not apply to the original base model", where="parameter loftq_config",
                            fix="drop loftq_config; for a quantized base use load_in_4bit (QLoRA)")
        if self.bf16 and self.fp16:
            raise HoneError("bf16=True and fp16=True: one dtype", where="parameters bf16 and fp16",
                            fix="choose bf16 (bfloat16) or fp16 (float16)")
        # a column name left at Training Hub's default is harmless where it does not apply (its own examples
        # pass all four); a custom one that cannot apply is a mistake worth naming
        alpaca = [f"field_{n}" for n in ("instruction", "input", "output") if getattr(self, f"field_{n}") not in (None, n)]
        messages = ["field_messages"] * (self.field_messages not in (None, "messages"))
        wrong = {"chat_template": alpaca, "alpaca": messages, "passthrough": alpaca + messages,
                 None: alpaca if self.field_messages is not None else []}[self.dataset_type]
        if wrong:
            kind = self.dataset_type or "field_messages (chat_template)"
            raise HoneError(f"{', '.join(wrong)} do(es) not apply to {kind} rows", where="parameters dataset_type "
                            "and field_*", fix="field_messages goes with chat_template, field_instruction/input/output "
                            "with alpaca; passthrough rows are read as they are")
        return self

    def onto_shared(self, cfg: "RunConfig") -> None:
        """Set the shared settings that Training Hub's lora_sft names stand for (in ``cfg``, in place).

        A setting given under both names must agree. Training Hub's defaults apply where neither is given.
        """
        t, d = cfg.train, cfg.data
        train: dict[str, Any] = {}
        data: dict[str, Any] = {}

        def put(updates: dict, section: Section, name: str, value: Any, th: str) -> None:
            if name in section.model_fields_set and getattr(section, name) != value:
                raise HoneError(f"{th} means {name}={value!r}, but {name}={getattr(section, name)!r} was given",
                                where=f"parameters {th.split('=')[0]} and {name}", fix="give one of them")
            updates[name] = value

        world = launch_world_size(cfg.distributed)
        gas = self.gradient_accumulation_steps or 1
        if "effective_batch_size" not in t.model_fields_set:
            train["effective_batch_size"] = (self.micro_batch_size or 2) * gas * world
        # Given effective_batch_size wins and micro_batch_size is derived from it, as in Training Hub (hone
        # splits each step into micro-batches by token budget, so there is nothing else to derive)
        batch = train.get("effective_batch_size", t.effective_batch_size)
        micro = self.micro_batch_size or max(1, batch // (gas * world))  # Training Hub's per-device batch
        if self.sample_packing is False:  # unpacked: the per-device batch is a sample count, as in TRL
            put(train, t, "micro_batch_max_samples", micro, f"sample_packing=False with micro batch {micro}")
        if self.per_device_eval_batch_size is not None:
            put(train, t, "validation_micro_batch_max_samples", self.per_device_eval_batch_size,
                f"per_device_eval_batch_size={self.per_device_eval_batch_size}")
        elif self.sample_packing is False:
            put(train, t, "validation_micro_batch_max_samples", micro, f"sample_packing=False with micro batch {micro}")
        if self.bf16 is not None or self.fp16:
            dtype = "bfloat16" if self.bf16 else "float16" if self.fp16 else "float32"
            put(train, t, "dtype", dtype, f"bf16={self.bf16}, fp16={self.fp16}")
        if self.save_steps is not None or "checkpoint_every_steps" not in t.model_fields_set:
            steps = self.save_steps or 500  # TRL's checkpoint-<step>: weights, optimizer and scheduler
            put(train, t, "checkpoint_every_steps", steps, f"save_steps={steps}")
        if self.save_total_limit is not None or "keep_last_checkpoints" not in t.model_fields_set:
            put(train, t, "keep_last_checkpoints", self.save_total_limit or 3, f"save_total_limit={self.save_total_limit or 3}")
        if self.save_model is not None:
            put(train, t, "save_final_checkpoint", self.save_model, f"save_model={self.save_model}")
        if self.eval_data_path is not None:
            if t.validation_split:
                raise HoneError("eval_data_path and validation_split both choose validation data",
                                where="parameters eval_data_path and validation_split", fix="give one of them")
            put(train, t, "validation_data_path", self.eval_data_path, "eval_data_path")
        validating = bool(self.eval_data_path or t.validation_data_path or t.validation_split)
        if self.eval_steps is not None and not validating:  # Training Hub logs a warning and trains on
            logging.getLogger("hone").warning("eval_steps=%s: no validation data (eval_data_path or "
                                              "validation_split), so no validation loss is measured", self.eval_steps)
        elif self.eval_steps is not None or (self.eval_data_path and "validation_frequency" not in t.model_fields_set):
            put(train, t, "validation_frequency", self.eval_steps or 500, f"eval_steps={self.eval_steps or 500}")
        if self.enable_model_splitting and world > 1:
            raise HoneError(f"enable_model_splitting spreads one model copy over the GPUs of one process, but "
                            f"{world} processes were asked for", where="parameters enable_model_splitting and "
                            "nproc_per_node/nnodes", fix="use one process (nproc_per_node=1) with model splitting, "
                            "or data parallelism (several processes) without it")
        kind = self.dataset_type or ("chat_template" if self.field_messages else
                                     "alpaca" if self.field_instruction or self.field_input or self.field_output else None)
        if kind in ("chat_template", "alpaca"):
            put(data, d, "data_format", "messages" if kind == "chat_template" else "alpaca", f"dataset_type={kind}")
            columns = {n: getattr(self, f"field_{n}") for n in ("messages", "instruction", "input", "output")}
            columns = {n: c for n, c in columns.items() if c is not None and c != n}
            if columns:
                put(data, d, "column_names", columns, "field_*")
        if train:
            cfg.train = TrainConfig(**{**{k: getattr(t, k) for k in t.model_fields_set}, **train})
        if data:
            cfg.data = DataConfig(**{**{k: getattr(d, k) for k in d.model_fields_set}, **data})


def _scalar_kinds(annotation: Any) -> set[Any]:
    """The scalar types an annotation admits (int | None -> {int, NoneType}; Literal values' types)."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        return {type(a) for a in typing.get_args(annotation)}
    return {annotation} if origin is None else {origin}


def _device_name(v: str) -> str:
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(v).strip()):
        hint = suggest(str(v), ["auto", "cpu", "cuda", "mps"])
        raise HoneError(f"unknown device {v!r}" + (f": {hint}" if hint else ""), where="parameter device",
                        fix="use auto, cpu, cuda, cuda:N (N = the GPU index) or mps")
    return str(v).strip()


def _blocking_file(path: Path) -> Path | None:
    """The existing file (not directory) at ``path`` or at one of its parents, if any."""
    for p in (path, *path.parents):
        try:
            if p.exists():
                return None if p.is_dir() else p
        except OSError:
            return None
    return None


def _writable_dir(v: str | None, name: str) -> str | None:
    """An output directory that cannot be created because a file is in the way is refused at once."""
    if not v or "://" in v:
        return v
    path = Path(v).expanduser()
    blocker = _blocking_file(path)
    if blocker is not None:
        what = "is an existing file" if blocker == path else f"lies under {blocker}, which is a file"
        raise HoneError(f"{name} {v!r} {what}: a directory cannot be created there", where=f"parameter {name}",
                        fix=f"give {name} a directory path (new or existing), not a file")
    return v


def _tracking_store(v: str | None, name: str) -> str | None:
    """An MLflow store URI on local disk (sqlite:///path, file:path or a plain path) must be usable."""
    if not v:
        return v
    if v.startswith("sqlite:"):
        rest = v[len("sqlite:"):]
        if not rest.startswith("///") or rest in ("///", "///:memory:"):
            raise HoneError(f"{name} {v!r} is not a SQLite database file URI", where=f"parameter {name}",
                            fix="use sqlite:///relative/path.db or sqlite:////absolute/path.db")
        db = Path(rest[3:].split("?", 1)[0]).expanduser()
        if db.is_dir():
            raise HoneError(f"{name} {v!r} names a directory, not a database file", where=f"parameter {name}",
                            fix="name a .db file, e.g. sqlite:///mlruns/mlflow.db")
        blocker = _blocking_file(db.parent)
        if blocker is not None:
            raise HoneError(f"{name} {v!r}: the database's directory cannot be created because {blocker} is a file",
                            where=f"parameter {name}", fix="put the database under a directory, e.g. "
                            "sqlite:///mlruns/mlflow.db")
        if db.is_file() and db.stat().st_size:
            try:
                with db.open("rb") as fh:
                    head = fh.read(16)
            except OSError as err:
                raise HoneError(f"{name} {v!r}: the database cannot be read ({err.strerror})",
                                where=f"parameter {name}", fix="make it readable, or name another file") from None
            if head != b"SQLite format 3\x00":
                raise HoneError(f"{name} {v!r}: {db} exists and is not a SQLite database", where=f"parameter {name}",
                                fix="name a new .db file (it is created) or an existing MLflow SQLite database")
        return v
    if "://" not in v and not v.startswith("file:") and not v.startswith(("databricks", "uc:")):
        _writable_dir(v, name)  # a plain path is a file store directory
    return v


def launch_world_size(dist: DistributedConfig) -> int:
    """Processes of the run: WORLD_SIZE under torchrun, else nproc_per_node x nnodes as they will resolve."""
    import os

    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    nproc: Any = dist.nproc_per_node or os.environ.get("PET_NPROC_PER_NODE") or 1
    if nproc in ("auto", "gpu"):
        import torch

        nproc = torch.cuda.device_count() or 1
    nnodes = dist.nnodes or os.environ.get("PET_NNODES") or 1
    return (int(nproc) if str(nproc).isdigit() else 1) * (int(nnodes) if str(nnodes).isdigit() else 1)


def _json_mapping(v: Any) -> Any:
    """A mapping given as text (CLI): JSON, or ``key=value,key=value``."""
    if not isinstance(v, str):
        return v
    import json

    text = v.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON: {err}") from None
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError("expected JSON or key=value,key=value")
    return {k.strip(): int(x) if x.strip().lstrip("-").isdigit() else x.strip() for k, x in pairs}


class RunConfig(HoneModel):
    """Everything one training run needs: the shared sections, plus the algorithm's own section (if it has
    one) as the attribute named after the algorithm (``cfg.osft``, ``cfg.lora``)."""

    # extra: the algorithm's section, built and validated by from_flat
    model_config = ConfigDict(extra="allow")

    algorithm: str
    data: DataConfig
    train: TrainConfig
    distributed: DistributedConfig

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        spec = get_algorithm(self.algorithm)
        backend = self.train.backend
        if backend is not None and backend not in spec.backends:
            accepted = ", ".join(spec.backends) or "none"
            raise HoneError(f"unknown backend {backend!r} for {self.algorithm}", where="backend",
                            fix=f"use {accepted} (Training Hub's name; hone trains with its own engine either way), "
                                "or leave backend out")
        if spec.check is not None:
            spec.check(self)
        budget = (self.data.block_size or 0) if self.data.is_pretraining else self.data.max_seq_len
        if self.train.max_tokens_per_gpu < budget:
            name = "block_size" if self.data.is_pretraining else "max_seq_len"
            raise HoneError(
                f"max_tokens_per_gpu ({self.train.max_tokens_per_gpu}) is smaller than {name} ({budget}): "
                "the longest sample would not fit in a micro-batch",
                where=f"parameters max_tokens_per_gpu and {name}",
                fix=f"raise max_tokens_per_gpu to at least {budget} or lower {name}",
            )
        return self

    @model_validator(mode="after")
    def _own_names_onto_shared(self) -> "RunConfig":
        """An algorithm's section may stand for shared settings under its own names (LoRA: Training Hub's)."""
        onto = getattr(self.method, "onto_shared", None)
        if onto is not None:
            onto(self)
        return self

    @property
    def method(self) -> "Section | None":
        """The algorithm's own section (None for an algorithm without parameters of its own)."""
        return getattr(self, self.algorithm, None)

    # -- flat <-> sections ---------------------------------------------------------------------------
    @classmethod
    def sections(cls, algorithm: str) -> dict[str, type[Section]]:
        """Section name -> schema used by ``algorithm``."""
        spec = get_algorithm(algorithm)
        out: dict[str, type[Section]] = {"data": DataConfig, "train": TrainConfig, "distributed": DistributedConfig}
        if spec.section is not None:
            out[spec.name] = spec.section
        return out

    @classmethod
    def parameter_names(cls, algorithm: str) -> dict[str, str]:
        """Flat parameter name -> owning section, for ``algorithm``."""
        return {p: s for s, schema in cls.sections(algorithm).items() for p in schema.model_fields}

    @classmethod
    def from_flat(cls, algorithm: str, params: dict[str, Any], source: str = "keyword arguments",
                  origins: dict[str, str] | None = None) -> "RunConfig":
        """Build from flat parameter names; unknown or invalid names raise :class:`HoneError`.

        ``origins`` maps a parameter name to where it was given (a file, a flag), for error messages.
        """
        origins = origins or {}
        sections = cls.sections(algorithm)
        owners = cls.parameter_names(algorithm)
        grouped: dict[str, dict[str, Any]] = {s: {} for s in sections}
        for key, value in params.items():
            if key not in owners:
                hint = _unknown_hint(key, value, owners, sections)
                raise HoneError(
                    f"unknown parameter {key!r} for {algorithm}" + (f": {hint}" if hint else ""),
                    where=origins.get(key, source),
                    fix=f"remove it or use a valid name (`hone train {algorithm} --help` lists them)",
                )
            grouped[owners[key]][key] = value
        for key, value in get_algorithm(algorithm).defaults.items():
            if key in owners:
                grouped[owners[key]].setdefault(key, value)
        try:
            built = {name: schema(**grouped[name]) for name, schema in sections.items()}
            return cls(algorithm=algorithm, **built)
        except ValidationError as err:
            raise _validation_error(err, source, origins) from None

    @classmethod
    def from_sources(cls, algorithm: str, config_file: str | Path | None, overrides: dict[str, Any]) -> "RunConfig":
        """YAML config file (flat keys) overlaid with explicit values (e.g. CLI flags); explicit values win."""
        params: dict[str, Any] = {}
        origins: dict[str, str] = {}
        if config_file:
            params, lines = load_yaml_config_lines(config_file)
            origins = {k: f"config file {config_file}" + (f":{lines[k]}" if k in lines else "") for k in params}
        for key, value in overrides.items():
            params[key] = value
            origins[key] = f"option --{key.replace('_', '-')}"
        return cls.from_flat(algorithm, params, source="configuration", origins=origins)

    def to_flat(self, *, include_volatile: bool = True) -> dict[str, Any]:
        """All parameters, flat, JSON-serialisable (the form saved in training_params.json)."""
        out: dict[str, Any] = {"algorithm": self.algorithm}
        for name in self.sections(self.algorithm):
            section: Section = getattr(self, name)
            runtime = getattr(section, "runtime_only", frozenset())
            for key, value in section.model_dump(mode="json", exclude=set(runtime)).items():
                if include_volatile or key not in section.volatile:
                    out[key] = value
        return out


# names people write for a parameter (the CLI's short flags, other tools' spellings)
_SYNONYMS = {"model": "model_path", "data": "data_path", "output": "ckpt_output_dir", "output_dir":
             "ckpt_output_dir", "lr": "learning_rate", "epochs": "num_epochs", "batch_size": "effective_batch_size"}


def _unknown_hint(key: Any, value: Any, owners: dict[str, str], sections: dict[str, Any]) -> str:
    """'did you mean' text for an unknown flat parameter name."""
    name = str(key)
    if name in sections or name in ("train", "data", "distributed", "training", "model", "lora", "osft") \
            and isinstance(value, dict):
        return (f"the configuration is flat: write the parameters of {name!r} at the top level "
                f"(e.g. learning_rate: 1e-5), not nested under {name!r}")
    if name.replace("-", "_") in owners:
        return f"did you mean {name.replace('-', '_')!r}? (names use underscores; dashes are for CLI flags)"
    if _SYNONYMS.get(name) in owners:
        return f"did you mean {_SYNONYMS[name]!r}?"
    return suggest(name, owners)


def _validation_error(err: ValidationError, source: str, origins: dict[str, str]) -> HoneError:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    name = loc[-1] if loc else "?"
    if first["type"] == "missing":
        return HoneError(f"missing required parameter {name!r}", where=source,
                         fix=f"pass {name} (CLI: --{name.replace('_', '-')})")
    given = first.get("input")
    msg = first["msg"].removeprefix("Value error, ")
    fix = "see `hone train --help` for accepted values"
    if isinstance(given, str) and "$" in given:
        fix = "write the value itself: environment variables ($NAME, ${NAME}) are not expanded in parameters; " + fix
    return HoneError(f"invalid value for {name!r}: {given!r} ({msg})",
                     where=f"{origins.get(name, source)}, parameter {name}", fix=fix)


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML config (keys are the Python parameter names)."""
    return load_yaml_config_lines(path)[0]


def load_yaml_config_lines(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A flat YAML config and the line of each key. Strict (:func:`hone.io.load_yaml_mapping`): UTF-8, no key
    twice, no alias bomb, a mapping with parameter names as keys."""
    from hone.io import load_yaml_mapping

    path = Path(path)
    if path.is_dir():
        raise HoneError(f"config file is a directory: {path}", where="--config", fix="pass the path of a YAML file")
    if not path.is_file():
        raise HoneError(f"config file not found: {path}", where="--config", fix="pass the path of a YAML file")
    return load_yaml_mapping(path, "config file")


class EvalConfig(Section):
    """Evaluation (``hone eval`` / ``hone.evaluate``): lm-eval tasks, the holdout split, base vs tuned."""

    volatile: ClassVar[frozenset[str]] = frozenset({"overwrite", "batch_size", "device"})
    # CLI flags that differ from --<name-with-dashes>
    flags: ClassVar[dict[str, str]] = {"model_path": "--model", "base_model_path": "--base",
                                       "eval_data_path": "--eval-data", "output_dir": "--output"}

    model_path: str = Field(description="Model to evaluate: a Hugging Face directory (or a training output "
                                        "directory: its hf_format/final), or a hub id.")
    output_dir: str = Field(description="Directory for eval_results.json, metrics.json and the comparison.")
    base_model_path: str | None = Field(None, description="Base model to compare with (same tasks and data): "
                                                          "adds comparison.md/.json/.png.")
    tasks: list[str] = Field(default_factory=list, description="lm-eval task, group or tag names (comma-separated "
                             "or a list); default: every task in include_path.")
    include_path: list[str] = Field(default_factory=list, description="Directories of local lm-eval task YAMLs "
                                    "(relative data_files are read from each YAML's directory).")
    eval_data_path: str | None = Field(None, description="Eval split (chat JSONL) for the holdout task: loss, "
                                       "perplexity and greedy-generation scores with the model's own chat template.")
    limit: int | float | None = Field(None, gt=0, description="Examples per task (and holdout rows); < 1 is a fraction.")
    batch_size: int | Literal["auto"] = Field("auto", description="Batch size: an int or auto (lm-eval's "
                                              "detection on GPU, 8 on CPU).")
    backend: Literal["hf", "vllm"] = Field("hf", description="lm-eval model backend: hf (in-memory transformers "
                                           "model, CPU or GPU) or vllm (GPU with vllm installed).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: auto = float32 on CPU, bfloat16 on GPU.")
    max_new_tokens: int = Field(64, gt=0, description="Longest holdout answer generated (greedy).")
    max_seq_len: int | None = Field(None, gt=0, description="Holdout samples longer than this are skipped "
                                    "(default: the model's context length).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples for lm-eval tasks (default: each "
                                    "task's own).")
    apply_chat_template: bool = Field(False, description="Wrap lm-eval prompts in the model's chat template.")
    log_samples: bool = Field(False, description="Write samples.jsonl (prompt, target, prediction per example).")
    forgetting_threshold: float = Field(0.05, ge=0, description="With a base model: flag a metric that gets worse "
                                        "by more than this fraction of its base value.")
    trust_remote_code: bool = Field(False, description="Allow model code from the model repository (off unless asked).")
    overwrite: bool = Field(False, description="Replace an output directory that holds files other than an evaluation.")

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        return _device_name(v)

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, v: str, info: Any) -> str:
        return _writable_dir(v, info.field_name)

    @field_validator("tasks", "include_path", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        if v is None:
            return []
        items = [v] if isinstance(v, str) else v
        if isinstance(items, (list, tuple)):
            return [t.strip() for item in items for t in str(item).split(",") if t.strip()]
        return v

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        return v

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError("batch_size must be at least 1 or auto")
        return v

    @model_validator(mode="after")
    def _something_to_do(self) -> "EvalConfig":
        if not (self.tasks or self.include_path or self.eval_data_path):
            raise HoneError("nothing to evaluate: no lm-eval task and no eval data", where="tasks, include_path, "
                            "eval_data_path", fix="pass --tasks and/or --include-path (lm-eval tasks) and/or "
                            "--eval-data (the holdout split)")
        return self

    @classmethod
    def from_flat(cls, params: dict[str, Any], source: str = "keyword arguments",
                  origins: dict[str, str] | None = None) -> "EvalConfig":
        """Build from flat names; unknown or invalid names raise :class:`HoneError`."""
        origins = origins or {}
        for key in params:
            if key not in cls.model_fields:
                hint = suggest(key, cls.model_fields)
                raise HoneError(f"unknown evaluation parameter {key!r}" + (f": {hint}" if hint else ""),
                                where=origins.get(key, source), fix="remove it or use a valid name (`hone eval "
                                "--help` lists them)")
        try:
            return cls(**params)
        except ValidationError as err:
            first = err.errors()[0]
            name = next((str(p) for p in first["loc"] if str(p) in cls.model_fields), "?")
            if first["type"] == "missing":
                raise HoneError(f"missing required parameter {name!r}", where=source,
                                fix=f"pass {name} (CLI: {cls.flag(name)})") from None
            raise HoneError(f"invalid value for {name!r}: {first.get('input')!r} ({first['msg']})",
                            where=f"{origins.get(name, source)}, parameter {name}",
                            fix="see `hone eval --help` for accepted values") from None

    @classmethod
    def from_sources(cls, config_file: str | Path | None, overrides: dict[str, Any]) -> "EvalConfig":
        """A flat YAML config overlaid with explicit values (CLI flags); explicit values win."""
        params, lines = load_yaml_config_lines(config_file) if config_file else ({}, {})
        origins = {k: f"config file {config_file}" + (f":{lines[k]}" if k in lines else "") for k in params}
        for key, value in overrides.items():
            params[key] = value
            origins[key] = f"option {cls.flag(key)}"
        return cls.from_flat(params, source="configuration", origins=origins)

    @classmethod
    def flag(cls, name: str) -> str:
        return cls.flags.get(name, "--" + name.replace("_", "-"))


class RegistryConfig(Section):
    """Where fine-tuned models are registered: the embedded MLflow registry (default) or a Kubeflow Model
    Registry. Secrets never live here: the registry token is read from the environment variable or file named."""

    registry_backend: Literal["mlflow", "kubeflow", "none"] = Field(
        "mlflow", description="mlflow (embedded SQLite under the hone home, or registry_tracking_uri), kubeflow "
                              "(a Kubeflow Model Registry at registry_address) or none (skip registration).")
    registry_home: str | None = Field(None, description="hone home holding the embedded registry (mlflow.db, "
                                                        "mlartifacts/); default $HONE_HOME, else ./hone-runs.")
    registry_tracking_uri: str | None = Field(None, description="MLflow store URI instead of the embedded one "
                                                                "(sqlite:///..., http://mlflow:5000).")
    registry_experiment_name: str = Field("hone", description="MLflow experiment of registration runs.")
    registry_address: str = Field("", description="Kubeflow Model Registry address (host or http(s)://host); "
                                                  "empty: a KFP pipeline skips registration, a local run "
                                                  "registers in the embedded MLflow registry.")
    registry_port: int = Field(8080, gt=0, lt=65536, description="Kubeflow Model Registry port.")
    registry_author: str = Field("pipeline", description="Author (and owner) recorded with the registered model.")
    registry_is_secure: bool | None = Field(None, description="HTTPS with a bearer token; default from the "
                                                              "address scheme, plain HTTP for a bare host.")
    registry_token_env: str = Field(MODEL_REGISTRY_TOKEN_ENV, description="Name of the environment variable "
                                    "holding the registry token (the token itself never goes in a config).")
    registry_token_file: str | None = Field(None, description="File holding the registry token (default: "
                                            "$KF_PIPELINES_SA_TOKEN_PATH or the pod's service-account token).")
    registry_custom_ca: str | None = Field(None, description="PEM file of the registry's certificate authority.")
    registry_api_version: Literal["v1alpha3", "v1"] = Field(
        "v1alpha3", description="Model Registry REST API version (v1alpha3: OpenShift AI; v1: newer upstream).")
    registry_name: str | None = Field(None, description="Registered model name.")
    registry_version: str = Field("1.0.0", description="Version to register (an existing one is never "
                                                       "overwritten).")
    registry_description: str = Field("", description="Description of the registered version.")
    registry_format_name: str = Field("pytorch", description="Model format name (Kubeflow registry).")
    registry_format_version: str = Field("1.0", description="Model format version (Kubeflow registry).")

    @field_validator("registry_tracking_uri")
    @classmethod
    def _mlflow_store(cls, v: str | None, info: Any) -> str | None:
        return _tracking_store(v, info.field_name)

    @field_validator("registry_token_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v or ""):
            # never echo the value: it may be a token pasted in the wrong place
            raise HoneError("registry_token_env must be the NAME of an environment variable, not a token",
                            where="registry_token_env",
                            fix="export MODEL_REGISTRY_TOKEN=... and pass registry_token_env=MODEL_REGISTRY_TOKEN")
        return v


class PipelineConfig(Section):
    """Settings only the four-stage pipeline has: the training pods' resources, tokens given as parameters,
    and how the evaluation stage runs. Per-algorithm defaults come from the algorithm table."""

    workers: int = Field(4, ge=1, description="Number of training pods (more than 1: a Kubeflow TrainJob).")
    gpu: int = Field(1, ge=1, description="GPUs per worker. Keep at 1 to avoid /dev/shm issues.")
    cpu: str = Field("4", min_length=1, description="CPU cores per worker.")
    memory: str = Field("64Gi", min_length=1, description="Memory per worker (e.g., 64Gi).")
    annotations: str = Field("", description="Pod annotations as key=value,key=value.")
    labels: str = Field("", description="Pod labels as key=value,key=value.")
    env_vars: str = Field(
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True,NCCL_DEBUG=INFO,INSTRUCTLAB_NCCL_TIMEOUT_MS=600000",
        description="Environment variables as KEY=VAL,KEY=VAL.")
    pull_secret: str = Field("", description="Pull secret for container registry.")
    runtime: str = Field("training-hub", description="ClusterTrainingRuntime of the TrainJob (more than one worker).")
    train_timeout: int = Field(0, ge=0, description="Seconds to wait for the TrainJob (more than one worker) "
                                                    "before deleting it; 0: no limit.")
    dataset_hf_token: str = Field("", description="HuggingFace token for private datasets (prefer the hf-token "
                                                  "secret: a parameter value is visible in the run's record).")
    train_hf_token: str = Field("", description="HuggingFace token for gated models (prefer the hf-token secret).")
    compare_base: bool = Field(True, description="Evaluate the base model too and compare (forgetting).")
    eval_gen_kwargs: dict[str, Any] = Field(default_factory=dict, description="Generation kwargs for evaluation.")
    eval_model_args: dict[str, Any] = Field(default_factory=dict, description="Model initialization arguments.")
    eval_verbosity: str = Field("INFO", description="Logging verbosity (DEBUG, INFO, etc.).")

    @field_validator("eval_verbosity")
    @classmethod
    def _log_level(cls, v: str) -> str:
        import logging

        if not isinstance(getattr(logging, str(v).upper(), None), int):
            raise HoneError(f"unknown verbosity {v!r}", where="eval_verbosity", fix="use DEBUG, INFO, WARNING or ERROR")
        return v


# -- the table of algorithms -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Algorithm:
    """One training algorithm: everything hone knows about it, in one place.

    Config, the CLI, the Python API, the pipeline (runner and KFP flavours) and cluster submission all read
    :data:`ALGORITHMS`. Adding an algorithm = a module under ``hone/algorithms/`` with its hooks class, plus
    one :func:`register_algorithm` entry (see docs/architecture.md).
    """

    name: str
    summary: str
    hooks: str  # "module:Class" of its hone.training.hooks.AlgorithmHooks; hone.algorithms.hooks_for builds it
    section: type[Section] | None = None  # its own parameters, reachable as cfg.<name>
    defaults: Mapping[str, Any] = dc_field(default_factory=dict)  # schema defaults it changes (Training Hub's)
    api: str | None = None  # its public Python function: hone.<api>
    backends: tuple[str, ...] = ()  # Training Hub's backend names for it (accepted; hone runs its own engine)
    check: Callable[["RunConfig"], None] | None = None  # cross-field checks of this algorithm (raise HoneError)
    pipeline: bool = True  # has the pipeline flavours <name> and <name>-minimal
    # defaults of pipeline-only settings (PipelineConfig and RegistryConfig fields; the registered model's
    # name defaults to "<name>-model")
    pipeline_defaults: Mapping[str, Any] = dc_field(default_factory=dict)

    @property
    def flavours(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}-minimal") if self.pipeline else ()

    def default(self, section: type[BaseModel], name: str) -> Any:
        """The default of ``section.name`` for this algorithm (the schema's unless the algorithm changes it)."""
        table = self.pipeline_defaults if section in (PipelineConfig, RegistryConfig) else self.defaults
        if name in table:
            return table[name]
        if section is RegistryConfig and name == "registry_name":
            return f"{self.name}-model"
        info = section.model_fields[name]
        return None if info.is_required() else info.get_default(call_default_factory=True)


ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(spec: Algorithm) -> Algorithm:
    """Add (or replace) an algorithm in the table."""
    if not spec.name.isidentifier() or spec.name in RunConfig.model_fields:
        raise HoneError(f"invalid algorithm name {spec.name!r}", where="register_algorithm",
                        fix="use a lowercase identifier that is not a config section name")
    ALGORITHMS[spec.name] = spec
    return spec


def get_algorithm(name: str, where: str = "algorithm") -> Algorithm:
    """The table entry of ``name``; an unknown name is a :class:`HoneError`."""
    spec = ALGORITHMS.get(name)
    if spec is None:
        hint = suggest(str(name), ALGORITHMS)
        raise HoneError(f"unknown algorithm {name!r}" + (f": {hint}" if hint else ""), where=where,
                        fix=f"use one of {', '.join(ALGORITHMS)}")
    return spec


def _osft_checks(cfg: RunConfig) -> None:
    # mini-trainer refuses this pair: pretraining documents have no turns to unmask
    if cfg.data.is_pretraining and cfg.data.unmask_messages:
        raise HoneError("is_pretraining=True and unmask_messages=True contradict each other", where="parameters "
                        "is_pretraining and unmask_messages", fix="drop unmask_messages: pretraining trains every token")


register_algorithm(Algorithm(
    "sft", "Supervised fine-tuning of every parameter.", "hone.algorithms.sft:SFTHooks", api="sft",
    backends=("instructlab-training",),
    defaults={"accelerate_full_state_at_epoch": True}))  # instructlab-training's default
register_algorithm(Algorithm(
    "osft", "Orthogonal Subspace Fine-Tuning: new skills without forgetting (frozen top singular directions; "
            "--unfreeze-rank-ratio sets the trainable fraction).", "hone.algorithms.osft:OSFTHooks", section=OSFTConfig, api="osft",
    backends=("mini-trainer",), check=_osft_checks,
    defaults={"checkpoint_at_epoch": False},  # mini-trainer's default: one checkpoint, at the end
    # the OpenShift AI OSFT pipeline's hardware defaults
    pipeline_defaults={"workers": 1, "cpu": "8", "memory": "32Gi", "env_vars": ""}))
register_algorithm(Algorithm(
    "lora", "LoRA / QLoRA adapters through peft, with assistant-only loss; writes the adapter and the merged "
            "model.", "hone.algorithms.lora:LoRAHooks", backends=("unsloth",),
    section=LoRAConfig, api="lora_sft",
    # Training Hub's lora_sft (Unsloth backend, TRL SFTConfig; AdamW's beta2 is transformers' 0.999)
    defaults={"num_epochs": 3, "max_seq_len": 2048, "learning_rate": 2e-4, "lr_scheduler": "linear",
              "warmup_steps": 10, "weight_decay": 0.01, "max_grad_norm": 0.3, "beta2": 0.999},
    pipeline_defaults={"workers": 1, "memory": "32Gi", "env_vars": ""}))
