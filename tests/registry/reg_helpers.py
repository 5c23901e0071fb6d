"""Planted secrets and the checks that none of them leaked (shared by the registry tests)."""
from __future__ import annotations

from pathlib import Path

# Secrets a user's environment may hold: none may reach a registry, a log or an artifact.
PLANTED_ENV = {
    "HF_TOKEN": "hf_PLANTEDhuggingface0123456789abcdef",
    "AWS_ACCESS_KEY_ID": "AKIAPLANTED012345678X",
    "AWS_SECRET_ACCESS_KEY": "PLANTED/aws+secret/KEY0123456789abcdefghij",
    "KUBERNETES_AUTH_TOKEN": "sha256~PLANTED-kube-token-0123456789abcdef",
    "MODEL_REGISTRY_TOKEN": "PLANTED-registry-token-0123456789",
}
# Secrets found only in what is registered (parameters, metadata, reports), not in the environment.
PLANTED_INLINE = {
    "url_password": "PLANTEDurlpassword42",
    "hf_inline": "hf_PLANTEDinlinetoken9876543210zyxw",
    "keyed": "PLANTED-api-key-value-31337",
}
ALL_PLANTED = [*PLANTED_ENV.values(), *PLANTED_INLINE.values()]


def assert_no_secret(text: str, where: str) -> None:
    leaked = [s for s in ALL_PLANTED if s in text]
    assert not leaked, f"planted secret(s) {leaked} found in {where}"


def assert_tree_clean(root: Path) -> int:
    """No planted secret in any byte of any file under ``root``; returns the number of files read."""
    n = 0
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            leaked = [s for s in ALL_PLANTED if s.encode() in data]
            assert not leaked, f"planted secret(s) {leaked} found in {f}"
            n += 1
    return n


def register_worker(home: str, model_dir: str, name: str, version: str) -> tuple[str, str, str]:
    """One registration in its own process (the concurrency test): ("ok", version, MLflow version),
    ("refused", version, message) for a clear HoneError, ("crash", version, traceback) otherwise."""
    import traceback

    import torch

    torch.set_num_threads(1)
    from hone.errors import HoneError
    from hone.registry.mlflow_backend import MLflowRegistry

    try:
        info = MLflowRegistry(home=home).register(model_dir, name=name, version=version,
                                                  metadata={"worker_version": version})
        return "ok", version, info.backend_id or ""
    except HoneError as err:
        return "refused", version, str(err)
    except BaseException:  # noqa: BLE001 - reported to the test
        return "crash", version, traceback.format_exc()
