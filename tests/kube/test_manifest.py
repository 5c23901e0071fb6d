"""Every manifest --dry-run can produce validates against the TrainJob CRD; the pods run `hone train` with the
same configuration; bad job options are clear errors (exit 2, no traceback)."""
from __future__ import annotations

import itertools
import json

import jsonschema
import pytest
import yaml

import hone.kube as kube
from hone.cli.main import main
from hone.config import RunConfig
from hone.errors import HoneError
from hone.kube.manifest import CONFIG_ENV
from kube_fakes import validate_trainjob

TRAIN = {"model_path": "models/base", "data_path": "data/chat.jsonl", "ckpt_output_dir": "runs/out",
         "num_epochs": 2, "learning_rate": 1e-5}
EXTRA = {"sft": {}, "osft": {"unfreeze_rank_ratio": 0.25}, "lora": {"lora_r": 8}}


def _trainer_env(manifest: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in manifest["spec"]["trainer"].get("env", [])}


def _pod_patch(manifest: dict) -> dict:
    patches = manifest["spec"].get("runtimePatches") or [{}]
    jobs = patches[0].get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {}).get("replicatedJobs", [{}])
    return jobs[0].get("template", {}).get("spec", {}).get("template", {})


DIMENSIONS = {
    "nodes": [{}, {"num_nodes": 3, "num_procs_per_node": 2}],
    "resources": [{}, {"resources_per_node": {"gpu": 2, "cpu": 5, "memory": "10G"}},
                  {"resources_per_node": "cpu=500m,memory=512Mi,ephemeral-storage=20Gi,mig-1g.5gb=1"}],
    "storage": [{}, {"pvc": "shared-rwx"}, {"pvc": "shared-rwx", "pvc_path": "/workspace/shared/"}],
    "env": [{}, {"env": "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True,NCCL_DEBUG=INFO,"
                        "INSTRUCTLAB_NCCL_TIMEOUT_MS=600000,TOKENIZERS_PARALLELISM=false"}],
    "meta": [{}, {"labels": "kueue.x-k8s.io/queue-name=team-a,app=hone", "annotations": "owner=me,example.com/x=y z",
                  "image_pull_secrets": ["quay-pull"], "image": "quay.io/me/hone:0.1", "name": "tune-1",
                  "namespace": "team", "active_deadline_seconds": 7200}],
    "secrets": [{}, {"default_secrets": False}, {"secret_env": ["HF_TOKEN=my-hf:token", "WANDB_API_KEY=wandb"]}],
}


def _combinations(full: bool) -> list[tuple[dict, ...]]:
    """Every combination of the dimensions' values (full), or each value once plus everything at once."""
    dims = list(DIMENSIONS.values())
    if full:
        return list(itertools.product(*dims))
    width = max(len(d) for d in dims)
    return [tuple(d[min(i, len(d) - 1)] for d in dims) for i in range(width)] + [tuple(d[-1] for d in dims)]


