"""From a training configuration and job options to the TrainJob the kubeflow SDK creates.

The pods run ``hone train <algorithm> --config FILE``, the same command as a local run: the resolved
configuration travels in the job as the ``HONE_CONFIG`` variable (YAML, no secrets: that is checked), each
pod writes it to a file and execs hone, which reads the ``PET_*`` variables Kubeflow Trainer sets and starts
torchrun itself when a pod has more than one process. With a PVC, the pods start in its mount directory,
so relative paths in the configuration (data, model, outputs) are on the shared volume.

The manifest is built by the SDK's own ``KubernetesBackend.train`` (``CustomTrainerContainer`` + options);
for ``--dry-run`` the create call is captured instead of sent, so the printed YAML is what would be sent.

Credentials never sit in the TrainJob's spec (anyone who may read TrainJobs could read them). A training
parameter that carries one (a data URI with ``user:password@`` or a presigned/token query, a token-shaped
value, the value of a secret variable of this process) and an environment value that does (``--env``, the
proxy variables inherited from this process: ``HTTPS_PROXY=http://user:pass@proxy:3128``) go into a
Kubernetes Secret ``<job>-credentials`` that the pods read by ``secretKeyRef``: created just before the
TrainJob, owned by it (deleted with it) and deleted by hone when it deletes the job. The parameters travel
as ``HONE_SECRET_CONFIG`` (YAML appended to the pod's config file); the printed manifest shows their
redacted form only, as a comment in ``HONE_CONFIG``.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hone.config import RunConfig, load_yaml_config
from hone.errors import HoneError
from hone.kube.config import NODE_CONTAINER, KubeJobConfig
from hone.kube.credentials import secret_values as known_secrets
from hone.secrets import REDACTED, redact_uri, scrub_text
from hone.secrets import carries_credentials as has_credentials

CONFIG_ENV = "HONE_CONFIG"
SECRET_CONFIG_ENV = "HONE_SECRET_CONFIG"  # the parameters that carry credentials, from the job's Secret
SECRET_SUFFIX = "-credentials"
# Proxy settings of this process, carried to the pods unless the job sets them (--env); with credentials in
# them (http://user:pass@proxy:3128) they go through the job's Secret.
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
             "all_proxy")
MANAGED_BY = {"app.kubernetes.io/managed-by": "hone"}
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
    inherited_env: dict[str, str] = field(default_factory=dict)  # proxy settings of this process
    secret_params: dict[str, Any] = field(default_factory=dict)  # parameters that carry credentials
    secret_env: dict[str, str] = field(default_factory=dict)  # environment values that carry credentials

    @property
    def public_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k not in self.secret_params}

    @property
    def config_yaml(self) -> str:
        text = yaml.dump(self.public_params, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
        for key, value in self.secret_params.items():  # what they are, without what would let one use them
            text += f"# {key}: {redact(str(value))}  (from Secret {self.secret_name}, key {SECRET_CONFIG_ENV})\n"
        return text

    @property
    def secret_name(self) -> str:
        return f"{self.name}{SECRET_SUFFIX}"

    @property
    def secret_data(self) -> dict[str, str]:
        """The values of the job's Secret (empty: no Secret is needed)."""
        data = dict(self.secret_env)
        if self.secret_params:
            data[SECRET_CONFIG_ENV] = yaml.dump(self.secret_params, Dumper=getattr(yaml, "CSafeDumper",
                                                                                   yaml.SafeDumper), sort_keys=False)
        return data

    @property
    def command(self) -> list[str]:
        return pod_command(self.algorithm, workdir=self.job.mount_path is not None,
                           secret_config=bool(self.secret_params))

    @property
    def env(self) -> dict[str, str]:
        """Literal environment of the trainer container (secrets are references, added separately)."""
        env = {CONFIG_ENV: self.config_yaml, "PYTHONUNBUFFERED": "1"}
        if self.job.mount_path:
            env[WORKDIR_ENV] = self.job.mount_path
            env[PVC_ROOT_ENV] = self.job.mount_path
        env.update({**self.inherited_env, **self.job.env})
        return {k: v for k, v in env.items() if k not in self.secret_env}

    def secret_manifest(self, namespace: str | None = None, *, redacted: bool = True) -> dict[str, Any] | None:
        """The job's Secret (None when nothing needs one); ``redacted``: values shown as [REDACTED]."""
        data = self.secret_data
        if not data:
            return None
        meta: dict[str, Any] = {"name": self.secret_name, "labels": {**MANAGED_BY, "hone/trainjob": self.name}}
        if namespace:
            meta["namespace"] = namespace
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
                "stringData": {k: REDACTED if redacted else v for k, v in data.items()}}


