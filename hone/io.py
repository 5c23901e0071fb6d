"""Atomic file and directory writes: a temporary name, then one rename. Nothing is ever half-written.

And strict reading of the files users write by hand (YAML configs): UTF-8, no key twice, no alias bomb."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``dest`` in one rename.

    On an exception the temporary directory is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        # mkdtemp makes the directory private (0700); published outputs follow the umask like any other
        mask = _umask()
        tmp.chmod(0o777 & ~mask)
        for f in tmp.rglob("*"):
            f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def content_sha256(path: str | Path, skip: Callable[[Path], bool] | None = None) -> str:
    """SHA-256 of a file's bytes, or of a directory: every file's relative path and bytes, in sorted order
    (``skip(relative_path)`` leaves files out)."""
    import hashlib

    p = Path(path)
    h = hashlib.sha256()

    def add(f: Path) -> None:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)

    if p.is_file():
        add(p)
        return h.hexdigest()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        rel = f.relative_to(p)
        if skip is None or not skip(rel):
            h.update(str(rel).encode() + b"\0")
            add(f)
    return h.hexdigest()


# -- reading configuration files ---------------------------------------------------------------------------
MAX_YAML_VALUES = 100_000  # values a config file may expand to through aliases (a "billion laughs" is refused)


def read_text_utf8(path: str | Path, what: str = "file") -> str:
    """A text file's contents as UTF-8 (a leading BOM dropped); an undecodable byte is a HoneError naming
    the line and the byte, not a UnicodeDecodeError."""
    from hone.errors import HoneError

    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise HoneError(f"{what} is a directory, not a file: {path}", where=str(path),
                        fix=f"pass the path of the {what} itself") from None
    except PermissionError:
        raise HoneError(f"{what} cannot be read (permission denied): {path}", where=str(path),
                        fix="make it readable by this user (chmod u+r)") from None
    except OSError as err:
        raise HoneError(f"{what} cannot be read: {err.strerror or err}", where=str(path),
                        fix=f"pass a readable {what}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
        start = err.start + bom
        line = raw[:start].count(b"\n") + 1
        column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        raise HoneError(f"{what} is not UTF-8: byte 0x{raw[start]:02x} at line {line}, column {column} cannot be "
                        "decoded (the file looks like Latin-1/Windows-1252 or another legacy encoding)",
                        where=f"{path}:{line}",
                        fix=f"save the {what} as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.yaml`)"
                        ) from None


def load_yaml_mapping(path: str | Path, what: str = "config file") -> tuple[dict, dict[str, int]]:
    """A YAML file that must hold a mapping with string keys: (the mapping, each top-level key's line).

    Stricter than ``yaml.safe_load``, each a :class:`~hone.errors.HoneError` with file:line: a key given twice
    (both lines named; YAML's "last one wins" silently loses a value), aliases that expand to more than
    ``MAX_YAML_VALUES`` values (a "billion laughs" fails at once instead of exhausting memory), text that is
    not UTF-8, tabs used for indentation, a top level that is not a mapping, a key that is not a string.
    An empty file is an empty mapping.
    """
    import yaml

    from hone.errors import HoneError

    path = Path(path)
    text = read_text_utf8(path, what)

    class _Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen: dict[Any, int] = {}
        if isinstance(node, yaml.MappingNode):  # explicit keys only: one may override a merged (<<) one
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = loader.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen and seen[key] != line:
                    raise HoneError(f"key {key!r} is given twice in the {what} (lines {seen[key]} and {line}); "
                                    "YAML would silently keep only the last", where=f"{path}:{seen[key]} and "
                                    f"{path}:{line}", fix=f"keep one {key!r} line")
                seen.setdefault(key, line)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return {}, {}
        _check_expansion(root, path, what)
        data = loader.construct_document(root)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        fix = "fix the YAML syntax"
        if "\t" in problem or "'\\t'" in problem:
            fix = "indent with spaces: YAML does not allow tabs for indentation"
        raise HoneError(f"invalid YAML in the {what}: {problem}", where=where, fix=fix) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__} ({str(data)[:40]!r})"
        raise HoneError(f"the {what} must be a mapping of parameter names to values, but it holds {kind}",
                        where=str(path), fix="write one `name: value` line per parameter, e.g. `learning_rate: 1e-5`")
    lines: dict[str, int] = {}
    for key_node, _ in root.value:
        if isinstance(key_node, yaml.ScalarNode):
            lines.setdefault(key_node.value, key_node.start_mark.line + 1)
    for key in data:
        if not isinstance(key, str):
            line = next((n for k, n in lines.items() if k.lower() == str(key).lower()), None)
            raise HoneError(f"key {key!r} in the {what} is not a parameter name (YAML reads it as a "
                            f"{type(key).__name__})", where=f"{path}:{line}" if line else str(path),
                            fix="use parameter names as keys (e.g. learning_rate); quote a key that YAML reads as "
                                "a number, a boolean or null")
    return data, {k: n for k, n in lines.items() if k in data}


def _check_expansion(root: Any, path: Path, what: str) -> None:
    """Refuse a document whose aliases expand to more than MAX_YAML_VALUES values (counted without expanding)."""
    import yaml

    from hone.errors import HoneError

    sizes: dict[int, int] = {}
    measuring: set[int] = set()

    def size(node: Any, depth: int = 0) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > 200:
            raise HoneError(f"the {what} nests values more than 200 levels deep", where=f"{path}:"
                            f"{node.start_mark.line + 1}", fix="flatten the value")
        if key in measuring:
            raise HoneError(f"the {what} holds a value that contains itself (a recursive YAML alias)",
                            where=f"{path}:{node.start_mark.line + 1}", fix="write the value out, without aliases")
        measuring.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(v, depth + 1) for v in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        measuring.discard(key)
        sizes[key] = n
        if n > MAX_YAML_VALUES:
            raise HoneError(f"the {what} expands to more than {MAX_YAML_VALUES:,} values through YAML aliases "
                            "(*name references to &name anchors): refused, as a \"billion laughs\" document would "
                            "exhaust memory", where=f"{path}:{node.start_mark.line + 1}",
                            fix="write the values out, without anchors and aliases")
        return n

    size(root)
