"""Where data comes from: one URI in, a stream of rows out.

Accepted ``data_path`` values:

- ``hf://org/name[:config][@revision]`` and bare hub ids (``org/name``), through ``datasets`` (``HF_TOKEN``);
- ``s3://bucket/key`` (a file, or a prefix of shards) through s3fs; credentials from ``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY`` (both or neither), endpoint from ``s3_endpoint_url`` / ``AWS_ENDPOINT_URL``;
- ``https://`` and ``http://`` files, downloaded to a temporary file and checked before a row is read: the length
  against Content-Length, and the checksums the server sends (:data:`HTTP_CHECKS`); a short, corrupt or
  interrupted download (or a 5xx/429 answer) is tried :data:`HTTP_ATTEMPTS` times in all, then fails clearly.
  ``https://user:password@host/...`` is basic auth: the credentials go in an ``Authorization`` header (not
  forwarded on a redirect) and the URI is recorded and shown without them;
- ``pvc://relative/path`` under the mount root (``pvc_root`` / ``HONE_PVC_ROOT`` / ``/workspace``);
- ``file:`` URIs (RFC 8089: ``file:///abs/path``, ``file://localhost/abs/path``, ``file:/abs/path``,
  percent-encoding decoded) and plain paths (``~`` expanded): a file, a directory of shards, a ``save_to_disk``
  directory, or a hub-format directory (data files in sub-directories, split by file name). A broken symbolic
  link among the shards, a link loop, a FIFO or a device is an error, never skipped or read.

Secrets never leave this module: URIs are shown with credentials and signature-like query values
redacted, and messages from underlying libraries are scrubbed of credential values.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from hone.data.records import (Header, Record, decompress, file_type, is_data_file, read_dataset, read_parquet,
                               read_stream, sniff)
from hone.errors import HoneError, suggest
from hone.secrets import redact_uri, scrub

log = logging.getLogger("hone")

PREFERRED_SPLITS = ("train", "train_sft", "train_gen", "training")
DEFAULT_PVC_ROOT = "/workspace"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(:[\w.\-]+)?(@[\w.\-/]+)?$")
_HF_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class SourceOptions:
    """Everything about *where* the data is that is not in the URI."""

    split: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    pvc_root: str | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> "SourceOptions":
        return cls(split=getattr(cfg, "split", None), s3_endpoint_url=getattr(cfg, "s3_endpoint_url", None),
                   s3_region=getattr(cfg, "s3_region", None), pvc_root=getattr(cfg, "pvc_root", None))


# -- the source -------------------------------------------------------------------------------------------------

class _Hashing(io.RawIOBase):
    """A raw stream that feeds every byte read into a hash (the content SHA-256 of the source)."""

    def __init__(self, raw: BinaryIO, h: Any):
        self.raw, self.h = raw, h

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.h.update(data)
        return n

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            super().close()


@dataclass
class _File:
    display: str
    open: Callable[[], BinaryIO]        # a binary stream of the raw (possibly compressed) bytes
    local_path: str | None = None       # when the file is on the local filesystem
    seekable_open: Callable[[], Any] | None = None  # remote files that can seek (s3): for Parquet


class Source:
    """A resolved data source. Use as a context manager; :meth:`records` streams every row once."""

    def __init__(self, uri: str, scheme: str):
        self.uri, self.scheme = uri, scheme
        self.display = redact_uri(uri)
        self.files: list[str] = []
        self.split: str | None = None
        self.detail: dict[str, Any] = {}
        self._hash = hashlib.sha256()
        self._tmp: list[str] = []
        self._files: list[_File] = []
        self._dataset: Callable[[], tuple[Any, str]] | None = None
        self._closers: list[Callable[[], Any]] = []

    # context manager: temporary downloads are removed on exit
    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for c in self._closers:
            c()
        self._closers.clear()
        for d in self._tmp:
            shutil.rmtree(d, ignore_errors=True)
        self._tmp.clear()

    def tempdir(self) -> str:
        d = tempfile.mkdtemp(prefix="hone-data-")
        self._tmp.append(d)
        return d

    @property
    def sha256(self) -> str:
        """SHA-256 of the bytes read so far (complete once :meth:`records` is exhausted)."""
        return self._hash.hexdigest()

    def records(self) -> Iterator[Record | Header]:
        """Every row of every file, in order (a file that breaks while being read raises HoneError)."""
        if self._dataset is not None:
            ds, display = self._dataset()
            with _read_errors(display):
                for f in sorted(c["filename"] for c in getattr(ds, "cache_files", []) or []):
                    self._hash_file(lambda f=f: open(f, "rb"))
                self.files = [display]
                yield from read_dataset(ds, display)
            return
        for f in self._files:
            self.files.append(f.display)
            with _read_errors(f.display):
                yield from self._read_file(f)

    def _hash_file(self, opener: Callable[[], BinaryIO]) -> None:
        with opener() as fh:
            while chunk := fh.read(1 << 20):
                self._hash.update(chunk)

    def _read_file(self, f: _File) -> Iterator[Record | Header]:
        ftype, compression = file_type(f.display.split("?", 1)[0])
        if ftype == "parquet" and compression is None:
            self._hash_file(f.open)
            if f.local_path:
                yield from read_parquet(f.local_path, f.display)
            elif f.seekable_open:
                with f.seekable_open() as fh:
                    yield from read_parquet(fh, f.display)
            else:  # e.g. HTTP: download to a temporary file (Parquet needs random access)
                path = os.path.join(self.tempdir(), "data.parquet")
                with f.open() as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                yield from read_parquet(path, f.display)
            return
        with f.open() as raw:
            buffered = io.BufferedReader(_Hashing(raw, self._hash), buffer_size=1 << 20)  # type: ignore[arg-type]
            if compression is None and buffered.peek(2)[:2] == b"\x1f\x8b":
                compression = "gzip"
            stream = decompress(buffered, compression)  # type: ignore[arg-type]
            if ftype is None:
                if compression:
                    stream = io.BufferedReader(stream)  # type: ignore[arg-type,assignment]
                ftype = sniff(stream)  # type: ignore[arg-type]
                if ftype is None:
                    raise HoneError(f"cannot tell the file type of {f.display}", where=f.display,
                                    fix="name it .jsonl, .json, .parquet or .csv (optionally .gz)")
            if ftype == "parquet":  # found by sniffing: needs random access
                data = io.BytesIO(stream.read())
                yield from read_parquet(data, f.display)
                return
            yield from read_stream(stream, f.display, ftype)  # type: ignore[arg-type]
            while not buffered.closed and buffered.read(1 << 20):
                pass  # hash what a reader did not need (e.g. trailing bytes)


@contextmanager
def _read_errors(display: str) -> Iterator[None]:
    """Failures of the transport or the file format while rows are read become one clear HoneError."""
    try:
        yield
    except (HoneError, MemoryError):
        raise
    except PermissionError as err:
        raise HoneError(f"permission denied reading {display} ({scrub(str(err.strerror or err))})", where=display,
                        fix="make the file readable by this user (chmod/chown), or copy it somewhere readable") from None
    except IsADirectoryError:
        raise HoneError(f"{display} is a directory, where a data file was expected", where=display,
                        fix="point data_path at the directory itself, or at a data file in it") from None
    except RecursionError:
        raise HoneError(f"cannot read {display}: the data is nested too deeply", where=display,
                        fix="write flat rows ({'messages': [...]})") from None
    except Exception as err:  # noqa: BLE001 - network drops, truncated files, bad compression, Arrow errors
        name = type(err).__name__ if type(err).__name__ != "error" else f"{type(err).__module__}.error"
        raise HoneError(f"cannot read {display}: {scrub(f'{name}: {err}')}", where=display,
                        fix="check the file (truncated download or bad compression?) and the connection") from None


def open_source(uri: str, options: SourceOptions | None = None, **kw: Any) -> Source:
    """Resolve ``uri`` (checking that it exists and credentials are consistent) into a :class:`Source`."""
    opts = options or SourceOptions(**kw)
    uri = str(uri).strip()
    if not uri:
        raise HoneError("data_path is empty", where="data_path", fix="pass a file, a directory or a URI")
    if "\x00" in uri:
        raise HoneError("data_path contains a NUL character", where="data_path",
                        fix="pass a file, a directory or a URI without control characters")
    if re.match(r"^file:(?!//)", uri, re.I):  # RFC 8089's short form: file:/abs/path
        uri = "file://" + uri[len("file:"):]
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", uri)
    if m:
        scheme = m.group(1).lower()
        opener = SCHEMES.get(scheme)
        if opener is not None:
            return opener(uri, uri[len(m.group(0)):], opts)
        close = difflib.get_close_matches(scheme, SCHEMES, n=1, cutoff=0.5)  # short names: a looser cutoff
        hint = f"did you mean {close[0]!r}?" if close else ""
        raise HoneError(f"unknown URI scheme {scheme + '://'!r}" + (f": {hint}" if hint else ""), where="data_path",
                        fix=f"use {', '.join(s + '://' for s in SCHEMES)} or a local path")
    path = Path(os.path.expanduser(uri)) if uri.startswith("~") else Path(uri)
    _check_path(path, uri)
    if path.exists():
        return _local_source(uri, path, str(path) if uri.startswith("~") else uri, opts)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:/", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
        scheme = uri.split(":", 1)[0]
        raise HoneError(f"malformed URI {redact_uri(uri)!r}: {scheme}: must be followed by '//'", where="data_path",
                        fix=f"write {scheme}://..." if scheme.lower() in SCHEMES else
                        f"use {', '.join(s + '://' for s in SCHEMES)} or a local path")
    if _HUB_ID.match(uri) and file_type(uri)[0] is None:
        return _hub_source(uri, uri, opts, bare=True)
    if uri.startswith("~"):
        raise HoneError(f"data file not found: {path} (from {uri})", where="data_path",
                        fix="check the path (~ is the home directory of the user running hone: "
                            f"{os.path.expanduser('~')})")
    raise HoneError(f"data file not found: {path}", where="data_path",
                    fix="check the path (relative paths are from the current directory), or use a URI "
                        "(hf://org/name, s3://bucket/key, https://..., pvc://path)")


def _check_path(path: Path, display: str) -> None:
    """A clear error for a path that is a symlink loop, a dangling symlink, or not a regular file or directory."""
    import errno
    import stat

    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise HoneError(f"{display} is a symbolic link loop (the links point at each other, never at a file)",
                            where="data_path", fix="fix the links (ls -l), or point data_path at the real file") \
                from None
        if os.path.islink(path):
            raise HoneError(f"{display} is a broken symbolic link: its target {os.readlink(path)!r} does not exist",
                            where="data_path", fix="fix the link, or point data_path at the real file") from None
        if err.errno == errno.EACCES:
            raise HoneError(f"permission denied: {display} ({err.strerror})", where="data_path",
                            fix="make it readable by this user, or copy it somewhere readable") from None
        if err.errno == errno.ENOTDIR:
            raise HoneError(f"data file not found: {display} (a part of the path is a file, not a directory)",
                            where="data_path", fix="check the path") from None
        if err.errno == errno.ENAMETOOLONG:
            raise HoneError("data_path is too long for the filesystem", where="data_path",
                            fix="check the value (a file's content passed instead of its path?)") from None
        return  # not found: the caller says so (or reads it as a hub id)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) \
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise HoneError(f"{display} is {kind}, not a data file or directory (its rows could not be read twice, "
                        "hashed, or found again by a resumed run)", where="data_path",
                        fix="write the data to a regular file first and pass that file")


def choose_split(names: list[str], requested: str | None, where: str) -> str:
    """The split to read: ``requested``, else train, train_sft, train_gen, training, else the first."""
    if requested:
        if requested in names:
            return requested
        hint = suggest(requested, names)
        raise HoneError(f"split {requested!r} not found (available: {', '.join(names)})" + (f"; {hint}" if hint
                                                                                             else ""),
                        where=f"{where}, parameter split", fix=f"pass split= one of {', '.join(names)}")
    for name in PREFERRED_SPLITS:
        if name in names:
            return name
    if not names:
        raise HoneError("the dataset has no splits", where=where, fix="check the dataset")
    return names[0]


def read_records(path: str, **options: Any) -> Iterator[Record]:
    """Yield every row of a data source (any URI :func:`open_source` accepts); a row that cannot be read raises
    :class:`HoneError` with its location."""
    with open_source(str(path), **options) as source:
        for rec in source.records():
            if isinstance(rec, Header):
                continue
            if rec.error:
                raise HoneError(rec.error[1], where=rec.where, fix="each line of a .jsonl file must be one "
                                "complete JSON object" if rec.error[0] == "invalid_json" else "fix the row")
            yield rec


# -- local files and PVCs -------------------------------------------------------------------------------------

def _local_file(path: Path, display: str) -> _File:
    return _File(display, lambda: open(path, "rb"), local_path=str(path))


def _local_source(uri: str, path: Path, display: str, opts: SourceOptions, *, root: Path | None = None) -> Source:
    src = Source(uri, "pvc" if root else "file")
    _check_path(path, display)
    if path.is_file():
        src._files = [_local_file(path, display)]
        return src
    if not path.is_dir():
        raise HoneError(f"data file not found: {path}", where="data_path",
                        fix="check the path (relative paths are from the current directory)")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        src._dataset = lambda: _load_from_disk(str(path), display, opts.split, src)
        return src
    try:
        entries = sorted(path.iterdir())
    except PermissionError:
        raise HoneError(f"permission denied listing the directory {display}", where="data_path",
                        fix="make the directory readable (and searchable) by this user") from None
    for f in entries:
        if is_data_file(f.name) and not f.is_dir():
            _check_path(f, f"{display.rstrip('/')}/{f.name}")  # a broken shard link is an error, not skipped
    files = [f for f in entries if f.is_file() and is_data_file(f.name)]
    if files:
        for f in files:
            if root is not None:
                _inside(f, root, display)
        src._files = [_local_file(f, f"{display.rstrip('/')}/{f.name}") for f in files]
        return src
    nested = _nested_files(path, display)
    if nested:  # a hub-format directory (e.g. data/train-00000-of-00001.parquet): splits from file names
        if root is not None:
            for f in nested:
                _inside(f, root, display)
        src._dataset = lambda: _load_hub(str(path), None, None, opts.split, display, src)
        return src
    raise HoneError(f"no data files (.jsonl, .json, .parquet, .csv, or a save_to_disk dataset) in directory {path}",
                    where="data_path", fix="point data_path at a data file or a directory of them")


_NESTED_DEPTH, _NESTED_ENTRIES = 4, 100_000


def _nested_files(path: Path, display: str) -> list[Path]:
    """Data files in sub-directories (a hub-format layout: ``data/train-*.parquet``, ``<config>/<split>-*``), looked
    for a few levels deep and in a bounded number of entries (data_path=/ or ~ must not walk the whole disk)."""
    found: list[Path] = []
    seen = 0
    for top, dirs, names in os.walk(path):
        depth = len(Path(top).relative_to(path).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < _NESTED_DEPTH else []
        seen += len(dirs) + len(names)
        if seen > _NESTED_ENTRIES:
            raise HoneError(f"no data files directly in {display}, and too many entries below it to look for a "
                            "dataset layout (is it the right directory?)", where="data_path",
                            fix="point data_path at the directory that holds the data files, or at one file")
        for n in names:
            if is_data_file(n):
                _check_path(Path(top) / n, f"{display.rstrip('/')}/{Path(top, n).relative_to(path)}")
        found += [Path(top) / n for n in names if is_data_file(n) and (Path(top) / n).is_file()]
    return sorted(found)


def _file_uri_path(uri: str) -> tuple[Path, str]:
    """The local path of a ``file:`` URI (RFC 8089): ``file:///abs``, ``file://localhost/abs``, percent-encoding
    decoded. ``file://relative/path`` (not RFC 8089, but written often) is read as a relative path."""
    from urllib.parse import unquote

    rest = uri.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise HoneError(f"a file:// URI cannot have a query or fragment: {redact_uri(uri)!r}", where="data_path",
                        fix="percent-encode '?' and '#' in file names (%3F, %23), or pass a plain path")
    if not rest.strip("/") and rest != "/":
        raise HoneError("the file:// URI has no path", where="data_path", fix="write file:///absolute/path")
    host, slash, p = rest.partition("/")
    if host.lower() == "localhost" and not slash:
        raise HoneError("the file:// URI has no path", where="data_path", fix="write file://localhost/absolute/path")
    if host.lower() == "localhost" or not host:
        path = unquote("/" + p)
    elif re.match(r"^[A-Za-z]:$", host):  # file://C:/... (Windows drive letters)
        path = unquote(rest)
    else:
        path = unquote(rest)
        if not Path(path).exists():
            raise HoneError(f"file:// URI names the host {host!r}: only local files can be read this way",
                            where="data_path", fix=f"write file:///absolute/path (three slashes) or "
                            f"file://localhost/absolute/path; for a relative path, pass it without file://")
    if not path:
        raise HoneError("the file:// URI has no path", where="data_path", fix="write file:///absolute/path")
    return Path(path), path


