"""Submit a training run as a Kubeflow Trainer TrainJob (or render it, or run it on this machine)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Literal

from hone.errors import HoneError
from hone.kube.config import KubeJobConfig
from hone.kube.credentials import ClusterAccess, secret_values
from hone.kube.manifest import (JobPlan, Submission, check_no_secrets, dry_run_manifest, load_run_config, plan, render,
                                sdk_request)

log = logging.getLogger("hone")

Backend = Literal["kubernetes", "local"]


def prepare(algorithm: str, config: str | Path | None = None, params: dict[str, Any] | None = None,
            job: KubeJobConfig | dict[str, Any] | None = None, **job_options: Any) -> JobPlan:
    """Resolve the training configuration (YAML + params) and the job options into a :class:`JobPlan`."""
    run = load_run_config(algorithm, config, params)
    if os.environ.get("HONE_IMAGE") and not job_options.get("image") and not (
            job.image if isinstance(job, KubeJobConfig) else (job or {}).get("image")):
        job_options["image"] = os.environ["HONE_IMAGE"]  # the platform's default hone image
    if isinstance(job, KubeJobConfig):
        job = KubeJobConfig.build({**job.model_dump(), **job_options}) if job_options else job
    else:
        job = KubeJobConfig.build({**(job or {}), **job_options})
    return plan(algorithm, run, job)


def find_runtime(cluster, name: str):
    from kubeflow.trainer.types.types import TrainerType

    runtimes = cluster.runtimes()
    found = next((r for r in runtimes if r.name == name), None)
    if found is None:
        names = sorted(r.name for r in runtimes)
        raise HoneError(f"training runtime {name!r} not found", where=f"--runtime ({cluster.where})",
                        fix=f"use one of: {', '.join(names)}" if names else
                        "no runtimes are visible: is Kubeflow Trainer installed, and may this identity list "
                        "clustertrainingruntimes?")
    if found.trainer.trainer_type != TrainerType.CUSTOM_TRAINER:
        raise HoneError(f"runtime {name!r} is a built-in ({found.trainer.framework}) runtime; hone needs a runtime "
                        "that runs a custom command", where="--runtime", fix="use torch-distributed or a runtime "
                                                                              "derived from it")
    return found


def submit_plan(p: JobPlan, *, access: ClusterAccess | None = None, cluster=None) -> Submission:
    """Create the TrainJob through the kubeflow SDK; the runtime is checked to exist first. When the job's
    values carry credentials, their Secret is created first, and made owned by the TrainJob once it exists
    (Kubernetes deletes it with the job); a failed create deletes it again."""
    from hone.kube.cluster import Cluster

    cluster = cluster or Cluster(_access(access, p.job.namespace))
    runtime = find_runtime(cluster, p.job.runtime)
    manifest = render(p, runtime=runtime, namespace=cluster.namespace)
    check_no_secrets(p, manifest, secret_values(extra=[cluster.token]))
    trainer, options = sdk_request(p)
    secret = p.secret_manifest(cluster.namespace, redacted=False)
    if secret is not None:
        cluster.create_secret(secret)
    try:
        name = cluster.call(f"creating TrainJob {p.name}", cluster.client.train, runtime=runtime, trainer=trainer,
                            options=options)
    except BaseException:
        if secret is not None:
            cluster.delete_secret(p.secret_name)
        raise
    if secret is not None:
        cluster.own_secret(p.secret_name, name)
    log.debug("submitted TrainJob %s in namespace %s (runtime %s, %d node(s) x %s process(es))", name,
             cluster.namespace, runtime.name, p.num_nodes, p.num_procs)
    return Submission(name=name, namespace=cluster.namespace, backend="kubernetes", manifest=manifest, notes=p.notes,
                      secret=p.secret_manifest(cluster.namespace))


def _access(access: ClusterAccess | None, namespace: str | None) -> ClusterAccess:
    access = access or ClusterAccess()
    if namespace and not access.namespace:
        access = ClusterAccess(**{**access.__dict__, "namespace": namespace})
    return access


def submit(algorithm: str, config: str | Path | None = None, *, params: dict[str, Any] | None = None,
           job: KubeJobConfig | dict[str, Any] | None = None, backend: Backend = "kubernetes",
           dry_run: bool = False, access: ClusterAccess | None = None, wait: bool = False,
           timeout: float | None = None, poll_interval: float = 5.0, follow_logs: bool = False,
           delete_on_failure: bool = False, delete_on_completion: bool = False,
           delete_on_cancel: bool | None = None,
           workdir: str | Path | None = None, on_log: Callable[[str], None] | None = None,
           **job_options: Any) -> Submission:
    """Run ``hone train <algorithm>`` with this configuration as a TrainJob.

    ``config`` is the YAML file ``hone train`` reads and ``params`` overrides it (flat parameter names).
    Job options (``num_nodes``, ``num_procs_per_node``, ``resources_per_node``, ``image``, ``runtime``, ``pvc``,
    ``pvc_path``, ``env``, ``labels``, ``annotations``, ``image_pull_secrets``, ``secret_env``, ``name``,
    ``namespace``, ...; see :class:`KubeJobConfig`) come as ``job=`` or keywords.

    ``dry_run`` returns the manifest without a cluster; ``backend="local"`` runs the same job on this machine;
    ``wait`` waits (``timeout`` seconds, None = no limit) and optionally deletes the job on failure/timeout
    or on completion (any of ``timeout``, ``follow_logs`` and the ``delete_*`` flags implies ``wait``);
    interrupted while waiting (Ctrl-C, SIGTERM: a cancelled pipeline step), it deletes the job when
    ``delete_on_cancel`` (default: as ``delete_on_failure``). The job's credentials Secret (if any) goes
    with the job.
    """
    p = prepare(algorithm, config, params, job, **job_options)
    if dry_run:
        return Submission(name=p.name, namespace=p.job.namespace, backend=backend, manifest=dry_run_manifest(p),
                          notes=p.notes, dry_run=True, secret=p.secret_manifest(p.job.namespace))
    if backend == "local":
        from hone.kube.local import run_local

        return run_local(p, workdir=workdir, on_log=on_log)
    if backend != "kubernetes":
        raise HoneError(f"unknown backend {backend!r}", where="--backend", fix="use kubernetes or local")
    from hone.kube.cluster import Cluster

    cluster = Cluster(_access(access, p.job.namespace))
    sub = submit_plan(p, cluster=cluster)
    if wait or timeout is not None or follow_logs or delete_on_failure or delete_on_completion:
        from hone.kube.watch import wait_for

        sub.status = wait_for(sub.name, cluster=cluster, timeout=timeout, poll_interval=poll_interval,
                              follow_logs=follow_logs, delete_on_failure=delete_on_failure,
                              delete_on_completion=delete_on_completion,
                              delete_on_cancel=delete_on_failure if delete_on_cancel is None else delete_on_cancel,
                              on_log=on_log, secret=sub.secret_name)
    return sub

