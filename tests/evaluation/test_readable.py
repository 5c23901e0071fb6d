"""Readable results: each metric's direction (lm-eval's higher_is_better, else the rule), ↑ better / ↓ worse in
the terminal tables (hone eval, the pipeline summary), and a loss chart page with axes and hover that loads
nothing from elsewhere."""
from __future__ import annotations

import json
import re

import pytest

from hone.evaluation.compare import (compare, direction, read_directions, terminal_table, values_table,
                                     write_comparison)
from hone.evaluation.holdout import HIGHER_IS_BETTER
from hone.training.metrics import nice_ticks, write_loss_charts


def test_direction_reported_first_then_the_rule():
    assert direction("arc_easy/acc", None) is True and direction("arc_easy/acc_norm") is True
    assert direction("wikitext/word_perplexity") is False and direction("wikitext/bits_per_byte") is False
    assert direction("gsm8k/exact_match.strict-match") is True  # task/metric.filter
    assert direction("custom/loss", True) is True  # what lm-eval reports wins over the rule
    assert direction("custom/odd") is None
    for metric, hib in HIGHER_IS_BETTER.items():  # the rule agrees with hone's holdout metrics
        assert direction(f"holdout/{metric}") is hib


def test_terminal_table_says_better_or_worse():
    base = {"holdout/loss": 6.2388, "holdout/exact_match": 0.5, "t/acc": 0.5, "t/custom": 1.0, "t/f1": 0.3}
    tuned = {"holdout/loss": 2.6273, "holdout/exact_match": 0.25, "t/acc": 0.6, "t/custom": 2.0, "t/f1": 0.3}
    rows = compare(base, tuned, {"t/acc": True})  # holdout directions come from the rule
    text = terminal_table(rows)
    lines = {line.split()[0]: line for line in text.splitlines()[1:-1]}
    loss = lines["holdout/loss"]
    assert "lower" in loss and "6.2388" in loss and "2.6273" in loss and "-57.9%" in loss and "↑ better" in loss
    em = lines["holdout/exact_match"]
    assert "higher" in em and "-50.0%" in em and "↓ worse" in em and "<- forgetting" in em
    assert "↑ better" in lines["t/acc"] and "+20.0%" in lines["t/acc"]
    assert "?" in lines["t/custom"] and "better" not in lines["t/custom"] and "worse" not in lines["t/custom"]
    assert "= same" in lines["t/f1"]
    assert "↑ better / ↓ worse" in text.splitlines()[-1]
    # a caller's own forgetting list (another threshold) replaces the rows' flags
    assert "<- forgetting" not in terminal_table(rows, forgetting=[])
    assert "<- forgetting" in terminal_table(rows, forgetting=["t/acc"]).split("t/acc")[1].splitlines()[0]


def test_values_table_shows_each_goal():
    text = values_table({"holdout/loss": 2.5, "t/acc": 0.4, "t/weird": 1.0}, {"t/weird": False})
    lines = {line.split()[0]: line.split() for line in text.splitlines()[1:]}
    assert lines["holdout/loss"][1] == "lower" and lines["t/acc"][1] == "higher" and lines["t/weird"][1] == "lower"


def test_read_directions(tmp_path):
    assert read_directions(tmp_path) == {}
    (tmp_path / "eval_results.json").write_text(json.dumps(
        {"results": {}, "higher_is_better": {"t": {"acc": True, "ppl": False}}}))
    assert read_directions(tmp_path) == {"t/acc": True, "t/ppl": False}
    rows = compare({"t/acc": 0.5, "u/x": 1.0}, {"t/acc": 0.4, "u/x": 2.0}, {"u/x": False})
    write_comparison(rows, tmp_path, base_label="b", tuned_label="t", threshold=0.05)
    assert read_directions(tmp_path) == {"t/acc": True, "u/x": False}


def test_pipeline_summary_table(tmp_path):
    from hone.cli.pipeline import summary_table
    from hone.pipeline.runner import PipelineRun
    from hone.pipeline.stages import StageResult

    ev = StageResult("evaluation", {"metrics": {"holdout/loss": 2.0, "t/m": 0.2}, "forgetting": ["t/m"],
                                    "base_metrics": {"holdout/loss": 4.0, "t/m": 0.4}})
    run = PipelineRun(tmp_path, "sft", {}, {"evaluation": {"status": "completed", "duration_s": 1.0,
                                                           "summary": ev.summary}}, {"evaluation": ev})
    eval_dir = run.stage_dir("evaluation")
    eval_dir.mkdir(parents=True)
    write_comparison(compare({"t/m": 0.4}, {"t/m": 0.2}, {"t/m": True}), eval_dir, base_label="b", tuned_label="t",
                     threshold=0.05)
    text = summary_table(run)
    loss = next(line for line in text.splitlines() if line.startswith("holdout/loss"))
    m = next(line for line in text.splitlines() if line.startswith("t/m "))
    assert "lower" in loss and "↑ better" in loss and "-50.0%" in loss
    assert "higher" in m and "↓ worse" in m and "<- forgetting" in m  # direction read from comparison.json


def test_nice_ticks():
    assert nice_ticks(0, 10, 6) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(1, 5, 8, integer=True) == [1, 2, 3, 4, 5]
    assert nice_ticks(6.25, 6.26, 6) == pytest.approx([6.25, 6.252, 6.254, 6.256, 6.258, 6.26])
    assert nice_ticks(3, 3) == [3]


@pytest.mark.parametrize("n", [1, 3, 60])
def test_loss_chart_page_has_axes_and_hover_and_is_self_contained(tmp_path, n):
    metrics = [{"step": s, "epoch": 0, "loss": 6.2589 - 0.01 * s + (0.003 if s % 2 else 0), "lr": 1e-5,
                "grad_norm": 1.0, "num_samples": 8, "num_loss_tokens": 100, "tokens_per_second": 1e3}
               for s in range(1, n + 1)]
    png, page = write_loss_charts(metrics, tmp_path, title="sft training loss")
    text = page.read_text()
    assert text.startswith("<!doctype html>") and f"{n} steps" in text
    assert ">optimizer step</text>" in text and ">loss (per loss token)</text>" in text  # axis labels
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', text)
    assert len(ticks) >= (3 if n > 1 else 2)  # ticks on both axes
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", t) for t in ticks)
    assert f"<title>step {n}: loss {metrics[-1]['loss']:.4f}</title>" in text  # tooltip without scripts
    assert 'addEventListener("mousemove"' in text and '"step " + best[0]' in text  # the hover readout
    hover = json.loads(re.search(r"var pts = (\[.*?\]), svg", text).group(1))
    assert [p[0] for p in hover] == [m["step"] for m in metrics]
    # self-contained: nothing fetched from anywhere
    lowered = text.lower()
    assert not re.search(r"\s(src|href)\s*=", lowered) and "@import" not in lowered and "url(" not in lowered
    assert "http://" not in lowered and "https://" not in lowered.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_chart_with_non_finite_loss(tmp_path):
    metrics = [{"step": 1, "loss": float("nan"), "lr": 0.0}, {"step": 2, "loss": 3.0, "lr": 0.0}]
    _, page = write_loss_charts(metrics, tmp_path)
    text = page.read_text()
    assert "<title>step 2: loss 3.0000</title>" in text and "nan" not in text.split("<table>")[0].lower()
