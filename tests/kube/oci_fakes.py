"""An OCI image layout built on disk, and a tiny registry (OCI distribution API, read-only) serving it on
127.0.0.1 with optional docker-style token authentication. Test helpers only."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import secrets
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REGISTRY_USER = "robot$hone"
REGISTRY_PASSWORD = "PLANTED-registry-password-7f3a9c"

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest, len(data)


def tar_layer(entries: list[tuple[str, bytes | None, dict]]) -> bytes:
    """entries: (name, content or None for a directory, extra TarInfo attributes such as type/linkname)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, extra in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if content is None else 0o644
            if content is None and "type" not in extra:
                info.type = tarfile.DIRTYPE
            for k, v in extra.items():
                setattr(info, k, v)
            if content is not None and info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return gzip.compress(buf.getvalue(), mtime=0)


def model_layers(model_dir: Path) -> list[bytes]:
    """A ModelCar-like image: a base layer with files outside /models, the model under /models split over two
    layers, and a whiteout removing a file the first model layer added."""
    base = tar_layer([("etc", None, {}), ("etc/os-release", b"ID=fake\n", {}),
                      ("bin", None, {}), ("bin/sh", b"#!fake\n", {})])
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    half = len(files) // 2
    first = tar_layer([("models", None, {})] + [(f"models/{p.name}", p.read_bytes(), {}) for p in files[:half]]
                      + [("models/STALE.txt", b"removed by a whiteout in the next layer\n", {})])
    second = tar_layer([(f"./models/{p.name}", p.read_bytes(), {}) for p in files[half:]]
                       + [("models/.wh.STALE.txt", b"", {}), ("models/README.md", b"tiny model\n", {})])
    return [base, first, second]


def build_layout(layout: Path, layers: list[bytes], tag: str = "1.0", *, index: bool = True) -> str:
    """Write an OCI image layout holding one image; returns the image manifest's digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descs = []
    for data in layers:
        d, n = _blob(layout, data)
        descs.append({"mediaType": LAYER_GZ, "digest": d, "size": n})
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cd, cn = _blob(layout, cfg)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": {"mediaType": CONFIG, "digest": cd, "size": cn}, "layers": descs}).encode()
    md, mn = _blob(layout, manifest)
    top = {"mediaType": MANIFEST, "digest": md, "size": mn,
           "annotations": {"org.opencontainers.image.ref.name": tag}}
    if index:  # a multi-platform index in front, as many registries serve
        idx = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
            {"mediaType": MANIFEST, "digest": md, "size": mn, "platform": {"os": "linux", "architecture": "amd64"}},
        ]}).encode()
        xd, xn = _blob(layout, idx)
        top = {"mediaType": INDEX, "digest": xd, "size": xn, "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return md


class Registry:
    """Serve OCI layouts (repository name -> layout directory) over the registry v2 API on 127.0.0.1.

    With ``user``/``password`` set, every /v2/ call needs a bearer token from ``/token`` (basic auth)."""

    def __init__(self, repos: dict[str, Path], user: str | None = None, password: str | None = None):
        self.repos, self.user, self.password = repos, user, password
        self.token = "tok-" + secrets.token_hex(8)
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Authorization header)
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                auth = self.headers.get("Authorization", "")
                registry.requests.append(("GET", self.path, auth))
                if self.path.startswith("/token"):
                    want = "Basic " + base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
                    if auth != want:
                        return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
                    return self._send(200, json.dumps({"token": registry.token}).encode())
                if registry.user and auth != f"Bearer {registry.token}":
                    host = self.headers.get("Host")
                    return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {
                        "WWW-Authenticate": f'Bearer realm="http://{host}/token",service="fake",'
                                            f'scope="repository:x:pull"'})
                if self.path == "/v2/":
                    return self._send(200, b"{}")
                m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/?]+)$", self.path)
                if not m or m.group(1) not in registry.repos:
                    return self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
                layout = registry.repos[m.group(1)]
                kind, ref = m.group(2), m.group(3)
                if kind == "manifests" and not ref.startswith("sha256:"):
                    tops = json.loads((layout / "index.json").read_text())["manifests"]
                    hit = [t for t in tops if t.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
                    if not hit:
                        return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                    ref = hit[0]["digest"]
                path = layout / "blobs" / "sha256" / ref.split(":", 1)[1]
                if not path.is_file():
                    return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                data = path.read_bytes()
                ctype = "application/octet-stream"
                if kind == "manifests":
                    ctype = json.loads(data).get("mediaType", MANIFEST)
                return self._send(200, data, {"Content-Type": ctype, "Docker-Content-Digest": ref})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "Registry":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def docker_config(host: str, user: str, password: str) -> str:
    return json.dumps({"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}})