def file_uri_path(uri: str) -> Path:
    """The local path of a ``file:`` URI (RFC 8089 forms, percent-decoded); raises :class:`HoneError` for a
    ``file://`` URI naming another host. For code that needs the path of a local data URI (prepared directories,
    lineage hashes) without opening it."""
    if re.match(r"^file:(?!//)", uri, re.I):
        uri = "file://" + uri[len("file:"):]
    return _file_uri_path(uri)[0]


def _file_source(uri: str, opts: SourceOptions) -> Source:
    path, display = _file_uri_path(uri)
    _check_path(path, display)
    if not path.exists():
        raise HoneError(f"data file not found: {path} (from {redact_uri(uri)})", where="data_path",
                        fix="check the path (percent-encoded characters such as %20 are decoded)")
    return _local_source(uri, path, display, opts)


def _inside(path: Path, root: Path, uri: str) -> Path:
    try:
        real = path.resolve()
    except (RuntimeError, OSError):  # a symbolic link loop (RuntimeError before Python 3.13)
        _check_path(path, uri)
        raise HoneError(f"cannot resolve {redact_uri(uri)} under the PVC mount root {root}", where="data_path",
                        fix="check the path and its symbolic links on the volume") from None
    if real != root and root not in real.parents:
        raise HoneError(f"{redact_uri(uri)} resolves outside the PVC mount root {root}", where="data_path",
                        fix="pvc:// paths must stay under the mount root (no '..', no symlinks leading out)")
    return real


