"""The pipeline's parameters: *declarations* over the one schema, :mod:`hone.config`.

Names follow the OpenShift AI pipelines: ``phase_<NN>_<stage>_<man|opt>_<name>``. ``man`` parameters are
the ones the *minimal* flavours expose; the expert flavours expose ``man`` and ``opt``. Each declaration says
only which schema field the name stands for (``section.field``), how the value is spelled as a KFP parameter
(:class:`Codec`), which other stages read it, and -- rarely, with the reason -- a pipeline default that
differs from the schema's. Type, default, validation and help come from the schema and the algorithm table.
The upstream OSFT pipeline's ``phase_02_train_man_train_*`` spellings are accepted as aliases.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

from hone.config import (ALGORITHMS, DataConfig, DistributedConfig, EvalConfig, PipelineConfig, RegistryConfig,
                         RunConfig, TrainConfig, get_algorithm)
from hone.errors import HoneError, suggest
from hone.secrets import PIPELINE_SECRET_PARAMS

DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
DATA_URI = "phase_01_dataset_man_data_uri"
SECRET_PARAMS = PIPELINE_SECRET_PARAMS
STAGE_OF_PHASE = {"01": "dataset", "02": "training", "03": "evaluation", "04": "registration"}
# sections that every algorithm shares; an algorithm's own section is named after it (hone.config.ALGORITHMS)
SHARED_SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataConfig, "train": TrainConfig, "distributed": DistributedConfig, "eval": EvalConfig,
    "registry": RegistryConfig, "pipeline": PipelineConfig}
_SCHEMA = object()  # "the schema's default"


# -- how a schema value is spelled as a KFP parameter ------------------------------------------------------
@dataclass(frozen=True)
class Codec:
    """A KFP parameter type and the two conversions between it and the schema's value."""

    name: str
    kfp_type: type | None  # None: the schema type's own (see :func:`kfp_type_of`)
    to_schema: Callable[[Any, bool], Any]  # (pipeline value, schema field optional?) -> schema value
    from_schema: Callable[[Any], Any]


def _csv_in(value: Any, optional: bool) -> Any:
    items = [s.strip() for s in str(value).split(",") if s.strip()]
    return items or (None if optional else [])


PLAIN = Codec("plain", None, lambda v, _o: v, lambda v: v)
#: list[str] field <-> "a,b" ("" = the schema's empty value)
CSV = Codec("csv", str, _csv_in, lambda v: ",".join(v or []))
#: optional number <-> int with -1 for "none"
NO_LIMIT = Codec("no-limit", int, lambda v, _o: None if v == -1 else v, lambda v: -1 if v is None else v)
#: a field that takes a number or a word ("auto") <-> text
TEXT = Codec("text", str, lambda v, _o: v, lambda v: "" if v is None else str(v))
#: an optional text field <-> text ("" = not set)
EMPTY_NONE = Codec("empty-none", str, lambda v, _o: v if v else None, lambda v: "" if v is None else str(v))


def _json_in(value: Any, _optional: bool) -> Any:
    if isinstance(value, dict) or not str(value).strip():
        return value or {}
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"not a JSON object ({err.msg})") from None


#: a mapping field <-> JSON text ("" = empty), as the upstream pipelines spell lr_scheduler_kwargs
JSON_TEXT = Codec("json-text", str, _json_in, lambda v: json.dumps(v) if v else "")


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) < len(get_args(annotation)) and len(args) == 1:
            return args[0], True
    return annotation, False


def kfp_type_of(annotation: Any) -> type:
    """The KFP parameter type of a schema annotation (bool, int, float, str, list, dict)."""
    ann, _ = _strip_optional(annotation)
    if get_origin(ann) is Literal and all(isinstance(a, str) for a in get_args(ann)):
        return str
    if ann in (bool, int, float, str):
        return ann
    if get_origin(ann) in (list, tuple) or ann in (list, tuple):
        return list
    if get_origin(ann) is dict or ann is dict:
        return dict
    raise TypeError(f"no KFP type for {annotation!r}: declare the parameter with a codec")


