"""A Kubeflow Model Registry on 127.0.0.1 for the tests, checking every request against the real REST contract.

The contract is ../shared/reference/model-registry/model-registry.openapi.yaml (or $HONE_REFERENCE_DIR): each
request must match one of its paths and methods, carry only the query parameters that operation declares
(each valid against its schema), a JSON body valid against the operation's request schema (OpenAPI 3.0 write
rules: no read-only fields), and the bearer token the contract's security scheme asks for. Every response
the fake sends is validated against the contract too, so the fake cannot drift from a real server.
Violations are recorded (and answered 400) for the test to assert on.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

REFERENCE = Path(os.environ.get("HONE_REFERENCE_DIR") or Path(__file__).resolve().parents[2].parent / "shared" /
                 "reference")
SPEC_FILE = REFERENCE / "model-registry" / "model-registry.openapi.yaml"
PREFIX = "/api/model_registry/v1alpha3"


class Contract:
    """Requests and responses checked against an OpenAPI 3.0 document."""

    def __init__(self, spec_file: Path = SPEC_FILE):
        self.spec = yaml.safe_load(spec_file.read_text())
        self.components = self.spec["components"]
        self.routes = []
        for template, item in self.spec["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\{([^}]+)\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")
            for method, op in item.items():
                if method in ("get", "post", "patch", "put", "delete"):
                    self.routes.append((method.upper(), pattern, template, op, item))

    def _deref(self, obj: dict) -> dict:
        while "$ref" in obj:
            node: Any = self.spec
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part]
            obj = node
        return obj

    def _validate(self, instance: Any, schema: dict, read: bool) -> list[str]:
        from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator, oas30_format_checker

        cls = OAS30ReadValidator if read else OAS30WriteValidator
        root = {"allOf": [schema], "components": self.components}
        validator = cls(root, format_checker=oas30_format_checker)
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in validator.iter_errors(instance)]

    def match(self, method: str, path: str):
        for m, pattern, template, op, item in self.routes:
            found = pattern.match(path)
            if found and m == method:
                return template, op, item, found.groupdict()
        return None

    def check_request(self, method: str, path: str, query: dict[str, list[str]], body: bytes | None,
                      content_type: str) -> tuple[str | None, list[str]]:
        """(the operationId, violations)."""
        matched = self.match(method, path)
        if matched is None:
            return None, [f"{method} {path}: no such operation in the contract"]
        template, op, item, path_params = matched
        problems: list[str] = []
        params = {}
        for p in [*item.get("parameters", []), *op.get("parameters", [])]:
            p = self._deref(p)
            params[(p["name"], p["in"])] = p
        for (name, where), p in params.items():
            if where == "path":
                problems += [f"path {name}: {e}" for e in self._validate(path_params.get(name), p["schema"], False)]
            elif where == "query":
                if name not in query:
                    if p.get("required"):
                        problems.append(f"query {name}: required")
                    continue
                for value in query[name]:
                    problems += [f"query {name}={value!r}: {e}" for e in
                                 self._validate(_coerce(value, self._deref(p["schema"])), p["schema"], False)]
        declared = {n for n, w in params if w == "query"}
        problems += [f"query {name}: not a parameter of {op['operationId']}" for name in query if name not in declared]
        body_spec = op.get("requestBody")
        if body_spec is None:
            if body:
                problems.append(f"{op['operationId']} takes no body")
        else:
            body_spec = self._deref(body_spec)
            if not body:
                if body_spec.get("required"):
                    problems.append(f"{op['operationId']}: body required")
            elif "application/json" not in content_type:
                problems.append(f"{op['operationId']}: content type {content_type!r} is not application/json")
            else:
                try:
                    data = json.loads(body)
                except json.JSONDecodeError as err:
                    problems.append(f"{op['operationId']}: body is not JSON ({err})")
                else:
                    schema = body_spec["content"]["application/json"]["schema"]
                    problems += [f"{op['operationId']} body {e}" for e in self._validate(data, schema, False)]
        return op["operationId"], [f"{method} {path}: {p}" for p in problems]

    def check_response(self, method: str, path: str, status: int, data: Any) -> list[str]:
        matched = self.match(method, path)
        if matched is None:
            return []
        _, op, _, _ = matched
        response = op["responses"].get(str(status))
        if response is None:
            return [f"{op['operationId']}: status {status} is not a documented response"]
        response = self._deref(response)
        content = response.get("content", {}).get("application/json")
        if content is None:
            return []
        return [f"{op['operationId']} response {status} {e}" for e in self._validate(data, content["schema"], True)]


def _coerce(value: str, schema: dict) -> Any:
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
        if kind == "boolean":
            return {"true": True, "false": False}[value]
    except (ValueError, KeyError):
        return value
    return value


def _now_ms() -> str:
    return str(int(time.time() * 1000))


class Store:
    """The registry's entities, in memory."""

    def __init__(self):
        self.ids = itertools.count(1)
        self.models: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.artifacts: dict[str, dict] = {}   # id -> artifact
        self.artifact_parent: dict[str, str] = {}  # artifact id -> version id
        self.lock = threading.Lock()

    def new_id(self) -> str:
        return str(next(self.ids))


