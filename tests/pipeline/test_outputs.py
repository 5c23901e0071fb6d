"""Task outputs and wiring as the upstream OpenShift AI pipelines have them, and the image on every task.

Upstream's components (pipelines-components, `pipelines/training/finetuning/*`) and hone's, one to one:
``dataset-download`` / dataset, ``train-model`` / training, ``universal-llm-evaluator`` / evaluation,
``kubeflow-model-registry`` / registration. Every output of an upstream component is an output of hone's with
the same name and type (hone has a few more), and every artifact input that upstream wires from another task
is wired the same way in hone's pipeline (same input name, same producer output), so a user's own components
connect to hone's pipeline as they connect to upstream's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("kfp.kubernetes")

from hone.pipeline.kfp import compile_pipeline  # noqa: E402
from hone.pipeline.params import FLAVOURS  # noqa: E402

UPSTREAM = Path(__file__).parents[2].parent / "shared" / "reference" / "pipelines-components" / "head-dd8d0c0"
needs_upstream = pytest.mark.skipif(not UPSTREAM.is_dir(), reason=f"{UPSTREAM} not found (../shared is absent)")

#: upstream component -> hone's
COMPONENTS = {"dataset-download": "dataset", "train-model": "training", "universal-llm-evaluator": "evaluation",
              "kubeflow-model-registry": "registration"}
#: upstream wiring hone does differently, and why
DIFFERENT_WIRING = {
    # hone's training reads the dataset stage's prepared directory (train.jsonl + its report), as the local
    # runner does: the train split as it was validated and split, not re-split
    ("training", "dataset"): "input_dataset <- dataset.output_dataset",
}


def load(path: Path) -> dict[str, Any]:
    return next(yaml.safe_load_all(path.read_text()))


def outputs(component: dict[str, Any]) -> dict[str, str]:
    """name -> artifact schema title or parameter type."""
    defs = component.get("outputDefinitions", {})
    return {**{n: a["artifactType"]["schemaTitle"] for n, a in defs.get("artifacts", {}).items()},
            **{n: p["parameterType"] for n, p in defs.get("parameters", {}).items()}}


def inputs(component: dict[str, Any]) -> dict[str, str]:
    defs = component.get("inputDefinitions", {})
    return {n: a["artifactType"]["schemaTitle"] for n, a in defs.get("artifacts", {}).items()}


def wiring(spec: dict[str, Any], names: dict[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """(task, artifact input) -> (producer task, output key), tasks named through ``names`` (task name -> our
    name); the top-level DAG only."""
    out = {}
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        for name, src in task.get("inputs", {}).get("artifacts", {}).items():
            ref = src.get("taskOutputArtifact")
            if ref:
                out[(names.get(task_name, task_name), name)] = (names.get(ref["producerTask"], ref["producerTask"]),
                                                                ref["outputArtifactKey"])
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[tuple[str, bool], dict[str, Any]]:
    out = tmp_path_factory.mktemp("outputs")
    return {(f, local): load(compile_pipeline(f, out / f"{f}-{local}.yaml", local=local))
            for f in FLAVOURS for local in (False, True)}


def ours(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """hone's components by stage (both training variants are the same component function)."""
    by_stage: dict[str, dict[str, Any]] = {}
    for name, comp in spec["components"].items():
        if "executorLabel" in comp:
            by_stage.setdefault(name.removeprefix("comp-").rsplit("-", 1)[0] if name[-1].isdigit()
                                else name.removeprefix("comp-"), comp)
    return by_stage


@needs_upstream
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_upstream_output_is_there_with_its_type(compiled, flavour):
    upstream = load(UPSTREAM / f"{flavour.replace('-', '_')}.yaml")
    mine = ours(compiled[(flavour, False)])
    assert set(mine) == set(COMPONENTS.values())
    for theirs_name, our_name in COMPONENTS.items():
        theirs = outputs(upstream["components"][f"comp-{theirs_name}"])
        have = outputs(mine[our_name])
        for name, kind in theirs.items():
            assert have.get(name) == kind, f"{flavour}: {our_name} output {name}: {have.get(name)} != upstream {kind}"


@needs_upstream
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_artifacts_are_wired_as_upstream_wires_them(compiled, flavour):
    upstream = load(UPSTREAM / f"{flavour.replace('-', '_')}.yaml")
    theirs = wiring(upstream, COMPONENTS)
    # the local compile has no OneOf between the training variants: its DAG names the producers directly
    spec = compiled[(flavour, True)]
    mine = wiring(spec, {})
    comps = ours(spec)
    for (task, name), (producer, key) in theirs.items():
        theirs_type = inputs(upstream["components"][f"comp-{next(k for k, v in COMPONENTS.items() if v == task)}"])
        if (task, name) in DIFFERENT_WIRING:
            continue
        assert mine.get((task, name)) == (producer, key), f"{flavour}: {task}.{name}"
        assert inputs(comps[task])[name] == theirs_type[name], f"{flavour}: {task}.{name}"
    assert mine[("training", "input_dataset")] == ("dataset", "output_dataset")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_cluster_compile_wires_both_training_variants_into_registration(compiled, flavour):
    """The cluster DAG joins the two training variants with dsl.OneOf: registration still gets the model and the
    training metrics, evaluation the model, each through the condition's outputs."""
    spec = compiled[(flavour, False)]
    reg = spec["root"]["dag"]["tasks"]["registration"]["inputs"]["artifacts"]
    ev = spec["root"]["dag"]["tasks"]["evaluation"]["inputs"]["artifacts"]
    for arts, name in ((reg, "input_model"), (reg, "input_metrics"), (reg, "input_training"), (ev, "model_artifact")):
        assert "taskOutputArtifact" in arts[name], name
    assert reg["eval_metrics"]["taskOutputArtifact"] == {"outputArtifactKey": "output_metrics",
                                                         "producerTask": "evaluation"}
    assert ev["eval_dataset"]["taskOutputArtifact"] == {"outputArtifactKey": "eval_dataset",
                                                        "producerTask": "dataset"}


