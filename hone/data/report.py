"""The data report: ``dataset_report.json`` (the dataset stage), the text ``hone data check`` prints, and the
token-sample counts training adds (``<run>/data/report.json``, ``TrainResult.data_report``)."""
from __future__ import annotations

import math
from array import array
from dataclasses import asdict, dataclass, field, fields
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


SAMPLE_FIELDS = ("mode", "samples", "dropped_too_long", "dropped_no_loss_tokens", "tokens", "loss_tokens",
                 "max_len", "dropped_examples", "samples_path", "rows_per_s", "prepare_s", "reused")


@dataclass
class DatasetReport:
    """Everything learned about the data (JSON-serialisable, no secrets): one report from source to samples.

    The dataset facts (source, ``sha256``, ``format``, ``rows`` = read/valid/invalid/train/eval, problems, roles,
    turns, ``token_lengths``, ``selection``, ``outputs``) are what the dataset stage writes to
    ``dataset_report.json``; the token-sample facts (``mode`` onwards) are filled when training tokenizes the
    train rows into samples (``mode`` is None until then, and :meth:`to_json` leaves them out).
    """

    source: str = ""
    source_kind: str = ""
    sha256: str = ""
    format: str | None = None
    format_detected: bool = False
    rows: dict[str, int] = field(default_factory=dict)
    valid: bool = False
    split: str | None = None
    files: list[str] = field(default_factory=list)
    files_count: int = 0
    text_column: str | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)
    roles: dict[str, int] = field(default_factory=dict)
    turns: dict[str, Any] = field(default_factory=dict)
    token_lengths: dict[str, Any] | None = None  # TokenStats of the rows, when a tokenizer was given
    selection: dict[str, Any] | None = None  # subset, train_split_ratio, seed, skip_invalid applied
    outputs: dict[str, Any] | None = None  # the files written: {"train": {path, rows, sha256}, "eval": ...}
    # the token samples made from the train rows (training's data preparation)
    mode: str | None = None  # "messages", "pretraining" or "processed"; None: not tokenized into samples
    samples: int = 0
    dropped_too_long: int = 0
    dropped_no_loss_tokens: int = 0
    tokens: int = 0  # in the samples kept
    loss_tokens: int = 0
    max_len: int = 0
    dropped_examples: list[str] = field(default_factory=list)
    samples_path: str | None = None  # the token samples on disk (hone.data.samples), memory-mapped by training
    rows_per_s: float | None = None  # how fast the rows were tokenized (when they were, not reused)
    prepare_s: float | None = None  # seconds the tokenizing took
    reused: bool = False  # the samples were prepared before (same rows, tokenizer and settings) and read back

    @property
    def train_rows(self) -> int:
        return self.rows.get("train", 0)

    @property
    def eval_rows(self) -> int:
        return self.rows.get("eval", 0)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.mode is None:
            for k in SAMPLE_FIELDS:
                del d[k]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DatasetReport":
        """Read :meth:`to_json`'s form back; also the older forms (``tokens`` holding the token-length
        statistics in ``dataset_report.json``; training's former ``DataReport`` with ``rows`` a count)."""
        d = dict(d)
        if isinstance(d.get("tokens"), dict):  # dataset_report.json before token_lengths
            lengths = d.pop("tokens")
            d["token_lengths"] = d.get("token_lengths") or lengths
        if isinstance(d.get("rows"), int):  # training's former DataReport
            d["rows"] = {"read": d.pop("rows_read", 0), "train": d["rows"], "eval": d.pop("eval_rows", 0)}
            d.setdefault("sha256", d.pop("source_sha256", ""))
            d.setdefault("format", d.pop("data_format", "") or None)
            d.setdefault("valid", True)  # training only ever tokenized valid data
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary(self) -> str:
        """One line: the samples (after tokenization) or, before, the rows."""
        r = self.rows
        if self.mode is None:
            split = f"; {r['train']} train, {r['eval']} eval" if "train" in r else ""
            return (f"{r.get('read', 0)} rows read, {r.get('valid', 0)} valid, {r.get('invalid', 0)} invalid{split} "
                    f"({self.format or 'unknown format'})")
        return (f"{self.samples} samples from {self.train_rows} rows ({self.mode}); dropped {self.dropped_too_long} "
                f"longer than max_seq_len, {self.dropped_no_loss_tokens} with no trainable token; "
                f"{self.tokens} tokens, {self.loss_tokens} trained, longest {self.max_len}")

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
        if self.token_lengths:
            t = self.token_lengths
            lines.append(f"tokens:   p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']} "
                         f"({t['tokenizer']}); {t['over_max_seq_len']:,} row(s) longer than max_seq_len "
                         f"{t['max_seq_len']} (they are dropped in training)")
        if self.problems:
            lines.append(f"problems: {r['invalid']:,} row(s); the first {len(self.problems)}:")
            lines += [f"  {p['where']}: {p['message']}" for p in self.problems]
            lines.append("  by problem: " + ", ".join(f"{KINDS.get(k, k)} ({k}) {n:,}"
                                                      for k, n in self.problem_counts.items()))
        if self.mode is not None:
            lines.append(f"samples:  {self.summary()}")
            if self.samples_path:
                how = ("reused, prepared before" if self.reused else
                       f"{self.rows_per_s:,.0f} rows/s in {self.prepare_s:.1f}s" if self.rows_per_s else "")
                lines.append(f"on disk:  {self.samples_path}" + (f" ({how})" if how else ""))
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
