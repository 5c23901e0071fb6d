"""The Python API, the YAML config and the CLI flags resolve to the same configuration."""
from __future__ import annotations

import json

import pytest
import yaml

from hone.cli.main import main
from hone.config import RunConfig
from hone.errors import HoneError

PARAMS = {
    "model_path": "some/model", "data_path": "d.jsonl", "ckpt_output_dir": "out",
    "num_epochs": 3, "effective_batch_size": 16, "learning_rate": 2e-5, "max_seq_len": 1024,
    "max_tokens_per_gpu": 4096, "warmup_steps": 5, "lr_scheduler": "linear", "seed": 7, "beta1": 0.8,
    "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.01, "checkpoint_at_epoch": False, "save_final_checkpoint": True,
    "unmask_messages": True, "use_processed_dataset": False, "is_pretraining": False, "block_size": 1024,
    "document_column_name": "text", "data_output_dir": "processed",
}


def _cli_flags(params: dict) -> list[str]:
    flags = []
    for key, value in params.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def _cli_config(args: list[str], capsys) -> dict:
    assert main(["train", "sft", *args, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_api_yaml_and_cli_resolve_to_same_configuration(tmp_path, capsys):
    from_api = RunConfig.from_flat("sft", PARAMS).to_flat()
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(yaml.safe_dump(PARAMS))
    from_yaml = _cli_config(["--config", str(cfg_file)], capsys)
    from_flags = _cli_config(_cli_flags(PARAMS), capsys)
    assert from_api == from_yaml == from_flags
    assert from_api["learning_rate"] == 2e-5 and from_api["unmask_messages"] is True


def test_flags_override_the_config_file(tmp_path, capsys):
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(yaml.safe_dump(PARAMS))
    out = _cli_config(["--config", str(cfg_file), "--learning-rate", "1e-4", "--checkpoint-at-epoch",
                       "--model", "other/model"], capsys)
    assert out["learning_rate"] == 1e-4
    assert out["checkpoint_at_epoch"] is True
    assert out["model_path"] == "other/model"
    assert out["num_epochs"] == 3  # from the file


def test_unknown_keyword_names_it_and_suggests():
    with pytest.raises(HoneError) as err:
        RunConfig.from_flat("sft", {**PARAMS, "learning_rat": 1e-5})
    assert "'learning_rat'" in str(err.value) and "'learning_rate'" in str(err.value)


def test_unknown_yaml_key_names_the_file(tmp_path, capsys):
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(yaml.safe_dump({**PARAMS, "num_epoch": 2}))
    assert main(["train", "sft", "--config", str(cfg_file), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "'num_epoch'" in err and "'num_epochs'" in err and str(cfg_file) in err
    assert "Traceback" not in err


def test_invalid_value_names_the_parameter():
    with pytest.raises(HoneError) as err:
        RunConfig.from_flat("sft", {**PARAMS, "lr_scheduler": "exponential"})
    assert "lr_scheduler" in str(err.value)
    with pytest.raises(HoneError, match="num_epochs"):
        RunConfig.from_flat("sft", {**PARAMS, "num_epochs": 0})


def test_missing_required_parameter():
    params = dict(PARAMS)
    del params["data_path"]
    with pytest.raises(HoneError, match="missing required parameter 'data_path'"):
        RunConfig.from_flat("sft", params)


def test_invalid_yaml_names_the_line(tmp_path, capsys):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("learning_rate: 1e-5\nnum_epochs: [1,\n")
    assert main(["train", "sft", "--config", str(cfg_file), "--print-config"]) == 2
    assert f"{cfg_file}:" in capsys.readouterr().err


def test_saved_params_hold_no_volatile_switches():
    flat = RunConfig.from_flat("sft", {**PARAMS, "overwrite": True}).to_flat(include_volatile=False)
    assert "overwrite" not in flat and "progress" not in flat
    assert flat["learning_rate"] == 2e-5


def test_pretraining_needs_block_size_like_training_hub():
    with pytest.raises(ValueError, match="is_pretraining=True needs block_size"):  # a HoneError is a ValueError
        RunConfig.from_flat("sft", {**PARAMS, "is_pretraining": True, "block_size": None})
    assert RunConfig.from_flat("sft", {**PARAMS, "is_pretraining": True, "block_size": 512}).data.block_size == 512


def test_training_hub_backend_names_and_osft_cross_checks():
    assert RunConfig.from_flat("sft", {**PARAMS, "backend": "instructlab-training"}).train.backend == "instructlab-training"
    with pytest.raises(HoneError, match="unknown backend 'mini-trainer' for sft"):
        RunConfig.from_flat("sft", {**PARAMS, "backend": "mini-trainer"})
    with pytest.raises(HoneError, match="is_pretraining=True and unmask_messages=True contradict"):
        RunConfig.from_flat("osft", {**PARAMS, "unfreeze_rank_ratio": 0.5, "is_pretraining": True, "block_size": 256,
                                     "unmask_messages": True})
    cfg = RunConfig.from_flat("sft", {**PARAMS, "rdzv_id": 123, "max_batch_len": 4096, "max_seq_len": 1024,
                                      "lr_scheduler": "cosine_with_restarts", "lr_scheduler_kwargs": {"num_cycles": 2}})
    assert cfg.distributed.rdzv_id == 123 and cfg.train.max_tokens_per_gpu == 4096
    with pytest.raises(HoneError, match="max_batch_len \\(4096\\) and max_tokens_per_gpu \\(8192\\) disagree"):
        RunConfig.from_flat("sft", {**PARAMS, "max_batch_len": 4096, "max_tokens_per_gpu": 8192})
    with pytest.raises(HoneError, match="unknown lr_scheduler 'cosin': did you mean 'cosine'"):
        RunConfig.from_flat("sft", {**PARAMS, "lr_scheduler": "cosin"})


def test_training_hub_defaults_per_function():
    base = {k: v for k, v in PARAMS.items() if k != "checkpoint_at_epoch"}
    sft = RunConfig.from_flat("sft", base).train
    osft = RunConfig.from_flat("osft", {**base, "unfreeze_rank_ratio": 0.5}).train
    assert sft.accelerate_full_state_at_epoch is True and sft.checkpoint_at_epoch is True  # instructlab-training
    assert osft.accelerate_full_state_at_epoch is False and osft.checkpoint_at_epoch is False  # mini-trainer


def test_every_parameter_name_belongs_to_one_section():
    """Flat names (Python keywords, YAML keys, CLI flags) must say which setting they are."""
    import collections

    from hone.config import ALGORITHMS

    for algorithm in ALGORITHMS:
        names = collections.Counter(n for s in RunConfig.sections(algorithm).values() for n in s.model_fields)
        assert [n for n, c in names.items() if c > 1] == [], algorithm
