"""Training Hub's programmatic surface: the registry, create_algorithm, result["model"], plot_loss, estimate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hone
from hone.errors import HoneError
from qa_pairs import QA

pytestmark = pytest.mark.usefixtures("single_cpu_thread")

CPU = {"device": "cpu", "dtype": "float32", "progress": False, "max_seq_len": 64, "max_tokens_per_gpu": 256,
       "effective_batch_size": 4, "max_steps": 1, "checkpoint_at_epoch": False}


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_registry_lists_training_hubs_names_from_hones_table():
    from hone.config import ALGORITHMS

    assert hone.AlgorithmRegistry.list_algorithms()[:3] == ["sft", "osft", "lora_sft"]
    assert len(hone.AlgorithmRegistry.list_algorithms()) >= len(ALGORITHMS)
    assert hone.AlgorithmRegistry.list_backends("sft") == ["instructlab-training"]
    assert hone.AlgorithmRegistry.list_backends("osft") == ["mini-trainer"]
    assert hone.AlgorithmRegistry.list_backends("lora_sft") == ["unsloth"]
    assert hone.AlgorithmRegistry.get_algorithm("lora_sft") is hone.LoRASFTAlgorithm
    assert hone.AlgorithmRegistry.get_backend("osft", "mini-trainer") is hone.MiniTrainerOSFTBackend
    assert hone.AlgorithmRegistry.list_backends("nope") == []


def test_parameter_tables_come_from_the_schema():
    osft = hone.create_algorithm("osft")
    assert isinstance(osft, hone.OSFTAlgorithm) and isinstance(osft.backend, hone.MiniTrainerOSFTBackend)
    assert set(osft.get_required_params()) == {"model_path", "data_path", "ckpt_output_dir", "unfreeze_rank_ratio"}
    assert osft.get_optional_params()["target_patterns"] == (list[str] | None)
    lora = hone.create_algorithm("lora_sft", "unsloth").get_optional_params()
    assert {"lora_r", "load_in_4bit", "learning_rate", "num_epochs"} <= set(lora)


def test_unknown_names_are_errors_that_list_the_accepted_ones():
    with pytest.raises(HoneError) as err:
        hone.create_algorithm("sft", backend_name="torchtune")
    assert "instructlab-training" in str(err.value) and "backend_name" in str(err.value)
    with pytest.raises(HoneError, match="did you mean 'osft'"):
        hone.create_algorithm("osfft")
    with pytest.raises(ValueError):  # Training Hub raises ValueError here; HoneError is one
        hone.AlgorithmRegistry.get_backend("lora_sft", "mini-trainer")


def test_create_algorithm_trains_and_the_result_maps_to_the_saved_model(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    algo = hone.create_algorithm("sft", "instructlab-training", learning_rate=1e-3)
    result = algo.train(model_path=str(tiny_model_dir), data_path=str(data_file), ckpt_output_dir=str(out),
                        num_epochs=None, **CPU)  # None = "not given", as Training Hub passes it
    assert isinstance(result, hone.TrainResult) and result.steps == 1
    assert json.loads(result.params_path.read_text())["learning_rate"] == 1e-3  # constructor kwargs are defaults
    assert set(result.keys()) == {"model", "tokenizer", "trainer"} and "model" in result and "optimizer" not in result
    model = result["model"]
    assert model is result["model"]  # loaded once
    from safetensors.torch import load_file

    saved = {}
    for f in sorted(Path(result.final_model_dir).glob("*.safetensors")):
        saved.update(load_file(f))
    state = model.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())
    assert result["tokenizer"].eos_token == "<|im_end|>"
    trainer = result["trainer"]
    assert trainer.state.global_step == 1 and trainer.state.log_history[0]["step"] == 1
    assert trainer.model is model and trainer.args.output_dir == str(out)
    with pytest.raises(KeyError):
        result["optimizer"]
    assert result.get("optimizer") is None


def test_osft_algorithm_takes_training_hubs_positional_order(monkeypatch):
    seen = []
    monkeypatch.setattr("hone.hub._train", lambda algorithm, params: seen.append((algorithm, params)))
    hone.create_algorithm("osft").train("m", "d", 0.25, 8, 4096, 1024, 1e-5, "out")
    assert seen[-1] == ("osft", {"model_path": "m", "data_path": "d", "unfreeze_rank_ratio": 0.25,
                                 "effective_batch_size": 8, "max_tokens_per_gpu": 4096, "max_seq_len": 1024,
                                 "learning_rate": 1e-5, "ckpt_output_dir": "out", "backend": "mini-trainer"})


def test_plot_loss_draws_one_or_several_runs(tmp_path):
    runs = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "training_metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 3.0 / (s + i), "lr": 1e-5}) + "\n" for s in range(1, 6))
            + json.dumps({"step": 5, "val_loss": 2.0}) + "\n")
        runs.append(str(run))
    one = hone.plot_loss(runs[0])
    assert one == str(Path(runs[0]) / "loss_plot.png")
    both = hone.plot_loss(runs, labels=["a", "b"], ema=True, ema_span=2, output_path=tmp_path / "cmp.png")
    for path in (one, both):
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(HoneError, match="no loss values"):
        hone.plot_loss([str(tmp_path / "missing")])


def test_estimate_has_training_hubs_signature_and_result(tiny_model_dir, capsys):
    import inspect

    params = list(inspect.signature(hone.estimate).parameters)
    assert params[:12] == ["training_method", "num_gpus", "gpu_memory", "model_path", "batch_size", "max_seq_len",
                           "max_tokens_per_gpu", "use_liger", "verbose", "trust_remote_code",
                           "unfreeze_rank_ratio", "lora_r"]
    low, mid, high = hone.estimate("osft", num_gpus=1, gpu_memory=2**30, model_path=str(tiny_model_dir),
                                   max_tokens_per_gpu=1024, verbose=2)
    assert 0 < low < mid < high < 2**30
    assert "should fit" in capsys.readouterr().out
    one = hone.estimate("sft", num_gpus=1, model_path=str(tiny_model_dir), max_tokens_per_gpu=1024, verbose=0)
    assert hone.BasicEstimator(num_gpus=1, model_path=str(tiny_model_dir), max_tokens_per_gpu=1024,
                               verbose=0).estimate() == one
    with pytest.raises(HoneError, match="max_tokens_per_gpu"):
        hone.estimate("lora", model_path=str(tiny_model_dir), verbose=0)
    with pytest.raises(HoneError, match="unknown training_method"):
        hone.estimate("dpo", model_path=str(tiny_model_dir), max_tokens_per_gpu=8, verbose=0)


def test_estimate_shards_over_gpus(tiny_model_dir):
    from hone.hub import estimate_detail

    one = estimate_detail("sft", model_path=str(tiny_model_dir), num_gpus=1, max_tokens_per_gpu=512)
    eight = estimate_detail("sft", model_path=str(tiny_model_dir), num_gpus=8, max_tokens_per_gpu=512)
    assert eight.components["optimizer"] * 8 == pytest.approx(one.components["optimizer"], rel=1e-6)
    assert eight.components["activations"] == one.components["activations"]
    q = estimate_detail("qlora", model_path=str(tiny_model_dir), num_gpus=1, max_tokens_per_gpu=512)
    assert q.components["activations"] < one.components["activations"]  # QLoRA checkpoints activations
