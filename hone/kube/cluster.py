"""One connection to Kubeflow Trainer through the kubeflow SDK's ``TrainerClient`` (Kubernetes backend).

Every SDK or API failure becomes a :class:`HoneError` that says what was refused and what to do (RBAC,
credentials, names), built from the HTTP status and the server's message only: never from headers or
request data, so no credential can reach an error message.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, TypeVar

from hone.errors import HoneError
from hone.kube.credentials import ClusterAccess, resolve_access

log = logging.getLogger("hone")
T = TypeVar("T")

GROUP, VERSION, TRAINJOBS = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RBAC_HINT = ("grant the job's identity the RBAC in docs/kubernetes.md (trainer.kubeflow.org trainjobs: create, get, "
             "list, delete; clustertrainingruntimes and trainingruntimes: get, list; pods and pods/log: get, list; "
             "events: list; secrets: create, patch, delete when a job's values carry credentials)")


def _chain(err: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        out.append(err)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return out


def api_status(err: BaseException) -> int | None:
    """The HTTP status of the first Kubernetes ApiException in ``err``'s cause chain."""
    from kubernetes.client.exceptions import ApiException

    for e in _chain(err):
        if isinstance(e, ApiException):
            return e.status
    return None


def _server_message(e: Any) -> str:
    try:
        body = json.loads(e.body) if getattr(e, "body", None) else {}
        return str(body.get("message") or e.reason or "").strip()
    except (ValueError, TypeError, AttributeError):
        return str(getattr(e, "reason", "") or "").strip()


def _certificate_problem(chain: list[BaseException]) -> str | None:
    """The TLS verification failure in ``chain`` in words (``certificate verify failed: ...``), if any."""
    import ssl

    from urllib3.exceptions import MaxRetryError, SSLError

    for e in list(chain):
        reason = getattr(e, "reason", None) if isinstance(e, MaxRetryError) else None
        if isinstance(reason, BaseException):
            chain = chain + _chain(reason)
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return str(getattr(e, "verify_message", "") or "certificate verify failed")
    for e in chain:
        if isinstance(e, (SSLError, ssl.SSLError)) and "CERTIFICATE_VERIFY_FAILED" in str(e):
            text = str(e)
            tail = text.split("certificate verify failed:", 1)[-1].split(")", 1)[0].strip()
            return tail if tail and tail != text else "certificate verify failed"
    return None


