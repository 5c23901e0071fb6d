"""LoRA and QLoRA through peft, on the one trainer.

The base model is frozen and peft adds low-rank adapters to chosen modules (by default every linear projection
inside the transformer blocks, found from the model's modules). ``load_in_4bit`` / ``load_in_8bit`` load the base
through bitsandbytes (QLoRA); that needs a CUDA GPU and bitsandbytes, checked before any weights are loaded.

Each checkpoint ``hf_format/<name>`` is written twice, atomically:

- ``<name>_adapter/``: the adapter in peft format (``PeftModel.from_pretrained(base, dir)``) with the tokenizer;
- ``<name>/``: the merged full model (plain transformers) with the tokenizer, unless ``save_merged`` is False.

The merged model is built on the CPU from the base weights on disk plus a copy of the adapter: the model being
trained is never merged, moved or re-seeded, so training after an epoch checkpoint goes on bit for bit as if
no checkpoint had been written.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hone.config import LoRAConfig
from hone.errors import HoneError
from hone.io import atomic_dir
from hone.layout import adapter_dir
from hone.logs import harmless_warnings
from hone.models.structure import linear_layers, linear_types, plain_class, transformer_blocks
from hone.training.hooks import AlgorithmHooks

# init_lora_weights values that leave the base weights untouched and need no extra data pass. PiSSA, OLoRA and
# CorDA rewrite the base weights (the saved adapter would then not apply to the original base); EVA, LoftQ and
# LoRA-GA need a preparation step of their own.
SUPPORTED_INITS = (True, False, "gaussian", "orthogonal")
# Entries of target_modules that mean "the default" (peft's spelling is accepted too).
DEFAULT_TARGET_WORDS = ("all-linear", "all_linear")
# A module of a vision-language model belongs to the vision side when a part of its name holds one of these
# (vision_tower, vision_model, visual, image_encoder, ...), as Unsloth's finetune_vision_layers selects them.
VISION_WORDS = ("vision", "visual", "image")

log = logging.getLogger("hone")


def is_vision_language(model: nn.Module) -> bool:
    """Training Hub's test: a *ForConditionalGeneration architecture (not *ForCausalLM), else a vision_config."""
    config = getattr(model, "config", None)
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForConditionalGeneration") for a in archs):
        return True
    if any(a.endswith("ForCausalLM") for a in archs):
        return False
    return getattr(config, "vision_config", None) is not None


def is_vision_module(name: str) -> bool:
    return any(w in part for part in name.split(".") for w in VISION_WORDS)


def _matches(module_name: str, entry: str) -> bool:
    """peft's rule for a list entry of target_modules: the module's full name or its dotted suffix."""
    return module_name == entry or module_name.endswith("." + entry)


def default_target_modules(model: nn.Module) -> list[str]:
    """Every linear projection inside the transformer blocks.

    Returns the projections' short names (``q_proj``, ``k_proj``, ... in model order) when those names pick out
    exactly those modules; if a short name also names a linear layer outside the blocks (e.g. in a vision tower
    or a head), the full module names are returned instead so that nothing outside the blocks is adapted.
    """
    if not transformer_blocks(model):
        raise HoneError(f"cannot find the transformer blocks of {type(model).__name__}",
                        where="parameter target_modules",
                        fix="name the modules to adapt with target_modules (e.g. q_proj v_proj)")
    inside = linear_layers(model)
    linear, chosen = linear_types(), set(inside)
    outside = [n for n, m in model.named_modules() if isinstance(m, linear) and n not in chosen]
    if not inside:
        raise HoneError(f"the transformer blocks of {type(model).__name__} hold no linear layer",
                        where="parameter target_modules", fix="name the modules to adapt with target_modules")
    short = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in inside))
    if any(_matches(n, s) for n in outside for s in short):
        return inside
    return short