# -- the image ---------------------------------------------------------------------------------------------
def executors_and_env(spec: dict[str, Any]) -> tuple[set[str], list[dict[str, Any]]]:
    execs = spec["deploymentSpec"]["executors"].values()
    return {e["container"]["image"] for e in execs}, [v for e in execs for v in e["container"].get("env", [])]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_task_and_the_trainjob_run_the_compile_time_image(tmp_path, monkeypatch, flavour):
    monkeypatch.setenv("HONE_IMAGE", "registry.example/env/hone:from-env")
    spec = load(compile_pipeline(flavour, tmp_path / "env.yaml"))
    images, env = executors_and_env(spec)
    assert images == {"registry.example/env/hone:from-env"}
    if "comp-training-2" in spec["components"]:  # a TrainJob branch
        assert {"name": "HONE_IMAGE", "value": "registry.example/env/hone:from-env"} in env  # the TrainJob's pods
    images, env = executors_and_env(load(compile_pipeline(flavour, tmp_path / "flag.yaml",
                                                          image="registry.example/flag/hone:1")))
    assert images == {"registry.example/flag/hone:1"}  # --image wins over $HONE_IMAGE
    assert {v["value"] for v in env if v["name"] == "HONE_IMAGE"} <= {"registry.example/flag/hone:1"}


def test_the_cli_image_flag_reaches_every_task(tmp_path, monkeypatch):
    from hone.cli.main import main

    monkeypatch.delenv("HONE_IMAGE", raising=False)
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--flavor", "sft", "--output", str(out), "--image", "quay.io/me/hone:test"]) == 0
    images, env = executors_and_env(load(out))
    assert images == {"quay.io/me/hone:test"}
    assert {v["value"] for v in env if v["name"] == "HONE_IMAGE"} == {"quay.io/me/hone:test"}


def test_the_components_install_nothing_but_the_pinned_kfp(compiled):
    """The KFP-generated command installs ``kfp==<the compiling kfp>`` only: an image holding that exact version
    (constraints.txt) makes it a no-op; no component installs packages of its own."""
    import kfp

    for spec in (compiled[(f, False)] for f in FLAVOURS):
        for e in spec["deploymentSpec"]["executors"].values():
            shell = e["container"]["command"][2]
            installs = [line for line in shell.splitlines() if "pip install" in line]
            assert len(installs) == 1 and installs[0].count("pip install") == 1, installs
            assert f"'kfp=={kfp.__version__}' '--no-deps'" in installs[0]
    constraints = (Path(__file__).parents[2] / "constraints.txt").read_text().split()
    assert f"kfp=={kfp.__version__}" in constraints


def test_metrics_inputs_and_split_metadata():
    from types import SimpleNamespace

    from hone.pipeline import kfp_components
    from hone.pipeline.stages import _has_eval_results

    art = SimpleNamespace(metadata={"holdout/loss": 1.5, "steps": 3, "display_name": "x", "flag": True, "s": "t"})
    assert kfp_components.metrics_of(art) == {"holdout/loss": 1.5, "steps": 3}
    assert kfp_components.metrics_of(None) == {}
    meta = kfp_components.split_metadata({"train_rows": 9, "eval_rows": 1, "source": "d.jsonl", "format": "chat",
                                          "sha256": "ab"}, "eval")
    assert meta["num_examples"] == 1 and meta["split"] == "eval" and meta["format"] == "jsonl"
    assert not _has_eval_results(None)


def test_registration_falls_back_on_the_metrics_artifacts(tmp_path, monkeypatch):
    """Without evaluation results in the directory wired to ``eval_results``, the ``eval_metrics`` figures are
    the lineage's evaluation metrics; a registration pod with $MLFLOW_TRACKING_URI registers into that store."""
    from unittest import mock

    from hone.pipeline import stages
    from hone.pipeline.params import resolve

    train_dir, ds_dir, empty = tmp_path / "training", tmp_path / "dataset", tmp_path / "eval"
    for d in (train_dir, ds_dir, empty):
        d.mkdir()
    stages.StageResult("training", {"algorithm": "osft"}, {"model": "model"}).write(train_dir)
    stages.StageResult("dataset", {"sha256": "ab"}).write(ds_dir)
    values = resolve("osft", {"phase_01_dataset_man_data_uri": "d.jsonl"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    with mock.patch("hone.registry.register_model", return_value=None) as reg:
        res = stages.registration_stage(values, train_dir, empty, ds_dir, tmp_path / "out",
                                        eval_metrics={"holdout/loss": 1.5}, training_metrics={"steps": 3})
    assert res.summary["model_id"] == stages.SKIPPED  # the mocked registry registered nothing
    (args, kwargs), = reg.call_args_list
    assert kwargs["eval_results"] == {"holdout/loss": 1.5}
    assert kwargs["metadata"]["training_steps"] == 3  # the run directory holds no training result
    assert args[1].registry_backend == "mlflow" and args[1].registry_tracking_uri.endswith("m.db")
