"""Training Hub's run features on real tiny-model runs: validation loss, best-val-loss and samples_<N>
checkpoints (named as its backends name them, weights written once), keep_last_checkpoint_only, scheduler
arguments, fsdp_options and callbacks (in one process and under torchrun)."""
from __future__ import annotations

import glob
import json
import logging
import os
import random
from pathlib import Path

import pytest
import torch

import hone
from hone.config import DistributedConfig, RunConfig
from hone.errors import HoneError
from hone.training.callbacks import HOOKS, TrainingHubCallback
from hone.training.distributed import fsdp_plan

pytestmark = pytest.mark.usefixtures("single_cpu_thread")

ARGS = dict(effective_batch_size=4, learning_rate=3e-3, num_epochs=2, max_seq_len=160, max_tokens_per_gpu=160,
            lr_scheduler="constant", progress=False, device="cpu", dtype="float32")
VAL = dict(validation_split=0.25, validation_frequency=2, save_best_val_loss=True)
# a few steps, no model written, the scheduler chosen by the test
SHORT = {**{k: v for k, v in ARGS.items() if k != "lr_scheduler"}, "num_epochs": 1, "save_final_checkpoint": False,
         "checkpoint_at_epoch": False}


class Recorder(TrainingHubCallback):
    """Every hook it sees, in order (in this process); with ``path`` set, as JSON lines per rank."""

    run_on_all_ranks = True

    def __init__(self, path: str | None = None):
        self.path, self.calls = path, []

    def _note(self, hook, context):
        self.calls.append((hook, context))
        if self.path:
            rank = os.environ.get("RANK", "0")
            with open(f"{self.path}.{rank}", "a") as fh:
                fh.write(json.dumps({"hook": hook, "step": context.step, "main": context.is_main_process,
                                     "metrics": {k: v for k, v in context.metrics.items()
                                                 if isinstance(v, (int, float, str))}}) + "\n")


for _hook in HOOKS:
    setattr(Recorder, _hook, lambda self, context, _h=_hook: self._note(_h, context))


class Raiser(TrainingHubCallback):
    def on_log(self, context):
        raise RuntimeError("boom")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = random.Random(3)
    rows = [{"messages": [{"role": "user", "content": "Tell me. " * rng.randint(1, 12)},
                          {"role": "assistant", "content": f"Number {i} " * rng.randint(1, 6)}]} for i in range(20)]
    path = tmp_path_factory.mktemp("d") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_metrics.jsonl").read_text().splitlines()]


def _training_hub_latest(out: Path, pattern: str = "samples_*") -> str:
    """Training Hub's examples/scripts/sft_granite_example.py (osft_*_example.py: "samples_*.0")."""
    checkpoint_dirs = glob.glob(os.path.join(out, "hf_format", pattern))
    return max(checkpoint_dirs, key=os.path.getctime)


def _weights_written_once(hf: Path) -> set[str]:
    """The directories holding model.safetensors bytes (links not followed): each must be a distinct checkpoint."""
    real = {Path(d).name for d, _dirs, files in os.walk(hf) if "model.safetensors" in files}
    every = {os.path.realpath(p) for p in hf.iterdir() if not p.name.startswith(".")}
    assert {Path(p).name for p in every} == real  # every name resolves to one of the real directories
    return real


