"""The Kubeflow Model Registry (OpenShift AI's model registry) through the ``model-registry`` client.

Registration is the client's ``register_model`` exactly as the seeds' pipeline component calls it: a
RegisteredModel (owner = author), a ModelVersion carrying the lineage as custom properties, and a
ModelArtifact with the model's URI, format and ``model_source_kind/class/name/id/group`` (``kfp`` /
``pipelinerun`` / run name / run id / namespace inside a pipeline run; ``hone`` / ``run`` otherwise).
The registry stores no files: the model must already be where its URI points (a PVC, S3, an OCI image).

The REST contract is ``/api/model_registry/v1alpha3`` (the version OpenShift AI serves, and the reference
OpenAPI document); ``model-registry`` 0.3.18 speaks ``/api/model_registry/v1``, so hone rewrites the
path prefix to ``registry_api_version`` (``v1alpha3`` by default, ``v1`` for registries that serve it).

Aliases, which the Kubeflow registry has no notion of, are custom properties ``hone.alias.<alias>`` of the
RegisteredModel holding a version name.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlparse

from hone.errors import HoneError
from hone.registry.base import (ModelVersionInfo, RegisteredModelInfo, RegistryBase, check_alias, check_name,
                                check_version, duplicate, not_found, write_registry_record)
from hone.registry.lineage import Scalar, Source, flatten
from hone.secrets import MODEL_REGISTRY_TOKEN_ENV, REDACTED, scrub_mapping, scrub_text, secret_env_values

log = logging.getLogger("hone")

ALIAS_PREFIX = "hone.alias."
SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 (a path, not a secret)
CLIENT_PREFIX = "/api/model_registry/v1/"
_INT32 = 999_999_999  # the contract's MetadataIntValue pattern allows at most 9 digits


def to_custom_properties(metadata: Mapping[str, Any]) -> dict[str, Scalar]:
    """Flat metadata -> values the registry's custom-property types hold exactly: bool, int (9 digits at
    most, the contract's MetadataIntValue), double, string. Larger ints become doubles (or text beyond 2**53)."""
    out: dict[str, Scalar] = {}
    for key, value in flatten(metadata).items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT32:
            value = float(value) if abs(value) < 2**53 else str(value)
        out[key] = value
    return out


