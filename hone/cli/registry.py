"""`hone registry`: list, show, register, download, alias, ui. A thin skin over :mod:`hone.registry`."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from hone.errors import HoneError, suggest

# CLI flag -> RegistryConfig field (the YAML given with --config uses the field names).
CONNECTION_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "registry_backend": ("--backend", {"type": click.Choice(["mlflow", "kubeflow", "none"]),
                                       "help": "mlflow (embedded, default), kubeflow or none."}),
    "registry_home": ("--home", {"help": "hone home of the embedded registry (default $HONE_HOME, else ./hone-runs)."}),
    "registry_tracking_uri": ("--tracking-uri", {"help": "MLflow store URI instead of the embedded one."}),
    "registry_experiment_name": ("--experiment", {"help": "MLflow experiment of registration runs (default hone)."}),
    "registry_address": ("--address", {"help": "Kubeflow Model Registry address (host or http(s)://host)."}),
    "registry_port": ("--port", {"type": int, "help": "Kubeflow Model Registry port (default 8080)."}),
    "registry_author": ("--author", {"help": "Author recorded with the model (Kubeflow)."}),
    "registry_token_env": ("--token-env", {"help": "Environment variable holding the registry token "
                                                   "(default MODEL_REGISTRY_TOKEN)."}),
    "registry_token_file": ("--token-file", {"help": "File holding the registry token."}),
    "registry_custom_ca": ("--custom-ca", {"help": "PEM file of the registry's certificate authority."}),
    "registry_api_version": ("--api-version", {"type": click.Choice(["v1alpha3", "v1"]),
                                               "help": "Model Registry REST API version (default v1alpha3)."}),
}


def connection_options(fn: Callable) -> Callable:
    """The options choosing and reaching a registry, on every sub-command."""
    for field, (flag, kw) in reversed(list(CONNECTION_FLAGS.items())):
        fn = click.option(flag, field, default=None, **kw)(fn)
    fn = click.option("--secure/--insecure", "registry_is_secure", default=None,
                      help="HTTPS with a token, or plain HTTP (default: from the address scheme; bare host = HTTP).")(fn)
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                      help="YAML file of registry_* parameters; flags override it.")(fn)
    return fn


def registry_config(config_file: str | None, values: dict[str, Any], **overrides: Any):
    """RegistryConfig from a YAML file, then the flags given, then ``overrides``."""
    from pydantic import ValidationError

    from hone.config import RegistryConfig, load_yaml_config

    params: dict[str, Any] = load_yaml_config(config_file) if config_file else {}
    for key in params:
        if key not in RegistryConfig.model_fields:
            hint = suggest(key, RegistryConfig.model_fields)
            raise HoneError(f"unknown registry parameter {key!r}" + (f": {hint}" if hint else ""),
                            where=f"config file {config_file}", fix="use registry_* names (see docs/registry.md)")
    params.update({k: v for k, v in values.items() if k in RegistryConfig.model_fields and v is not None})
    params.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RegistryConfig(**params)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][-1]) if first["loc"] else "?"
        raise HoneError(f"invalid value for {name!r} ({first['msg']})", where=f"parameter {name}",
                        fix="see `hone registry --help`") from None


def _open(config_file: str | None, values: dict[str, Any]):
    from hone.registry import open_registry

    return open_registry(registry_config(config_file, values), required=True)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _show_version(info) -> None:
    click.echo(f"{info.name}:{info.version}" + (f"  @{', @'.join(info.aliases)}" if info.aliases else ""))
    click.echo(f"  uri:      {info.uri}")
    if info.description:
        click.echo(f"  about:    {info.description}")
    if info.created:
        click.echo(f"  created:  {info.created}" + (f" by {info.author}" if info.author else ""))
    if info.run_id:
        click.echo(f"  run:      {info.run_id}")
    for key, value in sorted(info.details.items()):
        click.echo(f"  {key}: {value}")
    if info.metadata:
        click.echo("  metadata:")
        width = max(len(k) for k in info.metadata)
        for key in sorted(info.metadata):
            click.echo(f"    {key.ljust(width)}  {info.metadata[key]}")


@click.group("registry", context_settings={"max_content_width": 110})
def registry() -> None:
    """Registered models with their lineage: MLflow (embedded, zero setup) or a Kubeflow Model Registry.

    \b
    Examples:
      hone registry register run/hf_format/final --name support-bot --version 1.0.0 --alias champion
      hone registry list
      hone registry show support-bot@champion
      hone registry download support-bot:1.0.0 --output model/
      hone registry ui
    """


@registry.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@connection_options
def list_cmd(name: str | None, as_json: bool, config_file: str | None, **values: Any) -> None:
    """List registered models, or the versions of NAME."""
    reg = _open(config_file, values)
    if name:
        versions = reg.list_versions(name)
        if not versions:
            from hone.registry.base import not_found

            raise not_found(name)
        if as_json:
            return _emit_json([v.to_json() for v in versions])
        for v in versions:
            aliases = f"  @{', @'.join(v.aliases)}" if v.aliases else ""
            click.echo(f"{v.name}:{v.version}  {v.created[:19]}  {v.uri}{aliases}")
        return
    models = reg.list_models()
    if as_json:
        return _emit_json([m.to_json() for m in models])
    if not models:
        click.echo("no registered models")
        return
    width = max(len(m.name) for m in models)
    for m in models:
        aliases = ", ".join(f"@{a}={v}" for a, v in sorted(m.aliases.items()))
        click.echo(f"{m.name.ljust(width)}  {len(m.versions)} version(s), latest {m.latest_version}"
                   + (f"  {aliases}" if aliases else ""))


@registry.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@connection_options
def show_cmd(ref: str, as_json: bool, config_file: str | None, **values: Any) -> None:
    """Show a version with its lineage: NAME (latest), NAME:VERSION or NAME@ALIAS."""
    info = _open(config_file, values).resolve(ref)
    if as_json:
        return _emit_json(info.to_json())
    _show_version(info)


@registry.command("register")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--name", help="Registered model name (default registry_name from --config).")
@click.option("--version", "version", help="Version to register (default 1.0.0); an existing one is refused.")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Extra metadata (repeat for several).")
@click.option("--description", help="Description of this version.")
@click.option("--alias", "aliases", multiple=True, help="Alias pointing at this version (repeat for several).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Training output directory (default: found "
              "from MODEL_DIR, e.g. <run>/hf_format/final -> <run>).")
@click.option("--eval-results", type=click.Path(), help="Evaluation output directory or results JSON "
              "(default: <run>/eval when present).")
@click.option("--model-uri", help="Kubeflow: where the model is stored (s3://, oci://, pvc://...); "
              "default file://MODEL_DIR.")
@click.option("--format-name", "registry_format_name", help="Model format name (Kubeflow; default pytorch).")
@click.option("--format-version", "registry_format_version", help="Model format version (Kubeflow; default 1.0).")
@click.option("--base-model", help="Base model (default: the training run's model_path).")
@click.option("--dataset-uri", help="Dataset URI (default: the training run's data_path).")
@click.option("--dataset-sha256", help="Dataset SHA-256 (default: computed when the dataset is a local path).")
@click.option("--pipeline-name", help="Source pipeline name (default $HONE_PIPELINE_NAME).")
@click.option("--pipeline-run-id", help="Source pipeline run id (default $HONE_PIPELINE_RUN_ID).")
@click.option("--pipeline-run-name", help="Source pipeline run name (default $HONE_PIPELINE_RUN_NAME).")
@click.option("--namespace", help="Namespace of the pipeline run (default $HONE_PIPELINE_NAMESPACE).")
@click.option("--json", "as_json", is_flag=True, help="Print the registered version as JSON.")
@connection_options
def register_cmd(model_dir: str, name: str | None, version: str | None, metadata: tuple[str, ...],
                 description: str | None, aliases: tuple[str, ...], run_dir: str | None, eval_results: str | None,
                 model_uri: str | None, registry_format_name: str | None, registry_format_version: str | None,
                 base_model: str | None, dataset_uri: str | None, dataset_sha256: str | None,
                 pipeline_name: str | None, pipeline_run_id: str | None, pipeline_run_name: str | None,
                 namespace: str | None, as_json: bool, config_file: str | None, **values: Any) -> None:
    """Register MODEL_DIR (a Hugging Face model directory) as NAME:VERSION with its lineage.

    A disabled registry, or a Kubeflow registry with an empty address, skips registration (exit 0)."""
    from hone.registry import Source, open_registry, parse_metadata, register_model

    cfg = registry_config(config_file, values, registry_format_name=registry_format_name,
                          registry_format_version=registry_format_version)
    reg = open_registry(cfg)
    if reg is None:
        click.echo("registration skipped: " + ("the registry is disabled" if cfg.registry_backend == "none"
                                                 else "registry_address is empty"))
        return
    source = Source.from_env(pipeline_name=pipeline_name, pipeline_run_id=pipeline_run_id,
                             pipeline_run_name=pipeline_run_name, namespace=namespace)
    info = register_model(model_dir, cfg, name=name, version=version, metadata=parse_metadata(metadata),
                          run_dir=run_dir, eval_results=eval_results, description=description, aliases=aliases,
                          model_uri=model_uri, source=source, base_model=base_model, dataset_uri=dataset_uri,
                          dataset_sha256=dataset_sha256, registry=reg)
    if as_json:
        return _emit_json(info.to_json())
    click.echo(f"registered {info.name}:{info.version} ({reg.backend})")
    _show_version(info)


@registry.command("download")
@click.argument("ref")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Directory to write (new or empty).")
@connection_options
def download_cmd(ref: str, output: str, config_file: str | None, **values: Any) -> None:
    """Download NAME:VERSION (or NAME@ALIAS, NAME) as a Hugging Face model directory."""
    reg = _open(config_file, values)
    info = reg.resolve(ref)
    path = reg.download(info.name, info.version, output)
    click.echo(f"{info.name}:{info.version} written to {path}")


@registry.command("alias")
@click.argument("ref")
@click.argument("alias")
@connection_options
def alias_cmd(ref: str, alias: str, config_file: str | None, **values: Any) -> None:
    """Point ALIAS of a model at a version: hone registry alias NAME:VERSION ALIAS."""
    reg = _open(config_file, values)
    info = reg.resolve(ref)
    reg.set_alias(info.name, alias, info.version)
    click.echo(f"{info.name}@{alias} -> {info.version}")


@registry.command("ui")
@click.option("--ui-port", "ui_port", default=5000, show_default=True, help="Port of the MLflow UI on 127.0.0.1.")
@connection_options
def ui_cmd(ui_port: int, config_file: str | None, **values: Any) -> None:
    """Start the MLflow UI on the registry, bound to 127.0.0.1, and print its URL once it answers (Ctrl-C stops
    it)."""
    from hone.registry import ui

    reg = _open(config_file, values)
    argv, url = ui.ui_command(reg, ui_port)
    if not argv:  # an MLflow server: its own UI
        click.echo(f"MLflow UI: {url}")
        return
    click.echo(f"starting the MLflow UI on {url} (it can take a minute) ...", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    code = ui.serve(argv, url, lambda ready: click.echo(f"MLflow UI: {ready}"))
    if code:
        raise HoneError(f"the MLflow UI server stopped with status {code}", where="mlflow server",
                        fix="see its output above")
