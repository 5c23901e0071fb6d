"""Token samples on disk: a columnar, memory-mapped form written once by preparation and read by training.

A samples directory holds flat numpy arrays (``.npy``, opened with ``mmap_mode="r"``):

- ``input_ids.npy``  int32, every kept sample's token ids, one after the other;
- ``mask.npy``       uint8, 1 where the token's label is the token itself, 0 where it is IGNORE (-100): the
  labels of chat and pretraining samples are always one or the other, so a byte per token reconstructs them
  exactly; or, for processed rows (whose labels may be any id), ``labels.npy`` int32;
- ``offsets.npy``    int64, ``n + 1`` offsets into the flat arrays (sample i is ``[offsets[i], offsets[i+1])``);
- ``loss_tokens.npy`` int32, each sample's loss-counted targets (:attr:`Tokenized.num_loss_tokens`);
- ``rows.npy``       int64, the train row (0-based; the block for pretraining) each sample was made from;
- ``meta.json``      written last (its presence marks a complete set): counts, the label form, the cache key and
  the :class:`~hone.data.report.DatasetReport` of the samples.

:class:`SampleWriter` appends samples streaming (bounded memory) into a staging directory renamed into place on
commit. :class:`TokenSamples` is a read-only ``Sequence[Tokenized]`` over such a directory (or a selection of
its samples): ``samples[i]`` builds one :class:`Tokenized` from memory-mapped slices, ``.lengths`` is a numpy
array, so memory does not grow with the number of samples.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hone.data.tokenize import IGNORE, Tokenized
from hone.errors import HoneError

FORMAT_VERSION = 1
META_FILE = "meta.json"
IDS_FILE, MASK_FILE, LABELS_FILE = "input_ids.npy", "mask.npy", "labels.npy"
OFFSETS_FILE, LOSS_FILE, ROWS_FILE = "offsets.npy", "loss_tokens.npy", "rows.npy"
_HEADER_LEN = 128  # a fixed .npy header, rewritten with the final shape on commit


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    d = "{'descr': %r, 'fortran_order': False, 'shape': (%d,), }" % (np.dtype(dtype).str, n)
    head = b"\x93NUMPY\x01\x00"
    body = d.encode("latin1")
    pad = _HEADER_LEN - len(head) - 2 - len(body) - 1
    return head + (_HEADER_LEN - len(head) - 2).to_bytes(2, "little") + body + b" " * pad + b"\n"


class _Column:
    """One flat array written as .npy in appends."""

    def __init__(self, path: Path, dtype: Any):
        self.path, self.dtype, self.n = path, np.dtype(dtype), 0
        self.fh = open(path, "wb")
        self.fh.write(_npy_header(self.dtype, 0))

    def append(self, values: np.ndarray) -> None:
        a = np.ascontiguousarray(values, dtype=self.dtype)
        self.fh.write(a.tobytes())  # noqa: the data, not a text
        self.n += a.size

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.seek(0)
            self.fh.write(_npy_header(self.dtype, self.n))
            self.fh.close()


class SampleWriter:
    """Append samples (flat arrays per batch) into a staging directory; :meth:`commit` renames it to ``path``."""

    def __init__(self, path: str | Path, *, full_labels: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        self.full_labels = full_labels
        self.ids = _Column(self.tmp / IDS_FILE, np.int32)
        self.labels = _Column(self.tmp / (LABELS_FILE if full_labels else MASK_FILE),
                              np.int32 if full_labels else np.uint8)
        self.offsets = _Column(self.tmp / OFFSETS_FILE, np.int64)
        self.loss = _Column(self.tmp / LOSS_FILE, np.int32)
        self.rows = _Column(self.tmp / ROWS_FILE, np.int64)
        self.offsets.append(np.zeros(1, np.int64))
        self.samples = self.tokens = 0

    def add(self, ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray, loss: np.ndarray,
            rows: np.ndarray) -> None:
        """Append ``len(lengths)`` samples: ``ids``/``labels`` their tokens back to back (labels as the mask when
        the writer was made without ``full_labels``), ``loss`` their loss-counted targets."""
        if not len(lengths):
            return
        self.ids.append(ids)
        self.labels.append(labels)
        self.offsets.append(self.tokens + np.cumsum(lengths, dtype=np.int64))
        self.loss.append(loss)
        self.rows.append(rows)
        self.samples += len(lengths)
        self.tokens += int(ids.size)

    def commit(self, meta: dict[str, Any]) -> Path:
        for col in (self.ids, self.labels, self.offsets, self.loss, self.rows):
            col.close()
        meta = {"format_version": FORMAT_VERSION, "samples": self.samples, "tokens": self.tokens,
                "labels": "full" if self.full_labels else "mask", **meta}
        (self.tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.tmp, 0o777 & ~mask)  # mkdtemp makes it 0700
        if read_meta(self.path) is not None and read_meta(self.path).get("key") == meta.get("key"):
            shutil.rmtree(self.tmp, ignore_errors=True)  # another process made the same samples meanwhile
            return self.path
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        for col in (self.ids, self.labels, self.offsets, self.loss, self.rows):
            if not col.fh.closed:
                col.fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``meta.json`` of a complete samples directory of this format version, else None."""
    f = Path(path) / META_FILE
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format_version") == FORMAT_VERSION else None


