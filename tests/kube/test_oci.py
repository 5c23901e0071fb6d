"""oci:// base models: a ModelCar image built on disk, served by a registry on 127.0.0.1 with token auth,
pulled with digest checks, only the models/ tree extracted, usable wherever a model path is."""
from __future__ import annotations

import filecmp
import json
import logging
import tarfile

import pytest

from hone.errors import HoneError
from hone.models import oci
from hone.models.load import load_model, load_tokenizer, resolve_model_path
from oci_fakes import Registry, build_layout, docker_config, tar_layer
from oci_fakes import REGISTRY_PASSWORD, REGISTRY_USER


@pytest.fixture(autouse=True)
def _fresh_memo():
    oci._pulled.clear()
    yield
    oci._pulled.clear()


def test_parse_reference():
    r = oci.parse_reference("oci://quay.io/org/granite-modelcar:1.0")
    assert (r.registry, r.repository, r.tag, r.digest) == ("quay.io", "org/granite-modelcar", "1.0", None)
    r = oci.parse_reference("oci://127.0.0.1:5000/models/tiny")
    assert (r.registry, r.repository, r.reference) == ("127.0.0.1:5000", "models/tiny", "latest")
    d = "sha256:" + "a" * 64
    r = oci.parse_reference(f"oci://registry.local:443/a/b@{d}")
    assert (r.registry, r.repository, r.tag, r.reference) == ("registry.local:443", "a/b", None, d)
    r = oci.parse_reference("oci://ubuntu:22.04")
    assert (r.registry, r.api_host, r.repository, r.tag) == ("docker.io", "registry-1.docker.io", "library/ubuntu", "22.04")
    for bad, msg in [("oci://quay.io/Org/Up:1", "repository"), ("oci://quay.io/a/b@sha256:xyz", "digest"),
                     ("oci://user:pw@quay.io/a/b:1", "credentials"), ("oci://quay.io/a/b:bad tag", "tag")]:
        with pytest.raises(HoneError, match=msg):
            oci.parse_reference(bad)


def test_pull_extracts_only_the_models_tree_and_reuses_the_cache(oci_image, tiny_model_dir, monkeypatch, tmp_path,
                                                                 caplog):
    reg, ref, auth, digest = oci_image
    monkeypatch.setenv(oci.AUTH_ENV, auth)
    caplog.set_level(logging.DEBUG)
    path = oci.pull_model(ref)
    assert path.parent == tmp_path / "oci-cache" and path.name == digest.replace(":", "-")
    for f in tiny_model_dir.iterdir():
        if f.is_file():
            assert filecmp.cmp(f, path / f.name, shallow=False), f.name
    assert (path / "README.md").is_file()
    assert not (path / "STALE.txt").exists()  # removed by the whiteout of the next layer
    assert not any((path / d).exists() for d in ("etc", "bin", "models"))  # nothing outside /models
    meta = json.loads((path / ".hone-oci.json").read_text())
    assert meta["manifest_digest"] == digest and meta["reference"] == ref
    # a second pull in a new process (memo cleared) fetches only the manifest
    oci._pulled.clear()
    before = len(reg.requests)
    assert oci.pull_model(ref) == path
    assert not any("/blobs/" in p for _, p, _ in reg.requests[before:])
    # credentials went to the token service only, and nowhere on disk or in the log
    assert any(p.startswith("/token") and a.startswith("Basic ") for _, p, a in reg.requests)
    text = caplog.text + "".join(f.read_text(errors="ignore") for f in (tmp_path / "oci-cache").rglob("*")
                                 if f.is_file() and f.suffix in ("", ".json", ".md", ".txt", ".jinja"))
    assert REGISTRY_PASSWORD not in text and reg.token not in text


def test_pull_by_digest_and_load_anywhere_a_model_path_works(oci_image, monkeypatch):
    reg, ref, auth, digest = oci_image
    monkeypatch.setenv(oci.AUTH_ENV, auth)
    by_digest = ref.rsplit(":", 1)[0] + "@" + digest
    local = resolve_model_path(by_digest)
    assert (oci.Path(local) / "config.json").is_file()
    tok = load_tokenizer(ref)
    model = load_model(ref)
    assert tok.chat_template and model.config.use_cache is False