@pytest.fixture(scope="module")
def val_run(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "run"
    rec = Recorder()
    result = hone.sft(str(tiny_model_dir), str(data), str(out), callbacks=[rec, Raiser()], **ARGS, **VAL)
    return out, result, rec


def test_validation_loss_records_and_best_checkpoint(val_run):
    out, result, _ = val_run
    assert result.steps == 8 and len((out / "data" / "validation.jsonl").read_text().splitlines()) == 5
    records = _records(out)
    val = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in val] == [2, 4, 6, 8] and len(steps) == 8
    assert all(r["val_num_samples"] == 5 and r["val_num_loss_counted_tokens"] > 0 for r in val)
    seen = {r["step"]: sum(x["num_samples"] for x in steps if x["step"] <= r["step"]) for r in val}
    best, improved = None, []
    for r in val:  # save_best_val_loss with threshold 0: every new minimum
        if best is None or r["val_loss"] < best:
            best = r["val_loss"]
            improved.append(seen[r["step"]])
    hf = out / "hf_format"
    assert sorted(p.name for p in hf.glob("*_best_val_loss")) == sorted(f"samples_{n}_best_val_loss" for n in improved)
    lowest = min(val, key=lambda r: r["val_loss"])
    assert (hf / f"samples_{seen[lowest['step']]}_best_val_loss" / "model.safetensors").is_file()


def test_samples_names_links_and_training_hub_finder(val_run):
    out, result, _ = val_run
    hf = out / "hf_format"
    assert result.final_model_dir == hf / "final"
    for alias, n in (("epoch_1", 15), ("epoch_2", 30), ("final", 30)):  # 15 training samples per epoch
        assert (hf / alias).is_symlink() and not os.path.isabs(os.readlink(hf / alias))
        assert Path(os.path.realpath(hf / alias)) == Path(os.path.realpath(hf / f"samples_{n}"))
    assert os.path.realpath(_training_hub_latest(out)) == os.path.realpath(hf / "final")
    real = _weights_written_once(hf)
    assert len(real) == len({os.path.realpath(p) for p in hf.iterdir()})
    from hone.layout import TrainingLayout

    assert TrainingLayout.of_model(hf / "final").root == out  # registry lineage still finds the run


def test_callbacks_see_every_hook(val_run):
    _, result, rec = val_run
    hooks = [h for h, _ in rec.calls]
    assert set(hooks) == set(HOOKS) and hooks[0] == "on_train_begin" and hooks[-1] == "on_train_end"
    assert hooks.count("on_log") == hooks.count("on_step_begin") == hooks.count("on_step_end") == 8
    assert hooks.count("on_evaluate") == 4 and hooks.count("on_epoch_end") == 2
    evals = [c for h, c in rec.calls if h == "on_evaluate"]
    assert [c.step for c in evals] == [2, 4, 6, 8] and all("val_loss" in c.metrics for c in evals)
    saves = [c.metrics["checkpoint_path"] for h, c in rec.calls if h == "on_save"]
    assert Path(saves[-1]).name == "samples_30" and all(Path(p).exists() for p in saves)  # Training Hub's names
    logs = [c for h, c in rec.calls if h == "on_log"]
    assert logs[0].learning_rate == pytest.approx(3e-3) and logs[-1].loss == pytest.approx(result.final_loss)


def test_a_raising_callback_is_logged_once(tiny_model_dir, data, tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="hone"):
        result = hone.sft(str(tiny_model_dir), str(data), str(tmp_path / "r"), callbacks=[Raiser()], max_steps=2,
                          lr_scheduler="constant", **SHORT)
    assert result.steps == 2
    assert len([r for r in caplog.records if "Raiser.on_log" in r.getMessage()]) == 1


def test_osft_spelling_save_samples_and_keep_last(tiny_model_dir, data, tmp_path):
    out = tmp_path / "osft"
    hone.osft(str(tiny_model_dir), str(data), str(out), unfreeze_rank_ratio=0.5, save_samples=8,
              **{**ARGS, "num_epochs": 1, "checkpoint_at_epoch": True})
    hf = out / "hf_format"
    assert sorted(p.name for p in hf.iterdir()) == ["epoch_1", "final", "samples_16.0", "samples_20.0",
                                                    "samples_8.0"]
    assert os.path.realpath(_training_hub_latest(out, "samples_*.0")) == os.path.realpath(hf / "final")
    assert _weights_written_once(hf) == {"samples_8.0", "samples_16.0", "samples_20.0"}

    last = tmp_path / "last"
    hone.sft(str(tiny_model_dir), str(data), str(last), save_samples=8, keep_last_checkpoint_only=True,
             **{**ARGS, "num_epochs": 1})
    hf = last / "hf_format"
    assert sorted(p.name for p in hf.iterdir()) == ["final", "last_epoch"]  # instructlab's one directory
    assert _weights_written_once(hf) == {"last_epoch"}


