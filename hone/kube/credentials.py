"""Cluster access for the kubeflow SDK, and the secret values that must never leave this process.

Where the credentials come from, first match wins:

1. an explicit kubeconfig file (``--kubeconfig``, optionally ``--context``);
2. ``KUBERNETES_SERVER_URL`` + ``KUBERNETES_AUTH_TOKEN`` (the ``kubernetes-credentials`` secret of the RHOAI
   pipelines); both must be set. The server's certificate is checked against ``--ca-file`` /
   ``KUBERNETES_CA_FILE`` when given, else against the pod's service-account CA (``ca.crt``) when there is one
   (what a pipeline step has, as upstream's components do), else against the system's public roots;
3. the in-cluster service account (running in a pod: a workbench, a pipeline step): its token (re-read when
   the kubelet rotates it), its CA and ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT``;
4. the default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``).

The service-account directory is ``/var/run/secrets/kubernetes.io/serviceaccount``; ``HONE_SA_DIR`` points
elsewhere (tests, or a token mounted at another path).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from hone.errors import HoneError
from hone.secrets import KUBE_SERVER_ENV as SERVER_ENV
from hone.secrets import KUBE_TOKEN_ENV as TOKEN_ENV
from hone.secrets import MIN_SECRET_LEN, is_secret_env, pull_secret_values

CA_ENV = "KUBERNETES_CA_FILE"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SA_DIR_ENV = "HONE_SA_DIR"  # another service-account directory (tests; a token mounted elsewhere)
SERVICE_HOST_ENV, SERVICE_PORT_ENV = "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"


def sa_dir(env: Mapping[str, str] | None = None) -> Path:
    """The pod's service-account directory (token, ca.crt, namespace)."""
    env = os.environ if env is None else env
    return Path(env.get(SA_DIR_ENV) or SA_DIR)


def sa_ca(env: Mapping[str, str] | None = None) -> Path | None:
    """The service-account CA bundle, when this process runs in a pod (and the file is not empty)."""
    ca = sa_dir(env) / "ca.crt"
    try:
        return ca if ca.is_file() and ca.stat().st_size > 0 else None
    except OSError:
        return None


@dataclass
class ClusterAccess:
    """How to reach the cluster; every field optional (see the module docstring for the order)."""

    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    ca_file: str | None = None
    insecure_skip_tls_verify: bool = False


@dataclass
class ResolvedAccess:
    backend_config: object  # kubeflow.common.types.KubernetesBackendConfig
    source: str  # words for messages: "KUBERNETES_SERVER_URL https://api...:6443", "kubeconfig ~/.kube/config", ...
    token: str | None = None  # only to keep it out of manifests and logs
    ca: str | None = None  # words for certificate errors: which CA the server's certificate was checked against


def _in_cluster(env: Mapping[str, str]) -> bool:
    """Running in a pod: the service-account token is mounted and Kubernetes set the API server's address."""
    return (sa_dir(env) / "token").is_file() and bool(env.get(SERVICE_HOST_ENV))


def _sa_namespace(env: Mapping[str, str]) -> str | None:
    path = sa_dir(env) / "namespace"
    try:
        return path.read_text().strip() or None if path.is_file() else None
    except OSError:
        return None


def _in_cluster_config(env: Mapping[str, str]):
    """A client configuration from the service account: the API server from KUBERNETES_SERVICE_HOST/PORT, the
    token file (re-read when it rotates) and the service-account CA."""
    from kubernetes import client
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader

    d = sa_dir(env)
    cfg = client.Configuration()
    try:
        InClusterConfigLoader(token_filename=str(d / "token"), cert_filename=str(d / "ca.crt"),
                              environ=dict(env)).load_and_set(cfg)
    except ConfigException as err:
        raise HoneError(f"the in-cluster service account cannot be used: {str(err).splitlines()[0]}",
                        where=f"{d} and {SERVICE_HOST_ENV}/{SERVICE_PORT_ENV}",
                        fix=f"run inside a pod (the service account's token and ca.crt mounted, {SERVICE_HOST_ENV} "
                            f"set), or set {SERVER_ENV} and {TOKEN_ENV}, or pass --kubeconfig") from None
    return cfg


def _default_kubeconfigs(env: Mapping[str, str]) -> list[str]:
    if env.get("KUBECONFIG"):
        return [p for p in env["KUBECONFIG"].split(os.pathsep) if p]
    return [os.path.join(env.get("HOME") or os.path.expanduser("~"), ".kube", "config")]


