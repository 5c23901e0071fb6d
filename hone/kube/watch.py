"""Watch a TrainJob: status with its steps, node logs (retried while pods are pending), wait with a timeout
the caller chooses (none by default), delete; through the kubeflow SDK's TrainerClient."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from hone.errors import HoneError
from hone.kube.cluster import Cluster, api_status
from hone.kube.credentials import ClusterAccess

log = logging.getLogger("hone")

CREATED, RUNNING, COMPLETE, FAILED = "Created", "Running", "Complete", "Failed"
PENDING_STEP = "Pending"


@dataclass
class StepStatus:
    name: str
    status: str | None
    pod: str
    device: str = ""
    device_count: str = ""


@dataclass
class JobStatus:
    """A TrainJob's state: Created, Running, Complete or Failed, with one step per pod (node-0, node-1, ...)."""

    name: str
    namespace: str
    status: str
    runtime: str
    num_nodes: int
    steps: list[StepStatus] = field(default_factory=list)
    created: str = ""
    events: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in (COMPLETE, FAILED)

    def step(self, name: str) -> StepStatus | None:
        return next((s for s in self.steps if s.name == name), None)

    def line(self) -> str:
        steps = ", ".join(f"{s.name} {s.status or '?'}" for s in self.steps) or "no pods yet"
        return f"{self.status}: {steps}"

    def table(self) -> str:
        rows = [f"TrainJob {self.name} (namespace {self.namespace}): {self.status}",
                f"  runtime {self.runtime}, {self.num_nodes} node(s), created {self.created}"]
        for s in self.steps:
            dev = f"  {s.device} x{s.device_count}" if s.device and s.device != "Unknown" else ""
            rows.append(f"  {s.name:<20} {s.status or '?':<10} pod {s.pod}{dev}")
        if not self.steps:
            rows.append("  (no pods yet)")
        rows += [f"  event: {e}" for e in self.events]
        return "\n".join(rows)


def _cluster(cluster: Cluster | None, access: ClusterAccess | None, namespace: str | None) -> Cluster:
    if cluster is not None:
        return cluster
    access = access or ClusterAccess()
    if namespace:
        access = ClusterAccess(**{**access.__dict__, "namespace": namespace})
    return Cluster(access)


def _to_status(cluster: Cluster, job) -> JobStatus:
    steps = [StepStatus(s.name, s.status, s.pod_name, str(getattr(s, "device", "") or ""),
                        str(getattr(s, "device_count", "") or "")) for s in job.steps]
    steps.sort(key=lambda s: (not s.name.startswith("node-"), _index(s.name), s.name))
    return JobStatus(name=job.name, namespace=cluster.namespace, status=job.status, runtime=job.runtime.name,
                     num_nodes=job.num_nodes, steps=steps, created=str(job.creation_timestamp))


def _index(step: str) -> int:
    tail = step.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _get(cluster: Cluster, name: str) -> JobStatus:
    try:
        return _to_status(cluster, cluster.client.get_job(name))
    except Exception as err:  # noqa: BLE001 - mapped below
        if api_status(err) == 404:
            raise HoneError(f"no TrainJob named {name!r}", where=cluster.where,
                            fix="check the name and --namespace (`hone kube list` shows the jobs)") from None
        from hone.kube.cluster import api_error

        raise api_error(err, f"reading TrainJob {name}", cluster.where) from None


def _events(cluster: Cluster, name: str, last: int = 6) -> list[str]:
    try:
        events = cluster.client.get_job_events(name)
    except Exception:  # noqa: BLE001 - events are a courtesy; RBAC may not allow them
        return []
    return [f"{e.involved_object_kind}/{e.involved_object_name} {e.reason}: {e.message}" for e in events[-last:]]


def status(name: str, *, namespace: str | None = None, access: ClusterAccess | None = None,
           cluster: Cluster | None = None, events: bool = False) -> JobStatus:
    """The TrainJob's state and its steps (pods); with ``events``, the latest Kubernetes events too."""
    c = _cluster(cluster, access, namespace)
    st = _get(c, name)
    if events or st.status == FAILED:
        st.events = _events(c, name)
    return st


def list_jobs(*, namespace: str | None = None, access: ClusterAccess | None = None,
              cluster: Cluster | None = None) -> list[JobStatus]:
    c = _cluster(cluster, access, namespace)
    return [_to_status(c, j) for j in c.call("listing TrainJobs", c.client.list_jobs)]


def delete(name: str, *, namespace: str | None = None, access: ClusterAccess | None = None,
           cluster: Cluster | None = None) -> None:
    """Delete the TrainJob (Kubernetes removes its pods)."""
    c = _cluster(cluster, access, namespace)
    try:
        c.client.delete_job(name)
    except Exception as err:  # noqa: BLE001
        if api_status(err) == 404:
            raise HoneError(f"no TrainJob named {name!r}", where=c.where, fix="check the name and --namespace") \
                from None
        from hone.kube.cluster import api_error

        raise api_error(err, f"deleting TrainJob {name}", c.where) from None
    log.info("deleted TrainJob %s in namespace %s", name, c.namespace)