def redact(value: str, known: list[str] | None = None) -> str:
    """``value`` as it may be shown: URI userinfo and signed-query values as ***, secrets masked."""
    return scrub_text(redact_uri(value), known_secrets() if known is None else known)


def carries_credentials(value: Any, known: list[str] | None = None) -> bool:
    """Whether a parameter or environment value holds a credential (:func:`hone.secrets.carries_credentials`,
    with the secret values this process knows)."""
    return has_credentials(value, known_secrets() if known is None else known)


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
    referenced = {s.env for s in job.secrets()}
    p.inherited_env = {k: os.environ[k] for k in PROXY_ENV
                       if os.environ.get(k) and k not in job.env and k not in referenced}
    known = known_secrets()
    p.secret_params = {k: v for k, v in p.params.items() if carries_credentials(v, known)}
    p.secret_env = {k: v for k, v in {**p.inherited_env, **job.env}.items() if carries_credentials(v, known)}
    p.notes = _notes(p)
    return p


def _notes(p: JobPlan) -> list[str]:
    notes = []
    if p.secret_data:
        shown = [f"{k} {redact(str(v))}" for k, v in {**p.secret_params, **p.secret_env}.items()]
        notes.append(f"credentials in {', '.join(shown)} go to the pods through Secret {p.secret_name} (created "
                     "with the TrainJob, deleted with it), never into the TrainJob's spec")
    image = p.job.image or ""
    last = image.rsplit("/", 1)[-1]
    if image and "@" not in last and (":" not in last or last.endswith(":latest")):
        notes.append(f"image {image} has no tag or the tag latest: Kubernetes then pulls it at every pod start "
                     "(imagePullPolicy Always; the TrainJob API cannot set the policy): pin a version tag or a digest "
                     "so pods use IfNotPresent")
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


def pod_command(algorithm: str, *, workdir: bool, secret_config: bool = False) -> list[str]:
    """What every training pod runs: write $HONE_CONFIG (and $HONE_SECRET_CONFIG, the parameters that come
    from the job's Secret: other keys, so the two make one mapping) to a private file, then
    ``hone train ALGO --config FILE``."""
    lines = ["set -eu"]
    if workdir:
        lines.append(f'cd "${WORKDIR_ENV}"')
    lines += ['config="${TMPDIR:-/tmp}/hone-config-$$.yaml"']
    if secret_config:
        lines += ["umask 077", f'printf \'%s\\n%s\\n\' "${CONFIG_ENV}" "${SECRET_CONFIG_ENV}" > "$config"']
    else:
        lines += [f'printf \'%s\\n\' "${CONFIG_ENV}" > "$config"']
    lines += [f'exec hone train {algorithm} --config "$config"']
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
    secret_env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": p.secret_name, "key": key}}}
                   for key in p.secret_data]  # the job's own Secret (credentials found in its values)
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
    secret: dict[str, Any] | None = None  # the job's credentials Secret, values redacted (None: none needed)

    @property
    def secret_name(self) -> str | None:
        return self.secret["metadata"]["name"] if self.secret else None

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
    moved = [v for v in p.secret_env.values()] + [json.dumps(v)[1:-1] if isinstance(v, str) else json.dumps(v)
                                                  for v in p.secret_params.values()]
    leaked = [s for s in list(secret_values) + moved if s and s in text]
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

