"""Weights & Biases, TensorBoard and MLflow tracking of a real (tiny) training run, turned on as Training Hub
turns them on; every tracker's files read back with the tracker's own formats and checked for planted secrets."""
from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from hone.errors import HoneError
from hone.registry.trackers import CompositeTracker, TensorBoardTracker, WandbTracker, tracker_from_config
from hone.registry.tracking import MLflowTracker
from hone.training.metrics import read_metrics
from qa_pairs import QA
from reg_helpers import PLANTED_ENV, assert_tree_clean

pytestmark = pytest.mark.usefixtures("single_cpu_thread")

METRICS = ("loss", "lr", "grad_norm", "tokens_per_second", "num_tokens")


def cfg(**fields) -> SimpleNamespace:
    names = ("mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name", "wandb_project", "wandb_entity",
             "wandb_run_name", "tensorboard_log_dir")
    return SimpleNamespace(**{"ckpt_output_dir": "/tmp/out", **dict.fromkeys(names), **fields})


def kinds(tracker) -> list[type]:
    if tracker is None:
        return []
    return [type(t) for t in tracker.trackers] if isinstance(tracker, CompositeTracker) else [type(tracker)]


def test_trackers_turn_on_as_training_hub_does():
    assert tracker_from_config(cfg(), env={}) is None
    # MLflow: any mlflow_* parameter, or MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME alone
    mlflow = tracker_from_config(cfg(), env={"MLFLOW_TRACKING_URI": "sqlite:////tmp/x/mlflow.db"})
    assert kinds(mlflow) == [MLflowTracker] and mlflow.store.tracking_uri == "sqlite:////tmp/x/mlflow.db"
    named = tracker_from_config(cfg(), env={"MLFLOW_EXPERIMENT_NAME": "e", "MLFLOW_RUN_NAME": "r-{rank}"})
    assert (named.store.experiment_name, named.run_name) == ("e", "r-0")
    assert tracker_from_config(cfg(), env={"MLFLOW_RUN_NAME": "r"}) is None  # a name alone turns nothing on
    assert kinds(tracker_from_config(cfg(mlflow_run_name="r"), env={})) == [MLflowTracker]
    # W&B: wandb_project or WANDB_PROJECT; the parameter wins; WANDB_DIR leaves the directory to wandb
    assert tracker_from_config(cfg(wandb_entity="team", wandb_run_name="n"), env={}) is None
    wb = tracker_from_config(cfg(), env={"WANDB_PROJECT": "p", "WANDB_ENTITY": "team", "WANDB_RUN_NAME": "n"})
    assert (wb.project, wb.entity, wb.run_name, wb.run_dir) == ("p", "team", "n", Path("/tmp/out"))
    wb = tracker_from_config(cfg(wandb_project="mine"), env={"WANDB_PROJECT": "p", "WANDB_DIR": "/tmp/wb"})
    assert (wb.project, wb.run_dir) == ("mine", None)
    # TensorBoard: tensorboard_log_dir; all three at once make one composite
    assert kinds(tracker_from_config(cfg(tensorboard_log_dir="/tmp/tb"), env={})) == [TensorBoardTracker]
    every = tracker_from_config(cfg(wandb_project="p", tensorboard_log_dir="/tmp/tb"),
                                env={"MLFLOW_TRACKING_URI": "sqlite:////tmp/x/mlflow.db"})
    assert kinds(every) == [MLflowTracker, WandbTracker, TensorBoardTracker]


def test_missing_package_names_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in {"wandb", "tensorboard",
                                                                                      "mlflow"} else real(name, *a))
    for config, env, package, where in [
        (cfg(wandb_project="p"), {}, "wandb", "parameter wandb_project"),
        (cfg(), {"WANDB_PROJECT": "p"}, "wandb", "environment variable WANDB_PROJECT"),
        (cfg(tensorboard_log_dir="/tmp/tb"), {}, "tensorboard", "parameter tensorboard_log_dir"),
        (cfg(), {"MLFLOW_TRACKING_URI": "sqlite:////tmp/x.db"}, "mlflow", "environment variable MLFLOW_TRACKING_URI"),
    ]:
        with pytest.raises(HoneError, match=f"pip install {package}") as err:
            tracker_from_config(config, env=env)
        assert err.value.where == where


def test_only_rank_0_tracks(monkeypatch, tmp_path):
    import hone.training.run
    from hone.api import run
    from hone.config import RunConfig

    seen = []
    monkeypatch.setattr(hone.training.run, "run_training", lambda cfg, hooks, tracker: seen.append(tracker))
    config = RunConfig.from_flat("sft", {"model_path": "m", "data_path": "d.jsonl", "ckpt_output_dir": str(tmp_path),
                                         "wandb_project": "p", "tensorboard_log_dir": str(tmp_path / "tb")})
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        run(config)
    assert kinds(seen[0]) == [] and kinds(seen[1]) == [WandbTracker, TensorBoardTracker]