def logs(name: str, *, step: str = "node-0", follow: bool = False, pending_timeout: float | None = 600,
         poll_interval: float = 2.0, namespace: str | None = None, access: ClusterAccess | None = None,
         cluster: Cluster | None = None, stop: threading.Event | None = None) -> Iterator[str]:
    """Log lines of one step (``node-0`` by default). While its pod is pending or its container is still
    starting, retry every ``poll_interval`` s up to ``pending_timeout`` s (None: no limit). A stream cut
    mid-way is resumed without repeating lines already given."""
    c = _cluster(cluster, access, namespace)
    deadline = None if pending_timeout is None else time.monotonic() + pending_timeout
    seen = 0
    last_state = ""
    while True:
        st = _get(c, name)
        s = st.step(step)
        state = s.status if s else None
        if s is not None and state != PENDING_STEP:
            try:
                i = 0
                for line in c.client.get_job_logs(name, step=step, follow=follow):
                    i += 1
                    if i > seen:
                        seen = i
                        yield line
                return
            except Exception as err:  # noqa: BLE001 - the container may still be creating; retried below
                if api_status(err) in (401, 403):
                    from hone.kube.cluster import api_error

                    raise api_error(err, f"reading the log of {name}/{step}", c.where) from None
                last_state = f"logs not readable yet ({api_status(err) or type(err).__name__})"
        elif st.done:
            raise HoneError(f"TrainJob {name} is {st.status} and step {step!r} never ran ({state or 'no pod'})",
                            where=c.where,
                            fix=f"steps: {', '.join(x.name for x in st.steps) or 'none (pods were removed)'}; "
                                f"`hone kube status {name} --events` shows why")
        else:
            last_state = f"{step} is {state or 'not created yet'}"
        if stop is not None and stop.is_set():
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise HoneError(f"no logs for {name}/{step} after {pending_timeout:g}s: {last_state}", where=c.where,
                            fix=f"`hone kube status {name} --events` shows why (quota, image pull, scheduling); "
                                "raise --pending-timeout to wait longer")
        time.sleep(poll_interval)


def _follow(c: Cluster, name: str, on_log: Callable[[str], None], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        try:
            for line in logs(name, follow=True, pending_timeout=None, poll_interval=1.0, cluster=c, stop=stop):
                on_log(line)
                if stop.is_set():
                    return
        except HoneError as err:
            log.info("log stream ended: %s", err.what)
        except Exception as err:  # noqa: BLE001 - the status loop reports the job's fate
            log.info("log stream ended: %s", type(err).__name__)

    t = threading.Thread(target=run, name=f"logs-{name}", daemon=True)
    t.start()
    return t


def wait_for(name: str, *, timeout: float | None = None, poll_interval: float = 5.0, follow_logs: bool = False,
             delete_on_failure: bool = False, delete_on_completion: bool = False,
             on_log: Callable[[str], None] | None = None, on_status: Callable[[JobStatus], None] | None = None,
             namespace: str | None = None, access: ClusterAccess | None = None,
             cluster: Cluster | None = None) -> JobStatus:
    """Wait until the TrainJob completes; report each change of its steps' statuses.

    ``timeout`` seconds (None: no limit). On failure or timeout a :class:`HoneError` says what happened; with
    ``delete_on_failure`` the job is deleted first (a timed-out job is deleted too: nothing is left running
    unwatched). ``delete_on_completion`` removes a completed job (outputs stay on the shared volume).
    """
    if poll_interval <= 0:
        raise HoneError(f"poll interval must be positive (got {poll_interval})", where="--poll", fix="use e.g. 5")
    if timeout is not None and timeout <= 0:
        raise HoneError(f"timeout must be positive (got {timeout})", where="--timeout",
                        fix="give seconds, or leave it out to wait without a limit")
    c = _cluster(cluster, access, namespace)
    on_log = on_log or print
    report = on_status or (lambda st: log.info("%s %s", name, st.line()))
    start = time.monotonic()
    stop = threading.Event()
    follower: threading.Thread | None = None
    last = None
    transient = 0
    try:
        while True:
            try:
                st = _get(c, name)
                transient = 0
            except HoneError as err:
                retryable = any(w in err.what for w in ("cannot reach", "did not answer", ": HTTP 5"))
                if not retryable or transient >= 5:
                    raise
                transient += 1  # a dropped connection or an API server restart: retry a few polls
                log.info("reading %s failed (%s); retrying", name, err.what)
                time.sleep(poll_interval)
                continue
            if st.line() != last:
                last = st.line()
                report(st)
            if follow_logs and follower is None and st.steps:
                follower = _follow(c, name, on_log, stop)
            if st.done:
                if follower is not None:
                    follower.join(timeout=10)  # let the last lines arrive
                if st.status == COMPLETE:
                    if delete_on_completion:
                        delete(name, cluster=c)
                    return st
                st.events = _events(c, name)
                deleted = ""
                if delete_on_failure:
                    delete(name, cluster=c)
                    deleted = "; the TrainJob was deleted"
                raise HoneError(f"TrainJob {name} failed{deleted}", where=c.where + (
                    "".join(f"\n    {e}" for e in st.events) if st.events else ""),
                    fix=f"read the log with `hone kube logs {name}`" + ("" if deleted else
                                                                         f", then `hone kube delete {name}`"))
            elapsed = time.monotonic() - start
            if timeout is not None and elapsed >= timeout:
                deleted = ""
                if delete_on_failure:
                    delete(name, cluster=c)
                    deleted = "; the TrainJob was deleted"
                raise HoneError(f"TrainJob {name} still {st.status} after {timeout:g}s ({st.line()}){deleted}",
                                where=c.where, fix="wait again with a longer --timeout (or none)" + (
                                    "" if deleted else f", or stop it with `hone kube delete {name}`"))
            time.sleep(poll_interval if timeout is None else max(0.0, min(poll_interval, timeout - elapsed)))
    finally:
        stop.set()