# -- the declarations --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One pipeline parameter: a pipeline name for a schema field."""

    name: str
    field: str  # "section.field"; section: a shared one (SHARED_SECTIONS) or an algorithm's name
    codec: Codec = PLAIN
    default: Any = _SCHEMA  # a pipeline default that differs from the schema's (say why in ``reason``)
    reason: str = ""
    also: tuple[str, ...] = ()  # other stages that read it (the one its name says is always included)
    # how one algorithm's (or one flavour's) upstream pipeline spells it, where not like ``name``
    spelled: Mapping[str, str] = field(default_factory=dict)
    # the upstream pipeline's default for one algorithm (or flavour), where it differs from hone's
    upstream: Mapping[str, Any] = field(default_factory=dict)

    @property
    def section_name(self) -> str:
        return self.field.split(".")[0]

    @property
    def field_name(self) -> str:
        return self.field.split(".")[1]

    @property
    def schema(self) -> type[BaseModel]:
        s = self.section_name
        return SHARED_SECTIONS[s] if s in SHARED_SECTIONS else get_algorithm(s).section

    @property
    def info(self) -> Any:
        return self.schema.model_fields[self.field_name]

    @property
    def stage(self) -> str:
        return STAGE_OF_PHASE[self.name[6:8]]

    @property
    def stages(self) -> tuple[str, ...]:
        return (self.stage, *self.also)

    @property
    def minimal(self) -> bool:
        return "_man_" in self.name

    def name_for(self, flavour: str | None) -> str:
        """The spelling of ``flavour``'s compiled pipeline (hone's own name when flavour is None)."""
        if flavour is None:
            return self.name
        return self.spelled.get(flavour) or self.spelled.get(flavour_algorithm(flavour)) or self.name

    def in_flavour(self, flavour: str) -> bool:
        algorithm = flavour_algorithm(flavour)
        if algorithm not in self.algorithms:
            return False
        if not flavour.endswith("-minimal"):
            return True
        listed = MINIMAL.get(algorithm)
        return self.name in listed if listed is not None else self.minimal

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms whose pipelines have this parameter."""
        if self.section_name in SHARED_SECTIONS:
            return tuple(a for a, spec in ALGORITHMS.items() if spec.pipeline)
        return (self.section_name,)

    @property
    def type(self) -> type:
        return self.codec.kfp_type or kfp_type_of(self.info.annotation)

    @property
    def optional(self) -> bool:
        return _strip_optional(self.info.annotation)[1]

    @property
    def help(self) -> str:
        return self.info.description or ""

    def default_for(self, algorithm: str, flavour: str | None = None) -> Any:
        """The default for ``algorithm`` (a fresh copy for lists and dicts): with ``flavour``, its compiled
        pipeline's (the upstream pipeline's); without, the local runner's (hone's)."""
        if flavour is not None and (flavour in self.upstream or algorithm in self.upstream):
            value = self.upstream.get(flavour, self.upstream.get(algorithm))
        elif self.default is not _SCHEMA:
            value = self.default
        else:
            value = get_algorithm(algorithm).default(self.schema, self.field_name)
            if value is not None or self.name != DATA_URI:
                value = self.codec.from_schema(value)
        return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value

    def to_schema(self, value: Any) -> Any:
        return self.codec.to_schema(value, self.optional)

    @property
    def component_default(self) -> Any:
        """The default of the KFP component input (its algorithm's expert flavour's), for a parameter that
        only some algorithms have: the other algorithms' pipelines leave it at this value."""
        return self.default_for(self.algorithms[0], self.algorithms[0])


