"""Watch a TrainJob: status with its steps, node logs (retried while pods are pending), wait with a timeout
the caller chooses (none by default), delete; through the kubeflow SDK's TrainerClient."""
from __future__ import annotations

import contextlib
import logging
import signal
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
    message: str = ""  # the Failed condition's reason and message

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
        if self.message:
            rows.append(f"  failed: {self.message}")
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
    if st.status == FAILED:
        st.message = failure_message(name, cluster=c)
    return st


def list_jobs(*, namespace: str | None = None, access: ClusterAccess | None = None,
              cluster: Cluster | None = None) -> list[JobStatus]:
    c = _cluster(cluster, access, namespace)
    return [_to_status(c, j) for j in c.call("listing TrainJobs", c.client.list_jobs)]


def delete(name: str, *, namespace: str | None = None, access: ClusterAccess | None = None,
           cluster: Cluster | None = None, secret: str | None = None) -> None:
    """Delete the TrainJob (Kubernetes removes its pods) and ``secret``, its credentials Secret, if given (the
    Secret is owned by the job, so Kubernetes removes it too; deleting it here does not wait for that)."""
    c = _cluster(cluster, access, namespace)
    try:
        c.client.delete_job(name)
    except Exception as err:  # noqa: BLE001
        if api_status(err) == 404:
            raise HoneError(f"no TrainJob named {name!r}", where=c.where, fix="check the name and --namespace") \
                from None
        from hone.kube.cluster import api_error

        raise api_error(err, f"deleting TrainJob {name}", c.where) from None
    finally:
        if secret:
            c.delete_secret(secret)
    log.info("deleted TrainJob %s in namespace %s", name, c.namespace)


def failure_message(name: str, *, cluster: Cluster) -> str:
    """The reason and message of the TrainJob's Failed condition ("" when it has none or cannot be read),
    secrets masked."""
    from hone.kube.cluster import GROUP, TRAINJOBS, VERSION
    from hone.secrets import scrub_text

    try:
        obj = cluster.client.backend.custom_api.get_namespaced_custom_object(GROUP, VERSION, cluster.namespace,
                                                                             TRAINJOBS, name)
        conditions = (obj.get("status") or {}).get("conditions") or []
    except Exception:  # noqa: BLE001 - a courtesy: the job's state is already known
        return ""
    for cond in conditions:
        if cond.get("type") == FAILED and str(cond.get("status")) == "True":
            reason, message = str(cond.get("reason") or ""), str(cond.get("message") or "")
            text = f"{reason}: {message}" if reason and message else reason or message
            return scrub_text(" ".join(text.split()))[:500]
    return ""


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


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While waiting, SIGTERM (a cancelled pipeline step, a pod being stopped) interrupts like Ctrl-C, so the
    job can be deleted before this process ends (main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt("SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not settable here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for(name: str, *, timeout: float | None = None, poll_interval: float = 5.0, follow_logs: bool = False,
             delete_on_failure: bool = False, delete_on_completion: bool = False, delete_on_cancel: bool = False,
             on_log: Callable[[str], None] | None = None, on_status: Callable[[JobStatus], None] | None = None,
             namespace: str | None = None, access: ClusterAccess | None = None,
             cluster: Cluster | None = None, secret: str | None = None) -> JobStatus:
    """Wait until the TrainJob completes; report each change of its steps' statuses.

    ``timeout`` seconds (None: no limit). On failure or timeout a :class:`HoneError` says what happened (the
    job's failure message, the latest events); with ``delete_on_failure`` the job is deleted first (a
    timed-out job is deleted too: nothing is left running unwatched). ``delete_on_completion`` removes a
    completed job (outputs stay on the shared volume). ``delete_on_cancel``: interrupted (Ctrl-C, or SIGTERM
    while waiting in the main thread), the job is deleted, then the interruption goes on. ``secret``: the
    job's credentials Secret, deleted with it (and once the job has completed: its pods no longer need it).
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
    settled = False  # the job's fate is decided (returned, or deleted/reported by the code below)
    try:
        with _sigterm_interrupts():
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
                    settled = True
                    if follower is not None:
                        follower.join(timeout=10)  # let the last lines arrive
                    if st.status == COMPLETE:
                        if delete_on_completion:
                            delete(name, cluster=c, secret=secret)
                        elif secret:
                            c.delete_secret(secret)  # the pods are done with it
                        return st
                    message = st.message = failure_message(name, cluster=c)
                    st.events = _events(c, name)
                    deleted = ""
                    if delete_on_failure:
                        delete(name, cluster=c, secret=secret)
                        deleted = "; the TrainJob was deleted"
                    raise HoneError(f"TrainJob {name} failed" + (f": {message}" if message else "") + deleted,
                                    where=c.where + ("".join(f"\n    {e}" for e in st.events) if st.events else ""),
                                    fix=f"read the log with `hone kube logs {name}`" + (
                                        "" if deleted else f", then `hone kube delete {name}`"))
                elapsed = time.monotonic() - start
                if timeout is not None and elapsed >= timeout:
                    settled = True
                    events = _events(c, name)
                    deleted = ""
                    if delete_on_failure:
                        delete(name, cluster=c, secret=secret)
                        deleted = "; the TrainJob was deleted"
                    stuck = " (its pods never started: see the events)" if st.status == CREATED and all(
                        s.status in (None, PENDING_STEP) for s in st.steps) else ""
                    raise HoneError(f"TrainJob {name} still {st.status} after {timeout:g}s ({st.line()}){stuck}"
                                    f"{deleted}", where=c.where + "".join(f"\n    {e}" for e in events),
                                    fix="wait again with a longer --timeout (or none)" + (
                                        "" if deleted else f", or stop it with `hone kube delete {name}`") +
                                        ("; a job stuck pending usually lacks quota, GPUs of the requested kind or "
                                         "its image" if stuck else ""))
                time.sleep(poll_interval if timeout is None else max(0.0, min(poll_interval, timeout - elapsed)))
    except (KeyboardInterrupt, SystemExit):
        if delete_on_cancel and not settled:
            log.warning("interrupted: deleting TrainJob %s", name)
            try:
                delete(name, cluster=c, secret=secret)
            except Exception as err:  # noqa: BLE001 - the interruption is what the caller must see
                log.warning("could not delete TrainJob %s (%s): `hone kube delete %s`", name,
                            getattr(err, "what", type(err).__name__), name)
        raise
    finally:
        stop.set()
