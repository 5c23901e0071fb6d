"""The TrainJob path against a fake Kubernetes API server (tests/kube/fake_apiserver.py) that validates every
TrainJob / ClusterTrainingRuntime body against the CRDs in ../shared/reference/kubeflow-trainer and plays each
job out: success with logs followed, failure with its message (job deleted), stuck pending with a timeout
(deleted), cancellation (Ctrl-C, SIGTERM: deleted), credentials the way pods get them (service-account token
and CA over TLS with a private CA; KUBERNETES_SERVER_URL/TOKEN checked against the service-account CA, or
KUBERNETES_CA_FILE), credentials of a job's values in a Secret, never in the spec, and the pipeline's training
stage submitting a TrainJob whose pod command really runs (the fake's kubelet mode)."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

import hone.kube as kube
from hone.cli.main import main
from hone.errors import HoneError
from fake_apiserver import FakeApiServer, Scenario, make_pki, problems, stock_runtime

TOKEN = "sha256~fake-apiserver-token-0123456789"
TRAIN = {"model_path": "m", "data_path": "d.jsonl", "ckpt_output_dir": "o"}
IMAGE = "quay.io/me/hone:0.1"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
              "all_proxy")


@pytest.fixture
def outside_a_pod(monkeypatch, tmp_path) -> Path:
    """No service account, no in-cluster address, no proxies from the machine running the tests."""
    sa = tmp_path / "no-serviceaccount"
    sa.mkdir()
    monkeypatch.setenv("HONE_SA_DIR", str(sa))
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", *PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    return sa


@pytest.fixture
def api(outside_a_pod, monkeypatch):
    with FakeApiServer(token=TOKEN) as server:
        monkeypatch.setenv("KUBERNETES_SERVER_URL", server.url)
        monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", TOKEN)
        yield server


def trainjob_bodies(api: FakeApiServer) -> list[dict]:
    return [b for b in api.bodies if b.get("kind") == "TrainJob"]


def node_env(body: dict) -> list[dict]:
    return body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]["containers"][0]["env"]


# -- the server itself -------------------------------------------------------------------------------------------
def test_the_server_validates_bodies_like_a_real_one(api):
    """422 for what the CRDs refuse (wrong types, unknown fields such as imagePullPolicy, which the TrainJob API
    cannot carry, bad names), 401 without the token; hone's own manifests pass."""
    good = kube.submit("sft", params=TRAIN, dry_run=True, name="ok", image=IMAGE, pvc="ws", labels={"a": "b"},
                       annotations={"c": "d"}, image_pull_secrets=["ps"], active_deadline_seconds=60,
                       resources_per_node={"gpu": 1, "cpu": 2, "memory": "4Gi"}, secret_env=["X_TOKEN=s:k"]).manifest
    assert problems("TrainJob", good) == []
    for name in ("torch-distributed", "training-hub"):
        assert problems("ClusterTrainingRuntime", stock_runtime(name)) == []

    def post(path: str, body: dict, token: str = TOKEN) -> tuple[int, dict]:
        req = urllib.request.Request(api.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    jobs = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team/trainjobs"
    pull = json.loads(json.dumps(good))
    node_container = pull["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]["containers"][0]
    node_container["imagePullPolicy"] = "IfNotPresent"
    for broken, words in ((pull, "'imagePullPolicy' was unexpected"),
                          ({**good, "spec": {**good["spec"], "trainer": {**good["spec"]["trainer"], "numNodes": "2"}}},
                           "spec.trainer.numNodes"),
                          ({**good, "metadata": {"name": "Bad_Name"}}, "RFC 1035"),
                          ({**good, "spec": {**good["spec"], "runtimeRef": {"name": "nope"}}}, '"nope" not found')):
        code, status = post(jobs, broken)
        assert code == 422 and status["reason"] == "Invalid" and words in status["message"], status
    runtime = stock_runtime("bad-runtime")
    runtime["spec"]["mlPolicy"]["numNodes"] = "one"
    code, status = post("/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes", runtime)
    assert code == 422 and "mlPolicy.numNodes" in status["message"]
    assert post(jobs, good, token="wrong")[0] == 401
    code, created = post(jobs, good)
    assert code == 201 and created["metadata"]["uid"] and len(api.rejected) == 5


# -- the job's life ------------------------------------------------------------------------------------------------
def test_success_follows_the_logs_and_reads_the_result(api):
    api.scenario = Scenario(pending=0.3, running=0.6)
    lines: list[str] = []
    sub = kube.submit("sft", params=TRAIN, name="run-ok", namespace="team", image=IMAGE, wait=True,
                      follow_logs=True, poll_interval=0.1, timeout=60, on_log=lines.append)
    assert sub.status.status == "Complete" and sub.status.step("node-0").status == "Succeeded"
    assert lines == Scenario().log_lines  # followed while running, each line once
    assert list(kube.logs("run-ok", namespace="team")) == lines  # the result, read again afterwards
    (body,) = trainjob_bodies(api)
    assert body["spec"]["runtimeRef"]["name"] == "torch-distributed" and body["spec"]["trainer"]["image"] == IMAGE
    assert api.rejected == [] and api.deleted == [] and not api.secrets  # nothing secret: no Secret
    assert not any("/secrets" in path for _, path in api.requests)
    assert any(path.startswith("/api/v1/namespaces/team/pods/run-ok-node-0-0-") and path.endswith("/log")
               for _, path in api.requests)


def test_a_failed_job_is_deleted_and_its_message_is_the_error(api):
    api.scenario = Scenario(pending=0.1, running=0.3, outcome="failed")
    lines: list[str] = []
    with pytest.raises(HoneError) as err:
        kube.submit("sft", params=TRAIN, name="run-bad", namespace="team", image=IMAGE, follow_logs=True,
                    poll_interval=0.1, delete_on_failure=True, on_log=lines.append)
    text = str(err.value)
    assert "TrainJob run-bad failed: JobSetFailed: jobset failed" in text and "CUDA out of memory" in text
    assert "the TrainJob was deleted" in text and "BackoffLimitExceeded" in text  # the events
    assert api.deleted == ["run-bad"] and "run-bad" not in api.jobs
    assert "RuntimeError: CUDA out of memory" in lines
    # kept (no delete_on_failure), `hone kube status` shows why it failed
    kube.submit("sft", params=TRAIN, name="run-bad2", namespace="team", image=IMAGE)
    with pytest.raises(HoneError):
        kube.wait_for("run-bad2", namespace="team", poll_interval=0.1)
    st = kube.status("run-bad2", namespace="team")
    assert st.status == "Failed" and "CUDA out of memory" in st.table() and "run-bad2" in api.jobs


def test_the_pull_policy_cannot_be_in_a_trainjob_so_a_floating_tag_is_flagged():
    """The TrainJob CRD has no imagePullPolicy (the server refuses it, see above): pods get Kubernetes' default,
    IfNotPresent for a pinned tag or digest, Always for :latest or no tag, which hone points out."""
    for image, flagged in (("quay.io/me/hone", True), ("quay.io/me/hone:latest", True),
                           ("quay.io/me/hone:0.1.0", False), ("quay.io/me/hone@sha256:" + "a" * 64, False),
                           ("localhost:5000/hone", True)):
        sub = kube.submit("sft", params=TRAIN, dry_run=True, image=image)
        assert any("imagePullPolicy" in n for n in sub.notes) is flagged, image
        assert "imagePullPolicy" not in json.dumps(sub.manifest) and problems("TrainJob", sub.manifest) == []


def test_a_job_stuck_pending_times_out_and_is_deleted(api):
    api.scenario = Scenario(outcome="stuck")
    t0 = time.monotonic()
    with pytest.raises(HoneError) as err:
        kube.submit("sft", params=TRAIN, name="run-stuck", namespace="team", image=IMAGE, follow_logs=True,
                    poll_interval=0.1, timeout=1.5, delete_on_failure=True)
    assert time.monotonic() - t0 < 15
    text = str(err.value)
    assert "still Created after 1.5s" in text and "node-0 Pending" in text and "never started" in text
    assert "FailedScheduling" in text and "Insufficient nvidia.com/gpu" in text  # why, from the events
    assert "the TrainJob was deleted" in text and "quota" in text
    assert api.deleted == ["run-stuck"]


def test_ctrl_c_while_waiting_deletes_the_job(api):
    api.scenario = Scenario(pending=0.1, running=60, outcome="hang")
    kube.submit("sft", params=TRAIN, name="run-int", namespace="team", image=IMAGE)

    def interrupt(st):
        if st.status == "Running":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kube.wait_for("run-int", namespace="team", poll_interval=0.1, on_status=interrupt, delete_on_cancel=True)
    assert api.deleted == ["run-int"]
    # without delete_on_cancel (`hone kube wait`: only watching), the job stays
    kube.submit("sft", params=TRAIN, name="run-int2", namespace="team", image=IMAGE)
    with pytest.raises(KeyboardInterrupt):
        kube.wait_for("run-int2", namespace="team", poll_interval=0.1, on_status=interrupt)
    assert "run-int2" in api.jobs


def test_sigterm_while_waiting_deletes_the_job_and_its_secret(api, monkeypatch):
    """A cancelled pipeline step gets SIGTERM: the wait turns it into an interruption, deletes the TrainJob
    (and the Secret with its credentials), then lets it go on."""
    monkeypatch.setenv("HTTPS_PROXY", "http://alice:PLANTED-proxy-pw-1@proxy.corp:3128")
    api.scenario = Scenario(pending=0.1, running=60, outcome="hang")

    def send_sigterm():
        api.wait_until(lambda: sum(1 for m, p in api.requests if m == "GET" and p.endswith("/trainjobs/run-term"))
                       >= 3 and "run-term" in api.jobs and api.jobs["run-term"].phase == "running", timeout=30)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=send_sigterm, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        kube.submit("sft", params=TRAIN, name="run-term", namespace="team", image=IMAGE, wait=True,
                    poll_interval=0.1, delete_on_failure=True)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    assert api.deleted == ["run-term"] and api.secrets_deleted == ["run-term-credentials"] and not api.secrets


# -- credentials the way pods get them ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    return make_pki(d / "cluster"), make_pki(d / "other", common_name="some-other-ca")


def service_account(directory: Path, token: str, ca: Path | None, namespace: str = "team") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "namespace").write_text(namespace)
    if ca is not None:
        (directory / "ca.crt").write_bytes(ca.read_bytes())
    return directory


def test_in_a_pod_the_service_account_token_and_ca_reach_a_tls_server(pki, outside_a_pod, tmp_path, monkeypatch):
    cluster, _ = pki
    with FakeApiServer(token="sa-token-0123456789", pki=cluster) as api:
        sa = service_account(tmp_path / "sa", "sa-token-0123456789", cluster.ca_pem, namespace="team")
        monkeypatch.setenv("HONE_SA_DIR", str(sa))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        api.scenario = Scenario(pending=0.1, running=0.3)
        lines: list[str] = []
        sub = kube.submit("sft", params=TRAIN, name="run-sa", image=IMAGE, wait=True, follow_logs=True,
                          poll_interval=0.1, on_log=lines.append)
        assert sub.namespace == "team" and sub.status.status == "Complete" and lines == Scenario().log_lines
        assert ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team/trainjobs") in api.requests


def test_a_server_certificate_from_an_unknown_ca_is_a_clear_error(pki, outside_a_pod, tmp_path, monkeypatch):
    cluster, other = pki
    with FakeApiServer(token=TOKEN, pki=cluster) as api:
        # KUBERNETES_SERVER_URL/TOKEN outside a pod: checked against the public roots, which do not know the CA
        monkeypatch.setenv("KUBERNETES_SERVER_URL", api.url)
        monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", TOKEN)
        with pytest.raises(HoneError) as err:
            kube.submit("sft", params=TRAIN, name="run-tls", image=IMAGE)
        text = str(err.value)
        assert "TLS certificate is not trusted (unable to get local issuer certificate)" in text
        assert "the system's public certificate authorities" in text and "KUBERNETES_CA_FILE" in text
        assert TOKEN not in text and "Traceback" not in text
        # in a pod whose service-account CA is another one: the same, naming that CA
        sa = service_account(tmp_path / "sa", "sa-token-0123456789", other.ca_pem)
        monkeypatch.delenv("KUBERNETES_SERVER_URL")
        monkeypatch.delenv("KUBERNETES_AUTH_TOKEN")
        monkeypatch.setenv("HONE_SA_DIR", str(sa))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        with pytest.raises(HoneError) as err:
            kube.submit("sft", params=TRAIN, name="run-tls", image=IMAGE)
        assert "TLS certificate is not trusted" in str(err.value)
        assert f"the service-account CA {sa / 'ca.crt'}" in str(err.value)
        # the CLI says the same, without a traceback, exit 2
        assert main(["kube", "list"]) == 2
        assert not trainjob_bodies(api)


def test_server_url_and_token_use_the_service_account_ca_unless_a_ca_file_is_given(pki, outside_a_pod, tmp_path,
                                                                                   monkeypatch, capsys):
    cluster, other = pki
    with FakeApiServer(token=TOKEN, pki=cluster) as api:
        monkeypatch.setenv("KUBERNETES_SERVER_URL", api.url)
        monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", TOKEN)
        # a pipeline step: the kubernetes-credentials secret gives URL + token, the pod its CA (and namespace)
        sa = service_account(tmp_path / "sa", "the-pods-own-token-not-used", cluster.ca_pem, namespace="team")
        monkeypatch.setenv("HONE_SA_DIR", str(sa))
        assert main(["kube", "runtimes"]) == 0
        assert "training-hub" in capsys.readouterr().out
        # KUBERNETES_CA_FILE overrides the pod's CA: a wrong one fails...
        monkeypatch.setenv("KUBERNETES_CA_FILE", str(other.ca_pem))
        with pytest.raises(HoneError, match="TLS certificate is not trusted") as err:
            kube.list_jobs()
        assert f"KUBERNETES_CA_FILE {other.ca_pem}" in str(err.value)
        # ... and the right one works where the pod's CA is wrong
        service_account(sa, "the-pods-own-token-not-used", other.ca_pem)
        monkeypatch.setenv("KUBERNETES_CA_FILE", str(cluster.ca_pem))
        assert kube.list_jobs() == []
        assert all(m == "GET" for m, _ in api.requests)


# -- secrets never in the spec ----------------------------------------------------------------------------------------
PROXY_PW, DATA_PW, SIGNATURE = "PLANTED-proxy-pw-1", "PLANTED-data-pw-2", "PLANTEDsignature0123456789abcdef"
DATA_URI = f"https://bob:{DATA_PW}@data.example.com/c.jsonl?X-Amz-Signature={SIGNATURE}&X-Amz-Expires=600"


def test_proxy_and_data_uri_credentials_go_in_a_secret_never_in_the_spec(api, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HTTPS_PROXY", f"http://alice:{PROXY_PW}@proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.svc")
    planted = (PROXY_PW, DATA_PW, SIGNATURE)
    # the dry run prints the redacted forms only
    assert main(["kube", "submit", "sft", "--model", "m", "--data", DATA_URI, "--output", "o", "--image", IMAGE,
                 "--name", "run-dry", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert not any(p in out + err for p in planted)
    assert "http://***@proxy.corp:3128" in err and "https://***@data.example.com/c.jsonl" in err
    manifest = yaml.safe_load(out)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in node_env(manifest) if "valueFrom" in e}
    assert refs["HTTPS_PROXY"] == {"name": "run-dry-credentials", "key": "HTTPS_PROXY"}
    assert refs["HONE_SECRET_CONFIG"] == {"name": "run-dry-credentials", "key": "HONE_SECRET_CONFIG"}
    literal = {e["name"]: e["value"] for e in manifest["spec"]["trainer"]["env"]}
    assert literal["NO_PROXY"] == "localhost,.svc" and "HTTPS_PROXY" not in literal
    assert "data_path" not in yaml.safe_load(literal["HONE_CONFIG"])  # only as a redacted comment
    # a real submission: the Secret first, then the TrainJob that references it and owns it
    api.scenario = Scenario(pending=0.1, running=0.3, outcome="failed")
    with pytest.raises(HoneError):
        kube.submit("sft", params={**TRAIN, "data_path": DATA_URI}, name="run-sec", namespace="team", image=IMAGE,
                    poll_interval=0.1, delete_on_failure=True)
    posts = [p for m, p in api.requests if m == "POST"]
    assert posts == ["/api/v1/namespaces/team/secrets", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team/trainjobs"]
    secret = next(b for b in api.bodies if b.get("kind") == "Secret")
    assert secret["metadata"]["name"] == "run-sec-credentials"
    assert secret["stringData"]["HTTPS_PROXY"] == f"http://alice:{PROXY_PW}@proxy.corp:3128"
    assert yaml.safe_load(secret["stringData"]["HONE_SECRET_CONFIG"]) == {"data_path": DATA_URI}
    patch = next(b for b in api.bodies if "metadata" in b and "ownerReferences" in b["metadata"])
    assert patch["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    (body,) = trainjob_bodies(api)
    assert not any(p in json.dumps(body) for p in planted)
    assert {"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {"name": "run-sec-credentials",
                                                                  "key": "HTTPS_PROXY"}}} in node_env(body)
    # deleted with the failed job
    assert api.deleted == ["run-sec"] and "run-sec-credentials" in api.secrets_deleted and not api.secrets
    # a job that completes: its pods are done with the Secret, which goes
    api.scenario = Scenario(pending=0.1, running=0.2)
    kube.submit("sft", params={**TRAIN, "data_path": DATA_URI}, name="run-sec2", namespace="team", image=IMAGE,
                wait=True, poll_interval=0.1)
    assert "run-sec2-credentials" in api.secrets_deleted and not api.secrets and "run-sec2" in api.jobs
    # a job the server refuses leaves no Secret behind
    api.forbidden.add(("POST", "trainjobs"))
    with pytest.raises(HoneError, match=r"creating TrainJob run-sec3: forbidden \(403\)"):
        kube.submit("sft", params={**TRAIN, "data_path": DATA_URI}, name="run-sec3", namespace="team", image=IMAGE)
    assert "run-sec3-credentials" in api.secrets_deleted and not api.secrets and "run-sec3" not in api.jobs
    # nor does a Secret hone may not create: a clear RBAC error, and no TrainJob
    api.forbidden = {("POST", "secrets")}
    with pytest.raises(HoneError, match=r"creating Secret run-sec4-credentials.*forbidden \(403\)") as err:
        kube.submit("sft", params={**TRAIN, "data_path": DATA_URI}, name="run-sec4", namespace="team", image=IMAGE)
    assert "secrets: create" in str(err.value) and "run-sec4" not in api.jobs


def test_the_pod_gets_its_whole_configuration_back_from_the_spec_and_the_secret(outside_a_pod, monkeypatch,
                                                                                 tmp_path):
    """The pod command joins HONE_CONFIG (spec) and HONE_SECRET_CONFIG (the Secret) into one config file: run
    by the fake's kubelet with a stand-in ``hone`` that prints the file it is given."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "hone").write_text('#!/bin/sh\n[ "$1 $2 $3" = "train sft --config" ] || exit 3\ncat "$4"\n')
    (stub / "hone").chmod(0o755)
    monkeypatch.setenv("HTTPS_PROXY", f"http://alice:{PROXY_PW}@proxy.corp:3128")
    with FakeApiServer(token=TOKEN, kubelet=True) as api:
        api.kubelet_path = [str(stub)]
        monkeypatch.setenv("KUBERNETES_SERVER_URL", api.url)
        monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", TOKEN)
        lines: list[str] = []
        kube.submit("sft", params={**TRAIN, "data_path": DATA_URI}, name="run-cfg", namespace="team", image=IMAGE,
                    follow_logs=True, poll_interval=0.1, timeout=60, on_log=lines.append)
        seen = api.jobs["run-cfg"].env_seen
    config = yaml.safe_load("\n".join(lines))
    assert config["data_path"] == DATA_URI and config["model_path"] == "m" and config["ckpt_output_dir"] == "o"
    assert seen["HTTPS_PROXY"] == f"http://alice:{PROXY_PW}@proxy.corp:3128"  # from the Secret only


# -- the pipeline's training stage as a TrainJob ------------------------------------------------------------------
def test_pipeline_training_stage_submits_a_trainjob_whose_pod_trains(tmp_path, tiny_model_dir, outside_a_pod,
                                                                     monkeypatch, capfd):
    """The trainjob branch of the training stage against the fake cluster in kubelet mode: the pod's command
    (hone train, with HONE_CONFIG + the Secret's HONE_SECRET_CONFIG) runs here with the PVC as a local directory;
    the runtime is the pipeline's (training-hub), the image HONE_IMAGE's, the credentials of a proxy go
    through the job's Secret, the logs are followed and the result file read."""
    from hone.pipeline import params as P
    from hone.pipeline import stages as S

    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus {a}?"},
                          {"role": "assistant", "content": f"{a} plus {a} is {2 * a}."}]} for a in range(1, 17)]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("HONE_IMAGE", "quay.io/me/hone:1.2.3")
    monkeypatch.setenv("HTTPS_PROXY", f"http://alice:{PROXY_PW}@proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "*")  # the pod's process downloads nothing; keep it off the proxy anyway
    values = P.resolve("sft", {P.DATA_URI: str(chat), "phase_02_train_man_model": str(tiny_model_dir),
                               "phase_02_train_man_workers": 1, "phase_02_train_man_epochs": 1,
                               "phase_02_train_man_train_batch": 8, "phase_02_train_man_tokens": 4096,
                               "phase_02_train_opt_max_seq_len": 256, "phase_02_train_opt_save_epoch": False,
                               "phase_02_train_opt_env_vars": "", "phase_02_train_opt_cpu": "1",
                               "phase_02_train_opt_memory": "2Gi", "phase_01_dataset_man_data_split": 1.0})
    pvc = tmp_path / "pvc"
    dataset_dir = pvc / "run" / "01-dataset"
    dataset_dir.mkdir(parents=True)
    S.dataset_stage(values, dataset_dir).write(dataset_dir)
    with FakeApiServer(token=TOKEN, kubelet=True) as api:
        monkeypatch.setenv("KUBERNETES_SERVER_URL", api.url)
        monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", TOKEN)
        api.scenario = Scenario(pending=0.1)
        out = pvc / "run" / "02-training"
        result = S.training_stage("sft", values, dataset_dir, out, launcher="trainjob", pvc="ws", pvc_path=str(pvc),
                                  submit_backend="kubernetes", trainjob_timeout=600, trainjob_poll=0.2)
        (body,) = trainjob_bodies(api)
        job = body["metadata"]["name"]
        pod = api.jobs.get(job)
    assert result.summary["steps"] >= 1 and (out / result.files["model"] / "config.json").is_file()
    assert body["spec"]["runtimeRef"]["name"] == "training-hub"
    assert body["spec"]["trainer"]["image"] == "quay.io/me/hone:1.2.3" and body["spec"]["trainer"]["numNodes"] == 1
    assert PROXY_PW not in json.dumps(body)
    assert pod is not None and pod.env_seen["HTTPS_PROXY"].endswith("@proxy.invalid:3128")  # via the Secret
    assert api.secrets_deleted == [f"{job}-credentials"] and api.rejected == []
    printed = capfd.readouterr().out
    assert "loss" in printed.lower() and PROXY_PW not in printed  # node-0's log, followed
