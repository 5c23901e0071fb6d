"""The CLI end to end: build a tiny model, train on it, outputs where the summary says."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from hone.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_model_then_train_sft_with_config_file(tmp_path, capsys):
    model = tmp_path / "tiny"
    assert main(["tiny-model", "--output", str(model), "--layers", "1", "--hidden", "32", "--heads", "2",
                 "--vocab-size", "300", "--seed", "3"]) == 0
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    cfg = yaml.safe_load((ROOT / "examples" / "sft.yaml").read_text())
    cfg.update(data_path=str(ROOT / cfg["data_path"]), num_epochs=1)
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "sft", "--config", str(cfg_file), "--model", str(model), "--output", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "hf_format" / "final") in printed
    assert str(out / "training_metrics.jsonl") in printed and str(out / "loss_chart.png") in printed
    lines = (out / "training_metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5  # 40 samples / effective_batch_size 8, one epoch
    params = json.loads((out / "training_params.json").read_text())
    assert params["model_path"] == str(model) and params["num_epochs"] == 1
