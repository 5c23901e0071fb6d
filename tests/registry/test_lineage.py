"""Lineage collection, metadata flattening, secret scrubbing, references, configuration and the skip rule."""
from __future__ import annotations

import hashlib
import json
import logging

import pytest

from hone.config import RegistryConfig
from hone.errors import HoneError
from hone.registry import build_lineage, open_registry, parse_metadata, parse_ref, register_model
from hone.registry.kubeflow_backend import to_custom_properties
from hone.registry.lineage import Source, flatten, read_eval_metrics
from hone.secrets import REDACTED, is_secret_key, scrub_mapping, scrub_text
from reg_helpers import ALL_PLANTED, PLANTED_ENV, PLANTED_INLINE, assert_no_secret


def test_lineage_of_a_training_run(trained_run, eval_dir):
    lineage = build_lineage(trained_run / "hf_format" / "final", eval_results=eval_dir,
                            source=Source(pipeline_run_id="run-123", pipeline_name="sft", namespace="team-a"))
    params = json.loads((trained_run / "training_params.json").read_text())
    result = json.loads((trained_run / "training_result.json").read_text())
    meta = lineage.metadata()
    assert lineage.run_dir == str(trained_run)  # found from <run>/hf_format/final
    assert meta["base_model"] == params["model_path"]
    assert meta["dataset_uri"] == params["data_path"]
    assert meta["dataset_sha256"] == hashlib.sha256(open(params["data_path"], "rb").read()).hexdigest()
    assert meta["algorithm"] == "sft"
    for key, value in params.items():  # every hyperparameter
        if key in ("algorithm", "model_path", "data_path") or value is None:
            continue
        if isinstance(value, dict):  # mappings are flattened into training_<key>_<subkey>
            assert all(meta[f"training_{key}_{k}"] == v for k, v in value.items()), key
        else:
            assert meta[f"training_{key}"] == (json.dumps(value) if isinstance(value, list) else value), key
    assert meta["training_final_loss"] == result["final_loss"]
    assert meta["training_steps"] == result["steps"] == 4
    assert meta["eval_arc_easy/acc"] == 0.625 and meta["eval_holdout/loss"] == 2.25
    assert meta["pipeline_run_id"] == "run-123" and meta["pipeline_namespace"] == "team-a"
    assert meta["hone_version"]
    assert {str(eval_dir / n) for n in ("metrics.json", "comparison.md", "eval_config.json")} <= set(lineage.reports)
    assert lineage.source.model_source() == {"model_source_kind": "kfp", "model_source_class": "pipelinerun",
                                             "model_source_name": "sft", "model_source_id": "run-123",
                                             "model_source_group": "team-a"}


def test_lineage_never_holds_a_secret(secret_run, eval_dir, planted_env):
    meta = build_lineage(secret_run / "hf_format" / "final", eval_results=eval_dir,
                         metadata={"api_key": PLANTED_INLINE["keyed"], "note2": f"see {PLANTED_ENV['HF_TOKEN']}"}
                         ).metadata()
    assert_no_secret(json.dumps(meta), "lineage metadata")
    assert meta["training_hf_token"] == REDACTED and meta["api_key"] == REDACTED
    assert meta["dataset_uri"] == f"https://{REDACTED}@data.example.com/chat.jsonl"
    assert "dataset_sha256" not in meta  # not a local file here: not invented


@pytest.mark.parametrize("text, secret", [
    ("https://user:hunter2hunter2@host/x", "hunter2hunter2"),
    ("s3://bucket/k?X-Amz-Signature=abcdef0123456789&X-Amz-Credential=AKIAXYZ", "abcdef0123456789"),
    ("token hf_abcdefghijklmnopqrstuvwx used", "hf_abcdefghijklmnopqrstuvwx"),
    ("key AKIAABCDEFGHIJKLMNOP here", "AKIAABCDEFGHIJKLMNOP"),
    ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
    ("jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl", "eyJzdWIiOiJzeXN0ZW0ifQ"),
])
def test_secret_shapes_are_masked(text, secret):
    assert secret not in scrub_text(text, known=[])


