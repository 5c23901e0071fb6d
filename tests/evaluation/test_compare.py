"""The comparison table: directions, the threshold, the files."""
from __future__ import annotations

import json

import pytest

from hone.evaluation.compare import compare, markdown, write_comparison

BASE = {"t/acc": 0.80, "t/ppl": 10.0, "t/bleu": 0.0, "h/f1": 0.5, "only_base/acc": 0.3, "u/odd": 1.0}
TUNED = {"t/acc": 0.70, "t/ppl": 10.2, "t/bleu": 0.1, "h/f1": 0.9, "only_tuned/acc": 0.4, "u/odd": 0.1}
BETTER = {"t/acc": True, "t/ppl": False, "t/bleu": True, "h/f1": True, "only_base/acc": True, "only_tuned/acc": True}


def test_directions_and_threshold():
    rows = {r.name: r for r in compare(BASE, TUNED, BETTER, threshold=0.05)}
    assert rows["t/acc"].forgetting and rows["t/acc"].change == pytest.approx(-0.125)
    assert rows["t/acc"].delta == pytest.approx(-0.1)
    assert not rows["t/ppl"].forgetting and rows["t/ppl"].change == pytest.approx(-0.02)  # 2 % worse: under 5 %
    assert rows["h/f1"].change == pytest.approx(0.8) and not rows["h/f1"].forgetting
    assert rows["t/bleu"].change == pytest.approx(0.1)  # base 0: absolute change
    assert rows["only_base/acc"].tuned is None and rows["only_base/acc"].change is None
    assert rows["u/odd"].change is None and not rows["u/odd"].forgetting  # direction unknown: never flagged
    strict = {r.name: r for r in compare(BASE, TUNED, BETTER, threshold=0.01)}
    assert strict["t/ppl"].forgetting


def test_files(tmp_path):
    rows = compare(BASE, TUNED, BETTER, threshold=0.05)
    files = write_comparison(rows, tmp_path, base_label="base/", tuned_label="tuned/", threshold=0.05)
    md = files["markdown"].read_text()
    assert "| t | acc | ↑ | 0.8000 | 0.7000 | -0.1 | -12.5% | ⚠ forgetting |" in md
    assert "**1 metric(s) dropped beyond the threshold:** `t/acc` (-12.5%)" in md
    data = json.loads(files["json"].read_text())
    assert data["forgetting"] == ["t/acc"] and len(data["metrics"]) == 7
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "No metric dropped" in markdown(compare(BASE, BASE, BETTER), base_label="a", tuned_label="a", threshold=0.05)