def test_scheduler_kwargs_shape_the_lr_curve(tiny_model_dir, data, tmp_path):
    out = tmp_path / "min_lr"
    hone.sft(str(tiny_model_dir), str(data), str(out), lr_scheduler="cosine_with_min_lr",
             lr_scheduler_kwargs={"min_lr_rate": 0.5}, max_steps=4, **SHORT)
    lrs = [r["lr"] for r in _records(out)]
    assert len(lrs) == 4 and lrs[0] == pytest.approx(3e-3) and min(lrs) >= 1.5e-3 - 1e-12
    import math

    assert lrs[3] == pytest.approx(3e-3 * (0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * 3 / 4))))

    plateau = tmp_path / "plateau"  # stepped with the validation loss: "no improvement" halves the lr
    hone.sft(str(tiny_model_dir), str(data), str(plateau), lr_scheduler="reduce_lr_on_plateau",
             lr_scheduler_kwargs={"factor": 0.5, "patience": 0, "threshold": 10.0, "threshold_mode": "abs"},
             validation_split=0.25, validation_frequency=1, max_steps=4, **SHORT)
    lrs = [r["lr"] for r in _records(plateau) if "loss" in r]
    assert lrs == pytest.approx([3e-3, 3e-3, 1.5e-3, 7.5e-4])


def test_validation_data_from_another_path(tiny_model_dir, data, tmp_path):
    out = tmp_path / "v"
    hone.sft(str(tiny_model_dir), str(data), str(out), validation_data_path=str(data), validation_frequency=2,
             max_steps=2, lr_scheduler="constant", **SHORT)
    (val,) = [r for r in _records(out) if "val_loss" in r]
    assert val["step"] == 2 and val["val_num_samples"] == 20 and val["val_num_tokens"] > 0


def test_bad_options_fail_before_training(tiny_model_dir, data, tmp_path):
    run = lambda **kw: hone.sft(str(tiny_model_dir), str(data), str(tmp_path / "x"), **{**ARGS, **kw})  # noqa: E731
    with pytest.raises(HoneError, match="reduce_lr_on_plateau"):
        run(lr_scheduler="reduce_lr_on_plateau")
    with pytest.raises(HoneError, match="validation_frequency"):
        run(validation_split=0.2)
    with pytest.raises(HoneError, match="save_best_val_loss"):
        run(save_best_val_loss=True)
    with pytest.raises(HoneError, match="lr_scheduler_kwargs"):
        run(lr_scheduler="cosine", lr_scheduler_kwargs={"bogus": 1})
    with pytest.raises(HoneError, match="a class"):
        run(callbacks=[Recorder])
    with pytest.raises(HoneError, match="unknown fsdp_options key.*'shard'"):
        run(fsdp_options={"shard": "FULL_SHARD"})
    assert not (tmp_path / "x" / "hf_format").exists()


