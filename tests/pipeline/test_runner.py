"""The local pipeline runner: a real run of the four stages on the tiny model, caching, resumption, the report."""
from __future__ import annotations

import json
import random
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hone.errors import HoneError
from hone.pipeline import runner as R
from hone.pipeline import stages as S

SECRET = "hf_pipelineSECRETtoken123"


def _chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        rows.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                  {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]})
    return rows


@pytest.fixture
def chat_file(tmp_path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(20)))
    return path


PARAMS = {"phase_02_train_man_epochs": 1, "phase_02_train_man_train_batch": 8, "phase_02_train_man_tokens": 4096,
          "phase_02_train_opt_max_seq_len": 512, "phase_02_train_opt_save_epoch": False,
          "phase_02_train_opt_learning_rate": 1e-3, "phase_01_dataset_man_data_split": 0.8,
          "phase_03_eval_man_tasks": [], "phase_03_eval_opt_gen_kwargs": {"max_new_tokens": 8},
          "phase_01_dataset_opt_hf_token": SECRET}


class Calls:
    """Counts the stage functions the runner calls (wrapping the real ones)."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in ("dataset_stage", "training_stage", "evaluation_stage", "registration_stage"):
            real = getattr(S, name)

            def wrapped(*a, _real=real, _name=name, **k):
                self.calls.append(_name.removesuffix("_stage"))
                return _real(*a, **k)

            monkeypatch.setattr(S, name, wrapped)


def _run(chat_file, run_dir, tiny_model_dir, **kw):
    lines: list[str] = []
    params = {**PARAMS, **kw.pop("params", {})}
    kw.setdefault("registry", False)  # registration off unless a test asks (default: the hone home's registry)
    result = R.run_pipeline(str(chat_file), algorithm=kw.pop("algorithm", "sft"), model=str(tiny_model_dir),
                            params=params, run_dir=run_dir, progress=R.Progress(lines.append), **kw)
    return result, lines


def test_full_run_then_rerun_skips_every_stage(tmp_path, chat_file, tiny_model_dir, monkeypatch):
    calls = Calls(monkeypatch)
    run_dir = tmp_path / "run"
    result, lines = _run(chat_file, run_dir, tiny_model_dir)
    assert calls.calls == ["dataset", "training", "evaluation", "registration"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    for stage in S.STAGES:
        st = manifest["stages"][stage]
        assert st["status"] == "completed" and len(st["inputs_sha256"]) == 64 and len(st["outputs_sha256"]) == 64
        assert st["duration_s"] >= 0
    assert manifest["stages"]["dataset"]["summary"]["train_rows"] == 16
    assert manifest["stages"]["dataset"]["summary"]["eval_rows"] == 4
    assert (result.model_dir / "config.json").is_file() and list(result.model_dir.glob("*.safetensors"))
    assert result.model_id == S.SKIPPED  # registration not asked for (registry=False)
    ev = result.results["evaluation"].summary
    assert "holdout/loss" in ev["metrics"] and "holdout/loss" in ev["base_metrics"]
    assert [line.split(":")[0] for line in lines if "done in" in line] == \
        ["[1/4] dataset", "[2/4] training", "[3/4] evaluation", "[4/4] registration"]
    # the token given as a parameter never reaches the manifest or the report
    for f in (run_dir / "manifest.json", run_dir / "report.html"):
        assert SECRET not in f.read_text()
    first_hashes = {s: manifest["stages"][s]["outputs_sha256"] for s in S.STAGES}

    calls.calls.clear()
    again, lines = _run(chat_file, run_dir, tiny_model_dir)
    assert calls.calls == []
    assert all("cached" in line for line in lines)
    assert again.model_dir == result.model_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {s: manifest["stages"][s]["outputs_sha256"] for s in S.STAGES} == first_hashes

    # a changed training parameter reruns training and what follows, not the dataset stage
    calls.calls.clear()
    _run(chat_file, run_dir, tiny_model_dir, params={"phase_02_train_opt_learning_rate": 5e-4})
    assert calls.calls == ["training", "evaluation", "registration"]

    # changed data content (same path) reruns everything
    calls.calls.clear()
    chat_file.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(20, seed=1)))
    _run(chat_file, run_dir, tiny_model_dir, params={"phase_02_train_opt_learning_rate": 5e-4})
    assert calls.calls == ["dataset", "training", "evaluation", "registration"]

    # an output deleted behind the runner's back is noticed, and restored from the stage store (the same
    # inputs ran before) rather than recomputed; --force-from reruns from a stage
    calls.calls.clear()
    before = json.loads((run_dir / "manifest.json").read_text())["stages"]["evaluation"]["outputs_sha256"]
    (run_dir / "03-evaluation" / "metrics.json").unlink()
    _run(chat_file, run_dir, tiny_model_dir, params={"phase_02_train_opt_learning_rate": 5e-4})
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert calls.calls == [] and (run_dir / "03-evaluation" / "metrics.json").is_file()
    assert stages["evaluation"]["outputs_sha256"] == before and "reused_from" in stages["evaluation"]
    calls.calls.clear()
    _run(chat_file, run_dir, tiny_model_dir, params={"phase_02_train_opt_learning_rate": 5e-4}, force="training")
    assert calls.calls == ["training", "evaluation", "registration"]


def test_failure_in_evaluation_resumes_there(tmp_path, chat_file, tiny_model_dir, monkeypatch):
    calls = Calls(monkeypatch)
    run_dir = tmp_path / "run"
    with pytest.raises(HoneError, match="injected failure in the evaluation stage"):
        _run(chat_file, run_dir, tiny_model_dir, fail_stage="evaluation")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["stages"]["training"]["status"] == "completed"
    assert manifest["stages"]["evaluation"]["status"] == "failed"
    assert "injected failure" in manifest["stages"]["evaluation"]["error"]
    assert "registration" not in manifest["stages"]
    assert (run_dir / "02-training" / "hf_format" / "final" / "config.json").is_file()
    assert "failed" in (run_dir / "report.html").read_text()  # the report of a failed run says so

    calls.calls.clear()
    result, lines = _run(chat_file, run_dir, tiny_model_dir)
    assert calls.calls == ["evaluation", "registration"]
    assert lines[0].startswith("[1/4] dataset: cached") and lines[1].startswith("[2/4] training: cached")
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    assert result.results["evaluation"].summary["metrics"]


class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.srcs, self.hrefs, self.scripts = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.ids.append(a.get("id"))
        if "src" in a:
            self.srcs.append(a["src"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if tag in ("script", "link"):
            self.scripts += 1


def test_osft_run_registers_in_mlflow_and_report_is_self_contained(tmp_path, chat_file, tiny_model_dir):
    from hone.config import RegistryConfig

    run_dir = tmp_path / "run"
    result, _ = _run(chat_file, run_dir, tiny_model_dir, algorithm="osft",
                     params={"phase_02_train_man_unfreeze_rank_ratio": 0.5, "phase_04_registry_man_version": "2.0.0"},
                     registry=RegistryConfig(registry_home=str(tmp_path / "home")))
    assert result.model_id == "osft-model:2.0.0"
    reg = result.results["registration"].summary
    assert reg["backend"] == "mlflow" and reg["metadata"]["pipeline_algorithm"] == "osft"
    from hone.registry.mlflow_backend import MLflowRegistry

    info = MLflowRegistry(home=tmp_path / "home").get("osft-model", "2.0.0")
    assert info.metadata.get("base_model") == str(tiny_model_dir) or str(tiny_model_dir) in json.dumps(info.metadata)

    html = (run_dir / "report.html").read_text()
    parser = _Sections()
    parser.feed(html)
    assert parser.ids == ["summary", "dataset", "training", "evaluation", "registry", "parameters"]
    assert parser.srcs and all(s.startswith("data:image/png;base64,") for s in parser.srcs)  # images inlined
    assert len(parser.srcs) == 2  # the loss chart and the base-vs-tuned chart
    assert parser.hrefs == [] and parser.scripts == 0  # nothing to fetch: opens from disk without a server
    for text in ("osft-model:2.0.0", "holdout/loss", "rows read", "final loss", "phase_02_train_man_unfreeze_rank_ratio"):
        assert text in html
    _screenshot_if_chromium(run_dir / "report.html", tmp_path / "report.png")


def _screenshot_if_chromium(page: Path, png: Path) -> None:
    """Render the report in headless Chromium (Debian's package) when it is installed: it must load from disk
    and paint a full page. Without Chromium the structural checks above stand alone."""
    import shutil
    import struct
    import subprocess

    chromium = shutil.which("chromium")
    if chromium is None:
        return
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={png.parent / 'chromium-profile'}", "--window-size=1100,2400",
                    f"--screenshot={png}", page.as_uri()], check=True, capture_output=True, timeout=120)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1100, 2400)
    assert png.stat().st_size > 50_000  # text, tables and two charts, not a blank page


def test_default_run_dir_is_reused_for_the_same_parameters(tmp_path, chat_file, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HONE_HOME", str(tmp_path / "home"))
    from hone.pipeline import params as P

    values = P.resolve("sft", {**PARAMS, P.DATA_URI: str(chat_file), "phase_02_train_man_model": str(tiny_model_dir)})
    a = R.default_run_dir("sft", values)
    b = R.default_run_dir("sft", {**values, "phase_02_train_man_epochs": 2})
    assert a.parent == tmp_path / "home" / "pipelines" and a != b and a == R.default_run_dir("sft", dict(values))


def test_bad_inputs_fail_before_any_stage(tmp_path, chat_file, tiny_model_dir):
    run_dir = tmp_path / "run"
    with pytest.raises(HoneError, match="not available") as err:
        R.run_pipeline(str(chat_file), run_dir=run_dir)  # the default base model, offline
    assert "--model" in str(err.value) and not run_dir.exists()
    with pytest.raises(HoneError, match="did you mean 'phase_02_train_man_epochs'"):
        R.run_pipeline(str(chat_file), model=str(tiny_model_dir), params={"phase_02_train_man_epoch": 2})
    with pytest.raises(HoneError, match="expected an integer"):
        R.run_pipeline(str(chat_file), model=str(tiny_model_dir), params={"phase_02_train_man_epochs": "two"})
    with pytest.raises(HoneError, match="applies to osft"):
        R.run_pipeline(str(chat_file), algorithm="lora", model=str(tiny_model_dir),
                       params={"phase_02_train_man_unfreeze_rank_ratio": 0.3})
    with pytest.raises(HoneError, match="no dataset given"):
        R.run_pipeline(None, model=str(tiny_model_dir))
    with pytest.raises(HoneError, match="unknown stage"):
        R.run_pipeline(str(chat_file), model=str(tiny_model_dir), run_dir=run_dir, force="train")
    with pytest.raises(HoneError, match="hone does not use: temperature"):
        S._mapped({"temperature": 0.7}, S.EVAL_GEN_KWARGS, "phase_03_eval_opt_gen_kwargs")


def test_bad_data_fails_in_the_dataset_stage_with_the_row(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}\n')
    with pytest.raises(HoneError) as err:
        R.run_pipeline(str(bad), model=str(tiny_model_dir), params=PARAMS, run_dir=tmp_path / "run",
                       progress=R.Progress(lambda s: None))
    assert "bad.jsonl" in str(err.value)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["dataset"]["status"] == "failed" and "training" not in manifest["stages"]


def test_training_stage_as_a_trainjob_with_two_workers(tmp_path, chat_file, tiny_model_dir):
    """The cluster path of the training stage (workers > 1: a TrainJob on the shared PVC), run by the kube
    layer's local backend: two "pods" as processes, torchrun rendezvous over loopback."""
    from hone.pipeline import params as P

    pvc = tmp_path / "pvc"
    values = P.resolve("sft", {**PARAMS, P.DATA_URI: str(chat_file), "phase_02_train_man_model": str(tiny_model_dir),
                               "phase_02_train_man_workers": 2, "phase_02_train_opt_env_vars": "",
                               "phase_02_train_opt_cpu": "1", "phase_02_train_opt_memory": "2Gi"})
    dataset_dir = pvc / "run" / "01-dataset"
    dataset_dir.mkdir(parents=True)
    S.dataset_stage(values, dataset_dir).write(dataset_dir)
    with pytest.raises(HoneError, match="not on the shared PVC"):
        S.training_stage("sft", values, dataset_dir, tmp_path / "elsewhere", launcher="trainjob", pvc="ws",
                         pvc_path=str(pvc), submit_backend="local")
    out = pvc / "run" / "02-training"
    result = S.training_stage("sft", values, dataset_dir, out, launcher="trainjob", pvc="ws", pvc_path=str(pvc),
                              submit_backend="local")
    assert result.summary["world_size"] == 2 and result.summary["steps"] >= 1
    assert any(n.startswith("TrainJob ") for n in result.summary["notes"])
    assert (out / result.files["model"] / "config.json").is_file()


def test_evaluation_settings_are_checked_before_any_training(tmp_path, chat_file, tiny_model_dir, monkeypatch):
    calls = Calls(monkeypatch)
    for params, match in (({"phase_03_eval_man_tasks": ["arc_eazy"]}, "did you mean 'arc_easy'"),
                          ({"phase_03_eval_opt_include_path": str(tmp_path / "nope")}, "task directory not found"),
                          ({"phase_03_eval_opt_model_args": {"attn": "x"}}, "hone does not use: attn")):
        with pytest.raises(HoneError, match=match) as err:
            _run(chat_file, tmp_path / "run", tiny_model_dir, params=params)
        assert "phase_03_eval" in str(err.value) and "--tasks" not in str(err.value)
    assert calls.calls == []  # nothing ran


def test_stages_are_reused_across_run_directories(tmp_path, chat_file, tiny_model_dir, monkeypatch):
    """A stage with the same inputs is taken from the stage store under the hone home, whatever the run
    directory is called: changing an evaluation parameter never retrains."""
    monkeypatch.setenv("HONE_HOME", str(tmp_path / "home"))
    calls = Calls(monkeypatch)
    first, _ = _run(chat_file, tmp_path / "a", tiny_model_dir)
    assert calls.calls == ["dataset", "training", "evaluation", "registration"]
    calls.calls.clear()
    second, lines = _run(chat_file, tmp_path / "b", tiny_model_dir,
                         params={"phase_03_eval_opt_gen_kwargs": {"max_new_tokens": 6}})
    assert calls.calls == ["evaluation", "registration"]
    stages = json.loads((tmp_path / "b" / "manifest.json").read_text())["stages"]
    assert stages["training"]["reused_from"].startswith(str(tmp_path / "home" / "stage-store" / "training"))
    assert second.model_dir.is_dir() and (second.model_dir / "model.safetensors").is_file()
    assert stages["training"]["outputs_sha256"] == json.loads(
        (tmp_path / "a" / "manifest.json").read_text())["stages"]["training"]["outputs_sha256"]
    assert not any((tmp_path / "home" / "stage-store" / "training").glob("*/checkpoints"))