def _run_coroutine(coro):
    """Run the client's coroutines without patching the caller's event loop (the client's default applies
    nest_asyncio globally)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    with ThreadPoolExecutor(1) as pool:  # called from inside a running loop (a notebook)
        return pool.submit(asyncio.run, coro).result()


def _client_class(api_version: str):
    """``model_registry.ModelRegistry`` whose requests go to ``/api/model_registry/<api_version>/``."""
    from model_registry import ModelRegistry
    from model_registry.core import ModelRegistryAPIClient
    from mr_openapi import ApiClient, ModelRegistryServiceApi

    prefix = f"/api/model_registry/{api_version}/"

    class _PrefixApiClient(ApiClient):
        async def call_api(self, method, url, *args, **kwargs):
            return await super().call_api(method, url.replace(CLIENT_PREFIX, prefix, 1), *args, **kwargs)

    class _PrefixAPI(ModelRegistryAPIClient):
        @contextlib.asynccontextmanager
        async def get_client(self):
            # one ApiClient for every call: a new one per call (the client's way) builds a new TLS context,
            # loading the system's CA certificates each time (~0.1 s a request); its HTTP session belongs to
            # the call's event loop, so it is closed and dropped after each call
            api_client = self.__dict__.get("_hone_api_client")
            if api_client is None:
                api_client = self.__dict__["_hone_api_client"] = _PrefixApiClient(self.config)
            try:
                yield ModelRegistryServiceApi(api_client)
            finally:
                await api_client.close()
                api_client.rest_client.pool_manager = None
                api_client.rest_client.retry_client = None

    class _Registry(ModelRegistry):
        # ModelRegistry.__init__ assigns self._api and probes the server with it: wrap it on assignment
        @property
        def _api(self):
            return self.__dict__["_hone_api"]

        @_api.setter
        def _api(self, api):
            self.__dict__["_hone_api"] = _PrefixAPI(api.config)

    return _Registry


class KubeflowRegistry(RegistryBase):
    """A Kubeflow Model Registry server."""

    backend = "kubeflow"

    def __init__(self, address: str, port: int = 8080, *, author: str = "hone", is_secure: bool | None = None,
                 token_env: str | None = MODEL_REGISTRY_TOKEN_ENV, token_file: str | None = None,
                 custom_ca: str | None = None, api_version: str = "v1alpha3", format_name: str = "pytorch",
                 format_version: str = "1.0"):
        if not address:
            raise HoneError("no Kubeflow Model Registry address", where="registry_address",
                            fix="pass the registry's address (or leave registration off)")
        scheme = urlparse(address).scheme
        if scheme in ("http", "https"):
            secure = scheme == "https" if is_secure is None else is_secure
            if is_secure is not None and secure != (scheme == "https"):
                raise HoneError(f"registry_is_secure={is_secure} contradicts the address scheme {scheme}://",
                                where="registry_address / registry_is_secure", fix="make them agree")
        else:
            secure = bool(is_secure)  # a bare host: plain HTTP unless asked (the seeds' component default)
            address = ("https://" if secure else "http://") + address
        self.address, self.port, self.secure = address.rstrip("/"), int(port), secure
        self.author, self.token_env, self.token_file, self.custom_ca = author, token_env, token_file, custom_ca
        self.api_version, self.format_name, self.format_version = api_version, format_name, format_version
        self._client = None

    @property
    def where(self) -> str:
        return f"Kubeflow Model Registry {scrub_text(self.address)}:{self.port}"

    # -- connection ---------------------------------------------------------------------------------------
    def token(self) -> str | None:
        """The bearer token: ``$<token_env>``, else ``token_file``, else ``$KF_PIPELINES_SA_TOKEN_PATH`` or the
        pod's service-account token when present. Never stored anywhere but the request header."""
        if self.token_env and os.environ.get(self.token_env, "").strip():
            return os.environ[self.token_env].strip()
        path = self.token_file
        if path:
            try:
                return Path(path).read_text().strip() or None
            except OSError as err:
                raise HoneError(f"cannot read the registry token file: {err.strerror}", where=f"registry_token_file "
                                f"{path}", fix="point it at a readable file holding the token") from None
        for candidate in (os.environ.get("KF_PIPELINES_SA_TOKEN_PATH"), SA_TOKEN_PATH):
            if candidate and Path(candidate).is_file():
                with contextlib.suppress(OSError):
                    return Path(candidate).read_text().strip() or None
        return None

    @property
    def client(self):
        if self._client is None:
            token = self.token()
            if self.secure and not token:
                raise HoneError(f"a secure connection to the {self.where} needs a token", where="registry token",
                                fix=f"set ${self.token_env or MODEL_REGISTRY_TOKEN_ENV} or registry_token_file (e.g. "
                                    "`oc whoami -t` output), or connect with registry_is_secure=false")
            if self.custom_ca and not Path(self.custom_ca).is_file():
                raise HoneError(f"custom CA file not found: {self.custom_ca}", where="registry_custom_ca",
                                fix="pass the PEM file of the registry's certificate authority")
            cls = _client_class(self.api_version)
            with self.errors("cannot connect"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "User access token is missing": an in-cluster HTTP service
                self._client = cls(self.address, self.port, author=self.author, is_secure=self.secure,
                                   user_token=token, custom_ca=self.custom_ca, async_runner=_run_coroutine,
                                   log_level=logging.ERROR)
        return self._client

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Client failures -> HoneError with what, where and how to fix (secrets masked)."""
        import aiohttp
        from model_registry.exceptions import StoreError
        from mr_openapi.exceptions import ApiException

        try:
            yield
        except HoneError:
            raise
        except ApiException as err:
            body = scrub_text(str(err.body or ""))[:500]
            fix = {401: "check the token (registry_token_env / registry_token_file)",
                   403: "the token's identity may not use this registry: ask for access",
                   404: f"check the address and registry_api_version ({self.api_version}; v1 or v1alpha3)"
                   }.get(err.status or 0, "see the registry's message above")
            raise HoneError(f"{what}: the registry answered {err.status} {err.reason or ''}: {body}".rstrip(": "),
                            where=self.where, fix=fix) from None
        except StoreError as err:
            raise HoneError(f"{what}: {scrub_text(str(err))}", where=self.where,
                            fix="check the model name and version") from None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
            raise HoneError(f"{what}: cannot reach the {self.where} ({scrub_text(str(err)) or type(err).__name__})",
                            where="registry_address / registry_port",
                            fix="check the address and port, that the registry is running, network policies, and "
                                "registry_is_secure (http vs https)") from None

    # -- reading -----------------------------------------------------------------------------------------
    def _model(self, name: str):
        with self.errors(f"cannot read model {name}"):
            return self.client.get_registered_model(name)

    def _version(self, name: str, version: str):
        from model_registry.exceptions import StoreError

        with self.errors(f"cannot read {name}:{version}"):
            try:
                return self.client.get_model_version(name, version)
            except StoreError:  # the model itself does not exist
                return None

    def _aliases(self, rm) -> dict[str, str]:
        props = (rm.custom_properties or {}) if rm is not None else {}
        return {k[len(ALIAS_PREFIX):]: str(v) for k, v in props.items() if k.startswith(ALIAS_PREFIX)}

    def _info(self, name: str, mv, aliases: Mapping[str, str]) -> ModelVersionInfo:
        from model_registry.exceptions import StoreError

        with self.errors(f"cannot read the artifact of {name}:{mv.name}"):
            try:
                art = self.client.get_model_artifact(name, mv.name)
            except StoreError:
                art = None
        details: dict[str, Any] = {"model_version_id": mv.id, "state": str(getattr(mv.state, "value", mv.state))}
        if art is not None:
            details.update({k: getattr(art, k) for k in ("model_format_name", "model_format_version",
                            "model_source_kind", "model_source_class", "model_source_name", "model_source_id",
                            "model_source_group", "storage_key", "storage_path", "service_account_name")
                            if getattr(art, k, None) is not None})
        return ModelVersionInfo(
            name=name, version=mv.name, uri=(art.uri if art is not None else "") or "",
            metadata=dict(mv.custom_properties or {}),
            aliases=sorted(a for a, v in aliases.items() if v == mv.name), description=mv.description or "",
            author=mv.author or "", created=_iso(mv.create_time_since_epoch), backend=self.backend,
            backend_id=mv.id, details=details)

    def get(self, name: str, version: str) -> ModelVersionInfo:
        check_name(name), check_version(version)
        mv = self._version(name, version)
        if mv is None:
            raise not_found(name, version)
        return self._info(name, mv, self._aliases(self._model(name)))

    def get_by_alias(self, name: str, alias: str) -> ModelVersionInfo:
        check_name(name), check_alias(alias)
        version = self._aliases(self._model(name)).get(alias)
        if version is None:
            raise not_found(name, alias=alias)
        return self.get(name, version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        check_alias(alias)
        if self._version(name, version) is None:
            raise not_found(name, version)
        rm = self._model(name)
        props = {k: v for k, v in (rm.custom_properties or {}).items()}
        props[ALIAS_PREFIX + alias] = version
        rm.custom_properties = props
        with self.errors(f"cannot set alias {alias} on {name}"):
            self.client.update(rm)

    def list_models(self) -> list[RegisteredModelInfo]:
        with self.errors("cannot list models"):
            models = list(self.client.get_registered_models())
        out = []
        for rm in sorted(models, key=lambda r: r.name):
            with self.errors(f"cannot list the versions of {rm.name}"):
                versions = [mv.name for mv in sorted(self.client.get_model_versions(rm.name), key=_by_id)]
            out.append(RegisteredModelInfo(name=rm.name, description=rm.description or "", versions=versions,
                                           aliases=self._aliases(rm), latest_version=versions[-1] if versions else None,
                                           backend=self.backend))
        return out

    def list_versions(self, name: str) -> list[ModelVersionInfo]:
        check_name(name)
        rm = self._model(name)
        if rm is None:
            return []
        with self.errors(f"cannot list the versions of {name}"):
            versions = sorted(self.client.get_model_versions(name), key=_by_id)
        aliases = self._aliases(rm)
        return [self._info(name, mv, aliases) for mv in versions]

    # -- registering -----------------------------------------------------------------------------------------
    def register(self, model_dir: str | Path | None, *, name: str, version: str, metadata: Mapping[str, Any],
                 description: str = "", aliases: Iterable[str] = (), run_dir: str | Path | None = None,
                 model_uri: str | None = None, source: Source | None = None,
                 artifacts: Iterable[Path] = ()) -> ModelVersionInfo:
        from model_registry.exceptions import StoreError

        check_name(name), check_version(version)
        aliases = [check_alias(a) for a in aliases]
        if model_uri is None:
            if model_dir is None or not Path(model_dir).is_dir():
                raise HoneError(f"model directory not found: {model_dir}", where="MODEL_DIR",
                                fix="pass the model directory, or --model-uri where the model is stored")
            model_uri = Path(model_dir).resolve().as_uri()
        known = secret_env_values([self.token() or ""])
        props = to_custom_properties(scrub_mapping(dict(metadata), known))
        src = {k: (scrub_text(v, known) if isinstance(v, str) else v)
               for k, v in (source or Source.from_env()).model_source(
                   fallback_name=str(run_dir) if run_dir else None).items()}
        if REDACTED in scrub_text(model_uri, known):
            raise HoneError("the model URI holds a credential", where="--model-uri",
                            fix="use a URI without credentials; give the storage credentials to the serving runtime "
                                "(storage_key / service account), never to the registry")
        if self._version(name, version) is not None:
            raise duplicate(name, version)
        with self.errors(f"cannot register {name}:{version}"):
            try:
                self.client.register_model(
                    name, model_uri, model_format_name=self.format_name, model_format_version=self.format_version,
                    version=version, author=self.author, owner=self.author,
                    version_description=scrub_text(description or "", known) or None,
                    metadata=props, **src)
            except StoreError as err:
                if "already exists" in str(err):
                    raise duplicate(name, version) from None
                raise
        for alias in aliases:
            self.set_alias(name, alias, version)
        log.info("registered %s:%s in %s", name, version, self.where)
        return self.get(name, version)

    # -- downloading -----------------------------------------------------------------------------------------
    def download(self, name: str, version: str, output_dir: str | Path) -> Path:
        """Copy the version's files when its URI is a local path; other storage has its own tools."""
        from hone.io import atomic_dir

        info = self.get(name, version)
        parsed = urlparse(info.uri)
        local = Path(parsed.path) if parsed.scheme == "file" else Path(info.uri) if not parsed.scheme else None
        if local is None or not local.exists():
            raise HoneError(f"{name}:{version} is stored at {scrub_text(info.uri)}, which is not a local path here",
                            where="model URI", fix="fetch it with that storage's tool (aws s3 cp, oras pull, the "
                                                   "PVC mount) or serve it from there")
        out = Path(output_dir)
        if out.exists() and any(out.iterdir()):
            raise HoneError(f"output directory {out} is not empty", where="--output", fix="choose a new directory")
        with atomic_dir(out) as tmp:
            if local.is_dir():
                shutil.copytree(local, tmp, dirs_exist_ok=True)
            else:
                shutil.copy2(local, tmp / local.name)
            write_registry_record(tmp, info)
        return out


def _by_id(mv) -> tuple[int, str]:
    return (int(mv.id) if str(mv.id or "").isdigit() else 0, mv.name)


def _iso(ms: str | None) -> str:
    if not ms:
        return ""
    with contextlib.suppress(ValueError):
        return dt.datetime.fromtimestamp(int(ms) / 1000, dt.timezone.utc).isoformat()
    return str(ms)
