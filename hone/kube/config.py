"""Where and how a training run runs on Kubernetes: the TrainJob side of a job.

The training side stays in :class:`hone.config.RunConfig` (the same YAML ``hone train`` reads); this schema
holds only what Kubeflow Trainer needs: runtime, image, nodes, processes, resources, environment, labels,
annotations, pull secrets, shared storage and which Kubernetes Secrets feed which environment variables.
Every invalid value is a :class:`HoneError` naming the option and the accepted form.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hone.config import HoneModel
from hone.errors import HoneError, suggest
from hone.io import load_yaml_mapping
from hone.secrets import HF_TOKEN_SECRET, KUBE_SECRETS, OCI_PULL_SECRET, S3_SECRET, is_secret_env

DEFAULT_RUNTIME = "torch-distributed"
DEFAULT_PVC_PATH = "/mnt/shared"
NODE_CONTAINER = "node"  # the trainer container of the stock runtimes (and the step name prefix: node-0, ...)

# Variables Kubeflow Trainer sets in each pod; a job must not set them itself.
RESERVED_ENV = frozenset({"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT",
                          "HONE_CONFIG", "HONE_WORKDIR"})

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035 (TrainJob names)
_RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # namespaces
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_CPU = re.compile(r"^(\d+(\.\d{1,3})?|\.\d{1,3}|\d+m)$")
_BYTES = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|e\d+)?$")
_COUNT = re.compile(r"^\d+$")
_STANDARD_RESOURCES = ("gpu", "cpu", "memory", "ephemeral-storage", "storage")


class SecretEnv(HoneModel):
    """An environment variable of the training pods filled from a Kubernetes Secret (secretKeyRef)."""

    model_config = ConfigDict(extra="forbid")

    env: str
    secret: str
    key: str
    optional: bool = False

    @model_validator(mode="after")
    def _names(self) -> "SecretEnv":
        if not _ENV_NAME.match(self.env):
            raise HoneError(f"invalid environment variable name {self.env!r}", where="secret_env",
                            fix="use letters, digits and _ (not starting with a digit)")
        if not _DNS_SUBDOMAIN.match(self.secret) or len(self.secret) > 253:
            raise HoneError(f"invalid Secret name {self.secret!r}", where=f"secret_env {self.env}",
                            fix="Secret names are lowercase letters, digits, '-' and '.'")
        if not re.match(r"^[-._A-Za-z0-9]+$", self.key):
            raise HoneError(f"invalid Secret key {self.key!r}", where=f"secret_env {self.env}",
                            fix="Secret keys are letters, digits, '-', '_' and '.'")
        return self

    @classmethod
    def parse(cls, text: str, optional: bool = False) -> "SecretEnv":
        """``VAR=secret`` (key VAR) or ``VAR=secret:key``."""
        var, sep, ref = text.partition("=")
        if not sep or not var.strip() or not ref.strip():
            raise HoneError(f"invalid secret reference {text!r}", where="--secret-env",
                            fix="write VAR=SECRET or VAR=SECRET:KEY, e.g. HF_TOKEN=hf-token")
        secret, _, key = ref.partition(":")
        return cls(env=var.strip(), secret=secret.strip(), key=(key or var).strip(), optional=optional)


# The secrets of the RHOAI fine-tuning examples, attached as optional references unless turned off (the
# kubernetes-credentials Secret is not: training pods do not talk to the Kubernetes API).
DEFAULT_SECRETS: tuple[SecretEnv, ...] = tuple(
    SecretEnv(env=env, secret=secret, key=env, optional=True)
    for secret in (HF_TOKEN_SECRET, S3_SECRET, OCI_PULL_SECRET) for env in KUBE_SECRETS[secret])


def parse_pairs(value: Any, what: str) -> dict[str, str]:
    """``"K=V,K=V"`` (the seeds' form), a list of such strings, or a mapping -> ``{K: V}``."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    items = [value] if isinstance(value, str) else list(value)
    out: dict[str, str] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            key, sep, val = part.partition("=")
            if not sep or not key.strip():
                raise HoneError(f"invalid {what} entry {part.strip()!r}: expected KEY=VALUE", where=f"--{what}",
                                fix=f"write --{what} KEY=VALUE,KEY=VALUE (repeat the option for values with commas)")
            out[key.strip()] = val.strip()
    return out


def _check_label_key(key: str, what: str) -> None:
    prefix, sep, name = key.rpartition("/")
    ok = bool(name) and len(name) <= 63 and _LABEL_NAME.match(name)
    if sep:
        ok = ok and len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))
    if not ok:
        raise HoneError(f"invalid {what} key {key!r}", where=f"--{what}s",
                        fix="keys are [prefix/]name: name up to 63 letters, digits, '-', '_', '.', starting and "
                            "ending alphanumeric; prefix a DNS subdomain")