def api_error(err: BaseException, action: str, where: str, ca: str | None = None) -> HoneError:
    """A HoneError for a failed SDK call: status-specific, from the status and server message only."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    chain = _chain(err)
    problem = _certificate_problem(chain)
    if problem is not None:
        return HoneError(f"{action}: the API server's TLS certificate is not trusted ({problem})",
                         where=f"{where}; checked against {ca or 'the configured CA'}",
                         fix="point KUBERNETES_CA_FILE (or --ca-file) at the PEM bundle of the CA that signed the API "
                             "server's certificate; in a pod the service-account ca.crt is used by default")
    api = next((e for e in chain if isinstance(e, ApiException)), None)
    if api is not None and api.status:
        msg = _server_message(api)
        detail = f": {msg}" if msg else ""
        if api.status == 401:
            return HoneError(f"{action}: the API server rejected the credentials (401 Unauthorized)", where=where,
                             fix="log in again or use a valid service-account token (KUBERNETES_AUTH_TOKEN)")
        if api.status == 403:
            return HoneError(f"{action}: forbidden (403){detail}", where=where, fix=RBAC_HINT)
        if api.status == 404:
            return HoneError(f"{action}: not found (404){detail}", where=where,
                             fix="check the name and the namespace (--namespace); is Kubeflow Trainer installed?")
        if api.status == 409:
            return HoneError(f"{action}: already exists (409){detail}", where=where,
                             fix="choose another --name, or delete the old job with `hone kube delete NAME`")
        if api.status == 422:
            return HoneError(f"{action}: the API server refused the TrainJob (422){detail}", where=where,
                             fix="fix the option the message names (`hone kube submit --dry-run` shows the manifest)")
        return HoneError(f"{action}: HTTP {api.status} {api.reason or ''}{detail}".rstrip(), where=where,
                         fix="retry; if it persists, check the cluster's Kubeflow Trainer installation")
    if any(isinstance(e, (Urllib3Error, ConnectionError, OSError)) for e in chain):
        return HoneError(f"{action}: cannot reach the Kubernetes API server", where=where,
                         fix="check the server URL, the network/VPN and the CA certificate (--ca-file)")
    if any(isinstance(e, TimeoutError) for e in chain):
        return HoneError(f"{action}: the API server did not answer in time", where=where, fix="retry later")
    first = str(chain[-1]).splitlines()[0] if str(chain[-1]) else type(chain[-1]).__name__
    return HoneError(f"{action}: {first}", where=where, fix="retry; run with --dry-run to check the manifest")


class Cluster:
    """A ``TrainerClient`` with hone's error messages; ``namespace`` and ``source`` say where it points."""

    def __init__(self, access: ClusterAccess | None = None):
        from kubeflow.trainer import TrainerClient
        from kubernetes.config.config_exception import ConfigException

        resolved = resolve_access(access)
        self.source = resolved.source
        self.token = resolved.token
        self.ca = resolved.ca
        # The SDK's control-plane version probe (a ConfigMap in kubeflow-system) only warns, often because RBAC
        # hides that namespace from users; hone does not need it, so it stays quiet.
        sdk_log = logging.getLogger("kubeflow.trainer.backends.kubernetes.backend")
        level = sdk_log.level
        sdk_log.setLevel(logging.ERROR)
        try:
            self.client = TrainerClient(backend_config=resolved.backend_config)
        except (ConfigException, OSError, ValueError) as err:
            raise HoneError(f"cannot load the Kubernetes configuration: {str(err).splitlines()[0]}",
                            where=self.source, fix="check the kubeconfig (`kubectl config view`) or log in again") \
                from None
        finally:
            sdk_log.setLevel(level)
        backend = self.client.backend
        self.namespace: str = str(getattr(backend, "namespace", None) or "default").strip()
        cfg = getattr(getattr(getattr(backend, "custom_api", None), "api_client", None), "configuration", None)
        if self.token is None and cfg is not None:  # a kubeconfig or service-account token
            key = (getattr(cfg, "api_key", None) or {}).get("authorization") or ""
            self.token = key.split(" ", 1)[-1] or None

    @property
    def where(self) -> str:
        return f"namespace {self.namespace} via {self.source}"

    def call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except HoneError:
            raise
        except Exception as err:  # the SDK wraps everything in RuntimeError/TimeoutError/ValueError
            raise api_error(err, action, self.where, self.ca) from None

    def error(self, err: BaseException, action: str) -> HoneError:
        return api_error(err, action, self.where, getattr(self, "ca", None))

    def runtimes(self) -> list:
        return self.call("listing training runtimes", self.client.list_runtimes)

    def get_job(self, name: str):
        return self.call(f"reading TrainJob {name}", self.client.get_job, name)

    def delete_job(self, name: str) -> None:
        self.call(f"deleting TrainJob {name}", self.client.delete_job, name)

    # -- a job's credentials Secret (see hone.kube.manifest) ---------------------------------------------------
    def create_secret(self, body: dict[str, Any]) -> None:
        """Create the job's credentials Secret (replacing a leftover of the same name, e.g. a resubmission)."""
        core = self.client.backend.core_api
        name = body["metadata"]["name"]
        try:
            core.create_namespaced_secret(self.namespace, body)
        except Exception as err:  # noqa: BLE001 - mapped below
            if api_status(err) != 409:
                raise self.error(err, f"creating Secret {name} (the job's credentials)") from None
            self.call(f"replacing Secret {name}", core.replace_namespaced_secret, name, self.namespace, body)

    def delete_secret(self, name: str) -> None:
        """Delete the job's credentials Secret; gone already is fine, and a failure is only logged."""
        try:
            self.client.backend.core_api.delete_namespaced_secret(name, self.namespace)
            log.debug("deleted Secret %s in namespace %s", name, self.namespace)
        except Exception as err:  # noqa: BLE001
            if api_status(err) != 404:
                log.warning("could not delete Secret %s in namespace %s (%s): delete it with `kubectl delete secret "
                            "%s -n %s`", name, self.namespace, self.error(err, "deleting it").what, name,
                            self.namespace)

    def own_secret(self, secret: str, job: str) -> None:
        """Make the TrainJob the Secret's owner, so that deleting the job (by anyone) deletes the Secret."""
        backend = self.client.backend
        try:
            obj = backend.custom_api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, TRAINJOBS, job)
            owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob", "name": job,
                     "uid": obj["metadata"]["uid"], "blockOwnerDeletion": False}
            backend.core_api.patch_namespaced_secret(secret, self.namespace,
                                                     {"metadata": {"ownerReferences": [owner]}})
        except Exception as err:  # noqa: BLE001 - hone still deletes it when it deletes the job
            log.info("Secret %s is not owned by TrainJob %s (%s); hone deletes it when it deletes the job", secret,
                     job, self.error(err, "setting its owner").what)
