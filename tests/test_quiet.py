"""Quiet output: no progress bar when stderr is not a terminal, other packages' noise (transformers' FutureWarning
on LoRA runs, MLflow's table-creation INFO lines, lm-eval's bars) kept out, only rank 0 prints, `--verbose`
brings the raw output back and `--quiet` keeps warnings, errors and results."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from hone import logs

BAR_MARKS = ("\r", "█", "%|", "it/s", "step/s", "row/s")
NOISE = ("FutureWarning", "is_gradient_checkpointing", "INFO mlflow", "alembic", "Creating initial MLflow database")


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    path = tmp_path_factory.mktemp("quiet") / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                     {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                            for i in range(8)))
    return path


def hone_cmd(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m hone ARGS`` with stdout and stderr pipes (not terminals), the hone home under tmp_path."""
    environ = {k: v for k, v in os.environ.items() if k not in (logs.ENV, "RANK", "MLFLOW_TRACKING_URI",
                                                                "MLFLOW_EXPERIMENT_NAME")}
    environ.update(HONE_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "hone", *args], capture_output=True, text=True, env=environ,
                          timeout=300, cwd=tmp_path)


def train_args(algorithm: str, model, data, out) -> list[str]:
    return ["train", algorithm, "--model", str(model), "--data", str(data), "--output", str(out), "--max-steps", "1",
            "--effective-batch-size", "4", "--device", "cpu", "--mlflow-experiment-name", "quiet-test"]


def test_a_run_without_a_terminal_prints_no_bar_and_no_third_party_noise(tiny_model_dir, chat, tmp_path):
    proc = hone_cmd(tmp_path, *train_args("lora", tiny_model_dir, chat, tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    for mark in BAR_MARKS + NOISE:
        assert mark not in proc.stderr, f"{mark!r} in stderr:\n{proc.stderr}"
    assert all(line.startswith("hone: ") for line in proc.stderr.splitlines()), proc.stderr
    assert "hone: MLflow tracking: run " in proc.stderr  # MLflow was on, and said so in hone's words
    assert (tmp_path / "home" / "mlflow.db").is_file()
    assert "trained 1 steps" in proc.stdout


def test_verbose_brings_the_raw_output_back(tiny_model_dir, chat, tmp_path):
    proc = hone_cmd(tmp_path, "--verbose", *train_args("lora", tiny_model_dir, chat, tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert "Creating initial MLflow database tables" in proc.stderr
    assert "is_gradient_checkpointing" in proc.stderr and "FutureWarning" in proc.stderr
    assert "trained 1 steps" in proc.stdout


def test_quiet_keeps_warnings_and_results_only(tiny_model_dir, chat, tmp_path):
    proc = hone_cmd(tmp_path, "--quiet", *train_args("sft", tiny_model_dir, chat, tmp_path / "run"),
                    "--warmup-steps", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("hone: warning: ") for line in lines), proc.stderr  # no INFO line
    assert any(line.startswith("hone: warning: warmup_steps=2 is not below") for line in lines)
    assert "trained 1 steps" in proc.stdout and "model:" in proc.stdout


def test_only_rank_0_prints_results(tmp_path):
    """Under torchrun every rank runs the command; rank 0 alone prints (its printing is what the runs above check)."""
    args = ["train", "sft", "--model", "m", "--data", "d.jsonl", "--output", "out", "--print-config"]
    other = hone_cmd(tmp_path, *args, env={"RANK": "1"})
    assert other.returncode == 0 and other.stdout == "" and other.stderr == ""


def test_quiet_and_verbose_exclude_each_other(tmp_path):
    proc = hone_cmd(tmp_path, "--quiet", "--verbose", "train", "sft", "--help")
    assert proc.returncode == 2 and "exclude each other" in proc.stderr


# -- the rules themselves, in this process ------------------------------------------------------------------------
class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_of_rank_0_and_not_quiet(monkeypatch):
    monkeypatch.delenv(logs.ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not logs.progress_enabled()
    monkeypatch.setattr(sys, "stderr", Tty())
    assert logs.progress_enabled() and not logs.progress_enabled(False)
    with logs.progress(range(3), desc="rows") as bar:
        assert not bar.disable
        list(bar)
    monkeypatch.setenv(logs.ENV, "quiet")
    assert not logs.progress_enabled()
    monkeypatch.setenv(logs.ENV, "normal")
    monkeypatch.setenv("RANK", "1")
    assert not logs.progress_enabled() and not logs.is_main_rank()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delenv("RANK")
    with logs.progress(range(3), desc="rows") as bar:
        assert bar.disable and list(bar) == [0, 1, 2]
    assert sys.stderr.getvalue() == ""


def test_harmless_warnings_are_dropped_unless_verbose(monkeypatch):
    import warnings

    def warn():
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)

    monkeypatch.delenv(logs.ENV, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with logs.harmless_warnings():
            warn()
    assert caught == []
    monkeypatch.setenv(logs.ENV, "verbose")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with logs.harmless_warnings():
            warn()
    assert len(caught) == 1


def test_formatter_names_the_level_and_the_package():
    fmt = logs.Formatter()

    def line(name, level, msg):
        return fmt.format(logging.LogRecord(name, level, __file__, 1, msg, None, None))

    assert line("hone", logging.INFO, "data: 4 samples") == "hone: data: 4 samples"
    assert line("hone", logging.WARNING, "only 1 optimizer step") == "hone: warning: only 1 optimizer step"
    assert line("hone", logging.ERROR, "boom") == "hone: error: boom"
    assert line("lm_eval.evaluator", logging.INFO, "Using pre-initialized model") == \
        "lm_eval.evaluator: Using pre-initialized model"


def test_lm_eval_bars_become_hone_bars_and_are_restored(monkeypatch):
    pytest.importorskip("lm_eval")
    import lm_eval.api.model
    import tqdm as tqdm_module

    from hone.evaluation import harness

    monkeypatch.delenv(logs.ENV, raising=False)
    before = (lm_eval.api.model.tqdm, tqdm_module.tqdm)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with harness.lm_eval_output():
        bar = lm_eval.api.model.tqdm([1, 2], desc="Tokenizing inputs", disable=False)
        assert bar.disable and list(bar) == [1, 2]  # stderr is no terminal
        assert logging.getLogger("lm_eval").getEffectiveLevel() >= logging.WARNING
    assert sys.stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", Tty())
    with harness.lm_eval_output():
        assert list(tqdm_module.tqdm([1, 2], desc="Running loglikelihood requests")) == [1, 2]
    assert "lm-eval: running loglikelihood requests" in sys.stderr.getvalue()
    assert (lm_eval.api.model.tqdm, tqdm_module.tqdm) == before
