"""Base models packaged as OCI images (``oci://registry/repo:tag``, the ModelCar images OpenShift AI serves).

A ModelCar image holds the model under ``/models``. :func:`pull_model` fetches the image through the OCI
distribution (registry v2) API with ``requests``, verifies every blob's digest, and extracts only the
``models/`` tree of each layer (tar ``filter="data"``: no absolute paths, no ``..``, no links leaving the
tree, no devices) into a cache directory keyed by the manifest digest; the result is an ordinary Hugging
Face model directory, so ``oci://`` works anywhere a model path does.

Credentials come from ``OCI_PULL_SECRET_MODEL_DOWNLOAD``: the contents of a docker ``config.json`` (or the
path of one), as in the RHOAI pipelines' ``oci-pull-secret-model-download`` secret. They are sent only to
the registry (or its token service) and never logged, saved or put in an error message.

Environment:
  ``OCI_PULL_SECRET_MODEL_DOWNLOAD``  docker config.json contents or path (optional)
  ``HONE_OCI_CACHE``                  cache directory (default ``$XDG_CACHE_HOME/hone/oci``)
  ``HONE_OCI_PLAIN_HTTP``             comma-separated registries reached over plain HTTP (loopback
                                      registries always are)
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping

from hone.errors import HoneError
from hone.io import atomic_dir
from hone.secrets import OCI_AUTH_ENV as AUTH_ENV

log = logging.getLogger("hone")

CACHE_ENV = "HONE_OCI_CACHE"
PLAIN_HTTP_ENV = "HONE_OCI_PLAIN_HTTP"
MODEL_ROOT = "models"
TIMEOUT_S = 60

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")

_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")

_pulled: dict[str, Path] = {}  # reference -> model directory, for this process (tokenizer then model)


# -- references ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OCIReference:
    registry: str  # host[:port] as written
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What the manifest endpoint is asked for: the digest when given, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        return "registry-1.docker.io" if self.registry in _DOCKER_HUB else self.registry

    def __str__(self) -> str:
        return f"oci://{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "") + \
            (f"@{self.digest}" if self.digest else "")


def _bad_reference(uri: str, why: str) -> HoneError:
    return HoneError(f"invalid OCI model reference {uri!r}: {why}", where="model_path",
                     fix="write oci://REGISTRY/REPOSITORY:TAG or oci://REGISTRY/REPOSITORY@sha256:DIGEST, e.g. "
                         "oci://quay.io/org/granite-3b-modelcar:1.0")


def parse_reference(uri: str) -> OCIReference:
    """``oci://registry[:port]/repo/name[:tag][@sha256:digest]`` -> :class:`OCIReference`."""
    if not uri.startswith("oci://"):
        raise _bad_reference(uri, "it does not start with oci://")
    rest = uri[len("oci://"):]
    if "@" in rest.split("/")[0]:
        raise _bad_reference(uri, "credentials do not belong in the reference (use " + AUTH_ENV + ")")
    digest = None
    if "@" in rest:
        rest, digest = rest.rsplit("@", 1)
        if not _DIGEST.match(digest):
            raise _bad_reference(uri, f"digest {digest!r} is not sha256:<64 hex digits>")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.match(tag):
            raise _bad_reference(uri, f"tag {tag!r} is not a valid tag")
    parts = rest.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost" or parts[0].startswith("[")):
        registry, repository = parts[0], "/".join(parts[1:])
    else:
        registry, repository = "docker.io", rest
        if "/" not in repository:
            repository = "library/" + repository
    if not repository or not _REPO.match(repository):
        raise _bad_reference(uri, f"repository {repository!r} is not a valid name (lowercase, digits, . _ - /)")
    if tag is None and digest is None:
        tag = "latest"
    return OCIReference(registry, repository, tag, digest)


# -- credentials -----------------------------------------------------------------------------------------
def _auth_source(env: Mapping[str, str]) -> tuple[str | None, str]:
    raw = env.get(AUTH_ENV, "")
    if not raw.strip():
        return None, ""
    text = raw.strip()
    if not text.startswith("{") and len(text) < 4096 and os.path.isfile(os.path.expanduser(text)):
        path = os.path.expanduser(text)
        return Path(path).read_text(), f"the file named by {AUTH_ENV} ({path})"
    return text, f"environment variable {AUTH_ENV}"


def registry_credentials(registry: str, repository: str = "",
                         env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(username, password) for ``registry`` from the docker config in ``OCI_PULL_SECRET_MODEL_DOWNLOAD``.

    A malformed config is a :class:`HoneError` that names the problem but never shows the contents.
    The most specific matching entry wins (``quay.io/org/repo`` over ``quay.io``).
    """
    text, where = _auth_source(os.environ if env is None else env)
    if text is None:
        return None
    fix = ('store a docker config.json: {"auths": {"quay.io": {"auth": "<base64 of user:password>"}}} '
           "(e.g. the output of `oc get secret pull-secret -n openshift-config -o "
           "jsonpath='{.data.\\.dockerconfigjson}' | base64 -d`)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise HoneError(f"the OCI pull secret is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
                        where=where, fix=fix) from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise HoneError("the OCI pull secret has no \"auths\" mapping (a docker config.json is expected)",
                        where=where, fix=fix)
    target = f"{registry}/{repository}".rstrip("/")
    aliases = [target]
    if registry in _DOCKER_HUB:
        aliases = [f"{alias}/{repository}".rstrip("/") for alias in _DOCKER_HUB]
    best_key, best_len = None, -1
    for key in auths:
        norm = re.sub(r"^[a-z]+://", "", str(key)).rstrip("/")
        norm = re.sub(r"/v[12]$", "", norm)
        if norm in ("index.docker.io", "registry-1.docker.io"):
            norm = "docker.io"
        for t in aliases:
            t = t.replace("index.docker.io", "docker.io").replace("registry-1.docker.io", "docker.io")
            if (t == norm or t.startswith(norm + "/")) and len(norm) > best_len:
                best_key, best_len = key, len(norm)
    if best_key is None:
        return None
    entry = auths[best_key]
    if not isinstance(entry, dict):
        raise HoneError(f"the OCI pull secret's entry for {best_key!r} is not a mapping", where=where, fix=fix)
    if entry.get("username") and entry.get("password"):
        return str(entry["username"]), str(entry["password"])
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise HoneError(f"the OCI pull secret's \"auth\" for {best_key!r} is not base64 of user:password",
                            where=where, fix=fix) from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise HoneError(f"the OCI pull secret's \"auth\" for {best_key!r} does not decode to user:password",
                            where=where, fix=fix)
        return user, password
    if entry.get("identitytoken"):
        raise HoneError(f"the OCI pull secret's entry for {best_key!r} holds only an identity token, which hone "
                        "does not exchange", where=where, fix="use an entry with \"auth\" (user:password or a robot "
                                                              "account token)")
    raise HoneError(f"the OCI pull secret's entry for {best_key!r} has neither \"auth\" nor username/password",
                    where=where, fix=fix)


# -- registry client ---------------------------------------------------------------------------------------
def _plain_http(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry.split("]")[0] + "]"
    listed = {r.strip() for r in os.environ.get(PLAIN_HTTP_ENV, "").split(",") if r.strip()}
    return host in _LOOPBACK or registry in listed or host in listed


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class _Registry:
    """The few registry v2 calls a pull needs: one auth challenge, manifests, blobs."""

    def __init__(self, ref: OCIReference):
        import requests

        self.ref = ref
        self.requests = requests
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "hone-oci"
        scheme = "http" if _plain_http(ref.registry) else "https"
        self.base = f"{scheme}://{ref.api_host}/v2/"
        self.creds = registry_credentials(ref.registry, ref.repository)
        self.auth_header: str | None = None

    def _fail(self, what: str, fix: str) -> HoneError:
        return HoneError(what, where=f"model_path {self.ref}", fix=fix)

    def _authenticate(self, header: str) -> None:
        scheme, params = _challenge(header)
        if scheme == "basic":
            if not self.creds:
                raise self._fail(f"registry {self.ref.registry} requires a login", fix=f"set {AUTH_ENV} to a docker "
                                 "config.json with credentials for it")
            token = base64.b64encode(f"{self.creds[0]}:{self.creds[1]}".encode()).decode()
            self.auth_header = f"Basic {token}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise self._fail(f"registry {self.ref.registry} asked for an unsupported authentication ({scheme})",
                             fix="use a registry that speaks the docker token or basic authentication")
        query = {"service": params.get("service", ""),
                 "scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        try:
            resp = self.session.get(params["realm"], params={k: v for k, v in query.items() if v},
                                    auth=self.creds, timeout=TIMEOUT_S)
        except self.requests.RequestException as err:
            raise self._fail(f"cannot reach the token service of {self.ref.registry}: {type(err).__name__}",
                             fix="check the network path to the registry") from None
        if resp.status_code in (401, 403):
            raise self._fail(f"registry {self.ref.registry} refused the credentials (HTTP {resp.status_code})",
                             fix=f"check the entry for {self.ref.registry} in {AUTH_ENV}" if self.creds else
                             f"set {AUTH_ENV} to a docker config.json with credentials for {self.ref.registry}")
        if resp.status_code != 200:
            raise self._fail(f"the token service of {self.ref.registry} answered HTTP {resp.status_code}",
                             fix="retry later or check the registry")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise self._fail(f"the token service of {self.ref.registry} returned no token",
                             fix="check the registry's authentication setup")
        self.auth_header = f"Bearer {token}"

    def get(self, path: str, *, accept: str | None = None, stream: bool = False):
        url = self.base + path
        headers = {"Accept": accept} if accept else {}
        for attempt in range(2):
            if self.auth_header:
                headers["Authorization"] = self.auth_header
            try:
                resp = self.session.get(url, headers=headers, stream=stream, timeout=TIMEOUT_S)
            except self.requests.RequestException as err:
                raise self._fail(f"cannot reach registry {self.ref.registry} ({type(err).__name__})",
                                 fix="check the registry address and the network (an internal registry over plain "
                                     f"HTTP must be listed in {PLAIN_HTTP_ENV})") from None
            if resp.status_code == 401 and attempt == 0 and "WWW-Authenticate" in resp.headers:
                resp.close()
                self._authenticate(resp.headers["WWW-Authenticate"])
                continue
            break
        if resp.status_code in (401, 403):
            raise self._fail(f"registry {self.ref.registry} denied access to {self.ref.repository} "
                             f"(HTTP {resp.status_code})",
                             fix=f"set {AUTH_ENV} to a docker config.json whose entry for {self.ref.registry} can "
                                 "pull this repository")
        if resp.status_code == 404:
            raise self._fail(f"not found in registry {self.ref.registry}: {self.ref.repository} "
                             f"({path.rsplit('/', 1)[-1]})", fix="check the repository name and the tag or digest")
        if resp.status_code != 200:
            raise self._fail(f"registry {self.ref.registry} answered HTTP {resp.status_code} for {path}",
                             fix="retry later or check the registry")
        return resp

    def manifest(self, reference: str) -> tuple[dict[str, Any], str]:
        resp = self.get(f"{self.ref.repository}/manifests/{reference}", accept=", ".join(INDEX_TYPES + MANIFEST_TYPES))
        body = resp.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise self._fail(f"the manifest's digest {digest} does not match {reference}",
                             fix="the registry returned other content than asked for; retry or check the registry")
        try:
            data = json.loads(body)
        except ValueError:
            raise self._fail("the registry returned a manifest that is not JSON", fix="check the image") from None
        if not isinstance(data, dict):
            raise self._fail("the registry returned a manifest that is not a JSON object", fix="check the image")
        data.setdefault("mediaType", resp.headers.get("Content-Type", "").split(";")[0])
        return data, digest

    def blob(self, digest: str, size: int | None, dest: Path) -> None:
        if not _DIGEST.match(digest):
            raise self._fail(f"unsupported blob digest {digest!r}", fix="only sha256 digests are supported")
        resp = self.get(f"{self.ref.repository}/blobs/{digest}", stream=True)
        h, n = hashlib.sha256(), 0
        with resp, open(dest, "wb") as fh:
            for chunk in resp.iter_content(1 << 20):
                n += len(chunk)
                if size is not None and n > size:
                    raise self._fail(f"blob {digest} is larger than its manifest says ({size} bytes)",
                                     fix="the image is corrupt or tampered with")
                h.update(chunk)
                fh.write(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise self._fail(f"blob {digest} failed its digest check", fix="retry the pull; if it persists the "
                             "image is corrupt or tampered with")


def _platform_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _image_manifest(reg: _Registry) -> tuple[dict[str, Any], str]:
    data, digest = reg.manifest(reg.ref.reference)
    if data.get("mediaType") in INDEX_TYPES or "manifests" in data:
        entries = [m for m in data.get("manifests", []) if isinstance(m, dict) and m.get("digest")]
        if not entries:
            raise reg._fail("the image index lists no manifests", fix="check the image")
        arch = _platform_arch()

        def score(m: dict) -> int:
            p = m.get("platform") or {}
            return (p.get("os") in (None, "linux")) + 2 * (p.get("architecture") in (None, arch))

        chosen = max(entries, key=score)
        data, digest = reg.manifest(chosen["digest"])
    if "layers" not in data:
        raise reg._fail(f"unsupported manifest type {data.get('mediaType')!r}",
                        fix="use an OCI or docker v2 image manifest")
    return data, digest


# -- extraction --------------------------------------------------------------------------------------------
def _models_relative(name: str) -> str | None:
    """``models/a/b`` (also ``./models/a/b``, ``/models/a/b``) -> ``a/b``; ``models`` -> ``""``; else None."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    if not parts or parts[0] != MODEL_ROOT:
        return None
    return "/".join(parts[1:])


def _apply_whiteout(dest: Path, rel: str) -> None:
    path = PurePosixPath(rel)
    if ".." in path.parts:
        return
    if path.name == ".wh..wh..opq":
        target = dest.joinpath(*path.parent.parts)
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        return
    target = dest.joinpath(*path.parent.parts, path.name[len(".wh."):])
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def extract_models_tree(layer: Path, dest: Path, *, label: str = "layer") -> int:
    """Extract the ``models/`` tree of one layer tarball into ``dest``; return the number of members taken.

    tar's ``data`` filter refuses absolute names, ``..``, links that leave ``dest`` and special files; a
    refused member is an error (the image is unsafe), never silently skipped.
    """
    try:
        tar = tarfile.open(layer, mode="r:*")
    except tarfile.CompressionError:
        raise HoneError(f"{label} uses a compression Python cannot read (zstd?)", where="model image",
                        fix="push the model image with gzip or uncompressed layers") from None
    except tarfile.TarError as err:
        raise HoneError(f"{label} is not a tar archive ({err})", where="model image", fix="check the image") from None
    taken = 0
    with tar:
        for member in tar:
            rel = _models_relative(member.name)
            if rel is None or rel == "":
                continue
            if PurePosixPath(rel).name.startswith(".wh."):
                _apply_whiteout(dest, rel)
                continue
            changes: dict[str, Any] = {"name": rel}
            if member.islnk():
                link_rel = _models_relative(member.linkname)
                if not link_rel:
                    raise HoneError(f"{label}: hard link {member.name} points outside models/", where="model image",
                                    fix="the image is unsafe; rebuild it without links leaving /models")
                changes["linkname"] = link_rel
            try:
                tar.extract(member.replace(**changes, deep=False), dest, filter="data")
            except tarfile.FilterError as err:
                raise HoneError(f"{label}: refused unsafe member {member.name!r} ({type(err).__name__})",
                                where="model image",
                                fix="the image is unsafe (absolute path, '..' or a link leaving /models); "
                                    "rebuild it") from None
            taken += 1
    return taken


def _model_dir(root: Path) -> Path | None:
    if (root / "config.json").is_file():
        return root
    found = sorted(p.parent for p in root.rglob("config.json") if p.is_file())
    return found[0] if len(found) == 1 else None


# -- the pull ----------------------------------------------------------------------------------------------
def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hone" / "oci"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # several ranks (or pods on a shared volume) pulling the same image
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pull_model(uri: str, *, cache_dir: str | Path | None = None) -> Path:
    """Pull the model in the ModelCar image ``uri`` and return its local directory (cached by digest)."""
    if uri in _pulled and _pulled[uri].is_dir():
        return _pulled[uri]
    ref = parse_reference(uri)
    root = Path(cache_dir) if cache_dir else cache_root()
    reg = _Registry(ref)
    manifest, digest = _image_manifest(reg)
    dest = root / digest.replace(":", "-")
    with _locked(root / f".{dest.name}.lock"):
        if not (dest / ".hone-oci.json").is_file():
            layers = [l for l in manifest.get("layers", []) if isinstance(l, dict)]
            if not layers:
                raise reg._fail("the image has no layers", fix="check the image")
            log.info("pulling %s (%d layer(s), %s)", ref, len(layers),
                     _size(sum(int(l.get("size") or 0) for l in layers)))
            with atomic_dir(dest) as tmp, tempfile.TemporaryDirectory(dir=root, prefix=".blobs-") as blobs:
                taken = 0
                for i, layer in enumerate(layers):
                    blob = Path(blobs) / f"layer-{i}"
                    reg.blob(str(layer.get("digest")), layer.get("size"), blob)
                    taken += extract_models_tree(blob, tmp, label=f"layer {i + 1} ({layer.get('digest')})")
                    blob.unlink()
                if not taken or _model_dir(tmp) is None:
                    raise reg._fail("the image has no model under /models (no config.json found there)",
                                    fix="use a ModelCar image: the Hugging Face model directory copied to /models")
                (tmp / ".hone-oci.json").write_text(json.dumps(
                    {"reference": str(ref), "manifest_digest": digest,
                     "layers": [l.get("digest") for l in layers]}, indent=2) + "\n")
        else:
            log.info("using cached %s (%s)", ref, digest)
    model = _model_dir(dest)
    if model is None:
        raise HoneError(f"the cached pull of {ref} holds no model", where=str(dest),
                        fix="delete that directory and pull again")
    _pulled[uri] = model
    return model


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