class TokenSamples(Sequence):
    """A read-only ``Sequence[Tokenized]`` over a samples directory (or a selection of its samples, in order)."""

    def __init__(self, path: str | Path, index: np.ndarray | None = None):
        self.path = Path(path)
        meta = read_meta(self.path)
        if meta is None:
            raise HoneError(f"{self.path} is not a complete token-samples directory (no readable {META_FILE})",
                            where=str(self.path), fix="prepare the data again (remove the directory)")
        self.meta = meta
        self._ids = np.load(self.path / IDS_FILE, mmap_mode="r")
        self._full = meta["labels"] == "full"
        self._labels = np.load(self.path / (LABELS_FILE if self._full else MASK_FILE), mmap_mode="r")
        self._offsets = np.load(self.path / OFFSETS_FILE, mmap_mode="r")
        self._loss = np.load(self.path / LOSS_FILE, mmap_mode="r")
        self._rows = np.load(self.path / ROWS_FILE, mmap_mode="r")
        self._index = None if index is None else np.asarray(index, dtype=np.int64)

    def __reduce__(self):
        return (TokenSamples, (str(self.path), self._index))

    def __len__(self) -> int:
        return len(self._offsets) - 1 if self._index is None else len(self._index)

    def _row(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {i} out of range ({n} samples)")
        return i if self._index is None else int(self._index[i])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        r = self._row(int(i))
        a, b = int(self._offsets[r]), int(self._offsets[r + 1])
        ids = np.asarray(self._ids[a:b])
        if self._full:
            labels = np.asarray(self._labels[a:b])
        else:
            labels = np.where(np.asarray(self._labels[a:b]) != 0, ids, IGNORE)
        return Tokenized(ids.tolist(), labels.tolist())

    def __iter__(self) -> Iterator[Tokenized]:
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> np.ndarray:
        """Each sample's token count (int64)."""
        lengths = np.diff(self._offsets)
        return lengths if self._index is None else lengths[self._index]

    @property
    def loss_tokens(self) -> np.ndarray:
        """Each sample's loss-counted targets (:attr:`Tokenized.num_loss_tokens`)."""
        loss = np.asarray(self._loss)
        return loss if self._index is None else loss[self._index]

    @property
    def rows(self) -> np.ndarray:
        """The train row (0-based; the block for pretraining) each sample was made from."""
        rows = np.asarray(self._rows)
        return rows if self._index is None else rows[self._index]

    def select(self, indices: Sequence[int] | np.ndarray) -> "TokenSamples":
        """The samples at ``indices`` (positions in this sequence), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return TokenSamples(self.path, idx if self._index is None else self._index[idx])

    def __repr__(self) -> str:
        return f"TokenSamples({str(self.path)!r}, {len(self)} samples)"


__all__ = ["FORMAT_VERSION", "SampleWriter", "TokenSamples", "read_meta"]
