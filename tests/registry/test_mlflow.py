"""The embedded registry (MLflow on SQLite in a temporary hone home), through the CLI and the library."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from hone.cli.main import main
from hone.errors import HoneError
from hone.registry.mlflow_backend import MLflowRegistry
from hone.training.metrics import read_metrics
from reg_helpers import PLANTED_ENV, PLANTED_INLINE, assert_no_secret, assert_tree_clean, register_worker


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def home(fresh_home) -> Path:
    return fresh_home("hone-home")


@pytest.fixture(scope="module")
def registered(home, secret_run, eval_dir, planted_env):
    """tiny-bot:1.0.0 registered through `hone registry register`, with secrets planted everywhere a user
    could put them (environment, saved parameters, --metadata, --description, evaluation reports).
    Returns (the version as JSON, every line the CLI and the loggers printed)."""
    logs = _Records()
    for name in ("hone", "mlflow", ""):
        logging.getLogger(name).addHandler(logs)
    try:
        rc, out, err = run_cli(
            "registry", "register", str(secret_run / "hf_format" / "final"), "--home", str(home),
            "--name", "tiny-bot", "--version", "1.0.0", "--alias", "champion", "--eval-results", str(eval_dir),
            "--metadata", "team=nlp", "--metadata", f"api_key={PLANTED_INLINE['keyed']}",
            "--metadata", f"note=pulled with {PLANTED_INLINE['hf_inline']}",
            "--description", f"tiny bot (token {PLANTED_ENV['HF_TOKEN']})", "--json")
    finally:
        for name in ("hone", "mlflow", ""):
            logging.getLogger(name).removeHandler(logs)
    assert rc == 0, err
    return json.loads(out), "\n".join([out, err, *logs.lines])


def test_register_list_show_alias_download_round_trip(registered, home, secret_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info, _ = registered
    assert (info["name"], info["version"], info["aliases"], info["backend"]) == \
        ("tiny-bot", "1.0.0", ["champion"], "mlflow")
    rc, out, _ = run_cli("registry", "list", "--home", str(home), "--json")
    assert rc == 0
    [model] = [m for m in json.loads(out) if m["name"] == "tiny-bot"]
    assert model["versions"] == ["1.0.0"] and model["aliases"] == {"champion": "1.0.0"}
    shown = [json.loads(run_cli("registry", "show", ref, "--home", str(home), "--json")[1])
             for ref in ("tiny-bot", "tiny-bot:1.0.0", "tiny-bot@champion")]
    assert shown[0] == shown[1] == shown[2] and shown[0]["metadata"] == info["metadata"]
    rc, out, _ = run_cli("registry", "show", "tiny-bot:1.0.0", "--home", str(home))
    assert rc == 0 and "base_model" in out and "@champion" in out

    rc, out, _ = run_cli("registry", "alias", "tiny-bot:1.0.0", "prod", "--home", str(home))
    assert rc == 0 and "tiny-bot@prod -> 1.0.0" in out
    assert MLflowRegistry(home=home).get_by_alias("tiny-bot", "prod").version == "1.0.0"

    rc, out, err = run_cli("registry", "download", "tiny-bot@champion", "--output", str(tmp_path / "dl"),
                           "--home", str(home))
    assert rc == 0, err
    record = json.loads((tmp_path / "dl" / "hone_registry.json").read_text())
    assert record["version"] == "1.0.0"
    # the registered model loads with transformers and is the trained one, weight for weight
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dl")
    original = AutoModelForCausalLM.from_pretrained(secret_run / "hf_format" / "final")
    a, b = loaded.state_dict(), original.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tok = AutoTokenizer.from_pretrained(tmp_path / "dl")
    assert tok.chat_template and tok.encode("the sky is blue")


def test_lineage_is_complete(registered, secret_run):
    meta = registered[0]["metadata"]
    params = json.loads((secret_run / "training_params.json").read_text())
    result = json.loads((secret_run / "training_result.json").read_text())
    assert meta["base_model"] == params["model_path"] and meta["algorithm"] == "sft"
    assert meta["dataset_uri"].endswith("@data.example.com/chat.jsonl")
    assert meta["training_learning_rate"] == params["learning_rate"]  # typed back from MLflow's text tags
    assert meta["training_num_epochs"] == 2 and meta["training_checkpoint_at_epoch"] is False
    assert meta["training_final_loss"] == result["final_loss"]
    assert meta["eval_arc_easy/acc"] == 0.625
    assert meta["team"] == "nlp" and meta["hone_version"]
    recorded = [k for k, v in params.items() if v not in (None, {}, [])]  # empty mappings flatten to nothing
    assert sum(k.startswith("training_") for k in meta) >= len(recorded) - 3


def test_run_holds_every_step_parameters_charts_and_reports(registered, home, secret_run):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    run = client.get_run(registered[0]["run_id"])
    assert run.info.status == "FINISHED"
    records = read_metrics(secret_run / "training_metrics.jsonl")
    for key in ("loss", "lr", "grad_norm", "num_tokens", "epoch"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == [(r["step"], float(r[key])) for r in records], key
    assert run.data.params["learning_rate"] == "0.001" and run.data.params["hf_token"] == "[REDACTED]"
    assert run.data.metrics["training_final_loss"] == registered[0]["metadata"]["training_final_loss"]
    assert run.data.metrics["eval_arc_easy/acc"] == 0.625
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_chart.png", "loss_chart.html", "training_params.json", "training_metrics.jsonl",
            "reports"} <= names
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "reports")} >= \
        {"metrics.json", "comparison.md", "eval_config.json"}


def test_secrets_never_stored_logged_or_printed(registered, home):
    files = assert_tree_clean(home)  # mlflow.db bytes, every artifact, every model file
    assert files > 10
    assert_no_secret(registered[1], "CLI output and logs")
    meta = registered[0]["metadata"]
    assert meta["api_key"] == "[REDACTED]" and meta["training_hf_token"] == "[REDACTED]"
    assert "[REDACTED]" in registered[0]["description"]


def test_duplicate_version_refused_never_overwritten(registered, home, secret_run):
    reg = MLflowRegistry(home=home)
    before = reg.get("tiny-bot", "1.0.0")
    with pytest.raises(HoneError, match="already registered"):
        reg.register(secret_run / "hf_format" / "final", name="tiny-bot", version="1.0.0", metadata={"x": 1})
    rc, _, err = run_cli("registry", "register", str(secret_run / "hf_format" / "final"), "--home", str(home),
                         "--name", "tiny-bot", "--version", "1.0.0")
    assert rc == 2 and "already registered" in err and "Traceback" not in err
    assert [v.version for v in reg.list_versions("tiny-bot")] == ["1.0.0"]
    assert reg.get("tiny-bot", "1.0.0") == before


def test_user_errors_exit_2_without_traceback(registered, home, tmp_path, secret_run):
    cases = [
        (("registry", "show", "nope:1.0"), "not in the registry"),
        (("registry", "show", "tiny-bot:9.9.9"), "not in the registry"),
        (("registry", "show", "tiny-bot@nobody"), "not in the registry"),
        (("registry", "register", str(tmp_path / "missing"), "--name", "m", "--version", "1"), "not found"),
        (("registry", "register", str(secret_run / "hf_format" / "final"), "--name", "a/b", "--version", "1"),
         "cannot contain '/'"),
        (("registry", "register", str(secret_run), "--name", "m", "--version", "1"), "not a Hugging Face model"),
        (("registry", "download", "tiny-bot:1.0.0", "--output", str(secret_run)), "not empty"),
        (("registry", "list", "--backend", "kubeflow"), "no registry to read"),
    ]
    for argv, message in cases:
        rc, out, err = run_cli(*argv, "--home", str(home))
        assert rc == 2, (argv, out, err)
        assert message in err and "Traceback" not in err, (argv, err)


def test_eight_concurrent_registrations(registered, fresh_home, secret_run):
    """8 processes register into one SQLite store at once: 7 distinct versions succeed, the 2 racing for
    the same version end with one success and one clear refusal; the store stays consistent."""
    home = fresh_home("concurrent")  # a store this process never opened: no SQLite handle crosses the fork
    model = secret_run / "hf_format" / "final"
    versions = ["c1", "c2", "c3", "c4", "c5", "c6", "race", "race"]
    # fork: the workers start with everything this process imported (registration is then ~1 s of work)
    with ProcessPoolExecutor(max_workers=8, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(register_worker, [str(home)] * 8, [str(model)] * 8, ["tiny-concurrent"] * 8,
                                versions))
    crashes = [r for r in results if r[0] == "crash"]
    assert not crashes, crashes[0][2]
    ok = sorted(r[1] for r in results if r[0] == "ok")
    refused = [r for r in results if r[0] == "refused"]
    assert ok == ["c1", "c2", "c3", "c4", "c5", "c6", "race"]
    assert len(refused) == 1 and refused[0][1] == "race" and "already registered" in refused[0][2]
    numbers = sorted(int(r[2]) for r in results if r[0] == "ok")
    assert numbers == list(range(1, 8))  # MLflow's version numbers: no gap, no duplicate
    reg = MLflowRegistry(home=home)
    listed = reg.list_versions("tiny-concurrent")
    assert sorted(v.version for v in listed) == ok
    assert all(v.metadata["worker_version"] == v.version for v in listed)
    with sqlite3.connect(home / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        runs = db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
    # the loser of the race is refused either before it opens a run or after (then its run says FAILED)
    runs = dict(runs)
    assert runs.pop("FINISHED") == 7 and runs in ({}, {"FAILED": 1})
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    client = MlflowClient(reg.tracking_uri, reg.tracking_uri)
    models = client.search_logged_models([client.get_experiment_by_name("hone").experiment_id])
    ready = [m.status == LoggedModelStatus.READY for m in models]
    assert ready.count(True) == 7 and len(ready) == 7 + sum(runs.values())  # no half-registered model is READY


def test_tracker_logs_a_run_as_it_trains_and_registration_reuses_it(home, trained_run, tmp_path, planted_env):
    """MLflowTracker driven the way the trainer drives it (start, every step, finish); registering the run's
    model afterwards logs into that same run."""
    from mlflow import MlflowClient

    from hone.registry.tracking import MLflowTracker
    from hone.training.run import TrainResult

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    params = json.loads((run_dir / "training_params.json").read_text())
    params["hf_token"] = PLANTED_ENV["HF_TOKEN"]

    class Cfg:  # the TrainConfig fields the tracker reads
        mlflow_tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
        mlflow_experiment_name = "training"
        mlflow_run_name = "tiny-sft"
        ckpt_output_dir = str(run_dir)

    tracker = MLflowTracker.from_config(Cfg)
    assert MLflowTracker.from_config(type("Off", (), {})) is None
    run_id = tracker.start(params)
    records = read_metrics(run_dir / "training_metrics.jsonl")
    for record in records:
        tracker.log_step(record)
    result = TrainResult.from_json(json.loads((run_dir / "training_result.json").read_text()))
    result.output_dir = run_dir
    tracker.finish(result)

    client = MlflowClient(Cfg.mlflow_tracking_uri, Cfg.mlflow_tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-sft"
    assert client.get_experiment(run.info.experiment_id).name == "training"
    for key in ("loss", "lr", "tokens_per_second"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(r["step"], float(r[key])) for r in records], key
    assert run.data.params["hf_token"] == "[REDACTED]"
    assert "loss_chart.png" in {a.path for a in client.list_artifacts(run_id)}

    info = MLflowRegistry(home=home).register(run_dir / "hf_format" / "final", name="tracked", version="1",
                                              metadata={}, run_dir=run_dir)
    assert info.run_id == run_id  # the training's run, not a new one
    assert len(client.get_metric_history(run_id, "loss")) == len(records)  # steps not logged twice
    assert_tree_clean(home)


def test_ui_starts_mlflow_on_localhost(home, registered, monkeypatch):
    calls = []
    from hone.registry import ui

    monkeypatch.setattr(ui, "serve", lambda argv, url, on_ready: calls.append(argv) or on_ready(url) or 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, out, err = run_cli("registry", "ui", "--home", str(home), "--ui-port", str(port))
    assert rc == 0, err
    assert f"MLflow UI: http://127.0.0.1:{port}" in out
    [argv] = calls
    assert argv[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == str(port)
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{home / 'mlflow.db'}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        rc, _, err = run_cli("registry", "ui", "--home", str(home), "--ui-port", str(busy.getsockname()[1]))
        assert rc == 2 and "in use" in err


def test_ui_url_is_printed_only_once_the_server_answers():
    from hone.errors import HoneError
    from hone.registry import ui

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    slow_server = [sys.executable, "-c", "import runpy, sys, time; time.sleep(1.5); "
                   f"sys.argv = ['http.server', '--bind', '127.0.0.1', '{port}']; "
                   "runpy.run_module('http.server', run_name='__main__')"]
    seen: list[bool] = []

    def ready(u: str) -> None:
        seen.append(ui.answers(u))
        raise KeyboardInterrupt  # Ctrl-C: the server is stopped, serve returns 0

    start = time.monotonic()
    assert ui.serve(slow_server, url, ready) == 0
    assert seen == [True] and time.monotonic() - start >= 1.5 and not ui.answers(url)
    with pytest.raises(HoneError, match="exited with status 3 before answering"):
        ui.serve([sys.executable, "-c", "raise SystemExit(3)"], url, seen.append)
    assert seen == [True]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("HONE_TEST_MLFLOW_UI"),
                    reason="starts a real MLflow server (30 s or more on 2 cores); set HONE_TEST_MLFLOW_UI=1")
def test_ui_serves_the_registry(home, registered):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hone", "registry", "ui", "--home", str(home), "--ui-port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == f"MLflow UI: http://127.0.0.1:{port}"
        deadline, body = time.time() + 120, ""
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/search",
                                            timeout=5) as resp:
                    body = resp.read().decode()
                    break
            except OSError:
                time.sleep(1)
        assert "tiny-bot" in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif("mlflow_tracking_uri" not in __import__("hone.config", fromlist=["TrainConfig"]).TrainConfig
                    .model_fields, reason="TrainConfig has no mlflow_* fields yet (training not wired to the tracker)")
def test_training_logs_to_mlflow_as_it_runs(tiny_model_dir, trained_run, tmp_path):
    """With mlflow_* set, `hone.sft` logs its run while it trains: the run's step metrics equal
    training_metrics.jsonl."""
    import torch
    from mlflow import MlflowClient

    import hone

    uri = f"sqlite:///{tmp_path / 'track.db'}"
    torch.set_num_threads(1)
    out = tmp_path / "run"
    hone.sft(str(tiny_model_dir), json.loads((trained_run / "training_params.json").read_text())["data_path"],
             str(out), num_epochs=1, effective_batch_size=4, max_seq_len=256, max_tokens_per_gpu=1024,
             device="cpu", dtype="float32", checkpoint_at_epoch=False, progress=False,
             mlflow_tracking_uri=uri, mlflow_experiment_name="wired", mlflow_run_name="live")
    client = MlflowClient(uri, uri)
    [run] = client.search_runs([client.get_experiment_by_name("wired").experiment_id])
    records = read_metrics(out / "training_metrics.jsonl")
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert history == [(r["step"], r["loss"]) for r in records]
    assert run.info.status == "FINISHED" and run.info.run_name == "live"
