"""Read rows from data files, streaming: JSONL, JSON (arrays, read incrementally), CSV/TSV, Parquet and
Hugging Face datasets, optionally gzip/bz2/xz compressed.

Every row comes with where it is (``file:line`` for line-based files, ``file[index]`` for arrays, Parquet and
datasets). A row that cannot be read (a bad JSON line, bytes that are not UTF-8) is yielded with an ``error``
so validation can count it and go on; a file that cannot be read at all raises :class:`HoneError`.
"""
from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from hone.errors import HoneError


@dataclass(frozen=True)
class Record:
    """One row and where it came from; ``error`` = (kind, message) when the row could not be read."""

    where: str
    row: Any
    error: tuple[str, str] | None = None


@dataclass(frozen=True)
class Header:
    """The columns of a tabular file (CSV, Parquet, a dataset), seen before its rows."""

    file: str
    columns: tuple[str, ...]
    kind: str


FILE_TYPES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv",
              ".tsv": "tsv"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
_CHUNK = 1 << 20
_JSON_CELLS = ("messages", "conversations", "input_ids", "labels")  # CSV cells that may hold JSON text
csv.field_size_limit(2**31 - 1)  # a long conversation in one cell is fine


def file_type(name: str) -> tuple[str | None, str | None]:
    """(type, compression) from a file name: ``("jsonl", "gzip")`` for ``x.jsonl.gz``; type None if unknown."""
    name = name.lower().rsplit("/", 1)[-1]
    compression = None
    for ext, comp in COMPRESSIONS.items():
        if name.endswith(ext):
            name, compression = name[: -len(ext)], comp
            break
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    return FILE_TYPES.get(suffix), compression


def is_data_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith((".", "_")) and file_type(base)[0] is not None


def decompress(stream: BinaryIO, compression: str | None) -> BinaryIO:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=stream)  # type: ignore[return-value]
    if compression == "bz2":
        return bz2.BZ2File(stream)  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(stream)  # type: ignore[return-value]
    return stream


