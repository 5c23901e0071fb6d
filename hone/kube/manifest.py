"""From a training configuration and job options to the TrainJob the kubeflow SDK creates.

The pods run ``hone train <algorithm> --config FILE``, the same command as a local run: the resolved
configuration travels in the job as the ``HONE_CONFIG`` variable (YAML, no secrets: that is checked), each
pod writes it to a file and execs hone, which reads the ``PET_*`` variables Kubeflow Trainer sets and starts
torchrun itself when a pod has more than one process. With a PVC, the pods start in its mount directory,
so relative paths in the configuration (data, model, outputs) are on the shared volume.

The manifest is built by the SDK's own ``KubernetesBackend.train`` (``CustomTrainerContainer`` + options);
for ``--dry-run`` the create call is captured instead of sent, so the printed YAML is what would be sent.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hone.config import RunConfig, load_yaml_config
from hone.errors import HoneError
from hone.kube.config import NODE_CONTAINER, KubeJobConfig
from hone.kube.credentials import secret_values as known_secrets

CONFIG_ENV = "HONE_CONFIG"
WORKDIR_ENV = "HONE_WORKDIR"
PVC_ROOT_ENV = "HONE_PVC_ROOT"  # where pvc:// data URIs resolve
VOLUME_NAME = "hone-shared"
# Rendezvous values Kubeflow Trainer sets in each pod (PET_*); a job config must leave them unset.
SET_BY_TRAINER = ("node_rank", "master_addr", "master_port", "rdzv_endpoint", "rdzv_id")


@dataclass
class JobPlan:
    """A resolved job: what the Kubernetes and the local backend both run."""

    algorithm: str
    run: RunConfig
    job: KubeJobConfig
    name: str
    num_nodes: int
    num_procs: int | str
    params: dict[str, Any]  # the flat training configuration the pods read
    notes: list[str] = field(default_factory=list)

    @property
    def config_yaml(self) -> str:
        return yaml.dump(self.params, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)

    @property
    def command(self) -> list[str]:
        return pod_command(self.algorithm, workdir=self.job.mount_path is not None)

    @property
    def env(self) -> dict[str, str]:
        """Literal environment of the trainer container (secrets are references, added separately)."""
        env = {CONFIG_ENV: self.config_yaml, "PYTHONUNBUFFERED": "1"}
        if self.job.mount_path:
            env[WORKDIR_ENV] = self.job.mount_path
            env[PVC_ROOT_ENV] = self.job.mount_path
        return {**env, **self.job.env}


def load_run_config(algorithm: str, config_file: str | Path | None, overrides: dict[str, Any] | None = None
                    ) -> RunConfig:
    """The training configuration as ``hone train`` resolves it (YAML file, then explicit values), with the
    progress bar off unless asked for (it only clutters pod logs)."""
    params: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if config_file:
        params = load_yaml_config(config_file)
        origins = {k: f"config file {config_file}" for k in params}
    for key, value in (overrides or {}).items():
        params[key] = value
        origins[key] = f"option --{key.replace('_', '-')}"
    params.setdefault("progress", False)
    return RunConfig.from_flat(algorithm, params, source="configuration", origins=origins)


def _carried(run: RunConfig, nproc: int | str) -> dict[str, Any]:
    """Flat parameters for the pods: every resolved value (so a different hone default in the image cannot
    change the run), minus unset optional ones."""
    defaults = {n: f.default for s in RunConfig.sections(run.algorithm).values() for n, f in s.model_fields.items()}
    out = {}
    for key, value in run.to_flat().items():
        if key == "algorithm" or (value is None and defaults.get(key) is None):
            continue
        out[key] = value
    out["nproc_per_node"] = nproc
    return out


def plan(algorithm: str, run: RunConfig, job: KubeJobConfig) -> JobPlan:
    """Check that the training and job options fit together, and fix the process layout."""
    d = run.distributed
    given = [k for k in SET_BY_TRAINER if getattr(d, k) is not None]
    if given:
        raise HoneError(f"{', '.join(given)} must not be set for a Kubernetes job: Kubeflow Trainer sets the "
                        "rendezvous of every pod (PET_* variables)", where="training configuration",
                        fix=f"remove {', '.join(given)} from the configuration")
    if job.num_nodes is not None and d.nnodes is not None and job.num_nodes != d.nnodes:
        raise HoneError(f"num_nodes ({job.num_nodes}) and the configuration's nnodes ({d.nnodes}) disagree",
                        where="--num-nodes / nnodes", fix="give one of them")
    num_nodes = job.num_nodes or d.nnodes or 1
    if job.num_procs_per_node is not None and d.nproc_per_node is not None and job.num_procs_per_node != d.nproc_per_node:
        raise HoneError(f"num_procs_per_node ({job.num_procs_per_node}) and the configuration's nproc_per_node "
                        f"({d.nproc_per_node}) disagree", where="--num-procs-per-node / nproc_per_node",
                        fix="give one of them")
    nproc = job.num_procs_per_node or d.nproc_per_node or "auto"
    gpus = int(job.resources_per_node.get("gpu", 0))
    if isinstance(nproc, int) and gpus and nproc > gpus:
        raise HoneError(f"{nproc} processes per node but only {gpus} GPU(s) per node",
                        where="--num-procs-per-node / resources_per_node.gpu",
                        fix="use at most one process per GPU, or request more GPUs")
    name = job.name or f"hone-{algorithm}-{secrets.token_hex(4)}"
    p = JobPlan(algorithm=algorithm, run=run, job=job, name=name, num_nodes=num_nodes, num_procs=nproc,
                params=_carried(run, nproc))
    p.notes = _notes(p)
    return p


def _notes(p: JobPlan) -> list[str]:
    notes = []
    if not p.job.image:
        notes.append(f"no image given: the runtime {p.job.runtime!r}'s image must have hone installed (the stock "
                     "torch-distributed image does not); pass --image or set HONE_IMAGE")
    mount = p.job.mount_path
    if mount is None:
        notes.append("no --pvc: data and models must be in the image or downloadable, and outputs stay inside the "
                     "pod (lost when it ends)" + ("; with several nodes, every pod needs the same data" if
                                                  p.num_nodes > 1 else ""))
    else:
        for key in ("data_path", "model_path", "ckpt_output_dir"):
            value = str(p.params.get(key) or "")
            if value.startswith("/") and not (value == mount or value.startswith(mount.rstrip("/") + "/")):
                notes.append(f"{key} {value} is outside the PVC mount {mount}: it must exist inside every pod")
    return notes


def pod_command(algorithm: str, *, workdir: bool) -> list[str]:
    """What every training pod runs: write $HONE_CONFIG to a file, then ``hone train ALGO --config FILE``."""
    lines = ["set -eu"]
    if workdir:
        lines.append(f'cd "${WORKDIR_ENV}"')
    lines += ['config="${TMPDIR:-/tmp}/hone-config-$$.yaml"',
              f'printf \'%s\\n\' "${CONFIG_ENV}" > "$config"',
              f'exec hone train {algorithm} --config "$config"']
    return ["/bin/sh", "-c", "\n".join(lines)]


def sdk_request(p: JobPlan):
    """The SDK's trainer and options for this plan (``TrainerClient.train(runtime, trainer=..., options=...)``)."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import (ActiveDeadlineSeconds, Annotations, ContainerPatch, JobSetSpecPatch,
                                          JobSetTemplatePatch, JobSpecPatch, JobTemplatePatch, Labels, Name,
                                          PodSpecPatch, PodTemplatePatch, ReplicatedJobPatch, RuntimePatch,
                                          TrainerCommand, TrainingRuntimeSpecPatch)

    job = p.job
    trainer = CustomTrainerContainer(image=job.image or "", num_nodes=p.num_nodes,
                                     resources_per_node=dict(job.resources_per_node) or None, env=p.env)
    options: list[Any] = [Name(p.name), TrainerCommand(p.command)]
    if job.labels:
        options.append(Labels(dict(job.labels)))
    if job.annotations:
        options.append(Annotations(dict(job.annotations)))
    if job.active_deadline_seconds:
        options.append(ActiveDeadlineSeconds(job.active_deadline_seconds))

    secret_env = [{"name": s.env, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": s.key,
                                                                  **({"optional": True} if s.optional else {})}}}
                  for s in job.secrets()]
    mounts = [{"name": VOLUME_NAME, "mountPath": job.mount_path}] if job.mount_path else []
    containers = [ContainerPatch(name=NODE_CONTAINER, env=secret_env or None, volume_mounts=mounts or None)] \
        if (secret_env or mounts) else None
    volumes = [{"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": job.pvc}}] if job.pvc else None
    pull = [{"name": s} for s in job.image_pull_secrets] or None
    meta = {k: dict(v) for k, v in (("labels", job.labels), ("annotations", job.annotations)) if v} or None
    if containers or volumes or pull or meta:
        pod = PodTemplatePatch(metadata=meta, spec=PodSpecPatch(volumes=volumes, image_pull_secrets=pull,
                                                                 containers=containers)
                               if (containers or volumes or pull) else None)
        options.append(RuntimePatch(training_runtime_spec=TrainingRuntimeSpecPatch(template=JobSetTemplatePatch(
            spec=JobSetSpecPatch(replicated_jobs=[ReplicatedJobPatch(
                name=NODE_CONTAINER, template=JobTemplatePatch(spec=JobSpecPatch(template=pod)))])))))
    return trainer, options


