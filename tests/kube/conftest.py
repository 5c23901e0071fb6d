"""Fixtures of the Kubernetes tests: a ModelCar registry on 127.0.0.1 and planted secrets."""
from __future__ import annotations

import pytest

from oci_fakes import REGISTRY_PASSWORD, REGISTRY_USER, Registry, build_layout, docker_config, model_layers


@pytest.fixture(scope="session")
def oci_image(tiny_model_dir, tmp_path_factory):
    """A ModelCar image of the tiny model served (with token auth) by a registry on 127.0.0.1.

    Yields (registry, oci:// reference, docker config.json contents, manifest digest)."""
    layout = tmp_path_factory.mktemp("oci") / "layout"
    digest = build_layout(layout, model_layers(tiny_model_dir), tag="1.0")
    with Registry({"models/tiny": layout}, user=REGISTRY_USER, password=REGISTRY_PASSWORD) as reg:
        yield reg, f"oci://{reg.host}/models/tiny:1.0", docker_config(reg.host, REGISTRY_USER, REGISTRY_PASSWORD), digest


PLANTED = {
    "HF_TOKEN": "hf_PLANTEDhuggingfacetoken0123456789",
    "AWS_ACCESS_KEY_ID": "AKIAPLANTED0123456789",
    "AWS_SECRET_ACCESS_KEY": "PLANTED/aws+secret/key0123456789abcdefghij",
    "KUBERNETES_AUTH_TOKEN": "sha256~PLANTED-kube-token-0123456789abcdef",
}


@pytest.fixture
def planted_secrets(monkeypatch):
    """Secret values in the environment, as a notebook or pipeline step would have them."""
    for k, v in PLANTED.items():
        monkeypatch.setenv(k, v)
    return dict(PLANTED)


@pytest.fixture(autouse=True)
def _no_ambient_cluster(monkeypatch, tmp_path):
    """No kubeconfig or cluster variables leak in from the machine running the tests."""
    for var in ("KUBERNETES_SERVER_URL", "KUBERNETES_AUTH_TOKEN", "KUBERNETES_CA_FILE", "OCI_PULL_SECRET_MODEL_DOWNLOAD",
                "HONE_IMAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HONE_OCI_CACHE", str(tmp_path / "oci-cache"))
