"""The image recipe, proven without building the image: what a pod of the compiled pipeline would run.

CI can neither pull base images nor build containers. So this test

1. "builds" the image: a fresh virtualenv gets exactly the Containerfile's steps -- its ``COPY`` lines copy
   the same files from the repository into a scratch root, its one install ``RUN`` line (scripts/image-install.sh)
   runs with the ``ARG`` defaults, ``/opt/...`` pointing into the scratch root and the venv's ``python3``/``pip``
   first on ``PATH`` (the base image's interpreter);
2. compiles the pipelines and, for each task, takes the container's ``command`` and ``args`` from the YAML
   (``deploymentSpec.executors``), replaces ``{{$}}`` with a KFP executor input (parameters as the DAG wires
   them, input artifacts at local paths, output URIs and the output file under a scratch directory) and runs
   them as the pod would, with nothing of this test's environment but ``PATH``: the KFP-generated
   ``pip install kfp==...`` runs with the package index switched off, so it passes only because the image holds
   that exact kfp (constraints.txt);
3. runs the minimal OSFT pipeline end to end this way (dataset -> training on a tiny model -> evaluation on the
   eval split -> registration into MLflow on SQLite), and every component of the other flavours on small inputs.

The virtualenv takes minutes to install, so it is kept between sessions under the system temporary directory,
keyed by the recipe (Containerfile, install script, pyproject.toml, constraints.txt, Python version): a later
session reruns the same install step in it, which reinstalls hone from the freshly copied source.
``HONE_POD_SIM_FRESH=1`` starts from an empty virtualenv.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("kfp")

from hone.pipeline.params import FLAVOURS  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "Containerfile"
RECIPE = (CONTAINERFILE, REPO / "scripts" / "image-install.sh", REPO / "pyproject.toml", REPO / "constraints.txt")
IMAGE = "hone-pod-sim:test"
POD_TIMEOUT = 420
RUN_NAME = "pod-sim-run"


# -- the Containerfile ---------------------------------------------------------------------------------------
def instructions(path: Path = CONTAINERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) in order; continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def assignments(text: str) -> dict[str, str]:
    """``ARG A=1`` / ``ENV A=1 B="x y"`` -> {A: 1, B: x y} (an ARG without a default -> "")."""
    out = {}
    for item in shlex.split(text):
        key, _, value = item.partition("=")
        out[key] = value
    return out


def recipe_key() -> str:
    """The install recipe's identity: the Containerfile's instructions (comments and labels aside), the install
    script, pyproject.toml, constraints.txt and this Python."""
    h = hashlib.sha256(sys.version.encode())
    h.update(json.dumps([s for s in instructions() if s[0] in ("FROM", "ARG", "ENV", "COPY", "RUN")]).encode())
    for f in RECIPE[1:]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def build(root: Path, venv: Path) -> tuple[dict[str, str], float]:
    """Copy what the Containerfile COPYs into ``root``, then run its install RUN into ``venv``; returns the
    image's ENV (what the pods see) and the seconds the install took."""
    steps = instructions()
    assert [w for w, _ in steps if w == "ENTRYPOINT"] in ([], ["ENTRYPOINT"])
    for word, rest in steps:  # no ENTRYPOINT that would swallow the command KFP sets
        if word == "ENTRYPOINT":
            assert rest.replace(" ", "") == "[]", rest
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    installs = []
    mapped = lambda p: root / p.lstrip("/")  # noqa: E731
    for word, rest in steps:
        if word == "ARG":
            args.update(assignments(rest))
        elif word == "ENV":
            env.update(assignments(rest))
        elif word == "COPY":
            assert not rest.startswith("--"), f"COPY options are not simulated: {rest}"
            *sources, dest = shlex.split(rest)
            for src in sources:
                s = REPO / src
                target = mapped(dest) / s.name if dest.endswith("/") or len(sources) > 1 else mapped(dest)
                target.parent.mkdir(parents=True, exist_ok=True)
                if s.is_dir():
                    shutil.copytree(s, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(s, target)
        elif word == "RUN":
            if "image-install.sh" in rest:
                installs.append((rest, dict(args), dict(env)))
            else:  # filesystem set-up (HOME for a random UID): nothing that installs software
                assert not re.search(r"\b(pip|apt-get|dnf|yum|microdnf|conda|uv)\b", rest), rest
    assert len(installs) == 1, "the Containerfile installs through scripts/image-install.sh, once"
    command, build_args, build_env = installs[0]
    command = re.sub(r"(?<![\w/.])/(opt|home|usr/local)/", lambda m: f"{root}/{m.group(1)}/", command)
    fresh = not (venv / "bin" / "python3").exists()
    if fresh:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    run_env = {**clean_env(venv), **build_args, **build_env}
    run_env.pop("PIP_NO_CACHE_DIR", None)  # the image keeps no pip cache; the test reuses pip's
    start = time.monotonic()
    proc = subprocess.run(["sh", "-c", command], env=run_env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"install step failed ({command}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return env, time.monotonic() - start


def clean_env(venv: Path) -> dict[str, str]:
    """A pod's view: the image's interpreter first on PATH, none of this test process's Python settings."""
    path = [str(venv / "bin")] + [p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if p and not Path(p, "python3").resolve().is_relative_to(Path(sys.prefix).resolve())]
    keep = ("LANG", "LC_ALL", "TMPDIR", "PIP_CERT", "PIP_DEFAULT_TIMEOUT")
    return {"PATH": os.pathsep.join(path), **{k: os.environ[k] for k in keep if k in os.environ}}


def stale_venvs(current: Path) -> None:
    """Remove the virtualenvs of older recipes (a few GB each) that no session is using."""
    for other in current.parent.glob("hone-pod-sim-*.lock"):
        venv = other.with_suffix("")
        if venv == current:
            continue
        with open(other, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use
            shutil.rmtree(venv, ignore_errors=True)
            other.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("image-root")
    venv = Path(tempfile.gettempdir()) / f"hone-pod-sim-{recipe_key()}"
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions share one venv: one installs at a time
        if os.environ.get("HONE_POD_SIM_FRESH") == "1" or not (venv / ".complete").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            stale_venvs(venv)
        env, seconds = build(root, venv)
        (venv / ".complete").write_text(f"{seconds:.0f}s\n")
    # the installed hone is the copied source, not the repository's editable one
    site = subprocess.run([str(venv / "bin" / "python3"), "-c", "import hone, sys; print(hone.__file__)"],
                          env=clean_env(venv), capture_output=True, text=True, check=True, cwd=root).stdout.strip()
    assert Path(site).resolve().is_relative_to(venv.resolve()), site
    assert (Path(site).parent / "pipeline" / "kfp_components.py").read_text() == \
        (REPO / "hone" / "pipeline" / "kfp_components.py").read_text()
    return {"venv": venv, "env": env, "install_seconds": seconds}


# -- the pods --------------------------------------------------------------------------------------------------
def load(path: Path) -> dict[str, Any]:
    return next(yaml.safe_load_all(path.read_text()))


def compiled(flavour: str, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(cluster YAML, local YAML) of ``flavour``: the pods run the cluster YAML's containers; the local compile's
    flat DAG (no OneOf between the two training variants) says how the tasks are wired."""
    from hone.pipeline.kfp import compile_pipeline

    name = flavour.replace("-", "_")
    cluster = load(compile_pipeline(flavour, out / f"{name}.yaml", image=IMAGE))
    local = load(compile_pipeline(flavour, out / f"{name}-local.yaml", image=IMAGE, local=True))
    return cluster, local


def container(spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


class Pod:
    """Runs one task's container command as the KFP launcher would, on local paths."""

    def __init__(self, image: dict[str, Any], work: Path, extra_env: dict[str, str] | None = None):
        self.image, self.work = image, work
        self.home = work / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.extra_env = extra_env or {}
        self.outputs: dict[str, dict[str, Any]] = {}  # task -> executor output (+ artifact types/uris)

    def executor_input(self, spec: dict[str, Any], name: str, task: dict[str, Any], pipeline: dict[str, Any],
                       workspace: str) -> dict[str, Any]:
        comp = spec["components"][task["componentRef"]["name"]]
        defs = comp.get("inputDefinitions", {})
        wired = task.get("inputs", {})
        params: dict[str, Any] = {}
        for pname, pdef in defs.get("parameters", {}).items():
            src = wired.get("parameters", {}).get(pname)
            if src is None:
                if "defaultValue" in pdef:
                    params[pname] = pdef["defaultValue"]
                continue
            if "componentInputParameter" in src:
                params[pname] = pipeline[src["componentInputParameter"]]
            elif "taskOutputParameter" in src:
                ref = src["taskOutputParameter"]
                params[pname] = self.outputs[ref["producerTask"]]["parameterValues"][ref["outputParameterKey"]]
            else:
                value = src["runtimeValue"]["constant"]
                if isinstance(value, str):
                    value = value.replace("{{$.pipeline_job_name}}", RUN_NAME).replace("{{$.workspace_path}}",
                                                                                      workspace)
                params[pname] = value
        arts: dict[str, Any] = {}
        for aname in defs.get("artifacts", {}):
            ref = wired["artifacts"][aname]["taskOutputArtifact"]
            arts[aname] = {"artifacts": [self.outputs[ref["producerTask"]]["artifacts"][ref["outputArtifactKey"]]]}
        task_dir = self.work / name
        out_defs = comp.get("outputDefinitions", {})
        return {
            "inputs": {"parameterValues": params, "artifacts": arts},
            "outputs": {
                "artifacts": {a: {"artifacts": [{"name": a, "type": {"schemaTitle": d["artifactType"]["schemaTitle"]},
                                                 "uri": str(task_dir / a), "metadata": {}}]}
                              for a, d in out_defs.get("artifacts", {}).items()},
                "parameters": {p: {"outputFile": str(task_dir / "outputs" / p)} for p in out_defs.get("parameters", {})},
                "outputFile": str(task_dir / "executor_output.json"),
            },
        }

    def run(self, name: str, box: dict[str, Any], executor_input: dict[str, Any]) -> subprocess.CompletedProcess:
        """Run ``box`` (a ``deploymentSpec`` container) with ``executor_input``: its command + args, ``{{$}}``
        replaced, its env, HOME writable, no package index."""
        assert box["image"] == IMAGE
        args = [a.replace("{{$}}", json.dumps(executor_input)) for a in box.get("args", [])]
        assert all("{{" not in a for a in args), args
        env = {**clean_env(self.image["venv"]), **self.image["env"], "HOME": str(self.home),
               "HF_HOME": str(self.home / ".cache" / "huggingface"), "MPLCONFIGDIR": str(self.home / ".mpl"),
               # no package index in the pod: the generated `pip install kfp==X --no-deps` must be satisfied
               "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull,
               # tests never reach the hub
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1", "HONE_HOME": str(self.work / "hone-home"),
               **{e["name"]: e["value"] for e in box.get("env", [])}, **self.extra_env}
        (self.work / name).mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(box["command"] + args, env=env, cwd=self.home, capture_output=True, text=True,
                              timeout=POD_TIMEOUT)
        if proc.returncode == 0:
            out = json.loads(Path(executor_input["outputs"]["outputFile"]).read_text())
            arts = {}
            for a, spec in executor_input["outputs"]["artifacts"].items():
                art = dict(spec["artifacts"][0])
                produced = out.get("artifacts", {}).get(a, {}).get("artifacts", [{}])[0]
                art["metadata"] = produced.get("metadata", {})
                arts[a] = art
            self.outputs[name] = {"artifacts": arts, "parameterValues": out.get("parameterValues", {})}
        return proc


def ordered(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The top-level tasks of a flat DAG, producers first."""
    tasks = spec["root"]["dag"]["tasks"]
    done: list[str] = []
    while len(done) < len(tasks):
        for name, t in tasks.items():
            if name not in done and all(d in done for d in t.get("dependentTasks", [])):
                done.append(name)
    return [(n, tasks[n]) for n in done]


def pipeline_values(spec: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    defs = spec["root"]["inputDefinitions"]["parameters"]
    values = {n: d["defaultValue"] for n, d in defs.items() if "defaultValue" in d}
    values.update({k: v for k, v in given.items() if k in defs})
    return values


def chat_file(path: Path, n: int = 20) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def same_wiring(cluster: dict[str, Any], local: dict[str, Any]) -> None:
    """The cluster YAML's containers are the local compile's, and its tasks take the same parameters."""
    inner: dict[str, dict[str, Any]] = {}

    def walk(dag: dict[str, Any]) -> None:
        for name, t in dag["tasks"].items():
            comp = cluster["components"][t["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"])
            else:
                inner[name] = t

    walk(cluster["root"]["dag"])
    for name, t in local["root"]["dag"]["tasks"].items():
        mine = inner[name]
        c, lc = container(cluster, mine), container(local, t)
        assert (c["command"], c["args"], c["image"]) == (lc["command"], lc["args"], lc["image"]), name
        names = set(cluster["components"][mine["componentRef"]["name"]]["inputDefinitions"]["parameters"])

        def plain(src: Any) -> Any:  # inside a condition, pipeline parameters arrive as pipelinechannel--<name>
            if isinstance(src, dict) and "componentInputParameter" in src:
                return {"componentInputParameter": src["componentInputParameter"].removeprefix("pipelinechannel--")}
            return src

        cp = {k: plain(v) for k, v in mine["inputs"].get("parameters", {}).items() if k in names}
        lp = {k: plain(v) for k, v in t["inputs"].get("parameters", {}).items() if k in names}
        differ = {k for k in set(cp) | set(lp) if cp.get(k) != lp.get(k)}
        assert differ <= {"workspace_path"}, (name, differ)


# -- the minimal OSFT pipeline, end to end ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def minimal_run(image, tmp_path_factory, tiny_model_dir) -> dict[str, Any]:
    """osft-minimal, pod by pod: dataset -> training (tiny model, one epoch) -> evaluation (the eval split,
    no lm-eval task) -> registration (into MLflow on SQLite, named by the registration pod's environment)."""
    out = tmp_path_factory.mktemp("osft-minimal")
    cluster, local = compiled("osft-minimal", out)
    same_wiring(cluster, local)
    tracking = f"sqlite:///{out / 'mlflow' / 'mlflow.db'}"
    (out / "mlflow").mkdir()
    values = pipeline_values(local, {
        "phase_01_dataset_man_data_uri": str(chat_file(out / "chat.jsonl")),
        "phase_02_train_man_train_model": str(tiny_model_dir), "phase_02_train_man_train_epochs": 1,
        "phase_02_train_man_train_batch": 4, "phase_02_train_man_train_tokens": 8192,
        "phase_03_eval_man_eval_tasks": [], "phase_04_registry_man_reg_name": "pod-sim-model"})
    pod = Pod(image, out / "run")
    timings, logs = {}, {}
    for name, task in ordered(local):
        if name == "registration":  # this pod is given an MLflow store (there is no Kubeflow registry here)
            pod.extra_env = {"MLFLOW_TRACKING_URI": tracking}
        start = time.monotonic()
        proc = pod.run(name, container(cluster, task), pod.executor_input(local, name, task, values, workspace=""))
        timings[name] = round(time.monotonic() - start, 1)
        logs[name] = proc.stdout + proc.stderr
        if proc.returncode != 0:
            pytest.fail(f"the {name} pod failed:\n{logs[name][-8000:]}")
    print(f"pod simulation: install {image['install_seconds']:.0f}s, pods {timings}")
    return {"pod": pod, "tracking": tracking, "timings": timings, "logs": logs}


def test_minimal_osft_pipeline_runs_pod_by_pod_in_the_image(minimal_run):
    pod = minimal_run["pod"]
    ds = pod.outputs["dataset"]["artifacts"]
    prepared = Path(ds["output_dataset"]["uri"])
    for split in ("train", "eval"):
        assert Path(ds[f"{split}_dataset"]["uri"]).read_text() == (prepared / f"{split}.jsonl").read_text()
    assert ds["train_dataset"]["metadata"]["num_examples"] == 18
    assert ds["output_metrics"]["metadata"]["rows_invalid"] == 0
    tr = pod.outputs["training"]
    assert tr["parameterValues"]["Output"] == "training completed"
    model = Path(tr["artifacts"]["output_model"]["uri"])
    assert (model / "config.json").is_file() and list(model.glob("*.safetensors"))
    assert tr["artifacts"]["output_metrics"]["metadata"]["steps"] >= 1
    ev = pod.outputs["evaluation"]["artifacts"]
    assert "holdout/loss" in ev["output_metrics"]["metadata"]
    assert (Path(ev["output_results"]["uri"]) / "metrics.json").is_file()
    logged = (Path(ev["output_results"]["uri"]) / "samples.jsonl").read_text().splitlines()
    samples = json.loads(Path(ev["output_samples"]["uri"]).read_text())
    assert len(samples) == len(logged) == 2 and samples[0]["task"] == "holdout"  # the eval split's 2 rows
    model_id = pod.outputs["registration"]["parameterValues"]["Output"]
    assert model_id not in ("", "SKIPPED")

    import mlflow

    tracking = minimal_run["tracking"]
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    (version,) = client.search_model_versions("name='pod-sim-model'")
    assert str(version.version) == "1" and "pod-sim-model" in model_id
    tags = client.get_model_version("pod-sim-model", "1").tags
    assert tags.get("pipeline_run") == RUN_NAME or RUN_NAME in json.dumps(tags)


# -- every component of the other flavours -----------------------------------------------------------------------
@pytest.mark.parametrize("flavour", [f for f in FLAVOURS if f != "osft-minimal"])
def test_every_component_of_the_other_flavours_starts_and_reads_its_inputs(minimal_run, tmp_path, flavour):
    """Each task's container, with the flavour's own executor input (its parameter names and defaults as the
    DAG wires them): the dataset and registration pods run for real on a small input; the training and
    evaluation pods, given a base model that does not exist, get as far as resolving every parameter and stop
    with hone's message naming the model (training a model per flavour would cost minutes)."""
    cluster, local = compiled(flavour, tmp_path)
    same_wiring(cluster, local)
    params = local["root"]["inputDefinitions"]["parameters"]
    model_param = next(n for n in params if n in ("phase_02_train_man_model", "phase_02_train_man_train_model"))
    tasks_param = next(n for n in params if n in ("phase_03_eval_man_tasks", "phase_03_eval_man_eval_tasks"))
    values = pipeline_values(local, {"phase_01_dataset_man_data_uri": str(chat_file(tmp_path / "chat.jsonl", 8)),
                                     model_param: str(tmp_path / "no-such-model"), tasks_param: []})
    pod = Pod(minimal_run["pod"].image, tmp_path / "run")
    # each task reads the minimal run's artifacts (the same artifact names in every flavour): the four pods are
    # independent and run side by side
    shared = dict(minimal_run["pod"].outputs)
    pod.outputs.update(shared)
    inputs = {name: (container(cluster, task), pod.executor_input(local, name, task, values, workspace=""))
              for name, task in ordered(local)}
    with ThreadPoolExecutor(max_workers=len(inputs)) as pool:
        procs = dict(zip(inputs, pool.map(lambda n: pod.run(n, *inputs[n]), inputs)))
    for name, proc in procs.items():
        log = proc.stdout + proc.stderr
        if name in ("dataset", "registration"):
            assert proc.returncode == 0, f"{flavour} {name}:\n{log[-4000:]}"
        else:
            assert proc.returncode != 0 and "no-such-model" in log, f"{flavour} {name}:\n{log[-4000:]}"
            assert "HoneError" in log, log[-3000:]
    assert pod.outputs["registration"]["parameterValues"]["Output"] == "SKIPPED"
    train = pod.outputs["dataset"]["artifacts"]["train_dataset"]
    assert train["uri"].startswith(str(tmp_path))
    assert len(Path(train["uri"]).read_text().splitlines()) == train["metadata"]["num_examples"]


# -- the recipe itself (no virtualenv needed) ---------------------------------------------------------------------
def test_the_containerfile_suits_kfp_and_openshift():
    steps = instructions()
    words = [w for w, _ in steps]
    assert words[0] in ("ARG", "FROM")
    env = {k: v for w, rest in steps if w == "ENV" for k, v in assignments(rest).items()}
    # KFP and the TrainJob set the command: no ENTRYPOINT of the base may take it
    assert ("ENTRYPOINT", "[]") in steps
    # OpenShift's random UID (group 0): a numeric non-root USER, HOME made group-writable by a RUN step
    user = [rest for w, rest in steps if w == "USER"][-1]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    home = env["HOME"]
    assert any(w == "RUN" and home in rest and "g=u" in rest and "chgrp" in rest for w, rest in steps)
    assert all(v.startswith(home) for k, v in env.items() if k in ("HF_HOME", "MPLCONFIGDIR"))
    # the Hugging Face hub stays reachable (pipelines pull hf:// models and data)
    assert not {"HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"} & set(env)
    # every COPY source is in the build context both ignore files leave
    ignore = (REPO / ".containerignore").read_text()
    assert (REPO / "Containerfile.dockerignore").read_text() == ignore  # docker reads this one for -f Containerfile
    kept = {line[1:] for line in ignore.splitlines() if line.startswith("!")}
    for w, rest in steps:
        if w == "COPY":
            for src in shlex.split(rest)[:-1]:
                assert src.rstrip("/") in kept, src


def test_make_image_builds_and_pushes_the_versioned_tag():
    from hone.version import __version__

    def dry(*args: str) -> str:
        proc = subprocess.run(["make", "-n", *args, "CONTAINER=podman"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert f"podman build -f Containerfile  -t quay.io/hone/hone:{__version__} ." in dry("image")
    cpu = dry("image", "FLAVOR=cpu", "IMAGE=registry.example/me/hone:dev")
    assert "--build-arg BASE=docker.io/library/python:3.11-slim" in cpu
    assert "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu
    assert "-t registry.example/me/hone:dev-cpu ." in cpu
    assert f"podman push quay.io/hone/hone:{__version__}" in dry("image-push")