def _pvc_source(uri: str, opts: SourceOptions) -> Source:
    rel = uri.split("://", 1)[1]
    root_s = opts.pvc_root or os.environ.get("HONE_PVC_ROOT") or DEFAULT_PVC_ROOT
    root = Path(root_s)
    if not root.is_dir():
        raise HoneError(f"the PVC mount root {root} does not exist", where="pvc_root (or HONE_PVC_ROOT)",
                        fix="mount the volume there, or set pvc_root / HONE_PVC_ROOT to where it is mounted")
    root = root.resolve()
    if not rel or PurePosixPath(rel).is_absolute():
        raise HoneError(f"{redact_uri(uri)}: a pvc:// path must be relative to the mount root", where="data_path",
                        fix="write pvc://dir/file.jsonl (resolved under the mount root)")
    target = _inside(root / rel, root, uri)
    if not target.exists():
        raise HoneError(f"{redact_uri(uri)} not found under the PVC mount root {root}", where="data_path",
                        fix="check the path on the volume (ls the mount root)")
    return _local_source(uri, target, uri.rstrip("/"), opts, root=root)


# -- Hugging Face ---------------------------------------------------------------------------------------------

def _hub_source(uri: str, rest: str, opts: SourceOptions, *, bare: bool = False) -> Source:
    if re.match(r"^[^/@]*@", rest) and not bare:  # hf://user:token@org/name
        raise HoneError(f"credentials in an hf:// URI are not read: {redact_uri(uri)}", where="data_path",
                        fix="write hf://org/name and set HF_TOKEN (the hf-token Secret)")
    name, config, revision = rest, None, None
    if "@" in name:
        name, revision = name.split("@", 1)
    if ":" in name:
        name, config = name.split(":", 1)
    name = name.strip("/")
    if name.startswith("datasets/") and name.count("/") == 2:
        name = name[len("datasets/"):]
    if not _HF_NAME.match(name) or config == "" or revision == "":
        raise HoneError(f"invalid Hugging Face dataset reference {redact_uri(uri)!r}", where="data_path",
                        fix="write hf://org/name, hf://org/name:config or hf://org/name:config@revision")
    src = Source(uri, "hf")
    src.detail = {"repo_id": name, "config": config, "revision": revision}
    display = f"hf://{name}" + (f":{config}" if config else "")

    def load() -> tuple[Any, str]:
        try:
            return _load_hub(name, config, revision, opts.split, display, src)
        except HoneError as err:
            if not bare:
                raise
            raise HoneError(err.what + f" (and there is no local file or directory {uri!r})", where=err.where,
                            fix=err.fix) from None

    src._dataset = load
    return src


