"""Tokenize canonical rows on every core: ordered results, a bounded number of chunks in flight.

Workers are forked, so they share the parent's tokenizer without pickling it; each chunk is a list of
canonical rows (dicts, or their JSON text) and comes back as :class:`Tokenized` samples or just lengths.

Samples travel back as packed int32 bytes and become lists whose int objects are shared (one per token id,
from a table): a token then costs 8 bytes in each list instead of 36, which is what keeps a large tokenized
dataset in memory affordable.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from array import array
from collections import deque
from typing import Any, Iterable, Iterator

from hone.data.tokenize import IGNORE, Tokenized, special_token_ids, tokenize_conversation

CHUNK = 256
_STATE: dict[str, Any] = {}


def available_cores() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # under torchrun, share the cores between ranks
    return max(1, n // max(1, local))


def resolve_workers(requested: int | None) -> int:
    return max(1, requested) if requested else available_cores()


_TABLE: list[int] = []


def _shared_ints(values: Any) -> list[int]:
    """``list(values)`` with shared int objects; ``values`` holds token ids (>= 0) and IGNORE only."""
    global _TABLE
    if not len(values):
        return []
    need = max(values) + 101
    if len(_TABLE) < need:
        n = max(need, 2 * len(_TABLE), 4096)
        _TABLE = list(range(n))
        _TABLE[n + IGNORE] = IGNORE  # so that _TABLE[-100] is -100
    return list(map(_TABLE.__getitem__, values))


def _tokenize_row(row: dict[str, Any] | str) -> tuple[Tokenized, bool]:
    """(sample, whether it came from the tokenizer: ids >= 0, labels ids or IGNORE)."""
    if isinstance(row, str):
        row = json.loads(row)
    if "input_ids" in row:
        return Tokenized(row["input_ids"], row["labels"]), False
    unmask = _STATE["unmask"] or row.get("unmask") is True  # the row's own "unmask" (instructlab-training)
    return tokenize_conversation(_STATE["tokenizer"], row["messages"], unmask_messages=unmask,
                                 special_ids=_STATE["special"]), True


def _lengths_batched(chunk: list[Any]) -> list[Any] | None:
    """Token counts of a chunk of chat rows through the batched path (None when the chunk has other rows); a row
    that cannot be tokenized comes back as ``(ROW_ERROR, index, message, fix)``."""
    from hone.data.tokenize import RowError

    rows = [json.loads(r) if isinstance(r, str) else r for r in chunk]
    if not all(isinstance(r.get("messages"), list) for r in rows):
        return None
    try:
        toks = _STATE["batch"].tokenize([r["messages"] for r in rows],
                                        [_STATE["unmask"] or r.get("unmask") is True for r in rows])
    except RowError as err:
        return [(ROW_ERROR, err.index, err.message, err.fix)]
    return [len(t.input_ids) for t in toks]


ROW_ERROR = "__hone_row_error__"


def _work(chunk: list[Any]) -> list[Any]:
    if _STATE["lengths_only"] and _STATE.get("batch") is not None:
        done = _lengths_batched(chunk)
        if done is not None:
            return done
    out: list[Any] = []
    for row in chunk:
        tok, ours = _tokenize_row(row)
        if _STATE["lengths_only"]:
            out.append(len(tok.input_ids))
        elif ours:
            out.append((array("i", tok.input_ids).tobytes(), array("i", tok.labels).tobytes()))
        else:
            out.append(tok)
    return out


def _unpack(item: Any) -> Any:
    if isinstance(item, tuple):
        ids, labels = array("i"), array("i")
        ids.frombytes(item[0])
        labels.frombytes(item[1])
        return Tokenized(_shared_ints(ids), _shared_ints(labels))
    return item


def tokenize_rows(rows: Iterable[dict[str, Any] | str], tokenizer: Any, *, unmask_messages: bool = False,
                  workers: int | None = None, lengths_only: bool = False, chunk: int = CHUNK) -> Iterator[Any]:
    """Yield, in order, the :class:`Tokenized` form (or the token count) of every canonical row."""
    for item in _tokenize_rows(rows, tokenizer, unmask_messages=unmask_messages, workers=workers,
                               lengths_only=lengths_only, chunk=chunk):
        yield item


def _check_row(item: Any, seen: int) -> Any:
    if isinstance(item, tuple) and len(item) == 4 and item[0] == ROW_ERROR:
        from hone.errors import HoneError

        raise HoneError(item[2], where=f"valid row {seen + item[1] + 1} of the data", fix=item[3])
    return item


def _tokenize_rows(rows: Iterable[dict[str, Any] | str], tokenizer: Any, *, unmask_messages: bool,
                   workers: int | None, lengths_only: bool, chunk: int) -> Iterator[Any]:
    from hone.data.tokenize import BatchTokenizer

    n_workers = resolve_workers(workers)
    _STATE.update(tokenizer=tokenizer, unmask=unmask_messages, special=special_token_ids(tokenizer)
                  if tokenizer is not None else frozenset(), lengths_only=lengths_only,
                  batch=BatchTokenizer(tokenizer) if lengths_only and getattr(tokenizer, "is_fast", False) else None)
    it = iter(rows)
    first = _take(it, chunk)
    second = _take(it, chunk) if first else []
    if n_workers == 1 or not second or "fork" not in mp.get_all_start_methods():
        seen = 0
        for part in (first, second):
            out = _work(part)
            yield from (_unpack(_check_row(x, seen)) for x in out)
            seen += len(part)
        for part in iter(lambda: _take(it, chunk), []):
            out = _work(part)
            yield from (_unpack(_check_row(x, seen)) for x in out)
            seen += len(part)
        return
    pool = mp.get_context("fork").Pool(n_workers)
    try:
        pending: deque = deque()
        seen = 0
        for part in (first, second):
            pending.append((len(part), pool.apply_async(_work, (part,))))
        for part in iter(lambda: _take(it, chunk), []):
            pending.append((len(part), pool.apply_async(_work, (part,))))
            while len(pending) > 2 * n_workers:
                n, res = pending.popleft()
                yield from (_unpack(_check_row(x, seen)) for x in res.get())
                seen += n
        while pending:
            n, res = pending.popleft()
            yield from (_unpack(_check_row(x, seen)) for x in res.get())
            seen += n
    finally:
        pool.terminate()
        pool.join()


def _take(it: Iterator[Any], n: int) -> list[Any]:
    out = []
    for x in it:
        out.append(x)
        if len(out) >= n:
            break
    return out


# -- token samples as flat arrays, for preparation at scale (hone.data.prepare) ----------------------------------

def _token_chunk(lines: list[Any]) -> tuple:
    """A chunk of canonical rows (JSON lines or dicts) -> ``("ok", lengths, ids, labels, loss)`` as bytes of flat
    arrays (int32; labels as a uint8 mask unless the mode is "processed", then int32), or
    ``("error", index, message, fix)`` for the first row that cannot be tokenized."""
    import numpy as np

    from hone.data.tokenize import RowError

    mode, vocab = _STATE["mode"], _STATE["vocab"]
    rows = [json.loads(x) if isinstance(x, str) else x for x in lines]
    if mode == "processed":
        lengths = np.empty(len(rows), np.int32)
        ids_parts, lab_parts = [], []
        for k, row in enumerate(rows):
            bad = _processed_problem(row, vocab)
            if bad:
                return ("error", k, *bad)
            ids_parts.append(np.asarray(row["input_ids"], np.int32))
            lab_parts.append(np.asarray(row["labels"], np.int32))
            lengths[k] = len(row["input_ids"])
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        labels = np.concatenate(lab_parts) if lab_parts else np.zeros(0, np.int32)
        has_loss = labels != IGNORE
    else:
        convs = [row["messages"] for row in rows]
        unmask = [_STATE["unmask"] or row.get("unmask") is True for row in rows]
        try:
            toks = _STATE["batch"].tokenize(convs, unmask)
        except RowError as err:
            return ("error", err.index, err.message, err.fix)
        lengths = np.fromiter((len(t.input_ids) for t in toks), np.int32, len(toks))
        ids = np.concatenate([np.asarray(t.input_ids, np.int32) for t in toks]) if toks else np.zeros(0, np.int32)
        if mode == "pretraining":
            has_loss = np.ones(ids.size, bool)
        else:
            has_loss = (np.concatenate([np.asarray(t.labels, np.int32) for t in toks]) != IGNORE if toks
                        else np.zeros(0, bool))
        labels = has_loss.astype(np.uint8)
    # loss-counted targets per sample: labels[1:] of each sample
    first = np.zeros(ids.size, bool)
    starts = np.cumsum(lengths, dtype=np.int64) - lengths
    first[starts[lengths > 0]] = True
    cum = np.concatenate([np.zeros(1, np.int64), np.cumsum(has_loss & ~first, dtype=np.int64)])
    loss = (cum[starts + lengths] - cum[starts]).astype(np.int32)
    return ("ok", lengths.tobytes(), ids.tobytes(), labels.tobytes(), loss.tobytes())


def _processed_problem(row: dict[str, Any], vocab: int | None) -> tuple[str, str] | None:
    """What is wrong with a processed row's ``input_ids`` / ``labels`` for a vocabulary of ``vocab`` ids."""
    ids, labels = row.get("input_ids"), row.get("labels")
    fix_ids = ("processed rows must be tokenized with the tokenizer you train with: re-tokenize them with this "
               "model's tokenizer, or train the model they were made for")
    if not isinstance(ids, list) or not isinstance(labels, list) or len(ids) != len(labels):
        return ("input_ids and labels must be lists of the same length",
                "write rows as {\"input_ids\": [...], \"labels\": [...]} with -100 for tokens without loss")
    for pos, x in enumerate(ids):
        if not isinstance(x, int) or isinstance(x, bool) or x < 0 or (vocab is not None and x >= vocab):
            return (f"input_ids[{pos}] = {x!r} is not a token id of the tokenizer (0..{vocab - 1 if vocab else '?'}, "
                    f"its vocabulary has {vocab} tokens)", fix_ids)
    for pos, x in enumerate(labels):
        if not isinstance(x, int) or isinstance(x, bool) or (x != IGNORE and (x < 0 or (vocab is not None
                                                                                        and x >= vocab))):
            return (f"labels[{pos}] = {x!r} is neither {IGNORE} (no loss) nor a token id of the tokenizer "
                    f"(0..{vocab - 1 if vocab else '?'})",
                    f"use {IGNORE} for tokens without loss and the token id (usually the input id) elsewhere; "
                    + fix_ids)
    return None


