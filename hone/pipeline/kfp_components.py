"""The four KFP components of hone's pipelines, and the library code their bodies call.

Each component is a plain function here; :func:`hone.pipeline.kfp.components` turns them into
``dsl.component`` objects with the base image chosen at compile time. KFP ships a component as the *source
of its function*, executed on its own in the container: a body cannot use this module's globals, so each one
imports what it needs. The bodies only glue KFP artifacts to the stage functions of
:mod:`hone.pipeline.stages` (the same ones the local runner calls):

    values = stage_values(algorithm, locals())      # -> hone.pipeline.params.resolve(algorithm, {...})
    result = <stage>_stage(values, ...)             # the library does the work
    log_numbers(output_metrics, result.summary)     # headline figures -> Output[Metrics]

Signatures are written by hand (KFP needs them explicit); the inputs are named exactly like the pipeline
parameters of :mod:`hone.pipeline.params`, and ``tests/pipeline/test_kfp.py`` checks that the union of the
components' inputs is exactly that table and that every type matches. Inputs that belong to one algorithm
only (OSFT's rank ratio, LoRA's rank...) carry the table's default and are left out by the pipelines of the
other algorithms. (``Optional[int] = None`` would read better, but kfp.local 2.17 fails on a ``None``
integer input.)

No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
"""
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output, TaskConfig

# ---------------------------------------------------------------------------------------------------------
# library side: called from inside the component bodies (the container has hone installed)
# ---------------------------------------------------------------------------------------------------------

#: The inputs of the components that are not pipeline parameters.
PLUMBING_INPUTS = frozenset({"algorithm", "launcher", "workspace_path", "task_config", "pipeline_run"})
#: Artifacts named as the upstream OpenShift AI pipelines name them (the others are ``input_*`` / ``output_*``).
UPSTREAM_ARTIFACTS = frozenset({"train_dataset", "eval_dataset", "model_artifact", "eval_metrics", "eval_results"})
#: The training component's return value (upstream's ``Output`` parameter).
TRAINING_DONE = "training completed"


def stage_values(algorithm: str, given: Mapping[str, Any]) -> Dict[str, Any]:
    """The component's pipeline parameters (``phase_*`` arguments) resolved and checked for ``algorithm``.

    The inputs of another algorithm, which this pipeline does not pass, arrive with their component defaults
    (the table's): they are dropped. A changed value for another algorithm is left in, and
    :func:`~hone.pipeline.params.resolve` rejects it with its message.
    """
    from hone.pipeline.params import BY_NAME, resolve

    def foreign_default(name: str, value: Any) -> bool:
        p = BY_NAME.get(name)
        return p is not None and algorithm not in p.algorithms and value == p.component_default

    picked = {k: v for k, v in given.items() if k.startswith("phase_") and not foreign_default(k, v)}
    return resolve(algorithm, picked, origins={k: "KFP pipeline parameters" for k in picked})


