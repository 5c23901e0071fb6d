"""A fake Kubernetes API server for the TrainJob path: what the kubeflow SDK (``TrainerClient``, Kubernetes
backend) and the kubernetes client ask of a cluster with Kubeflow Trainer, served on 127.0.0.1 over HTTP or
TLS (a certificate signed by a private CA made at test time).

- **Validation like a real server**: every TrainJob and ClusterTrainingRuntime body is checked against the
  CRD's ``openAPIV3Schema`` from ``../shared/reference/kubeflow-trainer/`` (translated minimally for
  jsonschema: ``x-kubernetes-int-or-string`` becomes integer-or-string, other ``x-kubernetes-*`` keys are
  dropped, and unknown fields are refused as ``fieldValidation=Strict`` does, instead of being silently
  pruned), plus the name rules the CRDs express in CEL. An invalid body gets 422 ``Invalid``.
- **A controller**: each TrainJob is played out by a thread: pods ``<job>-node-0-<i>-xxxxx`` (the JobSet
  labels the SDK selects on) pending -> running -> succeeded, or failed with a message in the TrainJob's
  ``Failed`` condition and a Warning event, or stuck pending (``FailedScheduling``). Log lines are scripted,
  or, with ``kubelet=True``, the pod's own command is run here as a process (its environment: the spec's
  literal values, ``secretKeyRef`` values from the Secrets this server holds, the ``PET_*`` variables), so
  its output is the pod log and its exit code the outcome.
- **Secrets**: create / get / replace / merge-patch / delete; deleting a TrainJob deletes the Secrets it owns
  (``ownerReferences``), as Kubernetes' garbage collector does.

Test helper only; nothing in hone imports it.
"""
from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlparse

import jsonschema
import yaml

REFERENCE = Path(os.environ.get("HONE_REFERENCE_DIR") or Path(__file__).resolve().parents[2].parent / "shared" /
                 "reference") / "kubeflow-trainer"
GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"
GROUP_PATH = f"/apis/{GROUP}/{VERSION}"
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# -- the CRD schemas -----------------------------------------------------------------------------------------
def _reference(name: str) -> Path:
    path = REFERENCE / name
    if not path.is_file():
        import pytest

        pytest.skip(f"{path} not present (the reference CRDs live in ../shared/reference)")
    return path