class _CaptureApi:
    """Stands in for CustomObjectsApi in a dry run: keeps the body instead of sending it."""

    body: dict[str, Any] | None = None

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **_):
        self.body = body
        return body


def assumed_runtime(name: str):
    """A runtime object for a dry run: a ClusterTrainingRuntime of that name with a custom (torch) trainer."""
    from kubeflow.trainer.types.types import Runtime, RuntimeKind, RuntimeTrainer, TrainerType

    trainer = RuntimeTrainer(trainer_type=TrainerType.CUSTOM_TRAINER, framework="torch", image="")
    return Runtime(name=name, kind=RuntimeKind.CLUSTER_TRAINING_RUNTIME, trainer=trainer)


def render(p: JobPlan, *, runtime=None, namespace: str | None = None) -> dict[str, Any]:
    """The TrainJob body the SDK would create for this plan, without a cluster."""
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend

    backend = KubernetesBackend.__new__(KubernetesBackend)  # no connection: only the create call is used
    backend.custom_api = _CaptureApi()
    backend.core_api = None
    backend.namespace = namespace or "default"
    trainer, options = sdk_request(p)
    try:
        backend.train(runtime=runtime or assumed_runtime(p.job.runtime), trainer=trainer, options=options)
    except ValueError as err:
        raise HoneError(f"the kubeflow SDK refused the job: {err}", where="job options",
                        fix="check the options the message names") from None
    body = json.loads(json.dumps(backend.custom_api.body))
    if namespace:
        body["metadata"]["namespace"] = namespace
    return body


