"""From a data file to validated, tokenized, filtered samples, written under the run's data directory."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from hone.config import DataConfig
from hone.data.messages import validate_messages
from hone.data.records import Record, read_records
from hone.data.tokenize import (IGNORE, Tokenized, check_chat_tokenizer, special_token_ids, tokenize_conversation,
                                tokenize_document)
from hone.errors import HoneError
from hone.io import atomic_write_text

MAX_ERRORS_SHOWN = 10


@dataclass
class DataReport:
    """What happened to the rows: counts the user should see before any training time is spent."""

    rows: int = 0
    samples: int = 0
    dropped_too_long: int = 0
    dropped_no_loss_tokens: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    max_len: int = 0
    mode: str = "messages"
    dropped_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.samples} samples from {self.rows} rows ({self.mode}); dropped {self.dropped_too_long} "
                f"longer than max_seq_len, {self.dropped_no_loss_tokens} with no trainable token; "
                f"{self.tokens} tokens, {self.loss_tokens} trained, longest {self.max_len}")


@dataclass
class PreparedData:
    samples: list[Tokenized]
    report: DataReport

    @property
    def lengths(self) -> list[int]:
        return [len(s.input_ids) for s in self.samples]


def prepare_data(cfg: DataConfig, tokenizer, output_dir: str | Path | None = None) -> PreparedData:
    """Read ``cfg.data_path``, validate every row, tokenize, drop what cannot be trained, and report.

    When ``output_dir`` is given the processed samples (``data.jsonl``) and ``report.json`` are written there.
    """
    records = list(read_records(cfg.data_path))
    if not records:
        raise HoneError("the data file holds no rows", where=cfg.data_path, fix="add samples")
    if cfg.use_processed_dataset:
        mode, tokenized = "processed", _processed(records)
    elif cfg.is_pretraining:
        mode, tokenized = "pretraining", _documents(records, tokenizer, cfg)
    else:
        mode, tokenized = "messages", _conversations(records, tokenizer, cfg)

    limit = cfg.block_size if cfg.is_pretraining else cfg.max_seq_len
    report = DataReport(rows=len(records), mode=mode)
    samples = []
    for where, tok in tokenized:
        if len(tok.input_ids) > limit:
            report.dropped_too_long += 1
            if len(report.dropped_examples) < MAX_ERRORS_SHOWN:
                report.dropped_examples.append(f"{where}: {len(tok.input_ids)} tokens > {limit}")
        elif tok.num_loss_tokens == 0:
            report.dropped_no_loss_tokens += 1
            if len(report.dropped_examples) < MAX_ERRORS_SHOWN:
                report.dropped_examples.append(f"{where}: no trainable token")
        else:
            samples.append(tok)
            report.tokens += len(tok.input_ids)
            report.loss_tokens += tok.num_loss_tokens
            report.max_len = max(report.max_len, len(tok.input_ids))
    report.samples = len(samples)
    if not samples:
        raise HoneError(
            f"every sample was dropped ({report.dropped_too_long} longer than max_seq_len={limit}, "
            f"{report.dropped_no_loss_tokens} with no trainable token)",
            where=cfg.data_path,
            fix="raise max_seq_len, check that conversations have assistant turns, or set unmask_messages=True",
        )
    if output_dir is not None:
        write_processed(samples, report, output_dir)
    return PreparedData(samples, report)


def _conversations(records: list[Record], tokenizer, cfg: DataConfig) -> Iterable[tuple[str, Tokenized]]:
    errors = [f"{r.where}: {e}" for r in records if (e := validate_messages(r.row, unmask_messages=cfg.unmask_messages))]
    _raise_row_errors(errors, cfg.data_path, "each row needs a 'messages' list of {role, content} objects")
    if any(r.row["messages"][0]["role"] != "pretraining" for r in records):
        check_chat_tokenizer(tokenizer)
    special = special_token_ids(tokenizer)
    for r in records:
        yield r.where, tokenize_conversation(tokenizer, r.row["messages"], unmask_messages=cfg.unmask_messages,
                                             special_ids=special)


def _processed(records: list[Record]) -> Iterable[tuple[str, Tokenized]]:
    errors = []
    for r in records:
        row = r.row
        if not isinstance(row, dict) or "input_ids" not in row or "labels" not in row:
            errors.append(f"{r.where}: row needs 'input_ids' and 'labels' (use_processed_dataset=True)")
        elif not (_int_list(row["input_ids"]) and _int_list(row["labels"])):
            errors.append(f"{r.where}: 'input_ids' and 'labels' must be lists of integers")
        elif len(row["input_ids"]) != len(row["labels"]):
            errors.append(f"{r.where}: 'input_ids' has {len(row['input_ids'])} tokens but 'labels' has "
                          f"{len(row['labels'])}")
    _raise_row_errors(errors, "data_path", "write rows as {\"input_ids\": [...], \"labels\": [...]} with -100 "
                      "for tokens without loss")
    return [(r.where, Tokenized(list(r.row["input_ids"]), list(r.row["labels"]))) for r in records]


def _documents(records: list[Record], tokenizer, cfg: DataConfig) -> Iterable[tuple[str, Tokenized]]:
    col = cfg.document_column_name
    errors = [f"{r.where}: row has no string column {col!r}" for r in records
              if not isinstance(r.row, dict) or not isinstance(r.row.get(col), str)]
    _raise_row_errors(errors, "data_path", "set document_column_name to the column that holds the text")
    stream: list[int] = []
    for r in records:
        stream += tokenize_document(tokenizer, r.row[col]).input_ids
    size = cfg.block_size
    return [(f"block {i // size}", Tokenized(stream[i:i + size], stream[i:i + size]))
            for i in range(0, len(stream), size)]


def _int_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _raise_row_errors(errors: list[str], where: str, fix: str) -> None:
    if not errors:
        return
    shown = "\n    ".join(errors[:MAX_ERRORS_SHOWN])
    more = f"\n    ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
    raise HoneError(f"{len(errors)} invalid row(s):\n    {shown}{more}", where=where, fix=fix)


def write_processed(samples: list[Tokenized], report: DataReport, output_dir: str | Path) -> Path:
    """Write ``data.jsonl`` (input_ids, labels: the use_processed_dataset format) and ``report.json``."""
    out = Path(output_dir)
    atomic_write_text(out / "data.jsonl", "".join(
        json.dumps({"input_ids": s.input_ids, "labels": s.labels}, separators=(",", ":")) + "\n" for s in samples))
    atomic_write_text(out / "report.json", json.dumps(asdict(report), indent=2) + "\n")
    return out


__all__ = ["DataReport", "PreparedData", "prepare_data", "write_processed", "IGNORE"]
