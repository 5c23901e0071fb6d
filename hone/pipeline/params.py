"""The pipeline's parameters: one table shared by the local runner, the KFP pipelines and the docs.

Names follow the OpenShift AI SFT pipeline (seed 004): ``phase_<NN>_<stage>_<man|opt>_<name>``. ``man``
parameters are the ones the *minimal* flavours expose; the expert flavours expose ``man`` and ``opt``.
Every flavour uses the same names: the upstream OSFT pipeline's ``phase_02_train_man_train_*`` spellings
are accepted as aliases (:data:`UPSTREAM_ALIASES`) and mapped onto these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from hone.errors import HoneError, suggest

FLAVOURS = ("sft", "sft-minimal", "osft", "osft-minimal", "lora", "lora-minimal")
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
DATA_URI = "phase_01_dataset_man_data_uri"
SECRET_PARAMS = frozenset({"phase_01_dataset_opt_hf_token", "phase_02_train_opt_hf_token"})


@dataclass(frozen=True)
class Param:
    """One pipeline parameter."""

    name: str
    type: type
    default: Any
    help: str
    algorithms: tuple[str, ...] = ("sft", "osft", "lora")
    # per-algorithm defaults that differ from ``default`` (seed 001's OSFT hardware table, LoRA's lr)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return {"01": "dataset", "02": "training", "03": "evaluation", "04": "registration"}[self.name[6:8]]

    @property
    def minimal(self) -> bool:
        return "_man_" in self.name

    def default_for(self, algorithm: str) -> Any:
        value = self.overrides.get(algorithm, self.default)
        return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


_P = Param
PARAMS: tuple[Param, ...] = (
    # -- stage 1: dataset --------------------------------------------------------------------------------
    _P(DATA_URI, str, None, "Dataset location (hf://, s3://, https://, pvc://, or a local path)."),
    _P("phase_01_dataset_man_data_split", float, 0.9, "Train/eval split ratio (0.9 = 90% train)."),
    _P("phase_01_dataset_opt_hf_token", str, "", "HuggingFace token for private datasets (prefer the hf-token "
       "secret: a parameter value is visible in the run's record)."),
    _P("phase_01_dataset_opt_subset", int, 0, "Limit dataset to N samples (0 = all)."),
    # -- stage 2: training -------------------------------------------------------------------------------
    _P("phase_02_train_man_train_batch", int, 128, "Effective batch size per optimizer step."),
    _P("phase_02_train_man_epochs", int, 1, "Number of training epochs."),
    _P("phase_02_train_man_gpu", int, 1, "GPUs per worker. Keep at 1 to avoid /dev/shm issues."),
    _P("phase_02_train_man_model", str, DEFAULT_MODEL, "Base model (HuggingFace ID, path or oci://)."),
    _P("phase_02_train_man_tokens", int, 10000, "Max tokens per GPU (memory cap)."),
    _P("phase_02_train_man_workers", int, 4, "Number of training pods (more than 1: a Kubeflow TrainJob).",
       overrides={"osft": 1, "lora": 1}),
    _P("phase_02_train_man_unfreeze_rank_ratio", float, 0.25, "OSFT: trainable fraction of each matrix's "
       "singular directions (0-1; 1 = plain SFT).", algorithms=("osft",)),
    _P("phase_02_train_man_lora_r", int, 16, "LoRA rank.", algorithms=("lora",)),
    _P("phase_02_train_man_lora_alpha", int, 32, "LoRA alpha (scale = alpha / r).", algorithms=("lora",)),
    _P("phase_02_train_opt_annotations", str, "", "Pod annotations as key=value,key=value."),
    _P("phase_02_train_opt_cpu", str, "4", "CPU cores per worker.", overrides={"osft": "8"}),
    _P("phase_02_train_opt_env_vars", str,
       "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True,NCCL_DEBUG=INFO,INSTRUCTLAB_NCCL_TIMEOUT_MS=600000",
       "Environment variables as KEY=VAL,KEY=VAL."),
    _P("phase_02_train_opt_hf_token", str, "", "HuggingFace token for gated models (prefer the hf-token secret)."),
    _P("phase_02_train_opt_labels", str, "", "Pod labels as key=value,key=value."),
    _P("phase_02_train_opt_learning_rate", float, 5e-06, "Learning rate for training.", overrides={"lora": 2e-4}),
    _P("phase_02_train_opt_lr_warmup", int, 0, "Learning rate warmup steps."),
    _P("phase_02_train_opt_lr_scheduler", str, "cosine", "LR scheduler type (cosine, linear)."),
    _P("phase_02_train_opt_max_seq_len", int, 8192, "Maximum sequence length in tokens."),
    _P("phase_02_train_opt_memory", str, "64Gi", "Memory per worker (e.g., 64Gi).",
       overrides={"osft": "32Gi", "lora": "32Gi"}),
    _P("phase_02_train_opt_num_procs", str, "auto", "Processes per worker (auto or int)."),
    _P("phase_02_train_opt_pull_secret", str, "", "Pull secret for container registry."),
    _P("phase_02_train_opt_save_epoch", bool, True, "Save checkpoint at each epoch."),
    _P("phase_02_train_opt_save_full_state", bool, False, "Save full accelerate state at epoch."),
    _P("phase_02_train_opt_fsdp_sharding", str, "FULL_SHARD", "FSDP strategy (FULL_SHARD, HYBRID_SHARD)."),
    _P("phase_02_train_opt_save_samples", int, 0, "Number of samples to save (0 = none)."),
    _P("phase_02_train_opt_seed", int, 42, "Random seed for reproducibility."),
    _P("phase_02_train_opt_use_liger", bool, False, "Enable Liger kernel optimizations."),
    _P("phase_02_train_opt_target_patterns", str, "", "OSFT: comma-separated name patterns of the matrices to "
       "train (empty = every attention and MLP matrix).", algorithms=("osft",)),
    _P("phase_02_train_opt_lora_dropout", float, 0.0, "LoRA dropout.", algorithms=("lora",)),
    _P("phase_02_train_opt_target_modules", str, "", "LoRA: comma-separated module names (empty = every "
       "linear layer of the blocks).", algorithms=("lora",)),
    _P("phase_02_train_opt_load_in_4bit", bool, False, "QLoRA: load the base model in 4 bits (GPU).",
       algorithms=("lora",)),
    # -- stage 3: evaluation -----------------------------------------------------------------------------
    _P("phase_03_eval_man_tasks", list, ["arc_easy"], "lm-eval tasks (arc_easy, mmlu, gsm8k, etc.)."),
    _P("phase_03_eval_opt_batch", str, "auto", "Batch size for evaluation (auto or int)."),
    _P("phase_03_eval_opt_gen_kwargs", dict, {}, "Generation kwargs for evaluation."),
    _P("phase_03_eval_opt_limit", int, -1, "Limit examples per task (-1 = no limit)."),
    _P("phase_03_eval_opt_log_samples", bool, True, "Log individual evaluation samples."),
    _P("phase_03_eval_opt_model_args", dict, {}, "Model initialization arguments."),
    _P("phase_03_eval_opt_verbosity", str, "INFO", "Logging verbosity (DEBUG, INFO, etc.)."),
    _P("phase_03_eval_opt_include_path", str, "", "Comma-separated directories of local lm-eval task YAMLs."),
    _P("phase_03_eval_opt_compare_base", bool, True, "Evaluate the base model too and compare (forgetting)."),
    # -- stage 4: registration ---------------------------------------------------------------------------
    _P("phase_04_registry_man_address", str, "", "Model Registry address (empty = skip)."),
    _P("phase_04_registry_man_author", str, "pipeline", "Author name for the registered model."),
    _P("phase_04_registry_man_name", str, "sft-model", "Model name in registry.",
       overrides={"osft": "osft-model", "lora": "lora-model"}),
    _P("phase_04_registry_man_version", str, "1.0.0", "Semantic version (major.minor.patch)."),
    _P("phase_04_registry_opt_description", str, "", "Model description for registry."),
    _P("phase_04_registry_opt_format_name", str, "pytorch", "Model format (pytorch, onnx)."),
    _P("phase_04_registry_opt_format_version", str, "1.0", "Model format version."),
    _P("phase_04_registry_opt_port", int, 8080, "Model Registry server port."),
)
BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}

# The upstream OSFT pipelines spell some training parameters differently from the SFT one (seed 001:
# ``phase_02_train_man_train_model``). hone uses one spelling everywhere and accepts theirs.
UPSTREAM_ALIASES: dict[str, str] = {
    "phase_02_train_man_train_epochs": "phase_02_train_man_epochs",
    "phase_02_train_man_train_model": "phase_02_train_man_model",
    "phase_02_train_man_train_tokens": "phase_02_train_man_tokens",
    "phase_02_train_man_train_workers": "phase_02_train_man_workers",
    "phase_02_train_man_train_gpu": "phase_02_train_man_gpu",
    "phase_02_train_man_train_unfreeze_rank_ratio": "phase_02_train_man_unfreeze_rank_ratio",
}


def flavour_algorithm(flavour: str) -> str:
    """``osft-minimal`` -> ``osft``."""
    if flavour not in FLAVOURS:
        hint = suggest(flavour, FLAVOURS)
        raise HoneError(f"unknown pipeline flavour {flavour!r}" + (f": {hint}" if hint else ""), where="--flavor",
                        fix=f"use one of {', '.join(FLAVOURS)}")
    return flavour.split("-")[0]


def params_for(flavour: str) -> list[Param]:
    """The parameters a flavour exposes, in table order."""
    algorithm = flavour_algorithm(flavour)
    minimal = flavour.endswith("-minimal")
    return [p for p in PARAMS if algorithm in p.algorithms and (p.minimal or not minimal)]


def defaults(algorithm: str) -> dict[str, Any]:
    """Every parameter of ``algorithm`` with its default."""
    return {p.name: p.default_for(algorithm) for p in PARAMS if algorithm in p.algorithms}


def _coerce(p: Param, value: Any, where: str) -> Any:
    """Parse a value given as text (CLI, YAML) or as its own type into ``p.type``."""
    import json

    def bad(expected: str) -> HoneError:
        shown = "<redacted>" if p.name in SECRET_PARAMS else repr(value)
        return HoneError(f"invalid value {shown} for {p.name}: expected {expected}", where=where,
                         fix=f"{p.name}: {p.help}")

    if value is None:
        if p.name == DATA_URI:
            return None
        raise bad(p.type.__name__)
    if p.type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise bad("true or false")
    if p.type is int:
        if isinstance(value, bool):
            raise bad("an integer")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise bad("an integer") from None
    if p.type is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if p.type is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise bad('a JSON list, e.g. ["arc_easy"], or comma-separated names') from None
            else:
                value = [t.strip() for t in text.split(",") if t.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad("a list of names")
        return list(value)
    if p.type is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise bad('a JSON object, e.g. {"max_new_tokens": 64}') from None
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(value)
    if isinstance(value, (dict, list)):
        raise bad("text")
    return str(value)


def resolve(algorithm: str, given: Mapping[str, Any], origins: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Defaults of ``algorithm`` overlaid with ``given`` (upstream aliases accepted), each value checked.

    Unknown names and names of another algorithm (e.g. an OSFT parameter in a LoRA run) are errors.
    """
    origins = origins or {}
    out = defaults(algorithm)
    for key, value in given.items():
        where = origins.get(key, "pipeline parameters")
        name = UPSTREAM_ALIASES.get(key, key)
        p = BY_NAME.get(name)
        if p is None:
            hint = suggest(key, list(BY_NAME) + list(UPSTREAM_ALIASES))
            raise HoneError(f"unknown pipeline parameter {key!r}" + (f": {hint}" if hint else ""), where=where,
                            fix="`hone pipeline params` lists every parameter")
        if algorithm not in p.algorithms:
            raise HoneError(f"{name} applies to {'/'.join(p.algorithms)}, not to {algorithm}", where=where,
                            fix=f"remove it, or run with --algorithm {p.algorithms[0]}")
        out[name] = _coerce(p, value, where)
    if not out.get(DATA_URI):
        raise HoneError("no dataset given", where=DATA_URI, fix="pass --data URI (hf://, s3://, https://, pvc:// "
                        "or a local path)")
    _check_ranges(out)
    return out