def _hub_error(name: str, err: Exception) -> HoneError:
    text = scrub(f"{type(err).__name__}: {err}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or \
        os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes")
    if "OfflineModeIsEnabled" in text or ("Couldn't reach" in text and offline):
        return HoneError(f"hub dataset {name!r} is not in the local cache and the hub is off (offline mode)",
                         where="data_path",
                         fix="unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE to download it, or copy the data to a local "
                             "or pvc:// path (e.g. with save_to_disk)")
    if "Couldn't reach" in text or "ConnectError" in text:
        return HoneError(f"cannot reach the Hugging Face hub for dataset {name!r}", where="data_path",
                         fix="check the network (HF_ENDPOINT), or use a local copy of the data")
    if "DatasetNotFoundError" in text or "doesn't exist on the Hub" in text:
        return HoneError(f"hub dataset {name!r} not found or not accessible ({text})", where="data_path",
                         fix="check the name; for a gated or private dataset set HF_TOKEN (and accept its terms)")
    return HoneError(f"cannot load hub dataset {name!r}: {text}", where="data_path",
                     fix="check the name, config (hf://org/name:config) and revision (@rev)")


def _load_hub(name: str, config: str | None, revision: str | None, split: str | None, display: str,
              src: Source) -> tuple[Any, str]:
    import datasets

    token = os.environ.get("HF_TOKEN") or None
    kw: dict[str, Any] = {"revision": revision} if revision else {}
    if token:
        kw["token"] = token
    elif "/" in name and not os.path.isdir(name):
        log.info("HF_TOKEN is not set: only public (not gated) hub datasets can be read")
    try:
        if split and "[" in split:  # slicing syntax, e.g. train[:3000]: let datasets apply it
            ds = datasets.load_dataset(name, config, split=split, **kw)
            src.split = split
        else:
            dd = datasets.load_dataset(name, config, **kw)
            src.split = choose_split(list(dd), split, display)
            ds = dd[src.split]
    except HoneError:
        raise
    except Exception as err:  # noqa: BLE001 - every library failure becomes one clear message
        raise _hub_error(name, err) from None
    return ds, f"{display}[{src.split}]"


