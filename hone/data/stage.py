"""The pipeline's dataset stage: check a source (``hone data check``) and prepare it (``hone data prepare``).

``prepare_dataset`` writes, into the output directory:

- ``train.jsonl`` and ``eval.jsonl``: the valid rows in canonical form (eval is empty when
  ``train_split_ratio >= 1``);
- ``dataset_report.json``: source, content SHA-256, format, counts, roles and turns, token lengths.

Everything streams through temporary files in the output directory and is renamed into place at the end;
``dataset_report.json`` is removed first and written last, so its presence marks a complete, consistent set.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from array import array
from pathlib import Path
from typing import Any, Iterator

from hone.config import DataConfig
from hone.data.formats import FORMATS
from hone.data.parallel import tokenize_rows
from hone.data.report import MAX_FILES_LISTED, DatasetReport, TokenStats, turn_stats
from hone.data.sources import Source, SourceOptions, open_source
from hone.data.split import select
from hone.data.tokenize import check_chat_tokenizer
from hone.data.validate import ScanResult, Validator, row_errors_text
from hone.errors import HoneError
from hone.io import atomic_write_text

TRAIN_FILE, EVAL_FILE, REPORT_FILE = "train.jsonl", "eval.jsonl", "dataset_report.json"


def make_validator(cfg: DataConfig) -> Validator:
    return Validator(cfg.data_format, document_column_name=cfg.document_column_name,
                     unmask_messages=cfg.unmask_messages, max_errors=cfg.max_errors,
                     is_pretraining=cfg.is_pretraining, use_processed_dataset=cfg.use_processed_dataset)


def fix_for(fmt: str | None) -> str:
    """How to fix invalid rows of a format."""
    if fmt == "messages" or fmt is None:
        return "each row needs a 'messages' list of {role, content} objects"
    if fmt == "processed":
        return "write rows as {\"input_ids\": [...], \"labels\": [...]} with -100 for tokens without loss"
    if fmt == "text":
        return "set document_column_name to the column that holds the text"
    return f"{fmt} rows look like {FORMATS[fmt]}"


def _chat_check(rows: Iterator[tuple[str, dict]], tokenizer: Any, where: str) -> Iterator[dict]:
    """Pass rows through; the first chat row checks that the tokenizer can render chats."""
    checked = False
    for _, row in rows:
        if not checked and "messages" in row and row["messages"][0]["role"] != "pretraining":
            check_chat_tokenizer(tokenizer, where=where)
            checked = True
        yield row


def _report(cfg: DataConfig, src: Source, res: ScanResult, tokens: TokenStats | None) -> DatasetReport:
    return DatasetReport(
        source=src.display, source_kind=src.scheme, sha256=src.sha256, format=res.format,
        format_detected=res.format_detected, text_column=res.text_column, split=src.split,
        rows={"read": res.rows_read, "valid": res.rows_valid, "invalid": res.rows_invalid},
        valid=res.valid, files=src.files[:MAX_FILES_LISTED], files_count=len(src.files),
        problems=[p.to_json() for p in res.problems], problem_counts=dict(res.problem_counts.most_common()),
        roles=dict(res.roles.most_common()), turns=turn_stats(res.turns),
        tokens=None if tokens is None else tokens.__dict__.copy(),
    )


def check_dataset(cfg: DataConfig, tokenizer: Any = None, *, tokenizer_name: str | None = None,
                  num_workers: int | None = None) -> DatasetReport:
    """Validate every row of ``cfg.data_path`` (streaming, bounded memory) and report; writes nothing.

    With a tokenizer the report also has token-length percentiles and the rows longer than ``max_seq_len``.
    Source problems (not found, credentials) raise :class:`HoneError`; invalid rows do not: they are in the
    report (``report.valid`` is False).
    """
    validator = make_validator(cfg)
    lengths = array("I")
    with open_source(cfg.data_path, SourceOptions.from_config(cfg)) as src:
        rows = validator.run(src.records())
        if tokenizer is None:
            for _ in rows:
                pass
        else:
            lengths.extend(tokenize_rows(_chat_check(rows, tokenizer, "--tokenizer"), tokenizer,
                                         unmask_messages=cfg.unmask_messages, lengths_only=True,
                                         workers=num_workers or cfg.data_num_workers))
        res = validator.result
        tokens = None if tokenizer is None else TokenStats.from_lengths(
            lengths, tokenizer_name or getattr(tokenizer, "name_or_path", "tokenizer"), cfg.max_seq_len)
        return _report(cfg, src, res, tokens)


class _Output:
    """A file written under a temporary name in the output directory, hashed as it is written."""

    def __init__(self, directory: Path, name: str):
        self.path = directory / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=directory)
        self.tmp = Path(tmp)
        self.fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        self.sha, self.rows = hashlib.sha256(), 0

    def write(self, line: str) -> None:
        self.fh.write(line)
        self.sha.update(line.encode("utf-8"))
        self.rows += 1

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()

    def commit(self) -> dict[str, Any]:
        self.close()
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.tmp, 0o666 & ~mask)  # mkstemp makes it 0600; outputs follow the umask
        os.replace(self.tmp, self.path)
        return {"path": str(self.path), "rows": self.rows, "sha256": self.sha.hexdigest()}

    def discard(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


def prepare_dataset(cfg: DataConfig, output_dir: str | Path, tokenizer: Any = None, *, seed: int = 42,
                    skip_invalid: bool = False, tokenizer_name: str | None = None,
                    num_workers: int | None = None) -> DatasetReport:
    """Read, validate, convert, subset and split ``cfg.data_path``; write train/eval JSONL and the report.

    Invalid rows make it fail (nothing is written) unless ``skip_invalid`` (they are then counted and left
    out). ``cfg.subset`` and ``cfg.train_split_ratio`` choose the rows, seeded with ``seed``.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise HoneError(f"output path exists and is not a directory: {out}", where="--output",
                        fix="choose a directory")
    validator = make_validator(cfg)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staged: list[_Output] = []
    try:
        with open_source(cfg.data_path, SourceOptions.from_config(cfg)) as src:
            all_rows = _Output(out, "all.jsonl")
            staged.append(all_rows)
            for _, row in validator.run(src.records()):
                all_rows.write(json.dumps(row, ensure_ascii=False) + "\n")
            all_rows.close()
            res = validator.result
            if res.rows_read == 0:
                raise HoneError("the data holds no rows", where=src.display, fix="add samples (is the file empty?)")
            if res.rows_invalid and not skip_invalid:
                raise HoneError(row_errors_text(res, cfg.max_errors), where=src.display,
                                fix=fix_for(res.format) + "; or pass --skip-invalid to leave invalid rows out")
            if res.rows_valid == 0:
                raise HoneError("no valid row", where=src.display, fix=fix_for(res.format))
            sel = select(res.rows_valid, subset=cfg.subset, train_split_ratio=cfg.train_split_ratio, seed=seed,
                         where=src.display)
            train, evals = _Output(out, TRAIN_FILE), _Output(out, EVAL_FILE)
            staged += [train, evals]
            assign = sel.assign()

            def routed() -> Iterator[str]:
                with open(all_rows.tmp, encoding="utf-8") as fh:
                    for i, line in enumerate(fh):
                        target = assign(i)
                        if target is not None:
                            (train if target == "train" else evals).write(line)
                            yield line

            lengths = array("I")
            if tokenizer is None:
                for _ in routed():
                    pass
            else:
                if res.chat_rows:
                    check_chat_tokenizer(tokenizer, where="--tokenizer")
                lengths.extend(tokenize_rows(routed(), tokenizer, unmask_messages=cfg.unmask_messages,
                                             lengths_only=True, workers=num_workers or cfg.data_num_workers))
            all_rows.discard()
            tokens = None if tokenizer is None else TokenStats.from_lengths(
                lengths, tokenizer_name or getattr(tokenizer, "name_or_path", "tokenizer"), cfg.max_seq_len)
            report = _report(cfg, src, res, tokens)
        report.rows.update(train=train.rows, eval=evals.rows)
        report.valid = res.rows_valid > 0
        report.selection = {"subset": cfg.subset, "train_split_ratio": cfg.train_split_ratio, "seed": seed,
                            "skip_invalid": skip_invalid}
        (out / REPORT_FILE).unlink(missing_ok=True)  # the report marks a complete set: gone until it is
        report.outputs = {"train": train.commit(), "eval": evals.commit()}
        atomic_write_text(out / REPORT_FILE, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
        return report
    except BaseException:
        for s in staged:
            s.discard()
        if created:
            try:
                out.rmdir()  # only if still empty
            except OSError:
                pass
        raise
