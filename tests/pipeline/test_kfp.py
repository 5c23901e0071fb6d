"""KFP pipelines: the six flavours compile with the table's parameters (and seed 004's for SFT), secrets stay
out of the YAML, the cluster pieces are where they belong, and the minimal OSFT pipeline runs under kfp.local."""
from __future__ import annotations

import ast
import inspect
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("kfp.kubernetes")

from hone.errors import HoneError  # noqa: E402
from hone.pipeline import kfp_components  # noqa: E402
from hone.pipeline.kfp import (SECRETS, compile_pipeline, component_inputs, default_image,  # noqa: E402
                               pipeline_function)
from hone.pipeline.params import BY_NAME, DATA_URI, FLAVOURS, PARAMS, flavour_algorithm, params_for  # noqa: E402

SEED_004 = Path(__file__).resolve().parents[3] / "shared" / "reference" / "seeds" / "004_0f76facc31cff8e1.txt"
KFP_TYPES = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN", list: "LIST",
             dict: "STRUCT"}
WORKSPACE = "{{$.workspace_path}}"


# -- helpers -----------------------------------------------------------------------------------------------
def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    platform = docs[1]["platforms"]["kubernetes"] if len(docs) > 1 and docs[1] else {}
    return spec, platform


def tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every container task of the pipeline (inside condition branches too): display name -> task, with the
    executor label added."""
    out: dict[str, dict[str, Any]] = {}

    def walk(dag: dict[str, Any]) -> None:
        for task in dag["tasks"].values():
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"])
            else:
                out[task["taskInfo"]["name"]] = {**task, "executor": comp["executorLabel"]}

    walk(spec["root"]["dag"])
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b)
    return a == b


def seed_004_table() -> list[tuple[str, str, Any]]:
    """(name, type, default) rows of seed 004's Inputs table; default None = required."""
    rows = []
    for line in SEED_004.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `phase_"):
            continue
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        name, typ, raw = cells[0], cells[1], cells[2]
        if raw == "None":
            default: Any = None
        elif typ == "str":
            default = raw
        elif typ == "bool":
            default = raw == "True"
        else:
            default = ast.literal_eval(raw)
        rows.append((name, typ, default))
    return rows


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    out = tmp_path_factory.mktemp("kfp")
    return {f: load(compile_pipeline(f, out / f"{f}.yaml")) for f in FLAVOURS}


# -- components ----------------------------------------------------------------------------------------------
def test_component_inputs_cover_the_parameter_table_exactly():
    from kfp.dsl.types import type_annotations as ta

    seen: dict[str, Any] = {}
    for fn in kfp_components.COMPONENT_FUNCTIONS:
        sig = inspect.signature(fn)
        for name, param in sig.parameters.items():
            if name.startswith("phase_"):
                continue
            if ta.is_artifact_wrapped_in_Input(param.annotation) or ta.is_artifact_wrapped_in_Output(param.annotation):
                assert name.startswith(("input_", "output_")) or name in kfp_components.UPSTREAM_ARTIFACTS, \
                    (fn.__name__, name)
            else:
                assert name in kfp_components.PLUMBING_INPUTS, (fn.__name__, name)
        for name, annotation in component_inputs(fn).items():
            p = BY_NAME[name]  # KeyError: a component input that is not a pipeline parameter
            assert annotation is p.type, f"{fn.__name__}.{name}: {annotation} != {p.type}"
            default = sig.parameters[name].default
            if default is not inspect.Parameter.empty:  # one algorithm's inputs carry the table's default
                assert len(p.algorithms) == 1 and default == p.component_default, (fn.__name__, name)
            seen[name] = fn.__name__
    assert set(seen) == {p.name for p in PARAMS}, "every parameter must reach a component"


def test_stage_values_resolve_and_drop_other_algorithms_defaults():
    given = {"algorithm": "osft", DATA_URI: "data.jsonl", "phase_02_train_man_lora_r": 16,
             "phase_02_train_man_unfreeze_rank_ratio": 0.5, "output_model": object()}
    values = kfp_components.stage_values("osft", given)
    assert values["phase_02_train_man_unfreeze_rank_ratio"] == 0.5
    assert "phase_02_train_man_lora_r" not in values
    assert values["phase_04_registry_man_name"] == "osft-model"
    with pytest.raises(HoneError, match="applies to lora, not to osft"):
        kfp_components.stage_values("osft", {DATA_URI: "d", "phase_02_train_man_lora_r": 8})


def test_workspace_claim_comes_from_the_passed_through_volumes():
    from kfp import dsl

    claim = {"claimName": "run-1-kfp-workspace"}
    cfg = dsl.TaskConfig(volumes=[{"name": "other", "emptyDir": {}},
                                  {"name": "kfp-workspace", "persistentVolumeClaim": claim}],
                         volume_mounts=[{"name": "kfp-workspace", "mountPath": "/kfp-workspace"}])
    assert kfp_components.workspace_claim(cfg, "/kfp-workspace") == "run-1-kfp-workspace"
    with pytest.raises(HoneError, match="workspace PVC"):
        kfp_components.workspace_claim(dsl.TaskConfig(), "/kfp-workspace")


# -- compiled YAML ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_flavour_compiles_with_the_table_parameters(compiled, flavour):
    spec, platform = compiled[flavour]
    algorithm = flavour_algorithm(flavour)
    assert spec["pipelineInfo"]["name"] == f"hone-{flavour}"
    params = spec["root"]["inputDefinitions"]["parameters"]
    expected = params_for(flavour)
    assert set(params) == {p.name_for(flavour) for p in expected}
    for p in expected:
        got = params[p.name_for(flavour)]
        assert got["parameterType"] == KFP_TYPES[p.type], p.name
        assert got.get("description") == p.help, p.name
        if p.name == DATA_URI:
            assert "defaultValue" not in got and not got.get("isOptional"), "the data URI is required"
        else:
            assert same(got["defaultValue"], p.default_for(algorithm, flavour)), (p.name, got["defaultValue"])
    # every pipeline input reaches a task, and the parameters a flavour hides reach them as constants
    text = json.dumps(spec)
    for p in expected:
        name = p.name_for(flavour)
        assert f'"componentInputParameter": "{name}"' in text or f"pipelinechannel--{name}" in text, name
    all_tasks = tasks(spec)
    assert {"dataset", "training", "evaluation", "registration"} <= set(all_tasks)
    hidden = [p for p in PARAMS if algorithm in p.algorithms and p not in expected]
    assert bool(hidden) == flavour.endswith("-minimal")
    for p in hidden:
        consts = [t["inputs"]["parameters"][p.name]["runtimeValue"]["constant"] for t in all_tasks.values()
                  if p.name in t["inputs"]["parameters"]]
        assert consts and all(same(c, p.default_for(algorithm, flavour)) for c in consts), p.name
    # parameters of other algorithms are not passed at all
    foreign = {p.name for p in PARAMS if algorithm not in p.algorithms}
    assert not foreign & {n for t in all_tasks.values() for n in t["inputs"]["parameters"]}
    assert {t["inputs"]["parameters"]["algorithm"]["runtimeValue"]["constant"] for t in all_tasks.values()} \
        == {algorithm}


@pytest.mark.skipif(not SEED_004.is_file(), reason=f"seed 004 not found at {SEED_004} (../shared is absent)")
def test_sft_parameters_and_defaults_are_seed_004s(compiled):
    spec, _ = compiled["sft"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    seed = seed_004_table()
    assert len(seed) == 43
    for name, typ, default in seed:
        assert name in params, f"seed 004 parameter {name} missing from the sft pipeline"
        assert params[name]["parameterType"] == KFP_TYPES[{"str": str, "int": int, "float": float, "bool": bool,
                                                           "list": list, "dict": dict}[typ]], name
        if default is None:
            assert "defaultValue" not in params[name], f"{name} is required in seed 004"
        else:
            assert same(params[name]["defaultValue"], default), (name, params[name]["defaultValue"], default)
    # what hone adds to SFT's expert pipeline (evaluation extensions); OSFT/LoRA add their own elsewhere
    extra = set(params) - {name for name, _, _ in seed}
    assert extra == {"phase_03_eval_opt_include_path", "phase_03_eval_opt_compare_base",
                     # the current upstream pipelines' additions, and Training Hub's trackers
                     "phase_02_train_opt_runtime", "phase_02_train_opt_lr_scheduler_kwargs",
                     "phase_02_train_opt_processed_data", "phase_02_train_opt_unmask", "phase_02_train_opt_save_final",
                     "phase_02_train_opt_logging_steps", "phase_02_train_opt_tensorboard_log_dir",
                     "phase_02_train_opt_wandb_project", "phase_02_train_opt_wandb_entity",
                     "phase_02_train_opt_wandb_run_name",
                     # hone's: how long the TrainJob branch waits before deleting the job
                     "phase_02_train_opt_timeout"}


def test_no_secret_value_is_inlined(tmp_path, monkeypatch):
    fakes = {"HF_TOKEN": "hf_FAKEtoken1234567890", "AWS_ACCESS_KEY_ID": "AKIAFAKEKEY0000001",
             "AWS_SECRET_ACCESS_KEY": "fake/secret+access=key0001", "KUBERNETES_AUTH_TOKEN": "sha256~fakeKubeToken0001",
             "KUBERNETES_SERVER_URL": "https://api.fake-cluster.example:6443",
             "OCI_PULL_SECRET_MODEL_DOWNLOAD": '{"auths": {"quay.io": {"auth": "ZmFrZTpmYWtlcGFzcw=="}}}'}
    for k, v in fakes.items():
        monkeypatch.setenv(k, v)
    for flavour in FLAVOURS:
        for local in (False, True):
            text = compile_pipeline(flavour, tmp_path / f"{flavour}-{local}.yaml", local=local).read_text()
            for k, v in fakes.items():
                assert v not in text, f"{k}'s value is in the {flavour} YAML"
                assert "ZmFrZTpmYWtlcGFzcw" not in text


def test_secrets_node_selector_and_gpus_go_to_the_right_tasks(compiled):
    spec, platform = compiled["sft"]
    executors = platform["deploymentSpec"]["executors"]
    by_task = tasks(spec)
    assert set(by_task) == {"dataset", "training", "training (TrainJob)", "evaluation", "registration"}

    def secrets(task: str) -> dict[str, tuple[set[str], bool]]:
        cfg = executors.get(by_task[task]["executor"], {})
        return {s["secretName"]: ({e["envVar"] for e in s["keyToEnv"]}, s.get("optional", False))
                for s in cfg.get("secretAsEnv", [])}

    hf = ({"HF_TOKEN"}, True)
    oci = ({"OCI_PULL_SECRET_MODEL_DOWNLOAD"}, True)
    assert secrets("dataset") == {"hf-token": hf, "s3-secret": ({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, True)}
    kube_keys = {"KUBERNETES_SERVER_URL", "KUBERNETES_AUTH_TOKEN"}
    # upstream's training task carries kubernetes-credentials (required): hone's TrainJob branch too, its
    # single-pod training as an optional reference (it never calls the API server)
    assert secrets("training") == {"hf-token": hf, "oci-pull-secret-model-download": oci,
                                   "kubernetes-credentials": (kube_keys, True)}
    assert secrets("training (TrainJob)") == {
        "hf-token": hf, "oci-pull-secret-model-download": oci, "kubernetes-credentials": (kube_keys, False)}
    assert secrets("evaluation") == {"hf-token": hf, "oci-pull-secret-model-download": oci}
    assert secrets("registration") == {}
    assert set(SECRETS) == {"dataset", "training", "training-trainjob", "evaluation", "registration"}
    # every task's pod pulls the image IfNotPresent, as upstream's
    assert {t: executors.get(by_task[t]["executor"], {}).get("imagePullPolicy") for t in by_task} == \
        {t: "IfNotPresent" for t in by_task}

    ev = executors[by_task["evaluation"]["executor"]]
    assert ev["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    containers = spec["deploymentSpec"]["executors"]
    ev_resources = containers[by_task["evaluation"]["executor"]]["container"]["resources"]
    assert ev_resources["accelerator"]["resourceCount"] == "1"
    # single-pod training: GPUs from the parameter; the TrainJob submitter holds none and sees the workspace PVC
    pod = containers[by_task["training"]["executor"]]["container"]
    assert pod["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "phase_02_train_man_gpu" in pod["resources"]["accelerator"]["resourceCount"]
    assert "phase_02_train_opt_memory" in pod["resources"]["resourceMemoryRequest"]
    job = containers[by_task["training (TrainJob)"]["executor"]]["container"]
    assert "resources" not in job
    assert {"name": "HONE_IMAGE", "value": default_image()} in job["env"]
    job_comp = spec["components"][by_task["training (TrainJob)"]["componentRef"]["name"]]
    assert {"field": "KUBERNETES_VOLUMES", "applyToTask": True} in job_comp["taskConfigPassthroughs"]
    for name in ("training", "training (TrainJob)"):
        assert by_task[name]["inputs"]["parameters"]["workspace_path"]["runtimeValue"]["constant"] == WORKSPACE
    assert by_task["training"]["inputs"]["parameters"]["launcher"]["runtimeValue"]["constant"] == "local"
    assert by_task["training (TrainJob)"]["inputs"]["parameters"]["launcher"]["runtimeValue"]["constant"] == "trainjob"
    conditions = json.dumps(spec["components"])
    assert "int(inputs.parameter_values['pipelinechannel--phase_02_train_man_workers']) <= 1" in conditions


UPSTREAM_TASKS = {"exec-dataset-download": ("dataset",), "exec-train-model": ("training", "training (TrainJob)"),
                  "exec-universal-llm-evaluator": ("evaluation",), "exec-kubeflow-model-registry": ("registration",)}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_secrets_and_pull_policy_match_upstream_task_by_task(compiled, flavour):
    """Each upstream task's secrets (name, keys) are on hone's task(s) of the same stage; kubernetes-credentials
    is required where a TrainJob is submitted, as upstream's; every task pulls IfNotPresent."""
    upstream_file = (Path(__file__).parents[2].parent / "shared" / "reference" / "pipelines-components" /
                     "head-dd8d0c0" / f"{flavour.replace('-', '_')}.yaml")
    if not upstream_file.is_file():
        pytest.skip(f"{upstream_file} not found (../shared is absent)")
    theirs = list(yaml.safe_load_all(upstream_file.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"]
    spec, platform = compiled[flavour]
    ours, by_task = platform["deploymentSpec"]["executors"], tasks(spec)

    def secrets(cfg: dict[str, Any]) -> dict[str, tuple[dict[str, str], bool]]:
        return {s["secretName"]: ({e["envVar"]: e["secretKey"] for e in s["keyToEnv"]}, s.get("optional", False))
                for s in cfg.get("secretAsEnv", [])}

    for executor, stages in UPSTREAM_TASKS.items():
        for task in (t for t in stages if t in by_task):
            mine = ours.get(by_task[task]["executor"], {})
            assert mine.get("imagePullPolicy") == theirs[executor]["imagePullPolicy"] == "IfNotPresent", task
            have = secrets(mine)
            for name, (keys, optional) in secrets(theirs[executor]).items():
                assert name in have and have[name][0] == keys, (flavour, task, name)
                if not optional:
                    assert have[name][1] is (task == "training"), (flavour, task, name)  # single pod: optional
    text = json.dumps(ours)
    assert "KUBERNETES_AUTH_TOKEN" in text and "sha256~" not in text


def test_compile_flags_pvc_image_and_caching(tmp_path):
    spec, platform = load(compile_pipeline("osft-minimal", tmp_path / "p.yaml", image="registry.example/me/hone:dev",
                                           storage_class="ocs-storagecluster-cephfs", pvc_size="123Gi",
                                           access_modes=("ReadWriteMany",), enable_caching=True))
    ws = platform["pipelineConfig"]["workspace"]
    assert ws == {"size": "123Gi", "kubernetes": {"pvcSpecPatch": {"storageClassName": "ocs-storagecluster-cephfs",
                                                                   "accessModes": ["ReadWriteMany"]}}}
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == \
        {"registry.example/me/hone:dev"}
    assert all(t["cachingOptions"].get("enableCache") is True for t in tasks(spec).values())
    spec, _ = load(compile_pipeline("osft-minimal", tmp_path / "q.yaml"))
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks(spec).values())
    with pytest.raises(HoneError, match="pvc-size"):
        compile_pipeline("osft-minimal", tmp_path / "r.yaml", pvc_size="lots")
    with pytest.raises(HoneError, match="unknown pipeline flavour"):
        compile_pipeline("osft-maximal", tmp_path / "s.yaml")


@pytest.mark.parametrize("flavour", ["osft-minimal", "sft"])
def test_local_compile_leaves_out_cluster_pieces(tmp_path, flavour):
    path = compile_pipeline(flavour, tmp_path / "local.yaml", local=True)
    spec, platform = load(path)
    text = path.read_text()
    assert not platform, "no kubernetes platform spec (secrets, node selectors, workspace PVC)"
    for piece in ("secretAsEnv", "nodeSelector", "pvcSpecPatch", "pipelineConfig", WORKSPACE, "createPvc",
                  "accelerator", "taskConfigPassthroughs", "kubernetes-credentials", "secretName"):
        assert piece not in text, piece
    by_task = tasks(spec)
    assert set(by_task) == {"dataset", "training", "evaluation", "registration"}
    assert by_task["training"]["inputs"]["parameters"]["workspace_path"]["runtimeValue"]["constant"] == ""


# -- end to end under kfp.local ---------------------------------------------------------------------------------
@pytest.fixture
def kfp_local(tmp_path):
    from kfp import local
    from kfp.local import config

    root = tmp_path / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    yield root
    config.LocalExecutionConfig.instance = None


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom:RuntimeWarning")
def test_minimal_osft_pipeline_runs_under_kfp_local(tmp_path, kfp_local):
    from hone.models.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "model", layers=2, hidden=64, heads=4, seed=0)
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(20)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    pipeline = pipeline_function("osft-minimal", local=True)
    # max_seq_len is a constant (8192) in a minimal flavour: the token budget must hold one such sample
    # the upstream OSFT pipeline's own spellings (phase_02_train_man_train_*, phase_03_eval_man_eval_tasks)
    run = pipeline(phase_01_dataset_man_data_uri=str(data), phase_02_train_man_train_model=str(model),
                   phase_02_train_man_train_epochs=1, phase_02_train_man_train_batch=4,
                   phase_02_train_man_train_tokens=8192, phase_03_eval_man_eval_tasks=[])
    assert run.output == "SKIPPED"

    (run_dir,) = [p for p in kfp_local.iterdir() if p.is_dir()]

    def executor_output(task: str) -> dict[str, Any]:
        out = json.loads((run_dir / task / "executor_output.json").read_text())
        return {name: a["artifacts"][0] for name, a in out.get("artifacts", {}).items()}

    ds = executor_output("dataset")
    ds_dir = Path(ds["output_dataset"]["uri"])
    assert {"train.jsonl", "eval.jsonl", "dataset_report.json", "stage.json"} <= {p.name for p in ds_dir.iterdir()}
    m = ds["output_metrics"]["metadata"]
    assert m["train_rows"] + m["eval_rows"] == 20 and m["rows_invalid"] == 0
    # upstream's dataset outputs: the two splits as JSONL files
    for split in ("train", "eval"):
        art = ds[f"{split}_dataset"]
        assert Path(art["uri"]).read_text() == (ds_dir / f"{split}.jsonl").read_text()
        assert art["metadata"]["num_examples"] == m[f"{split}_rows"]

    tr = executor_output("training")
    model_dir = Path(tr["output_model"]["uri"])
    assert (model_dir / "config.json").is_file() and list(model_dir.glob("*.safetensors"))
    assert tr["output_model"]["metadata"]["algorithm"] == "osft"
    m = tr["output_metrics"]["metadata"]
    assert m["steps"] >= 1 and m["samples_trained"] == 18 and math.isfinite(m["final_loss"])
    assert Path(tr["output_loss_chart"]["uri"]).read_text().lstrip().lower().startswith("<!doctype html")
    assert (Path(tr["output_training"]["uri"]) / "stage.json").is_file()

    ev = executor_output("evaluation")
    m = ev["output_metrics"]["metadata"]
    assert math.isfinite(m["holdout/loss"]) and math.isfinite(m["base/holdout/loss"])
    assert (Path(ev["output_results"]["uri"]) / "comparison.json").is_file()
    logged = Path(ev["output_results"]["uri"]) / "samples.jsonl"
    samples = json.loads(Path(ev["output_samples"]["uri"]).read_text())
    assert len(samples) == len(logged.read_text().splitlines()) == 2  # upstream's output_samples: one JSON list
    out = json.loads((run_dir / "training" / "executor_output.json").read_text())
    assert out["parameterValues"]["Output"] == kfp_components.TRAINING_DONE


UPSTREAM_PIPELINES = Path(__file__).parents[2].parent / "shared" / "reference" / "pipelines-components" / "head-dd8d0c0"


@pytest.mark.skipif(not UPSTREAM_PIPELINES.is_dir(), reason=f"{UPSTREAM_PIPELINES} not found (../shared is absent)")
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_upstream_parameter_is_there_with_its_type_and_default(compiled, flavour):
    """Parity with the current OpenShift AI pipelines: every parameter of the upstream flavour, same name,
    type and default; hone's additions are optional (they have defaults)."""
    upstream_file = UPSTREAM_PIPELINES / f"{flavour.replace('-', '_')}.yaml"
    upstream = next(yaml.safe_load_all(upstream_file.read_text()))["root"]["inputDefinitions"]["parameters"]
    ours = compiled[flavour][0]["root"]["inputDefinitions"]["parameters"]
    missing = sorted(set(upstream) - set(ours))
    assert not missing, f"{flavour}: upstream parameters missing: {missing}"
    for name, theirs in upstream.items():
        assert ours[name]["parameterType"] == theirs["parameterType"], (flavour, name)
        if "defaultValue" in theirs:
            assert same(ours[name].get("defaultValue"), theirs["defaultValue"]), (flavour, name, ours[name].get(
                "defaultValue"), theirs["defaultValue"])
        else:
            assert "defaultValue" not in ours[name], (flavour, name)
    for name in set(ours) - set(upstream):
        assert "defaultValue" in ours[name], f"{flavour}: hone's addition {name} must be optional"
