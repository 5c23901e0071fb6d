"""Warnings that save a wasted run: one line each, with its fix, logged once on rank 0 before training starts."""
from __future__ import annotations

import json
import logging

import pytest

import hone
from hone.config import RunConfig
from hone.data.report import DatasetReport
from hone.errors import HoneError
from hone.training.run import MIN_STEPS, plan_warnings

pytestmark = pytest.mark.usefixtures("single_cpu_thread")


def cfg(algorithm: str = "sft", **params) -> RunConfig:
    base = {"model_path": "m", "data_path": "d.jsonl", "ckpt_output_dir": "out"}
    return RunConfig.from_flat(algorithm, {**base, **params}, "test")


def test_the_issue_case_one_step_on_40_samples():
    lines = plan_warnings(40, cfg(effective_batch_size=128))  # the defaults: 1 epoch
    few = [w for w in lines if w.startswith("only ")]
    assert few == ["only 1 optimizer step (40 samples, effective_batch_size 128, num_epochs 1): lower "
                   "effective_batch_size (e.g. 4 gives 10 steps) or raise num_epochs"]
    larger = [w for w in lines if "larger than the dataset" in w]
    assert len(larger) == 1 and "lower effective_batch_size to at most 40" in larger[0]
    assert all("\n" not in w for w in lines)


def test_few_steps_counts_epochs_and_respects_a_max_steps_cap():
    assert any(w.startswith("only 6 optimizer steps") for w in plan_warnings(40, cfg(effective_batch_size=20,
                                                                                      num_epochs=3)))
    assert not any(w.startswith("only") for w in plan_warnings(40, cfg(effective_batch_size=4)))  # 10 steps
    # a max_steps below the plan is the user's choice: no "only N steps"
    assert not any(w.startswith("only") for w in plan_warnings(400, cfg(effective_batch_size=4, max_steps=2)))
    # one sample per step already: more data or epochs is the only fix
    lines = plan_warnings(3, cfg(effective_batch_size=1))
    assert any(w.startswith("only 3 optimizer steps") and w.endswith("raise num_epochs or add data") for w in lines)


def test_a_healthy_configuration_gets_no_warning():
    assert plan_warnings(1000, cfg(effective_batch_size=32, num_epochs=2, warmup_steps=5)) == []
    assert MIN_STEPS == 10


def test_warmup_that_never_ends():
    lines = plan_warnings(40, cfg(effective_batch_size=8, num_epochs=2, warmup_steps=10))  # 10 steps in all
    warm = [w for w in lines if w.startswith("warmup_steps=")]
    assert len(warm) == 1 and "10 optimizer steps" in warm[0] and "never reaches learning_rate" in warm[0]
    assert "lower warmup_steps" in warm[0]
    assert not any(w.startswith("warmup_steps=") for w in plan_warnings(40, cfg(effective_batch_size=8, num_epochs=3,
                                                                               warmup_steps=10)))
    # LoRA's default warm-up (10 steps) on a run of 1 step, also when max_steps made it short
    assert any(w.startswith("warmup_steps=10") for w in plan_warnings(400, cfg("lora", max_steps=1)))
    # a constant schedule has no warm-up to finish
    assert not any(w.startswith("warmup_steps=") for w in plan_warnings(40, cfg(effective_batch_size=8,
                                                                               warmup_steps=50,
                                                                               lr_scheduler="constant")))


def test_many_samples_dropped_by_max_seq_len():
    report = DatasetReport(source="d.jsonl", mode="messages", samples=60, dropped_too_long=40)
    lines = plan_warnings(60, cfg(effective_batch_size=4, max_seq_len=256), report)
    assert [w for w in lines if "max_seq_len" in w] == [
        "40 of 100 samples (40%) are longer than max_seq_len=256 tokens and are left out: raise max_seq_len or "
        "shorten the conversations"]
    few = DatasetReport(source="d.jsonl", mode="messages", samples=99, dropped_too_long=1)
    assert plan_warnings(99, cfg(effective_batch_size=4), few) == []


def test_every_sample_dropped_is_an_error_with_the_fix(tiny_model_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "tell me a long story " * 8},
                                                     {"role": "assistant", "content": "once upon a time " * 8}]})
                            + "\n" for _ in range(4)))
    with pytest.raises(HoneError) as err:
        hone.sft(str(tiny_model_dir), str(data), str(tmp_path / "out"), max_seq_len=8, device="cpu",
                 progress=False)
    assert "every sample was dropped" in err.value.what and "4 longer than max_seq_len=8" in err.value.what
    assert "raise max_seq_len" in err.value.fix


def test_a_run_logs_each_warning_once_before_training(tiny_model_dir, tmp_path, caplog):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                     {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                            for i in range(6)))
    with caplog.at_level(logging.INFO, logger="hone"):
        result = hone.sft(str(tiny_model_dir), str(data), str(tmp_path / "out"), effective_batch_size=16,
                          warmup_steps=3, device="cpu", dtype="float32", progress=False,
                          save_final_checkpoint=False, checkpoint_at_epoch=False)
    assert result.steps == 1
    records = [r for r in caplog.records if r.name == "hone"]
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert sum(w.startswith("only 1 optimizer step (6 samples, effective_batch_size 16") for w in warned) == 1
    assert sum("effective_batch_size 16 is larger than the dataset (6 samples)" in w for w in warned) == 1
    assert sum(w.startswith("warmup_steps=3 is not below the run's 1 optimizer step") for w in warned) == 1
    messages = [r.getMessage() for r in records]
    first_warning = next(i for i, m in enumerate(messages) if m.startswith("only 1 optimizer step"))
    assert first_warning < next(i for i, m in enumerate(messages) if m.startswith("model: "))  # before the model
