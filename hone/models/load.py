"""Load a base model and its tokenizer: a local Hugging Face directory or a hub id (safetensors only)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from hone.errors import HoneError, suggest

log = logging.getLogger("hone")


def quiet_transformers() -> None:
    """Silence transformers' own progress bars (hone shows its own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model_path(model_path: str) -> str:
    """Return a local directory or a hub id; raise a clear error for a local path that does not exist."""
    if model_path.startswith("oci://"):
        from hone.models.oci import pull_model  # ModelCar image -> cached local directory

        model_path = str(pull_model(model_path))
    if not str(model_path).strip():
        raise HoneError("model_path is empty", where="model_path",
                        fix="pass a model directory or a Hugging Face hub id (CLI: --model)")
    p = Path(model_path).expanduser()
    if p.is_symlink() and not p.exists():
        raise HoneError(f"model path {model_path} is a symbolic link that leads nowhere (its target is missing, or "
                        "the links form a loop)", where="model_path",
                        fix=f"point the link at the model directory (ls -l {p}), or pass the directory itself")
    if p.is_dir():
        if not (p / "config.json").is_file():
            try:
                empty = not any(p.iterdir())
            except PermissionError:
                raise HoneError(f"model directory {p} cannot be read (permission denied)", where="model_path",
                                fix="make it readable by this user (chmod -R u+rX)") from None
            if (p / "adapter_config.json").is_file():
                raise HoneError(f"{p} is a LoRA adapter, not a full model (adapter_config.json, no config.json)",
                                where="model_path", fix="pass its base model (base_model_name_or_path in "
                                "adapter_config.json), or the merged model that hone lora writes to hf_format/final")
            raise HoneError(f"{p} is {'an empty directory' if empty else 'not a Hugging Face model directory'} "
                            "(no config.json)", where="model_path",
                            fix="point model_path at a directory written by save_pretrained (config.json, "
                                "model.safetensors, the tokenizer files)")
        return str(p)
    if p.is_file():
        raise HoneError(f"model_path points at a file, not a model directory: {p}", where="model_path",
                        fix=f"pass the directory that holds config.json, the weights and the tokenizer (e.g. "
                            f"{p.parent})")
    if p.exists() or model_path.startswith((".", "/", "~")) or not _HUB_ID.match(model_path):
        raise HoneError(f"model path does not exist: {model_path}", where="model_path",
                        fix="pass an existing model directory or a Hugging Face hub id such as Qwen/Qwen2.5-1.5B-Instruct")
    return model_path


def _hub_error(model_path: str, err: Exception) -> HoneError:
    local = Path(model_path).expanduser()
    if local.is_dir():  # a local directory transformers could not read: never a hub question
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return HoneError(f"cannot load the model directory {model_path}: {first}", where="model_path",
                         fix="check the directory's files (config.json, model.safetensors, tokenizer.json, "
                             "tokenizer_config.json): save it again with save_pretrained if one is missing or broken")
    return HoneError(f"cannot load {model_path!r}: not a local directory and the Hugging Face hub gave: "
                     f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                     where="model_path",
                     fix="pass a local model directory (offline machines cannot download hub ids), or set HF_TOKEN "
                         "for a gated model")


