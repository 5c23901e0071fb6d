"""Hostile model directories (issue 19): each broken --model is a clear error before anything is written (exit 2,
no traceback, the file named, a fix given), never a SafetensorError, a RuntimeError from deep inside
transformers, a silent random initialisation, or "not a local directory ... hub"."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hone.cli.main import main

@pytest.fixture
def data(one_chat_file) -> Path:
    return one_chat_file


def _config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg, indent=2))


def _half(d: Path) -> None:
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])


def _no_model_type(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("model_type")
    (d / "config.json").write_text(json.dumps(cfg))


def _sharded_missing(d: Path) -> None:
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors",
                                            "model.norm.weight": "model-00001-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def _big_token(d: Path) -> None:
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["added_tokens"].append({"id": 700, "content": "<|extra|>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (d / "tokenizer.json").write_text(json.dumps(tok))


def _no_tokenizer(d: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (d / f).unlink(missing_ok=True)


def _adapter(d: Path) -> None:
    for f in d.iterdir():
        f.unlink()
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B",
                                                       "peft_type": "LORA"}))
    (d / "adapter_model.safetensors").write_bytes(b"")


def _empty(d: Path) -> None:
    for f in d.iterdir():
        f.unlink()


# name: (change to a copy of the tiny model, substrings of the message)
BAD = {
    # listed in issue 19
    "safetensors cut in half": (_half, ["model.safetensors is truncated", "model.safetensors", "download"]),
    "config sizes do not fit the weights": (lambda d: _config(d, hidden_size=128),
                                            ["config.json does not fit the weights", "hidden_size=128", "[512, 64]"]),
    "config but no weights": (lambda d: (d / "model.safetensors").unlink(),
                              ["has config.json but no weights", "model.safetensors"]),
    "pickle weights only": (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
                            ["pytorch_model.bin", "safetensors only", "save_pretrained", "no setting"]),
    "model_type needing remote code": (
        lambda d: _config(d, model_type="acme_lm", auto_map={"AutoModelForCausalLM": "modeling_acme.AcmeLM"}),
        ["'acme_lm'", "--trust-remote-code", "runs the .py files"]),
    "unknown model_type, no remote code": (lambda d: _config(d, model_type="qwen9"),
                                           ["'qwen9' is unknown to transformers", "remote code is not run"]),
    "truncated config.json": (lambda d: (d / "config.json").write_text((d / "config.json").read_text()[:200]),
                              ["invalid JSON in config.json at line", "config.json:"]),
    # new
    "empty directory": (_empty, ["an empty directory", "no config.json"]),
    "config.json is a JSON list": (lambda d: (d / "config.json").write_text("[1, 2, 3]\n"),
                                   ["config.json holds a JSON list"]),
    "config.json is empty": (lambda d: (d / "config.json").write_text(""), ["invalid JSON in config.json at line 1"]),
    "config.json without model_type": (_no_model_type, ["config.json has no model_type"]),
    "config.json not UTF-8": (lambda d: (d / "config.json").write_bytes(b'{"model_type": "qwen\xe92"}'),
                              ["config.json is not UTF-8", "line 1"]),
    "more layers in config than weights": (lambda d: _config(d, num_hidden_layers=4, layer_types=["full_attention"] * 4),
                                           ["num_hidden_layers=4", "weights hold 2 layers", "random"]),
    "fewer layers in config than weights": (lambda d: _config(d, num_hidden_layers=1, layer_types=["full_attention"]),
                                            ["num_hidden_layers=1", "weights hold 2 layers", "dropped"]),
    "vocab_size larger than the weights": (lambda d: _config(d, vocab_size=600), ["[512, 64]", "vocab_size=600"]),
    "intermediate_size wrong": (lambda d: _config(d, intermediate_size=96), ["intermediate_size=96"]),
    "tokenizer ids beyond the vocabulary": (_big_token, ["token ids up to 700", "vocab_size is 512",
                                                         "resize_token_embeddings"]),
    "no tokenizer files": (_no_tokenizer, ["holds no tokenizer"]),
    "a LoRA adapter directory": (_adapter, ["is a LoRA adapter", "base_model_name_or_path"]),
    "zero-byte weights": (lambda d: (d / "model.safetensors").write_bytes(b""), ["not a complete safetensors file"]),
    "weights that are not safetensors": (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64),
                                         ["not a safetensors file"]),
    "bytes appended to the weights": (lambda d: (d / "model.safetensors").open("ab").write(b"junk" * 10),
                                      ["longer than its header says"]),
    "shard missing from the index": (_sharded_missing, ["weight shards listed in model.safetensors.index.json are "
                                                        "missing", "model-00002-of-00002.safetensors"]),
    "broken safetensors index": (lambda d: ((d / "model.safetensors").unlink(),
                                            (d / "model.safetensors.index.json").write_text("{\"weight_map\": 3}")),
                                 ["not a valid safetensors index"]),
    "weights under another name": (lambda d: (d / "model.safetensors").rename(d / "weights.safetensors"),
                                   ["has no model.safetensors", "weights.safetensors"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_model_directory(case, tiny_model_dir, data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    change, expected = BAD[case]
    change(model)
    out = tmp_path / "out"
    code = main(["train", "sft", "--model", str(model), "--data", str(data), "--output", str(out), "--no-progress",
                 "--max-seq-len", "256", "--max-tokens-per-gpu", "512"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and "fix:" in err, err
    assert "hub" not in err.split("fix:")[0], err  # a local directory is never a hub question
    for s in expected:
        assert s in err, (s, err)
    assert not out.exists(), "nothing may be written for a model that cannot load"


def test_model_path_is_the_weights_file(tiny_model_dir, data, tmp_path, capsys):
    weights = Path(tiny_model_dir) / "model.safetensors"
    code = main(["train", "sft", "--model", str(weights), "--data", str(data), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "points at a file, not a model directory" in err and str(tiny_model_dir) in err
    assert "does not exist" not in err and not (tmp_path / "o").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_model_directory(tiny_model_dir, data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").chmod(0)
    try:
        code = main(["train", "sft", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "o")])
    finally:
        (model / "config.json").chmod(0o644)
    err = capsys.readouterr().err
    assert code == 2 and "permission denied" in err and "Traceback" not in err


def test_remote_code_allowed_but_missing(tiny_model_dir, data, tmp_path, capsys):
    """With --trust-remote-code the check steps aside; the code the config names is not there: still clear."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _config(model, model_type="acme_lm", auto_map={"AutoModelForCausalLM": "modeling_acme.AcmeLM",
                                                   "AutoConfig": "configuration_acme.AcmeConfig"})
    code = main(["train", "sft", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "o"),
                 "--trust-remote-code", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(model) in err and "fix:" in err, err
    assert "modeling_acme.py is not in" in err and "auto_map" in err


def test_lora_target_modules_matching_nothing(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "lora", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                 "--target-modules", "qkv_proj", "--target-modules", "dense", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "'qkv_proj', 'dense' match no module of Qwen2ForCausalLM" in err
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in err
    assert not out.exists(), "checked before any data or weights are read"


def test_valid_directories_still_load(tiny_model_dir, tmp_path):
    """Correct acceptance: the tiny model, and the same weights as a sharded index, pass the checks."""
    from safetensors.torch import load_file, save_file

    from hone.models.load import check_model_dir

    check_model_dir(tiny_model_dir)
    model = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, model)
    tensors = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(model / shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    check_model_dir(model)


def test_unreadable_config_json(tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    """A config.json this user may not read (simulated: tests often run as root, who reads everything)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    real = Path.read_bytes

    def read_bytes(self):
        if self == model / "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    code = main(["train", "sft", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be read (permission denied)" in err and "chmod" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_samples_beyond_the_models_positions_are_warned_about(tiny_model_dir, tmp_path, caplog, capsys):
    """Correct acceptance: a rotary model trains on samples longer than max_position_embeddings, with a warning
    that says how to leave them out."""
    import logging

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _config(model, max_position_embeddings=16)
    rows = [{"messages": [{"role": "user", "content": "tell me about the river " * 3},
                          {"role": "assistant", "content": "the river is long and old " * 3}]}] * 2
    d = tmp_path / "d.jsonl"
    d.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="hone"):
        code = main(["train", "sft", "--model", str(model), "--data", str(d), "--output", str(tmp_path / "o"),
                     "--max-seq-len", "256", "--max-tokens-per-gpu", "512", "--max-steps", "1",
                     "--effective-batch-size", "2", "--no-progress", "--no-save-final-checkpoint",
                     "--no-checkpoint-at-epoch"])
    assert code == 0, capsys.readouterr().err
    assert any("longer than the model's max_position_embeddings (16" in r.getMessage() and "max_seq_len" in
               r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["empty", "dangling link", "link loop"])
def test_model_path_that_leads_nowhere(kind, data, tmp_path, capsys):
    if kind == "empty":
        model, expected = "", "model_path is empty"
    else:
        link = tmp_path / "model"
        if kind == "dangling link":
            link.symlink_to(tmp_path / "gone")
        else:
            (tmp_path / "other").symlink_to(link)
            link.symlink_to(tmp_path / "other")
        model, expected = str(link), "symbolic link that leads nowhere"
    code = main(["train", "sft", "--model", model, "--data", str(data), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err and "fix:" in err, err
    assert not (tmp_path / "o").exists()