def _init_token_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker


def tokenize_chunks(chunks: Iterable[list[Any]], tokenizer: Any, *, mode: str, unmask_messages: bool = False,
                    workers: int | None = None) -> Iterator[tuple]:
    """Yield, in order, :func:`_token_chunk`'s result for every chunk of canonical rows: forked workers over the
    chunks, at most a few chunks in flight (the parent streams the results to disk)."""
    from hone.data.tokenize import BatchTokenizer

    n_workers = resolve_workers(workers)
    _STATE.update(mode=mode, unmask=unmask_messages, vocab=len(tokenizer) if tokenizer is not None else None,
                  batch=BatchTokenizer(tokenizer) if mode != "processed" else None)
    it = iter(chunks)
    first = next(it, None)
    second = next(it, None) if first is not None else None
    if n_workers == 1 or second is None or "fork" not in mp.get_all_start_methods():
        for part in (first, second):
            if part is not None:
                yield _token_chunk(part)
        for part in it:
            yield _token_chunk(part)
        return
    pool = mp.get_context("fork").Pool(n_workers, initializer=_init_token_worker)
    try:
        pending: deque = deque([pool.apply_async(_token_chunk, (first,)), pool.apply_async(_token_chunk, (second,))])
        for part in it:
            pending.append(pool.apply_async(_token_chunk, (part,)))
            while len(pending) > 2 * n_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()
