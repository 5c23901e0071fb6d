"""The four pipeline stages as library functions: dataset, training, evaluation, registration.

The local runner (:mod:`hone.pipeline.runner`) and the KFP components (:mod:`hone.pipeline.kfp`) both call
these; each takes the resolved pipeline parameters (:func:`hone.pipeline.params.resolve`), the output
directories of the stages before it, and its own output directory, and returns a :class:`StageResult` whose
``summary`` is small JSON (it goes into the run manifest, the report and KFP metrics).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from hone.config import EvalConfig, PipelineConfig, RegistryConfig
from hone.errors import HoneError
from hone.layout import (METRICS_FILE, RESULT_FILE, STAGE_FILE, STAGES,  # noqa: F401 (STAGES: re-exported)
                         TrainingLayout)
from hone.secrets import HF_TOKEN_ENV
from hone.pipeline.params import (DATA_URI, in_pipeline_terms, section_values, settings, training_config,
                                  training_params)

log = logging.getLogger("hone")

SKIPPED = "SKIPPED"
#: With no Kubeflow Model Registry address, a registration stage whose environment names an MLflow store
#: (``sqlite:///...``, ``http://mlflow:5000``) registers there instead of skipping.
MLFLOW_TRACKING_ENV = "MLFLOW_TRACKING_URI"


@dataclass
class StageResult:
    """What a stage produced: headline figures (JSON) and the files the next stages and the report use."""

    stage: str
    summary: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # role -> path relative to the stage directory

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "summary": self.summary, "files": self.files}

    def write(self, out_dir: str | Path) -> "StageResult":
        from hone.io import atomic_write_text

        atomic_write_text(Path(out_dir) / STAGE_FILE, json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return self

    @classmethod
    def read(cls, out_dir: Path) -> "StageResult":
        d = json.loads((Path(out_dir) / STAGE_FILE).read_text())
        return cls(d["stage"], d["summary"], d.get("files", {}))


def _hf_token(token: str) -> None:
    """A token passed as a parameter is used like the hf-token secret (which wins when both are set)."""
    if token and not os.environ.get(HF_TOKEN_ENV):
        os.environ[HF_TOKEN_ENV] = token


# -- stage 1 ---------------------------------------------------------------------------------------------
def dataset_stage(values: Mapping[str, Any], out_dir: str | Path, *, train_file: str | Path | None = None,
                  eval_file: str | Path | None = None) -> StageResult:
    """Download, validate, convert and split the dataset: ``train.jsonl``, ``eval.jsonl``, ``dataset_report.json``.

    ``train_file`` / ``eval_file``: also write the two splits there, one JSONL file each (the KFP component's
    ``train_dataset`` and ``eval_dataset`` artifacts, the upstream pipelines' dataset outputs).
    """
    import shutil

    from hone.config import DataConfig
    from hone.data.stage import EVAL_FILE, REPORT_FILE, TRAIN_FILE, prepare_dataset

    _hf_token(settings(values, PipelineConfig).dataset_hf_token)
    cfg = DataConfig(**section_values(None, values, ("data",), stage="dataset"))
    report = prepare_dataset(cfg, out_dir, **section_values(None, values, ("train",), stage="dataset"))
    for name, dst in ((TRAIN_FILE, train_file), (EVAL_FILE, eval_file)):
        if dst is not None:
            src = Path(out_dir) / name
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst) if src.is_file() else Path(dst).write_text("")
    rows = report.rows
    summary = {"source": report.source, "format": report.format, "sha256": report.sha256,
               "rows_read": rows["read"], "rows_valid": rows["valid"], "rows_invalid": rows["invalid"],
               "train_rows": rows["train"], "eval_rows": rows["eval"]}
    return StageResult("dataset", summary, {"train": TRAIN_FILE, "eval": EVAL_FILE, "report": REPORT_FILE})


# -- stage 2 ---------------------------------------------------------------------------------------------
def job_options(values: Mapping[str, Any], *, pvc: str | None = None, pvc_path: str | None = None) -> dict[str, Any]:
    """The pipeline parameters as TrainJob options (:class:`hone.kube.config.KubeJobConfig`)."""
    from hone.kube.config import parse_pairs

    pc: PipelineConfig = settings(values, PipelineConfig)
    procs = values["phase_02_train_opt_num_procs"]
    opts: dict[str, Any] = {
        "runtime": pc.runtime,  # the ClusterTrainingRuntime (upstream: training-hub)
        "num_nodes": pc.workers,
        "num_procs_per_node": int(procs) if procs.isdigit() else pc.gpu,  # auto/gpu: one per GPU of the pod
        "resources_per_node": {"gpu": pc.gpu, "cpu": pc.cpu, "memory": pc.memory},
        "env": parse_pairs(pc.env_vars, "phase_02_train_opt_env_vars"),
        "labels": parse_pairs(pc.labels, "phase_02_train_opt_labels"),
        "annotations": parse_pairs(pc.annotations, "phase_02_train_opt_annotations"),
        "image_pull_secrets": pc.pull_secret,
    }
    if pvc:
        opts.update(pvc=pvc, pvc_path=pvc_path)
    return opts


def training_stage(algorithm: str, values: Mapping[str, Any], dataset_dir: str | Path, out_dir: str | Path, *,
                   launcher: str = "local", pvc: str | None = None, pvc_path: str | None = None,
                   submit_backend: str = "kubernetes", run_config_hook: Callable[[Any], None] | None = None,
                   trainjob_timeout: float | None = None, trainjob_poll: float = 10.0) -> StageResult:
    """Fine-tune the base model on the train rows of the dataset stage's directory (read as they are: the
    dataset stage validated and split them).

    ``launcher="local"`` trains in this process (torchrun when more than one process per worker is asked
    for); ``"trainjob"`` submits a Kubeflow TrainJob with ``phase_02_train_man_workers`` pods sharing the
    PVC ``pvc`` mounted at ``pvc_path`` (where ``out_dir`` and ``dataset_dir`` must be), and waits for it,
    following node-0's log, up to ``trainjob_timeout`` seconds (default: the pipeline's ``train_timeout``
    setting when it has one; None or 0: no limit), polling every ``trainjob_poll`` seconds; the job is deleted
    when it fails, times out or the step is cancelled.
    A rerun into the same directory with the same parameters resumes from its last checkpoint.
    """
    from hone.api import run
    from hone.training.run import TrainResult

    pc: PipelineConfig = settings(values, PipelineConfig)
    _hf_token(pc.train_hf_token)
    out = Path(out_dir)
    data = str(Path(dataset_dir))  # the prepared directory: its train rows are used as they are
    cfg = training_config(algorithm, values, data, str(out))
    notes = []
    if cfg.train.use_liger:
        notes.append("use_liger: Liger's RMSNorm/SwiGLU/RoPE kernels on CUDA with liger-kernel installed; hone's "
                     "fused LM-head loss in any case")
    if launcher == "local":
        if pc.workers > 1:
            notes.append(f"phase_02_train_man_workers={pc.workers} applies on a cluster; "
                         "this run trains on this machine")
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume_from": "auto"})})
        if run_config_hook:
            run_config_hook(cfg)
        result = run(cfg)
    elif launcher == "trainjob":
        if not pvc or not pvc_path:
            raise HoneError("a TrainJob needs the pipeline's shared PVC", where="training stage",
                            fix="compile the pipeline with its workspace PVC (cluster mode)")
        for p, what in ((out, "output"), (Path(dataset_dir), "dataset")):
            if not str(p.resolve()).startswith(str(Path(pvc_path).resolve())):
                raise HoneError(f"the training {what} directory {p} is not on the shared PVC {pvc_path}",
                                where="training stage", fix="stage the data on the workspace PVC")
        from hone.kube.submit import submit

        flat = {**training_params(algorithm, values, data, str(out)), "resume_from": "auto"}
        flat.pop("nproc_per_node", None)  # a TrainJob's processes per pod are the job's (job_options)
        # waits up to the timeout (0/None: no limit); a failed, timed-out or cancelled (SIGTERM) job is deleted,
        # with the Secret that holds any credentials of its values; its failure message becomes the error
        timeout = trainjob_timeout if trainjob_timeout is not None else getattr(pc, "train_timeout", None)
        sub = submit(algorithm, params=flat, job=job_options(values, pvc=pvc, pvc_path=pvc_path),
                     backend=submit_backend, wait=True, follow_logs=True, timeout=float(timeout) if timeout else None,
                     poll_interval=trainjob_poll, delete_on_failure=True, delete_on_cancel=True,
                     on_log=lambda line: print(line, flush=True))
        notes.append(f"TrainJob {sub.name} ({pc.workers} workers)")
        result_file = TrainingLayout(out).result
        if not result_file.is_file():
            raise HoneError(f"TrainJob {sub.name} finished without {result_file}", where="training stage",
                            fix=f"look at the job's logs: hone kube logs {sub.name}")
        result = TrainResult.from_json(json.loads(result_file.read_text()))
    else:
        raise HoneError(f"unknown launcher {launcher!r}", where="training stage", fix="use local or trainjob")
    if result.status != "completed":
        raise HoneError(f"training stopped early ({result.status}) after step {result.steps}",
                        where="training stage", fix="rerun the pipeline: training resumes from its last checkpoint")
    if result.final_model_dir is None:
        raise HoneError("training wrote no final model", where="training stage", fix="keep save_final_checkpoint on")
    rel = lambda p: str(Path(p).resolve().relative_to(out.resolve()))  # noqa: E731
    summary = {"algorithm": algorithm, "base_model": cfg.train.model_path, "steps": result.steps,
               "epochs": result.epochs_completed, "first_loss": result.first_loss, "final_loss": result.final_loss,
               "samples_trained": result.samples_trained, "tokens_trained": result.tokens_trained,
               "train_seconds": round(result.elapsed_s, 2), "world_size": result.world_size,
               "data": result.data_report.summary(), "notes": notes}
    if result.resumed_from:
        summary["resumed_from"] = str(result.resumed_from)
    files = {"model": rel(result.final_model_dir), "metrics": rel(result.metrics_path),
             "loss_chart_png": rel(result.loss_chart_png), "loss_chart_html": rel(result.loss_chart_html),
             "params": rel(result.params_path), "result": TrainingLayout(out).result.name}
    return StageResult("training", summary, files)


# -- stage 3 ---------------------------------------------------------------------------------------------
EVAL_MODEL_ARGS = {"dtype": "dtype", "trust_remote_code": "trust_remote_code", "max_length": "max_seq_len",
                   "device": "device"}
EVAL_GEN_KWARGS = {"max_new_tokens": "max_new_tokens", "max_gen_toks": "max_new_tokens"}


def _mapped(given: Mapping[str, Any], table: Mapping[str, str], name: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(table))
    if unknown:
        raise HoneError(f"{name} has keys hone does not use: {', '.join(unknown)}", where=name,
                        fix=f"use only {', '.join(sorted(table))}")
    return {table[k]: v for k, v in given.items()}


def _eval_extra(pc: PipelineConfig) -> dict[str, Any]:
    """The lm-eval style ``model_args`` / ``gen_kwargs`` mappings as :class:`EvalConfig` fields."""
    return {**_mapped(pc.eval_model_args, EVAL_MODEL_ARGS, "phase_03_eval_opt_model_args"),
            **_mapped(pc.eval_gen_kwargs, EVAL_GEN_KWARGS, "phase_03_eval_opt_gen_kwargs")}


def check_evaluation(values: Mapping[str, Any]) -> None:
    """What the evaluation stage would refuse (task names, task directories, model/generation arguments,
    verbosity, task data that cannot be had offline), checked in a second or two: the runner calls it before
    training spends its time."""
    from hone.evaluation.harness import check_task_names

    _eval_extra(settings(values, PipelineConfig))
    from hone.evaluation.availability import check_task_data

    ev = section_values(None, values, ("eval",))
    try:
        check_task_names(ev["tasks"], ev["include_path"] or [])
        check_task_data(ev["tasks"])
    except HoneError as err:
        raise in_pipeline_terms(err) from None


def evaluation_stage(values: Mapping[str, Any], training_dir: str | Path, dataset_dir: str | Path,
                     out_dir: str | Path, *, samples_file: str | Path | None = None) -> StageResult:
    """Evaluate the fine-tuned model (lm-eval tasks + the eval split) and compare it with its base model.

    ``dataset_dir``: the dataset stage's directory, or its eval split as one JSONL file (the KFP
    ``eval_dataset`` artifact). ``samples_file``: also write the logged samples there as one JSON list (empty
    without ``phase_03_eval_opt_log_samples``): the KFP component's ``output_samples``, as upstream's.
    """
    from hone.data.stage import EVAL_FILE
    from hone.evaluation import run_evaluation

    pc: PipelineConfig = settings(values, PipelineConfig)
    _hf_token(pc.dataset_hf_token or pc.train_hf_token)
    training = StageResult.read(Path(training_dir))
    eval_file = Path(dataset_dir) if Path(dataset_dir).is_file() else Path(dataset_dir) / EVAL_FILE
    has_eval = eval_file.is_file() and eval_file.stat().st_size > 0
    kwargs = {
        **section_values(None, values, ("eval",)),
        "model_path": str(Path(training_dir) / training.files["model"]), "output_dir": str(out_dir),
        "base_model_path": values["phase_02_train_man_model"] if pc.compare_base else None,
        "eval_data_path": str(eval_file) if has_eval else None, "overwrite": True, **_eval_extra(pc),
    }
    if not kwargs["tasks"] and not kwargs["include_path"] and not has_eval:
        raise HoneError("nothing to evaluate: no lm-eval task and an empty eval split", where="phase_03_eval_man_tasks",
                        fix="name lm-eval tasks, or set phase_01_dataset_man_data_split below 1")
    # lm-eval's own log level while it runs (what reaches the terminal is still hone's choice: --verbose)
    lm_eval_log = logging.getLogger("lm_eval")
    level = lm_eval_log.level
    lm_eval_log.setLevel(getattr(logging, pc.eval_verbosity.upper()))
    try:
        result = run_evaluation(EvalConfig.from_flat(kwargs))
    except HoneError as err:
        raise in_pipeline_terms(err) from None
    finally:
        lm_eval_log.setLevel(level)
    summary: dict[str, Any] = {"metrics": result.metrics, "seconds": round(result.elapsed_s, 2),
                               "forgetting": result.forgetting}
    if result.base_metrics is not None:
        summary["base_metrics"] = result.base_metrics
    files = {str(k): str(k) for k in result.files}
    if samples_file is not None:
        from hone.io import atomic_write_text

        logged = Path(out_dir) / "samples.jsonl"
        rows = [json.loads(line) for line in logged.read_text().splitlines() if line.strip()] \
            if logged.is_file() else []
        atomic_write_text(Path(samples_file), json.dumps(rows, indent=2, default=str) + "\n")
    return StageResult("evaluation", summary, files)


# -- stage 4 ---------------------------------------------------------------------------------------------
def registration_stage(values: Mapping[str, Any], training_dir: str | Path, evaluation_dir: str | Path | None,
                       dataset_dir: str | Path, out_dir: str | Path, *, registry: Any = None,
                       pipeline_run: str | None = None, next_free_version: bool = False,
                       eval_metrics: Mapping[str, Any] | None = None,
                       training_metrics: Mapping[str, Any] | None = None) -> StageResult:
    """Register the fine-tuned model with its lineage, or return ``SKIPPED`` when no registry is configured.

    A Kubeflow Model Registry is used when ``phase_04_registry_man_address`` is set; otherwise ``registry``
    (a :class:`hone.config.RegistryConfig`, e.g. the embedded MLflow one of a local run) when given, else the
    MLflow store of ``$MLFLOW_TRACKING_URI`` when set (a KFP registration pod).
    ``next_free_version``: the version was not asked for, so a taken one becomes the next free patch version
    (a rerun with other parameters registers 1.0.1) instead of an error.
    ``eval_metrics`` / ``training_metrics``: the figures of the KFP metrics artifacts (upstream's
    ``eval_metrics`` and ``input_metrics`` inputs). The lineage reads the same figures from the evaluation and
    training directories; these are used where those directories do not hold them (no evaluation results;
    a training run without ``training_result.json``), recorded as ``eval_<name>`` / ``training_<name>``.
    """
    from hone.registry import register_model

    v = values
    given: RegistryConfig = settings(values, RegistryConfig)
    if registry is None and not given.registry_address and os.environ.get(MLFLOW_TRACKING_ENV):
        # a KFP registration pod given an MLflow store (e.g. through a secret as env): register there
        registry = RegistryConfig(registry_backend="mlflow", registry_tracking_uri=os.environ[MLFLOW_TRACKING_ENV])
    if given.registry_address:
        cfg = given.model_copy(update={"registry_backend": "kubeflow"})
    elif registry is not None:  # the local runner's registry, with the model's name, version, author...
        own = section_values(None, values, ("registry",))
        cfg = registry.model_copy(update={k: own[k] for k in own if k not in ("registry_address", "registry_port")})
    else:
        log.info("no model registry configured (phase_04_registry_man_address is empty): registration skipped")
        return StageResult("registration", {"model_id": SKIPPED, "reason": "no registry configured"})
    if next_free_version:
        cfg = cfg.model_copy(update={"registry_version": _free_version(cfg)})
    training = StageResult.read(Path(training_dir))
    dataset = StageResult.read(Path(dataset_dir))
    metadata = {"pipeline_algorithm": training.summary["algorithm"]}
    if pipeline_run:
        metadata["pipeline_run"] = pipeline_run
    eval_results: Any = evaluation_dir
    if eval_metrics and not _has_eval_results(evaluation_dir):
        eval_results = dict(eval_metrics)
    run_files = {f.name for f in Path(training_dir).iterdir()}
    if training_metrics and not run_files & {RESULT_FILE, METRICS_FILE}:
        metadata.update({f"training_{k}": val for k, val in training_metrics.items()})
    try:
        info = register_model(Path(training_dir) / training.files["model"], cfg, run_dir=training_dir,
                              eval_results=eval_results, base_model=v["phase_02_train_man_model"],
                              dataset_uri=v[DATA_URI], dataset_sha256=dataset.summary.get("sha256"),
                              metadata=metadata)
    except HoneError as err:  # the registry speaks of --version; a pipeline user sets the parameter
        raise HoneError(err.what, where=(err.where or "").replace("--version", "phase_04_registry_man_version"),
                        fix=err.fix) from None
    if info is None:
        return StageResult("registration", {"model_id": SKIPPED, "reason": "registry backend none"})
    summary = {"model_id": info.ref, **info.to_json(), "backend": cfg.registry_backend}
    return StageResult("registration", json.loads(json.dumps(summary, default=str)))


def _has_eval_results(evaluation_dir: str | Path | None) -> bool:
    """Whether ``evaluation_dir`` holds evaluation results the lineage can read (a JSON file, or a directory with
    ``metrics.json`` / ``eval_results.json`` / ``results.json``)."""
    if evaluation_dir is None:
        return False
    p = Path(evaluation_dir)
    return p.is_file() or any((p / n).is_file() for n in ("metrics.json", "eval_results.json", "results.json"))


def _free_version(cfg: RegistryConfig) -> str:
    """``cfg.registry_version``, or the next patch version (1.0.0 -> 1.0.1 ...) not yet registered."""
    from hone.registry import open_registry

    version = cfg.registry_version
    reg = open_registry(cfg)
    if reg is None:
        return version
    taken = {v.version for v in reg.list_versions(cfg.registry_name)}
    head, _, patch = version.rpartition(".")
    n = int(patch) if patch.isdigit() and head else None
    while version in taken and n is not None:
        n += 1
        version = f"{head}.{n}"
    if version != cfg.registry_version:
        log.info("%s:%s is already registered: registering %s:%s", cfg.registry_name, cfg.registry_version,
                 cfg.registry_name, version)
    return version
