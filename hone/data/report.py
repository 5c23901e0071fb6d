"""The dataset stage's report: ``dataset_report.json`` and the text ``hone data check`` prints."""
from __future__ import annotations

import math
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from hone.data.problems import KINDS

MAX_FILES_LISTED = 200


@dataclass
class TokenStats:
    tokenizer: str
    max_seq_len: int
    rows: int = 0
    p50: int = 0
    p90: int = 0
    p99: int = 0
    max: int = 0
    mean: float = 0.0
    total: int = 0
    over_max_seq_len: int = 0

    @classmethod
    def from_lengths(cls, lengths: Iterable[int], tokenizer: str, max_seq_len: int) -> "TokenStats":
        values = sorted(array("I", lengths))
        n = len(values)
        st = cls(tokenizer=tokenizer, max_seq_len=max_seq_len, rows=n)
        if n:
            pct = lambda p: values[max(0, math.ceil(p / 100 * n) - 1)]  # noqa: E731 - nearest rank
            st.p50, st.p90, st.p99, st.max = pct(50), pct(90), pct(99), values[-1]
            st.total = sum(values)
            st.mean = round(st.total / n, 2)
            st.over_max_seq_len = n - _count_le(values, max_seq_len)
        return st


def _count_le(values: list[int], limit: int) -> int:
    import bisect

    return bisect.bisect_right(values, limit)


@dataclass
class DatasetReport:
    """Everything the dataset stage learned about the data (JSON-serialisable, no secrets)."""

    source: str
    source_kind: str
    sha256: str
    format: str | None
    format_detected: bool
    rows: dict[str, int]
    valid: bool
    split: str | None = None
    files: list[str] = field(default_factory=list)
    files_count: int = 0
    text_column: str | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)
    roles: dict[str, int] = field(default_factory=dict)
    turns: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self, *, elapsed_s: float | None = None) -> str:
        """A readable summary for a terminal."""
        r = self.rows
        lines = [f"source:   {self.source}" + (f"  (split {self.split})" if self.split else "")]
        if self.files_count > 1:
            lines.append(f"files:    {self.files_count}")
        lines.append(f"sha256:   {self.sha256}")
        how = "" if not self.format else " (detected)" if self.format_detected else " (given)"
        lines.append(f"format:   {self.format or 'unknown'}{how}"
                     + (f", text column {self.text_column!r}" if self.text_column else ""))
        rate = f"  in {elapsed_s:.1f}s ({r['read'] / elapsed_s:,.0f} rows/s)" if elapsed_s else ""
        lines.append(f"rows:     {r['read']:,} read, {r['valid']:,} valid, {r['invalid']:,} invalid{rate}")
        if "train" in r:
            lines.append(f"split:    {r['train']:,} train, {r['eval']:,} eval")
        if self.roles:
            lines.append("roles:    " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.roles.items(),
                                                                                   key=lambda kv: -kv[1])))
        if self.turns:
            t = self.turns
            lines.append(f"turns:    {t['min']}-{t['max']} messages per row (mean {t['mean']})")
        if self.tokens:
            t = self.tokens
            lines.append(f"tokens:   p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']} "
                         f"({t['tokenizer']}); {t['over_max_seq_len']:,} row(s) longer than max_seq_len "
                         f"{t['max_seq_len']} (they are dropped in training)")
        if self.problems:
            lines.append(f"problems: {r['invalid']:,} row(s); the first {len(self.problems)}:")
            lines += [f"  {p['where']}: {p['message']}" for p in self.problems]
            lines.append("  by problem: " + ", ".join(f"{KINDS.get(k, k)} ({k}) {n:,}"
                                                      for k, n in self.problem_counts.items()))
        if self.outputs:
            for name, o in self.outputs.items():
                if isinstance(o, dict) and "path" in o:
                    lines.append(f"{name + ':':<9} {o['path']} ({o['rows']:,} rows)")
        left_out = f" ({r['invalid']:,} invalid row(s) left out)" if self.valid and r["invalid"] else ""
        lines.append("result:   " + ("VALID" + left_out if self.valid else
                                     ("INVALID: " + (f"{r['invalid']:,} row(s) need fixing" if r['invalid']
                                                     else "no rows"))))
        return "\n".join(lines)


def turn_stats(turns: dict[int, int]) -> dict[str, Any]:
    """Messages per row: min, max, mean and a histogram (rows per number of messages)."""
    if not turns:
        return {}
    n = sum(turns.values())
    return {"min": min(turns), "max": max(turns), "mean": round(sum(k * v for k, v in turns.items()) / n, 2),
            "histogram": {str(k): turns[k] for k in sorted(turns)}}