_P = Param
# How the upstream OSFT and LoRA pipelines spell the parameters the SFT pipeline names without "train_"/"eval_"/
# "reg_" (hone's own names are the SFT pipeline's; every spelling is accepted everywhere).
_SP = lambda spelled: {"osft": spelled, "lora": spelled}  # noqa: E731
PARAMS: tuple[Param, ...] = (
    # -- stage 1: dataset ------------------------------------------------------------------------------------
    _P(DATA_URI, "data.data_path", also=("registration",)),  # registration records it as lineage
    _P("phase_01_dataset_man_data_split", "data.train_split_ratio", default=0.9,
       reason="the evaluation stage needs an eval split: 10% is held out, as in the OpenShift AI pipelines"),
    _P("phase_01_dataset_opt_hf_token", "pipeline.dataset_hf_token", also=("evaluation",)),
    _P("phase_01_dataset_opt_subset", "data.subset"),
    # -- stage 2: training -----------------------------------------------------------------------------------
    _P("phase_02_train_man_train_batch", "train.effective_batch_size"),
    _P("phase_02_train_man_epochs", "train.num_epochs", spelled=_SP("phase_02_train_man_train_epochs"),
       upstream={"lora": 2}),
    _P("phase_02_train_man_gpu", "pipeline.gpu", spelled=_SP("phase_02_train_man_train_gpu")),
    _P("phase_02_train_man_model", "train.model_path", default=DEFAULT_MODEL,
       reason="a pipeline needs a default base model; the OpenShift AI pipelines use this one",
       also=("evaluation", "registration"),  # the base model: compared with, recorded as lineage
       spelled=_SP("phase_02_train_man_train_model")),
    _P("phase_02_train_man_tokens", "train.max_tokens_per_gpu", spelled=_SP("phase_02_train_man_train_tokens"),
       upstream={"osft": 64000, "lora": 32000}),
    _P("phase_02_train_man_workers", "pipeline.workers", spelled=_SP("phase_02_train_man_train_workers")),
    _P("phase_02_train_man_unfreeze_rank_ratio", "osft.unfreeze_rank_ratio", default=0.25,
       reason="required in the Python API; the OpenShift AI OSFT pipeline defaults it to 0.25",
       spelled={"osft": "phase_02_train_man_train_unfreeze"}),
    _P("phase_02_train_man_lora_r", "lora.lora_r"),
    _P("phase_02_train_man_lora_alpha", "lora.lora_alpha"),
    _P("phase_02_train_opt_annotations", "pipeline.annotations"),
    _P("phase_02_train_opt_cpu", "pipeline.cpu"),
    _P("phase_02_train_opt_env_vars", "pipeline.env_vars",
       upstream={"sft-minimal": "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, NCCL_DEBUG=INFO, "
                                "NCCL_P2P_DISABLE=1, INSTRUCTLAB_NCCL_TIMEOUT_MS=600000"}),
    _P("phase_02_train_opt_hf_token", "pipeline.train_hf_token", also=("evaluation",)),
    _P("phase_02_train_opt_labels", "pipeline.labels"),
    _P("phase_02_train_opt_learning_rate", "train.learning_rate"),
    _P("phase_02_train_opt_lr_warmup", "train.warmup_steps", upstream={"lora": 0}),
    _P("phase_02_train_opt_lr_scheduler", "train.lr_scheduler", upstream={"lora": "cosine"}),
    _P("phase_02_train_opt_lr_scheduler_kwargs", "train.lr_scheduler_kwargs", JSON_TEXT),
    _P("phase_02_train_opt_max_seq_len", "data.max_seq_len", upstream={"lora": 8192}),
    _P("phase_02_train_opt_memory", "pipeline.memory"),
    _P("phase_02_train_opt_num_procs", "distributed.nproc_per_node", TEXT, default="auto",
       reason="one process per GPU of the worker (phase_02_train_man_gpu), as in the OpenShift AI pipelines"),
    _P("phase_02_train_opt_pull_secret", "pipeline.pull_secret"),
    _P("phase_02_train_opt_runtime", "pipeline.runtime"),
    _P("phase_02_train_opt_timeout", "pipeline.train_timeout"),
    _P("phase_02_train_opt_processed_data", "data.use_processed_dataset"),
    _P("phase_02_train_opt_unmask", "data.unmask_messages"),
    _P("phase_02_train_opt_save_epoch", "train.checkpoint_at_epoch", upstream={"lora": False}),
    _P("phase_02_train_opt_save_final", "train.save_final_checkpoint"),
    _P("phase_02_train_opt_save_full_state", "train.accelerate_full_state_at_epoch", default=False,
       reason="the OpenShift AI pipelines do not write full-state checkpoints unless asked"),
    _P("phase_02_train_opt_fsdp_sharding", "distributed.fsdp_sharding_strategy"),
    _P("phase_02_train_opt_save_samples", "train.save_samples"),
    _P("phase_02_train_opt_seed", "train.seed", also=("dataset",)),  # the dataset stage's split is seeded
    _P("phase_02_train_opt_use_liger", "train.use_liger", upstream={"osft": True, "lora": True}),
    _P("phase_02_train_opt_logging_steps", "train.logging_steps", upstream={"lora": 10}),
    _P("phase_02_train_opt_tensorboard_log_dir", "train.tensorboard_log_dir", EMPTY_NONE),
    _P("phase_02_train_opt_wandb_project", "train.wandb_project", EMPTY_NONE),
    _P("phase_02_train_opt_wandb_entity", "train.wandb_entity", EMPTY_NONE),
    _P("phase_02_train_opt_wandb_run_name", "train.wandb_run_name", EMPTY_NONE),
    _P("phase_02_train_opt_target_patterns", "osft.target_patterns", CSV),
    # LoRA: the upstream LoRA pipeline's names and defaults (Training Hub's lora_sft keywords)
    _P("phase_02_train_opt_lora_dropout", "lora.lora_dropout"),
    _P("phase_02_train_opt_lora_target_modules", "lora.target_modules", CSV),
    _P("phase_02_train_opt_lora_load_in_4bit", "lora.load_in_4bit", upstream={"lora": True}),
    _P("phase_02_train_opt_lora_load_in_8bit", "lora.load_in_8bit"),
    _P("phase_02_train_opt_lora_use_dora", "lora.use_dora"),
    _P("phase_02_train_opt_lora_use_rslora", "lora.use_rslora"),
    _P("phase_02_train_opt_lora_sample_packing", "lora.sample_packing", upstream={"lora": False}),
    _P("phase_02_train_opt_micro_batch_size", "lora.micro_batch_size", upstream={"lora": 2}),
    _P("phase_02_train_opt_grad_accum_steps", "lora.gradient_accumulation_steps", upstream={"lora": 1}),
    _P("phase_02_train_opt_bf16", "lora.bf16", upstream={"lora": True}),
    _P("phase_02_train_opt_fp16", "lora.fp16", upstream={"lora": False}),
    _P("phase_02_train_opt_tf32", "lora.tf32", upstream={"lora": True}),
    _P("phase_02_train_opt_flash_attention", "lora.flash_attention", upstream={"lora": True}),
    _P("phase_02_train_opt_enable_model_splitting", "lora.enable_model_splitting", upstream={"lora": False}),
    _P("phase_02_train_opt_save_steps", "lora.save_steps", upstream={"lora": 500}),
    _P("phase_02_train_opt_save_total_limit", "lora.save_total_limit", upstream={"lora": 3}),
    _P("phase_02_train_opt_eval_steps", "lora.eval_steps", upstream={"lora": 500}),
    _P("phase_02_train_opt_dataset_type", "lora.dataset_type", EMPTY_NONE),
    _P("phase_02_train_opt_field_messages", "lora.field_messages", EMPTY_NONE),
    _P("phase_02_train_opt_field_instruction", "lora.field_instruction", EMPTY_NONE),
    _P("phase_02_train_opt_field_input", "lora.field_input", EMPTY_NONE),
    _P("phase_02_train_opt_field_output", "lora.field_output", EMPTY_NONE),
    # -- stage 3: evaluation ---------------------------------------------------------------------------------
    _P("phase_03_eval_man_tasks", "eval.tasks", default=["arc_easy"],
       reason="the OpenShift AI pipelines evaluate arc_easy unless told otherwise",
       spelled=_SP("phase_03_eval_man_eval_tasks")),
    _P("phase_03_eval_opt_batch", "eval.batch_size", TEXT),
    _P("phase_03_eval_opt_gen_kwargs", "pipeline.eval_gen_kwargs"),
    _P("phase_03_eval_opt_limit", "eval.limit", NO_LIMIT),
    _P("phase_03_eval_opt_log_samples", "eval.log_samples", default=True,
       reason="the OpenShift AI pipelines log samples by default"),
    _P("phase_03_eval_opt_model_args", "pipeline.eval_model_args"),
    _P("phase_03_eval_opt_verbosity", "pipeline.eval_verbosity"),
    _P("phase_03_eval_opt_include_path", "eval.include_path", CSV),
    _P("phase_03_eval_opt_compare_base", "pipeline.compare_base"),
    # -- stage 4: registration -------------------------------------------------------------------------------
    _P("phase_04_registry_man_address", "registry.registry_address"),
    _P("phase_04_registry_man_author", "registry.registry_author", spelled=_SP("phase_04_registry_man_reg_author")),
    _P("phase_04_registry_man_name", "registry.registry_name",
       spelled={**_SP("phase_04_registry_man_reg_name"), "sft-minimal": "phase_04_registry_man_reg_name"}),
    _P("phase_04_registry_man_version", "registry.registry_version",
       spelled=_SP("phase_04_registry_man_reg_version")),
    _P("phase_04_registry_opt_description", "registry.registry_description"),
    _P("phase_04_registry_opt_format_name", "registry.registry_format_name"),
    _P("phase_04_registry_opt_format_version", "registry.registry_format_version",
       upstream={f"{a}-minimal": "2.9" for a in ("sft", "osft", "lora")}),
    _P("phase_04_registry_opt_port", "registry.registry_port"),
)
# What each upstream minimal flavour exposes (an algorithm not listed: its ``_man_`` parameters)
_MIN_COMMON = ("phase_01_dataset_man_data_split", DATA_URI, "phase_01_dataset_opt_subset",
               "phase_02_train_man_train_batch", "phase_02_train_man_epochs", "phase_02_train_man_gpu",
               "phase_02_train_man_model", "phase_02_train_man_tokens", "phase_02_train_opt_learning_rate",
               "phase_02_train_opt_max_seq_len", "phase_02_train_opt_runtime", "phase_02_train_opt_use_liger",
               "phase_03_eval_man_tasks", "phase_04_registry_man_address", "phase_04_registry_man_name",
               "phase_04_registry_man_version", "phase_04_registry_opt_format_version", "phase_04_registry_opt_port")
