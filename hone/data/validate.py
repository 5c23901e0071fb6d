"""Validate every row of a stream: detect the format, convert to canonical form, count what is wrong.

Streaming: rows are looked at once and not kept (only the first ``max_errors`` problems and a few counters
are), so a million-row file validates in bounded memory. The valid rows come out as ``(where, canonical)``
for whoever needs them (a file writer, the tokenizer).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from hone.data.formats import DETECT_ROWS, FORMATS, FormatSpec, detect_format, normalize_format, text_column_for
from hone.data.problems import KINDS, Problem, RowError
from hone.data.records import Header, Record
from hone.errors import HoneError
from hone.secrets import scrub_text

_MAX_BUFFER = 10_000  # records held back at most while the format is being detected


@dataclass
class ScanResult:
    """What validation saw (filled while the stream is consumed)."""

    format: str | None = None
    format_detected: bool = False
    text_column: str | None = None
    rows_read: int = 0
    rows_valid: int = 0
    rows_invalid: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_counts: Counter = field(default_factory=Counter)
    roles: Counter = field(default_factory=Counter)
    turns: Counter = field(default_factory=Counter)  # messages per row -> rows
    chat_rows: int = 0  # valid rows that need a chat template (not pretraining documents, not processed)

    @property
    def valid(self) -> bool:
        return self.rows_read > 0 and self.rows_invalid == 0

    def problem_summary(self) -> str:
        return ", ".join(f"{n} {KINDS.get(k, k)} ({k})" for k, n in self.problem_counts.most_common())


class Validator:
    """Turn a stream of :class:`Record` / :class:`Header` into valid canonical rows, counting problems."""

    def __init__(self, data_format: str = "auto", *, document_column_name: str = "document",
                 unmask_messages: bool = False, max_errors: int = 20, is_pretraining: bool = False,
                 use_processed_dataset: bool = False, column_names: dict[str, str] | None = None):
        fmt = normalize_format(data_format)
        self.columns = tuple(sorted((column_names or {}).items()))  # field -> column (FormatSpec.columns)
        if use_processed_dataset:
            fmt = _exclusive(fmt, "processed", "use_processed_dataset=True")
        if is_pretraining:
            fmt = _exclusive(fmt, "text", "is_pretraining=True")
        self.requested = fmt
        self.strict_column = is_pretraining
        self.document_column_name = document_column_name
        self.unmask_messages = unmask_messages
        self.max_errors = max_errors
        self.spec: FormatSpec | None = None
        self.result = ScanResult()
        self._headers: list[Header] = []

    # -- public -----------------------------------------------------------------------------------------------
    def run(self, records: Iterable[Record | Header]) -> Iterator[tuple[str, dict[str, Any]]]:
        it = iter(records)
        buffered: list[Record] = []
        if self.requested != "auto" and (self.requested != "text" or self.strict_column):
            self._set_spec(self.requested, self.document_column_name, detected=False)
        else:
            dict_rows: list[Any] = []
            for rec in it:
                if isinstance(rec, Header):
                    self._headers.append(rec)
                    continue
                buffered.append(rec)
                if rec.error is None and isinstance(rec.row, dict):
                    dict_rows.append(rec.row)
                if len(dict_rows) >= DETECT_ROWS or len(buffered) >= _MAX_BUFFER:
                    break
            self._detect(dict_rows, buffered)
        for h in self._headers:
            self._check_columns(h)
        for rec in buffered:
            yield from self._one(rec)
        del buffered
        for rec in it:
            if isinstance(rec, Header):
                self._check_columns(rec)
            else:
                yield from self._one(rec)

    # -- internals ----------------------------------------------------------------------------------------------
    def _set_spec(self, name: str, text_column: str, *, detected: bool) -> None:
        self.spec = FormatSpec(name, text_column=text_column, unmask_messages=self.unmask_messages, detected=detected,
                               columns=self.columns)
        self.result.format, self.result.format_detected = name, detected
        self.result.text_column = text_column if name == "text" else None

    def _detect(self, rows: list[Any], buffered: list[Record]) -> None:
        if self.requested == "text":
            self._set_spec("text", text_column_for(rows, self.document_column_name), detected=False)
            return
        cols = [self.document_column_name, "text"]
        name = detect_format(rows, cols)
        if name is None:
            if not rows:
                return  # no readable object row: every row is reported as a problem
            keys = sorted({str(k) for r in rows for k in r})
            first = next(r.where for r in buffered if r.error is None and isinstance(r.row, dict))
            raise HoneError(
                f"cannot tell the data format: the rows have the fields ({', '.join(keys[:20])}), which match none "
                "of the supported layouts", where=first,
                fix="use one of: " + "; ".join(f"{k} {v}" for k, v in FORMATS.items())
                    + " — rename the fields, or set data_format (--format) and document_column_name")
        self._set_spec(name, text_column_for(rows, self.document_column_name) if name == "text" else "text",
                       detected=True)

    def _check_columns(self, h: Header) -> None:
        if self.spec is None:
            return
        missing = [c for c in self.spec.required_columns() if c not in h.columns]
        if self.spec.name == "text" and missing and "messages" in h.columns:
            return  # canonical pretraining rows
        if missing:
            what = {"csv": "CSV file", "parquet": "Parquet file", "dataset": "dataset"}.get(h.kind, "file")
            raise HoneError(
                f"the {what} has no column {' or '.join(repr(m) for m in missing)}, which the {self.spec.name} "
                f"format needs (columns: {', '.join(h.columns) or 'none'})", where=h.file,
                fix=f"{self.spec.name} rows look like {FORMATS[self.spec.name]}; rename the columns or set "
                    "data_format (--format)" + (" / document_column_name" if self.spec.name == "text" else ""))

    def _one(self, rec: Record) -> Iterator[tuple[str, dict[str, Any]]]:
        res = self.result
        res.rows_read += 1
        if rec.error is not None:
            self._problem(Problem(rec.where, rec.error[0], rec.error[1]))
            return
        if self.spec is None and isinstance(rec.row, dict):  # no object row while detecting: try this one
            name = detect_format([rec.row], [self.document_column_name, "text"])
            if name is not None:
                self._set_spec(name, text_column_for([rec.row], self.document_column_name), detected=True)
        if self.spec is None:
            kind = "not_an_object" if not isinstance(rec.row, dict) else "missing_field"
            keys = ", ".join(sorted(map(str, rec.row))) if isinstance(rec.row, dict) else ""
            self._problem(Problem(rec.where, kind, f"row is a {type(rec.row).__name__}, expected a JSON object"
                                  if kind == "not_an_object" else f"row fields ({keys}) match no supported format"))
            return
        try:
            canonical = self.spec.convert(rec.row)
        except RowError as err:
            self._problem(Problem(rec.where, err.kind, err.message, err.field))
            return
        res.rows_valid += 1
        msgs = canonical.get("messages")
        if msgs is not None:
            res.turns[len(msgs)] += 1
            res.roles.update(m["role"] for m in msgs)
            if msgs[0]["role"] != "pretraining":
                res.chat_rows += 1
        yield rec.where, canonical

    def _problem(self, p: Problem) -> None:
        res = self.result
        res.rows_invalid += 1
        res.problem_counts[p.kind] += 1
        if len(res.problems) < self.max_errors:  # kept for the report and messages: secrets in the row masked
            res.problems.append(Problem(p.where, p.kind, scrub_text(p.message), p.field))


def _exclusive(fmt: str, forced: str, flag: str) -> str:
    if fmt not in ("auto", forced):
        raise HoneError(f"data_format={fmt!r} contradicts {flag} (which reads {forced!r} rows)",
                        where="parameters data_format and " + flag.split("=")[0],
                        fix=f"drop data_format, or set it to {forced}")
    return forced


def row_errors_text(result: ScanResult, max_errors: int) -> str:
    """The problems as the lines of an error message: each row's location and what is wrong."""
    shown = "\n    ".join(str(p) for p in result.problems[:max_errors])
    more = result.rows_invalid - min(len(result.problems), max_errors)
    tail = f"\n    ... and {more} more" if more > 0 else ""
    summary = f"\n  by problem: {result.problem_summary()}" if len(result.problem_counts) > 1 or more > 0 else ""
    return f"{result.rows_invalid} invalid row(s) of {result.rows_read}:\n    {shown}{tail}{summary}"
