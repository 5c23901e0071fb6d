"""The Kubeflow backend against a Model Registry fake on 127.0.0.1 that checks every request against the
reference OpenAPI contract (../shared/reference/model-registry/model-registry.openapi.yaml)."""
from __future__ import annotations

import contextlib
import io
import json
import logging

import pytest

from hone.cli.main import main
from hone.config import RegistryConfig
from hone.errors import HoneError
from hone.registry import open_registry, register_model
from hone.registry.kubeflow_backend import KubeflowRegistry, to_custom_properties
from hone.registry.lineage import Source, build_lineage
from mr_fakes import PREFIX, SPEC_FILE, Contract, FakeModelRegistry, self_signed_cert
from reg_helpers import PLANTED_ENV, PLANTED_INLINE, assert_no_secret

pytestmark = pytest.mark.skipif(not SPEC_FILE.is_file(), reason=f"reference contract not found at {SPEC_FILE}")
TOKEN = PLANTED_ENV["MODEL_REGISTRY_TOKEN"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract()


@pytest.fixture
def server(contract, planted_env):
    with FakeModelRegistry(token=TOKEN, contract=contract) as mr:
        yield mr
    assert not mr.violations, "requests or responses outside the contract:\n" + "\n".join(mr.violations)


def kubeflow(mr: FakeModelRegistry, **kw) -> RegistryConfig:
    return RegistryConfig(registry_backend="kubeflow", registry_address=mr.address, registry_port=mr.port,
                          registry_author="ci-bot", **kw)


def test_the_contract_checker_is_not_vacuous(contract):
    ok = {"name": "m", "registeredModelId": "1", "customProperties": {
        "n": {"metadataType": "MetadataIntValue", "int_value": "12"}}}
    assert contract.check_request("POST", f"{PREFIX}/model_versions", {}, json.dumps(ok).encode(),
                                  "application/json") == ("createModelVersion", [])
    bad_bodies = [
        {**ok, "registeredModelId": "x"},                                             # not an id
        {**ok, "customProperties": {"n": {"metadataType": "MetadataIntValue", "int_value": "3000000000"}}},
        {**ok, "customProperties": {"n": {"metadataType": "MetadataStringValue", "string_value": 1}}},
        {**ok, "state": "DELETED"},                                                   # not a version state
        {"registeredModelId": "1"},                                                   # name missing
    ]
    for body in bad_bodies:
        _, problems = contract.check_request("POST", f"{PREFIX}/model_versions", {}, json.dumps(body).encode(),
                                             "application/json")
        assert problems, body
    assert contract.check_request("GET", "/api/model_registry/v1/registered_models", {}, b"", "")[1]
    assert contract.check_request("GET", f"{PREFIX}/registered_model", {"nam": ["x"]}, b"", "")[1]
    assert contract.check_request("GET", f"{PREFIX}/registered_models", {"pageSize": ["0"]}, b"", "")[1]


def test_register_with_lineage_and_read_it_back(server, trained_run, eval_dir, monkeypatch):
    for key, value in {"HONE_PIPELINE_RUN_ID": "0c8f-run", "HONE_PIPELINE_NAME": "sft-pipeline",
                       "HONE_PIPELINE_RUN_NAME": "sft-run-7", "HONE_PIPELINE_NAMESPACE": "team-a"}.items():
        monkeypatch.setenv(key, value)
    model_dir = trained_run / "hf_format" / "final"
    info = register_model(model_dir, kubeflow(server), name="tiny-bot", version="1.0.0", eval_results=eval_dir,
                          metadata={"team": "nlp", "tokens_seen_total": 3_000_000_000},
                          model_uri="s3://models/tiny-bot/1.0.0", description="first cut", aliases=["champion"])
    expected = to_custom_properties(build_lineage(model_dir, eval_results=eval_dir,
                                                  metadata={"team": "nlp", "tokens_seen_total": 3_000_000_000},
                                                  source=Source.from_env()).metadata())
    assert info.metadata == expected  # what was sent, read back from the server, type for type
    assert info.metadata["tokens_seen_total"] == 3e9  # 10 digits: a double (MetadataIntValue holds 9)
    assert info.metadata["training_final_loss"] == json.loads((trained_run / "training_result.json")
                                                              .read_text())["final_loss"]
    assert {"base_model", "dataset_uri", "dataset_sha256", "algorithm", "training_learning_rate",
            "eval_arc_easy/acc", "pipeline_run_id", "hone_version"} <= set(info.metadata)
    assert (info.uri, info.author, info.description, info.aliases) == \
        ("s3://models/tiny-bot/1.0.0", "ci-bot", "first cut", ["champion"])
    assert info.details["model_source_kind"] == "kfp" and info.details["model_source_class"] == "pipelinerun"
    assert info.details["model_source_id"] == "0c8f-run" and info.details["model_source_name"] == "sft-run-7"
    assert info.details["model_source_group"] == "team-a" and info.details["model_format_name"] == "pytorch"

    # the client's calls, on the contract's paths, with the token
    ops = set(server.operations())
    assert {"getRegisteredModels", "findRegisteredModel", "createRegisteredModel", "findModelVersion",
            "createModelVersion", "upsertModelVersionArtifact", "updateRegisteredModel"} <= ops
    assert all(r["path"].startswith(PREFIX) for r in server.requests)
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    [created] = [r["body"] for r in server.requests if r["operation"] == "createModelVersion"]
    assert created["author"] == "ci-bot" and created["customProperties"]["team"] == \
        {"metadataType": "MetadataStringValue", "string_value": "nlp"}

    reg = open_registry(kubeflow(server))
    [model] = reg.list_models()
    assert (model.name, model.versions, model.aliases) == ("tiny-bot", ["1.0.0"], {"champion": "1.0.0"})
    assert reg.resolve("tiny-bot@champion") == reg.resolve("tiny-bot:1.0.0") == reg.resolve("tiny-bot")
    assert [v.version for v in reg.list_versions("tiny-bot")] == ["1.0.0"]


def test_duplicate_refused_and_nothing_changes(server, trained_run):
    model_dir = trained_run / "hf_format" / "final"
    cfg = kubeflow(server)
    register_model(model_dir, cfg, name="dup", version="2.0.0", metadata={"v": 1})
    before = open_registry(cfg).get("dup", "2.0.0")
    with pytest.raises(HoneError, match="already registered"):
        register_model(model_dir, cfg, name="dup", version="2.0.0", metadata={"v": 2})
    # a race past the check is refused by the server: still a clear error
    reg = open_registry(cfg)
    reg._version = lambda name, version: None
    with pytest.raises(HoneError, match="already registered"):
        reg.register(model_dir, name="dup", version="2.0.0", metadata={"v": 3})
    after = open_registry(cfg).get("dup", "2.0.0")
    assert after == before and after.metadata["v"] == 1
    assert len([r for r in server.requests if r["operation"] == "createModelVersion"]) == 1


def test_planted_secrets_reach_no_request_and_no_stored_field(server, secret_run, eval_dir, caplog):
    caplog.set_level(logging.DEBUG)
    info = register_model(
        secret_run / "hf_format" / "final", kubeflow(server), name="secret-bot", version="1",
        eval_results=eval_dir, description=f"uses {PLANTED_ENV['HF_TOKEN']}",
        metadata={"api_key": PLANTED_INLINE["keyed"], "note": f"pulled with {PLANTED_INLINE['hf_inline']}",
                  "aws": PLANTED_ENV["AWS_SECRET_ACCESS_KEY"]})
    sent = json.dumps([{k: r[k] for k in ("path", "query", "body")} for r in server.requests])
    assert_no_secret(sent, "requests to the registry")
    stored = json.dumps([server.store.models, server.store.versions, server.store.artifacts])
    assert_no_secret(stored, "the registry's stored entities")
    assert_no_secret(json.dumps(info.to_json()), "the registered version")
    assert_no_secret(caplog.text, "logs")
    assert info.metadata["api_key"] == info.metadata["training_hf_token"] == "[REDACTED]"
    # the token travels only in the Authorization header
    assert {r["authorization"] for r in server.requests} == {f"Bearer {TOKEN}"}


def test_credentials_in_the_model_uri_are_refused(server, trained_run):
    with pytest.raises(HoneError, match="holds a credential") as err:
        register_model(trained_run / "hf_format" / "final", kubeflow(server), name="m", version="1",
                       model_uri=f"https://user:{PLANTED_INLINE['url_password']}@store.example.com/m")
    assert PLANTED_INLINE["url_password"] not in str(err.value)


def test_tls_with_custom_ca_and_token_file(contract, tmp_path, trained_run, planted_env, monkeypatch):
    cert, key = self_signed_cert(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789\n")
    monkeypatch.delenv("MODEL_REGISTRY_TOKEN")
    with FakeModelRegistry(token="file-token-0123456789", tls=(cert, key), contract=contract) as mr:
        cfg = kubeflow(mr, registry_token_file=str(token_file), registry_custom_ca=str(cert))
        reg = open_registry(cfg)
        assert reg.secure
        info = register_model(trained_run / "hf_format" / "final", cfg, name="tls-bot", version="1",
                              model_uri="oci://quay.io/team/tiny-bot:1")
        assert info.uri == "oci://quay.io/team/tiny-bot:1"
        assert [m.name for m in open_registry(cfg).list_models()] == ["tls-bot"]
        # without the CA the server's certificate is not trusted: a clear error
        rc, _, err = run_cli("registry", "list", "--backend", "kubeflow", "--address", mr.address, "--port",
                             str(mr.port), "--token-file", str(token_file))
        assert rc == 2 and "cannot reach" in err and "Traceback" not in err
        # a secure connection with no token at all is refused before any request
        with pytest.raises(HoneError, match="needs a token"):
            open_registry(kubeflow(mr, registry_custom_ca=str(cert))).list_models()
    assert not mr.violations, mr.violations


def test_cli_against_the_registry(server, trained_run, tmp_path):
    base = ("--backend", "kubeflow", "--address", server.address, "--port", str(server.port))
    rc, out, err = run_cli("registry", "register", str(trained_run / "hf_format" / "final"), "--name", "cli-bot",
                           "--version", "0.1.0", "--metadata", "team=nlp", "--alias", "dev", *base)
    assert rc == 0, err
    assert "registered cli-bot:0.1.0 (kubeflow)" in out
    rc, out, _ = run_cli("registry", "list", *base)
    assert rc == 0 and "cli-bot  1 version(s), latest 0.1.0  @dev=0.1.0" in out
    rc, out, _ = run_cli("registry", "show", "cli-bot@dev", "--json", *base)
    shown = json.loads(out)
    assert shown["metadata"]["team"] == "nlp" and shown["uri"].startswith("file://")
    # the model's URI is a local directory here: download copies it
    rc, out, err = run_cli("registry", "download", "cli-bot:0.1.0", "--output", str(tmp_path / "dl"), *base)
    assert rc == 0, err
    assert (tmp_path / "dl" / "model.safetensors").is_file() and (tmp_path / "dl" / "hone_registry.json").is_file()
    rc, _, err = run_cli("registry", "show", "cli-bot:9", *base)
    assert rc == 2 and "not in the registry" in err
    rc, _, err = run_cli("registry", "ui", *base)
    assert rc == 2 and "Kubeflow Model Registry" in err


def test_skipped_without_address_and_unreachable_is_clear(trained_run):
    rc, out, err = run_cli("registry", "register", str(trained_run / "hf_format" / "final"), "--name", "m",
                           "--version", "1", "--backend", "kubeflow")
    assert rc == 0 and "registration skipped: registry_address is empty" in out
    rc, out, _ = run_cli("registry", "register", str(trained_run / "hf_format" / "final"), "--name", "m",
                         "--backend", "none")
    assert rc == 0 and "registration skipped" in out
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = run_cli("registry", "list", "--backend", "kubeflow", "--address", "127.0.0.1", "--port", str(port))
    assert rc == 2 and "cannot reach" in err and "Traceback" not in err


def test_api_version_v1_is_outside_the_reference_contract(server):
    """model-registry 0.3.18 speaks /api/model_registry/v1; the reference contract (and OpenShift AI) is
    v1alpha3, which hone uses by default. Asking for v1 reaches paths the contract does not have."""
    reg = KubeflowRegistry(server.address, server.port, api_version="v1")
    with pytest.raises(HoneError, match="registry_api_version"):
        reg.list_models()
    assert server.violations and all("/api/model_registry/v1/" in v for v in server.violations)
    server.violations.clear()