def _load_from_disk(path: str, display: str, split: str | None, src: Source) -> tuple[Any, str]:
    import datasets

    try:
        obj = datasets.load_from_disk(path)
    except Exception as err:  # noqa: BLE001
        raise HoneError(f"cannot read the save_to_disk dataset: {scrub(str(err))}", where=display,
                        fix="check that the directory was written by Dataset.save_to_disk") from None
    if isinstance(obj, datasets.DatasetDict):
        src.split = choose_split(list(obj), split, display)
        return obj[src.split], f"{display.rstrip('/')}[{src.split}]"
    if split and split != str(getattr(obj, "split", None) or split):
        log.info("split=%s ignored: %s holds a single dataset", split, display)
    return obj, display.rstrip("/")


# -- S3 -----------------------------------------------------------------------------------------------------------

def s3_filesystem(opts: SourceOptions) -> Any:
    """An s3fs filesystem configured from the environment and ``opts`` (credentials: both keys or neither)."""
    key = os.environ.get("AWS_ACCESS_KEY_ID", "").strip()
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "").strip()
    if bool(key) != bool(secret):
        have, missing = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if key else \
            ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        raise HoneError(f"S3 credentials misconfigured: {have} is set but {missing} is not",
                        where="environment (s3-secret)",
                        fix="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (default credential "
                            "chain, else anonymous access)")
    try:
        import s3fs
    except ImportError:
        raise HoneError("s3:// data needs s3fs", where="data_path", fix="pip install 'hone[s3]'") from None
    kw: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if key:
        kw.update(key=key, secret=secret, token=os.environ.get("AWS_SESSION_TOKEN") or None)
    else:
        import botocore.session

        if botocore.session.Session().get_credentials() is None:
            kw["anon"] = True
    endpoint = opts.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kw["endpoint_url"] = endpoint
    region = opts.s3_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["client_kwargs"] = {"region_name": region}
    return s3fs.S3FileSystem(**kw)


