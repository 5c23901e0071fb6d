"""The MLflow UI on the embedded registry, bound to 127.0.0.1 only."""
from __future__ import annotations

import socket
import sys

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