def load_tokenizer(model_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    src = resolve_model_path(model_path)
    if Path(src).is_dir():
        check_config(src, model_type=False)
        tok_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        if not any((Path(src) / f).is_file() for f in tok_files):
            raise HoneError(f"{src} holds no tokenizer (none of {', '.join(tok_files)})", where="model_path",
                            fix="copy the tokenizer files of the base model into the directory (or save the "
                                "tokenizer with tokenizer.save_pretrained)")
    try:
        return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise _hub_error(model_path, err) from None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HoneError(f"invalid device {device!r}", where="parameter device", fix="use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HoneError("device is cuda but no GPU is available", where="parameter device", fix="use device=auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HoneError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 to "
                        f"cuda:{torch.cuda.device_count() - 1})", where="parameter device", fix="use cuda or a listed index")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise HoneError("device is mps but this machine has no Apple Metal (MPS) GPU", where="parameter device",
                            fix="use device=auto, cpu or (with an NVIDIA GPU) cuda")
    elif dev.type not in ("cpu", "cuda"):
        raise HoneError(f"device {device!r} is not supported", where="parameter device", fix="use auto, cpu, cuda, cuda:N or mps")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_model(model_path: str, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               trust_remote_code: bool = False, attn_implementation: str | None = "sdpa", training: bool = False,
               **kwargs):
    """Load a causal LM from safetensors weights, ready for padding-free training (``use_cache=False``).

    ``training=True`` (hone's trainer) picks the attention for packed rows: the ``HONE_ATTN_IMPLEMENTATION``
    environment variable when set, else per-sample SDPA (:mod:`hone.models.attention`) when the model is on
    ``sdpa`` and its architecture is supported. Evaluation and generation load with ``training=False`` and keep
    ``attn_implementation`` as given.
    """
    from transformers import AutoModelForCausalLM

    from hone.models import attention

    quiet_transformers()
    src = resolve_model_path(model_path)
    if Path(src).is_dir():
        check_model_dir(src, trust_remote_code=trust_remote_code)
    if training and (requested := attention.requested_implementation()):
        attn_implementation = requested
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, **kwargs,
        )
    except (OSError, ValueError) as err:
        raise _hub_error(model_path, err) from None
    except RuntimeError as err:  # e.g. "size mismatch for ...": the config does not describe these weights
        if not Path(src).is_dir():
            raise
        first = str(err).strip().splitlines()
        raise HoneError(f"the weights in {src} do not load into the model config.json describes: "
                        f"{' '.join(first[:3])[:400]}", where=f"{src}/config.json",
                        fix="use the config.json saved with these weights") from None
    # Packed rows restart position_ids per sample; with the KV cache enabled, SDPA lets packed samples
    # attend to each other (measured: logit difference 8.4 vs 4.5e-6), so the cache stays off in training.
    model.config.use_cache = False
    if training and not attention.requested_implementation():
        attention.enable_for_training(model)
    if training:
        log.info("attention: %s", model.config._attn_implementation)
    if getattr(model, "hf_device_map", None) or getattr(model, "is_quantized", False):
        return model  # placed by from_pretrained (quantized weights cannot be moved with .to)
    return model.to(device)


# -- checking a local model directory before anything is written -------------------------------------------
WEIGHT_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")
SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim")


def check_config(model_dir: str | Path, *, trust_remote_code: bool = False, model_type: bool = True) -> dict:
    """config.json of a local model directory, read and checked: valid JSON (the line of a syntax error), an
    object, and (``model_type``) a model_type this transformers knows, or remote code explicitly allowed."""
    import json

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from hone.io import read_text_utf8

    path = Path(model_dir) / "config.json"
    text = read_text_utf8(path, "config.json")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise HoneError(f"invalid JSON in config.json at line {err.lineno}, column {err.colno}: {err.msg}"
                        + (" (the file ends early: cut off by an interrupted copy or download?)"
                           if err.pos >= len(text.rstrip()) else ""),
                        where=f"{path}:{err.lineno}", fix="restore config.json from the model's source (or save "
                        "the model again with save_pretrained)") from None
    if not isinstance(config, dict):
        raise HoneError(f"config.json holds a JSON {type(config).__name__}, not an object of model settings",
                        where=str(path), fix="restore config.json from the model's source")
    if not model_type:  # the tokenizer alone: its own class may not need the model's architecture
        return config
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise HoneError("config.json has no model_type: transformers cannot tell which architecture this is",
                        where=str(path), fix="restore config.json from the model's source (it names model_type, "
                        "e.g. \"qwen2\" or \"llama\")")
    if model_type not in CONFIG_MAPPING:
        remote = "auto_map" in config
        if remote and trust_remote_code:
            _check_remote_code_files(Path(model_dir), config["auto_map"])
            return config
        if remote:
            raise HoneError(f"model_type {model_type!r} is not built into transformers {transformers.__version__}: "
                            "the model ships its own Python code (auto_map in config.json), and hone does not run "
                            "code from a model unless asked", where=f"{path} (model_type)",
                            fix="if you trust the model's source, pass --trust-remote-code (trust_remote_code=True): "
                                "it imports and runs the .py files of the model repository with your permissions; "
                                "otherwise use a model whose architecture transformers supports")
        hint = suggest(model_type, CONFIG_MAPPING.keys())
        raise HoneError(f"model_type {model_type!r} is unknown to transformers {transformers.__version__}"
                        + (f" ({hint})" if hint else "") + "; remote code is not run for it (config.json has no "
                        "auto_map)", where=f"{path} (model_type)",
                        fix="upgrade transformers if the architecture is newer than this version, or fix model_type")
    return config


