"""`hone eval`: evaluate a model on lm-eval tasks and the holdout split, and compare it with its base."""
from __future__ import annotations

import json
from typing import Any

import click

from hone.config import EvalConfig


def _help(name: str) -> str:
    info = EvalConfig.model_fields[name]
    default = None if info.is_required() or info.default_factory else info.default
    return (info.description or "") + ("" if default in (None, False) else f"  [default: {default}]")


@click.command("eval", context_settings={"max_content_width": 110})
@click.option("--model", "model_path", metavar="DIR|ID", help=_help("model_path"))
@click.option("--base", "base_model_path", metavar="DIR|ID", help=_help("base_model_path"))
@click.option("--tasks", metavar="T1,T2", multiple=True, help=_help("tasks"))
@click.option("--include-path", metavar="DIR", multiple=True, help=_help("include_path") + "  (repeat for several)")
@click.option("--eval-data", "eval_data_path", metavar="FILE", help=_help("eval_data_path"))
@click.option("--limit", metavar="N", help=_help("limit"))
@click.option("--batch-size", metavar="auto|N", help=_help("batch_size"))
@click.option("--backend", type=click.Choice(["hf", "vllm"]), help=_help("backend"))
@click.option("--output", "output_dir", metavar="DIR", help=_help("output_dir"))
@click.option("--device", help=_help("device"))
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help=_help("dtype"))
@click.option("--max-new-tokens", type=int, help=_help("max_new_tokens"))
@click.option("--max-seq-len", type=int, help=_help("max_seq_len"))
@click.option("--num-fewshot", type=int, help=_help("num_fewshot"))
@click.option("--apply-chat-template/--no-apply-chat-template", default=None, help=_help("apply_chat_template"))
@click.option("--log-samples/--no-log-samples", default=None, help=_help("log_samples"))
@click.option("--forgetting-threshold", type=float, help=_help("forgetting_threshold"))
@click.option("--trust-remote-code/--no-trust-remote-code", default=None, help=_help("trust_remote_code"))
@click.option("--overwrite/--no-overwrite", default=None, help=_help("overwrite"))
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of parameters (the names "
              "of hone.evaluate's keyword arguments); flags override it.")
@click.option("--print-config", is_flag=True, help="Print the resolved parameters as JSON and exit.")
def eval_command(config_file: str | None, print_config: bool, **values: Any) -> None:
    """Evaluate a model: lm-eval tasks, the holdout split, and (with --base) what changed since the base.

    \b
    Examples (offline, with the tasks and eval split shipped in examples/eval):
      hone eval --model run/hf_format/final --include-path examples/eval/tasks --output run/eval
      hone eval --model run/ --base tiny/ --include-path examples/eval/tasks \\
                --eval-data examples/eval/holdout.jsonl --output run/eval
    """
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None and v != ()}
    cfg = EvalConfig.from_sources(config_file, given)
    if print_config:
        click.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return
    from hone.evaluation.run import run_evaluation

    result = run_evaluation(cfg)
    click.echo(f"\nevaluated in {result.elapsed_s:.1f}s")
    from hone.evaluation.compare import read_directions, terminal_table, values_table

    if result.comparison is None:
        click.echo(values_table(result.metrics, read_directions(result.output_dir)))
    else:
        click.echo(terminal_table(result.comparison))
        if result.forgetting:
            click.echo(f"\n{len(result.forgetting)} metric(s) dropped by more than {cfg.forgetting_threshold:.0%}: "
                       + ", ".join(result.forgetting))
        else:
            click.echo(f"\nno metric dropped by more than {cfg.forgetting_threshold:.0%}")
    click.echo(f"  results: {result.output_dir}")
    for name in ("metrics.json", "comparison.md", "comparison.png", "samples.jsonl"):
        if name in result.files:
            click.echo(f"    {name}")