def sniff(stream: io.BufferedReader) -> str | None:
    """Guess the type of a file without a known extension from its first bytes."""
    head = stream.peek(4096)[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        return "jsonl"
    return None


def read_stream(stream: BinaryIO, display: str, ftype: str) -> Iterator[Record | Header]:
    """Rows of one sequential (already decompressed) binary stream."""
    if ftype == "jsonl":
        return _jsonl(stream, display)
    if ftype == "json":
        return _json(stream, display)
    if ftype in ("csv", "tsv"):
        return _csv(stream, display, "\t" if ftype == "tsv" else ",")
    if ftype == "parquet":
        return read_parquet(stream, display)
    raise ValueError(ftype)


# -- JSON Lines ----------------------------------------------------------------------------------------------

def _json_error(err: json.JSONDecodeError) -> str:
    doc = err.doc if isinstance(err.doc, str) else ""
    if err.msg.startswith("Extra data"):
        return f"invalid JSON: more than one JSON value on the line (column {err.colno})"
    truncated = err.pos >= len(doc.rstrip()) or err.msg.startswith("Unterminated string")
    return f"invalid JSON: {err.msg} (column {err.colno})" + (
        "; the line ends before the value is complete (truncated?)" if truncated else "")


_loads = json.JSONDecoder().decode


def _jsonl(stream: BinaryIO, display: str) -> Iterator[Record]:
    first = True
    for n, raw in enumerate(stream, 1):
        line = raw.strip()
        if not line:
            continue
        if first:
            first = False
            line = line.removeprefix(b"\xef\xbb\xbf")
            if line[:1] == b"[":
                _refuse_array(line, display, n)
        where = f"{display}:{n}"
        try:
            row = _loads(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            yield Record(where, None, ("invalid_utf8", f"the line is not valid UTF-8 (byte 0x{line[err.start]:02x} "
                                                       f"at column {err.start + 1}); save the file as UTF-8"))
        except json.JSONDecodeError as err:
            yield Record(where, None, ("invalid_json", _json_error(err)))
        else:
            yield Record(where, row)


def _refuse_array(line: bytes, display: str, n: int) -> None:
    """A .jsonl file whose first line opens a JSON array is a JSON file, not JSON Lines."""
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        value = None  # e.g. a pretty-printed array: '[' alone on the line
    if value is None or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        raise HoneError(f"{display} holds a JSON array, but a JSON Lines file holds one JSON object per line",
                        where=f"{display}:{n}",
                        fix="rename the file to .json (JSON arrays are read from .json files) or write one object "
                            "per line")


# -- JSON (arrays read incrementally; a sequence of objects is read too) -------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


class _JsonText:
    """A text buffer over a binary stream for incremental ``raw_decode``; tracks line numbers."""

    def __init__(self, stream: BinaryIO, display: str):
        self.stream, self.display = stream, display
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof, self.started = "", 0, False, False
        self.cur_pos, self.cur_line = 0, 1  # a line-number cursor, so counting stays linear in the file size

    def line(self, pos: int | None = None) -> int:
        pos = self.pos if pos is None else pos
        if pos < self.cur_pos:
            return self.cur_line - self.buf.count("\n", pos, self.cur_pos)
        self.cur_line += self.buf.count("\n", self.cur_pos, pos)
        self.cur_pos = pos
        return self.cur_line

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.stream.read(_CHUNK)
        self.line(self.pos)
        self.buf, self.pos, self.cur_pos = self.buf[self.pos:], 0, 0
        try:
            text = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as err:
            line = self.line(len(self.buf)) + chunk.count(b"\n", 0, err.start)
            raise HoneError(f"the file is not valid UTF-8 (byte 0x{chunk[err.start]:02x})",
                            where=f"{self.display}:{line}", fix="save the file as UTF-8") from None
        if not self.started:
            text, self.started = text.removeprefix("\ufeff"), True
        self.eof = not chunk
        self.buf += text
        return bool(chunk)

    def skip_ws(self) -> bool:
        """Move past whitespace; False at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return True
            if not self.more():
                return False

    def value(self, parser: json.JSONDecoder) -> Any:
        while True:
            try:
                value, end = parser.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if not self.eof:
                    self.more()  # maybe the value goes on in the next chunk; retry on the shifted buffer
                    continue
                truncated = err.pos >= len(self.buf.rstrip()) or err.msg.startswith("Unterminated string")
                raise HoneError(f"invalid JSON: {err.msg}" + ("; the file ends before the value is complete "
                                                             "(truncated file?)" if truncated else ""),
                                where=f"{self.display}:{self.line(err.pos)}",
                                fix="fix the JSON syntax (a .json file holds one array of objects)") from None
            if end == len(self.buf) and not isinstance(value, (dict, list)) and self.more():
                continue  # a number cut at the end of the buffer
            self.pos = end
            return value

    def fail(self, what: str) -> HoneError:
        return HoneError(f"invalid JSON: {what}", where=f"{self.display}:{self.line()}",
                         fix="fix the JSON syntax (a .json file holds one array of objects)")


def _json(stream: BinaryIO, display: str) -> Iterator[Record]:
    text, parser = _JsonText(stream, display), json.JSONDecoder()
    if not text.skip_ws():
        return
    first = text.buf[text.pos]
    if first == "[":
        text.pos += 1
        if not text.skip_ws():
            raise text.fail("the array is not closed (truncated file?)")
        if text.buf[text.pos] == "]":
            text.pos += 1
        else:
            i = 0
            while True:
                yield Record(f"{display}[{i}]", text.value(parser))
                i += 1
                if not text.skip_ws():
                    raise text.fail("the array is not closed (truncated file?)")
                c = text.buf[text.pos]
                text.pos += 1
                if c == "]":
                    break
                if c != ",":
                    raise text.fail(f"expected ',' or ']' after item {i - 1} of the array, found {c!r}")
                if not text.skip_ws():
                    raise text.fail("the array is not closed (truncated file?)")
                if text.buf[text.pos] == "]":
                    raise text.fail(f"trailing comma after item {i - 1} of the array")
        if text.skip_ws():
            raise text.fail("extra data after the array")
    elif first == "{":  # one object, or JSON Lines saved as .json
        while True:
            line = text.line()
            yield Record(f"{display}:{line}", text.value(parser))
            if not text.skip_ws():
                break
    else:
        raise HoneError(f"a .json data file must hold an array of objects (it starts with {first!r})",
                        where=f"{display}:{text.line()}", fix="write [{\"messages\": [...]}, ...] or use JSONL")


# -- CSV / TSV -----------------------------------------------------------------------------------------------

def _csv(stream: BinaryIO, display: str, delimiter: str) -> Iterator[Record | Header]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]
    reader = csv.reader(text, delimiter=delimiter)
    line = 0
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = tuple(h.strip() for h in header)
        yield Header(display, columns, "csv")
        line = reader.line_num
        for fields in reader:
            start, line = line + 1, reader.line_num
            if not fields:
                continue
            where = f"{display}:{start}"
            if len(fields) != len(columns):
                yield Record(where, None, ("bad_csv_row", f"row has {len(fields)} fields but the header has "
                                                          f"{len(columns)} ({', '.join(columns)})"))
                continue
            row: dict[str, Any] = dict(zip(columns, fields))
            for key in _JSON_CELLS:
                v = row.get(key)
                if isinstance(v, str) and v.lstrip().startswith("["):
                    try:
                        row[key] = json.loads(v)
                    except json.JSONDecodeError:
                        pass  # reported by validation as a string where a list is expected
            yield Record(where, row)
    except UnicodeDecodeError:
        raise HoneError("the file is not valid UTF-8", where=f"{display}:{line + 1}",
                        fix="save the file as UTF-8") from None
    except csv.Error as err:
        raise HoneError(f"unreadable CSV: {err}", where=f"{display}:{line + 1}", fix="fix the CSV syntax") from None
    finally:
        text.detach()  # leave the underlying stream open (its owner closes it)


# -- Parquet and datasets ------------------------------------------------------------------------------------

def read_parquet(source: Any, display: str) -> Iterator[Record | Header]:
    """Rows of a Parquet file (a path or a seekable binary file), read in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as err:
        raise HoneError(f"not a readable Parquet file: {err}", where=display,
                        fix="check the file (it may be truncated or not Parquet)") from None
    yield Header(display, tuple(pf.schema_arrow.names), "parquet")
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield Record(f"{display}[{i}]", row)
            i += 1


def read_dataset(ds: Any, display: str) -> Iterator[Record | Header]:
    """Rows of a Hugging Face ``datasets.Dataset`` (memory-mapped Arrow), read in batches."""
    yield Header(display, tuple(ds.column_names), "dataset")
    i = 0
    for batch in ds.iter(batch_size=1024):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield Record(f"{display}[{i}]", dict(zip(keys, values)))
            i += 1
