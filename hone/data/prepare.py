"""From a data source to validated, tokenized, filtered samples, written under the run's data directory.

``cfg.data_path`` is any URI :func:`hone.data.sources.open_source` accepts (hub, S3, HTTP(S), PVC, local) in
any supported format; every row is validated (all problems are reported before anything is tokenized),
converted to canonical form, subset/split as configured, then tokenized with masking on every core.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hone.config import DataConfig
from hone.data.parallel import resolve_workers, tokenize_rows
from hone.data.sources import SourceOptions, open_source
from hone.data.split import select
from hone.data.stage import fix_for, make_validator
from hone.data.tokenize import IGNORE, Tokenized, check_chat_tokenizer
from hone.data.validate import row_errors_text
from hone.errors import HoneError
from hone.io import atomic_write_text

MAX_ERRORS_SHOWN = 10
PARALLEL_MIN_ROWS = 2000  # below this, forking workers costs more than it saves


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
    source: str = ""
    source_sha256: str = ""
    data_format: str = ""
    rows_read: int = 0
    eval_rows: int = 0

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


def prepare_data(cfg: DataConfig, tokenizer, output_dir: str | Path | None = None, *, seed: int = 42,
                 num_workers: int | None = None) -> PreparedData:
    """Read ``cfg.data_path``, validate every row, subset/split, tokenize, drop what cannot be trained, report.

    When ``output_dir`` is given the processed samples (``data.jsonl``), ``report.json`` and, when the
    split leaves an eval part, ``eval.jsonl`` (canonical rows) are written there.
    """
    validator = make_validator(cfg)
    with open_source(cfg.data_path, SourceOptions.from_config(cfg)) as src:
        rows = list(validator.run(src.records()))  # (where, canonical row)
        display, sha = src.display, src.sha256
    res = validator.result
    if res.rows_read == 0:
        raise HoneError("the data file holds no rows", where=display, fix="add samples")
    if res.rows_invalid:
        raise HoneError(row_errors_text(res, cfg.max_errors), where=display,
                        fix=fix_for(res.format))
    sel = select(len(rows), subset=cfg.subset, train_split_ratio=cfg.train_split_ratio, seed=seed, where=display)
    assign = sel.assign()
    train, eval_rows = [], []
    for i, (where, row) in enumerate(rows):
        target = assign(i)
        if target == "train":
            train.append((where, row))
        elif target == "eval":
            eval_rows.append(row)
    del rows
    wheres = [w for w, _ in train]
    train_rows = [r for _, r in train]
    del train

    if res.format == "processed":
        mode = "processed"
    elif cfg.is_pretraining:
        mode = "pretraining"
    else:
        mode = "messages"
        if res.chat_rows:
            check_chat_tokenizer(tokenizer)
    workers = num_workers or cfg.data_num_workers or (resolve_workers(None) if len(train_rows) >= PARALLEL_MIN_ROWS
                                                      else 1)
    tokenized = list(tokenize_rows(train_rows, tokenizer, unmask_messages=cfg.unmask_messages, workers=workers))
    if mode == "pretraining":
        stream = [t for tok in tokenized for t in tok.input_ids]
        size = cfg.block_size
        tokenized = [Tokenized(stream[i:i + size], stream[i:i + size]) for i in range(0, len(stream), size)]
        wheres = [f"block {i // size}" for i in range(0, len(stream), size)]

    limit = cfg.block_size if cfg.is_pretraining else cfg.max_seq_len
    report = DataReport(rows=len(train_rows), mode=mode, source=display, source_sha256=sha,
                        data_format=res.format or "", rows_read=res.rows_read, eval_rows=len(eval_rows))
    samples = []
    for where, tok in zip(wheres, tokenized):
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
            where=display,
            fix="raise max_seq_len, check that conversations have assistant turns, or set unmask_messages=True",
        )
    if output_dir is not None:
        write_processed(samples, report, output_dir, eval_rows=eval_rows)
    return PreparedData(samples, report)


def write_processed(samples: list[Tokenized], report: DataReport, output_dir: str | Path, *,
                    eval_rows: list[dict] | None = None) -> Path:
    """Write ``data.jsonl`` (input_ids, labels: the use_processed_dataset format), ``report.json`` and, with
    eval rows, ``eval.jsonl`` (canonical)."""
    out = Path(output_dir)
    atomic_write_text(out / "data.jsonl", "".join(
        json.dumps({"input_ids": s.input_ids, "labels": s.labels}, separators=(",", ":")) + "\n" for s in samples))
    if eval_rows:
        atomic_write_text(out / "eval.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in eval_rows))
    atomic_write_text(out / "report.json", json.dumps(asdict(report), indent=2) + "\n")
    return out


__all__ = ["DataReport", "PreparedData", "prepare_data", "write_processed", "IGNORE"]
