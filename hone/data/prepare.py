"""Training's data path: a source, or a prepared dataset directory, to tokenized, filtered samples.

One path for every caller: source URI -> validated canonical split (:func:`hone.data.stage.split_source`, the
code ``hone data prepare`` / :func:`~hone.data.stage.prepare_dataset` runs) -> token samples -> (the trainer's)
micro-batches. ``cfg.data_path`` is either

- a directory written by ``prepare_dataset`` (:func:`~hone.data.stage.is_prepared_dir`: it holds
  ``dataset_report.json``): its ``train.jsonl`` rows are canonical and valid already, so they are only parsed
  (no second validation, subset or split) and tokenized; or
- any URI :func:`hone.data.sources.open_source` accepts (hub, S3, HTTP(S), PVC, local) in any supported format:
  every row is validated (all problems are reported before anything is tokenized), converted to canonical
  form and subset/split as configured, exactly as ``prepare_dataset`` does, then tokenized.

Both give the same samples for the same settings. Tokenizing masks labels and uses every core: workers take
chunks of rows, render each chunk's conversations with the chat template and encode them in one call of the fast
tokenizer (:class:`hone.data.tokenize.BatchTokenizer`, token for token what the per-row reference
:func:`~hone.data.tokenize.tokenize_conversation` gives), and the parent streams their arrays to disk as token
samples (:mod:`hone.data.samples`), read memory-mapped by training: memory does not grow with the rows. The
samples are made once: the same rows, tokenizer and settings reuse them (:func:`token_samples`), and under
torchrun one process per node makes them while the others wait.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from hone.config import DataConfig
from hone.data.parallel import resolve_workers, tokenize_chunks, tokenize_rows
from hone.data.report import DatasetReport
from hone.data.samples import FORMAT_VERSION, META_FILE, SampleWriter, TokenSamples, read_meta
from hone.data.stage import PREPARE_CMD, is_prepared_dir, open_prepared, split_source
from hone.data.tokenize import IGNORE, Tokenized, check_chat_tokenizer, special_token_ids
from hone.errors import HoneError
from hone.io import atomic_write_text
from hone.layout import (PROCESSED_EVAL_FILE, PROCESSED_REPORT_FILE, PROCESSED_SAMPLES_FILE,
                         PROCESSED_VALIDATION_FILE, TOKEN_SAMPLES_CACHE, TOKEN_SAMPLES_DIR, hone_home)
from hone.logs import progress

log = logging.getLogger(__name__)

MAX_ERRORS_SHOWN = 10
PARALLEL_MIN_ROWS = 2000  # below this, forking workers costs more than it saves
SAMPLES_CHUNK = 256  # rows per chunk a worker tokenizes (one template batch, one encode batch)
CACHE_LIMIT_ENV = "HONE_SAMPLES_CACHE_GB"  # total size of <home>/token-samples kept (least recently used go)
DEFAULT_CACHE_LIMIT_GB = 20.0
CACHE_MIN_IDLE_S = 3600.0  # an entry used within the last hour is never removed (another run may read it)
STALE_HANDOFF_S = 120.0  # a rank takes rank 0's hand-off file only if written at most this long before it waited


# what the fix text of invalid rows offers instead of --skip-invalid (training has no such option)
SKIP_INVALID_HINT = f"; or leave invalid rows out with `{PREPARE_CMD} --skip-invalid` and train on DIR"


@dataclass
class PreparedData:
    samples: Sequence[Tokenized]  # TokenSamples (memory-mapped) from prepare_data; any sequence works
    report: DatasetReport
    validation: Sequence[Tokenized] = field(default_factory=list)  # held out for validation loss

    @property
    def lengths(self) -> list[int]:
        if isinstance(self.samples, TokenSamples):
            return self.samples.lengths.tolist()
        return [len(s.input_ids) for s in self.samples]


def hold_out(samples: Sequence[Tokenized], fraction: float, *, seed: int
             ) -> tuple[Sequence[Tokenized], Sequence[Tokenized]]:
    """(train, validation): a seeded random ``fraction`` of the samples (rounded up, as ``datasets``'
    ``train_test_split`` does) held out; both keep the samples' order."""
    if fraction <= 0:
        return samples, []
    n_val = math.ceil(fraction * len(samples))
    if n_val >= len(samples):
        raise HoneError(f"validation_split={fraction} leaves no training sample ({len(samples)} samples)",
                        where="validation_split", fix="lower validation_split or add data")
    held = random.Random(seed).sample(range(len(samples)), n_val)
    if isinstance(samples, TokenSamples):
        keep = np.ones(len(samples), bool)
        keep[np.asarray(held, dtype=np.int64)] = False
        return samples.select(np.flatnonzero(keep)), samples.select(np.flatnonzero(~keep))
    held_set = set(held)
    return ([s for i, s in enumerate(samples) if i not in held_set],
            [s for i, s in enumerate(samples) if i in held_set])


