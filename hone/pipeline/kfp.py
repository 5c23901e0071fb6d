"""hone's four-stage pipeline as Kubeflow Pipelines (KFP 2) YAML, for OpenShift AI, in six flavours.

``sft``, ``osft``, ``lora`` (expert: every parameter) and their ``-minimal`` variants (the ``_man_``
parameters only; the others are compiled in as constants with the algorithm's defaults). The parameters,
their types and defaults come from the one table, :mod:`hone.pipeline.params`; the components are thin
wrappers of the stage functions (:mod:`hone.pipeline.kfp_components`).

Compile-time options (the seeds' "compile-time parameters"): the container image, the workspace PVC (size,
storage class, access modes), caching, and ``local`` -- which leaves out everything only a cluster has (the
workspace PVC, Kubernetes secrets, node selectors, GPU requests, the TrainJob branch) so that the pipeline
runs under ``kfp.local``. See docs/kfp.md.
"""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from hone import secrets
from hone.errors import HoneError
from hone.secrets import KUBE_SECRETS
from hone.pipeline.params import DATA_URI, PARAMS, Param, flavour_algorithm, params_for

GPU_RESOURCE = "nvidia.com/gpu"
ACCESS_MODES = ("ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany", "ReadWriteOncePod")
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
WORKERS = "phase_02_train_man_workers"

# Kubernetes secrets -> environment variables, per stage (seed 001/004). Only the secret's *name* is in the
# YAML; the values stay in the cluster. ``optional``: the pod starts without the secret.
def _secret(name: str, optional: bool = True) -> tuple[str, dict[str, str], bool]:
    return name, {key: key for key in KUBE_SECRETS[name]}, optional


HF_TOKEN_SECRET = _secret(secrets.HF_TOKEN_SECRET)
S3_SECRET = _secret(secrets.S3_SECRET)
OCI_SECRET = _secret(secrets.OCI_PULL_SECRET)
# Upstream attaches kubernetes-credentials (required) to its training task, which always submits a TrainJob.
# hone's TrainJob branch needs it the same way (API server URL + token; the pod's service-account CA checks
# the server); single-pod training gets it too, as upstream's task does, but optional: it runs without it.
KUBE_SECRET = _secret(secrets.KUBE_CREDENTIALS_SECRET, optional=False)
KUBE_SECRET_OPTIONAL = _secret(secrets.KUBE_CREDENTIALS_SECRET, optional=True)
IMAGE_PULL_POLICY = "IfNotPresent"  # every task, as upstream's (a pinned image is pulled once per node)
SECRETS = {
    "dataset": (HF_TOKEN_SECRET, S3_SECRET),
    "training": (HF_TOKEN_SECRET, OCI_SECRET, KUBE_SECRET_OPTIONAL),
    "training-trainjob": (HF_TOKEN_SECRET, OCI_SECRET, KUBE_SECRET),
    "evaluation": (HF_TOKEN_SECRET, OCI_SECRET),  # the base model (compare_base) may be oci:// too
    "registration": (),
}


def default_image() -> str:
    """``$HONE_IMAGE``, else hone's published image for this version."""
    from hone.version import __version__

    return os.environ.get("HONE_IMAGE") or f"quay.io/hone/hone:{__version__}"


class Components(NamedTuple):
    dataset: Any
    training: Any  # trains in its own pod
    training_trainjob: Any  # submits a TrainJob; gets the workspace volume (claim name) through dsl.TaskConfig
    evaluation: Any
    registration: Any


def components(image: str | None = None) -> Components:
    """The four stage functions of :mod:`hone.pipeline.kfp_components` as KFP components on ``image``."""
    from kfp import dsl

    from hone.pipeline import kfp_components as fns

    base = image or default_image()
    make = lambda f, **kw: dsl.component(base_image=base, **kw)(f)  # noqa: E731
    passthrough = [dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.KUBERNETES_VOLUMES, apply_to_task=True),
                   dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.ENV, apply_to_task=True)]
    return Components(make(fns.dataset), make(fns.training), make(fns.training, task_config_passthroughs=passthrough),
                      make(fns.evaluation), make(fns.registration))


def component_inputs(fn: Callable) -> dict[str, Any]:
    """The pipeline-parameter inputs of a component function: name -> annotation."""
    return {n: p.annotation for n, p in inspect.signature(fn).parameters.items() if n.startswith("phase_")}


