"""Whole SFT runs on the tiny model (float32, CPU): learning, saving without loss, and the run's outputs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import hone
from hone.algorithms.sft import SFTHooks
from hone.config import RunConfig
from hone.data.batching import pack
from hone.data.tokenize import tokenize_conversation
from hone.errors import HoneError
from hone.models.load import load_model, load_tokenizer
from hone.models.tiny import CHATML_TEMPLATE
from hone.training.metrics import read_metrics
from hone.training.run import PARAMS_FILE, run_training
from qa_pairs import QA

pytestmark = pytest.mark.usefixtures("single_cpu_thread")



CPU = {"device": "cpu", "dtype": "float32"}  # the same numbers on a machine with a GPU

METRIC_KEYS = {"step", "epoch", "loss", "lr", "grad_norm", "num_samples", "num_loss_tokens", "num_tokens",
               "tokens_per_second", "elapsed_s", "peak_memory_gb"}


def chat_rows() -> list[dict]:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    rows[3]["messages"].insert(0, {"role": "system", "content": "answer in one short sentence"})
    return rows


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows()))
    return path


def _leftover_temporaries(root: Path) -> list[str]:
    """Hidden names a write left behind (torch.distributed.checkpoint's own ``.metadata`` file is content)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name != ".metadata")


# -- 3. it learns ----------------------------------------------------------------------------------------------

def test_sft_memorises_small_dataset(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    result = hone.sft(str(tiny_model_dir), str(data_file), str(out), num_epochs=20, effective_batch_size=4,
                      learning_rate=3e-3, lr_scheduler="constant", max_seq_len=64, max_tokens_per_gpu=64,
                      checkpoint_at_epoch=False, seed=0, progress=False, **CPU)
    metrics = read_metrics(out / "training_metrics.jsonl")
    assert result.steps == len(metrics) == 40
    assert result.first_loss == pytest.approx(metrics[0]["loss"])
    assert result.final_loss == pytest.approx(metrics[-1]["loss"])
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in metrics)
    assert result.final_loss <= 0.5 * result.first_loss, (result.first_loss, result.final_loss)
    # not just the last step: the last epoch as a whole is far below the first
    first_epoch = [m["loss"] for m in metrics if m["epoch"] == 1]
    last_epoch = [m["loss"] for m in metrics if m["epoch"] == 20]
    assert sum(last_epoch) / len(last_epoch) <= 0.5 * sum(first_epoch) / len(first_epoch)
    assert result.epochs_completed == 20
    assert result.samples_trained == 20 * len(QA)
    assert result.tokens_trained == 20 * result.data_report.tokens


# -- 4. saving loses nothing ---------------------------------------------------------------------------------

class CapturingSFTHooks(SFTHooks):
    """Plain SFT that keeps a handle on the model being trained (the in-memory state after the run)."""

    model = None

    def prepare_model(self, model, **kwargs):
        self.model = super().prepare_model(model, **kwargs)
        return self.model


def test_final_checkpoint_reloads_with_transformers_and_matches_in_memory_model(tiny_model_dir, data_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    cfg = RunConfig.from_flat("sft", {
        "model_path": str(tiny_model_dir), "data_path": str(data_file), "ckpt_output_dir": str(out),
        "num_epochs": 2, "effective_batch_size": 4, "learning_rate": 3e-3, "max_seq_len": 64,
        "max_tokens_per_gpu": 64, "dtype": "float32", "device": "cpu", "seed": 0, "progress": False,
    })
    hooks = CapturingSFTHooks()
    result = run_training(cfg, hooks)
    trained = hooks.model.eval()
    final = out / "hf_format" / "final"
    assert result.final_model_dir == final

    reloaded = AutoModelForCausalLM.from_pretrained(final).eval()
    assert type(reloaded).__name__ == "Qwen2ForCausalLM"
    assert reloaded.dtype == torch.float32

    # every tensor survived, bit for bit
    mem = trained.state_dict()
    disk = reloaded.state_dict()
    assert mem.keys() == disk.keys()
    for name in mem:
        assert torch.equal(mem[name], disk[name]), name
    # ... and training did change the weights (the comparison is not of two untouched base models)
    base = load_model(str(tiny_model_dir)).state_dict()
    assert any(not torch.equal(base[n], mem[n]) for n in mem)

    tokenizer = AutoTokenizer.from_pretrained(final)
    original = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.chat_template == original.chat_template == CHATML_TEMPLATE
    assert tokenizer.eos_token == "<|im_end|>"
    assert len(tokenizer) == len(original)
    msgs = chat_rows()[3]["messages"]
    assert tokenizer.apply_chat_template(msgs, tokenize=False) == original.apply_chat_template(msgs, tokenize=False)
    assert tokenize_conversation(tokenizer, msgs) == tokenize_conversation(original, msgs)

    samples = [tokenize_conversation(tokenizer, r["messages"]) for r in chat_rows()]
    with torch.no_grad():
        ids = torch.tensor([samples[4].input_ids])
        diff = (trained(input_ids=ids).logits - reloaded(input_ids=ids).logits).abs().max().item()
        assert diff <= 1e-5, diff
        batch = pack(samples)  # the packed training layout too
        kw = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
        diff = (trained(**kw).logits - reloaded(**kw).logits).abs().max().item()
        assert diff <= 1e-5, diff

    # the last epoch's checkpoint holds the same state as final; the first epoch's does not
    last = AutoModelForCausalLM.from_pretrained(out / "hf_format" / "epoch_2").state_dict()
    first = AutoModelForCausalLM.from_pretrained(out / "hf_format" / "epoch_1").state_dict()
    assert all(torch.equal(last[n], disk[n]) for n in disk)
    assert any(not torch.equal(first[n], disk[n]) for n in disk)
    assert result.checkpoints == [out / "hf_format" / "epoch_1", out / "hf_format" / "epoch_2", final]


# -- 5. what a run writes ---------------------------------------------------------------------------------------

def test_run_outputs(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    lr, ebs, epochs = 2e-3, 3, 3
    kwargs = dict(num_epochs=epochs, effective_batch_size=ebs, learning_rate=lr, lr_scheduler="constant_with_warmup",
                  warmup_steps=2, max_seq_len=64, max_tokens_per_gpu=80, checkpoint_at_epoch=True, seed=7,
                  progress=False, **CPU)
    result = hone.sft(str(tiny_model_dir), str(data_file), str(out), **kwargs)
    n = len(QA)
    per_epoch = math.ceil(n / ebs)  # 3 steps: 3 + 3 + 2 samples

    # training_metrics.jsonl: one object per optimizer step
    lines = (out / "training_metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert len(metrics) == per_epoch * epochs == result.steps
    for m in metrics:
        assert METRIC_KEYS <= set(m), METRIC_KEYS - set(m)
        assert math.isfinite(m["loss"]) and m["loss"] > 0
        assert m["grad_norm"] >= 0 and m["tokens_per_second"] > 0 and m["peak_memory_gb"] > 0
        assert 0 < m["num_loss_tokens"] < m["num_tokens"]
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert [m["epoch"] for m in metrics] == [e for e in range(1, epochs + 1) for _ in range(per_epoch)]
    elapsed = [m["elapsed_s"] for m in metrics]
    assert elapsed == sorted(elapsed)
    report = result.data_report
    for e in range(1, epochs + 1):
        steps = [m for m in metrics if m["epoch"] == e]
        sizes = [m["num_samples"] for m in steps]
        assert all(s == ebs for s in sizes[:-1]) and 0 < sizes[-1] <= ebs
        assert sum(sizes) == n
        assert sum(m["num_tokens"] for m in steps) == report.tokens
        assert sum(m["num_loss_tokens"] for m in steps) == report.loss_tokens

    # lr follows constant_with_warmup: linear ramp over 2 steps, then flat at the peak
    lrs = [m["lr"] for m in metrics]
    assert lrs[:2] == pytest.approx([0.0, lr / 2])
    assert lrs[2:] == pytest.approx([lr] * (len(lrs) - 2))

    # charts
    png = out / "loss_chart.png"
    assert result.loss_chart_png == png
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = out / "loss_chart.html"
    assert result.loss_chart_html == page
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "<svg" in text and f"{len(metrics)} steps" in text

    # resolved parameters
    params = json.loads((out / PARAMS_FILE).read_text())
    expected = RunConfig.from_flat("sft", {"model_path": str(tiny_model_dir), "data_path": str(data_file),
                                           "ckpt_output_dir": str(out), **kwargs}).to_flat(include_volatile=False)
    assert params == expected
    assert params["algorithm"] == "sft" and params["lr_scheduler"] == "constant_with_warmup"
    assert params["warmup_steps"] == 2 and params["learning_rate"] == lr and params["effective_batch_size"] == ebs
    assert params["beta2"] == 0.95 and params["max_grad_norm"] == 1.0  # defaults are resolved too
    assert "progress" not in params and "overwrite" not in params

    # checkpoints: one per epoch, written once as samples_<N> (Training Hub's name) with epoch_<n> and final
    # as links to it, each a complete Hugging Face directory
    hf = out / "hf_format"
    names = sorted(p.name for p in hf.iterdir())
    written = [f"samples_{n * e}" for e in range(1, epochs + 1)]
    assert names == sorted([f"epoch_{e}" for e in range(1, epochs + 1)] + ["final"] + written)
    assert [(hf / f"epoch_{e}").readlink().name for e in range(1, epochs + 1)] == written
    assert (hf / "final").readlink().name == written[-1]
    for name in names:
        assert (hf / name / "config.json").is_file() and (hf / name / "model.safetensors").is_file()
        assert (hf / name / "tokenizer.json").is_file()
    assert result.checkpoints == [hf / f"epoch_{e}" for e in range(1, epochs + 1)] + [hf / "final"]
    assert result.epochs_completed == epochs
    assert _leftover_temporaries(out) == []

    # training_result.json summarises the same run
    summary = json.loads((out / "training_result.json").read_text())
    assert summary["steps"] == len(metrics)
    assert summary["first_loss"] == pytest.approx(metrics[0]["loss"])
    assert summary["final_loss"] == pytest.approx(metrics[-1]["loss"])
    assert (out / "data" / "data.jsonl").is_file()


def test_max_steps_stops_early_and_checkpoints_only_complete_epochs(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    result = hone.sft(str(tiny_model_dir), str(data_file), str(out), num_epochs=3, effective_batch_size=3,
                      max_steps=4, learning_rate=1e-3, max_seq_len=64, max_tokens_per_gpu=64, progress=False,
                      **CPU)
    metrics = read_metrics(out / "training_metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert [m["epoch"] for m in metrics] == [1, 1, 1, 2]
    assert result.epochs_completed == 1
    n = len(QA)  # epoch 1, then one step of 3 samples: written once each as samples_<N>, with links
    assert sorted(p.name for p in (out / "hf_format").iterdir()) == sorted(
        ["epoch_1", "final", f"samples_{n}", f"samples_{n + 3}"])
    assert (out / "hf_format" / "final").readlink().name == f"samples_{n + 3}"
    assert _leftover_temporaries(out) == []


def test_no_checkpoints_when_disabled(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    result = hone.sft(str(tiny_model_dir), str(data_file), str(out), num_epochs=1, effective_batch_size=8,
                      checkpoint_at_epoch=False, save_final_checkpoint=False, max_seq_len=64,
                      max_tokens_per_gpu=64, progress=False, **CPU)
    assert result.final_model_dir is None and result.checkpoints == []
    assert not (out / "hf_format").exists() or not any((out / "hf_format").iterdir())
    assert len(read_metrics(out / "training_metrics.jsonl")) == 1


def test_output_dir_of_a_different_run_is_refused(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    common = dict(num_epochs=1, effective_batch_size=8, max_seq_len=64, max_tokens_per_gpu=64,
                  checkpoint_at_epoch=False, accelerate_full_state_at_epoch=False, progress=False, **CPU)
    hone.sft(str(tiny_model_dir), str(data_file), str(out), learning_rate=1e-3, **common)
    with pytest.raises(HoneError, match="learning_rate"):
        hone.sft(str(tiny_model_dir), str(data_file), str(out), learning_rate=2e-3, **common)
    # same parameters: allowed (resuming the same run's directory); overwrite replaces a different run
    hone.sft(str(tiny_model_dir), str(data_file), str(out), learning_rate=1e-3, **common)
    result = hone.sft(str(tiny_model_dir), str(data_file), str(out), learning_rate=2e-3, overwrite=True, **common)
    assert json.loads(result.params_path.read_text())["learning_rate"] == 2e-3