class FakeModelRegistry:
    """``with FakeModelRegistry(token=...) as mr:`` serves on ``mr.address``:``mr.port`` (https with ``tls``)."""

    def __init__(self, token: str | None = None, tls: tuple[Path, Path] | None = None, contract: Contract | None = None):
        self.token = token
        self.contract = contract or Contract()
        self.store = Store()
        self.requests: list[dict] = []      # every request: method, path, query, body, operation
        self.violations: list[str] = []
        self.tls = tls
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle --------------------------------------------------------------------------------------
    def __enter__(self) -> "FakeModelRegistry":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                fake._handle(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1"

    def operations(self) -> list[str]:
        return [r["operation"] for r in self.requests]

    # -- one request ------------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        op, problems = self.contract.check_request(h.command, url.path, query, body,
                                                   h.headers.get("Content-Type", ""))
        record = {"method": h.command, "path": url.path, "query": query, "operation": op,
                  "body": json.loads(body) if body and body[:1] in (b"{", b"[") else body.decode(errors="replace"),
                  "authorization": h.headers.get("Authorization")}
        self.requests.append(record)
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, url.path, 401, {"code": "401", "message": "unauthorized"})
        if problems:
            self.violations.extend(problems)
            status = 404 if op is None else 400  # what a real server answers for a path it does not serve
            return self._send(h, url.path, status, {"code": str(status), "message": "; ".join(problems)[:2000]})
        q = {k: v[-1] for k, v in query.items()}
        try:
            with self.store.lock:
                status, data = self._route(op, h.command, url.path, q, record["body"])
        except KeyError as err:
            status, data = 404, {"code": "404", "message": f"not found: {err}"}
        self._send(h, url.path, status, data)

    def _send(self, h: BaseHTTPRequestHandler, path: str, status: int, data: Any) -> None:
        self.violations.extend(self.contract.check_response(h.command, path, status, data))
        payload = json.dumps(data).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    # -- the registry ------------------------------------------------------------------------------------
    def _route(self, op: str, method: str, path: str, q: dict[str, str], body: Any) -> tuple[int, Any]:
        s = self.store
        parts = path[len(PREFIX):].strip("/").split("/")
        if op == "getRegisteredModels":
            return 200, _page(sorted(s.models.values(), key=lambda m: int(m["id"])), q)
        if op == "createRegisteredModel":
            if any(m["name"] == body["name"] for m in s.models.values()):
                return 409, {"code": "409", "message": f"registered model {body['name']} already exists"}
            model = {**body, "id": s.new_id(), "state": body.get("state", "LIVE"), **_stamps()}
            s.models[model["id"]] = model
            return 201, model
        if op == "findRegisteredModel":
            return _one([m for m in s.models.values() if _matches(m, q)])
        if op == "getRegisteredModel":
            return 200, s.models[parts[1]]
        if op == "updateRegisteredModel":
            model = s.models[parts[1]]
            model.update({k: v for k, v in body.items()}, lastUpdateTimeSinceEpoch=_now_ms())
            return 200, model
        if op == "getRegisteredModelVersions":
            s.models[parts[1]]
            items = [v for v in s.versions.values() if v["registeredModelId"] == parts[1]]
            return 200, _page(sorted(items, key=lambda v: int(v["id"])), q)
        if op == "createModelVersion":
            s.models[body["registeredModelId"]]
            if any(v["name"] == body["name"] and v["registeredModelId"] == body["registeredModelId"]
                   for v in s.versions.values()):
                return 409, {"code": "409", "message": f"model version {body['name']} already exists"}
            version = {**body, "id": s.new_id(), "state": body.get("state", "LIVE"), **_stamps()}
            s.versions[version["id"]] = version
            return 201, version
        if op == "findModelVersion":
            found = [v for v in s.versions.values() if _matches(v, q, parent="registeredModelId")]
            return _one(found)
        if op == "getModelVersion":
            return 200, s.versions[parts[1]]
        if op == "updateModelVersion":
            version = s.versions[parts[1]]
            version.update(body, lastUpdateTimeSinceEpoch=_now_ms())
            return 200, version
        if op == "upsertModelVersionArtifact":
            s.versions[parts[1]]
            if body.get("id") and body["id"] in s.artifacts:
                s.artifacts[body["id"]].update(body, lastUpdateTimeSinceEpoch=_now_ms())
                return 200, s.artifacts[body["id"]]
            art = {**body, "id": s.new_id(), **_stamps()}
            art.setdefault("state", "UNKNOWN")
            s.artifacts[art["id"]] = art
            s.artifact_parent[art["id"]] = parts[1]
            return 201, art
        if op == "getModelVersionArtifacts":
            s.versions[parts[1]]
            items = [a for i, a in s.artifacts.items() if s.artifact_parent.get(i) == parts[1]]
            return 200, _page(items, q)
        if op == "findModelArtifact":
            found = [a for i, a in s.artifacts.items() if a.get("artifactType") == "model-artifact"
                     and (not q.get("name") or a.get("name") == q["name"])
                     and (not q.get("parentResourceId") or s.artifact_parent.get(i) == q["parentResourceId"])
                     and (not q.get("externalId") or a.get("externalId") == q["externalId"])]
            return _one(found)
        return 501, {"code": "501", "message": f"{op} is not implemented by the test fake"}


def _stamps() -> dict[str, str]:
    now = _now_ms()
    return {"createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now}


def _matches(entity: dict, q: dict[str, str], parent: str | None = None) -> bool:
    if q.get("name") and entity.get("name") != q["name"]:
        return False
    if q.get("externalId") and entity.get("externalId") != q["externalId"]:
        return False
    if parent and q.get("parentResourceId") and entity.get(parent) != q["parentResourceId"]:
        return False
    return True


def _one(found: list[dict]) -> tuple[int, Any]:
    if not found:
        return 404, {"code": "404", "message": "no entity matches the search"}
    return 200, found[0]


def _page(items: list[dict], q: dict[str, str]) -> dict:
    start = int(q.get("nextPageToken") or 0)
    size = int(q.get("pageSize") or 100)
    chunk = items[start:start + size]
    nxt = str(start + size) if start + size < len(items) else ""
    return {"items": chunk, "nextPageToken": nxt, "pageSize": size, "size": len(chunk)}


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A CA-flagged certificate for 127.0.0.1 and its key (PEM files), for the TLS tests."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hone-test-registry")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "ca.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file