class LoRAHooks(AlgorithmHooks):
    """Adapters through peft; the base stays frozen (and quantized with QLoRA)."""

    name = "lora"

    @classmethod
    def from_config(cls, cfg: Any) -> "LoRAHooks":
        hooks = cls(cfg.lora, device=cfg.train.device)
        hooks.model_path = cfg.train.model_path  # target_modules are checked against it before anything runs
        return hooks

    def __init__(self, cfg: LoRAConfig | None = None, *, device: str = "auto"):
        self.cfg = cfg or LoRAConfig()
        self.device = device  # the run's device setting (tf32 and model splitting need CUDA)
        self.target_modules: list[str] | None = None
        self._base_dtype: torch.dtype | None = None
        self.model_path: str | None = None

    # -- before loading --------------------------------------------------------------------------------------
    @property
    def quantization(self) -> str | None:
        return "4bit" if self.cfg.load_in_4bit else "8bit" if self.cfg.load_in_8bit else None

    def validate(self) -> None:
        c = self.cfg
        if importlib.util.find_spec("peft") is None:
            raise HoneError("LoRA needs the peft package, which is not installed", where="algorithm lora",
                            fix="pip install 'hone[lora]'")
        if c.load_in_4bit and c.load_in_8bit:
            raise HoneError("load_in_4bit and load_in_8bit are both set", where="parameters load_in_4bit and "
                            "load_in_8bit", fix="choose one: load_in_4bit (QLoRA, least memory) or load_in_8bit")
        if c.init_lora_weights not in SUPPORTED_INITS:
            raise HoneError(
                f"init_lora_weights={c.init_lora_weights!r} is not supported",
                where="parameter init_lora_weights",
                fix="use true (default), false, gaussian or orthogonal; pissa/olora/corda rewrite the base weights "
                    "and eva/loftq/lora_ga need a preparation pass, which hone does not run")
        if c.init_lora_weights == "orthogonal" and c.lora_r % 2:
            raise HoneError(f"init_lora_weights='orthogonal' needs an even lora_r (got {c.lora_r})",
                            where="parameters init_lora_weights and lora_r", fix="use an even lora_r")
        if self.quantization:
            flag = f"load_in_{self.quantization}"
            missing = []
            if not torch.cuda.is_available():
                missing.append("no CUDA GPU is available")
            if importlib.util.find_spec("bitsandbytes") is None:
                missing.append("the bitsandbytes package is not installed")
            if missing:
                raise HoneError(
                    f"{flag} quantizes the base model with bitsandbytes, which needs a CUDA GPU; here "
                    + " and ".join(missing),
                    where=f"parameter {flag}",
                    fix=f"run on a machine with an NVIDIA GPU and `pip install bitsandbytes`, or drop {flag} to "
                        "train plain LoRA on an unquantized base")
        cuda = torch.cuda.is_available() and not self.device.startswith("cpu")
        if c.tf32 and not cuda:  # Training Hub accepts it anywhere (its backend never reads it): say it, go on
            log.info("tf32=True: TensorFloat-32 is a matmul mode of NVIDIA GPUs; on the CPU it changes nothing")
        if c.enable_model_splitting and (not cuda or torch.cuda.device_count() < 2):
            raise HoneError(f"enable_model_splitting spreads the model over several GPUs; this machine has "
                            f"{torch.cuda.device_count() if cuda else 0} usable", where="parameter "
                            "enable_model_splitting", fix="drop enable_model_splitting, or run on a machine with "
                            "2 or more CUDA GPUs (or use load_in_4bit to fit one GPU)")
        try:
            self.lora_config(["q_proj"])  # peft's own checks of r, alpha, dropout, DoRA, init...
        except (ValueError, TypeError) as err:
            raise HoneError(f"peft rejects the LoRA parameters: {err}", where="LoRA parameters",
                            fix="correct the parameter named in the message") from None
        given = c.target_modules
        if given and not all(t.lower() in DEFAULT_TARGET_WORDS for t in given) and self.model_path \
                and (Path(self.model_path).expanduser() / "config.json").is_file():
            from hone.models.load import meta_model

            model = meta_model(Path(self.model_path).expanduser())  # shapes only: no weights are read
            if model is not None:
                self.resolve_target_modules(model)  # names matching no module fail now, before any output

    def load_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = self.quantization_kwargs()
        if self.cfg.flash_attention:
            if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
                out["attn_implementation"] = "flash_attention_2"
            else:  # Training Hub trains on without flash-attn too (Unsloth picks its own attention)
                log.warning("flash_attention=True: FlashAttention-2 needs a CUDA GPU and the flash-attn package "
                            "(pip install flash-attn); training with hone's per-sample SDPA instead, which "
                            "likewise attends within each packed sample only")
        if self.cfg.enable_model_splitting:
            out["device_map"] = "balanced"  # one copy of the model spread over every visible GPU
        return out

    def quantization_kwargs(self) -> dict[str, Any]:
        if not self.quantization:
            return {}
        from transformers import BitsAndBytesConfig

        if self.cfg.load_in_4bit:
            q = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=self.cfg.bnb_4bit_quant_type,
                bnb_4bit_compute_dtype=getattr(torch, self.cfg.bnb_4bit_compute_dtype),
                bnb_4bit_use_double_quant=self.cfg.bnb_4bit_use_double_quant)
        else:
            q = BitsAndBytesConfig(load_in_8bit=True)
        return {"quantization_config": q, "device_map": {"": torch.cuda.current_device()}}

    def lora_config(self, target_modules: list[str]):
        from peft import LoraConfig, TaskType

        c = self.cfg
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
            target_modules=list(target_modules), use_rslora=c.use_rslora, use_dora=c.use_dora,
            init_lora_weights=c.init_lora_weights, bias="none",
            rank_pattern=dict(c.rank_pattern or {}), alpha_pattern=dict(c.alpha_pattern or {}),
        )

    # -- after loading ---------------------------------------------------------------------------------------
    def resolve_target_modules(self, model: nn.Module) -> list[str]:
        """The target_modules to give peft: the default or the user's list (every entry checked), and on a
        vision-language model only the sides that finetune_language_layers / finetune_vision_layers choose."""
        c = self.cfg
        if not is_vision_language(model):
            if c.finetune_vision_layers or c.finetune_language_layers is False:
                flag = "finetune_vision_layers=True" if c.finetune_vision_layers else "finetune_language_layers=False"
                raise HoneError(f"{flag}, but {type(model).__name__} is a text-only model: it has no vision layers, "
                                "and its language layers are all it has", where=f"parameter {flag.split('=')[0]}",
                                fix=f"drop {flag.split('=')[0]} (it applies to vision-language models)")
            return self._targets(model)
        vision, language = bool(c.finetune_vision_layers), c.finetune_language_layers is not False
        if not (vision or language):
            raise HoneError("finetune_vision_layers and finetune_language_layers are both off: nothing to adapt",
                            where="parameters finetune_vision_layers and finetune_language_layers",
                            fix="turn one of them on")
        linear = linear_types()
        if c.target_modules and not all(t.lower() in DEFAULT_TARGET_WORDS for t in c.target_modules):
            chosen = self._targets(model)
            names = [n for n, m in model.named_modules() if isinstance(m, linear) and any(_matches(n, t) for t in chosen)]
        else:
            names = [n for n, m in model.named_modules() if isinstance(m, linear)]
            names = [n for n in names if is_vision_module(n)] + linear_layers(model)
        names = list(dict.fromkeys(n for n in names if (vision if is_vision_module(n) else language)))
        if not names:
            raise HoneError(f"no linear layer of {type(model).__name__} is on the chosen side (vision: {vision}, "
                            f"language: {language})", where="parameters finetune_vision_layers, "
                            "finetune_language_layers and target_modules", fix="choose other modules or sides")
        return names

    def _targets(self, model: nn.Module) -> list[str]:
        given = self.cfg.target_modules
        if not given or all(t.lower() in DEFAULT_TARGET_WORDS for t in given):
            return default_target_modules(model)
        names = [n for n, _ in model.named_modules() if n]
        unmatched = [t for t in given if not any(_matches(n, t) for n in names)]
        if unmatched:
            try:
                hint = ", ".join(default_target_modules(model))
            except HoneError:
                hint = ", ".join(sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                                         if isinstance(m, linear_types())}))
            raise HoneError(
                f"target_modules {', '.join(repr(t) for t in unmatched)} "
                f"match{'es' if len(unmatched) == 1 else ''} no module of {type(model).__name__}",
                where="parameter target_modules",
                fix=f"use module names of this model, e.g. {hint} (or leave target_modules unset for all of them)")
        return list(given)

    def prepare_model(self, model: nn.Module, *, data=None, device: torch.device | None = None) -> nn.Module:
        from peft import get_peft_model, prepare_model_for_kbit_training

        self._base_dtype = model.dtype
        if self.cfg.tf32 is not None and device is not None and device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.cfg.tf32
        targets = self.resolve_target_modules(model)
        if self.quantization:
            if device is not None and device.type != "cuda":
                raise HoneError(f"load_in_{self.quantization} needs the model on a CUDA device, not {device}",
                                where="parameter device", fix="use device=auto or cuda")
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            with harmless_warnings():  # transformers' is_gradient_checkpointing deprecation, read by peft
                peft_model = get_peft_model(model, self.lora_config(targets))
        except ValueError as err:
            raise HoneError(f"peft could not add the adapters: {err}", where="LoRA parameters "
                            "(target_modules, lora_r, init_lora_weights, ...)",
                            fix="adapt linear layers only, and check the value named in the message") from None
        self.target_modules = sorted(peft_model.peft_config["default"].target_modules)
        self._check_patterns(peft_model)
        return peft_model

    def _check_patterns(self, model: nn.Module) -> None:
        """Every rank_pattern / alpha_pattern key must match an adapted module (peft's rule), or it did nothing."""
        from peft.tuners.lora import LoraLayer

        adapted = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
        for name in ("rank_pattern", "alpha_pattern"):
            for key in getattr(self.cfg, name) or {}:
                if not any(re.match(rf"(.*\.)?({key})$", n) for n in adapted):
                    raise HoneError(f"{name} key {key!r} matches no adapted module", where=f"parameter {name}",
                                    fix=f"use names of adapted modules, e.g. {', '.join(self.target_modules[:4])}")

    def describe(self, model: nn.Module) -> dict[str, Any]:
        if not hasattr(model, "get_nb_trainable_parameters"):
            return super().describe(model)
        trainable, total = model.get_nb_trainable_parameters()  # counts 4-bit weights as unpacked parameters
        return {
            "trainable_parameters": trainable, "total_parameters": total,
            "trainable_percent": round(100.0 * trainable / total, 4) if total else 0.0,
            "lora_r": self.cfg.lora_r, "lora_alpha": self.cfg.lora_alpha, "target_modules": self.target_modules,
            "use_rslora": self.cfg.use_rslora, "use_dora": self.cfg.use_dora, "quantization": self.quantization,
        }

    # -- saving ----------------------------------------------------------------------------------------------
    def export_model(self, model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """The merged plain transformers model, on the CPU, built without touching ``model``.

        The base weights are read again from where the model came from (they are frozen, so they equal the
        training model's; with QLoRA they are the unquantized originals), a copy of the adapter is loaded onto
        them and peft merges it. ``state_dict``: the whole model's state gathered from every rank (sharded
        training), where the adapter weights are taken from.
        """
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        from hone.models.load import quiet_transformers

        quiet_transformers()
        base = model.get_base_model()
        source = getattr(base, "name_or_path", None) or getattr(base.config, "_name_or_path", None)
        if not source:
            raise HoneError("cannot build the merged model: the base model was not loaded from a directory or hub id",
                            where="parameter save_merged", fix="set save_merged=False to write the adapter only")
        adapter_state = {k: v.detach().to("cpu", copy=True)
                         for k, v in get_peft_model_state_dict(model, state_dict=state_dict).items()}
        config = copy.deepcopy(model.peft_config["default"])
        config.inference_mode = True
        # Building the copy initialises fresh adapter weights (then overwritten): keep the global RNG of the
        # training untouched so that dropout and everything after this checkpoint stays as it was.
        with torch.random.fork_rng(devices=[]):
            fresh = plain_class(base).from_pretrained(source, dtype=self._base_dtype or base.dtype,
                                                       use_safetensors=True)
            fresh.eval()
            with harmless_warnings():
                wrapped = get_peft_model(fresh, config)
        result = set_peft_model_state_dict(wrapped, adapter_state)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"adapter copy does not fit the reloaded base: missing {missing[:3]}, "
                               f"unexpected {list(result.unexpected_keys)[:3]}")
        return wrapped.merge_and_unload()

    def save_adapter(self, model: nn.Module, tokenizer, dest: Path,
                     state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """The adapter in peft format, with the tokenizer, written atomically."""
        with atomic_dir(dest) as tmp:
            if state_dict is None:
                model.save_pretrained(tmp, safe_serialization=True)
            else:  # sharded training: the adapter is taken from the gathered whole state, not the local shard
                model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        return dest

    def save(self, model: nn.Module, tokenizer, hf_root: Path, name: str,
             state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """``hf_root/<name>_adapter`` (peft) and, unless save_merged is off, ``hf_root/<name>`` (merged).

        Returns the merged model's directory, or the adapter's when no merged model is written.
        """
        from hone.models.save import save_hf_dir

        adapter = self.save_adapter(model, tokenizer, adapter_dir(hf_root, name), state_dict=state_dict)
        if not self.cfg.save_merged:
            return adapter
        merged = self.export_model(model, state_dict=state_dict)
        try:
            return save_hf_dir(merged, tokenizer, Path(hf_root) / name)
        finally:
            del merged