def _annotation(p: Param) -> Any:
    return {list: list, dict: dict}.get(p.type, p.type)


def _signature(flavour: str) -> inspect.Signature:
    """The pipeline function's signature: the flavour's parameters, the data URI first and required."""
    algorithm = flavour_algorithm(flavour)
    exposed = params_for(flavour)
    ordered = [p for p in exposed if p.name == DATA_URI] + [p for p in exposed if p.name != DATA_URI]
    return inspect.Signature([
        inspect.Parameter(p.name_for(flavour), inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_annotation(p),
                          default=inspect.Parameter.empty if p.name == DATA_URI else
                          p.default_for(algorithm, flavour))
        for p in ordered], return_annotation=str)


def _docstring(flavour: str) -> str:
    """Description + ``Args:`` (KFP shows each line as the parameter's description in the run form)."""
    algorithm = flavour_algorithm(flavour)
    kind = "entry-level: one required parameter" if flavour.endswith("-minimal") else "expert: every parameter"
    head = (f"hone {algorithm.upper()} fine-tuning pipeline ({kind}): dataset -> training -> evaluation -> "
            f"model registry. Only {DATA_URI} is required. Docs: docs/kfp.md in the hone repository.")
    lines = [f"    {p.name_for(flavour)}: {p.help}" for p in params_for(flavour)]
    return head + "\n\nArgs:\n" + "\n".join(lines) + "\n"


def _secrets(task: Any, stage: str) -> None:
    from kfp import kubernetes

    for name, keys, optional in SECRETS[stage]:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, optional=optional)


