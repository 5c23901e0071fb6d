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


def _work(chunk: list[Any]) -> list[Any]:
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
    n_workers = resolve_workers(workers)
    _STATE.update(tokenizer=tokenizer, unmask=unmask_messages, special=special_token_ids(tokenizer)
                  if tokenizer is not None else frozenset(), lengths_only=lengths_only)
    it = iter(rows)
    first = _take(it, chunk)
    second = _take(it, chunk) if first else []
    if n_workers == 1 or not second or "fork" not in mp.get_all_start_methods():
        for part in (first, second):
            yield from map(_unpack, _work(part))
        for part in iter(lambda: _take(it, chunk), []):
            yield from map(_unpack, _work(part))
        return
    pool = mp.get_context("fork").Pool(n_workers)
    try:
        pending: deque = deque()
        for part in (first, second):
            pending.append(pool.apply_async(_work, (part,)))
        for part in iter(lambda: _take(it, chunk), []):
            pending.append(pool.apply_async(_work, (part,)))
            while len(pending) > 2 * n_workers:
                yield from map(_unpack, pending.popleft().get())
        while pending:
            yield from map(_unpack, pending.popleft().get())
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