@pytest.mark.parametrize("algorithm", ["sft", "osft", "lora"])
def test_every_option_combination_validates_against_the_crd(algorithm):
    """sft: the full product of the options (216 manifests); osft and lora (which change only the carried
    configuration and the command) each value of each option, and all together."""
    combos = _combinations(full=algorithm == "sft")
    count = 0
    for combo in combos:
        options = {k: v for part in combo for k, v in part.items()}
        sub = kube.submit(algorithm, params={**TRAIN, **EXTRA[algorithm]}, dry_run=True, **options)
        validate_trainjob(sub.manifest)
        m = sub.manifest
        trainer = m["spec"]["trainer"]
        assert m["spec"]["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}
        assert trainer["numNodes"] == options.get("num_nodes", 1)
        assert trainer["command"][:2] == ["/bin/sh", "-c"]
        assert f"exec hone train {algorithm} --config" in trainer["command"][2]
        carried = yaml.safe_load(_trainer_env(m)[CONFIG_ENV])
        assert carried["nproc_per_node"] == options.get("num_procs_per_node", "auto")
        pod = _pod_patch(m)
        if "pvc" in options:
            mount = options.get("pvc_path", "/mnt/shared").rstrip("/")
            assert pod["spec"]["volumes"] == [{"name": "hone-shared", "persistentVolumeClaim": {"claimName": "shared-rwx"}}]
            assert pod["spec"]["containers"][0]["volumeMounts"] == [{"name": "hone-shared", "mountPath": mount}]
            assert f'cd "$HONE_WORKDIR"' in trainer["command"][2] and _trainer_env(m)["HONE_WORKDIR"] == mount
        secret_refs = [e for e in (pod.get("spec", {}).get("containers") or [{}])[0].get("env", [])]
        assert all("valueFrom" in e and "value" not in e for e in secret_refs)
        count += 1
    assert count == (2 * 3 * 3 * 2 * 2 * 3 if algorithm == "sft" else 4)


def test_the_pods_read_the_same_configuration(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({**TRAIN, "max_seq_len": 512, "max_tokens_per_gpu": 1024}))
    p = kube.prepare("lora", cfg, {"lora_r": 4, "learning_rate": 3e-4}, num_nodes=2, num_procs_per_node=1)
    manifest = kube.submit("lora", cfg, params={"lora_r": 4, "learning_rate": 3e-4}, num_nodes=2,
                           num_procs_per_node=1, name=p.name, dry_run=True).manifest
    carried = yaml.safe_load(_trainer_env(manifest)[CONFIG_ENV])
    again = RunConfig.from_flat("lora", carried)
    expect = p.run.to_flat()
    expect["nproc_per_node"] = 1
    assert again.to_flat() == expect
    assert carried["lora_r"] == 4 and carried["learning_rate"] == 3e-4 and carried["max_seq_len"] == 512
    assert carried["progress"] is False  # no progress bars in pod logs unless asked


def test_cli_dry_run_prints_the_manifest(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN))
    code = main(["kube", "submit", "osft", "--config", str(cfg), "--unfreeze-rank-ratio", "0.3", "--dry-run",
                 "--name", "osft-run", "-n", "team", "--num-nodes", "2", "--num-procs-per-node", "1", "--gpu", "1",
                 "--cpu", "8", "--memory", "32Gi", "--resources", "ephemeral-storage=50Gi", "--pvc", "shared",
                 "--env", "NCCL_DEBUG=INFO", "--env", "A=1,B=2", "--labels", "team=nlp", "--annotations", "x=y",
                 "--image-pull-secret", "pull", "--secret-env", "HF_TOKEN=hf-token", "--active-deadline", "3600",
                 "--image", "quay.io/me/hone:0.1", "--model", "oci://quay.io/me/granite-modelcar:1.0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    m = yaml.safe_load(out)
    validate_trainjob(m)
    assert m["metadata"] == {"name": "osft-run", "namespace": "team", "labels": {"team": "nlp"},
                             "annotations": {"x": "y"}}
    t = m["spec"]["trainer"]
    assert t["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "1", "cpu": "8", "memory": "32Gi",
                                               "ephemeral-storage": "50Gi"}
    env = _trainer_env(m)
    assert env["NCCL_DEBUG"] == "INFO" and env["A"] == "1" and env["B"] == "2"
    carried = yaml.safe_load(env[CONFIG_ENV])
    assert carried["model_path"] == "oci://quay.io/me/granite-modelcar:1.0" and carried["unfreeze_rank_ratio"] == 0.3


def test_notes_warn_about_paths_off_the_volume():
    p = kube.prepare("sft", None, {**TRAIN, "data_path": "/home/me/chat.jsonl"}, pvc="shared", num_nodes=2)
    assert any("data_path /home/me/chat.jsonl is outside the PVC mount" in n for n in p.notes)
    assert any("no image given" in n for n in p.notes)
    p = kube.prepare("sft", None, TRAIN, num_nodes=2, image="x")
    assert any("no --pvc" in n and "every pod needs the same data" in n for n in p.notes)


def test_job_file_and_flags(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"num_nodes": 2, "resources_per_node": {"gpu": 1}, "pvc": "shared",
                                   "labels": {"team": "a"}}))
    code = main(["kube", "submit", "sft", "--dry-run", "--job-file", str(job), "--num-nodes", "4", "--model", "m",
                 "--data", "d.jsonl", "--output", "o"])
    out, err = capsys.readouterr()
    assert code == 0, err
    m = yaml.safe_load(out)
    assert m["spec"]["trainer"]["numNodes"] == 4 and m["metadata"]["labels"] == {"team": "a"}
    job.write_text("num_nodez: 2\n")
    assert main(["kube", "submit", "sft", "--dry-run", "--job-file", str(job), "--model", "m", "--data", "d",
                 "--output", "o"]) == 2
    assert "unknown job option 'num_nodez': did you mean 'num_nodes'?" in capsys.readouterr().err
    job.write_text("num_nodes: 2\npvc: a\nnum_nodes: 4\n")  # YAML's "last one wins" would hide a value
    assert main(["kube", "submit", "sft", "--dry-run", "--job-file", str(job), "--model", "m", "--data", "d",
                 "--output", "o"]) == 2
    err = capsys.readouterr().err
    assert "num_nodes" in err and f"{job}:3" in err and "Traceback" not in err