def test_secret_env_values_masked_and_names_kept(planted_env):
    clean = scrub_mapping({"aws_secret_access_key": "x" * 12, "max_tokens_per_gpu": 1024, "author": "me",
                           "path": f"/data/{PLANTED_ENV['AWS_SECRET_ACCESS_KEY']}/f.jsonl",
                           "nested": {"hf_token": "abc", "list": [PLANTED_ENV["KUBERNETES_AUTH_TOKEN"]]}})
    assert clean["aws_secret_access_key"] == REDACTED and clean["nested"]["hf_token"] == REDACTED
    assert clean["max_tokens_per_gpu"] == 1024 and clean["author"] == "me"  # not secret names
    assert_no_secret(json.dumps(clean), "scrubbed mapping")
    for name in ("HF_TOKEN", "registry_token_file", "AWS_ACCESS_KEY_ID", "password", "client-secret"):
        assert is_secret_key(name), name
    for name in ("max_tokens_per_gpu", "num_loss_tokens", "tokenizer", "author", "key_metric"):
        assert not is_secret_key(name), name


def test_flatten_and_custom_property_types():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "nan": float("nan"), "none": None, "ok": True, "bad key!": "v"})
    assert flat == {"a_b": 1, "a_c": "[1, 2]", "nan": "nan", "ok": True, "bad key_": "v"}
    props = to_custom_properties({"small": 999_999_999, "big": 3_000_000_000, "huge": 2**60, "f": 0.5, "b": False})
    assert props == {"small": 999_999_999, "big": 3e9, "huge": str(2**60), "f": 0.5, "b": False}


def test_eval_metrics_formats(tmp_path):
    lm_eval = {"results": {"arc_easy": {"acc,none": 0.7, "acc_stderr,none": 0.01, "alias": "arc_easy"},
                           "gsm8k": {"exact_match,strict-match": 0.2}}}
    assert read_eval_metrics(lm_eval) == {"arc_easy_acc": 0.7, "arc_easy_acc_stderr": 0.01,
                                          "gsm8k_exact_match_strict-match": 0.2}
    assert read_eval_metrics({"a": {"b": 1.5}, "label": "x"}) == {"a_b": 1.5}
    with pytest.raises(HoneError, match="no evaluation results"):
        read_eval_metrics(tmp_path)


def test_metadata_pairs_refs_and_names():
    assert parse_metadata(["team=nlp", "n=3", "x=0.5", "ok=true", "eq=a=b"]) == \
        {"team": "nlp", "n": 3, "x": 0.5, "ok": True, "eq": "a=b"}
    with pytest.raises(HoneError, match="key=value"):
        parse_metadata(["novalue"])
    assert parse_ref("m") == ("m", None, None)
    assert parse_ref("m:1.0.0") == ("m", "1.0.0", None)
    assert parse_ref("m@champion") == ("m", None, "champion")
    for bad in ("m:", "m@", "m@latest", "m:1:2", "", "it's"):
        with pytest.raises(HoneError):
            parse_ref(bad)


def test_lineage_keys_cannot_be_overridden(trained_run):
    with pytest.raises(HoneError, match="recorded by hone"):
        build_lineage(trained_run / "hf_format" / "final", metadata={"base_model": "other"}).metadata()


def test_registry_config_never_takes_a_token():
    with pytest.raises(HoneError, match="NAME of an environment variable") as err:
        RegistryConfig(registry_token_env="sha256~abcdef.ghijk")
    assert "sha256~abcdef" not in str(err.value)
    assert RegistryConfig().registry_backend == "mlflow"


def test_disabled_or_addressless_registry_is_skipped(caplog, trained_run):
    caplog.set_level(logging.INFO, logger="hone")
    assert open_registry(RegistryConfig(registry_backend="none")) is None
    assert "registry_backend=none" in caplog.text
    caplog.clear()
    cfg = RegistryConfig(registry_backend="kubeflow", registry_address="  ")
    assert register_model(trained_run / "hf_format" / "final", cfg, name="m") is None
    assert "registry_address is empty" in caplog.text
    with pytest.raises(HoneError, match="no registry to read"):
        open_registry(cfg, required=True)
    assert_no_secret(caplog.text, "log")
    assert ALL_PLANTED  # the planted list is not empty
