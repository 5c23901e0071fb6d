"""`hone eval` / `hone.evaluate` end to end on the tiny model: local tasks of both output types, the holdout
split, determinism, a planted degradation caught by the comparison, and clear errors for bad input."""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

import hone
from hone.cli.main import main
from hone.errors import HoneError
from hone.evaluation.run import resolve_model

from eval_paths import HOLDOUT, TASKS_DIR

FAST = ["--limit", "6", "--max-new-tokens", "8"]


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["eval", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def compared(tiny_model_dir, degraded_model_dir, tmp_path_factory):
    """The damaged model evaluated against the tiny model it came from, through the CLI."""
    out = tmp_path_factory.mktemp("compare") / "eval"
    code, stdout, stderr = _cli("--model", str(degraded_model_dir), "--base", str(tiny_model_dir),
                                "--include-path", str(TASKS_DIR), "--eval-data", str(HOLDOUT), "--log-samples",
                                "--output", str(out), *FAST)
    assert code == 0, stderr
    return out, stdout


def test_planted_degradation_shows_as_a_drop(compared):
    out, stdout = compared
    data = json.loads((out / "comparison.json").read_text())
    flagged = set(data["forgetting"])
    assert {"holdout/loss", "holdout/perplexity", "hone_retention_corpus/word_perplexity",
            "hone_retention_corpus/bits_per_byte"} <= flagged
    rows = {r["name"]: r for r in data["metrics"]}
    assert rows["holdout/perplexity"]["tuned"] > 2 * rows["holdout/perplexity"]["base"]
    md = (out / "comparison.md").read_text()
    assert "| holdout | perplexity | ↓ |" in md and "⚠ forgetting" in md
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "<- forgetting" in stdout and "dropped by more than 5%" in stdout


def test_output_layout(compared, tiny_model_dir, degraded_model_dir):
    out, _ = compared
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["base/eval_results.json", "base/metrics.json", "base/samples.jsonl", "comparison.json",
                     "comparison.md", "comparison.png", "eval_config.json", "eval_results.json", "metrics.json",
                     "samples.jsonl"]
    raw = json.loads((out / "eval_results.json").read_text())
    assert sorted(raw["results"]) == ["hone_arith_mc", "hone_capitals_gen", "hone_retention_corpus",
                                      "hone_retention_facts"]
    assert raw["hone"]["model"] == str(degraded_model_dir) and raw["hone"]["holdout"]["num_samples"] == 6
    base = json.loads((out / "base" / "metrics.json").read_text())
    tuned = json.loads((out / "metrics.json").read_text())
    assert base.keys() == tuned.keys() and "hone_capitals_gen/exact_match" in tuned and "holdout/f1" in tuned
    config = json.loads((out / "eval_config.json").read_text())
    assert config["base_model_path"] == str(tiny_model_dir) and config["limit"] == 6


def test_local_tasks_of_both_output_types_are_deterministic(tiny_model_dir, tmp_path):
    """Multiple choice (log-likelihood) and generate_until tasks from local YAML + JSONL, plus the holdout,
    run offline; two runs give byte-identical metrics and samples."""
    runs = []
    for name in ("a", "b"):
        result = hone.evaluate(str(tiny_model_dir), str(tmp_path / name), tasks="hone_arith_mc,hone_capitals_gen",
                               include_path=[str(TASKS_DIR)], eval_data_path=str(HOLDOUT), limit=5,
                               max_new_tokens=8, log_samples=True)
        runs.append(result)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    assert (a / "samples.jsonl").read_bytes() == (b / "samples.jsonl").read_bytes()
    m = runs[0].metrics
    assert {"hone_arith_mc/acc", "hone_arith_mc/acc_norm", "hone_capitals_gen/exact_match", "holdout/perplexity",
            "holdout/exact_match", "holdout/contains", "holdout/f1"} <= m.keys()
    assert 0 <= m["hone_arith_mc/acc"] <= 1 and runs[0].comparison is None
    samples = [json.loads(line) for line in (a / "samples.jsonl").read_text().splitlines()]
    by_task = {}
    for s in samples:
        by_task.setdefault(s["task"], []).append(s)
    assert {k: len(v) for k, v in by_task.items()} == {"holdout": 5, "hone_arith_mc": 5, "hone_capitals_gen": 5}
    mc = by_task["hone_arith_mc"][0]
    assert mc["prediction"] in mc["choices"] and mc["target"] in mc["choices"]
    assert isinstance(by_task["hone_capitals_gen"][0]["prediction"], str)
    assert by_task["holdout"][0]["target"] == "7 plus 16 is 23."


def _bad_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt_text": "What is 2 plus 2?", "answer": "4"}) + "\n")
    return str(path)


BAD = {
    "model path does not exist": (lambda d, t: ["--model", str(t / "no-such-model"), "--eval-data", str(HOLDOUT)],
                                  "model path does not exist", "model_path (--model)"),
    "base path does not exist": (lambda d, t: ["--model", str(d), "--base", str(t / "gone"), "--eval-data",
                                               str(HOLDOUT)], "model path does not exist", "--base"),
    "unknown task": (lambda d, t: ["--model", str(d), "--tasks", "hone_capitals_gem", "--include-path",
                                   str(TASKS_DIR)], "did you mean 'hone_capitals_gen'", "--tasks"),
    "eval data in a wrong format": (lambda d, t: ["--model", str(d), "--eval-data", _bad_rows(t)],
                                    "must be conversations", "--eval-data"),
    "nothing to evaluate": (lambda d, t: ["--model", str(d)], "nothing to evaluate", "eval_data_path"),
    "bad limit": (lambda d, t: ["--model", str(d), "--eval-data", str(HOLDOUT), "--limit", "-3"],
                  "invalid value for 'limit'", "--limit"),
    "missing --output": (None, "missing required parameter 'output_dir'", "configuration"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_a_clear_message(case, tiny_model_dir, tmp_path):
    make, message, where = BAD[case]
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_dir), "--eval-data", str(HOLDOUT)] if make is None else \
        make(tiny_model_dir, tmp_path) + ["--output", str(out)]
    code, _, err = _cli(*args)
    assert code == 2
    assert message in err and "where: " in err and where in err and "fix: " in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_output_dir_safety(tiny_model_dir, tmp_path):
    with pytest.raises(HoneError, match="holds the model"):
        hone.evaluate(str(tiny_model_dir), str(tiny_model_dir), eval_data_path=str(HOLDOUT))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(HoneError, match="not empty") as err:
        hone.evaluate(str(tiny_model_dir), str(busy), eval_data_path=str(HOLDOUT))
    assert "--overwrite" in err.value.fix and (busy / "notes.txt").exists()


def test_a_training_output_directory_means_its_final_model(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "hf_format" / "final")
    assert resolve_model(str(run), "model_path") == str(run / "hf_format" / "final")
    assert "evaluate" in hone.__all__


def test_saved_parameters_hold_no_credentials(tiny_model_dir):
    from hone.config import EvalConfig
    from hone.evaluation.run import _config_record

    cfg = EvalConfig(model_path=str(tiny_model_dir), output_dir="out",
                     eval_data_path="https://robot:s3cr3t-t0ken@data.example.com/eval.jsonl?X-Amz-Signature=abc123")
    saved = json.dumps(_config_record(cfg, str(tiny_model_dir), None))
    assert "s3cr3t-t0ken" not in saved and "abc123" not in saved and "data.example.com/eval.jsonl" in saved
