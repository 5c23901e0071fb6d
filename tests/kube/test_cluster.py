"""Submit / wait / logs / status / delete end to end through the real kubeflow SDK and kubernetes client,
against a fake API server on 127.0.0.1 that validates every TrainJob against the CRD schema and plays
pending -> running -> complete (or failed, or never finishing)."""
from __future__ import annotations

import pytest
import yaml

import hone.kube as kube
from hone.cli.main import main
from hone.errors import HoneError
from kube_fakes import FakeKube

TRAIN = {"model_path": "models/base", "data_path": "data/chat.jsonl", "ckpt_output_dir": "runs/out", "num_epochs": 1}
FAST = ["-n", "team", "--image", "quay.io/me/hone:0.1", "--pvc", "shared", "--poll", "0.1"]


@pytest.fixture
def k8s(planted_secrets, monkeypatch):
    with FakeKube(planted_secrets["KUBERNETES_AUTH_TOKEN"]) as fake:
        monkeypatch.setenv("KUBERNETES_SERVER_URL", fake.url)
        yield fake


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(TRAIN))
    return str(path)


def test_submit_wait_with_logs_then_clean_up(k8s, cfg, capsys):
    code = main(["kube", "submit", "sft", "--config", cfg, "--name", "run-ok", *FAST, "--num-nodes", "2",
                 "--gpu", "1", "--wait", "--logs", "--delete-on-completion"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "submitted TrainJob run-ok in namespace team (2 node(s) x auto process(es), runtime torch-distributed)" in out
    statuses = [line.split("run-ok ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    assert statuses[0] == "Created: node-0 Pending, node-1 Pending"
    assert "Running: node-0 Running, node-1 Running" in statuses
    assert statuses[-1] == "Complete: node-0 Succeeded, node-1 Succeeded"
    logged = [line for line in out.splitlines() if line.startswith("hone: ")]
    assert logged == k8s.log_lines  # streamed once each, in order, across the pending retries
    assert "TrainJob run-ok completed; deleted" in out
    assert k8s.deleted == ["run-ok"]
    # the server received (and schema-validated) exactly the manifest --dry-run shows
    assert len(k8s.received) == 1
    capsys.readouterr()
    assert main(["kube", "submit", "sft", "--config", cfg, "--name", "run-ok", *FAST[:-2], "--num-nodes", "2",
                 "--gpu", "1", "--dry-run"]) == 0
    dry = yaml.safe_load(capsys.readouterr().out)
    dry["metadata"].pop("namespace")
    assert k8s.received[0] == dry


def test_failed_job_is_reported_and_deleted(k8s, cfg, capsys):
    k8s.scenario = {"pending": 0.2, "running": 0.3, "outcome": "failed"}
    code = main(["kube", "submit", "sft", "--config", cfg, "--name", "run-bad", *FAST, "--wait", "--logs",
                 "--delete-on-failure"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert "error: TrainJob run-bad failed: JobSetFailed: jobset failed; the TrainJob was deleted" in err
    assert "BackoffLimitExceeded: Job has reached the specified backoff limit" in err
    assert "hone kube logs run-bad" in err
    assert "RuntimeError: CUDA out of memory" in out  # the log was streamed before the failure was reported
    assert "Failed: node-0 Failed" in out
    assert k8s.deleted == ["run-bad"]


def test_timeout_deletes_or_leaves_the_job_and_says_so(k8s, cfg, capsys):
    k8s.scenario = {"pending": 0.1, "running": 0, "outcome": "hang"}
    code = main(["kube", "submit", "sft", "--config", cfg, "--name", "run-slow", *FAST, "--wait", "--timeout", "0.6",
                 "--delete-on-failure"])
    err = capsys.readouterr().err
    assert code == 2 and "TrainJob run-slow still Running after 0.6s" in err and "was deleted" in err
    assert k8s.deleted == ["run-slow"]
    # without --delete-on-failure the job keeps running and the message says how to stop it
    assert main(["kube", "submit", "sft", "--config", cfg, "--name", "run-slow2", *FAST]) == 0
    capsys.readouterr()
    assert main(["kube", "wait", "run-slow2", "-n", "team", "--timeout", "0.4", "--poll", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "still Running after 0.4s" in err and "hone kube delete run-slow2" in err
    assert "run-slow2" in k8s.jobs


def test_status_logs_list_delete(k8s, cfg, capsys):
    sub = kube.submit("sft", cfg, name="run-x", namespace="team", image="img", num_nodes=2)
    assert str(sub) == "run-x" and sub.namespace == "team"
    # logs retry while the pod is pending (the API answers 400 ContainerCreating), then stream to the end
    lines = list(kube.logs("run-x", follow=True, poll_interval=0.1, namespace="team"))
    assert lines == k8s.log_lines
    st = kube.wait_for("run-x", namespace="team", poll_interval=0.1, timeout=10)
    assert st.status == "Complete" and [s.name for s in st.steps] == ["node-0", "node-1"]
    capsys.readouterr()
    assert main(["kube", "status", "run-x", "-n", "team", "--events"]) == 0
    out = capsys.readouterr().out
    assert "TrainJob run-x (namespace team): Complete" in out and "node-1" in out and "Succeeded" in out
    assert main(["kube", "logs", "run-x", "-n", "team"]) == 0
    assert capsys.readouterr().out.splitlines() == k8s.log_lines
    assert main(["kube", "list", "-n", "team"]) == 0
    assert "run-x" in capsys.readouterr().out
    assert main(["kube", "runtimes", "-n", "team"]) == 0
    assert "torch-distributed" in capsys.readouterr().out
    assert main(["kube", "delete", "run-x", "-n", "team"]) == 0
    assert "deleted TrainJob run-x in namespace team" in capsys.readouterr().out
    assert main(["kube", "status", "run-x", "-n", "team"]) == 2
    assert "no TrainJob named 'run-x'" in capsys.readouterr().err


def test_logs_of_a_pod_that_never_starts_time_out(k8s, cfg):
    k8s.scenario = {"pending": 0, "running": 0, "outcome": "pending"}
    kube.submit("sft", cfg, name="run-stuck", namespace="team")
    with pytest.raises(HoneError, match=r"no logs for run-stuck/node-0 after 0.5s: node-0 is Pending") as e:
        list(kube.logs("run-stuck", pending_timeout=0.5, poll_interval=0.1, namespace="team"))
    assert "hone kube status run-stuck --events" in str(e.value)


def test_unknown_runtime_lists_the_available_ones(k8s, cfg, capsys):
    assert main(["kube", "submit", "sft", "--config", cfg, *FAST, "--runtime", "torchtune-llama"]) == 2
    err = capsys.readouterr().err
    assert "training runtime 'torchtune-llama' not found" in err and "use one of: torch-distributed" in err
    assert not k8s.received


def test_api_errors_are_clear(k8s, cfg, capsys, monkeypatch):
    kube.submit("sft", cfg, name="dup", namespace="team")
    assert main(["kube", "submit", "sft", "--config", cfg, "--name", "dup", *FAST]) == 2
    assert "already exists (409)" in capsys.readouterr().err
    k8s.forbidden.add(("POST", "trainjobs"))
    assert main(["kube", "submit", "sft", "--config", cfg, *FAST]) == 2
    err = capsys.readouterr().err
    assert "forbidden (403)" in err and "docs/kubernetes.md" in err
    monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", "wrong-token-0123456789")
    assert main(["kube", "status", "dup", "-n", "team"]) == 2
    err = capsys.readouterr().err
    assert "rejected the credentials (401 Unauthorized)" in err and "wrong-token" not in err
    monkeypatch.setenv("KUBERNETES_SERVER_URL", "http://127.0.0.1:9")
    assert main(["kube", "status", "dup", "-n", "team"]) == 2
    assert "cannot reach the Kubernetes API server" in capsys.readouterr().err


def test_credentials_sources(k8s, cfg, capsys, monkeypatch, tmp_path, planted_secrets):
    token = planted_secrets["KUBERNETES_AUTH_TOKEN"]
    kube.submit("sft", cfg, name="run-c", namespace="team")
    # a kubeconfig file (explicit, then the default $KUBECONFIG) instead of the variables
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": k8s.url}}],
        "users": [{"name": "me", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": "team"}}]}))
    monkeypatch.delenv("KUBERNETES_SERVER_URL")
    monkeypatch.delenv("KUBERNETES_AUTH_TOKEN")
    assert main(["kube", "status", "run-c", "--kubeconfig", str(kc)]) == 0
    assert "namespace team" in capsys.readouterr().out  # the context's namespace
    monkeypatch.setenv("KUBECONFIG", str(kc))
    assert main(["kube", "status", "run-c"]) == 0
    capsys.readouterr()
    # nothing at all
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["kube", "status", "run-c"]) == 2
    err = capsys.readouterr().err
    assert "no Kubernetes credentials found" in err and "KUBERNETES_SERVER_URL and KUBERNETES_AUTH_TOKEN" in err
    # half of the kubernetes-credentials pair
    monkeypatch.setenv("KUBERNETES_SERVER_URL", k8s.url)
    assert main(["kube", "status", "run-c"]) == 2
    assert "KUBERNETES_AUTH_TOKEN is not set but KUBERNETES_SERVER_URL is" in capsys.readouterr().err
    monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", token)
    assert main(["kube", "status", "run-c", "-n", "team", "--ca-file", str(tmp_path / "ca.pem")]) == 2
    assert "CA file not found" in capsys.readouterr().err
    assert main(["kube", "status", "run-c", "--kubeconfig", str(tmp_path / "nope")]) == 2
    assert "kubeconfig not found" in capsys.readouterr().err


def test_training_operator_style_train_api(k8s):
    sub = kube.train("fine-tune-granite", model="hf://ibm-granite/granite-3.1-2b-instruct",
                     dataset="hf://org/chat-data", algorithm="lora",
                     training_args={"num_train_epochs": 2, "learning_rate": 1e-4, "lr_scheduler_type": "linear",
                                    "max_steps": -1, "max_seq_len": 2048, "max_tokens_per_gpu": 4096},
                     lora_config={"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "bias": "none"},
                     num_workers=4, num_procs_per_worker=2, resources_per_worker={"gpu": 2, "cpu": 5, "memory": "10G"},
                     namespace="team", image="quay.io/me/hone:0.1", pvc="shared")
    assert str(sub) == "fine-tune-granite"
    body = k8s.received[-1]
    t = body["spec"]["trainer"]
    assert t["numNodes"] == 4
    assert t["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "2", "cpu": "5", "memory": "10G"}
    carried = yaml.safe_load(next(e["value"] for e in t["env"] if e["name"] == "HONE_CONFIG"))
    assert carried["model_path"] == "ibm-granite/granite-3.1-2b-instruct"
    assert carried["data_path"] == "hf://org/chat-data"
    assert (carried["lora_r"], carried["lora_alpha"], carried["lora_dropout"]) == (8, 16, 0.1)
    assert (carried["num_epochs"], carried["learning_rate"], carried["lr_scheduler"]) == (2, 1e-4, "linear")
    assert carried["nproc_per_node"] == 2 and carried["ckpt_output_dir"] == "runs/fine-tune-granite"
    assert "exec hone train lora --config" in t["command"][2]
    with pytest.raises(HoneError, match="unknown parameter 'num_epoch'"):
        kube.train("x", model="m", dataset="d", training_args={"num_epoch": 1}, dry_run=True)
    with pytest.raises(HoneError, match="lora_config given but algorithm is 'sft'"):
        kube.train("x", model="m", dataset="d", algorithm="sft", lora_config={"r": 4}, dry_run=True)
    with pytest.raises(HoneError, match="unsupported lora_config key 'rank'"):
        kube.train("x", model="m", dataset="d", lora_config={"rank": 4}, dry_run=True)


def test_in_cluster_service_account_is_used_inside_a_pod(monkeypatch, tmp_path):
    from hone.kube import credentials

    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("x")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(credentials, "SA_DIR", sa)
    pod_env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    resolved = credentials.resolve_access(credentials.ClusterAccess(namespace="team"), env=pod_env)
    assert resolved.source == "the in-cluster service account (https://10.0.0.1:443)"
    assert resolved.backend_config.namespace == "team" and resolved.backend_config.config_file is None
    cfg = resolved.backend_config.client_configuration
    assert cfg.ssl_ca_cert == str(sa / "ca.crt") and cfg.api_key["authorization"] == "bearer x"
    # the kubernetes-credentials pair still wins over the service account, in the pod's namespace
    (sa / "namespace").write_text("pod-ns\n")
    resolved = credentials.resolve_access(None, env={"KUBERNETES_SERVER_URL": "https://api.example.com:6443",
                                                     "KUBERNETES_AUTH_TOKEN": "t0ken-value"})
    cfg = resolved.backend_config.client_configuration
    assert resolved.backend_config.namespace == "pod-ns" and cfg.host == "https://api.example.com:6443"
    assert cfg.verify_ssl is True and cfg.api_key == {"authorization": "t0ken-value"}
    assert cfg.ssl_ca_cert == str(sa / "ca.crt")  # the pod's CA checks the kubernetes-credentials server


def test_wait_rides_out_a_restarting_api_server(k8s, cfg):
    kube.submit("sft", cfg, name="run-r", namespace="team")
    k8s.unavailable = 3
    st = kube.wait_for("run-r", namespace="team", poll_interval=0.1, timeout=20)
    assert st.status == "Complete" and k8s.unavailable == 0
    k8s.unavailable = 99
    with pytest.raises(HoneError, match="HTTP 503"):
        kube.wait_for("run-r", namespace="team", poll_interval=0.05, timeout=20)
