"""Where data comes from: one URI in, a stream of rows out.

Accepted ``data_path`` values:

- ``hf://org/name[:config][@revision]`` and bare hub ids (``org/name``), through ``datasets`` (``HF_TOKEN``);
- ``s3://bucket/key`` (a file, or a prefix of shards) through s3fs; credentials from ``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY`` (both or neither), endpoint from ``s3_endpoint_url`` / ``AWS_ENDPOINT_URL``;
- ``https://`` and ``http://`` files;
- ``pvc://relative/path`` under the mount root (``pvc_root`` / ``HONE_PVC_ROOT`` / ``/workspace``);
- ``file://`` and plain paths: a file, a directory of shards, a ``save_to_disk`` directory, or a hub-format
  directory (data files in sub-directories, split by file name).

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
from urllib.parse import urlsplit

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
    path = Path(uri)
    if path.exists():
        return _local_source(uri, path, uri, opts)
    if _HUB_ID.match(uri) and file_type(uri)[0] is None:
        return _hub_source(uri, uri, opts, bare=True)
    raise HoneError(f"data file not found: {path}", where="data_path",
                    fix="check the path (relative paths are from the current directory), or use a URI "
                        "(hf://org/name, s3://bucket/key, https://..., pvc://path)")


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
    if path.is_file():
        src._files = [_local_file(path, display)]
        return src
    if not path.is_dir():
        raise HoneError(f"data file not found: {path}", where="data_path",
                        fix="check the path (relative paths are from the current directory)")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        src._dataset = lambda: _load_from_disk(str(path), display, opts.split, src)
        return src
    files = sorted(f for f in path.iterdir() if f.is_file() and is_data_file(f.name))
    if files:
        for f in files:
            if root is not None:
                _inside(f, root, display)
        src._files = [_local_file(f, f"{display.rstrip('/')}/{f.name}") for f in files]
        return src
    nested = [f for f in path.rglob("*") if f.is_file() and is_data_file(f.name)
              and not any(p.startswith(".") for p in f.relative_to(path).parts)]
    if nested:  # a hub-format directory (e.g. data/train-00000-of-00001.parquet): splits from file names
        if root is not None:
            for f in nested:
                _inside(f, root, display)
        src._dataset = lambda: _load_hub(str(path), None, None, opts.split, display, src)
        return src
    raise HoneError(f"no data files (.jsonl, .json, .parquet, .csv, or a save_to_disk dataset) in directory {path}",
                    where="data_path", fix="point data_path at a data file or a directory of them")


def _inside(path: Path, root: Path, uri: str) -> Path:
    real = path.resolve()
    if real != root and root not in real.parents:
        raise HoneError(f"{uri} resolves outside the PVC mount root {root}", where="data_path",
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
        raise HoneError(f"{uri}: a pvc:// path must be relative to the mount root", where="data_path",
                        fix="write pvc://dir/file.jsonl (resolved under the mount root)")
    target = _inside(root / rel, root, uri)
    if not target.exists():
        raise HoneError(f"{uri} not found under the PVC mount root {root}", where="data_path",
                        fix="check the path on the volume (ls the mount root)")
    return _local_source(uri, target, uri.rstrip("/"), opts, root=root)


# -- Hugging Face ---------------------------------------------------------------------------------------------

def _hub_source(uri: str, rest: str, opts: SourceOptions, *, bare: bool = False) -> Source:
    name, config, revision = rest, None, None
    if "@" in name:
        name, revision = name.split("@", 1)
    if ":" in name:
        name, config = name.split(":", 1)
    name = name.strip("/")
    if name.startswith("datasets/") and name.count("/") == 2:
        name = name[len("datasets/"):]
    if not _HF_NAME.match(name) or config == "" or revision == "":
        raise HoneError(f"invalid Hugging Face dataset reference {uri!r}", where="data_path",
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
        return HoneError(f"S3 object not found: {uri}", where="data_path",
                         fix="check the bucket and key (aws s3 ls), and the endpoint for MinIO/ODF "
                             "(s3_endpoint_url or AWS_ENDPOINT_URL)")
    if isinstance(err, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return HoneError(f"access denied to {uri} ({text})", where="data_path",
                         fix="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy")
    if "NoCredentials" in text or "Unable to locate credentials" in text:
        return HoneError(f"no S3 credentials for {uri}", where="environment",
                         fix="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if "connect" in text.lower() or "Could not connect" in text:
        return HoneError(f"cannot reach the S3 endpoint {redact_uri(endpoint or 'of AWS')} ({text})", where="data_path",
                         fix="check s3_endpoint_url / AWS_ENDPOINT_URL and the network")
    return HoneError(f"cannot read {uri}: {text}", where="data_path", fix="check the URI, credentials and endpoint")


def _exists(fs: Any, path: str) -> bool:
    try:
        return bool(fs.exists(path))
    except Exception:  # noqa: BLE001
        return False


def _s3_source(uri: str, opts: SourceOptions) -> Source:
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket:
        raise HoneError(f"no bucket in {uri!r}", where="data_path", fix="write s3://bucket/key")
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

def _http_source(uri: str) -> Source:
    import urllib.error
    import urllib.request

    src = Source(uri, "http")
    display = src.display

    def http_open() -> BinaryIO:
        req = urllib.request.Request(uri, headers={"User-Agent": "hone-data"})
        try:
            return urllib.request.urlopen(req, timeout=60)  # noqa: S310 - the user's own data URL
        except urllib.error.HTTPError as err:
            fix = {404: "check the URL", 401: "the server needs credentials: use a pre-signed URL, or s3:// with "
                   "credentials", 403: "the server refuses access: check the URL's signature or permissions"}
            raise HoneError(f"HTTP {err.code} {err.reason} for {display}", where="data_path",
                            fix=fix.get(err.code, "check the URL and the server")) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise HoneError(f"cannot fetch {display}: {scrub(str(reason))}", where="data_path",
                            fix="check the URL, the network, and for https the server certificate "
                                "(SSL_CERT_FILE for a private CA)") from None

    # Fail now (before reading) if the URL does not answer
    first = http_open()
    state = {"first": first}
    src._closers.append(lambda: state.pop("first", first).close())

    def opener() -> BinaryIO:
        resp = state.pop("first", None)
        return resp if resp is not None else http_open()

    src._files = [_File(display, opener)]  # the type comes from the URL path, else from the content
    return src


#: URI scheme -> opener(uri, the rest after "scheme://", options). Adding a data source = one opener + one entry.
SCHEMES: dict[str, Callable[[str, str, SourceOptions], Source]] = {
    "hf": lambda uri, rest, opts: _hub_source(uri, rest, opts),
    "s3": lambda uri, rest, opts: _s3_source(uri, opts),
    "https": lambda uri, rest, opts: _http_source(uri),
    "http": lambda uri, rest, opts: _http_source(uri),
    "pvc": lambda uri, rest, opts: _pvc_source(uri, opts),
    "file": lambda uri, rest, opts: _local_source(uri, Path(rest), str(Path(rest)), opts),
}