def manifest_yaml(manifest: dict[str, Any]) -> str:
    """YAML for humans and ``kubectl apply -f`` (multi-line values as blocks)."""
    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper, value: str):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=120)


@dataclass
class Submission:
    """What was submitted (or rendered, or run locally) and where."""

    name: str
    namespace: str | None
    backend: str
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False
    status: Any = None  # JobStatus after waiting (kubernetes), TrainResult (local)

    def __str__(self) -> str:
        return self.name


def dry_run_manifest(p: JobPlan) -> dict[str, Any]:
    """The manifest, checked for secrets, without any cluster (what ``--dry-run`` prints and a local run runs)."""
    manifest = render(p, namespace=p.job.namespace)
    check_no_secrets(p, manifest, known_secrets())
    return manifest


def check_no_secrets(p: JobPlan, manifest: dict[str, Any], secret_values: list[str]) -> None:
    """Refuse a manifest that holds any known secret value; name where it came from, never the value."""
    text = json.dumps(manifest)
    leaked = [s for s in secret_values if s and s in text]
    if not leaked:
        return
    places = [(f"training parameter {k}", json.dumps(v)) for k, v in p.params.items()]
    places += [(f"--env {k}", v) for k, v in p.job.env.items()]
    places += [(f"--labels {k}", f"{k}={v}") for k, v in p.job.labels.items()]
    places += [(f"--annotations {k}", f"{k}={v}") for k, v in p.job.annotations.items()]
    places += [("--image", p.job.image or ""), ("--name", p.name)]
    where = [name for name, value in places if any(s in value for s in leaked)] or ["the TrainJob manifest"]
    raise HoneError("a secret value (a token or key from this environment) would be written in clear into the "
                    "TrainJob", where=", ".join(where),
                    fix="keep credentials in Kubernetes Secrets and reference them with --secret-env VAR=SECRET[:KEY]")

