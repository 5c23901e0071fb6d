"""Hostile configurations (issue 19): every bad value, file or flag is a clear error — exit 2, no traceback, the
parameter or file:line named, a fix given, nothing written in the output directory — and the odd but valid
ones are accepted as meant. Runs `hone train sft` in-process on the tiny model; each case stops before any
data or weights are loaded, so the whole module takes seconds."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from hone.cli.main import main

@pytest.fixture
def data(one_chat_file) -> Path:
    return one_chat_file


def _run(capsys, tiny_model_dir, data, out: Path, config: str | bytes | None = None, *flags: str,
         print_config: bool = False) -> tuple[int, str, str]:
    args = ["train", "sft", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
            "--no-progress", "--max-seq-len", "256", "--max-tokens-per-gpu", "512"]
    if config is not None:
        cfg = out.parent / "config.yaml"
        cfg.write_bytes(config if isinstance(config, bytes) else config.encode())
        args += ["--config", str(cfg)]
    code = main([*args, *flags] + (["--print-config"] if print_config else []))
    got = capsys.readouterr()
    return code, got.err, got.out


# name: (YAML text or bytes, extra CLI flags, substrings the message must hold); "{cfg}" is the config's path
BAD = {
    # -- listed in issue 19 --
    "seed beyond 64 bits": ("seed: 18446744073709551616\n", [], ["seed", "2**64-1", "{cfg}:1"]),
    "device mps without MPS": ("device: mps\n", [], ["device is mps", "where: parameter device"]),
    "data_output_dir is a file": ("data_output_dir: {file}\n", [], ["data_output_dir", "is an existing file"]),
    "ckpt_output_dir is a file": (None, ["--output", "{file}"], ["ckpt_output_dir", "is an existing file"]),
    "latin-1 config file": ("learning_rate: 1.0e-5\nmlflow_run_name: caf\xe9\n".encode("latin-1"), [],
                            ["not UTF-8", "{cfg}:2", "column 21", "iconv"]),
    "mlflow sqlite under a file": ("mlflow_tracking_uri: sqlite:///{file}/mlflow.db\n", [],
                                   ["mlflow_tracking_uri", "is a file"]),
    "effective_batch_size true": ("effective_batch_size: true\n", [],
                                  ["effective_batch_size", "boolean", "{cfg}:1"]),
    "learning_rate .inf": ("learning_rate: .inf\n", [], ["learning_rate", "finite", "{cfg}:1"]),
    "learning_rate .nan": ("learning_rate: .nan\n", [], ["learning_rate", "finite"]),
    "same key twice": ("seed: 1\nlearning_rate: 1.0e-5\nseed: 2\n", [], ["'seed' is given twice", "{cfg}:1",
                                                                        "{cfg}:3"]),
    # -- new: values --
    "num_epochs zero": ("num_epochs: 0\n", [], ["num_epochs", "greater than 0", "{cfg}:1"]),
    "negative learning rate": ("learning_rate: -1.0e-5\n", [], ["learning_rate", "greater than 0"]),
    "negative effective_batch_size": ("effective_batch_size: -4\n", [], ["effective_batch_size", "greater than 0"]),
    "max_seq_len zero": (None, ["--max-seq-len", "0"], ["max_seq_len", "greater than 0"]),
    "warmup_steps negative": ("warmup_steps: -1\n", [], ["warmup_steps", "greater than or equal to 0"]),
    "max_grad_norm negative": ("max_grad_norm: -1\n", [], ["max_grad_norm"]),
    "beta1 of 1": ("beta1: 1.0\n", [], ["beta1", "less than 1"]),
    "beta2 true": ("beta2: true\n", [], ["beta2", "boolean"]),
    "max_steps fractional": ("max_steps: 1.5\n", [], ["max_steps", "fractional"]),
    "validation_split 1": ("validation_split: 1.0\n", [], ["validation_split", "less than 1"]),
    "seed negative": ("seed: -1\n", [], ["seed", "between 0 and 2**64-1"]),
    "seed text": ("seed: abc\n", [], ["seed", "valid integer"]),
    "nan as text": ("weight_decay: NaN\n", [], ["weight_decay", "finite"]),
    "lr_scheduler typo": ("lr_scheduler: cosin\n", [], ["unknown lr_scheduler 'cosin'", "did you mean 'cosine'"]),
    "dtype unknown": ("dtype: fp16\n", [], ["dtype", "float16"]),
    "device typo": ("device: gpu\n", [], ["unknown device 'gpu'", "cuda"]),
    "device bad index": ("device: cuda:x\n", [], ["unknown device 'cuda:x'"]),
    "list where a number is expected": ("learning_rate: [1.0e-5]\n", [], ["learning_rate", "valid number"]),
    "mapping where a path is expected": ("data_output_dir: {a: b}\n", [], ["data_output_dir", "valid string"]),
    "lr_scheduler_kwargs not a mapping": ("lr_scheduler_kwargs: [1, 2]\n", [], ["lr_scheduler_kwargs"]),
    "environment variable not expanded": ("learning_rate: ${LR}\n", [], ["learning_rate", "'${LR}'",
                                                                          "environment variables"]),
    "max_batch_len disagrees": ("max_batch_len: 300\n", [], ["max_batch_len (300) and max_tokens_per_gpu (512)"]),
    "unknown key with suggestion": ("learnin_rate: 1.0e-5\n", [], ["'learnin_rate'", "'learning_rate'", "{cfg}:1"]),
    "nested sections": ("train:\n  learning_rate: 1.0e-5\n", [], ["'train'", "flat", "{cfg}:1"]),
    "dashes in a key": ("max-seq-len: 128\n", [], ["'max-seq-len'", "'max_seq_len'", "underscores"]),
    "a synonym": ("lr: 1.0e-5\n", [], ["'lr'", "did you mean 'learning_rate'"]),
    "tensorboard dir is a file": ("tensorboard_log_dir: {file}\n", [], ["tensorboard_log_dir", "existing file"]),
    "output under a file": (None, ["--output", "{file}/run"], ["ckpt_output_dir", "which is a file"]),
    "mlflow sqlite is a directory": ("mlflow_tracking_uri: sqlite:///{dir}\n", [], ["names a directory"]),
    "mlflow sqlite not a database": ("mlflow_tracking_uri: sqlite:///{file}\n", [], ["is not a SQLite database"]),
    "mlflow sqlite relative form": ("mlflow_tracking_uri: 'sqlite:'\n", [], ["not a SQLite database file URI"]),
    # -- new: the file itself --
    "top level is a list": ("- learning_rate: 1.0e-5\n", [], ["must be a mapping", "holds a list"]),
    "top level is a scalar": ("learning_rate\n", [], ["must be a mapping", "holds a str"]),
    "tabs for indentation": ("learning_rate: 1.0e-5\n\tseed: 3\n", [], ["{cfg}:2", "tabs"]),
    "syntax error": ("learning_rate: [1.0e-5\nseed: 3\n", [], ["invalid YAML", "{cfg}:"]),
    "recursive alias": ("lr_scheduler_kwargs: &a {x: *a}\n", [], ["contains itself", "{cfg}:1"]),
    "number as key": ("1: x\n", [], ["key 1", "not a parameter name", "{cfg}:1"]),
    "boolean as key": ("on: 3\n", [], ["key True", "quote a key"]),
    "duplicate key inside a value": ("lr_scheduler_kwargs:\n  num_cycles: 1\n  num_cycles: 2\n", [],
                                     ["'num_cycles' is given twice", "{cfg}:2", "{cfg}:3"]),
    "undecodable byte in a comment": (b"# r\xe9glages\nseed: 3\n", [], ["not UTF-8", "{cfg}:1"]),
}


def _fill(text, tmp_path: Path, cfg: Path):
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a directory\n")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir(exist_ok=True)
    sub = {"{file}": str(a_file), "{dir}": str(a_dir), "{cfg}": str(cfg)}
    if isinstance(text, bytes) or text is None:
        return text
    if isinstance(text, list):
        return [_fill(t, tmp_path, cfg) for t in text]
    for k, v in sub.items():
        text = text.replace(k, v)
    return text


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config(case, tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    if case == "device mps without MPS" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    text, flags, expected = BAD[case]
    cfg = tmp_path / "config.yaml"
    out = tmp_path / "out"
    text = _fill(text, tmp_path, cfg)
    flags = [_fill(f, tmp_path, cfg) for f in flags]
    if "--output" in flags:
        out = Path(flags[flags.index("--output") + 1])
    before = sorted(p.name for p in tmp_path.iterdir()) + ["config.yaml"] * (text is not None)
    code, err, _ = _run(capsys, tiny_model_dir, data, tmp_path / "out", text, *flags)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and "fix:" in err, err
    for s in expected:
        assert _fill(s, tmp_path, cfg) in err, (s, err)
    assert not (tmp_path / "out").exists()
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == sorted(before), "a refused configuration must write nothing"
    if out.is_file():
        assert out.read_text() == "not a directory\n"


def test_cuda_without_cuda(tiny_model_dir, data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device in ("cuda", "cuda:1"):
        code, err, _ = _run(capsys, tiny_model_dir, data, tmp_path / "out", None, "--device", device)
        assert code == 2 and "no GPU is available" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_billion_laughs_fails_fast(tiny_model_dir, data, tmp_path, capsys):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(lines).replace("a: &a", "lr_scheduler_kwargs: &a", 1) + "\n"
    start = time.perf_counter()
    code, err, _ = _run(capsys, tiny_model_dir, data, tmp_path / "out", text)
    elapsed = time.perf_counter() - start
    assert code == 2 and "billion laughs" in err and "Traceback" not in err
    assert elapsed < 1.0, f"took {elapsed:.2f}s"


def test_config_file_problems(tiny_model_dir, data, tmp_path, capsys):
    base = ["train", "sft", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "o")]
    assert main([*base, "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main([*base, "--config", str(tmp_path)]) == 2  # a directory
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("directory" in err or "Invalid value" in err)


# CLI flags of the wrong type: click's own message, exit 2, no traceback
FLAGS = {
    "learning rate text": (["--learning-rate", "abc"], "'--learning-rate'"),
    "epochs fractional": (["--num-epochs", "1.5"], "'--num-epochs'"),
    "batch size boolean word": (["--effective-batch-size", "true"], "'--effective-batch-size'"),
    "seed beyond 64 bits": (["--seed", str(2**70)], "seed"),
    "dtype not a choice": (["--dtype", "float8"], "'--dtype'"),
    "learning rate inf": (["--learning-rate", "inf"], "finite"),
    "unknown flag": (["--learning-rat", "1e-5"], "--learning-rat"),
}


@pytest.mark.parametrize("case", list(FLAGS))
def test_bad_flags(case, tiny_model_dir, data, tmp_path, capsys):
    flags, expected = FLAGS[case]
    code, err, _ = _run(capsys, tiny_model_dir, data, tmp_path / "out", None, *flags)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


# Odd but valid: accepted, with the meaning intended
GOOD_CONFIGS = {
    "empty file": ("", {"learning_rate": 5e-6}),
    "only comments": ("# nothing yet\n", {"seed": 42}),
    "UTF-8 with a BOM": ("\ufeffseed: 7\n".encode("utf-8"), {"seed": 7}),
    "CRLF line endings": ("seed: 7\r\nlearning_rate: 2.0e-5\r\n", {"seed": 7, "learning_rate": 2e-5}),
    "exponent without a dot (YAML text)": ("learning_rate: 1e-5\n", {"learning_rate": 1e-5}),
    "seed at the 64-bit limit": (f"seed: {2**64 - 1}\n", {"seed": 2**64 - 1}),
    "number as text": ("effective_batch_size: '8'\n", {"effective_batch_size": 8}),
    "non-ASCII UTF-8 value": ("mlflow_run_name: café ☕\n", {}),
    "merge key overriding": ("lr_scheduler_kwargs:\n  <<: {num_cycles: 1}\n  num_cycles: 2\n"
                             "lr_scheduler: cosine_with_restarts\n", {"lr_scheduler_kwargs": {"num_cycles": 2}}),
    "small alias": ("lr_scheduler_kwargs: &k {num_cycles: 2}\nlr_scheduler: cosine_with_restarts\n",
                    {"lr_scheduler_kwargs": {"num_cycles": 2}}),
    "an existing output directory path for data": ("data_output_dir: {dir}\n", {}),
    "mlflow sqlite in a new directory": ("mlflow_tracking_uri: sqlite:///{dir}/new/mlflow.db\n", {}),
}


@pytest.mark.parametrize("case", list(GOOD_CONFIGS))
def test_odd_but_valid_config(case, tiny_model_dir, data, tmp_path, capsys):
    text, expected = GOOD_CONFIGS[case]
    text = _fill(text, tmp_path, tmp_path / "config.yaml")
    code, err, out = _run(capsys, tiny_model_dir, data, tmp_path / "out", text, print_config=True)
    assert code == 0, err
    resolved = json.loads(out)
    for k, v in expected.items():
        assert resolved[k] == v, (k, resolved[k])
    if case == "non-ASCII UTF-8 value":
        assert resolved["mlflow_run_name"] == "café ☕"


def test_lora_target_modules_as_text(tiny_model_dir, data, tmp_path, capsys):
    code = main(["train", "lora", "--model", str(tiny_model_dir), "--data", str(data), "--output",
                 str(tmp_path / "o"), "--target-modules", "q_proj, v_proj", "--print-config"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["target_modules"] == ["q_proj", "v_proj"]