def translate(schema: Any) -> Any:
    """An openAPIV3Schema of a CRD as jsonschema: int-or-string, no x-kubernetes-* keys, unknown fields refused
    (except where the schema preserves them)."""
    if isinstance(schema, list):
        return [translate(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: translate(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") and \
            "additionalProperties" not in schema:
        out["additionalProperties"] = False
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out.pop("additionalProperties", None)  # a free-form object (metadata, preserved fields)
    return out


@functools.lru_cache(maxsize=None)
def _crd_validator(file: str):
    crd = yaml.load(_reference(file).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    schema = translate(version["schema"]["openAPIV3Schema"])
    return jsonschema.validators.validator_for(schema)(schema)


def _where(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<root>"


def problems(kind: str, body: dict) -> list[str]:
    """What a real API server would refuse in ``body`` (a TrainJob or ClusterTrainingRuntime), as
    ``path: message`` strings; empty when valid."""
    file = {"TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
            "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml"}[kind]
    out = [f"{_where(e)}: {e.message}" for e in _crd_validator(file).iter_errors(body)]
    if body.get("apiVersion") != f"{GROUP}/{VERSION}" or body.get("kind") != kind:
        out.append(f"apiVersion/kind: expected {GROUP}/{VERSION} {kind}")
    name = str((body.get("metadata") or {}).get("name") or "")
    if kind == "TrainJob":
        if not RFC1035.match(name) or len(name) > 63:
            out.append(f"metadata.name: {name!r} must be an RFC 1035 label of at most 63 characters")
        n = ((body.get("spec") or {}).get("trainer") or {}).get("numProcPerNode")
        if isinstance(n, int) and n < 1:
            out.append("spec.trainer.numProcPerNode: must be >= 1")
    elif not DNS_SUBDOMAIN.match(name):
        out.append(f"metadata.name: {name!r} must be a DNS subdomain")
    return out


def stock_runtime(name: str = "torch-distributed") -> dict:
    """The stock torch-distributed ClusterTrainingRuntime from the reference, optionally renamed (the RHOAI
    ``training-hub`` runtime is one like it)."""
    rt = yaml.safe_load(_reference("torch_distributed.yaml").read_text())
    rt["metadata"]["name"] = name
    return rt


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- TLS material --------------------------------------------------------------------------------------------
@dataclass
class Pki:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_pki(directory: Path, *, common_name: str = "fake-ca") -> Pki:
    """A private CA and a server certificate for 127.0.0.1 / localhost signed by it (cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    pki.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return pki


# -- the simulated cluster -----------------------------------------------------------------------------------
@dataclass
class Scenario:
    """How a TrainJob plays out: ``pending`` s, then ``running`` s, then ``outcome``: complete, failed
    (``message`` in its Failed condition) or stuck (pending forever: nothing can schedule it)."""

    pending: float = 0.2
    running: float = 0.6
    outcome: str = "complete"
    message: str = ("jobset failed: job node-0 has reached the specified backoff limit "
                    "(exit code 1: RuntimeError: CUDA out of memory)")
    log_lines: list[str] = field(default_factory=lambda: [f"hone: step {i} loss {2.5 - i * 0.3:.2f}"
                                                          for i in range(1, 6)] + ["hone: trained 5 steps"])


@dataclass
class Job:
    body: dict
    scenario: Scenario
    phase: str = "pending"  # pending | running | complete | failed
    message: str = ""
    lines: list[str] = field(default_factory=list)
    deleted: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)
    process: subprocess.Popen | None = None
    env_seen: dict[str, str] = field(default_factory=dict)  # kubelet mode: the pod's environment

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]


class FakeApiServer:
    """``with FakeApiServer(token="...", pki=make_pki(dir)) as api: ...`` -- ``api.url``; set
    ``api.scenario`` (or ``api.scenarios[name]``) before a job is created."""

    def __init__(self, token: str | None = "fake-token", *, namespace: str = "team", pki: Pki | None = None,
                 runtimes: list[dict] | None = None, kubelet: bool = False):
        self.token = token
        self.namespace = namespace
        self.pki = pki
        self.kubelet = kubelet
        self.kubelet_path = [os.path.dirname(sys.executable)]  # put first on the pods' PATH
        self.runtimes: dict[str, dict] = {}
        for rt in runtimes if runtimes is not None else [stock_runtime(), stock_runtime("training-hub")]:
            bad = problems("ClusterTrainingRuntime", rt)
            assert not bad, f"the fake server's own runtime is invalid: {bad}"
            self.runtimes[rt["metadata"]["name"]] = rt
        self.jobs: dict[str, Job] = {}
        self.secrets: dict[str, dict] = {}
        self.scenario = Scenario()
        self.scenarios: dict[str, Scenario] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in order
        self.bodies: list[dict] = []  # every body received (TrainJobs, Secrets, patches, runtimes)
        self.rejected: list[str] = []  # 422 messages given
        self.deleted: list[str] = []  # TrainJobs deleted
        self.secrets_deleted: list[str] = []
        self.events: list[dict] = []
        self.forbidden: set[tuple[str, str]] = set()  # (method, resource) answered 403 (RBAC)
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        if pki is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(pki.cert_pem), str(pki.key_pem))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeApiServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for job in list(self.jobs.values()):
            self._stop(job)
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # -- the controller --------------------------------------------------------------------------------------
    def _set(self, job: Job, phase: str, message: str = "") -> None:
        with job.changed:
            job.phase, job.message = phase, message or job.message
            job.changed.notify_all()

    def _emit(self, job: Job, line: str) -> None:
        with job.changed:
            job.lines.append(line)
            job.changed.notify_all()

    def _event(self, kind: str, name: str, reason: str, message: str, type_: str = "Normal") -> None:
        with self.lock:
            self.events.append({"apiVersion": "v1", "kind": "Event",
                                "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": self.namespace},
                                "involvedObject": {"kind": kind, "name": name, "namespace": self.namespace},
                                "reason": reason, "message": message, "type": type_, "firstTimestamp": _now(),
                                "lastTimestamp": _now(), "count": 1})

    def _controller(self, job: Job) -> None:
        sc = job.scenario
        pod0 = self.pod_names(job)[0]
        self._event("TrainJob", job.name, "Created", f"created JobSet {job.name}")
        if sc.outcome == "stuck":
            self._event("Pod", pod0, "FailedScheduling", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. "
                        "preemption: 0/3 nodes are available", "Warning")
            job.deleted.wait()
            return
        if job.deleted.wait(sc.pending):
            return
        self._set(job, "running")
        self._event("Pod", pod0, "Started", "Started container node")
        if self.kubelet:
            code = self._run_pod(job)
            if job.deleted.is_set():
                return
            if code == 0:
                self._set(job, "complete")
            else:
                self._fail(job, f"jobset failed: job node-0 has reached the specified backoff limit (exit code "
                                f"{code}: {next((ln for ln in reversed(job.lines) if ln.strip()), '')[:200]})")
            return
        lines = list(sc.log_lines) + (["Traceback (most recent call last):", "RuntimeError: CUDA out of memory"]
                                      if sc.outcome == "failed" else [])
        for line in lines:
            if job.deleted.wait(sc.running / max(1, len(lines))):
                return
            self._emit(job, line)
        if sc.outcome == "complete":
            self._set(job, "complete")
        elif sc.outcome == "failed":
            self._fail(job, sc.message)
        else:  # "hang": running until deleted
            job.deleted.wait()

    def _fail(self, job: Job, message: str) -> None:
        self._event("Pod", self.pod_names(job)[0], "BackoffLimitExceeded", "Job has reached the specified backoff "
                    "limit", "Warning")
        self._set(job, "failed", message)

    def _pod_env(self, job: Job, node_rank: int, port: int) -> dict[str, str]:
        """The environment a node pod gets: literal values, Secret references resolved, PET_* variables."""
        spec = job.body["spec"]
        # a pod does not inherit the submitter's environment: no proxies, cluster credentials or hone settings
        env = {k: v for k, v in os.environ.items() if k.upper() not in
               ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY") and not k.startswith(("KUBERNETES_", "HONE_"))}
        if os.environ.get("HONE_HOME"):  # the tests' own hone home (a real pod has its image's)
            env["HONE_HOME"] = os.environ["HONE_HOME"]
        entries = list((spec.get("trainer") or {}).get("env") or [])
        for patch in spec.get("runtimePatches") or []:
            for rj in patch["trainingRuntimeSpec"]["template"]["spec"].get("replicatedJobs") or []:
                pod = (((rj.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
                for c in pod.get("containers") or []:
                    if c.get("name") == "node":
                        entries += c.get("env") or []
        for e in entries:
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                continue
            secret = self.secrets.get(ref["name"])
            value = None if secret is None else (secret.get("stringData") or {}).get(ref["key"])
            if value is None and ref.get("optional"):
                env.pop(e["name"], None)  # an optional reference to nothing: the variable is unset
                continue
            if value is None:
                raise RuntimeError(f"CreateContainerConfigError: secret {ref['name']!r} key {ref['key']!r} not found")
            env[e["name"]] = value
        trainer = spec.get("trainer") or {}
        env["PATH"] = os.pathsep.join([*self.kubelet_path, env.get("PATH", "")])  # the image's hone: this one
        env.update({"PET_NNODES": str(trainer.get("numNodes", 1)), "PET_NODE_RANK": str(node_rank),
                    "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)})
        return env

    def _run_pod(self, job: Job) -> int:
        """kubelet mode: node-0's command runs here (one node), its output is the pod log."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        trainer = job.body["spec"]["trainer"]
        try:
            env = self._pod_env(job, 0, port)
        except RuntimeError as err:
            self._emit(job, str(err))
            return 1
        job.env_seen = env
        command = list(trainer["command"]) + list(trainer.get("args") or [])
        job.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       cwd=env.get("HONE_WORKDIR") or None)
        for line in job.process.stdout:
            self._emit(job, line.rstrip("\n"))
        return job.process.wait()

    def _stop(self, job: Job) -> None:
        job.deleted.set()
        if job.process is not None and job.process.poll() is None:
            job.process.kill()
            job.process.wait(10)
        with job.changed:
            job.changed.notify_all()

    # -- views ---------------------------------------------------------------------------------------------
    def pod_names(self, job: Job) -> list[str]:
        n = (job.body["spec"].get("trainer") or {}).get("numNodes", 1)
        return [f"{job.name}-node-0-{i}-{job.body['metadata']['uid'][:5]}" for i in range(n)]

    def job_view(self, job: Job) -> dict:
        body = copy.deepcopy(job.body)
        kind = {"complete": "Complete", "failed": "Failed"}.get(job.phase)
        if kind:
            reason = "JobSetCompleted" if kind == "Complete" else "JobSetFailed"
            body["status"] = {"conditions": [{"type": kind, "status": "True", "reason": reason,
                                              "message": job.message or "jobset completed",
                                              "lastTransitionTime": _now()}]}
        return body

    def pods(self, job: Job) -> list[dict]:
        trainer = job.body["spec"].get("trainer") or {}
        limits = (trainer.get("resourcesPerNode") or {}).get("limits") or {"cpu": "1"}
        image = trainer.get("image") or self.runtimes.get(job.body["spec"]["runtimeRef"]["name"], {}).get(
            "spec", {}).get("template", {}).get("spec", {}).get("replicatedJobs", [{}])[0].get("template", {}).get(
            "spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0].get("image", "runtime-image")
        out = []
        for i, pod in enumerate(self.pod_names(job)):
            phase = {"pending": "Pending", "running": "Running", "complete": "Succeeded",
                     "failed": "Failed" if i == 0 else "Running"}[job.phase]
            state = {"Pending": {"waiting": {"reason": "ContainerCreating"}},
                     "Running": {"running": {"startedAt": _now()}},
                     "Succeeded": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                     "Failed": {"terminated": {"exitCode": 1, "reason": "Error"}}}[phase]
            out.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": self.namespace, "uid": str(uuid.uuid4()),
                             "creationTimestamp": job.body["metadata"]["creationTimestamp"],
                             "labels": {"jobset.sigs.k8s.io/jobset-name": job.name,
                                        "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                        "batch.kubernetes.io/job-completion-index": str(i)}},
                "spec": {"containers": [{"name": "node", "image": image, "imagePullPolicy": "IfNotPresent",
                                         "resources": {"limits": limits, "requests": limits}}]},
                "status": {"phase": phase, "containerStatuses": [{"name": "node", "image": image, "imageID": "",
                                                                  "ready": phase == "Running", "restartCount": 0,
                                                                  "state": state}]},
            })
        return out

    def secret_view(self, secret: dict) -> dict:
        import base64

        body = copy.deepcopy(secret)
        data = body.pop("stringData", {}) or {}
        body["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        return body

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, obj: Any, content_type: str = "application/json") -> None:
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": message, "reason": reason, "code": code})

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                if body is not None:
                    api.bodies.append(copy.deepcopy(body))
                return body

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                path, query = unquote(url.path), parse_qs(url.query)
                with api.lock:
                    api.requests.append((method, path))
                if api.token is not None and self.headers.get("Authorization", "").lower() != \
                        f"bearer {api.token}".lower():
                    self._body()
                    return self._status(401, "Unauthorized", "Unauthorized")
                try:
                    self._dispatch(method, path, query)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _dispatch(self, method: str, path: str, query: dict) -> None:
                for m, resource in api.forbidden:
                    if m == method and f"/{resource}" in path:
                        self._body()
                        return self._status(403, "Forbidden", f'{resource} is forbidden: User "system:serviceaccount:'
                                                              f'team:pipeline-runner" cannot {method.lower()} resource '
                                                              f'"{resource}"')
                if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/configmaps/([^/]+)", path):
                    if m.group(2) == "kubeflow-trainer-public":
                        return self._send(200, {"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": m.group(2), "namespace": m.group(1)},
                                                "data": {"kubeflow_trainer_version": "2.1.0"}})
                    return self._status(404, "NotFound", f'configmaps "{m.group(2)}" not found')
                # cluster training runtimes
                if path == f"{GROUP_PATH}/clustertrainingruntimes":
                    if method == "POST":
                        body = self._body()
                        bad = problems("ClusterTrainingRuntime", body)
                        if bad:
                            api.rejected.append("; ".join(bad))
                            return self._status(422, "Invalid", "ClusterTrainingRuntime.trainer.kubeflow.org "
                                                f"{body.get('metadata', {}).get('name')!r} is invalid: {'; '.join(bad)}")
                        api.runtimes[body["metadata"]["name"]] = body
                        return self._send(201, body)
                    return self._send(200, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterTrainingRuntimeList",
                                            "metadata": {}, "items": list(api.runtimes.values())})
                if m := re.fullmatch(rf"{GROUP_PATH}/clustertrainingruntimes/([^/]+)", path):
                    rt = api.runtimes.get(m.group(1))
                    return self._send(200, rt) if rt else self._status(
                        404, "NotFound", f'clustertrainingruntimes.trainer.kubeflow.org "{m.group(1)}" not found')
                if re.fullmatch(rf"{GROUP_PATH}/namespaces/[^/]+/trainingruntimes", path):
                    return self._send(200, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRuntimeList",
                                            "metadata": {}, "items": []})
                if m := re.fullmatch(rf"{GROUP_PATH}/namespaces/[^/]+/trainingruntimes/([^/]+)", path):
                    return self._status(404, "NotFound", f'trainingruntimes.trainer.kubeflow.org "{m.group(1)}" '
                                                         "not found")
                # train jobs
                if m := re.fullmatch(rf"{GROUP_PATH}/namespaces/([^/]+)/trainjobs", path):
                    if method == "POST":
                        return self._create_job(m.group(1))
                    return self._send(200, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJobList",
                                            "metadata": {}, "items": [api.job_view(j) for j in api.jobs.values()]})
                if m := re.fullmatch(rf"{GROUP_PATH}/namespaces/([^/]+)/trainjobs/([^/]+)", path):
                    job = api.jobs.get(m.group(2))
                    if job is None:
                        return self._status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{m.group(2)}" not found')
                    if method == "DELETE":
                        self._body()
                        api.delete_job(job)
                        return self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                                "status": "Success", "details": {"name": job.name}})
                    return self._send(200, api.job_view(job))
                # pods, logs, events
                if re.fullmatch(r"/api/v1/namespaces/[^/]+/pods", path):
                    selector = query.get("labelSelector", [""])[0]
                    m = re.search(r"jobset\.sigs\.k8s\.io/jobset-name=([^,\s]+)", selector)
                    job = api.jobs.get(m.group(1)) if m else None
                    return self._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                            "items": api.pods(job) if job else []})
                if m := re.fullmatch(r"/api/v1/namespaces/[^/]+/pods/([^/]+)/log", path):
                    return self._log(m.group(1), query.get("follow", ["false"])[0].lower() == "true")
                if re.fullmatch(r"/api/v1/namespaces/[^/]+/events", path):
                    return self._send(200, {"apiVersion": "v1", "kind": "EventList", "metadata": {},
                                            "items": list(api.events)})
                # secrets
                if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/secrets", path):
                    if method == "POST":
                        return self._create_secret(m.group(1))
                    return self._send(200, {"apiVersion": "v1", "kind": "SecretList", "metadata": {},
                                            "items": [api.secret_view(s) for s in api.secrets.values()]})
                if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/secrets/([^/]+)", path):
                    return self._secret(method, m.group(2))
                return self._status(404, "NotFound", f"the server could not find the requested resource ({method} "
                                                     f"{path})")

            def _create_job(self, namespace: str) -> None:
                body = self._body()
                bad = problems("TrainJob", body)
                name = str((body.get("metadata") or {}).get("name"))
                if bad:
                    api.rejected.append("; ".join(bad))
                    return self._status(422, "Invalid", f'TrainJob.trainer.kubeflow.org "{name}" is invalid: '
                                                        + "; ".join(bad))
                rt = body["spec"]["runtimeRef"]
                if rt.get("kind", "ClusterTrainingRuntime") == "ClusterTrainingRuntime" and rt["name"] not in api.runtimes:
                    msg = f'ClusterTrainingRuntime "{rt["name"]}" not found'  # the admission webhook's answer
                    api.rejected.append(msg)
                    return self._status(422, "Invalid", f'TrainJob.trainer.kubeflow.org "{name}" is invalid: {msg}')
                with api.lock:
                    if name in api.jobs:
                        return self._status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" already '
                                                                  "exists")
                    body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(),
                                            resourceVersion="1", generation=1)
                    job = Job(body=body, scenario=copy.deepcopy(api.scenarios.get(name, api.scenario)))
                    api.jobs[name] = job
                threading.Thread(target=api._controller, args=(job,), daemon=True, name=f"ctl-{name}").start()
                return self._send(201, api.job_view(job))

            def _create_secret(self, namespace: str) -> None:
                body = self._body()
                name = str((body.get("metadata") or {}).get("name") or "")
                if body.get("kind") not in (None, "Secret") or not DNS_SUBDOMAIN.match(name) or len(name) > 253:
                    return self._status(422, "Invalid", f'Secret "{name}" is invalid: metadata.name: must be a DNS '
                                                        "subdomain")
                bad_keys = [k for k in {**(body.get("data") or {}), **(body.get("stringData") or {})}
                            if not re.fullmatch(r"[-._a-zA-Z0-9]+", k)]
                if bad_keys:
                    return self._status(422, "Invalid", f'Secret "{name}" is invalid: data[{bad_keys[0]}]: a valid '
                                                        "config key must consist of alphanumeric characters")
                with api.lock:
                    if name in api.secrets:
                        return self._status(409, "AlreadyExists", f'secrets "{name}" already exists')
                    body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
                    api.secrets[name] = self._normalised(body)
                return self._send(201, api.secret_view(api.secrets[name]))

            @staticmethod
            def _normalised(body: dict) -> dict:
                import base64

                data = {k: base64.b64decode(v).decode() for k, v in (body.pop("data", None) or {}).items()}
                body["stringData"] = {**data, **(body.get("stringData") or {})}
                return body

            def _secret(self, method: str, name: str) -> None:
                body = self._body() if method in ("PUT", "PATCH", "DELETE") else None
                with api.lock:
                    secret = api.secrets.get(name)
                    if secret is None:
                        return self._status(404, "NotFound", f'secrets "{name}" not found')
                    if method == "DELETE":
                        api.secrets.pop(name)
                        api.secrets_deleted.append(name)
                        return self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                                "status": "Success"})
                    if method == "PUT":
                        body["metadata"].update(namespace=api.namespace, uid=secret["metadata"]["uid"])
                        api.secrets[name] = self._normalised(body)
                    elif method == "PATCH":  # a merge patch of the metadata (what hone sends)
                        if not isinstance(body, dict):
                            return self._status(415, "UnsupportedMediaType", "only merge patches here")
                        secret["metadata"].update((body.get("metadata") or {}))
                    return self._send(200, api.secret_view(api.secrets[name]))

            def _log(self, pod: str, follow: bool) -> None:
                job = next((j for j in api.jobs.values() if pod in api.pod_names(j)), None)
                if job is None:
                    return self._status(404, "NotFound", f'pods "{pod}" not found')
                if job.phase == "pending":
                    return self._status(400, "BadRequest", f'container "node" in pod "{pod}" is waiting to start: '
                                                           "ContainerCreating")
                if not follow:
                    return self._send(200, ("\n".join(job.lines) + ("\n" if job.lines else "")).encode(),
                                      "text/plain")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                while True:
                    with job.changed:
                        if sent >= len(job.lines) and job.phase == "running" and not job.deleted.is_set():
                            job.changed.wait(0.5)
                        lines, phase = list(job.lines), job.phase
                    for line in lines[sent:]:
                        chunk = (line + "\n").encode()
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                    sent = len(lines)
                    if phase != "running" or job.deleted.is_set():
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                        return

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_PUT(self):
                self._route("PUT")

            def do_PATCH(self):
                self._route("PATCH")

            def do_DELETE(self):
                self._route("DELETE")

        return Handler

    def delete_job(self, job: Job) -> None:
        """Delete a TrainJob: its pods stop, and the garbage collector deletes the Secrets it owns."""
        with self.lock:
            self.jobs.pop(job.name, None)
            self.deleted.append(job.name)
            owned = [n for n, s in self.secrets.items()
                     if any(o.get("uid") == job.body["metadata"]["uid"] for o in s["metadata"].get("ownerReferences")
                            or [])]
            for n in owned:
                self.secrets.pop(n)
                self.secrets_deleted.append(n)
        self._stop(job)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()
