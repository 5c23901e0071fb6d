"""Fixtures of the registry tests: one tiny training run, an evaluation output, planted secrets, and a hone home.

Everything runs offline on 127.0.0.1; MLflow's telemetry is off.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
for _var in ("NO_PROXY", "no_proxy"):  # the registry fakes listen on 127.0.0.1: never through a proxy
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))

from reg_helpers import PLANTED_ENV, PLANTED_INLINE  # noqa: E402

QA = [("what colour is the sky", "the sky is blue"), ("what do cats say", "cats say meow"),
      ("name a fruit", "an apple is a fruit"), ("how many legs has a dog", "a dog has four legs"),
      ("where do fish live", "fish live in the water"), ("what is ice", "ice is frozen water"),
      ("when is it dark", "it is dark at night"), ("what do birds do", "birds fly and sing")]


@pytest.fixture(scope="module", autouse=True)
def _default_home(tmp_path_factory):
    """$HONE_HOME in a temporary directory: nothing a test does lands in ./hone-runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HONE_HOME", str(tmp_path_factory.mktemp("default-home")))
        yield


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An embedded store with its schema created (once: MLflow's migrations take seconds); copy it with
    :func:`fresh_home`."""
    from hone.registry.mlflow_backend import MLflowRegistry

    home = tmp_path_factory.mktemp("template")
    MLflowRegistry(home=home).client
    return home / "mlflow.db"


@pytest.fixture(scope="session")
def fresh_home(mlflow_template, tmp_path_factory):
    """A function making new, empty hone homes (copies of the template store)."""
    def make(name: str = "home") -> Path:
        home = tmp_path_factory.mktemp(name)
        shutil.copyfile(mlflow_template, home / "mlflow.db")
        return home
    return make


@pytest.fixture(scope="module")
def planted_env():
    """The planted secrets in os.environ, for one test module at a time (registrations read the environment)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in PLANTED_ENV.items():
            mp.setenv(key, value)
        yield PLANTED_ENV


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A real (tiny, 4-step) SFT run: hf_format/final, training_params.json, training_metrics.jsonl, charts."""
    import torch

    import hone

    root = tmp_path_factory.mktemp("train")
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in QA))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hone.sft(str(tiny_model_dir), str(data), str(root / "run"), num_epochs=2, effective_batch_size=4,
                 max_seq_len=256, max_tokens_per_gpu=1024, learning_rate=1e-3, device="cpu", dtype="float32",
                 checkpoint_at_epoch=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "run"


@pytest.fixture(scope="session")
def eval_dir(tmp_path_factory) -> Path:
    """What the evaluation stage writes: metrics.json (flat scores), eval_results.json, eval_config.json, a
    comparison report; eval_config.json carries planted secrets (a token in model_args)."""
    out = tmp_path_factory.mktemp("eval") / "eval"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"arc_easy/acc": 0.625, "arc_easy/acc_norm": 0.5,
                                                  "holdout/loss": 2.25, "holdout/exact_match": 0.0}))
    (out / "eval_results.json").write_text(json.dumps({"results": {"arc_easy": {"acc,none": 0.625,
                                                                                "alias": "arc_easy"}}}))
    (out / "eval_config.json").write_text(json.dumps({
        "tasks": ["arc_easy"], "model_args": f"pretrained=x,token={PLANTED_ENV['HF_TOKEN']}",
        "hub": f"https://user:{PLANTED_INLINE['url_password']}@hub.example.com/models"}))
    (out / "comparison.md").write_text(f"| metric | base | tuned |\n|---|---|---|\n| acc | 0.5 | 0.625 |\n"
                                       f"<!-- {PLANTED_ENV['AWS_SECRET_ACCESS_KEY']} -->\n")
    return out


@pytest.fixture(scope="session")
def secret_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the training run whose saved parameters hold planted secrets (as a careless user's might)."""
    run = tmp_path_factory.mktemp("secret") / "run"
    shutil.copytree(trained_run, run)
    params = json.loads((run / "training_params.json").read_text())
    params["hf_token"] = PLANTED_ENV["HF_TOKEN"]
    params["data_path"] = f"https://robot:{PLANTED_INLINE['url_password']}@data.example.com/chat.jsonl"
    params["note"] = f"pulled with {PLANTED_INLINE['hf_inline']}"
    (run / "training_params.json").write_text(json.dumps(params, indent=2))
    return run
