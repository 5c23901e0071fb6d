"""Read local JSONL/JSON files into (location, row) records, with file:line in every error."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hone.errors import HoneError


@dataclass(frozen=True)
class Record:
    """One row and where it came from (``file:line`` for JSONL, ``file[item]`` for JSON arrays)."""

    where: str
    row: Any


def data_files(path: str | Path) -> list[Path]:
    """The files behind ``path``: the file itself, or every .jsonl/.json file of a directory, sorted."""
    p = Path(str(path).removeprefix("file://"))
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".json") and f.is_file())
        if files:
            return files
        raise HoneError(f"no .jsonl or .json files in directory {p}", where="data_path",
                        fix="point data_path at a JSONL file or a directory of them")
    raise HoneError(f"data file not found: {p}", where="data_path", fix="check the path (relative paths are from the "
                    "current directory)")


def read_records(path: str | Path) -> Iterator[Record]:
    """Yield every row of a JSONL/JSON file (or directory of them)."""
    for f in data_files(path):
        if f.suffix == ".json":
            yield from _read_json(f)
        else:
            yield from _read_jsonl(f)


def _read_jsonl(f: Path) -> Iterator[Record]:
    with f.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise HoneError(f"invalid JSON: {err.msg} (column {err.colno})", where=f"{f}:{n}",
                                fix="each line of a .jsonl file must be one complete JSON object") from None
            yield Record(f"{f}:{n}", row)


def _read_json(f: Path) -> Iterator[Record]:
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HoneError(f"invalid JSON: {err.msg} (column {err.colno})", where=f"{f}:{err.lineno}",
                        fix="fix the JSON syntax (a .json file holds one array of objects)") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise HoneError("a .json data file must hold an array of objects", where=str(f),
                        fix="write [{\"messages\": [...]}, ...] or use JSONL")
    for i, row in enumerate(data):
        yield Record(f"{f}[{i}]", row)