def test_registry_credentials_errors(oci_image, monkeypatch, tmp_path):
    reg, ref, auth, _ = oci_image
    monkeypatch.delenv(oci.AUTH_ENV, raising=False)
    with pytest.raises(HoneError, match="denied access|refused") as e:
        oci.pull_model(ref, cache_dir=tmp_path / "c1")
    assert oci.AUTH_ENV in str(e.value)
    monkeypatch.setenv(oci.AUTH_ENV, docker_config(reg.host, REGISTRY_USER, "wrong-password"))
    with pytest.raises(HoneError, match="refused the credentials"):
        oci.pull_model(ref, cache_dir=tmp_path / "c2")
    assert not (tmp_path / "c2").exists() or not any((tmp_path / "c2").glob("sha256-*"))
    # a config file named by the variable works too
    cfg = tmp_path / "config.json"
    cfg.write_text(auth)
    monkeypatch.setenv(oci.AUTH_ENV, str(cfg))
    assert (oci.pull_model(ref, cache_dir=tmp_path / "c3") / "config.json").is_file()


@pytest.mark.parametrize("content, message", [
    ('{"auths": {"x": ', "not valid JSON"),
    ('["not", "a", "config"]', 'no "auths" mapping'),
    ('{"auths": {"HOST": {"auth": "%%%not-base64%%%"}}}', "not base64"),
    ('{"auths": {"HOST": {"auth": "bm9jb2xvbg=="}}}', "does not decode to user:password"),
    ('{"auths": {"HOST": {"email": "x@y"}}}', "neither"),
])
def test_malformed_pull_secret_is_a_clear_error_without_its_contents(oci_image, monkeypatch, content, message):
    reg, ref, _, _ = oci_image
    content = content.replace("HOST", reg.host)
    monkeypatch.setenv(oci.AUTH_ENV, content)
    with pytest.raises(HoneError, match=message) as e:
        oci.pull_model(ref)
    assert oci.AUTH_ENV in str(e.value)
    assert content not in str(e.value) and "%%%not-base64%%%" not in str(e.value)


@pytest.mark.parametrize("entry, message", [
    (("models/../../escape.txt", b"x", {}), "unsafe member"),
    (("models/evil", None, {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}), "unsafe member"),
    (("models/hard", None, {"type": tarfile.LNKTYPE, "linkname": "etc/os-release"}), "outside models/"),
    (("models/dev", None, {"type": tarfile.CHRTYPE}), "unsafe member"),
])
def test_unsafe_layers_are_refused(tmp_path, monkeypatch, entry, message):
    layout = tmp_path / "layout"
    layer = tar_layer([("etc/os-release", b"x", {}), ("models/config.json", b"{}", {}), entry])
    build_layout(layout, [layer], tag="bad", index=False)
    with Registry({"evil/model": layout}) as reg:
        with pytest.raises(HoneError, match=message):
            oci.pull_model(f"oci://{reg.host}/evil/model:bad", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache" / "escape.txt").exists()
    assert not list((tmp_path / "cache").glob("sha256-*"))  # nothing half-written


def test_image_without_a_model_and_missing_tag(tmp_path):
    layout = tmp_path / "layout"
    build_layout(layout, [tar_layer([("etc/os-release", b"x", {})])], tag="empty")
    with Registry({"no/model": layout}) as reg:
        with pytest.raises(HoneError, match="no model under /models"):
            oci.pull_model(f"oci://{reg.host}/no/model:empty", cache_dir=tmp_path / "c")
        with pytest.raises(HoneError, match="not found in registry"):
            oci.pull_model(f"oci://{reg.host}/no/model:missing", cache_dir=tmp_path / "c")


def test_the_most_specific_credentials_entry_wins():
    import base64

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    env = {oci.AUTH_ENV: json.dumps({"auths": {
        "quay.io": {"auth": b64("a:1")},
        "https://quay.io/org/": {"username": "b", "password": "2"},
        "https://index.docker.io/v1/": {"auth": b64("c:3")}}})}
    assert oci.registry_credentials("quay.io", "org/model", env) == ("b", "2")
    assert oci.registry_credentials("quay.io", "other/model", env) == ("a", "1")
    assert oci.registry_credentials("docker.io", "library/ubuntu", env) == ("c", "3")
    assert oci.registry_credentials("ghcr.io", "x/y", env) is None
    assert oci.registry_credentials("quay.io", "org/model", {}) is None