def normalize_resources(resources: dict[str, Any] | None) -> dict[str, str]:
    """Check and normalise ``{"gpu": 2, "cpu": 5, "memory": "10G"}``; values become Kubernetes quantities.

    ``gpu`` becomes ``nvidia.com/gpu`` in the TrainJob (the SDK's alias); extended resources
    (``vendor.com/name``) and MIG profiles (``mig-1g.5gb``) pass through with integer counts.
    """
    out: dict[str, str] = {}
    for raw_key, raw in (resources or {}).items():
        key = str(raw_key).strip()
        low = key.lower()
        value = str(raw).strip() if raw is not None else ""
        if isinstance(raw, float) and raw.is_integer():
            value = str(int(raw))
        where = f"resources_per_node.{key}"
        if low not in _STANDARD_RESOURCES and "/" not in key and not low.startswith("mig-"):
            hint = suggest(low, _STANDARD_RESOURCES)
            raise HoneError(f"unknown resource {key!r}" + (f": {hint}" if hint else ""), where=where,
                            fix="use gpu, cpu, memory, ephemeral-storage, a MIG profile (mig-1g.5gb) or an extended "
                                "resource (vendor.com/name)")
        if low == "cpu":
            if not _CPU.match(value) or float(value.rstrip("m") or 0) <= 0:
                raise HoneError(f"invalid cpu quantity {raw!r}", where=where,
                                fix="use a positive number of cores (4, 0.5) or millicores (500m)")
        elif low in ("memory", "ephemeral-storage", "storage"):
            if not _BYTES.match(value) or float(re.match(r"[\d.]+", value).group()) <= 0:
                raise HoneError(f"invalid {low} quantity {raw!r}", where=where,
                                fix="use a Kubernetes quantity such as 64Gi, 10G or 512Mi (not 64GB or 64gi)")
        else:  # gpu, MIG, extended resources: whole devices
            if isinstance(raw, bool) or not _COUNT.match(value):
                raise HoneError(f"invalid {key} count {raw!r}", where=where, fix="use a whole number of devices, e.g. 1")
            if low == "gpu" and int(value) == 0:
                continue
        out[low if low in _STANDARD_RESOURCES or low.startswith("mig-") else key] = value
    return out


