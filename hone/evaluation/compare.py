"""Base vs tuned: every metric with its change, drops beyond a threshold flagged as forgetting, a bar chart.

A metric *drops* when it moves in its bad direction (down for accuracy, up for perplexity or loss). The size
of a drop is relative to the base value (``|tuned - base| / |base|``; absolute when the base is 0), so one
threshold (default 5 %) serves accuracies and perplexities alike. Metrics whose direction is unknown are shown
but never flagged.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hone.io import atomic_write_text


@dataclass
class MetricChange:
    name: str                       # task/metric
    base: float | None
    tuned: float | None
    higher_is_better: bool | None
    delta: float | None             # tuned - base
    change: float | None            # signed relative change in the good direction (+0.1 = 10 % better)
    forgetting: bool                # dropped by more than the threshold

    @property
    def task(self) -> str:
        return self.name.split("/", 1)[0]


# The rule for metrics whose direction nobody reported, by metric name (``task/metric.filter`` -> ``metric``):
# hone's holdout metrics (hone.evaluation.holdout.HIGHER_IS_BETTER) and lm-eval's usual ones.
HIGHER = frozenset({"acc", "acc_norm", "acc_mutual_info", "exact_match", "em", "contains", "f1", "bleu", "chrf",
                    "mcc", "rouge1", "rouge2", "rougeL", "rougeLsum", "pass@1", "pass@10", "accuracy",
                    "prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc",
                    "inst_level_loose_acc", "brier_score_inverse"})
LOWER = frozenset({"loss", "perplexity", "ppl", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter",
                   "brier_score", "eval_loss"})


def direction(name: str, reported: bool | None = None) -> bool | None:
    """Whether a higher value of metric ``name`` is better: ``reported`` (lm-eval's ``higher_is_better``) when
    given, else the rule for known metric names (loss, perplexity: lower; accuracy, exact match, F1: higher),
    else None (unknown)."""
    if reported is not None:
        return bool(reported)
    metric = name.rsplit("/", 1)[-1].split(".", 1)[0]  # "task/acc_norm.filter" -> "acc_norm"
    if metric in HIGHER:
        return True
    if metric in LOWER:
        return False
    return None


def compare(base: dict[str, float], tuned: dict[str, float], higher_is_better: dict[str, bool | None],
            threshold: float = 0.05) -> list[MetricChange]:
    """One row per metric of either model (sorted by name). A direction missing from ``higher_is_better``
    comes from :func:`direction`'s rule."""
    rows = []
    for name in sorted(set(base) | set(tuned)):
        b, t = base.get(name), tuned.get(name)
        hib = direction(name, higher_is_better.get(name))
        delta = change = None
        if _num(b) and _num(t):
            delta = t - b
            scale = abs(b) if b != 0 else 1.0
            change = None if hib is None else (delta if hib else -delta) / scale
        rows.append(MetricChange(name, b, t, hib, delta, change, change is not None and change < -threshold))
    return rows


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.1f}"
    return f"{x:.{digits}f}"


GOAL = {True: "higher", False: "lower", None: "?"}


def verdict(row: MetricChange) -> str:
    """``↑ better`` / ``↓ worse`` / ``= same`` for the row's change in its metric's direction ('' when unknown)."""
    if row.delta is None or row.higher_is_better is None:
        return ""
    if row.delta == 0:
        return "= same"
    return "↑ better" if (row.delta > 0) == row.higher_is_better else "↓ worse"


def terminal_table(rows: list[MetricChange], *, forgetting: list[str] | None = None, indent: str = "  ") -> str:
    """Base vs tuned for the terminal: each metric with its goal (higher/lower is better), both values, the
    relative change of the value itself (``-57.9%`` for a loss that fell) and ``↑ better`` / ``↓ worse``.
    ``forgetting`` (names) overrides the rows' own flags (a caller that used another threshold)."""
    flagged = set(forgetting) if forgetting is not None else {r.name for r in rows if r.forgetting}
    width = max([len(r.name) for r in rows] + [6])
    lines = [f"{indent}{'metric':<{width}}  {'goal':<6}  {'base':>10}  {'tuned':>10}  {'change':>8}"]
    for r in rows:
        raw = "" if r.delta is None else f"{r.delta / (abs(r.base) if r.base else 1.0):+.1%}"
        line = (f"{indent}{r.name:<{width}}  {GOAL[r.higher_is_better]:<6}  {_fmt(r.base):>10}  {_fmt(r.tuned):>10}"
                f"  {raw:>8}  {verdict(r)}")
        lines.append(line.rstrip() + ("  <- forgetting" if r.name in flagged else ""))
    lines.append(f"{indent}goal: which way is better; change: tuned vs base, relative to base; "
                 "↑ better / ↓ worse in the metric's goal")
    return "\n".join(lines)


def values_table(metrics: dict[str, float], higher_is_better: dict[str, bool | None] | None = None, *,
                 indent: str = "  ") -> str:
    """One model's metrics for the terminal, each with its goal (higher/lower is better)."""
    hib = higher_is_better or {}
    width = max([len(k) for k in metrics] + [6])
    lines = [f"{indent}{'metric':<{width}}  {'goal':<6}  {'value':>10}"]
    for name, value in sorted(metrics.items()):
        goal = GOAL[direction(name, hib.get(name, hib.get(name.split(".", 1)[0])))]  # task/metric.filter too
        lines.append(f"{indent}{name:<{width}}  {goal:<6}  {_fmt(value):>10}")
    return "\n".join(lines)