def _check_remote_code_files(d: Path, auto_map: object) -> None:
    """The .py files that config.json's auto_map names must be in the directory (code from another repository,
    ``repo--module.Class``, is left to transformers)."""
    refs = auto_map.values() if isinstance(auto_map, dict) else []
    names = [r for ref in refs for r in (ref if isinstance(ref, (list, tuple)) else [ref]) if isinstance(r, str)]
    for ref in names:
        if "--" in ref or "." not in ref:
            continue
        module = ref.rsplit(".", 1)[0]
        if not (d / (module.replace(".", "/") + ".py")).is_file():
            raise HoneError(f"config.json's auto_map names {ref!r}, but {module}.py is not in {d}: the model's own "
                            "code is missing", where=f"{d / 'config.json'} (auto_map)",
                            fix=f"copy {module}.py (and the other .py files of the model repository) into {d}")


def _safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, checked against the file's size (a truncated file is named)."""
    import json
    import struct

    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            raw = fh.read(n) if 0 <= n <= min(size - 8, 100 << 20) else b""
    except PermissionError:
        raise HoneError(f"{path.name} cannot be read (permission denied)", where=str(path),
                        fix="make it readable by this user (chmod u+r)") from None
    fix = "copy or download the weights again (compare the file size or checksum with the source)"
    if n < 0 or len(raw) != n:
        raise HoneError(f"{path.name} is not a complete safetensors file ({size:,} bytes: its header is cut off or "
                        "missing)", where=str(path), fix=fix)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HoneError(f"{path.name} is not a safetensors file (its header is not JSON)", where=str(path),
                        fix=fix) from None
    header.pop("__metadata__", None)
    end = max((t.get("data_offsets", [0, 0])[1] for t in header.values() if isinstance(t, dict)), default=0)
    if 8 + n + end != size:
        state = "truncated" if 8 + n + end > size else "longer than its header says"
        raise HoneError(f"{path.name} is {state}: {size:,} bytes, its header describes {8 + n + end:,} (an "
                        "interrupted download or copy?)", where=str(path), fix=fix)
    return header


