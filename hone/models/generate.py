"""Talk to a model: find it (any hone output), load it, render a conversation with its chat template, and stream
the reply token by token. ``hone chat`` and ``hone generate`` are thin skins over this module.

What :func:`locate` accepts, in order:

- ``oci://registry/repo:tag`` — pulled (:mod:`hone.models.oci`), then treated as the directory it becomes;
- a LoRA adapter directory (``adapter_config.json``) — loaded on its base: ``base`` when given, else the
  adapter's ``base_model_name_or_path``; the base may itself be any of these forms except an adapter;
- a model directory (``config.json``);
- a training output directory — its ``hf_format/final`` model, else its ``hf_format/final_adapter``;
- a local pipeline run directory — its training stage's model;
- a Hugging Face hub id (needs the hub, or the model in the local cache).
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hone.errors import HoneError
from hone.layout import STAGE_FILE, PipelineLayout, TrainingLayout

log = logging.getLogger("hone")

ADAPTER_CONFIG = "adapter_config.json"
_WHERE = "MODEL"


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are: ``model`` (a directory or hub id) and, for a LoRA adapter, the adapter directory
    (``model`` is then its base)."""

    model: str
    adapter: Path | None = None
    given: str = ""

    def describe(self) -> str:
        return f"adapter {self.adapter} on {self.model}" if self.adapter else self.model


def locate(model: str, *, base: str | None = None) -> ModelSource:
    """Find the weights behind ``model`` (see the module docstring); raise a HoneError saying what to pass."""
    if not model:
        raise HoneError("no model given", where=_WHERE, fix="pass a model directory, a training output directory, "
                        "a LoRA adapter directory, an oci:// reference or a hub id")
    found = _locate(model, where=_WHERE)
    if base is not None and found.adapter is None:
        raise HoneError(f"--base was given but {model} is not a LoRA adapter (no {ADAPTER_CONFIG})", where="--base",
                        fix="leave out --base for a full model, or point MODEL at the adapter directory")
    if found.adapter is None:
        return found
    base_ref = base or _adapter_base(found.adapter)
    base_found = _locate(base_ref, where="--base" if base else f"base model of the adapter {found.adapter}")
    if base_found.adapter is not None:
        raise HoneError(f"the base {base_ref} is itself a LoRA adapter", where="--base",
                        fix="pass the full model the adapter was trained on")
    return ModelSource(base_found.model, found.adapter, model)


def _locate(ref: str, *, where: str) -> ModelSource:
    from hone.models.load import resolve_model_path

    path = ref
    if ref.startswith("oci://"):
        from hone.models.oci import pull_model

        path = str(pull_model(ref))
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / ADAPTER_CONFIG).is_file():
            return ModelSource(str(p), p, ref)
        if (p / "config.json").is_file():
            return ModelSource(str(p), None, ref)
        run = TrainingLayout(p)
        if (run.final_model / "config.json").is_file():
            log.info("%s is a training output directory: using its final model %s", ref, run.final_model)
            return ModelSource(str(run.final_model), None, ref)
        if (run.final_adapter / ADAPTER_CONFIG).is_file():
            log.info("%s is a training output directory: using its final adapter %s", ref, run.final_adapter)
            return ModelSource(str(run.final_adapter), run.final_adapter, ref)
        stage = PipelineLayout(p).stage_file("training")
        if stage.is_file():
            try:
                rel = json.loads(stage.read_text(encoding="utf-8"))["files"]["model"]
            except (OSError, ValueError, KeyError, TypeError):
                rel = None
            if rel:
                log.info("%s is a pipeline run: using its trained model", ref)
                return _locate(str(stage.parent / rel), where=where)
        raise HoneError(f"{ref} holds no model: no config.json (a model), {ADAPTER_CONFIG} (a LoRA adapter), "
                        f"hf_format/final (a training output) or a training stage (a pipeline run)", where=where,
                        fix="point at a model directory, a LoRA adapter directory or a hone training output directory")
    try:
        return ModelSource(resolve_model_path(path), None, ref)
    except HoneError as err:
        raise HoneError(err.what, where=where, fix=err.fix) from None


def _adapter_base(adapter: Path) -> str:
    try:
        cfg = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HoneError(f"cannot read {adapter / ADAPTER_CONFIG}: {err}", where=_WHERE,
                        fix="point at a LoRA adapter directory written by hone or peft") from None
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not base:
        raise HoneError(f"the adapter {adapter} does not name its base model (no base_model_name_or_path in "
                        f"{ADAPTER_CONFIG})", where=_WHERE, fix="pass the base model with --base")
    return str(base)