def test_fsdp_options_map_onto_fsdp2_settings():
    plan = fsdp_plan(DistributedConfig(fsdp_options={"sharding_strategy": "HYBRID_SHARD", "cpu_offload_params": True}))
    assert (plan.sharding_strategy, plan.cpu_offload_params) == ("HYBRID_SHARD", True)
    assert fsdp_plan(DistributedConfig(fsdp_sharding_strategy="SHARD_GRAD_OP")).sharding_strategy == "SHARD_GRAD_OP"
    base = {"model_path": "m", "data_path": "d", "ckpt_output_dir": "o"}
    agreeing = RunConfig.from_flat("sft", {**base, "fsdp_sharding_strategy": "NO_SHARD",
                                           "fsdp_options": {"sharding_strategy": "NO_SHARD"}})
    assert fsdp_plan(agreeing.distributed).sharding_strategy == "NO_SHARD"
    with pytest.raises(HoneError, match="disagrees"):
        fsdp_plan(RunConfig.from_flat("sft", {**base, "fsdp_sharding_strategy": "FULL_SHARD",
                                              "fsdp_options": {"sharding_strategy": "NO_SHARD"}}).distributed)
    with pytest.raises(HoneError, match="FULL_SHARD, HYBRID_SHARD"):
        fsdp_plan(DistributedConfig(fsdp_options={"sharding_strategy": "ZERO3"}))
    with pytest.raises(HoneError, match="needs FSDP sharding"):
        fsdp_plan(DistributedConfig(fsdp_options={"sharding_strategy": "NO_SHARD", "cpu_offload_params": True}))
    with pytest.raises(HoneError, match="true or false"):
        fsdp_plan(DistributedConfig(fsdp_options={"cpu_offload_params": "yes"}))


def test_two_processes_validate_like_one_and_call_back_on_every_rank(val_run, tiny_model_dir, data, tmp_path):
    single, _, _ = val_run
    out = tmp_path / "two"
    log_path = tmp_path / "calls"
    result = hone.sft(str(tiny_model_dir), str(data), str(out), nproc_per_node=2, callbacks=[Recorder(str(log_path))],
                      fsdp_options={"cpu_offload_params": True}, **ARGS, **VAL)  # FSDP2 with CPUOffloadPolicy
    assert result.world_size == 2 and result.steps == 8
    one = [r["val_loss"] for r in _records(single) if "val_loss" in r]
    two = [r["val_loss"] for r in _records(out) if "val_loss" in r]
    assert len(two) == 4 and max(abs(a - b) for a, b in zip(one, two)) <= 1e-4
    for rank in (0, 1):
        calls = [json.loads(line) for line in Path(f"{log_path}.{rank}").read_text().splitlines()]
        assert [c["step"] for c in calls if c["hook"] == "on_evaluate"] == [2, 4, 6, 8]
        assert all(c["main"] == (rank == 0) for c in calls) and calls[-1]["hook"] == "on_train_end"
    assert sorted(p.name for p in (out / "hf_format").iterdir()) == \
        sorted(p.name for p in (single / "hf_format").iterdir())


def test_use_liger_says_why_it_is_not_applied_on_cpu(caplog):
    import logging

    import torch.nn as nn

    from hone.models.liger import apply_liger

    with caplog.at_level(logging.INFO, logger="hone"):
        assert apply_liger(nn.Linear(2, 2), torch.device("cpu")) is False
    assert "Liger kernels need CUDA" in caplog.text


def test_logging_steps_and_a_sample_cap_per_micro_batch(tiny_model_dir, tmp_path):
    from hone.data.batching import micro_batches

    assert micro_batches([0, 1, 2, 3], [5, 5, 5, 5], 100, max_samples=1) == [[0], [1], [2], [3]]
    assert [len(b) for b in micro_batches([0, 1, 2, 3], [5, 5, 5, 5], 100, max_samples=3)] == [3, 1]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q {i}"},
                                                     {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                            for i in range(20)))
    out = tmp_path / "run"
    result = hone.sft(str(tiny_model_dir), str(data), str(out), effective_batch_size=4, max_seq_len=128,
                      max_tokens_per_gpu=512, logging_steps=2, micro_batch_max_samples=1, num_epochs=1,
                      accelerate_full_state_at_epoch=False, checkpoint_at_epoch=False, progress=False)
    records = [json.loads(line) for line in (out / "training_metrics.jsonl").read_text().splitlines()]
    assert result.steps == 5 and [r["step"] for r in records] == [2, 4, 5]  # the last step is always written
    assert records[0]["logged_steps"] == 2 and records[0]["num_samples"] == 8