MINIMAL: dict[str, frozenset[str]] = {
    "sft": frozenset(_MIN_COMMON + ("phase_02_train_man_workers", "phase_02_train_opt_env_vars",
                                    "phase_02_train_opt_fsdp_sharding")),
    "osft": frozenset(_MIN_COMMON + ("phase_02_train_man_workers", "phase_02_train_man_unfreeze_rank_ratio")),
    "lora": frozenset(_MIN_COMMON + ("phase_02_train_man_lora_r", "phase_02_train_man_lora_alpha",
                                     "phase_02_train_opt_lora_dropout", "phase_02_train_opt_lora_target_modules",
                                     "phase_02_train_opt_lora_load_in_4bit", "phase_02_train_opt_lora_load_in_8bit")),
}
BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
BY_FIELD: dict[str, Param] = {p.field: p for p in PARAMS}

# Every other spelling hone accepts: each upstream pipeline's (OSFT's "train_" names...) and hone's earlier
# names for the LoRA parameters.
UPSTREAM_ALIASES: dict[str, str] = {
    **{spelling: p.name for p in PARAMS for spelling in p.spelled.values() if spelling != p.name},
    "phase_02_train_man_train_unfreeze_rank_ratio": "phase_02_train_man_unfreeze_rank_ratio",
    "phase_02_train_opt_load_in_4bit": "phase_02_train_opt_lora_load_in_4bit",
    "phase_02_train_opt_target_modules": "phase_02_train_opt_lora_target_modules",
}