@dataclass
class Generator:
    """A loaded model and tokenizer that turn a conversation into a streamed reply."""

    model: Any
    tokenizer: Any
    source: ModelSource
    device: Any
    max_positions: int | None = None
    has_template: bool = True
    eos_token_ids: list[int] = field(default_factory=list)

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation as the model's chat template renders it, ready for the assistant's reply."""
        if not self.has_template:
            text = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant" or m["content"])
            return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"]
        except Exception as err:  # noqa: BLE001 - a template that rejects the conversation (e.g. a system turn)
            raise HoneError(f"the model's chat template cannot render this conversation: {err}", where="--system"
                            if any(m["role"] == "system" for m in messages) else _WHERE,
                            fix="leave out --system if the template takes no system turn") from None
        return list(ids)

    def fit(self, messages: list[dict[str, str]], max_new_tokens: int) -> tuple[list[dict[str, str]], list[int]]:
        """Drop the oldest turns (never the system prompt or the last user turn) until the prompt and the reply
        fit the model's context; returns the kept messages and the prompt's token ids."""
        kept = list(messages)
        while True:
            ids = self.render(kept)
            if self.max_positions is None or len(ids) + max_new_tokens <= self.max_positions:
                return kept, ids
            first = 1 if kept and kept[0]["role"] == "system" else 0
            if len(kept) - first <= 1:
                raise HoneError(f"the prompt is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} it does "
                                f"not fit the model's context of {self.max_positions} tokens",
                                where="prompt", fix="shorten the prompt or lower --max-new-tokens")
            del kept[first:first + (2 if len(kept) - first > 2 else 1)]  # the oldest exchange

    def generate(self, messages: list[dict[str, str]], *, max_new_tokens: int = 256, temperature: float = 0.7,
                 top_p: float | None = None, on_text: Callable[[str], None] | None = None) -> str:
        """Generate the assistant's reply to ``messages``; ``on_text`` receives the text as it is decoded (whole
        words, as transformers' streamer releases them). ``temperature`` 0 is greedy decoding."""
        import torch

        _, ids = self.fit(messages, max_new_tokens)
        streamer = _Streamer(self.tokenizer, on_text) if on_text else None
        sample = temperature > 0
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sample, use_cache=True,
                                      pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id
                                      is not None else (self.eos_token_ids or [None])[0])
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p if top_p is not None else 1.0, top_k=None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.eos_token_ids:
            kwargs["eos_token_id"] = self.eos_token_ids
        input_ids = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      streamer=streamer, **kwargs)
        return self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def _Streamer(tokenizer: Any, on_text: Callable[[str], None]):
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def load_generator(model: str, *, base: str | None = None, device: str = "auto", dtype: str = "auto",
                   trust_remote_code: bool = False) -> Generator:
    """Locate and load ``model`` (and its base, for a LoRA adapter) for generation."""
    from hone.models.load import load_model, load_tokenizer, resolve_device, resolve_dtype

    source = locate(model, base=base)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tok_src = str(source.adapter) if source.adapter and _has_tokenizer(source.adapter) else source.model
    tokenizer = load_tokenizer(tok_src, trust_remote_code=trust_remote_code)
    net = load_model(source.model, dtype=dt, device=dev, trust_remote_code=trust_remote_code)
    if source.adapter is not None:
        net = _apply_adapter(net, source.adapter)
    net.eval()
    net.config.use_cache = True  # load_model turns the cache off for packed training; generation wants it
    eos = set()
    for value in (tokenizer.eos_token_id, getattr(net.generation_config, "eos_token_id", None)):
        eos.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    limit = getattr(net.config, "max_position_embeddings", None)
    return Generator(net, tokenizer, source, dev, max_positions=limit if isinstance(limit, int) else None,
                     has_template=bool(getattr(tokenizer, "chat_template", None)), eos_token_ids=sorted(eos))


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _apply_adapter(base_model: Any, adapter: Path) -> Any:
    try:
        from peft import PeftModel
    except ImportError:
        raise HoneError("loading a LoRA adapter needs peft", where=_WHERE, fix="pip install peft") from None
    try:
        with warnings.catch_warnings():  # peft calls transformers' deprecated names: noise for the user
            warnings.simplefilter("ignore", FutureWarning)
            return PeftModel.from_pretrained(base_model, str(adapter)).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise HoneError(f"cannot apply the adapter {adapter} to its base: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}", where=_WHERE,
                        fix="pass the base model the adapter was trained on with --base") from None