def prepare_data(cfg: DataConfig, tokenizer, output_dir: str | Path | None = None, *, seed: int = 42,
                 num_workers: int | None = None, validation_split: float = 0.0,
                 validation_data_path: str | None = None) -> PreparedData:
    """``cfg.data_path`` -> canonical train rows -> token samples on disk, dropping what cannot be trained; report.

    A prepared directory (see the module docstring) is read as it is: ``subset`` and ``train_split_ratio`` must
    then be their defaults or what its ``dataset_report.json`` says was applied (with the same ``seed``), else
    :class:`HoneError` says to re-prepare (:meth:`hone.data.stage.PreparedDir.check_settings`). A directory
    without ``dataset_report.json`` is a plain data directory (an interrupted prepare is an error:
    :func:`hone.data.stage.is_prepared_dir`).

    The samples are written once, memory-mapped (:class:`~hone.data.samples.TokenSamples`): into the prepared
    directory's ``samples/`` by ``hone data prepare --tokenizer``, else under the hone home
    (``<home>/token-samples/<key>``, the key hashing the train rows, the tokenizer and the settings that shape
    the samples); the same rows, tokenizer and settings again reuse them (:func:`token_samples`). Under torchrun
    the local rank 0 prepares and the other ranks of the node wait and read (:func:`_once_per_node`).

    ``validation_split`` holds a seeded fraction of the tokenized samples out of training (:func:`hold_out`),
    as Training Hub's backends split their processed data, to measure validation loss; or
    ``validation_data_path`` names other data, read and tokenized with the same settings (every row).

    When ``output_dir`` is given the processed samples (``data.jsonl``) and ``report.json`` (the
    :class:`DatasetReport`, with the sample counts) are written there, and, when the split of a source leaves
    an eval part, ``eval.jsonl`` (canonical rows; a prepared directory has its own); the held-out validation
    samples go to ``validation.jsonl``.
    """
    other = None
    if validation_data_path is not None:
        other = cfg.model_copy(update={"data_path": validation_data_path, "subset": 0, "train_split_ratio": 1.0})

    def build() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="hone-eval-") as spool:
            eval_file = Path(spool) / "eval.jsonl"
            samples, report = token_samples(cfg, tokenizer, seed=seed, num_workers=num_workers,
                                            eval_to=eval_file if output_dir is not None else None)
            val_path = None
            if other is not None:
                val_path = str(token_samples(other, tokenizer, seed=seed, num_workers=num_workers)[0].path)
            if output_dir is not None and eval_file.is_file() and eval_file.stat().st_size:
                out = Path(output_dir)
                out.mkdir(parents=True, exist_ok=True)
                shutil.move(str(eval_file), str(out / PROCESSED_EVAL_FILE))
        return {"samples": str(samples.path), "report": report.to_json(), "validation": val_path}

    done = _once_per_node(build, _handoff_ident(cfg, tokenizer, seed, validation_data_path))
    samples = _within_limit(TokenSamples(done["samples"]), cfg)
    report = DatasetReport.from_json(done["report"])
    samples, validation = hold_out(samples, validation_split, seed=seed)
    if done["validation"] is not None:
        validation = _within_limit(TokenSamples(done["validation"]), cfg)
    if output_dir is not None:
        write_processed(samples, report, output_dir, validation=validation)
    return PreparedData(samples, report, validation)


def _within_limit(samples: TokenSamples, cfg: DataConfig) -> TokenSamples:
    """The samples no longer than ``max_seq_len`` (``block_size`` for pretraining), as :func:`_apply_limit` counts."""
    limit = cfg.block_size if cfg.is_pretraining else cfg.max_seq_len
    lengths = samples.lengths
    return samples if not (lengths > limit).any() else samples.select(np.flatnonzero(lengths <= limit))


