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


class DuplicateKey(ValueError):
    """The same key twice in one JSON object (``json`` would silently keep only the last value)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKey(k)
            seen.add(k)
    return d


#: The JSON decoder of every data row: duplicate keys in an object raise :class:`DuplicateKey`.
DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
_loads = DECODER.decode
_BOM = b"\xef\xbb\xbf"
_DUPLICATE_FIX = "JSON keeps only the last value, so the earlier one would be lost silently; merge or rename them"
TOO_DEEP = ("invalid_json", "invalid JSON: nested too deeply (more levels of arrays/objects than Python's JSON "
                            "reader allows, about 1,000); a data row holds a flat list of messages")


def duplicate_key_error(err: DuplicateKey) -> tuple[str, str]:
    return "duplicate_key", f"the key {err.key!r} appears twice in one object ({_DUPLICATE_FIX})"


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path of the first string in ``value`` holding a lone UTF-16 surrogate (``"\\ud800"`` escapes that
    are not half of a pair), which no UTF-8 file or tokenizer can hold; None when there is none."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"{path or 'the value'} (character {err.start + 1}: \\u{ord(value[err.start]):04x})"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            name = k.encode("utf-8", "backslashreplace").decode("utf-8")  # a key may hold the surrogate itself
            sub = f"{path}.{name}" if path else name
            if name != k:
                return f"the key {sub!r}"
            found = lone_surrogate(v, sub)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = lone_surrogate(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _surrogate_error(found: str) -> tuple[str, str]:
    return "invalid_text", (f"{found} holds a lone UTF-16 surrogate escape (a \\ud800-\\udfff escape that is not "
                            "half of a pair): not text any UTF-8 file or tokenizer can hold; fix the export "
                            "(the string was cut inside an emoji or written by a broken encoder)")


def _jsonl(stream: BinaryIO, display: str) -> Iterator[Record]:
    first = True
    for n, raw in enumerate(stream, 1):
        line = raw.strip()
        if not line:
            continue
        if first:
            first = False
            if line[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(line) > 1 and b"\x00" in line[:2]):
                raise HoneError("the file is UTF-16 encoded (a byte-order mark or NUL bytes between the "
                                "characters), not UTF-8", where=f"{display}:{n}",
                                fix="save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 in.jsonl > out.jsonl)")
            line = line.removeprefix(_BOM)
            if line[:1] == b"[":
                _refuse_array(line, display, n)
        elif line.startswith(_BOM):
            yield Record(f"{display}:{n}", None, (
                "invalid_json", "the line starts with a UTF-8 byte-order mark (BOM): files concatenated from "
                "several exports (cat a.jsonl b.jsonl)? remove the BOM (only the very start of a file may have "
                "one), e.g. sed -i '2,$s/^\\xEF\\xBB\\xBF//' FILE"))
            continue
        where = f"{display}:{n}"
        try:
            row = _loads(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            yield Record(where, None, ("invalid_utf8", f"the line is not valid UTF-8 (byte 0x{line[err.start]:02x} "
                                                       f"at column {err.start + 1}); save the file as UTF-8"))
        except json.JSONDecodeError as err:
            yield Record(where, None, ("invalid_json", _line_error(line, err)))
        except DuplicateKey as err:
            yield Record(where, None, duplicate_key_error(err))
        except RecursionError:
            yield Record(where, None, TOO_DEEP)
        else:
            if b"\\ud" in line or b"\\uD" in line:
                try:
                    found = lone_surrogate(row)
                except RecursionError:
                    yield Record(where, None, TOO_DEEP)
                    continue
                if found:
                    yield Record(where, None, _surrogate_error(found))
                    continue
            yield Record(where, row)


def _line_error(line: bytes, err: json.JSONDecodeError) -> str:
    """The message for a JSON Lines line that does not parse, with the likely cause when there is a clear one."""
    body = line.strip(b" \t\r\n")
    if b"\r" in body and err.msg.startswith(("Extra data", "Expecting")):
        return ("the file uses CR-only line endings (old Mac style: lines end with \\r, no \\n), so the rows "
                f"run together on one line ({_json_error(err)}); convert the line endings to \\n "
                "(e.g. tr '\\r' '\\n' < in.jsonl > out.jsonl)")
    if b"\x00" in line:
        return f"the line holds NUL bytes (a binary or UTF-16 file?) ({_json_error(err)}); save the file as UTF-8 text"
    if body.endswith(b",") and err.msg.startswith("Extra data"):
        return f"{_json_error(err)}: a trailing comma after the object? JSON Lines has one object per line, no commas"
    return _json_error(err)


def _refuse_array(line: bytes, display: str, n: int) -> None:
    """A .jsonl file whose first line opens a JSON array is a JSON file, not JSON Lines."""
    try:
        value = json.loads(line)
    except RecursionError:
        raise HoneError(TOO_DEEP[1], where=f"{display}:{n}", fix="write one flat JSON object per line") from None
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
            except DuplicateKey as err:
                kind, msg = duplicate_key_error(err)
                raise HoneError(msg, where=f"{self.display}:{self.line()}",
                                fix="each object may name a key once") from None
            except RecursionError:
                raise HoneError(TOO_DEEP[1], where=f"{self.display}:{self.line()}",
                                fix="a .json file holds one array of flat row objects") from None
            except json.JSONDecodeError as err:
                if not self.eof:
                    self.more()  # maybe the value goes on in the next chunk; retry on the shifted buffer
                    continue
                if self.buf[err.pos:err.pos + 1] == "\ufeff":
                    raise HoneError("a UTF-8 byte-order mark (BOM) inside the file: files concatenated from several "
                                    "exports?", where=f"{self.display}:{self.line(err.pos)}",
                                    fix="remove the BOM (only the very start of a file may have one)") from None
                truncated = err.pos >= len(self.buf.rstrip()) or err.msg.startswith("Unterminated string")
                raise HoneError(f"invalid JSON: {err.msg}" + ("; the file ends before the value is complete "
                                                             "(truncated file?)" if truncated else ""),
                                where=f"{self.display}:{self.line(err.pos)}",
                                fix="fix the JSON syntax (a .json file holds one array of objects)") from None
            if end == len(self.buf) and not isinstance(value, (dict, list)) and self.more():
                continue  # a number cut at the end of the buffer
            if "\\ud" in self.buf[self.pos:end] or "\\uD" in self.buf[self.pos:end]:
                found = lone_surrogate(value)
                if found:
                    raise HoneError(_surrogate_error(found)[1], where=f"{self.display}:{self.line()}",
                                    fix="fix the text at that place in the file")
            self.pos = end
            return value

    def fail(self, what: str) -> HoneError:
        return HoneError(f"invalid JSON: {what}", where=f"{self.display}:{self.line()}",
                         fix="fix the JSON syntax (a .json file holds one array of objects)")


def _json(stream: BinaryIO, display: str) -> Iterator[Record]:
    text, parser = _JsonText(stream, display), DECODER
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
        _unique_columns(columns, f"{display}:1", "CSV header")
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
            problem: tuple[str, str] | None = None
            for key in _JSON_CELLS:
                v = row.get(key)
                if isinstance(v, str) and v.lstrip().startswith("["):
                    try:
                        row[key] = _loads(v)
                    except DuplicateKey as err:
                        kind, msg = duplicate_key_error(err)
                        problem = kind, f"column {key!r}: {msg}"
                    except RecursionError:
                        problem = TOO_DEEP[0], f"column {key!r}: {TOO_DEEP[1]}"
                    except json.JSONDecodeError:
                        pass  # reported by validation as a string where a list is expected
                    else:
                        if ("\\ud" in v or "\\uD" in v) and (found := lone_surrogate(row[key], key)):
                            problem = _surrogate_error(found)
            yield Record(where, None, problem) if problem else Record(where, row)
    except UnicodeDecodeError:
        raise HoneError("the file is not valid UTF-8", where=f"{display}:{line + 1}",
                        fix="save the file as UTF-8") from None
    except csv.Error as err:
        raise HoneError(f"unreadable CSV: {err}", where=f"{display}:{line + 1}", fix="fix the CSV syntax") from None
    finally:
        text.detach()  # leave the underlying stream open (its owner closes it)


def _unique_columns(columns: tuple[str, ...], where: str, what: str) -> None:
    seen: set[str] = set()
    for c in columns:
        if c in seen:
            raise HoneError(f"the {what} names the column {c!r} twice (one of them would be lost silently)",
                            where=where, fix="rename or drop one of the two columns")
        seen.add(c)


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
    _unique_columns(tuple(pf.schema_arrow.names), display, "Parquet schema")
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