def log_numbers(metrics: Any, summary: Mapping[str, Any], prefix: str = "") -> None:
    """Copy every finite number of a stage summary (nested mappings flattened with ``/``) into ``metrics``."""
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            log_numbers(metrics, value, prefix=f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(name, value)


def split_metadata(summary: Mapping[str, Any], split: str) -> Dict[str, Any]:
    """The metadata of a ``train_dataset`` / ``eval_dataset`` artifact (as upstream's: rows, source, format)."""
    return {"split": split, "num_examples": summary.get(f"{split}_rows"), "format": "jsonl",
            "source": summary.get("source"), "source_format": summary.get("format"), "sha256": summary.get("sha256")}


def metrics_of(artifact: Any) -> Dict[str, Any]:
    """The numbers of a KFP ``Metrics`` input artifact (its metadata; KFP's own keys left out)."""
    meta = getattr(artifact, "metadata", None) or {}
    return {k: v for k, v in meta.items() if k not in ("display_name", "store_session_info")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def workspace_claim(task_config: Any, workspace_path: str) -> str:
    """The claim name of the pipeline's workspace PVC, from the task's passed-through volumes.

    KFP names the workspace PVC ``<run name>-kfp-workspace`` and mounts it at ``workspace_path``; a task learns
    the name only through ``dsl.TaskConfig`` when its component passes ``KUBERNETES_VOLUMES`` through.
    """
    from hone.errors import HoneError

    mounts = {m.get("name"): m.get("mountPath") for m in (getattr(task_config, "volume_mounts", None) or [])}
    for vol in getattr(task_config, "volumes", None) or []:
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and mounts.get(vol.get("name")) == workspace_path:
            return claim
    raise HoneError(f"the workspace PVC mounted at {workspace_path} is not in this task's configuration",
                    where="training task (TrainJob launcher)",
                    fix="compile the pipeline for a cluster (not --local) with kfp>=2.17, whose backend passes the "
                        "workspace volume to the task; or set phase_02_train_man_workers to 1")


def _training_work_dir(workspace_path: str) -> tuple[Path, Optional[Path]]:
    """Where training writes: the workspace PVC (a retried task resumes there) or a scratch directory."""
    if workspace_path:
        return Path(workspace_path) / "hone", None
    scratch = Path(tempfile.mkdtemp(prefix="hone-kfp-training-"))
    return scratch, scratch


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory between a KFP artifact and the workspace PVC (replacing ``dst``)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def run_training(algorithm: str, given: Mapping[str, Any], *, launcher: str, workspace_path: str,
                 task_config: Any, dataset_dir: str, output_model: Any, output_metrics: Any,
                 output_loss_chart: Any, output_training: Any) -> Dict[str, Any]:
    """The training component: ``training_stage`` in this pod (``launcher="local"``) or as a Kubeflow
    TrainJob on the workspace PVC (``"trainjob"``), then its outputs copied into the KFP artifacts."""
    from hone.errors import HoneError
    from hone.pipeline.stages import training_stage

    values = stage_values(algorithm, given)
    work, scratch = _training_work_dir(workspace_path)
    out = work / "training"
    data = Path(dataset_dir)
    pvc = None
    try:
        if launcher == "trainjob":
            if not workspace_path:
                raise HoneError("a TrainJob needs the pipeline workspace", where="training task",
                                fix="compile the pipeline for a cluster (not --local)")
            pvc = workspace_claim(task_config, workspace_path)
            copy_tree(data, work / "dataset")  # the TrainJob's pods read the data from the shared PVC
            data = work / "dataset"
        out.mkdir(parents=True, exist_ok=True)
        result = training_stage(algorithm, values, data, out, launcher=launcher, pvc=pvc,
                                pvc_path=workspace_path if pvc else None).write(out)
        copy_tree(out / result.files["model"], Path(output_model.path))
        output_model.metadata.update({"algorithm": algorithm, "base_model": values["phase_02_train_man_model"]})
        shutil.copyfile(out / result.files["loss_chart_html"], output_loss_chart.path)
        # the run's small files (stage.json, parameters, result, metrics, charts): evaluation and registration
        # read them; checkpoints and the model (its own artifact) stay out
        run = Path(output_training.path)
        run.mkdir(parents=True, exist_ok=True)
        for f in out.iterdir():
            if f.is_file():
                shutil.copyfile(f, run / f.name)
        log_numbers(output_metrics, result.summary)
        return result.summary
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def training_view(training_dir: str, model_dir: str) -> Path:
    """A training stage directory rebuilt from the two training artifacts (the run's files + the model), as
    :func:`~hone.pipeline.stages.evaluation_stage` and ``registration_stage`` expect it (symbolic links)."""
    from hone.pipeline.stages import StageResult

    view = Path(tempfile.mkdtemp(prefix="hone-kfp-training-view-"))
    for f in Path(training_dir).iterdir():
        (view / f.name).symlink_to(f.resolve())
    model = view / StageResult.read(view).files["model"]
    model.parent.mkdir(parents=True, exist_ok=True)
    model.symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    return view


# ---------------------------------------------------------------------------------------------------------
# the components (their source is what runs in the container)
# ---------------------------------------------------------------------------------------------------------
def dataset(
    algorithm: str,
    phase_01_dataset_man_data_uri: str,
    phase_01_dataset_man_data_split: float,
    phase_01_dataset_opt_hf_token: str,
    phase_01_dataset_opt_subset: int,
    phase_02_train_opt_max_seq_len: int,
    phase_02_train_opt_seed: int,
    output_dataset: Output[Dataset],
    output_metrics: Output[Metrics],
    train_dataset: Output[Dataset],
    eval_dataset: Output[Dataset],
):
    """Stage 1: download, validate, convert and split the dataset (train.jsonl, eval.jsonl, dataset_report.json).

    Outputs: ``output_dataset`` (the prepared directory training reads), ``train_dataset`` / ``eval_dataset``
    (the two splits as JSONL files, the upstream pipelines' dataset outputs) and ``output_metrics`` (row counts).
    """
    from pathlib import Path

    from hone.pipeline.kfp_components import log_numbers, split_metadata, stage_values
    from hone.pipeline.stages import dataset_stage

    values = stage_values(algorithm, locals())
    out = Path(output_dataset.path)
    result = dataset_stage(values, out, train_file=train_dataset.path, eval_file=eval_dataset.path).write(out)
    log_numbers(output_metrics, result.summary)
    train_dataset.metadata.update(split_metadata(result.summary, "train"))
    eval_dataset.metadata.update(split_metadata(result.summary, "eval"))


def training(
    algorithm: str,
    launcher: str,
    workspace_path: str,
    task_config: TaskConfig,
    input_dataset: Input[Dataset],
    output_model: Output[Model],
    output_metrics: Output[Metrics],
    output_loss_chart: Output[HTML],
    output_training: Output[Artifact],
    phase_01_dataset_man_data_uri: str,
    phase_02_train_man_train_batch: int,
    phase_02_train_man_epochs: int,
    phase_02_train_man_gpu: int,
    phase_02_train_man_model: str,
    phase_02_train_man_tokens: int,
    phase_02_train_man_workers: int,
    phase_02_train_opt_annotations: str,
    phase_02_train_opt_cpu: str,
    phase_02_train_opt_env_vars: str,
    phase_02_train_opt_hf_token: str,
    phase_02_train_opt_labels: str,
    phase_02_train_opt_learning_rate: float,
    phase_02_train_opt_lr_warmup: int,
    phase_02_train_opt_lr_scheduler: str,
    phase_02_train_opt_max_seq_len: int,
    phase_02_train_opt_memory: str,
    phase_02_train_opt_num_procs: str,
    phase_02_train_opt_pull_secret: str,
    phase_02_train_opt_save_epoch: bool,
    phase_02_train_opt_save_full_state: bool,
    phase_02_train_opt_fsdp_sharding: str,
    phase_02_train_opt_save_samples: int,
    phase_02_train_opt_seed: int,
    phase_02_train_opt_use_liger: bool,
    phase_02_train_opt_lr_scheduler_kwargs: str,
    phase_02_train_opt_runtime: str,
    phase_02_train_opt_timeout: int,
    phase_02_train_opt_processed_data: bool,
    phase_02_train_opt_unmask: bool,
    phase_02_train_opt_save_final: bool,
    phase_02_train_opt_logging_steps: int,
    phase_02_train_opt_tensorboard_log_dir: str,
    phase_02_train_opt_wandb_project: str,
    phase_02_train_opt_wandb_entity: str,
    phase_02_train_opt_wandb_run_name: str,
    # one algorithm's inputs: its expert pipeline's defaults (checked by the tests); others leave them so
    phase_02_train_man_unfreeze_rank_ratio: float = 0.25,
    phase_02_train_opt_target_patterns: str = "",
    phase_02_train_man_lora_r: int = 16,
    phase_02_train_man_lora_alpha: int = 32,
    phase_02_train_opt_lora_dropout: float = 0.0,
    phase_02_train_opt_lora_target_modules: str = "",
    phase_02_train_opt_lora_load_in_4bit: bool = True,
    phase_02_train_opt_lora_load_in_8bit: bool = False,
    phase_02_train_opt_lora_use_dora: bool = False,
    phase_02_train_opt_lora_use_rslora: bool = False,
    phase_02_train_opt_lora_sample_packing: bool = False,
    phase_02_train_opt_micro_batch_size: int = 2,
    phase_02_train_opt_grad_accum_steps: int = 1,
    phase_02_train_opt_bf16: bool = True,
    phase_02_train_opt_fp16: bool = False,
    phase_02_train_opt_tf32: bool = True,
    phase_02_train_opt_flash_attention: bool = True,
    phase_02_train_opt_enable_model_splitting: bool = False,
    phase_02_train_opt_save_steps: int = 500,
    phase_02_train_opt_save_total_limit: int = 3,
    phase_02_train_opt_eval_steps: int = 500,
    phase_02_train_opt_dataset_type: str = "",
    phase_02_train_opt_field_messages: str = "",
    phase_02_train_opt_field_instruction: str = "",
    phase_02_train_opt_field_input: str = "",
    phase_02_train_opt_field_output: str = "",
) -> str:
    """Stage 2: fine-tune the base model in this pod, or through a Kubeflow TrainJob (launcher="trainjob").

    Returns a one-line status (upstream's ``Output``: "training completed")."""
    from hone.pipeline.kfp_components import TRAINING_DONE, run_training

    run_training(algorithm, locals(), launcher=launcher, workspace_path=workspace_path, task_config=task_config,
                 dataset_dir=input_dataset.path, output_model=output_model, output_metrics=output_metrics,
                 output_loss_chart=output_loss_chart, output_training=output_training)
    return TRAINING_DONE


def evaluation(
    algorithm: str,
    eval_dataset: Input[Dataset],
    model_artifact: Input[Model],
    input_training: Input[Artifact],
    output_metrics: Output[Metrics],
    output_results: Output[Artifact],
    output_samples: Output[Artifact],
    phase_01_dataset_man_data_uri: str,
    phase_01_dataset_opt_hf_token: str,
    phase_02_train_opt_hf_token: str,
    phase_02_train_man_model: str,
    phase_03_eval_man_tasks: list,
    phase_03_eval_opt_batch: str,
    phase_03_eval_opt_gen_kwargs: dict,
    phase_03_eval_opt_limit: int,
    phase_03_eval_opt_log_samples: bool,
    phase_03_eval_opt_model_args: dict,
    phase_03_eval_opt_verbosity: str,
    phase_03_eval_opt_include_path: str,
    phase_03_eval_opt_compare_base: bool,
):
    """Stage 3: lm-eval tasks and the eval split on the fine-tuned model, compared with the base model.

    Inputs named as upstream's evaluator: ``eval_dataset`` (the eval split, JSONL) and ``model_artifact``.
    Outputs: ``output_metrics`` (the tuned model's figures, the base model's as ``base/...``),
    ``output_results`` (a directory: eval_results.json, metrics.json, the comparison...) and
    ``output_samples`` (the logged samples, one JSON list)."""
    from pathlib import Path

    from hone.pipeline.kfp_components import log_numbers, stage_values, training_view
    from hone.pipeline.stages import evaluation_stage

    values = stage_values(algorithm, locals())
    out = Path(output_results.path)
    out.mkdir(parents=True, exist_ok=True)
    result = evaluation_stage(values, training_view(input_training.path, model_artifact.path), eval_dataset.path,
                              out, samples_file=output_samples.path).write(out)
    log_numbers(output_metrics, {**result.summary["metrics"], "base": result.summary.get("base_metrics") or {},
                                 "seconds": result.summary["seconds"]})


def registration(
    algorithm: str,
    pipeline_run: str,
    input_dataset: Input[Dataset],
    input_model: Input[Model],
    input_training: Input[Artifact],
    input_metrics: Input[Metrics],
    eval_metrics: Input[Metrics],
    eval_results: Input[Artifact],
    phase_01_dataset_man_data_uri: str,
    phase_02_train_man_model: str,
    phase_04_registry_man_address: str,
    phase_04_registry_man_author: str,
    phase_04_registry_man_name: str,
    phase_04_registry_man_version: str,
    phase_04_registry_opt_description: str,
    phase_04_registry_opt_format_name: str,
    phase_04_registry_opt_format_version: str,
    phase_04_registry_opt_port: int,
) -> str:
    """Stage 4: register the model in the Kubeflow Model Registry; returns its id, or SKIPPED without an address.

    Inputs as upstream's registration: ``input_model``, ``input_metrics`` (training's), ``eval_metrics`` and
    ``eval_results`` (evaluation's), plus hone's lineage sources ``input_dataset`` and ``input_training``."""
    import tempfile
    from pathlib import Path

    from hone.pipeline.kfp_components import metrics_of, stage_values, training_view
    from hone.pipeline.stages import registration_stage

    values = stage_values(algorithm, locals())
    out = Path(tempfile.mkdtemp(prefix="hone-kfp-registration-"))
    result = registration_stage(values, training_view(input_training.path, input_model.path), eval_results.path,
                                input_dataset.path, out, pipeline_run=pipeline_run,
                                eval_metrics=metrics_of(eval_metrics),
                                training_metrics=metrics_of(input_metrics)).write(out)
    return str(result.summary["model_id"])


COMPONENT_FUNCTIONS = (dataset, training, evaluation, registration)
__all__ = ["COMPONENT_FUNCTIONS", "PLUMBING_INPUTS", "UPSTREAM_ARTIFACTS", "TRAINING_DONE", "split_metadata",
           "metrics_of", "stage_values", "log_numbers", "workspace_claim", "run_training",
           "training_view", "dataset", "training", "evaluation", "registration"]
