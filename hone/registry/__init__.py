"""Model registry: register fine-tuned models with their lineage, find them later.

Two backends behind one interface (:class:`~hone.registry.base.Registry`), chosen by
:class:`~hone.config.RegistryConfig`:

* ``mlflow`` (default): MLflow on SQLite with a local artifact store under ``$HONE_HOME`` (``./hone-runs``),
  zero setup; ``hone registry ui`` shows it. Any MLflow tracking URI works too.
* ``kubeflow``: a Kubeflow Model Registry (OpenShift AI) through the ``model-registry`` client.

A registry that is disabled (``registry_backend=none``) or a Kubeflow registry with an empty address is
skipped with a logged reason, as the seeds' pipeline does. Lineage (base model, dataset URI and SHA-256,
algorithm and every hyperparameter, final loss, eval metrics, pipeline run, hone version) is recorded in
both, and no secret ever is (:mod:`hone.secrets`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from hone.registry.base import (ModelVersionInfo, RegisteredModelInfo, Registry, check_name, check_version,
                                hone_home, parse_ref)
from hone.registry.lineage import Lineage, Source, build_lineage, parse_metadata

if TYPE_CHECKING:
    from hone.config import RegistryConfig

log = logging.getLogger("hone")


def open_registry(cfg: "RegistryConfig | None" = None, *, required: bool = False) -> Registry | None:
    """The registry ``cfg`` describes, or None (with the reason logged) when registration is off.

    With ``required`` (reading commands) a registry that is off is an error instead.
    """
    from hone.config import RegistryConfig
    from hone.errors import HoneError

    cfg = cfg or RegistryConfig()
    reason = None
    if cfg.registry_backend == "none":
        reason = "the registry is disabled (registry_backend=none)"
    elif cfg.registry_backend == "kubeflow" and not cfg.registry_address.strip():
        reason = "registry_address is empty"
    if reason:
        if required:
            raise HoneError(f"no registry to read: {reason}", where="registry_backend / registry_address",
                            fix="pass --backend mlflow, or --backend kubeflow with --address")
        log.info("model registry skipped: %s", reason)
        return None
    if cfg.registry_backend == "kubeflow":
        from hone.registry.kubeflow_backend import KubeflowRegistry

        return KubeflowRegistry(
            cfg.registry_address.strip(), cfg.registry_port, author=cfg.registry_author,
            is_secure=cfg.registry_is_secure, token_env=cfg.registry_token_env, token_file=cfg.registry_token_file,
            custom_ca=cfg.registry_custom_ca, api_version=cfg.registry_api_version,
            format_name=cfg.registry_format_name, format_version=cfg.registry_format_version)
    from hone.registry.mlflow_backend import MLflowRegistry

    return MLflowRegistry(home=cfg.registry_home, tracking_uri=cfg.registry_tracking_uri,
                          experiment_name=cfg.registry_experiment_name)


def register_model(model_dir: str | Path | None, cfg: "RegistryConfig | None" = None, *, name: str | None = None,
                   version: str | None = None, metadata: Mapping[str, Any] | None = None,
                   run_dir: str | Path | None = None, eval_results: str | Path | Mapping[str, Any] | None = None,
                   description: str | None = None, aliases: Iterable[str] = (), model_uri: str | None = None,
                   source: Source | None = None, base_model: str | None = None, dataset_uri: str | None = None,
                   dataset_sha256: str | None = None, registry: Registry | None = None) -> ModelVersionInfo | None:
    """Collect the lineage of ``model_dir`` and register it; None when registration is off (reason logged).

    ``name``/``version``/``description`` default to ``cfg.registry_name``/``registry_version``/
    ``registry_description``. The training run directory is found from ``model_dir`` (``<run>/hf_format/final``)
    unless ``run_dir`` is given; evaluation results are read from ``eval_results`` (an evaluation output
    directory or a JSON file) or from ``<run>/eval``.
    """
    from hone.config import RegistryConfig
    from hone.errors import HoneError

    cfg = cfg or RegistryConfig()
    reg = registry or open_registry(cfg)
    if reg is None:
        return None
    name = name or cfg.registry_name
    if not name:
        raise HoneError("no model name to register under", where="registry_name / --name",
                        fix="pass a name, e.g. --name support-bot")
    version = version or cfg.registry_version
    check_name(name), check_version(version)
    lineage = build_lineage(model_dir, run_dir=run_dir, eval_results=eval_results, metadata=metadata,
                            source=source, base_model=base_model, dataset_uri=dataset_uri,
                            dataset_sha256=dataset_sha256)
    return reg.register(model_dir, name=name, version=version, metadata=lineage.metadata(),
                        description=cfg.registry_description if description is None else description,
                        aliases=aliases, run_dir=lineage.run_dir, model_uri=model_uri, source=lineage.source,
                        artifacts=[Path(p) for p in lineage.reports])


__all__ = ["Lineage", "ModelVersionInfo", "RegisteredModelInfo", "Registry", "Source", "build_lineage",
           "hone_home", "open_registry", "parse_metadata", "parse_ref", "register_model"]
