"""``--backend local``: run a TrainJob on this machine, before submitting it.

The job is rendered exactly as for the cluster (same checks, same manifest); then the trainer container's
own command runs here, once per node, with the manifest's environment and the ``PET_*`` variables Kubeflow
Trainer would set (nodes meet on 127.0.0.1). So the local run is ``hone train <algo> --config FILE`` from
the same ``HONE_CONFIG``, and hone starts torchrun itself when a node has more than one process. Secrets
the pods would get from Kubernetes Secrets are taken from this environment under the same names. The
image and the resource requests do not apply here (this machine's hone and hardware are used).

Why not the kubeflow SDK's ``LocalProcessBackend``: it runs only ``CustomTrainer`` functions, not a
container command, and builds a fresh virtual environment for every job (30-80 s here, and it must
download torch), so it could not run the job as submitted.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

from hone.errors import HoneError
from hone.kube.config import NODE_CONTAINER
from hone.kube.manifest import PVC_ROOT_ENV, WORKDIR_ENV, JobPlan, Submission, dry_run_manifest

log = logging.getLogger("hone")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(manifest: dict) -> tuple[list[str], dict[str, str]]:
    trainer = manifest["spec"]["trainer"]
    env = {e["name"]: e["value"] for e in trainer.get("env", []) if "value" in e}
    return list(trainer["command"]) + list(trainer.get("args") or []), env


def local_env(p: JobPlan, manifest: dict, workdir: Path, node_rank: int, master_port: int, tmpdir: str
              ) -> dict[str, str]:
    """The environment of one local node: this process's, the manifest's literal values, PET_* as Kubeflow
    Trainer sets them, and secrets by the names the pods would see."""
    _, env = _trainer(manifest)
    missing = [s for s in p.job.secrets() if not s.optional and not os.environ.get(s.env)]
    if missing:
        s = missing[0]
        raise HoneError(f"{s.env} is not set in this environment (in the cluster it comes from Secret "
                        f"{s.secret!r}, key {s.key!r})", where="--secret-env", fix=f"export {s.env} before running "
                                                                                    "with --backend local")
    out = dict(os.environ)
    out.update(env)
    out.update(p.secret_data)  # what the job's own Secret would give the pods (credentials found in its values)
    if WORKDIR_ENV in env:  # the PVC mount directory is this machine's working directory
        out[WORKDIR_ENV] = str(workdir)
        out[PVC_ROOT_ENV] = str(workdir)
    out.update({"PET_NNODES": str(p.num_nodes), "PET_NODE_RANK": str(node_rank), "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(master_port), "TMPDIR": tmpdir})
    bindir = os.path.dirname(sys.executable)  # `hone` of this installation first on PATH
    out["PATH"] = bindir + os.pathsep + out.get("PATH", "")
    return out


def run_local(p: JobPlan, *, workdir: str | Path | None = None,
              on_log: Callable[[str], None] | None = None) -> Submission:
    """Run the job's pods as local processes; returns when all finish (the run's result in ``.status``)."""
    from hone.layout import TrainingLayout
    from hone.training.run import TrainResult

    manifest = dry_run_manifest(p)
    command, _ = _trainer(manifest)
    workdir = Path(workdir or os.getcwd()).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    on_log = on_log or print
    port = _free_port()
    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    log.info("running TrainJob %s locally: %d node(s) x %s process(es) in %s", p.name, p.num_nodes, p.num_procs,
             workdir)
    with tempfile.TemporaryDirectory(prefix=f"hone-{p.name}-") as tmpdir:
        try:
            for rank in range(p.num_nodes):
                env = local_env(p, manifest, workdir, rank, port, tmpdir)
                proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, errors="replace", start_new_session=True)
                procs.append(proc)
                prefix = "" if p.num_nodes == 1 else f"[{NODE_CONTAINER}-{rank}] "
                t = threading.Thread(target=_pump, args=(proc, prefix, on_log), daemon=True)
                t.start()
                readers.append(t)
            codes = [proc.wait() for proc in procs]
        except BaseException:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            for t in readers:
                t.join(timeout=5)
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        i, c = failed[0]
        raise HoneError(f"the local run of TrainJob {p.name} failed: {NODE_CONTAINER}-{i} exited with status {c}",
                        where="the log above", fix="fix the first error it shows; the cluster job would fail the "
                                                   "same way")
    out = Path(str(p.params["ckpt_output_dir"]))
    out = out if out.is_absolute() else workdir / out
    result_file = TrainingLayout(out).result
    result = TrainResult.from_json(json.loads(result_file.read_text())) if result_file.is_file() else None
    if result is not None:  # the pods' paths are relative to the PVC mount: here, to the working directory
        for f in ("output_dir", "final_model_dir", "metrics_path", "loss_chart_png", "loss_chart_html", "params_path",
                  "data_dir", "resumed_from"):
            value = getattr(result, f, None)
            if isinstance(value, Path) and not value.is_absolute():
                setattr(result, f, workdir / value)
        result.checkpoints = [c if c.is_absolute() else workdir / c for c in result.checkpoints]
    return Submission(name=p.name, namespace=None, backend="local", manifest=manifest, notes=p.notes, status=result)


def _pump(proc: subprocess.Popen, prefix: str, on_log: Callable[[str], None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        on_log(prefix + line.rstrip("\n"))


__all__ = ["run_local", "local_env"]