def test_a_failing_tracker_warns_once_and_the_others_go_on(tmp_path, caplog, monkeypatch):
    import wandb
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    broken, good = TensorBoardTracker(tmp_path / "broken"), TensorBoardTracker(tmp_path / "good")
    both = CompositeTracker([broken, good])
    both.start({"learning_rate": 0.001, "hf_token": PLANTED_ENV["HF_TOKEN"]})  # a secret parameter

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(broken.writer, "add_scalar", fail)
    with caplog.at_level(logging.WARNING, logger="hone"):
        for step in (1, 2, 3):
            both.log_step({"step": step, "loss": 1.0 / step, "val_loss": 2.0 / step, "sample_ids": [1]})
        both.finish(status="FAILED")
    warnings = [r.getMessage() for r in caplog.records if "tracking stopped" in r.getMessage()]
    assert warnings == ["TensorBoard tracking stopped (training goes on): disk full"]
    events = EventAccumulator(str(good.run_dir))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val_loss")] == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]
    assert_tree_clean(tmp_path)  # the parameters on the HPARAMS tab are redacted

    # a tracker that cannot start fails the run before training, and closes those already started
    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    first = TensorBoardTracker(tmp_path / "first")
    with pytest.raises(HoneError, match="cannot start Weights & Biases tracking: api_key not configured") as err:
        CompositeTracker([first, WandbTracker("p", run_dir=tmp_path)]).start({})
    assert "WANDB_MODE=offline" in err.value.fix and first.writer is None


def wandb_records(path: Path):
    """The records of a ``.wandb`` file (W&B's LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs:
    a 7-byte file header, 32 KiB blocks, each chunk with a 7-byte header: CRC32, length, type)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # the rest of a block too small for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            yield Record.FromString(pending)
            pending = b""


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir, fresh_home, planted_env, tmp_path_factory):
    """A real tiny SFT run with W&B (offline) and TensorBoard asked for by parameters, and MLflow turned on by
    nothing but MLFLOW_TRACKING_URI in the environment; HF_TOKEN (and other secrets) planted in it."""
    import hone

    root = tmp_path_factory.mktemp("tracked")
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in QA))
    store = root / "store"
    store.mkdir()
    shutil.copyfile(fresh_home("tracked-home") / "mlflow.db", store / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_PROJECT", "WANDB_DIR", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_NAME"):
            mp.delenv(name, raising=False)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        hone.sft(str(tiny_model_dir), str(data), str(root / "run"), num_epochs=2, effective_batch_size=4,
                 max_seq_len=256, max_tokens_per_gpu=1024, learning_rate=1e-3, device="cpu", dtype="float32",
                 checkpoint_at_epoch=False, save_final_checkpoint=False, progress=False,
                 wandb_project="hone-tests", wandb_run_name="tiny-{rank}", tensorboard_log_dir=str(root / "tb"))
    return SimpleNamespace(root=root, out=root / "run", tb=root / "tb", store=store,
                           records=read_metrics(root / "run" / "training_metrics.jsonl"))


def test_wandb_offline_run_holds_every_step(tracked_run):
    [run_dir] = (tracked_run.out / "wandb").glob("offline-run-*")
    [log_file] = run_dir.glob("run-*.wandb")
    records = list(wandb_records(log_file))
    [run] = [r.run for r in records if r.HasField("run")]
    assert (run.project, run.display_name) == ("hone-tests", "tiny-0")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["learning_rate"] == 0.001 and config["model_path"]
    history = {}
    for r in records:
        if r.HasField("history"):
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            history[r.history.step.num] = row
    assert sorted(history) == [r["step"] for r in tracked_run.records]
    for key in METRICS:
        assert [history[r["step"]][key] for r in tracked_run.records] == [float(r[key]) for r in tracked_run.records]
    summary = {item.key: json.loads(item.value_json) for r in records if r.HasField("summary")
               for item in r.summary.update}
    assert summary["training_final_loss"] == tracked_run.records[-1]["loss"]
    assert [r.exit.exit_code for r in records if r.HasField("exit")] == [0]


def test_tensorboard_scalars_match_training_metrics(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run_dir] = tracked_run.tb.iterdir()
    assert run_dir.name.endswith("_rank0")
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert set(METRICS) <= set(events.Tags()["scalars"])
    for key in METRICS:
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in tracked_run.records], key


def test_mlflow_on_from_the_environment_alone(tracked_run):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tracked_run.store / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    [run] = client.search_runs([client.get_experiment_by_name("hone").experiment_id])
    assert run.info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert history == [(r["step"], r["loss"]) for r in tracked_run.records]


def test_no_secret_in_any_trackers_files(tracked_run):
    assert PLANTED_ENV["HF_TOKEN"]
    assert assert_tree_clean(tracked_run.out / "wandb") >= 3
    assert assert_tree_clean(tracked_run.tb) >= 1
    assert assert_tree_clean(tracked_run.store) >= 1
