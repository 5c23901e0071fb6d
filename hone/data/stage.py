"""The pipeline's dataset stage: check a source (``hone data check``) and prepare it (``hone data prepare``).

``prepare_dataset`` writes, into the output directory:

- ``train.jsonl`` and ``eval.jsonl``: the valid rows in canonical form (eval is empty when
  ``train_split_ratio >= 1``);
- ``dataset_report.json``: source, content SHA-256, format, counts, roles and turns, token lengths.

Everything streams through temporary files in the output directory and is renamed into place at the end;
``dataset_report.json`` is removed first and written last, so its presence marks a complete, consistent set.

Training reads such a directory as it is (:func:`is_prepared_dir`, :func:`open_prepared`), and any other source
through the same validate -> canonical rows -> select code (:func:`split_source`) as ``prepare_dataset``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from array import array
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hone.config import DataConfig
from hone.data.formats import FORMATS, normalize_format
from hone.data.parallel import tokenize_rows
from hone.data.report import MAX_FILES_LISTED, DatasetReport, TokenStats, turn_stats
from hone.data.sources import Source, SourceOptions, open_source
from hone.data.split import Selection, select
from hone.data.tokenize import check_chat_tokenizer
from hone.data.validate import ScanResult, Validator, row_errors_text
from hone.errors import HoneError
from hone.io import atomic_write_text
from hone.logs import progress

TRAIN_FILE, EVAL_FILE, REPORT_FILE = "train.jsonl", "eval.jsonl", "dataset_report.json"
SKIP_INVALID_HINT = "; or pass --skip-invalid to leave invalid rows out"


def make_validator(cfg: DataConfig) -> Validator:
    return Validator(cfg.data_format, document_column_name=cfg.document_column_name,
                     unmask_messages=cfg.unmask_messages, max_errors=cfg.max_errors,
                     is_pretraining=cfg.is_pretraining, use_processed_dataset=cfg.use_processed_dataset,
                     column_names=cfg.column_names)


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
        token_lengths=None if tokens is None else tokens.__dict__.copy(),
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
            for _ in progress(rows, desc=f"checking {src.display}"):
                pass
        else:
            lengths.extend(progress(tokenize_rows(_chat_check(rows, tokenizer, "--tokenizer"), tokenizer,
                                                  unmask_messages=cfg.unmask_messages, lengths_only=True,
                                                  workers=num_workers or cfg.data_num_workers),
                                    desc=f"checking and tokenizing {src.display}"))
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


@dataclass
class CanonicalSplit:
    """The valid rows of a source in canonical form, assigned to train and eval (made by :func:`split_source`)."""

    source: Source
    scan: ScanResult
    selection: Selection
    _spool: "_Output"
    _wheres: list[str] | None

    def rows(self) -> Iterator[tuple[str, str, str]]:
        """``(target, where, line)`` for every selected row in source order: target ``"train"`` or ``"eval"``,
        where the row is in the source (``""`` unless ``keep_where``), the canonical row as one JSON line."""
        assign = self.selection.assign()
        with open(self._spool.tmp, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                target = assign(i)
                if target is not None:
                    yield target, self._wheres[i] if self._wheres is not None else "", line

    def report(self, cfg: DataConfig, *, seed: int, skip_invalid: bool = False,
               tokens: TokenStats | None = None) -> DatasetReport:
        """The dataset facts (while the source is open: its hash is complete once every row was read)."""
        report = _report(cfg, self.source, self.scan, tokens)
        report.rows.update(train=self.selection.train_rows, eval=self.selection.eval_rows)
        report.valid = self.scan.rows_valid > 0
        report.selection = {"subset": cfg.subset, "train_split_ratio": cfg.train_split_ratio, "seed": seed,
                            "skip_invalid": skip_invalid}
        return report


@contextmanager
def split_source(cfg: DataConfig, spool_dir: str | Path, *, seed: int = 42, skip_invalid: bool = False,
                 keep_where: bool = False, skip_hint: str = SKIP_INVALID_HINT) -> Iterator[CanonicalSplit]:
    """Open ``cfg.data_path``, validate every row into canonical form, select the subset and train/eval split.

    The one canonicalisation path: ``prepare_dataset`` writes what it yields to files, training tokenizes it.
    Valid rows are spooled to a temporary file in ``spool_dir`` (memory stays bounded), removed on exit. No rows,
    invalid rows (unless ``skip_invalid``; ``skip_hint`` completes the fix text) or no valid row raise
    :class:`HoneError` listing the problems. ``keep_where`` keeps each row's source location (for messages).
    """
    validator = make_validator(cfg)
    spool: _Output | None = None
    try:
        with open_source(cfg.data_path, SourceOptions.from_config(cfg)) as src:
            spool = _Output(Path(spool_dir), "all.jsonl")
            wheres: list[str] | None = [] if keep_where else None
            for where, row in progress(validator.run(src.records()), desc=f"reading {src.display}"):
                spool.write(json.dumps(row, ensure_ascii=False) + "\n")
                if wheres is not None:
                    wheres.append(where)
            spool.close()
            res = validator.result
            if res.rows_read == 0:
                raise HoneError("the data holds no rows", where=src.display, fix="add samples (is the file empty?)")
            if res.rows_invalid and not skip_invalid:
                raise HoneError(row_errors_text(res, cfg.max_errors), where=src.display,
                                fix=fix_for(res.format) + skip_hint)
            if res.rows_valid == 0:
                raise HoneError("no valid row", where=src.display, fix=fix_for(res.format))
            sel = select(res.rows_valid, subset=cfg.subset, train_split_ratio=cfg.train_split_ratio, seed=seed,
                         where=src.display)
            yield CanonicalSplit(src, res, sel, spool, wheres)
    finally:
        if spool is not None:
            spool.discard()


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
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staged: list[_Output] = []
    try:
        with split_source(cfg, out, seed=seed, skip_invalid=skip_invalid) as split:
            train, evals = _Output(out, TRAIN_FILE), _Output(out, EVAL_FILE)
            staged += [train, evals]

            def routed() -> Iterator[str]:
                for target, _, line in split.rows():
                    (train if target == "train" else evals).write(line)
                    yield line

            lengths = array("I")
            if tokenizer is None:
                for _ in routed():
                    pass
            else:
                if split.scan.chat_rows:
                    check_chat_tokenizer(tokenizer, where="--tokenizer")
                selected = split.selection.train_rows + split.selection.eval_rows
                lengths.extend(progress(tokenize_rows(routed(), tokenizer, unmask_messages=cfg.unmask_messages,
                                                      lengths_only=True, workers=num_workers or cfg.data_num_workers),
                                        desc="tokenizing", total=selected))
            tokens = None if tokenizer is None else TokenStats.from_lengths(
                lengths, tokenizer_name or getattr(tokenizer, "name_or_path", "tokenizer"), cfg.max_seq_len)
            report = split.report(cfg, seed=seed, skip_invalid=skip_invalid, tokens=tokens)
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


# -- reading a prepared directory ------------------------------------------------------------------------------

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_STAGING = re.compile(r"^\.(all|train|eval)\.jsonl\.tmp-")
_DEFAULTS = {"subset": 0, "train_split_ratio": 1.0}
PREPARE_CMD = "hone data prepare <source> --output DIR"


def _local_dir(path: str | Path) -> Path | None:
    s = str(path).strip()
    if s[:5].lower() == "file:":
        from hone.data.sources import file_uri_path

        try:
            p = file_uri_path(s)  # every RFC 8089 form: file://localhost/..., file:/..., percent-encoded
        except HoneError:
            return None
        return p if p.is_dir() else None
    if _URI.match(s):
        return None
    p = Path(s)
    return p if s and p.is_dir() else None


def is_prepared_dir(path: str | Path) -> bool:
    """Whether ``path`` (a local directory, or ``file://``) is a dataset prepared by :func:`prepare_dataset`.

    It is when it holds ``dataset_report.json``: that file is written last, so it marks a complete set
    (:func:`open_prepared` then checks that the report is readable and ``train.jsonl`` is there and unchanged).

    A directory without ``dataset_report.json`` is a plain data directory (every data file in it is a source
    file, read and validated as usual): False. Except an interrupted prepare, which raises :class:`HoneError`
    instead of being read as plain data (that would train on its train and eval rows together): a directory
    holding ``train.jsonl`` together with ``eval.jsonl`` or ``prepare_dataset``'s staging files
    (``.train.jsonl.tmp-*`` ...), but no ``dataset_report.json``. URIs other than ``file://`` (``pvc://``,
    ``s3://``, ...) are never prepared directories: pass the mounted local path.
    """
    d = _local_dir(path)
    if d is None:
        return False
    if (d / REPORT_FILE).is_file():
        return True
    if (d / TRAIN_FILE).is_file() and ((d / EVAL_FILE).is_file() or any(_STAGING.match(f.name) for f in d.iterdir())):
        raise HoneError(f"{d} holds {TRAIN_FILE} and {EVAL_FILE} (or unfinished staging files) but no {REPORT_FILE}: "
                        "an incomplete `hone data prepare` output (it writes the report last)",
                        where="data_path",
                        fix=f"prepare it again ({PREPARE_CMD}), or point data_path at {d / TRAIN_FILE} to read that "
                            "file as a plain source")
    return False


@dataclass
class PreparedDir:
    """A directory written by :func:`prepare_dataset`: canonical ``train.jsonl`` / ``eval.jsonl`` and the report."""

    path: Path
    report: DatasetReport

    @property
    def train_file(self) -> Path:
        return self.path / TRAIN_FILE

    def check_settings(self, cfg: DataConfig, *, seed: int) -> None:
        """Refuse data settings that would select or read rows differently from how this directory was made.

        ``subset`` and ``train_split_ratio`` at their defaults (0 and 1.0) mean "the train rows as prepared";
        otherwise they (and then ``seed``) must equal what the report says was applied. ``use_processed_dataset``,
        ``is_pretraining`` and an explicit ``data_format`` must agree with the prepared format.
        """
        applied = self.report.selection or {}
        where = self.path / REPORT_FILE
        asked = {k: getattr(cfg, k) for k in _DEFAULTS if getattr(cfg, k) not in (None, _DEFAULTS[k])}
        for name, value in asked.items():
            if value != applied.get(name):
                raise HoneError(
                    f"{name}={value} but the prepared directory {self.path} was made with "
                    f"{name}={applied.get(name)} (see {where})", where=f"parameter {name}",
                    fix=f"leave {name} at its default ({_DEFAULTS[name]}) to train on the prepared train rows, or "
                        f"re-prepare the source with --{name.replace('_', '-')} {value} ({PREPARE_CMD})")
        if asked and applied.get("seed") != seed:
            raise HoneError(f"seed={seed} but the prepared directory {self.path} selected its rows with "
                            f"seed={applied.get('seed')} (see {where}); {', '.join(asked)} would select other rows",
                            where="parameter seed",
                            fix=f"pass seed={applied.get('seed')}, leave {' and '.join(asked)} at the default to "
                                f"train on the prepared train rows, or re-prepare with --seed {seed}")
        fmt = self.report.format
        for flag, needed in (("use_processed_dataset", "processed"), ("is_pretraining", "text")):
            if getattr(cfg, flag, False) and fmt != needed:
                raise HoneError(f"{flag}=True but the prepared directory {self.path} holds {fmt} rows",
                                where=f"parameter {flag}",
                                fix=f"drop {flag}, or re-prepare the source with it ({PREPARE_CMD})")
        requested = normalize_format(cfg.data_format)
        if requested != "auto" and requested != fmt:
            raise HoneError(f"data_format={cfg.data_format!r} but the prepared directory {self.path} was read as "
                            f"{fmt!r}", where="parameter data_format",
                            fix=f"leave data_format at 'auto', or re-prepare the source ({PREPARE_CMD})")

    def train_rows(self) -> list[tuple[str, dict[str, Any]]]:
        """``(where, canonical row)`` of ``train.jsonl``: parsed, not validated again; its SHA-256 and row count
        must match the report (a file changed after preparing raises :class:`HoneError`)."""
        f = self.train_file
        rows: list[tuple[str, dict[str, Any]]] = []
        sha = hashlib.sha256()
        with open(f, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                sha.update(raw)
                try:
                    row = json.loads(raw)
                except ValueError:
                    row = None
                if not (isinstance(row, dict) and (isinstance(row.get("messages"), list) and row["messages"]
                                                   or isinstance(row.get("input_ids"), list))):
                    raise HoneError("not a canonical row of a prepared dataset", where=f"{f}:{n}",
                                    fix=f"re-prepare the directory ({PREPARE_CMD}), or point data_path at {f} to "
                                        "read it as a plain source")
                rows.append((f"{f}:{n}", row))
        expected = (self.report.outputs or {}).get("train") or {}
        if sha.hexdigest() != expected.get("sha256") or len(rows) != expected.get("rows"):
            raise HoneError(f"{f} changed after it was prepared ({len(rows)} rows, SHA-256 {sha.hexdigest()[:12]}…; "
                            f"{self.path / REPORT_FILE} says {expected.get('rows')} rows, "
                            f"{str(expected.get('sha256'))[:12]}…)", where=str(f),
                            fix=f"re-prepare the directory ({PREPARE_CMD}), or point data_path at {f} to read "
                                "it as a plain source")
        return rows

    @property
    def train_sha256(self) -> str:
        return str(((self.report.outputs or {}).get("train") or {}).get("sha256", ""))

    def check_train_unchanged(self) -> None:
        """Raise :class:`HoneError` (as :meth:`train_rows` does) when ``train.jsonl`` is not what the report says
        (hashed in blocks: about a second per gigabyte)."""
        for _ in self.iter_train_lines(blocks=True):
            pass

    def iter_train_lines(self, *, blocks: bool = False) -> Iterator[tuple[str, str]]:
        """``(where, JSON line)`` of ``train.jsonl``, streaming (the lines are parsed where they are tokenized);
        after the last line its SHA-256 and row count are checked against the report, as :meth:`train_rows`
        does (a file changed after preparing raises :class:`HoneError` at the end)."""
        f = self.train_file
        sha, n = hashlib.sha256(), 0
        with open(f, "rb") as fh:
            if blocks:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    sha.update(block)
                    n += block.count(b"\n")
            else:
                for n, raw in enumerate(fh, 1):
                    sha.update(raw)
                    yield f"{f}:{n}", raw.decode("utf-8")
        expected = (self.report.outputs or {}).get("train") or {}
        if sha.hexdigest() != expected.get("sha256") or n != expected.get("rows"):
            raise HoneError(f"{f} changed after it was prepared ({n} rows, SHA-256 {sha.hexdigest()[:12]}…; "
                            f"{self.path / REPORT_FILE} says {expected.get('rows')} rows, "
                            f"{str(expected.get('sha256'))[:12]}…)", where=str(f),
                            fix=f"re-prepare the directory ({PREPARE_CMD}), or point data_path at {f} to read "
                                "it as a plain source")


def open_prepared(path: str | Path) -> PreparedDir:
    """The prepared directory at ``path`` (see :func:`is_prepared_dir`), its report read and checked complete."""
    d = _local_dir(path)
    if d is None or not (d / REPORT_FILE).is_file():
        raise HoneError(f"{path} is not a prepared dataset directory (no {REPORT_FILE})", where="data_path",
                        fix=f"prepare it first: {PREPARE_CMD}")
    rp = d / REPORT_FILE
    try:
        report = DatasetReport.from_json(json.loads(rp.read_text(encoding="utf-8")))
    except (ValueError, TypeError, AttributeError) as err:
        raise HoneError(f"unreadable {REPORT_FILE}: {err}", where=str(rp),
                        fix=f"re-prepare the directory ({PREPARE_CMD})") from None
    train = (report.outputs or {}).get("train")
    if not isinstance(train, dict) or "sha256" not in train or "rows" not in train:
        raise HoneError(f"{REPORT_FILE} does not list the {TRAIN_FILE} it was written with", where=str(rp),
                        fix=f"re-prepare the directory ({PREPARE_CMD})")
    if not (d / TRAIN_FILE).is_file():
        raise HoneError(f"{d / TRAIN_FILE} is missing (the directory has {REPORT_FILE})", where="data_path",
                        fix=f"re-prepare the directory ({PREPARE_CMD})")
    return PreparedDir(d, report)
