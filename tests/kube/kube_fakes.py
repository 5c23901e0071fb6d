"""A fake Kubernetes API server on 127.0.0.1 with the endpoints the kubeflow SDK's Kubernetes backend uses.

It checks the bearer token, validates every TrainJob it is sent against the TrainJob CRD's openAPIV3Schema
(and the CRD's name rules), lists the stock torch-distributed ClusterTrainingRuntime from
../shared/reference, and plays each job through pending -> running -> complete (or failed, or hanging),
with pods, streaming logs and events. Test helper only."""
from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import yaml

# The CRDs are read from ../shared/reference beside the repository (or $HONE_REFERENCE_DIR), never copied in.
SHARED = Path(os.environ.get("HONE_REFERENCE_DIR") or Path(__file__).resolve().parents[2].parent / "shared" /
              "reference") / "kubeflow-trainer"
CRD_FILE = SHARED / "trainer.kubeflow.org_trainjobs.yaml"
GROUP_PATH = "/apis/trainer.kubeflow.org/v1alpha1"


@functools.lru_cache(maxsize=None)
def _schema_text() -> str:
    if not CRD_FILE.is_file():
        import pytest

        pytest.skip(f"{CRD_FILE} not present (the reference CRDs live in ../shared/reference)")
    crd = yaml.load(CRD_FILE.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return json.dumps(next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"])


def trainjob_schema() -> dict:
    """The TrainJob CRD's v1alpha1 openAPIV3Schema (from ../shared/reference when present)."""
    return json.loads(_schema_text())


@functools.lru_cache(maxsize=None)
def _validator():
    schema = trainjob_schema()
    return jsonschema.validators.validator_for(schema)(schema)


def validate_trainjob(body: dict, schema: dict | None = None) -> None:
    """jsonschema validation against the CRD's openAPIV3Schema, plus the CRD's CEL rules on the name and
    numProcPerNode (jsonschema cannot run CEL)."""
    (_validator() if schema is None else jsonschema.validators.validator_for(schema)(schema)).validate(body)
    name = body["metadata"]["name"]
    if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name) or len(name) > 63:
        raise jsonschema.ValidationError(f"metadata.name {name!r} must be an RFC 1035 label of at most 63 characters")
    n = body["spec"].get("trainer", {}).get("numProcPerNode")
    if n is not None and n < 1:
        raise jsonschema.ValidationError("numProcPerNode must be >= 1")


def stock_runtime() -> dict:
    path = SHARED / "torch_distributed.yaml"
    if not path.is_file():
        import pytest

        pytest.skip(f"{path} not present (the reference CRDs live in ../shared/reference)")
    return yaml.safe_load(path.read_text())


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKube:
    """``with FakeKube(token) as k: ...``; set ``k.scenario`` before jobs are created."""

    def __init__(self, token: str, namespace: str = "team"):
        self.token = token
        self.namespace = namespace
        self.schema = trainjob_schema()
        self.runtimes = [stock_runtime()]
        self.jobs: dict[str, dict] = {}
        self.created: dict[str, float] = {}
        self.received: list[dict] = []  # every TrainJob body POSTed
        self.requests: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        self.forbidden: set[tuple[str, str]] = set()  # (method, resource) answered 403
        self.unavailable = 0  # the next N reads of a TrainJob answer 503 (an API server restarting)
        # seconds pending, seconds running, then outcome: complete | failed | hang | pending (never scheduled)
        self.scenario = {"pending": 0.3, "running": 0.9, "outcome": "complete"}
        self.scenarios: dict[str, dict] = {}
        self.log_lines = [f"hone: step {i} loss {2.5 - i * 0.3:.2f}" for i in range(1, 6)] + ["hone: trained 5 steps"]
        self.lock = threading.Lock()
        kube = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, code: int, obj: dict):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _status(self, code: int, reason: str, message: str):
                self._json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                                  "reason": reason, "code": code})

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {kube.token}":
                    self._status(401, "Unauthorized", "Unauthorized")
                    return False
                return True

            def _route(self, method: str):
                url = urlparse(self.path)
                kube.requests.append((method, url.path))
                if not self._authorized():
                    return
                path, query = url.path, parse_qs(url.query)
                for m, r in kube.forbidden:
                    if m == method and r in path:
                        return self._status(403, "Forbidden", f'{r} is forbidden: User "system:serviceaccount:x" '
                                                              f"cannot {method.lower()} resource")
                if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/configmaps/([^/]+)", path):
                    if m.group(2) == "kubeflow-trainer-public":
                        return self._json(200, {"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": m.group(2), "namespace": m.group(1)},
                                                "data": {"kubeflow_trainer_version": "2.1.0"}})
                    return self._status(404, "NotFound", "configmap not found")
                if path == f"{GROUP_PATH}/clustertrainingruntimes" and method == "GET":
                    return self._json(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1",
                                            "kind": "ClusterTrainingRuntimeList", "metadata": {},
                                            "items": kube.runtimes})
                if m := re.fullmatch(rf"{GROUP_PATH}/clustertrainingruntimes/([^/]+)", path):
                    hit = [r for r in kube.runtimes if r["metadata"]["name"] == m.group(1)]
                    return self._json(200, hit[0]) if hit else self._status(404, "NotFound", "not found")
                if re.fullmatch(rf"{GROUP_PATH}/namespaces/[^/]+/trainingruntimes", path):
                    return self._json(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1",
                                            "kind": "TrainingRuntimeList", "metadata": {}, "items": []})
                if re.fullmatch(rf"{GROUP_PATH}/namespaces/[^/]+/trainingruntimes/[^/]+", path):
                    return self._status(404, "NotFound", "trainingruntimes not found")
                if m := re.fullmatch(rf"{GROUP_PATH}/namespaces/([^/]+)/trainjobs", path):
                    if method == "POST":
                        return self._create(m.group(1))
                    return self._json(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList",
                                            "metadata": {}, "items": [kube.job_view(n) for n in kube.jobs]})
                if m := re.fullmatch(rf"{GROUP_PATH}/namespaces/([^/]+)/trainjobs/([^/]+)", path):
                    name = m.group(2)
                    if name not in kube.jobs:
                        return self._status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
                    if method == "GET" and kube.unavailable > 0:
                        kube.unavailable -= 1
                        return self._status(503, "ServiceUnavailable", "the server is currently unable to handle "
                                                                       "the request")
                    if method == "DELETE":
                        with kube.lock:
                            kube.jobs.pop(name)
                            kube.deleted.append(name)
                        return self._json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                    return self._json(200, kube.job_view(name))
                if re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path):
                    selector = query.get("labelSelector", [""])[0]
                    m = re.search(r"jobset\.sigs\.k8s\.io/jobset-name=([^,\s]+)", selector)
                    pods = kube.pods(m.group(1)) if m and m.group(1) in kube.jobs else []
                    return self._json(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})
                if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", path):
                    return self._log(m.group(2), query.get("follow", ["false"])[0].lower() == "true")
                if re.fullmatch(r"/api/v1/namespaces/([^/]+)/events", path):
                    return self._json(200, {"apiVersion": "v1", "kind": "EventList", "metadata": {},
                                            "items": kube.events()})
                return self._status(404, "NotFound", f"no route {method} {path}")

            def _create(self, namespace: str):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                kube.received.append(json.loads(json.dumps(body)))
                try:
                    validate_trainjob(body)
                except jsonschema.ValidationError as err:
                    return self._status(422, "Invalid", f"TrainJob.trainer.kubeflow.org is invalid: {err.message}")
                name = body["metadata"]["name"]
                if name in kube.jobs:
                    return self._status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" already exists')
                body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(),
                                        resourceVersion="1")
                with kube.lock:
                    kube.jobs[name] = body
                    kube.created[name] = time.monotonic()
                    kube.scenarios[name] = dict(kube.scenario)
                return self._json(201, body)

            def _log(self, pod: str, follow: bool):
                name = pod.split("-node-")[0]
                if name not in kube.jobs:
                    return self._status(404, "NotFound", f'pods "{pod}" not found')
                if kube.phase(name) == "pending":
                    return self._status(400, "BadRequest", f'container "node" in pod "{pod}" is waiting to start: '
                                                           "ContainerCreating")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                sent = 0
                while True:
                    lines = kube.available_lines(name)
                    for line in lines[sent:]:
                        self.wfile.write((line + "\n").encode())
                        self.wfile.flush()
                    sent = len(lines)
                    if not follow or kube.phase(name) != "running" or name not in kube.jobs:
                        return
                    time.sleep(0.05)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    # -- the simulated controller ------------------------------------------------------------------------------
    def phase(self, name: str) -> str:
        sc = self.scenarios.get(name, self.scenario)
        if name not in self.created:
            return "gone"
        t = time.monotonic() - self.created[name]
        if sc["outcome"] == "pending" or t < sc["pending"]:
            return "pending"
        if sc["outcome"] == "hang" or t < sc["pending"] + sc["running"]:
            return "running"
        return sc["outcome"]

    def available_lines(self, name: str) -> list[str]:
        sc = self.scenarios[name]
        phase = self.phase(name)
        if phase == "pending":
            return []
        lines = list(self.log_lines) + (["Traceback (most recent call last):", "RuntimeError: CUDA out of memory"]
                                        if sc["outcome"] == "failed" else [])
        if phase != "running":
            return lines
        t = time.monotonic() - self.created[name] - sc["pending"]
        share = len(lines) if sc["outcome"] == "hang" else int(len(lines) * t / sc["running"]) + 1
        return lines[:share]

    def job_view(self, name: str) -> dict:
        job = json.loads(json.dumps(self.jobs[name]))
        phase = self.phase(name)
        if phase in ("complete", "failed"):
            kind = "Complete" if phase == "complete" else "Failed"
            job["status"] = {"conditions": [{"type": kind, "status": "True", "reason": f"JobSet{kind}",
                                             "message": f"jobset {kind.lower()}", "lastTransitionTime": _now()}]}
        return job

    def pods(self, name: str) -> list[dict]:
        job = self.jobs[name]
        trainer = job["spec"].get("trainer", {})
        phase = {"pending": "Pending", "running": "Running", "complete": "Succeeded", "failed": "Failed"}[self.phase(name)]
        limits = (trainer.get("resourcesPerNode") or {}).get("limits") or {"cpu": "1"}
        out = []
        for i in range(trainer.get("numNodes", 1)):
            out.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{name}-node-0-{i}-x{i}abc", "namespace": self.namespace,
                             "creationTimestamp": job["metadata"]["creationTimestamp"],
                             "labels": {"jobset.sigs.k8s.io/jobset-name": name,
                                        "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                        "batch.kubernetes.io/job-completion-index": str(i)}},
                "spec": {"containers": [{"name": "node", "image": trainer.get("image") or "runtime-image",
                                         "resources": {"limits": limits, "requests": limits}}]},
                "status": {"phase": phase if i == 0 or phase != "Running" else "Running"},
            })
        return out

    def events(self) -> list[dict]:
        items = []
        for name in self.jobs:
            if self.phase(name) == "failed":
                items.append({"metadata": {"name": f"{name}.1", "namespace": self.namespace},
                              "involvedObject": {"kind": "Pod", "name": f"{name}-node-0-0-x0abc"},
                              "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit",
                              "firstTimestamp": _now(), "type": "Warning"})
        return items

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeKube":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