#: every flavour of every algorithm in the table
FLAVOURS: tuple[str, ...] = tuple(f for spec in ALGORITHMS.values() for f in spec.flavours)


def flavours() -> tuple[str, ...]:
    """The flavours of the algorithms registered now (an algorithm added at run time included)."""
    return tuple(f for spec in ALGORITHMS.values() for f in spec.flavours)


def flavour_algorithm(flavour: str) -> str:
    """``osft-minimal`` -> ``osft``."""
    known = flavours()
    if flavour not in known:
        hint = suggest(flavour, known)
        raise HoneError(f"unknown pipeline flavour {flavour!r}" + (f": {hint}" if hint else ""), where="--flavor",
                        fix=f"use one of {', '.join(known)}")
    return flavour.removesuffix("-minimal")


def check_algorithm(algorithm: str, where: str = "--algorithm") -> str:
    """``algorithm`` if the table has it with pipeline flavours, else a :class:`HoneError`."""
    spec = get_algorithm(algorithm, where=where)
    if not spec.pipeline:
        raise HoneError(f"algorithm {algorithm!r} has no pipeline", where=where,
                        fix=f"use one of {', '.join(a for a, s in ALGORITHMS.items() if s.pipeline)}")
    return algorithm


def params_for(flavour: str) -> list[Param]:
    """The parameters a flavour exposes, in table order."""
    return [p for p in PARAMS if p.in_flavour(flavour)]