def _s3_error(uri: str, err: Exception, endpoint: str | None) -> HoneError:
    text = scrub(f"{type(err).__name__}: {err}")
    if isinstance(err, FileNotFoundError):
        return HoneError(f"S3 object not found: {redact_uri(uri)}", where="data_path",
                         fix="check the bucket and key (aws s3 ls), and the endpoint for MinIO/ODF "
                             "(s3_endpoint_url or AWS_ENDPOINT_URL)")
    if isinstance(err, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return HoneError(f"access denied to {redact_uri(uri)} ({text})", where="data_path",
                         fix="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy")
    if "NoCredentials" in text or "Unable to locate credentials" in text:
        return HoneError(f"no S3 credentials for {redact_uri(uri)}", where="environment",
                         fix="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if "connect" in text.lower() or "Could not connect" in text:
        return HoneError(f"cannot reach the S3 endpoint {redact_uri(endpoint or 'of AWS')} ({text})", where="data_path",
                         fix="check s3_endpoint_url / AWS_ENDPOINT_URL and the network")
    return HoneError(f"cannot read {redact_uri(uri)}: {text}", where="data_path", fix="check the URI, credentials and endpoint")


def _exists(fs: Any, path: str) -> bool:
    try:
        return bool(fs.exists(path))
    except Exception:  # noqa: BLE001
        return False


def _s3_source(uri: str, opts: SourceOptions) -> Source:
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if "@" in bucket:
        raise HoneError(f"credentials in an s3:// URI are not read: {redact_uri(uri)}", where="data_path",
                        fix="write s3://bucket/key and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the s3-secret)")
    if not bucket:
        raise HoneError(f"no bucket in {redact_uri(uri)!r}", where="data_path", fix="write s3://bucket/key")
    fs = s3_filesystem(opts)
    src = Source(uri, "s3")
    endpoint = getattr(fs, "endpoint_url", None) or opts.s3_endpoint_url
    path = f"{bucket}/{key}".rstrip("/")

    def s3_file(p: str) -> _File:
        return _File(f"s3://{p}", lambda: fs.open(p, "rb", block_size=8 << 20),
                     seekable_open=lambda: fs.open(p, "rb", block_size=8 << 20))

    try:
        if key and not key.endswith("/") and fs.isfile(path):
            src._files = [s3_file(path)]
            return src
        if fs.exists(f"{path}/dataset_dict.json") or fs.exists(f"{path}/state.json"):
            def load() -> tuple[Any, str]:
                local = src.tempdir()
                fs.get(path + "/", local, recursive=True)
                return _load_from_disk(local, uri.rstrip("/"), opts.split, src)
            src._dataset = load
            return src
        found = sorted(p for p in fs.find(path) if is_data_file(p)) if key else []
        if not found and key and not key.endswith("/"):
            found = sorted(p for p in fs.glob(path + "*") if is_data_file(p) and fs.isfile(p))  # a key prefix
        if not found and not key:
            found = sorted(p for p in fs.find(bucket) if is_data_file(p))
        if not found:
            raise FileNotFoundError(path)
    except HoneError:
        raise
    except Exception as err:  # noqa: BLE001
        if isinstance(err, FileNotFoundError) and not _exists(fs, bucket):
            raise HoneError(f"S3 bucket {bucket!r} not found (or not visible with these credentials)",
                            where="data_path", fix="check the bucket name and the endpoint (s3_endpoint_url or "
                            "AWS_ENDPOINT_URL for MinIO/ODF)") from None
        raise _s3_error(uri, err, endpoint) from None
    src._files = [s3_file(p) for p in found]
    return src


# -- HTTP(S) -------------------------------------------------------------------------------------------------------

HTTP_ATTEMPTS = 3          # downloads that come back short or corrupt are tried this many times in all
HTTP_RETRY_DELAY_S = 0.5   # times the attempt number
HTTP_TIMEOUT_S = 60
#: Integrity checks of an HTTP download, best effort, each used when the server sends it: the length
#: (Content-Length), Content-MD5, Digest / Repr-Digest / Content-Digest (md5, sha-256, sha-512), x-goog-hash (md5),
#: x-amz-checksum-sha256 / -sha1 / -crc32, and the ETag when it is an MD5 (32 hex digits, from S3 or MinIO).
HTTP_CHECKS = ("content-length", "content-md5", "digest", "repr-digest", "content-digest", "x-goog-hash",
               "x-amz-checksum-sha256", "x-amz-checksum-sha1", "x-amz-checksum-crc32", "etag (S3 MD5)")


class _Retryable(Exception):
    """A download attempt that may succeed when tried again (short, corrupt, reset, 5xx)."""


def _expected_digests(headers: Any) -> dict[str, tuple[str, str]]:
    """algorithm -> (expected hex digest, the header it came from), from the response headers."""
    import base64
    import binascii

    out: dict[str, tuple[str, str]] = {}

    def b64(value: str, algo: str, header: str) -> None:
        try:
            out.setdefault(algo, (base64.b64decode(value.strip().strip(":"), validate=True).hex(), header))
        except (binascii.Error, ValueError):
            log.info("ignoring the unreadable %s header of the download", header)

    if headers.get("Content-MD5"):
        b64(headers["Content-MD5"], "md5", "Content-MD5")
    for name in ("Repr-Digest", "Content-Digest", "Digest"):
        for part in (headers.get(name) or "").split(","):
            algo, _, value = part.strip().partition("=")
            algo = {"md5": "md5", "sha-256": "sha256", "sha-512": "sha512"}.get(algo.strip().lower(), "")
            if algo and value and not (name == "Content-Digest" and headers.get("Content-Encoding")):
                b64(value, algo, name)
    for part in (headers.get("x-goog-hash") or "").split(","):
        algo, _, value = part.strip().partition("=")
        if algo.strip().lower() == "md5":
            b64(value, "md5", "x-goog-hash")
    for algo in ("sha256", "sha1", "crc32"):
        if headers.get(f"x-amz-checksum-{algo}"):
            b64(headers[f"x-amz-checksum-{algo}"], algo, f"x-amz-checksum-{algo}")
    etag = (headers.get("ETag") or "").strip().removeprefix("W/").strip('"')
    s3_like = headers.get("x-amz-request-id") or headers.get("x-amz-id-2") or \
        re.search(r"AmazonS3|MinIO", headers.get("Server") or "", re.I)
    if s3_like and re.fullmatch(r"[0-9a-fA-F]{32}", etag) and not headers.get("Content-Encoding"):
        out.setdefault("md5", (etag.lower(), "ETag"))
    return out


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        import zlib

        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def _receive(resp: Any, path: str, display: str) -> list[str]:
    """Write the body of ``resp`` to ``path``, checking its length and the checksums the server sent; returns the
    checks made. A short or corrupt body raises :class:`_Retryable`."""
    import http.client

    length = resp.headers.get("Content-Length")
    expected = int(length) if length and length.strip().isdigit() and not resp.headers.get("Transfer-Encoding") \
        else None
    digests = _expected_digests(resp.headers)
    hashes = {a: _Crc32() if a == "crc32" else hashlib.new(a) for a in digests}
    n = 0
    try:
        with open(path, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                n += len(chunk)
                for h in hashes.values():
                    h.update(chunk)
    except (http.client.HTTPException, OSError) as err:  # a chunked body cut short, a reset connection
        raise _Retryable(f"the connection broke after {n:,} bytes ({type(err).__name__})") from None
    checks = []
    if expected is not None:
        if n != expected:
            raise _Retryable(f"received {n:,} bytes but the server announced {expected:,} (Content-Length): the "
                             "download is incomplete")
        checks.append("content-length")
    for algo, (want, header) in digests.items():
        got = hashes[algo].hexdigest()
        if got != want:
            raise _Retryable(f"the {algo} checksum of the {n:,} bytes received is {got[:16]}..., but the server's "
                             f"{header} header says {want[:16]}...: the download is corrupt")
        checks.append(f"{header}:{algo}")
    return checks


def _http_source(uri: str) -> Source:
    import base64
    import http.client
    import socket
    import ssl
    import time
    import urllib.error
    import urllib.request
    from urllib.parse import unquote

    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as err:
        raise HoneError(f"malformed URL {redact_uri(uri)!r} ({scrub(str(err))})", where="data_path",
                        fix="write http(s)://host[:port]/path (a port is a number up to 65535)") from None
    if not parts.hostname:
        raise HoneError(f"no host in the URL {redact_uri(uri)!r}", where="data_path",
                        fix="write http(s)://host/path")
    hostport = f"{parts.hostname}:{port or (443 if parts.scheme.lower() == 'https' else 80)}"
    url, auth, secrets_ = uri, None, []
    if "@" in parts.netloc:  # basic auth in the URL: sent as a header, never recorded or shown
        userinfo, _, netloc = parts.netloc.rpartition("@")
        user, _, password = (unquote(x) for x in userinfo.partition(":"))
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        auth, secrets_ = f"Basic {token}", [s for s in (userinfo, password, token) if s]
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def clean(text: str) -> str:
        for secret in sorted(secrets_, key=len, reverse=True):
            text = text.replace(secret, "***")
        return scrub(text)

    src = Source(url, "http")
    display = src.display
    fixes = {404: "check the URL", 401: "the server refused the user name and password in the URL: check them"
             if auth else "the server needs credentials: use a pre-signed URL, https://user:password@host/... "
             "(basic auth), or s3:// with credentials",
             403: "the server refuses access: check the URL's signature (not expired?) or permissions",
             416: "the server cannot serve the file: check the URL"}

    origin = (parts.scheme.lower(), hostport)

    class SameOriginAuth(urllib.request.HTTPRedirectHandler):
        """Basic auth follows a redirect on the same scheme, host and port only (never to another server)."""

        def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None and auth:
                target = urlsplit(newurl)
                port = target.port or (443 if target.scheme.lower() == "https" else 80)
                if (target.scheme.lower(), f"{target.hostname}:{port}") == origin:
                    new.add_unredirected_header("Authorization", auth)
            return new

    opener = urllib.request.build_opener(SameOriginAuth)

    def attempt() -> Any:
        req = urllib.request.Request(url, headers={"User-Agent": "hone-data", "Accept-Encoding": "identity"})
        if auth:
            req.add_unredirected_header("Authorization", auth)  # not forwarded to another host on a redirect
        try:
            return opener.open(req, timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code >= 500 or err.code == 429:
                raise _Retryable(f"HTTP {err.code} {err.reason}") from None
            raise HoneError(f"HTTP {err.code} {clean(str(err.reason))} for {display}", where="data_path",
                            fix=fixes.get(err.code, "check the URL and the server")) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, ConnectionRefusedError):
                what = f"connection refused by {hostport} (nothing listens on that port?)"
            elif isinstance(reason, socket.gaierror):
                what = f"cannot resolve the host name {parts.hostname!r} (DNS)"
            elif isinstance(reason, (TimeoutError, socket.timeout)):
                what = f"timed out after {HTTP_TIMEOUT_S}s connecting to {hostport}"
            elif isinstance(reason, ssl.SSLCertVerificationError):
                what = (f"the TLS certificate of {hostport} is not trusted ({reason.reason}: "
                        f"{clean(str(reason.verify_message))})")
            elif isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
                raise _Retryable(f"{hostport} closed the connection ({type(reason).__name__})") from None
            else:
                what = f"{type(reason).__name__} from {hostport}: {clean(str(reason))}"
            raise HoneError(f"cannot fetch {display}: {what}", where="data_path",
                            fix="check the URL, the network, and for https the server certificate "
                                "(SSL_CERT_FILE for a private CA)") from None

    def with_retries(step: Callable[[Any], Any], first: Any = None) -> Any:
        problem = ""
        for n in range(1, HTTP_ATTEMPTS + 1):
            try:
                resp = first if first is not None else attempt()
                first = None
                return step(resp)
            except _Retryable as err:
                problem = str(err)
            if n < HTTP_ATTEMPTS:
                log.warning("%s: %s; trying again (%d/%d)", display, problem, n + 1, HTTP_ATTEMPTS)
                time.sleep(HTTP_RETRY_DELAY_S * n)
        raise HoneError(f"cannot download {display}: {problem} (tried {HTTP_ATTEMPTS} times)", where="data_path",
                        fix="check the server (a proxy or the server cutting transfers short?) and try again; or copy "
                            "the file to a local path, pvc:// or s3://")

    # Fail now (before reading) if the URL does not answer
    state: dict[str, Any] = {"first": with_retries(lambda resp: resp)}

    def close_first() -> None:
        resp = state.pop("first", None)
        if resp is not None:
            resp.close()

    src._closers.append(close_first)

    def download() -> str:
        if "path" not in state:
            target = os.path.join(src.tempdir(), "download")

            def receive(resp: Any) -> list[str]:
                try:
                    return _receive(resp, target, display)
                finally:
                    resp.close()

            state["checks"] = with_retries(receive, state.pop("first", None))
            src.detail["verified"] = state["checks"]
            state["path"] = target
        return state["path"]

    src._files = [_File(display, lambda: open(download(), "rb"))]  # the type comes from the URL path, else content
    return src


#: URI scheme -> opener(uri, the rest after "scheme://", options). Adding a data source = one opener + one entry.
SCHEMES: dict[str, Callable[[str, str, SourceOptions], Source]] = {
    "hf": lambda uri, rest, opts: _hub_source(uri, rest, opts),
    "s3": lambda uri, rest, opts: _s3_source(uri, opts),
    "https": lambda uri, rest, opts: _http_source(uri),
    "http": lambda uri, rest, opts: _http_source(uri),
    "pvc": lambda uri, rest, opts: _pvc_source(uri, opts),
    "file": lambda uri, rest, opts: _file_source(uri, opts),
}
