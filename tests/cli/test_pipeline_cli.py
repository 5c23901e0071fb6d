"""`hone pipeline`: run from a YAML file and flags, errors with exit 2, params listing, the docs' table."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from hone.cli.main import main
from hone.pipeline.params import PARAMS, UPSTREAM_ALIASES

ROOT = Path(__file__).resolve().parents[2]


def test_pipeline_run_from_config_then_cached(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}"},
                                                     {"role": "assistant", "content": f"{i} said."}]}) + "\n"
                            for i in range(12)))
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump({
        "algorithm": "lora", "phase_01_dataset_man_data_uri": str(data), "phase_01_dataset_man_data_split": 0.75,
        "phase_02_train_man_train_epochs": 1,  # the upstream OSFT spelling is accepted
        "phase_02_train_man_train_batch": 6, "phase_02_train_man_tokens": 2048, "phase_02_train_opt_max_seq_len": 256,
        "phase_02_train_opt_save_epoch": False, "phase_03_eval_man_tasks": []}))
    run_dir = tmp_path / "run"
    argv = ["pipeline", "run", "--config", str(cfg), "--model", str(tiny_model_dir), "--run-dir", str(run_dir),
            "-p", "phase_02_train_man_lora_r=4", "--no-register"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "registration  completed" in out and "SKIPPED" in out and "holdout/loss" in out
    assert f"report: {run_dir / 'report.html'}" in out
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["algorithm"] == "lora" and manifest["params"]["phase_02_train_man_lora_r"] == 4
    assert manifest["params"]["phase_02_train_man_epochs"] == 1
    assert main(argv) == 0
    assert capsys.readouterr().out.count("(cached)") == 4


def test_pipeline_errors_exit_2_without_traceback(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    code = main(["pipeline", "run", "--data", str(data), "--model", str(tiny_model_dir), "-p", "phase_02_train_man_epocs=2"])
    err = capsys.readouterr().err
    assert code == 2 and "phase_02_train_man_epochs" in err and "Traceback" not in err
    assert "--param phase_02_train_man_epocs" in err  # where
    code = main(["pipeline", "run", "--data", str(data), "-p", "nonsense"])
    assert code == 2 and "NAME=VALUE" in capsys.readouterr().err
    code = main(["pipeline", "report", str(tmp_path)])
    assert code == 2 and "no manifest.json" in capsys.readouterr().err


def test_params_listing_and_docs_cover_every_parameter(capsys):
    assert main(["pipeline", "params", "--flavor", "osft-minimal"]) == 0
    out = capsys.readouterr().out
    assert "phase_01_dataset_man_data_uri" in out and "(required)" in out and "phase_02_train_opt_cpu" not in out
    assert "phase_02_train_man_workers                 int    1" in out
    docs = (ROOT / "docs" / "pipeline.md").read_text()
    missing = [p.name for p in PARAMS if f"`{p.name}`" not in docs] + [a for a in UPSTREAM_ALIASES if a not in docs]
    assert not missing, f"docs/pipeline.md does not list {missing}"