def pipeline_function(flavour: str, *, image: str | None = None, storage_class: str = "nfs-csi",
                      pvc_size: str = "50Gi", access_modes: Sequence[str] = ("ReadWriteMany",),
                      enable_caching: bool = False, local: bool = False) -> Any:
    """The ``@dsl.pipeline`` object of ``flavour`` (compile it, or call it under ``kfp.local.init``)."""
    try:
        from kfp import dsl, kubernetes
        from kfp.dsl import pipeline_channel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise HoneError(f"KFP is not installed ({err})", where="hone pipeline compile",
                        fix="pip install 'hone[pipelines]' (kfp and kfp-kubernetes 2.17)") from None
    if not hasattr(dsl, "TaskConfigPassthrough") or not hasattr(dsl, "WorkspaceConfig"):
        raise HoneError("this kfp has no pipeline workspaces / TaskConfig", where="kfp",
                        fix="pip install 'kfp==2.17.0' 'kfp-kubernetes==2.17.0'")
    algorithm = flavour_algorithm(flavour)
    comps = components(image)
    signature = _signature(flavour)
    access_modes = list(access_modes)
    bad = [m for m in access_modes if m not in ACCESS_MODES]
    if not access_modes or bad:
        raise HoneError(f"invalid PVC access mode(s): {', '.join(bad) or '(none given)'}", where="--access-mode",
                        fix=f"use {', '.join(ACCESS_MODES)}; the TrainJob's pods share the PVC: ReadWriteMany")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", storage_class or ""):
        raise HoneError(f"invalid storage class name {storage_class!r}", where="--storage-class",
                        fix="use the name of an RWX storage class of the cluster (`oc get sc`), e.g. nfs-csi")
    workspace = "" if local else dsl.WORKSPACE_PATH_PLACEHOLDER

    def pick(fn: Callable, values: dict[str, Any]) -> dict[str, Any]:
        return {n: values[n] for n in component_inputs(fn) if n in values}

    def finish(task: Any, stage: str, display: str) -> Any:
        task.set_caching_options(enable_caching)
        task.set_display_name(display)
        if not local:
            _secrets(task, stage)
            kubernetes.set_image_pull_policy(task, IMAGE_PULL_POLICY)
        return task

    def body(*args: Any, **kwargs: Any) -> Any:
        given = signature.bind(*args, **kwargs).arguments
        # every parameter of the algorithm: the flavour's as pipeline inputs, the others as constants
        v = {p.name: given[p.name_for(flavour)] if p.name_for(flavour) in given
             else p.default_for(algorithm, flavour) for p in PARAMS if algorithm in p.algorithms}

        ds = comps.dataset(algorithm=algorithm, **pick(comps.dataset.python_func, v))
        finish(ds, "dataset", "dataset")
        data = ds.outputs["output_dataset"]

        train_args = dict(algorithm=algorithm, workspace_path=workspace, input_dataset=data,
                          **pick(comps.training.python_func, v))

        def in_pod() -> Any:
            t = finish(comps.training(launcher="local", **train_args), "training", "training")
            if not local:
                t.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(v["phase_02_train_man_gpu"])
                t.set_cpu_request(v["phase_02_train_opt_cpu"]).set_memory_request(v["phase_02_train_opt_memory"])
            return t

        def trainjob() -> Any:
            t = finish(comps.training_trainjob(launcher="trainjob", **train_args), "training-trainjob",
                       "training (TrainJob)")
            t.set_env_variable("HONE_IMAGE", image or default_image())  # the TrainJob pods run the same image
            return t

        outs = ("output_model", "output_training", "output_metrics")
        workers = v[WORKERS]
        if local or not isinstance(workers, pipeline_channel.PipelineChannel):
            # kfp.local runs no dsl.OneOf: a local compile trains in its own process
            t = trainjob() if (not local and workers > 1) else in_pod()
            model, run, train_metrics = (t.outputs[o] for o in outs)
        else:
            with dsl.If(workers <= 1, name="one-worker"):
                tp = in_pod()
            with dsl.Else(name="trainjob-workers"):
                tj = trainjob()
            model, run, train_metrics = (dsl.OneOf(tj.outputs[o], tp.outputs[o]) for o in outs)

        # wired as upstream's: the evaluator gets the eval split and the model; registration gets the model, the
        # training and evaluation metrics and the evaluation results (+ hone's lineage: dataset, training run)
        ev = comps.evaluation(algorithm=algorithm, eval_dataset=ds.outputs["eval_dataset"], model_artifact=model,
                              input_training=run,
                              **pick(comps.evaluation.python_func, v))
        finish(ev, "evaluation", "evaluation")
        if not local:
            ev.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
            kubernetes.add_node_selector(ev, label_key=GPU_NODE_LABEL[0], label_value=GPU_NODE_LABEL[1])

        reg = comps.registration(algorithm=algorithm, pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                 input_dataset=data, input_model=model, input_training=run,
                                 input_metrics=train_metrics, eval_metrics=ev.outputs["output_metrics"],
                                 eval_results=ev.outputs["output_results"],
                                 **pick(comps.registration.python_func, v))
        finish(reg, "registration", "registration")
        return reg.output  # the pipeline's output: the registered model's id, or SKIPPED

    body.__signature__ = signature  # type: ignore[attr-defined]
    body.__annotations__ = {**{n: p.annotation for n, p in signature.parameters.items()}, "return": str}
    body.__name__ = body.__qualname__ = f"hone_{flavour.replace('-', '_')}"
    body.__doc__ = _docstring(flavour)
    body.__module__ = __name__

    config = None
    if not local:
        try:
            workspace_cfg = dsl.WorkspaceConfig(size=pvc_size, kubernetes=dsl.KubernetesWorkspaceConfig(
                pvcSpecPatch={"storageClassName": storage_class, "accessModes": access_modes}))
        except ValueError as err:
            raise HoneError(f"invalid workspace PVC size {pvc_size!r}", where="--pvc-size",
                            fix="use a Kubernetes quantity such as 50Gi or 500Mi") from err
        config = dsl.PipelineConfig(workspace=workspace_cfg)
    return dsl.pipeline(name=f"hone-{flavour}", description=body.__doc__.split("\n\n")[0],
                        pipeline_config=config)(body)


def compile_pipeline(flavour: str, output: str | Path, *, image: str | None = None, storage_class: str = "nfs-csi",
                     pvc_size: str = "50Gi", access_modes: Sequence[str] = ("ReadWriteMany",),
                     enable_caching: bool = False, local: bool = False) -> Path:
    """Compile ``flavour`` to a KFP YAML file at ``output`` (written atomically) and return its path."""
    from kfp import compiler

    from hone.io import atomic_write_text

    pipeline = pipeline_function(flavour, image=image, storage_class=storage_class, pvc_size=pvc_size,
                                 access_modes=access_modes, enable_caching=enable_caching, local=local)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.compiling.yaml")
    try:
        compiler.Compiler().compile(pipeline, str(tmp))
        atomic_write_text(out, tmp.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    return out


__all__ = ["compile_pipeline", "pipeline_function", "components", "component_inputs", "default_image", "SECRETS"]