def defaults(algorithm: str, flavour: str | None = None) -> dict[str, Any]:
    """Every parameter of ``algorithm`` with its default: the local runner's, or a compiled flavour's."""
    return {p.name: p.default_for(algorithm, flavour) for p in PARAMS if algorithm in p.algorithms}


# -- checking values -----------------------------------------------------------------------------------------
_ADAPTERS: dict[str, TypeAdapter] = {}


def _adapter(p: Param) -> TypeAdapter:
    from typing import Annotated

    if p.field not in _ADAPTERS:
        _ADAPTERS[p.field] = TypeAdapter(Annotated[p.info.annotation, p.info])
    return _ADAPTERS[p.field]


def _shown(p: Param, value: Any) -> str:
    return "<redacted>" if p.name in SECRET_PARAMS else repr(value)


def _parse_text(p: Param, value: Any, where: str) -> Any:
    """A value given as text (CLI, YAML) or as its own type -> the parameter's KFP type."""
    t = p.type

    def bad(expected: str) -> HoneError:
        return HoneError(f"invalid value {_shown(p, value)} for {p.name}: expected {expected}", where=where,
                         fix=f"{p.name}: {p.help}")

    if value is None:
        raise bad(t.__name__)
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise bad("true or false")
    if t is int:
        if isinstance(value, bool):
            raise bad("an integer")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise bad("an integer") from None
    if t is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if t is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise bad('a JSON list, e.g. ["arc_easy"], or comma-separated names') from None
            else:
                value = [s.strip() for s in text.split(",") if s.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad("a list of names")
        return list(value)
    if t is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise bad('a JSON object, e.g. {"max_new_tokens": 64}') from None
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(value)
    if isinstance(value, (dict, list, bool)):
        raise bad("text")
    return str(value)


def check_value(p: Param, value: Any, where: str) -> Any:
    """``value`` parsed into the parameter's KFP type and validated by the schema field it stands for."""
    value = _parse_text(p, value, where)
    try:
        _adapter(p).validate_python(p.to_schema(value))
    except HoneError:
        raise
    except ValueError as err:  # the codec's (e.g. JSON text) or the schema's (a ValidationError)
        msg = err.errors()[0]["msg"] if isinstance(err, ValidationError) else str(err)
        raise HoneError(f"invalid value {_shown(p, value)} for {p.name}: {msg}", where=where,
                        fix=f"{p.name}: {p.help}") from None
    return value


def resolve(algorithm: str, given: Mapping[str, Any], origins: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Defaults of ``algorithm`` overlaid with ``given`` (upstream aliases accepted), each value checked
    against the schema; then the training parameters are checked together (e.g. tokens >= max_seq_len).

    Unknown names and names of another algorithm (e.g. an OSFT parameter in a LoRA run) are errors.
    """
    check_algorithm(algorithm)
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
        out[name] = check_value(p, value, where)
    if not out.get(DATA_URI):
        raise HoneError("no dataset given", where=DATA_URI, fix="pass --data URI (hf://, s3://, https://, pvc:// "
                        "or a local path)")
    training_config(algorithm, out, out[DATA_URI], "<pipeline run>")
    settings(out, PipelineConfig)
    settings(out, RegistryConfig)
    settings(out, EvalConfig, model_path="<tuned>", output_dir="<evaluation>", eval_data_path="<eval split>")
    return out


def section_values(algorithm: str | None, values: Mapping[str, Any], sections: tuple[str, ...],
                   stage: str | None = None) -> dict[str, Any]:
    """The schema values (``field -> value``) of the parameters of ``sections`` (and read by ``stage``)."""
    return {p.field_name: p.to_schema(values[p.name]) for p in PARAMS
            if p.section_name in sections and p.name in values
            and (algorithm is None or algorithm in p.algorithms) and (stage is None or stage in p.stages)}


def settings(values: Mapping[str, Any], schema: type[BaseModel], **more: Any) -> Any:
    """The pipeline parameters of one shared section as its schema object (e.g. :class:`PipelineConfig`),
    with ``more`` fields that are not pipeline parameters; errors name the pipeline parameters."""
    name = next(n for n, s in SHARED_SECTIONS.items() if s is schema)
    try:
        return schema(**section_values(None, values, (name,)), **more)
    except HoneError as err:
        raise in_pipeline_terms(err) from None
    except ValidationError as err:
        first = err.errors()[0]
        field_name = str(first["loc"][-1]) if first["loc"] else "?"
        p = BY_FIELD.get(f"{name}.{field_name}")
        raise HoneError(f"invalid value for {p.name if p else field_name}: {first['msg']}",
                        where="pipeline parameters", fix=p.help if p else "") from None


def training_params(algorithm: str, values: Mapping[str, Any], data_path: str, output_dir: str) -> dict[str, Any]:
    """The training stage's parameters as ``hone train`` names, training on the data at ``data_path``."""
    flat = section_values(algorithm, values, ("data", "train", "distributed", algorithm), stage="training")
    flat.update(data_path=data_path, ckpt_output_dir=output_dir)
    return flat


def training_config(algorithm: str, values: Mapping[str, Any], data_path: str, output_dir: str) -> RunConfig:
    """:func:`training_params` resolved by the schema (errors in pipeline terms)."""
    try:
        return RunConfig.from_flat(algorithm, training_params(algorithm, values, data_path, output_dir),
                                   source="pipeline parameters")
    except HoneError as err:
        raise in_pipeline_terms(err) from None


def stage_params(stage: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters ``stage`` reads (tokens redacted): what its cache key hashes."""
    return {k: v for k, v in public(values).items() if k in BY_NAME and stage in BY_NAME[k].stages}


def public(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as manifests, reports and logs may show them: token parameters redacted, URIs without
    credentials or signatures, secret-looking ``KEY=VALUE`` environment entries masked, token-shaped text
    masked."""
    from hone.secrets import is_secret_env, redact_uri, scrub_text

    def shown(name: str, value: Any) -> Any:
        if name in SECRET_PARAMS:
            return "<redacted>" if value else value
        if not isinstance(value, str) or not value:
            return value
        if name == "phase_02_train_opt_env_vars":
            return ",".join(f"{k}=***" if sep and is_secret_env(k.strip()) else f"{k}{sep}{v}"
                            for k, sep, v in (part.partition("=") for part in value.split(",")))
        return scrub_text(redact_uri(value))

    return {k: shown(k, v) for k, v in values.items()}


def _spellings(p: Param) -> list[str]:
    """How the schema field of ``p`` may appear in a message from the library: its CLI flag, its name quoted,
    and its bare name when that cannot be an ordinary word (it has an underscore)."""
    name = p.field_name
    out = [EvalConfig.flag(name) if p.schema is EvalConfig else f"--{name.replace('_', '-')}", f"'{name}'"]
    return out + ([name] if "_" in name else [])


def in_pipeline_terms(err: HoneError) -> HoneError:
    """``err`` with schema names and CLI flags replaced by the pipeline parameters the user sets."""
    table: dict[str, str] = {"--base": "phase_02_train_man_model"}
    for p in PARAMS:
        for spelling in _spellings(p):
            table.setdefault(spelling, p.name)
    pattern = re.compile("|".join(rf"(?<![\w-]){re.escape(s)}(?![\w-])" for s in sorted(table, key=len,
                                                                                          reverse=True)))

    def swap(text: str | None) -> str | None:
        return pattern.sub(lambda m: table[m.group(0)], text) if text else text

    return HoneError(swap(err.what) or err.what, where=swap(err.where), fix=swap(err.fix))


def markdown_table() -> str:
    """Every parameter of every pipeline algorithm: type, default per algorithm, stage, minimal, the schema
    field it sets (the ``hone train`` option, or a pipeline-only setting) and its help (docs/pipeline.md)."""
    algorithms = [a for a, spec in ALGORITHMS.items() if spec.pipeline]
    lines = [f"| parameter | type | default ({' / '.join(algorithms)}) | stage | in minimal | sets | description |",
             "|---|---|---|---|---|---|---|"]
    for p in PARAMS:
        shown = [repr(p.default_for(a)) if a in p.algorithms else None for a in algorithms]
        present = [d for d in shown if d is not None]
        if p.name == DATA_URI:
            default = "required"
        elif len(set(present)) == 1 and len(present) == len(shown):
            default = f"`{present[0]}`"
        else:
            default = " / ".join("—" if d is None else f"`{d}`" for d in shown)
        sets = f"pipeline setting `{p.field_name}`" if p.section_name == "pipeline" else f"`{p.field_name}`"
        if p.codec is not PLAIN:
            sets += f" ({p.codec.name})"
        help_text = p.help.replace("|", "\\|") + (f" Pipeline default: {p.reason}." if p.reason else "")
        others = sorted({k for k, v in UPSTREAM_ALIASES.items() if v == p.name})
        shown_name = f"`{p.name}`" + (f" (also {', '.join(f'`{o}`' for o in others)})" if others else "")
        minimal = "/".join(a for a in algorithms if p.in_flavour(f"{a}-minimal"))
        lines.append(f"| {shown_name} | {p.type.__name__} | {default} | {p.stage} | {minimal} "
                     f"| {sets} | {help_text} |")
    return "\n".join(lines)

def flavour_table() -> str:
    """The compiled pipelines' parameters (docs/kfp.md): each flavour's spelling and default, ``—`` where a
    flavour does not expose the parameter (a minimal flavour compiles it in as that default)."""
    shown_flavours = flavours()
    lines = ["| parameter | " + " | ".join(f"`{f}`" for f in shown_flavours) + " |",
             "|---|" + "---|" * len(shown_flavours)]
    for p in PARAMS:
        cells = []
        for f in shown_flavours:
            if not p.in_flavour(f):
                cells.append("—")
                continue
            value = "required" if p.name == DATA_URI else f"`{p.default_for(flavour_algorithm(f), f)!r}`"
            cells.append(value.replace("|", "\\|"))
        if all(c == "—" for c in cells):
            continue
        other = sorted({p.name_for(f) for f in shown_flavours if p.in_flavour(f)} - {p.name})
        name = f"`{p.name}`" + "".join(f"<br>`{o}`" for o in other)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