def _context_namespace(config_file: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig context (the SDK reads it from the default kubeconfig only)."""
    from kubernetes import config

    try:
        contexts, current = config.list_kube_config_contexts(config_file=config_file)
    except Exception:  # noqa: BLE001 - an unreadable kubeconfig is reported when the client loads it
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"


def resolve_access(access: ClusterAccess | None = None, env: Mapping[str, str] | None = None) -> ResolvedAccess:
    """Pick the credentials (see module docstring) and build the SDK's ``KubernetesBackendConfig``."""
    from kubeflow.common.types import KubernetesBackendConfig
    from kubernetes import client

    access = access or ClusterAccess()
    env = os.environ if env is None else env
    server, token = env.get(SERVER_ENV, "").strip(), env.get(TOKEN_ENV, "").strip()
    ca_file = access.ca_file or env.get(CA_ENV) or None
    if ca_file and not Path(ca_file).expanduser().is_file():
        raise HoneError(f"CA file not found: {ca_file}", where="--ca-file" if access.ca_file else CA_ENV,
                        fix="pass the PEM file of the API server's certificate authority")

    if access.kubeconfig:
        path = Path(access.kubeconfig).expanduser()
        if not path.is_file():
            raise HoneError(f"kubeconfig not found: {path}", where="--kubeconfig", fix="pass an existing kubeconfig file")
        return ResolvedAccess(KubernetesBackendConfig(
            namespace=access.namespace or _context_namespace(str(path), access.context), config_file=str(path),
            context=access.context), f"kubeconfig {path}" + (f" (context {access.context})" if access.context else ""),
            ca=f"the CA of kubeconfig {path}")

    if server or token:
        if not (server and token):
            missing = TOKEN_ENV if server else SERVER_ENV
            raise HoneError(f"{missing} is not set but {SERVER_ENV if server else TOKEN_ENV} is",
                            where=f"environment variables {SERVER_ENV} and {TOKEN_ENV}",
                            fix="set both (the kubernetes-credentials secret holds both keys), or unset both to use "
                                "a kubeconfig or the in-cluster service account")
        if not re.match(r"^https?://[^/\s]+", server):
            raise HoneError(f"{SERVER_ENV} is not an http(s) URL: {server!r}", where=SERVER_ENV,
                            fix="use the API server URL, e.g. https://api.cluster.example.com:6443")
        if "@" in server.split("://", 1)[1].split("/")[0]:
            raise HoneError(f"{SERVER_ENV} must not carry credentials", where=SERVER_ENV,
                            fix=f"put the token in {TOKEN_ENV} only")
        cfg = client.Configuration()
        cfg.host = server.rstrip("/")
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        cfg.verify_ssl = not access.insecure_skip_tls_verify
        ca_words = "no verification (--insecure-skip-tls-verify)" if access.insecure_skip_tls_verify else None
        if ca_file:
            cfg.ssl_ca_cert = str(Path(ca_file).expanduser())
            ca_words = ca_words or f"{'--ca-file' if access.ca_file else CA_ENV} {cfg.ssl_ca_cert}"
        elif (pod_ca := sa_ca(env)) is not None:
            # a pipeline step: the kubernetes-credentials secret gives URL + token, the pod gives the CA
            cfg.ssl_ca_cert = str(pod_ca)
            ca_words = ca_words or f"the service-account CA {pod_ca}"
        namespace = access.namespace or _sa_namespace(env)
        return ResolvedAccess(KubernetesBackendConfig(namespace=namespace or "default", client_configuration=cfg),
                              f"{SERVER_ENV} {cfg.host}", token=token,
                              ca=ca_words or "the system's public certificate authorities")

    if _in_cluster(env):
        cfg = _in_cluster_config(env)
        if ca_file:
            cfg.ssl_ca_cert = str(Path(ca_file).expanduser())
        cfg.verify_ssl = not access.insecure_skip_tls_verify
        namespace = access.namespace or _sa_namespace(env) or "default"
        return ResolvedAccess(KubernetesBackendConfig(namespace=namespace, client_configuration=cfg),
                              f"the in-cluster service account ({cfg.host})",
                              ca=f"{'the CA file' if ca_file else 'the service-account CA'} {cfg.ssl_ca_cert}")

    configs = [str(Path(p).expanduser()) for p in _default_kubeconfigs(env) if Path(p).expanduser().is_file()]
    if configs:
        # explicit: the kubernetes client reads $KUBECONFIG once, when it is imported
        files = os.pathsep.join(configs)
        return ResolvedAccess(KubernetesBackendConfig(
            namespace=access.namespace or _context_namespace(files, access.context), config_file=files,
            context=access.context),
                              f"kubeconfig {configs[0]}" + (f" (context {access.context})" if access.context else ""),
                              ca=f"the CA of kubeconfig {configs[0]}")

    raise HoneError("no Kubernetes credentials found",
                    where=f"{SERVER_ENV}/{TOKEN_ENV}, --kubeconfig, $KUBECONFIG or ~/.kube/config, and the in-cluster "
                          "service account were all tried",
                    fix=f"log in (`oc login` / `kubectl config use-context`), pass --kubeconfig, or set {SERVER_ENV} "
                        f"and {TOKEN_ENV}; `hone kube submit --dry-run` needs no cluster")


def secret_values(env: Mapping[str, str] | None = None, extra: list[str | None] | None = None) -> list[str]:
    """Every secret value this process knows of: credential variables, the OCI pull secret's passwords, extras."""
    env = os.environ if env is None else env
    out = [v for k, v in env.items() if is_secret_env(k) and v and len(v) >= 8]
    out += pull_secret_values(env)
    out += [x for x in (extra or []) if x]
    return sorted({s for s in out if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
