"""Each bad input gives one clear message (what, where, how to fix), exit status 2, no traceback, and
nothing half-written in the output directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hone.cli.main import main

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _run(capsys, model, data, out, *extra: str) -> tuple[int, str]:
    code = main(["train", "sft", "--model", str(model), "--data", str(data), "--output", str(out),
                 "--max-seq-len", "256", "--max-tokens-per-gpu", "512", "--no-progress", *extra])
    return code, capsys.readouterr().err


@pytest.fixture
def no_template_model(tiny_model_dir, tmp_path):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    return model


CASES = {
    "missing data file": (None, "data file not found"),
    "invalid json": ([GOOD, GOOD, '{"messages": [}'], "invalid JSON"),
    "no messages": ([GOOD, {"text": "hello"}], "no 'messages' field"),
    "unknown role": ([{"messages": [{"role": "wizard", "content": "x"}, GOOD["messages"][1]]}], "unknown role 'wizard'"),
    "non-string content": ([{"messages": [{"role": "user", "content": 3}, GOOD["messages"][1]]}], "content is int"),
    "empty content": ([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}],
                      "content is empty"),
    "no assistant turn": ([{"messages": [{"role": "user", "content": "Hi"}]}], "no assistant turn"),
    "all dropped by max_seq_len": ([{"messages": [{"role": "user", "content": "word " * 400},
                                                  {"role": "assistant", "content": "ok"}]}], "every sample was dropped"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data(case, tiny_model_dir, tmp_path, capsys):
    rows, expected = CASES[case]
    data = tmp_path / "missing.jsonl" if rows is None else _jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    code, err = _run(capsys, tiny_model_dir, data, out)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert "fix:" in err
    assert not out.exists(), "a failed run must not leave outputs behind"
    if case == "invalid json":
        assert f"{data}:3" in err
    if case in ("no messages", "unknown role", "empty content"):
        assert f"{data}:" in err  # names the row's line


def test_max_tokens_per_gpu_below_max_seq_len(tiny_model_dir, tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD])
    code, err = _run(capsys, tiny_model_dir, data, tmp_path / "out", "--max-seq-len", "2048",
                     "--max-tokens-per-gpu", "1000")
    assert code == 2 and "max_tokens_per_gpu (1000) is smaller than max_seq_len (2048)" in err


def test_tokenizer_without_chat_template(no_template_model, tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD])
    code, err = _run(capsys, no_template_model, data, tmp_path / "out")
    assert code == 2 and "no chat template" in err and "Traceback" not in err


def test_model_path_does_not_exist(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD])
    code, err = _run(capsys, tmp_path / "nope", data, tmp_path / "out")
    assert code == 2 and "model path does not exist" in err


def test_output_dir_with_a_different_run_is_refused(tiny_model_dir, tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD] * 4)
    out = tmp_path / "out"
    code, _ = _run(capsys, tiny_model_dir, data, out, "--effective-batch-size", "2", "--max-steps", "1")
    assert code == 0
    before = (out / "training_metrics.jsonl").read_text()
    code, err = _run(capsys, tiny_model_dir, data, out, "--effective-batch-size", "2", "--max-steps", "1",
                     "--learning-rate", "1e-3")
    assert code == 2 and "holds a different run" in err and "learning_rate" in err and "--overwrite" in err
    assert (out / "training_metrics.jsonl").read_text() == before
    code, _ = _run(capsys, tiny_model_dir, data, out, "--effective-batch-size", "2", "--max-steps", "1",
                   "--learning-rate", "1e-3", "--overwrite")
    assert code == 0
    assert json.loads((out / "training_params.json").read_text())["learning_rate"] == 1e-3


def test_unrelated_non_empty_output_dir_is_refused(tiny_model_dir, tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD])
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = _run(capsys, tiny_model_dir, data, out)
    assert code == 2 and "holds no hone run" in err
    assert (out / "precious.txt").read_text() == "keep me"


def test_real_process_exit_status_and_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "hone", "train", "sft", "--model", str(tmp_path / "nope"),
                           "--data", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_help_is_useful(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "train" in top and "tiny-model" in top
    assert main(["train", "sft", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--data", "--output", "--learning-rate", "--max-tokens-per-gpu", "--config",
                 "--unmask-messages", "cosine"):
        assert flag in text


def test_real_process_refuses_a_hostile_config_quickly(tmp_path):
    """The real entry point: a YAML alias bomb is refused in well under a second of parsing, exit 2, no traceback."""
    import time

    lines = ['lr_scheduler_kwargs: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hone", "train", "sft", "--config", str(cfg), "--model",
                           str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "billion laughs" in proc.stderr and f"{cfg}:" in proc.stderr
    assert time.perf_counter() - start < 60  # the process's imports included; the parse itself is milliseconds
    assert not (tmp_path / "o").exists()