def read_directions(directory: str | Path) -> dict[str, bool | None]:
    """The directions an evaluation output directory recorded: ``comparison.json``'s rows, else lm-eval's
    ``higher_is_better`` in ``eval_results.json`` (``task/metric`` keys); {} when neither is readable."""
    d = Path(directory)
    try:
        data = json.loads((d / "comparison.json").read_text(encoding="utf-8"))
        return {m["name"]: m.get("higher_is_better") for m in data.get("metrics", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        data = json.loads((d / "eval_results.json").read_text(encoding="utf-8"))
        return {f"{task}/{metric}": v for task, row in (data.get("higher_is_better") or {}).items()
                for metric, v in (row or {}).items() if isinstance(v, bool)}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def markdown(rows: list[MetricChange], *, base_label: str, tuned_label: str, threshold: float) -> str:
    flagged = [r for r in rows if r.forgetting]
    lines = [
        "# Base vs tuned",
        "",
        f"- base:  `{base_label}`",
        f"- tuned: `{tuned_label}`",
        f"- a metric is flagged as **forgetting** when it gets worse by more than {threshold:.0%} of the base value",
        "",
    ]
    if flagged:
        lines.append(f"**{len(flagged)} metric(s) dropped beyond the threshold:** "
                     + ", ".join(f"`{r.name}` ({r.change:+.1%})" for r in flagged))
    else:
        lines.append("No metric dropped beyond the threshold.")
    lines += ["", "| task | metric | better | base | tuned | delta | change | |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        task, metric = r.name.split("/", 1) if "/" in r.name else ("", r.name)
        arrow = {True: "↑", False: "↓", None: "?"}[r.higher_is_better]
        flag = "⚠ forgetting" if r.forgetting else ("improved" if r.change is not None and r.change > threshold else "")
        change = "–" if r.change is None else f"{r.change:+.1%}"
        delta = "–" if r.delta is None else f"{r.delta:+.4g}"
        lines.append(f"| {task} | {metric} | {arrow} | {_fmt(r.base)} | {_fmt(r.tuned)} | {delta} | {change} | {flag} |")
    lines += ["", "`change` is relative to the base and signed so that positive is better "
              "(for ↓ metrics such as perplexity a fall is an improvement).", ""]
    return "\n".join(lines)


def write_comparison(rows: list[MetricChange], out_dir: str | Path, *, base_label: str, tuned_label: str,
                     threshold: float) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.json`` and ``comparison.png`` into ``out_dir``."""
    out = Path(out_dir)
    md = atomic_write_text(out / "comparison.md", markdown(rows, base_label=base_label, tuned_label=tuned_label,
                                                           threshold=threshold))
    js = atomic_write_text(out / "comparison.json", json.dumps({
        "base": base_label, "tuned": tuned_label, "threshold": threshold,
        "forgetting": [r.name for r in rows if r.forgetting],
        "metrics": [asdict(r) for r in rows]}, indent=2) + "\n")
    png = draw_chart(rows, out / "comparison.png", threshold=threshold)
    return {"markdown": md, "json": js, "chart": png}


def draw_chart(rows: list[MetricChange], path: str | Path, *, threshold: float) -> Path:
    """Two panels: base and tuned side by side (each metric scaled to the larger of the two, actual values
    printed), and the relative change (positive = better) with the forgetting threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if _num(r.base) or _num(r.tuned)]
    n = max(len(shown), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.42 * n), sharey=True,
                                      gridspec_kw={"width_ratios": [3, 2]})
    ys = list(range(len(shown)))[::-1]
    h = 0.38
    for y, r in zip(ys, shown):
        top = max(abs(v) for v in (r.base, r.tuned) if _num(v)) or 1.0
        for k, (v, color, label) in enumerate(((r.base, "#9e9e9e", "base"), (r.tuned, "#1f77b4", "tuned"))):
            if not _num(v):
                continue
            yy = y + (h / 2 if k == 0 else -h / 2)
            left.barh(yy, abs(v) / top, height=h, color=color, label=label if y == ys[0] else None)
            left.text(abs(v) / top + 0.01, yy, f"{v:.4g}", va="center", fontsize=7)
    left.set_yticks(ys)
    left.set_yticklabels([r.name + {True: " ↑", False: " ↓", None: ""}[r.higher_is_better] for r in shown], fontsize=8)
    left.set_xlim(0, 1.25)
    left.set_xticks([])
    left.set_title("value (bars scaled per metric)", fontsize=9)
    left.legend(loc="lower right", fontsize=8)
    for y, r in zip(ys, shown):
        if r.change is None:
            continue
        c = max(min(r.change, 1.0), -1.0)  # clip huge relative changes so small ones stay visible
        color = "#d62728" if r.forgetting else ("#2ca02c" if r.change > threshold else "#bdbdbd")
        right.barh(y, c * 100, color=color)
        right.text(c * 100, y, f" {r.change:+.1%}", va="center", ha="left" if c >= 0 else "right", fontsize=7)
    right.axvline(0, color="black", linewidth=0.8)
    right.axvline(-threshold * 100, color="#d62728", linestyle="--", linewidth=0.8)
    right.set_xlim(-115, 115)
    right.set_xlabel("change vs base, % (positive = better; red = forgetting)", fontsize=8)
    right.set_title(f"relative change (threshold {threshold:.0%})", fontsize=9)
    fig.suptitle("base vs tuned", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
