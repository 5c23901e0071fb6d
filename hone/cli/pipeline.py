"""`hone pipeline`: run the four stages locally, list the parameters, compile the KFP pipelines, rebuild a report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hone.config import ALGORITHMS
from hone.errors import HoneError
from hone.pipeline.params import FLAVOURS
from hone.layout import STAGES, PipelineLayout


@click.group()
def pipeline() -> None:
    """The four-stage pipeline: dataset -> training -> evaluation -> model registry."""


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise HoneError(f"--param {item!r} is not NAME=VALUE", where="--param",
                            fix="write e.g. --param phase_02_train_man_epochs=3")
        out[name.strip()] = value
    return out


@pipeline.command("run")
@click.option("--data", help="Dataset URI (hf://, s3://, https://, pvc:// or a path): phase_01_dataset_man_data_uri.")
@click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default=None,
              help="Fine-tuning algorithm (default sft, or `algorithm:` in --config).")
@click.option("--model", help="Base model (hub id, directory or oci://): phase_02_train_man_model "
                              "(default Qwen/Qwen2.5-1.5B-Instruct).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file of pipeline parameters (`hone pipeline params` lists them); flags override it.")
@click.option("-p", "--param", "param_items", multiple=True, metavar="NAME=VALUE",
              help="Set one pipeline parameter (repeatable).")
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Run directory (default <hone home>/pipelines/<algorithm>-<parameters hash>).")
@click.option("--force", is_flag=True, help="Rerun every stage, even those whose inputs did not change.")
@click.option("--force-from", type=click.Choice(list(STAGES)),
              help="Rerun this stage and the ones after it.")
@click.option("--registry-home", help="hone home of the embedded MLflow registry the model is registered in "
                                      "(default $HONE_HOME, else ./hone-runs). A phase_04_registry_man_address "
                                      "registers in that Kubeflow Model Registry instead.")
@click.option("--registry-uri", help="Register in this MLflow store (sqlite:///..., http://...) instead.")
@click.option("--no-register", is_flag=True, help="Skip the registration stage (its result is SKIPPED).")
def run_command(data: str | None, algorithm: str | None, model: str | None, config_file: str | None,
                param_items: tuple[str, ...], run_dir: str | None, force: bool, force_from: str | None,
                registry_home: str | None, registry_uri: str | None, no_register: bool) -> None:
    """Run the pipeline on this machine, with caching: rerunning skips the stages already done.

    \b
    Only the dataset is required:
      hone tiny-model --output tiny/
      hone pipeline run --data examples/data/chat.jsonl --model tiny/ --algorithm osft
    The run directory holds each stage's outputs, manifest.json and report.html. The model is registered
    in the embedded MLflow registry under the hone home (`hone registry list`) unless --no-register.
    """
    from hone.config import RegistryConfig, load_yaml_config
    from hone.pipeline.runner import run_pipeline

    given: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if config_file:
        for key, value in load_yaml_config(config_file).items():
            if key == "algorithm":
                algorithm = algorithm or value
                continue
            given[key] = value
            origins[key] = f"config file {config_file}"
    for key, value in _pairs(param_items).items():
        given[key] = value
        origins[key] = f"--param {key}"
    registry: Any = None  # the runner's default: the embedded MLflow registry under the hone home
    if no_register:
        if registry_home or registry_uri:
            raise HoneError("--no-register contradicts --registry-home/--registry-uri", where="--no-register",
                            fix="pass either --no-register or a registry")
        registry = RegistryConfig(registry_backend="none")
    elif registry_home or registry_uri:
        registry = RegistryConfig(registry_backend="mlflow", registry_home=registry_home,
                                  registry_tracking_uri=registry_uri)
    result = run_pipeline(data, algorithm=algorithm or "sft", model=model, params=given, run_dir=run_dir,
                          force=force_from or force, registry=registry, origins=origins,
                          progress=None)
    click.echo("")
    click.echo(summary_table(result))
    click.echo(f"\nreport: {result.report}")


def summary_table(result: Any) -> str:
    """The printed end-of-run summary: one line per stage, then the headline figures."""
    from hone.pipeline.runner import headline

    lines = [f"{'stage':<13} {'status':<18} {'seconds':>8}  result"]
    for stage, info in result.stages.items():
        status = info.get("status", "") + (" (cached)" if info.get("cached") else "")
        lines.append(f"{stage:<13} {status:<18} {info.get('duration_s', 0):>8.1f}  "
                     f"{headline(stage, info.get('summary', {}))}")
    ev = result.results.get("evaluation")
    if ev and ev.summary.get("base_metrics") is not None:
        from hone.evaluation.compare import compare, read_directions, terminal_table

        directions = read_directions(result.stage_dir("evaluation"))
        rows = compare(ev.summary["base_metrics"], ev.summary["metrics"], directions)
        lines += ["", terminal_table(rows, forgetting=ev.summary.get("forgetting", []), indent="")]
    return "\n".join(lines)


@pipeline.command("params")
@click.option("--flavor", "flavour", default="sft", show_default=True, type=click.Choice(list(FLAVOURS)),
              help="Pipeline flavour.")
@click.option("--markdown", is_flag=True, help="Every flavour's parameters as one Markdown table (with the "
                                               "training option each one sets).")
def params_command(flavour: str, markdown: bool) -> None:
    """List a flavour's parameters with their defaults."""
    from hone.pipeline.params import flavour_algorithm, markdown_table, params_for

    if markdown:
        click.echo(markdown_table())
        return
    algorithm = flavour_algorithm(flavour)
    for p in params_for(flavour):
        value = p.default_for(algorithm)
        default = "(required)" if value is None else repr(value)
        click.echo(f"{p.name:<42} {p.type.__name__:<6} {default:<24} {p.help}")