BAD = [
    (["--memory", "64GB"], "invalid memory quantity '64GB'", "64Gi"),
    (["--cpu", "four"], "invalid cpu quantity", "millicores"),
    (["--gpu", "-1"], "invalid gpu count", "whole number"),
    (["--resources", "gpus=2"], "unknown resource 'gpus': did you mean 'gpu'?", "extended resource"),
    (["--resources", "memory"], "expected KEY=VALUE", "--resources"),
    (["--pvc", "shared", "--pvc-path", "mnt/shared"], "must be an absolute directory path", "/mnt/shared"),
    (["--pvc", "shared", "--pvc-path", "/"], "must be an absolute directory path", "--pvc-path"),
    (["--pvc-path", "/mnt/x"], "pvc_path is set but no pvc", "--pvc"),
    (["--pvc", "Shared_Data"], "invalid object name 'Shared_Data'", "--pvc"),
    (["--name", "My_Job"], "invalid TrainJob name 'My_Job'", "63 lowercase"),
    (["--name", "a" * 64], "invalid TrainJob name", "63"),
    (["-n", "Team A"], "invalid namespace", "--namespace"),
    (["--env", "HF_TOKEN=abc"], "HF_TOKEN looks like a credential", "--secret-env HF_TOKEN="),
    (["--env", "MY_API_KEY=abc"], "MY_API_KEY looks like a credential", "--secret-env"),
    (["--env", "PET_NNODES=2"], "PET_NNODES is set by Kubeflow Trainer", "--num-nodes"),
    (["--env", "1BAD=x"], "invalid environment variable name", "--env"),
    (["--env", "X=1", "--secret-env", "X=s"], "both a literal env value and a secret reference", "--secret-env"),
    (["--secret-env", "HF_TOKEN"], "invalid secret reference", "VAR=SECRET"),
    (["--secret-env", "HF_TOKEN=Bad_Secret"], "invalid Secret name", "lowercase"),
    (["--labels", "bad key=x"], "invalid label key", "--labels"),
    (["--labels", "team=a b"], "invalid label value", "--labels"),
    (["--num-procs-per-node", "many"], "invalid value for 'num_procs_per_node'", "--num-procs-per-node"),
    (["--num-procs-per-node", "0"], "num_procs_per_node must be at least 1", "positive"),
    (["--num-procs-per-node", "4", "--gpu", "2"], "4 processes per node but only 2 GPU(s)", "one process per GPU"),
    (["--num-nodes", "2", "--nnodes", "3"], "num_nodes (2) and the configuration's nnodes (3) disagree", "one of"),
    (["--node-rank", "1"], "node_rank must not be set for a Kubernetes job", "remove node_rank"),
    (["--master-addr", "10.0.0.1"], "master_addr must not be set", "PET_"),
    (["--runtime", "Torch Distributed"], "invalid runtime name", "hone kube runtimes"),
    (["--active-deadline", "0"], "invalid value for 'active_deadline_seconds'", "--active-deadline"),
]


@pytest.mark.parametrize("args, what, fix", BAD, ids=[" ".join(b[0])[:40] for b in BAD])
def test_bad_job_options_are_clear_errors(args, what, fix, capsys):
    code = main(["kube", "submit", "sft", "--model", "m", "--data", "d.jsonl", "--output", "o", "--dry-run", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert what in err and fix in err, err
    assert "Traceback" not in err


def test_a_secret_in_the_configuration_goes_to_the_jobs_secret_not_the_spec(planted_secrets, capsys):
    """A credential in a parameter or an --env value is moved into the job's own Secret (referenced by the
    pods); the manifest and the printed notes show only its redacted form."""
    token = planted_secrets["HF_TOKEN"]
    sub = kube.submit("sft", params={**TRAIN, "data_path": f"https://user:{token}@example.com/d.jsonl"}, dry_run=True,
                      name="leaky")
    text = kube.manifest_yaml(sub.manifest) + "\n".join(sub.notes) + json.dumps(sub.secret)
    assert token not in text and "https://***@example.com/d.jsonl" in text
    assert sub.secret["metadata"]["name"] == "leaky-credentials"
    assert sub.secret["stringData"] == {"HONE_SECRET_CONFIG": "[REDACTED]"}
    code = main(["kube", "submit", "sft", "--model", "m", "--data", "d", "--output", "o", "--dry-run",
                 "--env", f"NOTE={planted_secrets['AWS_SECRET_ACCESS_KEY']}"])
    out, err = capsys.readouterr()
    assert code == 0 and planted_secrets["AWS_SECRET_ACCESS_KEY"] not in out + err
    assert "credentials in NOTE" in err and "-credentials" in out


def test_the_fake_servers_validator_is_strict():
    """The schema check the fake API server applies does reject broken TrainJobs."""
    good = kube.submit("sft", params=TRAIN, dry_run=True, name="ok").manifest
    validate_trainjob(good)
    for breaker in (lambda m: m["spec"]["trainer"].update(numNodes="two"),
                    lambda m: m["spec"]["trainer"].update(env=[{"value": "no name"}]),
                    lambda m: m["spec"].update(runtimeRef={}),
                    lambda m: m["metadata"].update(name="Upper"),
                    lambda m: m["spec"]["trainer"].update(numProcPerNode=0)):
        bad = json.loads(json.dumps(good))
        breaker(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate_trainjob(bad)