def weight_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a local model directory (checked: present, complete); pickles are refused."""
    import json

    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if (d / "model.safetensors").is_file():
        return [d / "model.safetensors"]
    if index.is_file():
        from hone.io import read_text_utf8

        try:
            shards = sorted(set(json.loads(read_text_utf8(index, index.name))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise HoneError(f"{index.name} is not a valid safetensors index ({type(err).__name__}: {err})",
                            where=str(index), fix="restore it from the model's source") from None
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise HoneError(f"{len(missing)} of the {len(shards)} weight shards listed in {index.name} are missing: "
                            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}", where=str(d),
                            fix="copy or download every shard")
        return [d / s for s in shards]
    pickles = [f for f in WEIGHT_PICKLES if (d / f).is_file()] + sorted(
        f.name for f in d.glob("pytorch_model-*.bin"))[:1]
    if pickles:
        raise HoneError(f"{d} holds only pickle weights ({pickles[0]}); hone loads safetensors only, because "
                        "unpickling a file can run arbitrary code (there is no setting to allow it)",
                        where=f"{d / pickles[0]}",
                        fix="if you trust the file, convert it once: python -c \"from transformers import "
                            "AutoModelForCausalLM as M; M.from_pretrained('IN', use_safetensors=False)"
                            ".save_pretrained('OUT')\" (then copy the tokenizer files to OUT), and pass OUT")
    others = sorted(f.name for f in d.glob("*.safetensors"))
    if others:
        raise HoneError(f"{d} has no model.safetensors (nor model.safetensors.index.json); it holds "
                        f"{', '.join(others[:3])}", where=str(d), fix="name the weights model.safetensors, or "
                        "point model_path at the full model (an adapter_model.safetensors is a LoRA adapter)")
    raise HoneError(f"{d} has config.json but no weights (model.safetensors or model.safetensors.index.json)",
                    where=str(d), fix="copy the weights next to config.json, or save the model again with "
                                      "save_pretrained")


def check_model_dir(model_dir: str | Path, *, trust_remote_code: bool = False) -> None:
    """Everything about a local model directory that would otherwise fail deep inside transformers (or,
    worse, load silently wrong), as a :class:`HoneError` naming the file: config.json (valid, a known
    model_type), the weights (safetensors, complete), the sizes in config.json against the weights' shapes,
    and the tokenizer's ids against the model's vocabulary."""
    import json

    d = Path(model_dir)
    config = check_config(d, trust_remote_code=trust_remote_code)
    headers = {f: _safetensors_header(f) for f in weight_files(d)}
    shapes = {name: (tuple(t.get("shape", ())), f) for f, h in headers.items() for name, t in h.items()
              if isinstance(t, dict)}
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if config.get("model_type") in CONFIG_MAPPING and not config.get("quantization_config"):
        _check_shapes(d, config, shapes)
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    tok = d / "tokenizer.json"
    if isinstance(vocab, int) and tok.is_file():
        try:
            spec = json.loads(tok.read_text(encoding="utf-8"))
            ids = list(((spec.get("model") or {}).get("vocab") or {}).values()) if isinstance(
                (spec.get("model") or {}).get("vocab"), dict) else []
            ids += [t.get("id", 0) for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
            top = max((i for i in ids if isinstance(i, int)), default=-1)
        except (ValueError, UnicodeDecodeError, AttributeError):
            return  # the tokenizer's own loading names a broken tokenizer.json
        if top >= vocab:
            raise HoneError(f"the tokenizer has token ids up to {top} but the model's vocab_size is {vocab}: those "
                            "tokens have no embedding", where=f"{tok} and {d / 'config.json'} (vocab_size)",
                            fix="use the tokenizer saved with this model, or resize the embeddings "
                                "(model.resize_token_embeddings(len(tokenizer))) and save the model again")


def meta_model(model_dir: str | Path):
    """The model a local directory's config.json describes, built on the meta device (no memory, no weights
    read), or None when transformers cannot build it here (remote code, not a causal LM...)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    try:
        cfg = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)
    except Exception:  # noqa: BLE001 - from_pretrained will speak for itself
        return None


def _check_shapes(d: Path, config: dict, shapes: dict[str, tuple[tuple, Path]]) -> None:
    """Build the model config.json describes on the meta device (no memory) and compare its shapes."""
    import re

    fix = "use the config.json saved with these weights (sizes in config.json must match the tensors)"
    layer = re.compile(r"^(.*)\.layers\.(\d+)\.")
    found = [(m.group(1), int(m.group(2))) for n in shapes if (m := layer.search(n))]
    # the language model's stack: the prefix with the most layer tensors (not a vision or audio tower)
    stacks: dict[str, int] = {}
    for prefix, _ in found:
        stacks[prefix] = stacks.get(prefix, 0) + 1
    main_stack = max(stacks, key=lambda k: (stacks[k], "vision" not in k and "visual" not in k), default=None)
    have = {i for prefix, i in found if prefix == main_stack}
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    n_layers = config.get("num_hidden_layers", text.get("num_hidden_layers"))
    extra = config.get("num_nextn_predict_layers", text.get("num_nextn_predict_layers")) or 0  # MTP layers
    if have and isinstance(n_layers, int) and isinstance(extra, int) and not n_layers <= len(have) <= n_layers + extra:
        more = n_layers > len(have)
        raise HoneError(f"config.json says num_hidden_layers={n_layers} but the weights hold {len(have)} layers: "
                        + ("the missing layers would be initialised at random" if more else
                           "the extra layers would be silently dropped"),
                        where=f"{d / 'config.json'} (num_hidden_layers)", fix=fix)

    model = meta_model(d)
    if model is None:
        return
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sizes = ", ".join(f"{k}={config[k]}" for k in SIZE_KEYS if k in config)
    for name, (shape, f) in shapes.items():
        if name in expected and expected[name] != shape:
            raise HoneError(f"config.json does not fit the weights: {name} is {list(shape)} in {f.name}, but "
                            f"config.json ({sizes}) makes it {list(expected[name])}",
                            where=f"{d / 'config.json'} and {f}", fix=fix)