@pipeline.command("compile")
@click.option("--flavor", "flavour", required=True,
              type=click.Choice(list(FLAVOURS)),
              help="Pipeline flavour.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="YAML file to write.")
@click.option("--image", help="Container image with hone installed (default $HONE_IMAGE, else hone's published one).")
@click.option("--storage-class", default="nfs-csi", show_default=True, help="Storage class of the workspace PVC (RWX).")
@click.option("--pvc-size", default="50Gi", show_default=True, help="Size of the workspace PVC.")
@click.option("--access-mode", "access_modes", multiple=True, default=("ReadWriteMany",), show_default=True,
              help="Access mode(s) of the workspace PVC.")
@click.option("--enable-caching", is_flag=True, help="Let KFP reuse task results (off by default: data behind an "
                                                     "hf:// or s3:// URI can change).")
@click.option("--local", "local", is_flag=True, help="Leave out cluster-only pieces (PVC, secrets, node selectors) "
                                                     "for kfp.local runs.")
def compile_command(flavour: str, output: str, image: str | None, storage_class: str, pvc_size: str,
                    access_modes: tuple[str, ...], enable_caching: bool, local: bool) -> None:
    """Compile a KFP pipeline to YAML for OpenShift AI (import it under Pipelines > Import pipeline)."""
    from hone.pipeline.kfp import compile_pipeline

    path = compile_pipeline(flavour, output, image=image, storage_class=storage_class, pvc_size=pvc_size,
                            access_modes=access_modes, enable_caching=enable_caching, local=local)
    click.echo(f"{flavour} pipeline written to {path}")


@pipeline.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
def report_command(run_dir: str) -> None:
    """Rebuild report.html of a run directory from its manifest."""
    from hone.pipeline.report import write_report

    manifest = PipelineLayout(Path(run_dir)).manifest
    if not manifest.is_file():
        raise HoneError(f"{run_dir} holds no pipeline run (no {manifest.name})", where="RUN_DIR",
                        fix="pass the --run-dir of a `hone pipeline run`")
    click.echo(f"report: {write_report(run_dir)}")