def _check_ranges(v: Mapping[str, Any]) -> None:
    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise HoneError(f"{name} = {v[name]!r}: {what}", where=name, fix=BY_NAME[name].help)

    need(0 < v["phase_01_dataset_man_data_split"] <= 1, "phase_01_dataset_man_data_split", "must be in (0, 1]")
    need(v["phase_01_dataset_opt_subset"] >= 0, "phase_01_dataset_opt_subset", "must be 0 or more")
    for name in ("phase_02_train_man_train_batch", "phase_02_train_man_epochs", "phase_02_train_man_gpu",
                 "phase_02_train_man_tokens", "phase_02_train_man_workers"):
        need(v[name] >= 1, name, "must be at least 1")
    need(v["phase_02_train_opt_learning_rate"] > 0, "phase_02_train_opt_learning_rate", "must be positive")
    need(v["phase_02_train_opt_lr_warmup"] >= 0, "phase_02_train_opt_lr_warmup", "must be 0 or more")
    need(v["phase_02_train_opt_save_samples"] >= 0, "phase_02_train_opt_save_samples", "must be 0 or more")
    num_procs = v["phase_02_train_opt_num_procs"]
    need(num_procs == "auto" or (num_procs.isdigit() and int(num_procs) >= 1), "phase_02_train_opt_num_procs",
         "must be auto or a positive integer")
    batch = v["phase_03_eval_opt_batch"]
    need(batch == "auto" or (batch.isdigit() and int(batch) >= 1), "phase_03_eval_opt_batch",
         "must be auto or a positive integer")
    need(v["phase_03_eval_opt_limit"] == -1 or v["phase_03_eval_opt_limit"] >= 1, "phase_03_eval_opt_limit",
         "must be -1 (no limit) or a positive integer")
    need(v["phase_04_registry_opt_port"] in range(1, 65536), "phase_04_registry_opt_port", "must be a TCP port")
    if "phase_02_train_man_unfreeze_rank_ratio" in v:
        need(0 <= v["phase_02_train_man_unfreeze_rank_ratio"] <= 1, "phase_02_train_man_unfreeze_rank_ratio",
             "must be in [0, 1]")


def public(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the token parameters redacted (for manifests, reports, logs)."""
    return {k: ("<redacted>" if k in SECRET_PARAMS and v else v) for k, v in values.items()}