class KubeJobConfig(HoneModel):
    """Everything about a TrainJob that is not the training configuration."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    name: str | None = Field(None, description="TrainJob name (default hone-<algorithm>-<random>).")
    namespace: str | None = Field(None, description="Namespace (default: the kubeconfig context's, the pod's, or "
                                                    "'default').")
    runtime: str = Field(DEFAULT_RUNTIME, description="ClusterTrainingRuntime / TrainingRuntime to use.")
    image: str | None = Field(None, description="Trainer image with hone installed (default: $HONE_IMAGE, else the "
                                                "runtime's image).")
    num_nodes: int | None = Field(None, ge=1, description="Training pods (default: nnodes of the config, else 1).")
    num_procs_per_node: int | Literal["auto", "gpu"] | None = Field(
        None, description="Processes per pod (default: nproc_per_node of the config, else auto = the pod's GPUs or 1).")
    resources_per_node: dict[str, str] = Field(default_factory=dict,
                                               description='Per pod, e.g. {"gpu": 1, "cpu": 4, "memory": "64Gi"}.')
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables (no secrets).")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of the TrainJob and its pods.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of the TrainJob and its pods.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets for pulling the image.")
    pvc: str | None = Field(None, description="PersistentVolumeClaim (RWX for several nodes) mounted in every pod.")
    pvc_path: str | None = Field(None, description=f"Where the PVC is mounted (default {DEFAULT_PVC_PATH}); the "
                                                   "job's working directory, so relative paths are on the PVC.")
    secret_env: list[SecretEnv] = Field(default_factory=list, description="VAR=SECRET[:KEY] references.")
    default_secrets: bool = Field(True, description="Attach hf-token, s3-secret and oci-pull-secret-model-download "
                                                    "as optional secret references.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Cluster-side limit on the job's run time.")

    @field_validator("env", "labels", "annotations", mode="before")
    @classmethod
    def _pairs(cls, v: Any, info) -> dict[str, str]:
        return parse_pairs(v, info.field_name)

    @field_validator("resources_per_node", mode="before")
    @classmethod
    def _resources(cls, v: Any) -> dict[str, str]:
        if isinstance(v, str) or isinstance(v, (list, tuple)):
            v = parse_pairs(v, "resources")
        if v is not None and not isinstance(v, dict):
            raise HoneError(f"resources_per_node must be a mapping, got {type(v).__name__}", where="resources_per_node",
                            fix='pass {"gpu": 1, "cpu": 4, "memory": "64Gi"} or gpu=1,cpu=4,memory=64Gi')
        return normalize_resources(v)

    @field_validator("image_pull_secrets", mode="before")
    @classmethod
    def _pull_secrets(cls, v: Any) -> list[str]:
        if v is None:
            return []
        items = [v] if isinstance(v, str) else list(v)
        return [s.strip() for item in items for s in str(item).split(",") if s.strip()]

    @field_validator("secret_env", mode="before")
    @classmethod
    def _secret_env(cls, v: Any) -> list[Any]:
        if v is None:
            return []
        items = [v] if isinstance(v, (str, dict, SecretEnv)) else list(v)
        out: list[Any] = []
        for item in items:
            if isinstance(item, str):
                out += [SecretEnv.parse(s) for s in item.split(",") if s.strip()]
            else:
                out.append(item)
        return out

    @model_validator(mode="after")
    def _check(self) -> "KubeJobConfig":
        if self.name is not None and (not _DNS_LABEL.match(self.name) or len(self.name) > 63):
            raise HoneError(f"invalid TrainJob name {self.name!r}", where="--name",
                            fix="use at most 63 lowercase letters, digits and '-', starting with a letter")
        if self.namespace is not None and (not _RFC1123_LABEL.match(self.namespace) or len(self.namespace) > 63):
            raise HoneError(f"invalid namespace {self.namespace!r}", where="--namespace",
                            fix="namespaces are lowercase letters, digits and '-'")
        if not self.runtime or not _DNS_SUBDOMAIN.match(self.runtime):
            raise HoneError(f"invalid runtime name {self.runtime!r}", where="--runtime",
                            fix="`hone kube runtimes` lists the runtimes of the cluster")
        if isinstance(self.num_procs_per_node, int) and self.num_procs_per_node < 1:
            raise HoneError(f"num_procs_per_node must be at least 1 (got {self.num_procs_per_node})",
                            where="--num-procs-per-node", fix="pass a positive integer, auto or gpu")
        for name in self.env:
            if not _ENV_NAME.match(name):
                raise HoneError(f"invalid environment variable name {name!r}", where="--env",
                                fix="use letters, digits and _ (not starting with a digit)")
            if name in RESERVED_ENV:
                raise HoneError(f"{name} is set by Kubeflow Trainer / hone in every pod", where=f"--env {name}",
                                fix="remove it (use --num-nodes / --num-procs-per-node for the process layout)")
            if is_secret_env(name):  # credentials come from Kubernetes Secrets, never as literal values
                raise HoneError(f"{name} looks like a credential: it would be written in clear into the TrainJob",
                                where=f"--env {name}",
                                fix=f"store it in a Kubernetes Secret and reference it: --secret-env {name}=SECRET[:KEY]")
        for key in self.labels:
            _check_label_key(key, "label")
        for key, value in self.labels.items():
            if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
                raise HoneError(f"invalid label value {value!r} for {key!r}", where="--labels",
                                fix="label values are up to 63 letters, digits, '-', '_', '.', alphanumeric at "
                                    "both ends")
        for key in self.annotations:
            _check_label_key(key, "annotation")
        for s in self.image_pull_secrets + ([self.pvc] if self.pvc else []):
            if not _DNS_SUBDOMAIN.match(s) or len(s) > 253:
                raise HoneError(f"invalid object name {s!r}", where="--pvc" if s == self.pvc else "--image-pull-secret",
                                fix="names are lowercase letters, digits, '-' and '.'")
        if self.pvc_path is not None:
            if not self.pvc:
                raise HoneError("pvc_path is set but no pvc", where="--pvc-path", fix="add --pvc CLAIM_NAME")
            norm = posixpath.normpath(self.pvc_path)
            if not self.pvc_path.startswith("/") or norm == "/" or ".." in self.pvc_path.split("/"):
                raise HoneError(f"pvc_path must be an absolute directory path inside the pod (got {self.pvc_path!r})",
                                where="--pvc-path", fix=f"use e.g. {DEFAULT_PVC_PATH}")
            self.pvc_path = norm
        names = [s.env for s in self.secret_env]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise HoneError(f"secret_env sets {', '.join(sorted(dup))} more than once", where="--secret-env",
                            fix="give each variable one Secret")
        clash = set(names) & set(self.env)
        if clash:
            raise HoneError(f"{', '.join(sorted(clash))} is both a literal env value and a secret reference",
                            where="--env / --secret-env", fix="keep only the --secret-env reference")
        return self

    @property
    def mount_path(self) -> str | None:
        return (self.pvc_path or DEFAULT_PVC_PATH) if self.pvc else None

    def secrets(self) -> list[SecretEnv]:
        """The secret references the pods get: the explicit ones, plus the optional defaults not overridden."""
        explicit = {s.env for s in self.secret_env}
        defaults = [s for s in DEFAULT_SECRETS if s.env not in explicit] if self.default_secrets else []
        return list(self.secret_env) + defaults

    @classmethod
    def build(cls, values: dict[str, Any], source: str = "job options") -> "KubeJobConfig":
        """Validate ``values``; pydantic's errors become :class:`HoneError` naming the option."""
        try:
            return cls(**values)
        except ValidationError as err:
            first = err.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "?"
            if first["type"] == "extra_forbidden":
                hint = suggest(name, cls.model_fields)
                raise HoneError(f"unknown job option {name!r}" + (f": {hint}" if hint else ""), where=source,
                                fix="see `hone kube submit --help`") from None
            raise HoneError(f"invalid value for {name!r}: {first.get('input')!r} ({first['msg']})",
                            where=f"{source}, option --{name.replace('_', '-')}",
                            fix="see `hone kube submit --help` for accepted values") from None

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "KubeJobConfig":
        """A YAML file of job options (``--job-file``), overlaid with explicit values."""
        path = Path(path)
        if not path.is_file():
            raise HoneError(f"job file not found: {path}", where="--job-file", fix="pass the path of a YAML file")
        data, _lines = load_yaml_mapping(path, "job file")  # duplicate keys, alias bombs, encoding: file:line
        return cls.build({**data, **(overrides or {})}, source=f"job file {path}")
