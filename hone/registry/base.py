"""The registry interface every backend implements, and what it returns."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

from hone.errors import HoneError
from hone.layout import DEFAULT_HOME, hone_home  # noqa: F401  (hone_home is part of this module's face)
from hone.registry.lineage import Scalar, Source

# Names and versions: printable ASCII (the Kubeflow registry's rule), no ':' or '@' (they split references).
_NAME_RE = re.compile(r"^[\x21-\x7E](?:[\x20-\x7E]{0,254})$")
_RESERVED = (":", "@", "'", '"', "\\")
_ALIAS_RE = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")




@dataclass
class ModelVersionInfo:
    """One registered version of a model."""

    name: str
    version: str
    uri: str                       # where the model's files are
    metadata: dict[str, Scalar] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    description: str = ""
    author: str = ""
    created: str = ""              # ISO 8601, UTC
    run_id: str | None = None      # MLflow run that produced/logged it
    backend: str = ""
    backend_id: str | None = None  # the backend's own id (MLflow version number, Kubeflow ModelVersion id)
    details: dict[str, Any] = field(default_factory=dict)  # backend facts (format, model source, MLflow ids)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RegisteredModelInfo:
    """A model name and its versions."""

    name: str
    description: str = ""
    versions: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version
    latest_version: str | None = None
    backend: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Registry(Protocol):
    """What hone needs from a model registry."""

    backend: str

    def register(self, model_dir: str | Path | None, *, name: str, version: str, metadata: Mapping[str, Any],
                 description: str = "", aliases: Iterable[str] = (), run_dir: str | Path | None = None,
                 model_uri: str | None = None, source: Source | None = None,
                 artifacts: Iterable[Path] = ()) -> ModelVersionInfo:
        """Register ``model_dir`` as ``name:version``; an existing name+version is refused, never overwritten."""

    def get(self, name: str, version: str) -> ModelVersionInfo: ...

    def get_by_alias(self, name: str, alias: str) -> ModelVersionInfo: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def list_models(self) -> list[RegisteredModelInfo]: ...

    def list_versions(self, name: str) -> list[ModelVersionInfo]: ...

    def download(self, name: str, version: str, output_dir: str | Path) -> Path: ...


class RegistryBase:
    """Shared behaviour: reference parsing and the latest-version rule."""

    backend = "?"

    def resolve(self, ref: str) -> ModelVersionInfo:
        """``NAME`` (latest version), ``NAME:VERSION`` or ``NAME@ALIAS``."""
        name, version, alias = parse_ref(ref)
        if alias:
            return self.get_by_alias(name, alias)  # type: ignore[attr-defined]
        if version:
            return self.get(name, version)  # type: ignore[attr-defined]
        versions = self.list_versions(name)  # type: ignore[attr-defined]
        if not versions:
            raise not_found(name)
        return versions[-1]


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME[:VERSION|@ALIAS]`` -> (name, version, alias)."""
    ref = ref.strip()
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if not alias:
            raise HoneError(f"empty alias in {ref!r}", where="model reference", fix="write NAME@ALIAS")
        return check_name(name), None, check_alias(alias)
    name, sep, version = ref.partition(":")
    if sep and not version:
        raise HoneError(f"empty version in {ref!r}", where="model reference", fix="write NAME:VERSION")
    return check_name(name), (check_version(version) if sep else None), None


def check_name(name: str, what: str = "model name") -> str:
    if not name or not _NAME_RE.match(name) or any(c in name for c in _RESERVED):
        raise HoneError(f"invalid {what} {name!r}", where=what,
                        fix="use printable ASCII without : @ quotes or backslash (e.g. qwen-support-bot)")
    return name


def check_alias(alias: str) -> str:
    """Aliases: letters, digits, '_' and '-' (MLflow's rule); not 'latest' nor v<N> (MLflow reserves them)."""
    if not _ALIAS_RE.match(alias or "") or alias.lower() == "latest" or re.match(r"^[vV]\d+$", alias):
        raise HoneError(f"invalid alias {alias!r}", where="alias",
                        fix="use letters, digits, '_' and '-' (e.g. champion); 'latest' and v<N> are reserved")
    return alias


def check_version(version: str) -> str:
    return check_name(version, "version")


def not_found(name: str, version: str | None = None, alias: str | None = None) -> HoneError:
    what = f"{name}@{alias}" if alias else f"{name}:{version}" if version else name
    return HoneError(f"model {what} is not in the registry", where="model reference",
                     fix="`hone registry list` shows the registered models and versions")


def duplicate(name: str, version: str) -> HoneError:
    return HoneError(f"model {name}:{version} is already registered (versions are never overwritten)",
                     where="--version", fix="register under a new version")


def write_registry_record(dest: Path, info: ModelVersionInfo) -> None:
    (dest / "hone_registry.json").write_text(json.dumps(info.to_json(), indent=2, default=str) + "\n")
