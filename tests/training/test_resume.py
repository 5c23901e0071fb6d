"""Never lose a run: full-state checkpoints, exact resume after SIGKILL, clean stop on SIGTERM."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import hone
from hone.errors import HoneError

ARGS = dict(effective_batch_size=4, learning_rate=2e-3, num_epochs=2, max_seq_len=256, max_tokens_per_gpu=256,
            lr_scheduler="cosine", warmup_steps=2, weight_decay=0.01, checkpoint_at_epoch=False, progress=False,
            device="cpu", dtype="float32", log_sample_ids=True)


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A model big enough that a step takes tens of milliseconds, so a signal lands mid-run."""
    from hone.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("m") / "model", layers=2, hidden=128, heads=4, seed=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("d") / "chat.jsonl"
    rows = []
    for i in range(32):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append({"messages": [{"role": "user", "content": f"Add {a} and {b}. " + "Please. " * rng.randint(0, 12)},
                                  {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reference(slow_model, data, tmp_path_factory):
    """The uninterrupted run. Every run of this module is a fresh `hone` process with the same environment, so
    float reductions are identical and resumed weights can be compared bit for bit."""
    out = tmp_path_factory.mktemp("ref") / "run"
    _finish(_cli(slow_model, data, out))
    return out


def _cli(model, data, out, *extra) -> list[str]:
    flags = []
    for k, v in ARGS.items():
        flag = "--" + k.replace("_", "-")
        flags += ([flag] if v else ["--no-" + k.replace("_", "-")]) if isinstance(v, bool) else [flag, str(v)]
    return [sys.executable, "-m", "hone", "train", "sft", "--model", str(model), "--data", str(data),
            "--output", str(out), *flags, *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def _finish(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _run_until(cmd: list[str], out: Path, steps: int, sig: int) -> subprocess.CompletedProcess:
    """Start training in a subprocess and send ``sig`` once ``steps`` steps are logged."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = out / "training_metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _max_diff(a: Path, b: Path) -> float:
    wa = load_file(a / "hf_format" / "final" / "model.safetensors")
    wb = load_file(b / "hf_format" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def _samples_per_epoch(out: Path) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for line in (out / "training_metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        seen.setdefault(m["epoch"], []).extend(m["sample_ids"])
    return seen


def test_sigkill_then_resume_auto_is_exact(slow_model, data, reference, tmp_path):
    out = tmp_path / "run"
    kill_at = random.Random().randint(4, 12)  # 16 steps in all; checkpoints every 3
    proc = _run_until(_cli(slow_model, data, out, "--checkpoint-every-steps", "3"), out, kill_at, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill at step {kill_at}: {proc.stderr[-2000:]}"
    assert not (out / "hf_format" / "final").exists()
    from hone.training.checkpoint import latest_checkpoint

    last = latest_checkpoint(out)  # None when the kill came before the first checkpoint was complete
    _finish(_cli(slow_model, data, out, "--checkpoint-every-steps", "3", "--resume-from", "auto"))
    result = json.loads((out / "training_result.json").read_text())
    assert result["resumed_from"] == (str(last) if last else None) and result["steps"] == 16
    assert _max_diff(out, reference) <= 1e-6
    steps = [json.loads(x)["step"] for x in (out / "training_metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))  # each step logged once: replayed steps replaced their lost records
    for epoch, ids in _samples_per_epoch(out).items():
        assert sorted(ids) == list(range(32)), f"epoch {epoch}: a sample was skipped or replayed"


def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(slow_model, data, reference, tmp_path):
    out = tmp_path / "run"
    proc = _run_until(_cli(slow_model, data, out), out, 5, signal.SIGTERM)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped on SIGTERM" in proc.stdout
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert len(ckpts) == 1 and (ckpts[0] / "COMPLETE").is_file()
    assert json.loads((out / "training_result.json").read_text())["status"] == "preempted"
    stopped_at = json.loads((ckpts[0] / "trainer_state.json").read_text())["global_step"]
    assert 5 <= stopped_at < 16
    _finish(_cli(slow_model, data, out, "--resume-from", str(ckpts[0])))
    result = json.loads((out / "training_result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == 16
    assert _max_diff(out, reference) <= 1e-6


def test_incomplete_checkpoint_is_never_used(slow_model, data, tmp_path):
    out = tmp_path / "run"
    hone.sft(str(slow_model), str(data), str(out), **{**ARGS, "num_epochs": 1, "checkpoint_every_steps": 4})
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert [p.name for p in ckpts] == ["step_00000004", "step_00000008"]  # keep_last_checkpoints=2
    (ckpts[-1] / "COMPLETE").unlink()  # as if the process died while writing it
    half = out / "checkpoints" / ".step_00000012.tmp"
    half.mkdir()
    from hone.training.checkpoint import latest_checkpoint

    assert latest_checkpoint(out) == ckpts[0]
    with pytest.raises(HoneError, match="not a complete hone checkpoint"):
        hone.sft(str(slow_model), str(data), str(out), resume_from=str(ckpts[-1]),
                 **{**ARGS, "num_epochs": 1, "checkpoint_every_steps": 4})


def test_rerun_without_resume_is_refused_when_checkpoints_exist(slow_model, data, tmp_path):
    out = tmp_path / "run"
    args = {**ARGS, "num_epochs": 1, "max_steps": 2, "checkpoint_every_steps": 1}
    hone.sft(str(slow_model), str(data), str(out), **args)
    with pytest.raises(HoneError, match="resume_from='auto'"):
        hone.sft(str(slow_model), str(data), str(out), **args)
