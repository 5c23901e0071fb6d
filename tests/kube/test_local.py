"""--backend local runs the TrainJob's own command on this machine: a tiny-model job whose base model is an
oci:// ModelCar image, with the PVC mount standing for a local directory, completes; a broken job fails
with the pod's error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from hone.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _job_dir(tmp_path: Path) -> tuple[Path, Path]:
    work = tmp_path / "shared"  # stands for the PVC
    (work / "data").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "data" / "chat.jsonl", work / "data" / "chat.jsonl")
    cfg = yaml.safe_load((ROOT / "examples" / "sft.yaml").read_text())
    cfg.update(data_path="data/chat.jsonl", ckpt_output_dir="runs/sft", num_epochs=1)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return work, path


def test_local_backend_completes_a_tiny_model_job_from_an_oci_image(oci_image, planted_secrets, monkeypatch,
                                                                    tmp_path, capsys):
    reg, ref, auth, digest = oci_image
    monkeypatch.setenv("OCI_PULL_SECRET_MODEL_DOWNLOAD", auth)
    work, cfg = _job_dir(tmp_path)
    code = main(["kube", "submit", "sft", "--config", str(cfg), "--model", ref, "--backend", "local", "--workdir",
                 str(work), "--pvc", "shared", "--image", "quay.io/me/hone:0.1", "--env", "HONE_TEST_MARK=42",
                 "--name", "local-try"])
    out, err = capsys.readouterr()
    assert code == 0, out[-3000:] + err[-3000:]
    run = work / "runs" / "sft"
    assert "local run of TrainJob local-try completed: 5 steps" in out
    assert f"model:   {run / 'hf_format' / 'final'}" in out
    assert f"pulling {ref}" in out  # the pod's own log: the model came from the registry
    assert (run / "hf_format" / "final" / "model.safetensors").is_file()
    params = json.loads((run / "training_params.json").read_text())
    assert params["model_path"] == ref and params["num_epochs"] == 1
    assert (tmp_path / "oci-cache" / digest.replace(":", "-") / "config.json").is_file()
    # nothing secret in what the job printed or wrote
    secrets = [*planted_secrets.values(), auth, reg.token, "PLANTED-registry-password-7f3a9c"]
    text = out + err + "".join(f.read_text(errors="ignore") for f in work.rglob("*")
                               if f.is_file() and f.suffix in (".json", ".jsonl", ".html", ".yaml", ".txt"))
    assert not [s for s in secrets if s in text]


def test_local_backend_reports_a_failing_job(tmp_path, capsys, tiny_model_dir):
    work, cfg = _job_dir(tmp_path)
    (work / "data" / "chat.jsonl").unlink()
    code = main(["kube", "submit", "sft", "--config", str(cfg), "--model", str(tiny_model_dir), "--backend", "local",
                 "--workdir", str(work), "--pvc", "shared", "--name", "local-bad"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "data file not found" in out  # node-0's own error, streamed
    assert "the local run of TrainJob local-bad failed: node-0 exited with status 2" in err


def test_a_required_secret_must_be_in_the_local_environment(tmp_path, monkeypatch):
    import pytest

    import hone.kube as kube
    from hone.errors import HoneError
    from hone.kube.local import local_env
    from hone.kube.manifest import render

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    p = kube.prepare("sft", None, {"model_path": "m", "data_path": "d", "ckpt_output_dir": "o"},
                     secret_env=["WANDB_API_KEY=wandb:key"])
    manifest = render(p)
    with pytest.raises(HoneError, match="WANDB_API_KEY is not set in this environment .*Secret 'wandb', key 'key'"):
        local_env(p, manifest, tmp_path, 0, 29500, str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "PLANTED-wandb-0123456789")
    env = local_env(p, manifest, tmp_path, 1, 29500, str(tmp_path))
    assert env["WANDB_API_KEY"] == "PLANTED-wandb-0123456789"  # from this environment, as the pod would have it
    assert (env["PET_NNODES"], env["PET_NODE_RANK"], env["PET_MASTER_ADDR"]) == ("1", "1", "127.0.0.1")
    assert "HONE_CONFIG" in env and env["PATH"].split(":")[0].endswith("bin")
