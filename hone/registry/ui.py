"""The MLflow UI on the embedded registry, bound to 127.0.0.1 only."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Callable

from hone.errors import HoneError

HOST = "127.0.0.1"


def ui_command(registry, port: int = 5000) -> tuple[list[str], str]:
    """(argv of ``mlflow server`` on the registry's store, its URL). An MLflow server registry has its own UI:
    argv is then empty and the URL is the server's."""
    from hone.registry.mlflow_backend import MLflowRegistry
    from hone.secrets import scrub_text

    if not isinstance(registry, MLflowRegistry):
        raise HoneError("the UI is MLflow's: this registry is a Kubeflow Model Registry",
                        where="--backend", fix="open the registry in the OpenShift AI dashboard (AI hub > Registry)")
    uri = registry.tracking_uri
    if uri.startswith(("http://", "https://")):
        return [], scrub_text(uri)
    if not 0 < port < 65536:
        raise HoneError(f"invalid port {port}", where="--ui-port", fix="pass a port between 1 and 65535")
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise HoneError(f"port {port} on {HOST} is in use", where="--ui-port",
                            fix="pass another port, e.g. --ui-port 5001") from None
    registry.client  # create the store's schema (under the registry's lock) before the server opens it
    artifacts = registry.artifact_root
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--registry-store-uri", uri,
            "--default-artifact-root", artifacts.as_uri(), "--artifacts-destination", str(artifacts),
            "--host", HOST, "--port", str(port), "--workers", "1"]
    return argv, f"http://{HOST}:{port}"


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether an HTTP server answers at ``url`` (any status counts; the proxy settings are not used)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def serve(argv: list[str], url: str, on_ready: Callable[[str], None], ready_timeout: float = 300.0) -> int:
    """Run the server ``argv``; call ``on_ready(url)`` once it answers at ``url``; wait until it exits or Ctrl-C
    (which stops it). The server's own output goes to stderr. Returns the server's exit status (0 on Ctrl-C)."""
    try:
        out = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        out = None
    proc = subprocess.Popen(argv, stdout=out)
    try:
        deadline = time.monotonic() + ready_timeout
        while not answers(url):
            if proc.poll() is not None:
                raise HoneError(f"the MLflow UI server exited with status {proc.returncode} before answering",
                                where=" ".join(argv[:4]), fix="see its output above")
            if time.monotonic() > deadline:
                raise HoneError(f"the MLflow UI server did not answer at {url} within {ready_timeout:.0f}s",
                                where=" ".join(argv[:4]), fix="see its output above; try again")
            time.sleep(0.5)
        on_ready(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
