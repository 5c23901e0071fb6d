"""`hone kube`: submit, render, run locally, watch and clean up Kubeflow Trainer TrainJobs (a thin skin over
hone.kube)."""
from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable

import click

from hone.cli.options import given, parameter_options
from hone.config import ALGORITHMS

CTX = {"max_content_width": 110}


def _cluster_options(fn: Callable) -> Callable:
    for decl in reversed([
        click.option("--namespace", "-n", help="Namespace (default: the kubeconfig context's, the pod's, or default)."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig file (default: "
                     "KUBERNETES_SERVER_URL + KUBERNETES_AUTH_TOKEN, the in-cluster service account, $KUBECONFIG, "
                     "~/.kube/config)."),
        click.option("--context", help="Kubeconfig context."),
        click.option("--ca-file", type=click.Path(dir_okay=False), help="CA certificate of the API server (with "
                     "KUBERNETES_SERVER_URL; or KUBERNETES_CA_FILE)."),
        click.option("--insecure-skip-tls-verify", is_flag=True, default=False,
                     help="Do not verify the API server's certificate (KUBERNETES_SERVER_URL only; not recommended)."),
    ]):
        fn = decl(fn)
    return fn


def _access(values: dict[str, Any]):
    from hone.kube.credentials import ClusterAccess

    return ClusterAccess(namespace=values.pop("namespace", None), kubeconfig=values.pop("kubeconfig", None),
                         context=values.pop("context", None), ca_file=values.pop("ca_file", None),
                         insecure_skip_tls_verify=values.pop("insecure_skip_tls_verify", False))


def _echo_status(name: str, start: float) -> Callable:
    def report(st) -> None:
        click.echo(f"[{time.monotonic() - start:6.0f}s] {name} {st.line()}")
    return report


@click.group(context_settings={"help_option_names": ["-h", "--help"], **CTX})
def kube() -> None:
    """Fine-tune on Kubernetes as a Kubeflow Trainer TrainJob (or try the same job locally).

    \b
      hone kube submit sft --config train.yaml --image IMG --pvc shared --num-nodes 2 --gpu 1 --dry-run
      hone kube submit sft --config train.yaml --image IMG --pvc shared --wait --logs --delete-on-failure
      hone kube submit sft --config train.yaml --backend local     # the same job on this machine
      hone kube status|logs|wait|delete NAME
    """


@kube.group(context_settings=CTX)
def submit() -> None:
    """Submit `hone train <algorithm>` as a TrainJob (one sub-command per algorithm)."""


def _job_options(fn: Callable) -> Callable:
    opts = [
        click.option("--job-file", type=click.Path(dir_okay=False), help="YAML file of job options (the names below "
                     "with _); flags override it."),
        click.option("--name", help="TrainJob name (default hone-<algorithm>-<random>)."),
        click.option("--runtime", help="Training runtime (default torch-distributed; checked to exist)."),
        click.option("--image", help="Trainer image with hone installed (default $HONE_IMAGE, else the runtime's)."),
        click.option("--num-nodes", type=int, help="Training pods (default: nnodes of the config, else 1)."),
        click.option("--num-procs-per-node", help="Processes per pod: an integer, auto or gpu (default: "
                     "nproc_per_node of the config, else auto)."),
        click.option("--gpu", type=int, help="GPUs per pod."),
        click.option("--cpu", help="CPU per pod (4, 500m)."),
        click.option("--memory", help="Memory per pod (64Gi, 10G)."),
        click.option("--resources", multiple=True, help="More resources per pod: K=V,K=V (e.g. "
                     "ephemeral-storage=100Gi, nvidia.com/mig-1g.5gb=1)."),
        click.option("--env", multiple=True, help="Environment variables K=V,K=V (no secrets: use --secret-env)."),
        click.option("--labels", multiple=True, help="Labels of the TrainJob and its pods, K=V,K=V (e.g. "
                     "kueue.x-k8s.io/queue-name=team-a)."),
        click.option("--annotations", multiple=True, help="Annotations of the TrainJob and its pods, K=V,K=V."),
        click.option("--image-pull-secret", "image_pull_secrets", multiple=True, help="Secret for pulling the image."),
        click.option("--pvc", help="PersistentVolumeClaim for data, model and outputs (RWX for several nodes)."),
        click.option("--pvc-path", help="Mount path of the PVC, the pods' working directory (default /mnt/shared)."),
        click.option("--secret-env", multiple=True, help="VAR=SECRET[:KEY]: set VAR from a Kubernetes Secret."),
        click.option("--no-default-secrets", is_flag=True, default=False, help="Do not attach the optional hf-token, "
                     "s3-secret and oci-pull-secret-model-download references."),
        click.option("--active-deadline", "active_deadline_seconds", type=int,
                     help="Cluster-side limit on the job's run time, in seconds."),
        click.option("--dry-run", is_flag=True, default=False, help="Print the TrainJob YAML; no cluster needed."),
        click.option("--backend", type=click.Choice(["kubernetes", "local"]), default="kubernetes", show_default=True,
                     help="local: run the same job on this machine (no cluster)."),
        click.option("--workdir", type=click.Path(file_okay=False), help="Local backend: the directory standing for "
                     "the PVC mount (default: the current directory)."),
        click.option("--wait", is_flag=True, default=False, help="Wait until the job completes or fails."),
        click.option("--timeout", type=float, help="Give up waiting after this many seconds (default: no limit); "
                     "implies --wait, as do the three options below."),
        click.option("--poll", type=float, default=5.0, show_default=True, help="Seconds between status checks."),
        click.option("--logs", "follow_logs", is_flag=True, default=False, help="While waiting, stream node-0's log."),
        click.option("--delete-on-failure", is_flag=True, default=False,
                     help="Delete the job if it fails or the wait times out."),
        click.option("--delete-on-completion", is_flag=True, default=False,
                     help="Delete the job when it completes (outputs stay on the PVC)."),
    ]
    for decl in reversed(opts):
        fn = decl(fn)
    return fn


def _job_values(v: dict[str, Any]) -> dict[str, Any]:
    from hone.kube.config import parse_pairs

    out: dict[str, Any] = {}
    for key in ("name", "runtime", "image", "num_nodes", "pvc", "pvc_path", "active_deadline_seconds"):
        if v.get(key) is not None:
            out[key] = v[key]
    procs = v.get("num_procs_per_node")
    if procs is not None:
        out["num_procs_per_node"] = int(procs) if str(procs).strip().lstrip("-").isdigit() else procs
    resources = parse_pairs(list(v.get("resources") or ()), "resources")
    for key in ("gpu", "cpu", "memory"):
        if v.get(key) is not None:
            resources[key] = v[key]
    if resources:
        out["resources_per_node"] = resources
    for key in ("env", "labels", "annotations", "image_pull_secrets", "secret_env"):
        if v.get(key):
            out[key] = list(v[key])
    if v.get("no_default_secrets"):
        out["default_secrets"] = False
    return out


def _submit_command(algorithm: str) -> None:
    @submit.command(name=algorithm, context_settings=CTX, help=f"""Run `hone train {algorithm}` as a TrainJob.

    The training configuration is the one `hone train {algorithm}` takes (--config FILE and the same flags);
    paths in it are as the pods see them (relative paths are under the PVC mount).""")
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of training parameters.")
    @_job_options
    @_cluster_options
    @parameter_options(algorithm)
    def command(config_file: str | None, **values: Any) -> None:
        from hone.kube.config import KubeJobConfig
        from hone.kube.manifest import manifest_yaml
        from hone.kube.submit import dry_run_manifest, prepare, submit_plan

        training = given(values, algorithm)
        access = _access(values)
        job_values = _job_values(values)
        if access.namespace:
            job_values["namespace"] = access.namespace
        job = KubeJobConfig.from_file(values["job_file"], job_values) if values.get("job_file") \
            else KubeJobConfig.build(job_values)
        plan = prepare(algorithm, config_file, training, job)
        for note in plan.notes:
            click.echo(f"note: {note}", err=True)
        if values["dry_run"]:
            click.echo(manifest_yaml(dry_run_manifest(plan)), nl=False)
            return
        if values["backend"] == "local":
            from hone.kube.local import run_local

            sub = run_local(plan, workdir=values.get("workdir"), on_log=click.echo)
            result = sub.status
            click.echo(f"\nlocal run of TrainJob {sub.name} completed"
                       + (f": {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}"
                          if result else ""))
            if result and result.final_model_dir:
                click.echo(f"  model:   {result.final_model_dir}")
            click.echo(f"  submit it with the same options without --backend local")
            return
        from hone.kube.cluster import Cluster

        cluster = Cluster(access if access.namespace else _with_ns(access, plan.job.namespace))
        sub = submit_plan(plan, cluster=cluster)
        ns = f" -n {sub.namespace}"
        click.echo(f"submitted TrainJob {sub.name} in namespace {sub.namespace} ({plan.num_nodes} node(s) x "
                   f"{plan.num_procs} process(es), runtime {plan.job.runtime})")
        wait = values["wait"] or values.get("timeout") is not None or values["follow_logs"] or \
            values["delete_on_failure"] or values["delete_on_completion"]  # these only make sense waiting
        if not wait:
            click.echo(f"  status: hone kube status {sub.name}{ns}\n  logs:   hone kube logs {sub.name}{ns} -f\n"
                       f"  wait:   hone kube wait {sub.name}{ns} --delete-on-failure\n"
                       f"  delete: hone kube delete {sub.name}{ns}")
            return
        _wait(sub.name, cluster, values)

    return command


def _with_ns(access, namespace):
    from hone.kube.credentials import ClusterAccess

    return ClusterAccess(**{**access.__dict__, "namespace": namespace}) if namespace else access


def _wait(name: str, cluster, values: dict[str, Any]) -> None:
    from hone.kube.watch import wait_for

    st = wait_for(name, cluster=cluster, timeout=values.get("timeout"), poll_interval=values["poll"],
                  follow_logs=values["follow_logs"], delete_on_failure=values["delete_on_failure"],
                  delete_on_completion=values["delete_on_completion"], on_log=click.echo,
                  on_status=_echo_status(name, time.monotonic()))
    click.echo(f"TrainJob {name} completed" + ("; deleted" if values["delete_on_completion"] else ""))
    return st


for _name in ALGORITHMS:
    _submit_command(_name)


def _with_cluster(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(**values: Any):
        from hone.kube.cluster import Cluster

        return fn(cluster=Cluster(_access(values)), **values)
    return _cluster_options(wrapper)


@kube.command(context_settings=CTX)
@click.argument("name")
@click.option("--events", is_flag=True, default=False, help="Also show the latest Kubernetes events.")
@_with_cluster
def status(name: str, events: bool, cluster) -> None:
    """Show a TrainJob's state and its steps (pods)."""
    from hone.kube.watch import status as job_status

    click.echo(job_status(name, cluster=cluster, events=events).table())


@kube.command(context_settings=CTX)
@click.argument("name")
@click.option("--step", default="node-0", show_default=True, help="Which step's log (node-0, node-1, ...).")
@click.option("--follow", "-f", is_flag=True, default=False, help="Stream until the pod ends.")
@click.option("--pending-timeout", type=float, default=600, show_default=True,
              help="Seconds to keep retrying while the pod is pending or starting.")
@_with_cluster
def logs(name: str, step: str, follow: bool, pending_timeout: float, cluster) -> None:
    """Print a TrainJob's log (node-0 by default), retrying while its pod is still pending."""
    from hone.kube.watch import logs as job_logs

    for line in job_logs(name, step=step, follow=follow, pending_timeout=pending_timeout, cluster=cluster):
        click.echo(line)
        sys.stdout.flush()


@kube.command(context_settings=CTX)
@click.argument("name")
@click.option("--timeout", type=float, help="Give up after this many seconds (default: no limit).")
@click.option("--poll", type=float, default=5.0, show_default=True, help="Seconds between status checks.")
@click.option("--logs", "follow_logs", is_flag=True, default=False, help="Stream node-0's log while waiting.")
@click.option("--delete-on-failure", is_flag=True, default=False, help="Delete the job if it fails or times out.")
@click.option("--delete-on-completion", is_flag=True, default=False, help="Delete the job when it completes.")
@_with_cluster
def wait(name: str, cluster, **values: Any) -> None:
    """Wait for a TrainJob to complete, reporting its steps; exit 2 (and say why) on failure or timeout."""
    _wait(name, cluster, values)


@kube.command(context_settings=CTX)
@click.argument("name")
@_with_cluster
def delete(name: str, cluster) -> None:
    """Delete a TrainJob and its pods."""
    from hone.kube.watch import delete as job_delete

    job_delete(name, cluster=cluster)
    click.echo(f"deleted TrainJob {name} in namespace {cluster.namespace}")


@kube.command("list", context_settings=CTX)
@_with_cluster
def list_(cluster) -> None:
    """List the TrainJobs of the namespace."""
    from hone.kube.watch import list_jobs

    jobs = list_jobs(cluster=cluster)
    for j in jobs:
        click.echo(f"{j.name:<40} {j.status:<10} {j.runtime:<24} {j.created}")
    if not jobs:
        click.echo(f"no TrainJobs in namespace {cluster.namespace}")


@kube.command(context_settings=CTX)
@_with_cluster
def runtimes(cluster) -> None:
    """List the training runtimes a TrainJob can use."""
    for r in cluster.runtimes():
        click.echo(f"{r.name:<32} {r.kind.value:<24} {r.trainer.framework:<10} {r.trainer.image}")
