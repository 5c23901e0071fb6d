"""Planted secrets (HF token, AWS keys, Kubernetes token, OCI pull secret) never appear in a manifest, a
request body, a log line, printed output or a saved file, across dry run, submit, wait, logs and errors."""
from __future__ import annotations

import base64
import json
import logging

import pytest
import yaml

import hone.kube as kube
from hone.cli.main import main
from hone.errors import HoneError
from kube_fakes import FakeKube

OCI_PASSWORD = "PLANTED-oci-robot-password-42"


def test_no_secret_leaves_the_process(planted_secrets, monkeypatch, tmp_path, capsys, caplog):
    oci_auth = base64.b64encode(f"robot:{OCI_PASSWORD}".encode()).decode()
    monkeypatch.setenv("OCI_PULL_SECRET_MODEL_DOWNLOAD", json.dumps({"auths": {"quay.io": {"auth": oci_auth}}}))
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "PLANTED-service-password-77")
    secrets = [*planted_secrets.values(), OCI_PASSWORD, oci_auth, "PLANTED-service-password-77"]
    caplog.set_level(logging.DEBUG)  # stricter than the CLI's INFO: the SDK, kubernetes client and urllib3 too
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"model_path": "oci://quay.io/me/granite-modelcar:1.0", "data_path": "data/c.jsonl",
                                   "ckpt_output_dir": "runs/out"}))
    outputs = []
    with FakeKube(planted_secrets["KUBERNETES_AUTH_TOKEN"]) as k8s:
        monkeypatch.setenv("KUBERNETES_SERVER_URL", k8s.url)
        common = ["-n", "team", "--image", "quay.io/me/hone:0.1", "--pvc", "shared", "--secret-env",
                  "HF_TOKEN=hf-token", "--secret-env", "MY_SERVICE_PASSWORD=svc:password"]
        assert main(["kube", "submit", "sft", "--config", str(cfg), *common, "--dry-run"]) == 0
        out = capsys.readouterr()
        outputs.append(out.out + out.err)
        manifest = yaml.safe_load(out.out)
        (tmp_path / "manifest.yaml").write_text(out.out)
        assert main(["kube", "submit", "sft", "--config", str(cfg), *common, "--name", "run-s", "--wait", "--logs",
                     "--poll", "0.1"]) == 0
        for args in (["status", "run-s", "--events"], ["logs", "run-s"], ["list"], ["runtimes"], ["delete", "run-s"],
                     ["status", "run-s"]):
            main(["kube", *args, "-n", "team"])
        kube.train("run-t", model="hf://org/m", dataset="data/c.jsonl", namespace="team", pvc="shared")
        sub = kube.submit("lora", cfg, backend="kubernetes", dry_run=True, num_nodes=2)
        outputs.append(kube.manifest_yaml(sub.manifest))
        monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", "sha256~PLANTED-but-wrong-token-999999")
        secrets.append("sha256~PLANTED-but-wrong-token-999999")
        assert main(["kube", "status", "run-t", "-n", "team"]) == 2
        out = capsys.readouterr()
        outputs.append(out.out + out.err)
        bodies = json.dumps(k8s.received)
    # the pods get the secrets by reference only
    pod_env = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod_env}
    assert refs["HF_TOKEN"] == {"name": "hf-token", "key": "HF_TOKEN"}
    assert refs["MY_SERVICE_PASSWORD"] == {"name": "svc", "key": "password"}
    assert refs["OCI_PULL_SECRET_MODEL_DOWNLOAD"]["name"] == "oci-pull-secret-model-download"
    assert len(k8s.received) == 2 and "Authorization" not in bodies
    saved = "".join(f.read_text(errors="ignore") for f in tmp_path.rglob("*") if f.is_file())
    haystacks = {"printed output": "".join(outputs), "log records": caplog.text, "request bodies": bodies,
                 "saved files": saved}
    for where, text in haystacks.items():
        for s in secrets:
            assert s not in text, f"a planted secret appears in the {where}"
    assert "run-s" in haystacks["printed output"] + caplog.text  # the haystacks are not empty


def test_the_oci_pull_secret_in_a_job_option_is_refused(planted_secrets, monkeypatch):
    docker_cfg = json.dumps({"auths": {"quay.io": {"auth": base64.b64encode(b"u:" + OCI_PASSWORD.encode()).decode()}}})
    monkeypatch.setenv("OCI_PULL_SECRET_MODEL_DOWNLOAD", docker_cfg)
    with pytest.raises(HoneError) as e:
        kube.submit("sft", params={"model_path": "m", "data_path": "d", "ckpt_output_dir": "o"}, dry_run=True,
                    annotations={"note": OCI_PASSWORD})
    assert "--annotations note" in str(e.value) and OCI_PASSWORD not in str(e.value)