# -- preparing once: the cache key, the hone home, one process per node -----------------------------------------

def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in a tokenizer that shapes samples: its vocabulary and rules, special and added
    tokens, chat template (also one changed in memory after loading)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    template = getattr(tokenizer, "chat_template", None)
    h.update(json.dumps([type(tokenizer).__name__, template if isinstance(template, (str, dict)) else None,
                         tokenizer.bos_token_id, tokenizer.eos_token_id, sorted(special_token_ids(tokenizer)),
                         len(tokenizer)], sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


def _mode(cfg: DataConfig, fmt: str | None) -> str:
    if fmt == "processed":
        return "processed"
    return "pretraining" if cfg.is_pretraining else "messages"


def samples_key(train_sha256: str, cfg: DataConfig, tokenizer, mode: str) -> str:
    """The identity of the token samples made from train rows whose JSON lines hash to ``train_sha256``.
    ``max_seq_len`` is not part of it: samples longer than the limit are kept on disk and left out when read
    (:func:`_apply_limit`), so every limit reuses the same samples."""
    ident = {"format": FORMAT_VERSION, "rows": train_sha256, "tokenizer": tokenizer_fingerprint(tokenizer),
             "mode": mode, "unmask_messages": cfg.unmask_messages,
             "block_size": cfg.block_size if mode == "pretraining" else None}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode("utf-8")).hexdigest()


def _reusable(path: Path, key: str) -> dict[str, Any] | None:
    meta = read_meta(path)
    return meta if meta is not None and meta.get("key") == key else None


def token_samples(cfg: DataConfig, tokenizer, *, seed: int = 42, num_workers: int | None = None,
                  eval_to: Path | None = None, samples_dir: Path | None = None) -> tuple[TokenSamples, DatasetReport]:
    """The token samples of ``cfg.data_path``'s train rows (those within ``max_seq_len``) and the report: reused
    when samples with the same key exist (in ``samples_dir``, the prepared directory's ``samples/``, or the cache
    under the hone home), else tokenized and written (to ``samples_dir`` when given, else the cache). ``eval_to``:
    where to write the eval rows a source's split leaves (canonical JSON lines)."""
    cache = hone_home() / TOKEN_SAMPLES_CACHE
    if is_prepared_dir(cfg.data_path):
        prepared = open_prepared(cfg.data_path)
        prepared.check_settings(cfg, seed=seed)
        report = prepared.report
        mode = _mode(cfg, report.format)
        chat = any(role != "pretraining" for role in (report.roles or {}))
        key = samples_key(prepared.train_sha256, cfg, tokenizer, mode)
        candidates = [p for p in (samples_dir, prepared.path / TOKEN_SAMPLES_DIR, cache / key[:32]) if p is not None]
        samples, meta = _reuse_or_build(candidates, samples_dir or cache / key[:32], key,
                                        lambda: prepared.iter_train_lines(), report.train_rows, cfg, tokenizer,
                                        report, mode, chat, num_workers, before_reuse=prepared.check_train_unchanged)
        train_file = prepared.train_file
        return _apply_limit(samples, cfg, report, meta, lambda rows: [f"{train_file}:{o + 1}" for o in rows])
    with tempfile.TemporaryDirectory(prefix="hone-data-") as spool, \
            split_source(cfg, spool, seed=seed, keep_where=True, skip_hint=SKIP_INVALID_HINT) as split:
        report = split.report(cfg, seed=seed)
        sha = hashlib.sha256()
        eval_fh = open(eval_to, "w", encoding="utf-8") if eval_to is not None else None
        try:
            for target_name, _, line in split.rows():
                if target_name == "train":
                    sha.update(line.encode("utf-8"))
                elif eval_fh is not None:
                    eval_fh.write(line)
        finally:
            if eval_fh is not None:
                eval_fh.close()
        mode = _mode(cfg, report.format)
        key = samples_key(sha.hexdigest(), cfg, tokenizer, mode)
        candidates = [p for p in (samples_dir, cache / key[:32]) if p is not None]

        def train_lines() -> Iterator[tuple[str, str]]:
            return ((where, line) for target_name, where, line in split.rows() if target_name == "train")

        def wheres(rows: list[int]) -> list[str]:
            wanted, found = set(rows), {}
            for o, (where, _) in enumerate(train_lines()):
                if o in wanted:
                    found[o] = where
                    if len(found) == len(wanted):
                        break
            return [found.get(o, f"train row {o + 1}") for o in rows]

        samples, meta = _reuse_or_build(candidates, candidates[0], key, train_lines, report.train_rows, cfg,
                                        tokenizer, report, mode, split.scan.chat_rows > 0, num_workers)
        return _apply_limit(samples, cfg, report, meta, wheres)


def _reuse_or_build(candidates: list[Path], target: Path, key: str, lines, total: int, cfg: DataConfig, tokenizer,
                    report: DatasetReport, mode: str, chat: bool, num_workers: int | None, before_reuse=None
                    ) -> tuple[TokenSamples, dict[str, Any]]:
    for path in candidates:
        meta = _reusable(path, key)
        if meta is not None:
            if before_reuse is not None:
                before_reuse()
            _touch(path)
            report.samples_path, report.reused = str(path), True
            report.rows_per_s = report.prepare_s = None
            log.info("token samples: reusing %s (prepared before from the same rows, tokenizer and settings; "
                     "preparation skipped)", path)
            return TokenSamples(path), meta
    if mode == "messages" and chat:
        check_chat_tokenizer(tokenizer)
    write_samples(lines(), total, target, key, cfg, tokenizer, mode=mode, num_workers=num_workers)
    if target.parent.name == TOKEN_SAMPLES_CACHE:
        prune_cache(target.parent, keep=target)
    report.samples_path, report.reused = str(target), False
    meta = read_meta(target) or {}
    report.rows_per_s, report.prepare_s = meta.get("rows_per_s"), meta.get("prepare_s")
    return TokenSamples(target), meta


def _apply_limit(samples: TokenSamples, cfg: DataConfig, report: DatasetReport, meta: dict[str, Any],
                 where_of) -> tuple[TokenSamples, DatasetReport]:
    """Leave out the samples longer than the limit (``max_seq_len``; ``block_size`` for pretraining) and fill the
    report's sample facts; :class:`HoneError` when no sample is left."""
    limit = cfg.block_size if cfg.is_pretraining else cfg.max_seq_len
    mode = meta.get("mode", "messages")
    lengths = samples.lengths
    too_long = lengths > limit
    long_idx = np.flatnonzero(too_long)[:MAX_ERRORS_SHOWN]
    long_rows = [int(r) for r in samples.rows[long_idx]]
    examples = [(o, text) for o, text in meta.get("no_loss_examples", [])]
    if long_rows:
        names = where_of(long_rows) if mode != "pretraining" else [f"block {o}" for o in long_rows]
        examples += [(o, f"{w}: {int(lengths[i])} tokens > {limit}") for o, w, i in zip(long_rows, names, long_idx)]
    kept_mask = ~too_long
    report.mode = mode
    report.dropped_too_long = int(too_long.sum())
    report.dropped_no_loss_tokens = int(meta.get("dropped_no_loss_tokens", 0))
    report.dropped_examples = [text for _, text in sorted(examples, key=lambda e: e[0])][:MAX_ERRORS_SHOWN]
    report.samples = int(kept_mask.sum())
    report.tokens = int(lengths[kept_mask].sum())
    report.loss_tokens = int(samples.loss_tokens[kept_mask].sum())
    report.max_len = int(lengths[kept_mask].max()) if report.samples else 0
    if not report.samples:
        raise HoneError(
            f"every sample was dropped ({report.dropped_too_long} longer than max_seq_len={limit}, "
            f"{report.dropped_no_loss_tokens} with no trainable token)",
            where=report.source,
            fix="raise max_seq_len, check that conversations have assistant turns, or set unmask_messages=True",
        )
    if report.dropped_too_long:
        samples = samples.select(np.flatnonzero(kept_mask))
    return samples, report


class _Progress:
    """A bar with rows/s and ETA on a terminal; in logs, a line with the same every ``every_s`` seconds."""

    def __init__(self, total: int, desc: str, every_s: float = 30.0):
        self.bar = progress(total=total, desc=desc, unit="row")
        self.total, self.done, self.every = total, 0, every_s
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        now = time.perf_counter()
        if self.bar.disable and now - self.last >= self.every:
            self.last = now
            rate = self.done / (now - self.start)
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            log.info("tokenizing: %s/%s rows, %s rows/s, ETA %ss", f"{self.done:,}", f"{self.total:,}",
                     f"{rate:,.0f}", f"{eta:,.0f}")

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.start


def write_samples(lines: Iterable[tuple[str, str]], total: int, path: Path, key: str, cfg: DataConfig, tokenizer,
                  *, mode: str, num_workers: int | None = None) -> Path:
    """Tokenize ``(where, canonical JSON line)`` rows into token samples at ``path`` (streaming: workers over
    chunks, the parent writes each chunk's samples as it comes), leaving out samples with no trainable token
    (counted, with the first few named, in ``meta.json``). A row that cannot be tokenized (a processed row with
    ids outside the vocabulary, a template that rejects it, text that is not Unicode) raises :class:`HoneError`
    naming it. Nothing is left at ``path`` unless it succeeds."""
    workers = num_workers or cfg.data_num_workers or (resolve_workers(None) if total >= PARALLEL_MIN_ROWS else 1)
    chunk = max(16, min(SAMPLES_CHUNK, total // (4 * workers) or 16))
    wheres_q: deque[list[str]] = deque()

    def chunks() -> Iterator[list[str]]:
        wheres, rows = [], []
        for where, line in lines:
            wheres.append(where)
            rows.append(line)
            if len(rows) >= chunk:
                wheres_q.append(wheres)
                yield rows
                wheres, rows = [], []
        if rows:
            wheres_q.append(wheres)
            yield rows

    writer = SampleWriter(path, full_labels=mode == "processed")
    bar = _Progress(total, "tokenizing")
    state: dict[str, Any] = {"carry": np.zeros(0, np.int32), "blocks": 0, "row": 0, "no_loss": 0, "examples": []}

    def keep(ids, labels, lengths, loss, rows, where_of) -> None:
        no_loss = loss == 0
        if no_loss.any():
            state["no_loss"] += int(no_loss.sum())
            for i in np.flatnonzero(no_loss)[:max(0, MAX_ERRORS_SHOWN - len(state["examples"]))]:
                state["examples"].append((int(rows[i]), f"{where_of(int(i))}: no trainable token"))
            kept = ~no_loss
            ids, labels = ids[np.repeat(kept, lengths)], labels[np.repeat(kept, lengths)]
            lengths, loss, rows = lengths[kept], loss[kept], rows[kept]
        writer.add(ids, labels, lengths, loss, rows)

    def emit_blocks(ids: np.ndarray, final: bool) -> None:
        size = cfg.block_size
        buf = np.concatenate([state["carry"], ids])
        n_full = len(buf) // size
        cut = len(buf) if final else n_full * size
        lengths = np.full(n_full, size, np.int64)
        if final and cut > n_full * size:
            lengths = np.append(lengths, cut - n_full * size)
        first = state["blocks"]
        keep(buf[:cut], np.ones(cut, np.uint8), lengths, np.maximum(lengths - 1, 0),
             np.arange(first, first + len(lengths), dtype=np.int64), lambda i: f"block {first + i}")
        state["blocks"] += len(lengths)
        state["carry"] = buf[cut:]

    try:
        for result in tokenize_chunks(chunks(), tokenizer, mode=mode, unmask_messages=cfg.unmask_messages,
                                      workers=workers):
            wheres = wheres_q.popleft()
            if result[0] == "error":
                _, idx, message, fix = result
                raise HoneError(message, where=wheres[idx], fix=fix)
            _, lengths_b, ids_b, labels_b, loss_b = result
            lengths = np.frombuffer(lengths_b, np.int32).astype(np.int64)
            ids = np.frombuffer(ids_b, np.int32)
            labels = np.frombuffer(labels_b, np.int32 if mode == "processed" else np.uint8)
            if mode == "pretraining":
                emit_blocks(ids, final=False)
            else:
                rows = np.arange(state["row"], state["row"] + len(lengths), dtype=np.int64)
                keep(ids, labels, lengths, np.frombuffer(loss_b, np.int32), rows, wheres.__getitem__)
            state["row"] += len(lengths)
            bar.update(len(lengths))
        if mode == "pretraining":
            emit_blocks(np.zeros(0, np.int32), final=True)
        elapsed = bar.close()
        rate = round(total / elapsed, 1) if elapsed > 0 else None
        writer.commit({"key": key, "mode": mode, "rows": total, "dropped_no_loss_tokens": state["no_loss"],
                       "no_loss_examples": state["examples"], "rows_per_s": rate, "prepare_s": round(elapsed, 3)})
    except BaseException:
        bar.close()
        writer.discard()
        raise
    log.info("token samples: %s rows tokenized in %.1fs (%s rows/s), %s samples written to %s", f"{total:,}",
             elapsed, f"{rate or 0:,.0f}", f"{writer.samples:,}", path)
    return path


def _handoff_ident(cfg: DataConfig, tokenizer, seed: int, validation_data_path: str | None) -> str:
    launch = [os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")]
    ident = [cfg.model_dump_json(), seed, validation_data_path, tokenizer_fingerprint(tokenizer), launch]
    return hashlib.sha256(json.dumps(ident, default=str).encode("utf-8")).hexdigest()[:32]


def _local_rank() -> tuple[int, int]:
    try:
        return int(os.environ.get("LOCAL_RANK", "0") or 0), int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    except ValueError:
        return 0, 1


def _once_per_node(build, ident: str, *, timeout_s: float | None = None, poll_s: float = 0.2) -> dict[str, Any]:
    """``build()`` in the local rank 0 of each node, its (JSON) result read by the node's other ranks.

    Outside torchrun (``LOCAL_WORLD_SIZE`` unset or 1) it just runs ``build``. Rank 0 writes the result, or its
    error, to ``<home>/token-samples/.handoff/<ident>.json``; the other ranks poll for that file (written after
    they started waiting, so a file from an earlier launch is not taken) and return the result or raise rank 0's
    error. They give up after ``timeout_s`` (``$HONE_DATA_WAIT_S``, default 6 hours).
    """
    local_rank, local_world = _local_rank()
    if local_world <= 1:
        return build()
    handoff = hone_home() / TOKEN_SAMPLES_CACHE / ".handoff" / f"{ident}.json"
    handoff.parent.mkdir(parents=True, exist_ok=True)
    if local_rank == 0:
        handoff.unlink(missing_ok=True)
        try:
            result = build()
        except BaseException as err:
            if isinstance(err, HoneError):
                failure = {"message": err.what, "where": err.where, "fix": err.fix}
            else:
                failure = {"message": f"{type(err).__name__}: {err}", "where": "local rank 0's data preparation",
                           "fix": "read local rank 0's log"}
            atomic_write_text(handoff, json.dumps({"error": failure}) + "\n")
            raise
        atomic_write_text(handoff, json.dumps({"result": result}) + "\n")
        return result
    timeout_s = timeout_s if timeout_s is not None else float(os.environ.get("HONE_DATA_WAIT_S", 6 * 3600))
    started = time.time() - STALE_HANDOFF_S
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done = json.loads(handoff.read_text(encoding="utf-8")) if handoff.stat().st_mtime >= started else None
        except (OSError, ValueError):
            done = None
        if done is not None:
            if "error" in done:
                e = done["error"]
                raise HoneError(f"local rank 0 failed to prepare the data: {e['message']}", where=e.get("where"),
                                fix=e.get("fix"))
            return done["result"]
        time.sleep(poll_s)
    raise HoneError(f"local rank {local_rank} waited {timeout_s:.0f}s for local rank 0 to prepare the data "
                    f"({handoff} never appeared)", where="data preparation under torchrun",
                    fix="check local rank 0's log; raise $HONE_DATA_WAIT_S for a very large dataset")


def tokenize_samples(train: list[tuple[str, Any]], cfg: DataConfig, tokenizer, report: DatasetReport, *,
                     chat: bool, num_workers: int | None = None) -> list[Tokenized]:
    """Tokenize ``(where, canonical row or its JSON line)`` pairs; drop samples longer than the limit or with no
    trainable token; fill ``report``'s sample facts. Raises :class:`HoneError` when every sample is dropped."""
    if report.format == "processed":
        mode = "processed"
    elif cfg.is_pretraining:
        mode = "pretraining"
    else:
        mode = "messages"
        if chat:
            check_chat_tokenizer(tokenizer)
    wheres = [w for w, _ in train]
    rows = [r for _, r in train]
    workers = num_workers or cfg.data_num_workers or (resolve_workers(None) if len(rows) >= PARALLEL_MIN_ROWS
                                                      else 1)
    tokenized = list(progress(tokenize_rows(rows, tokenizer, unmask_messages=cfg.unmask_messages, workers=workers),
                              desc="tokenizing", total=len(rows)))
    del rows
    if mode == "pretraining":
        stream = [t for tok in tokenized for t in tok.input_ids]
        size = cfg.block_size
        tokenized = [Tokenized(stream[i:i + size], stream[i:i + size]) for i in range(0, len(stream), size)]
        wheres = [f"block {i // size}" for i in range(0, len(stream), size)]

    limit = cfg.block_size if cfg.is_pretraining else cfg.max_seq_len
    report.mode, report.dropped_examples = mode, []
    report.samples = report.dropped_too_long = report.dropped_no_loss_tokens = 0
    report.tokens = report.loss_tokens = report.max_len = 0
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
            where=report.source,
            fix="raise max_seq_len, check that conversations have assistant turns, or set unmask_messages=True",
        )
    return samples


def _write_jsonl(path: Path, samples: Iterable[Tokenized]) -> None:
    """One ``{"input_ids", "labels"}`` line per sample, streaming, to a temporary name renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps({"input_ids": s.input_ids, "labels": s.labels}, separators=(",", ":")) + "\n")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_processed(samples: Sequence[Tokenized], report: DatasetReport, output_dir: str | Path, *,
                    eval_rows: list[str] | None = None, validation: Sequence[Tokenized] | None = None) -> Path:
    """Write ``data.jsonl`` (input_ids, labels: the use_processed_dataset format), ``report.json``, with
    eval rows (canonical JSON lines) ``eval.jsonl``, and with held-out samples ``validation.jsonl``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / PROCESSED_SAMPLES_FILE, samples)
    if validation:
        _write_jsonl(out / PROCESSED_VALIDATION_FILE, validation)
    else:
        (out / PROCESSED_VALIDATION_FILE).unlink(missing_ok=True)  # from an earlier run with a split
    if eval_rows:
        atomic_write_text(out / PROCESSED_EVAL_FILE, "".join(eval_rows))
    atomic_write_text(out / PROCESSED_REPORT_FILE, json.dumps(report.to_json(), indent=2) + "\n")
    return out



def _touch(path: Path) -> None:
    try:
        os.utime(path / META_FILE)  # the cache's "last used" (prune_cache)
    except OSError:
        pass


def prune_cache(cache: Path, *, keep: Path | None = None, limit_gb: float | None = None) -> list[Path]:
    """Remove the least recently used token-sample directories of ``cache`` until it holds at most
    ``limit_gb`` (``$HONE_SAMPLES_CACHE_GB``, default 20); ``keep`` and entries used within the last hour stay.
    Returns what was removed."""
    if limit_gb is None:
        try:
            limit_gb = float(os.environ.get(CACHE_LIMIT_ENV) or DEFAULT_CACHE_LIMIT_GB)
        except ValueError:
            raise HoneError(f"{CACHE_LIMIT_ENV}={os.environ.get(CACHE_LIMIT_ENV)!r} is not a number of GB",
                            where=CACHE_LIMIT_ENV, fix="set it to e.g. 20, or unset it") from None
    entries = []
    for d in cache.iterdir() if cache.is_dir() else ():
        meta = d / META_FILE
        if d.name.startswith(".") or not meta.is_file():
            continue
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        entries.append((meta.stat().st_mtime, size, d))
    total = sum(size for _, size, _ in entries)
    removed: list[Path] = []
    now = time.time()
    for used, size, d in sorted(entries, key=lambda e: e[0]):
        if total <= limit_gb * 1024 ** 3:
            break
        if (keep is not None and d.resolve() == keep.resolve()) or now - used < CACHE_MIN_IDLE_S:
            continue
        shutil.rmtree(d, ignore_errors=True)
        total -= size
        removed.append(d)
        log.info("token samples: removed %s from the cache (least recently used; %s=%s GB)", d, CACHE_LIMIT_ENV,
                 limit_gb)
    return removed


__all__ = ["PreparedData", "hold_out", "prepare_data", "token_samples", "tokenize_samples", "write_processed",
           "write_samples", "IGNORE"]
