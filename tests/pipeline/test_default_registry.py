"""The local pipeline registers in the embedded MLflow registry under the hone home by default, where a plain
`hone registry list` in the same directory finds it; `--no-register` skips it; a failed run says where its
run directory is and how to resume, once; library log lines are printed once."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hone.cli.main import main
from hone.errors import HoneError
from hone.pipeline import runner as R
from hone.pipeline import stages as S

pytestmark = pytest.mark.usefixtures("single_cpu_thread")

PARAMS = ["-p", "phase_02_train_man_epochs=1", "-p", "phase_02_train_man_train_batch=8",
          "-p", "phase_02_train_man_tokens=2048", "-p", "phase_02_train_opt_max_seq_len=256",
          "-p", "phase_02_train_opt_save_epoch=false", "-p", "phase_03_eval_man_tasks=[]",
          "-p", "phase_03_eval_opt_gen_kwargs={\"max_new_tokens\": 4}", "-p", "phase_01_dataset_man_data_split=0.8"]


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch) -> Path:
    """A fresh directory as the working directory, with no $HONE_HOME: the hone home is ./hone-runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HONE_HOME", raising=False)
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(10)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_plain_run_registers_in_the_hone_home_and_registry_list_shows_it(in_tmp_cwd, tiny_model_dir, capsys):
    argv = ["pipeline", "run", "--data", "chat.jsonl", "--model", str(tiny_model_dir), *PARAMS]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "SKIPPED" not in out and "sft-model:1.0.0" in out
    [run_dir] = (in_tmp_cwd / "hone-runs" / "pipelines").iterdir()  # the default run directory
    reg = json.loads((run_dir / "manifest.json").read_text())["stages"]["registration"]
    assert reg["status"] == "completed" and reg["summary"]["backend"] == "mlflow"
    assert (in_tmp_cwd / "hone-runs" / "mlflow.db").is_file()

    assert main(["registry", "list"]) == 0  # no --home: the same ./hone-runs
    assert capsys.readouterr().out.startswith("sft-model  1 version(s), latest 1.0.0")
    assert main(["registry", "show", "sft-model"]) == 0
    shown = capsys.readouterr().out
    for lineage in ("base_model", str(tiny_model_dir), "dataset_sha256", "pipeline_algorithm", str(run_dir)):
        assert lineage in shown, lineage

    assert main(argv) == 0  # the same command again: every stage cached, nothing registered twice
    assert capsys.readouterr().out.count("(cached)") == 4

    # another run with a changed parameter and no version asked for: the next free version, not an error
    assert main([*argv, "-p", "phase_02_train_opt_learning_rate=2e-5"]) == 0
    assert "sft-model:1.0.1" in capsys.readouterr().out
    with pytest.raises(HoneError, match="already registered") as err:  # a version asked for is never changed
        R.run_pipeline("chat.jsonl", model=str(tiny_model_dir), run_dir=in_tmp_cwd / "again",
                       params={"phase_04_registry_man_version": "1.0.0", "phase_03_eval_man_tasks": [],
                               "phase_02_train_man_epochs": 1, "phase_02_train_man_train_batch": 8,
                               "phase_02_train_man_tokens": 2048, "phase_02_train_opt_max_seq_len": 256,
                               "phase_02_train_opt_save_epoch": False, "phase_02_train_opt_learning_rate": 3e-5},
                       report=False)
    assert err.value.where == "phase_04_registry_man_version"


def test_no_register_skips_and_registers_nothing(in_tmp_cwd, tiny_model_dir, capsys):
    argv = ["pipeline", "run", "--data", "chat.jsonl", "--model", str(tiny_model_dir), *PARAMS,
            "--run-dir", "run", "--no-register"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "SKIPPED" in out
    assert not (in_tmp_cwd / "hone-runs" / "mlflow.db").exists()
    assert main(argv + ["--registry-home", "h"]) == 2
    assert "--no-register" in capsys.readouterr().err


def test_runner_default_registry():
    from hone.config import RegistryConfig
    from hone.registry.base import hone_home

    assert R.default_registry().registry_home == str(hone_home())  # resolved: it keys the stage's cache
    assert R.default_registry(False).registry_backend == "none"
    assert R.default_registry(RegistryConfig()).registry_home == str(hone_home())
    mine = RegistryConfig(registry_tracking_uri="sqlite:///x.db")
    assert R.default_registry(mine) is mine


def test_failed_run_prints_its_run_directory_and_how_to_resume_once(in_tmp_cwd, tiny_model_dir):
    lines: list[str] = []
    with pytest.raises(HoneError, match="injected failure"):
        R.run_pipeline("chat.jsonl", model=str(tiny_model_dir), params={"phase_03_eval_man_tasks": []},
                       registry=False, progress=R.Progress(lines.append), fail_stage="dataset")
    [run_dir] = (in_tmp_cwd / "hone-runs" / "pipelines").iterdir()
    assert lines[-2] == "[1/4] dataset: FAILED after " + lines[-2].rsplit(" ", 1)[1]
    hint = [line for line in lines if line.startswith("run directory:")]
    assert hint == [f"run directory: {run_dir}; rerun the same command to resume from the dataset stage "
                    f"(to change parameters and keep the finished stages, add --run-dir {run_dir})"]
    lines.clear()
    with pytest.raises(HoneError):
        R.run_pipeline("chat.jsonl", model=str(tiny_model_dir), params={"phase_03_eval_man_tasks": []},
                       run_dir="mine", registry=False, progress=R.Progress(lines.append), fail_stage="dataset")
    assert lines[-1] == (f"run directory: {in_tmp_cwd / 'mine'}; rerun the same command to resume from the "
                         "dataset stage")


def test_library_log_lines_are_printed_once():
    """huggingface_hub gives its logger a handler of its own and still propagates to the root logger: each of
    its lines (the hub's "Retrying in 1s [Retry 1/5]." when offline) used to be printed twice."""
    code = ("from hone.cli.main import main; main(['--version']); "
            "from huggingface_hub.utils import logging as hl; "
            "hl.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].'); "
            "import logging; logging.getLogger('hone').warning('a hone line')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("Retrying in 1s [Retry 1/5].") == 1
    assert "hone: a hone line" in proc.stderr
    assert S.SKIPPED == "SKIPPED"
