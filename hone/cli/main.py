"""The `hone` command. A thin skin: parse flags, call the library, print where things are."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from hone.version import __version__
from hone.config import ALGORITHMS
from hone.errors import HoneError
from hone.layout import TrainingLayout
from hone.cli.options import given, parameter_options


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="hone")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings, errors and results: no progress bars, no "
              "INFO lines.")
@click.option("--verbose", "-v", is_flag=True, help="Also the raw output of the libraries hone uses "
              "(transformers, lm-eval, MLflow, datasets): their INFO lines, warnings and progress bars.")
def cli(quiet: bool = False, verbose: bool = False) -> None:
    """hone: fine-tune language models with SFT, OSFT and LoRA.

    \b
    Quick start (offline, on CPU, in the repository's directory: examples/ is shipped with it):
      hone tiny-model --output tiny/            # a small model to experiment with
      hone train sft --model tiny/ --data examples/data/chat.jsonl --output run/ --num-epochs 3
      hone eval --model run/ --base tiny/ --eval-data examples/eval/holdout.jsonl --output run/eval
      hone pipeline run --data examples/data/chat.jsonl --model tiny/ -p 'phase_03_eval_man_tasks=[]'
      hone registry list                        # the model the pipeline registered
    """
    from hone.logs import configure, is_main_rank

    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    configure("quiet" if quiet else "verbose" if verbose else None)  # exported to the processes hone starts
    if not is_main_rank():  # under torchrun every rank runs this command: rank 0 prints the results
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


@cli.group()
def train() -> None:
    """Fine-tune a model (one sub-command per algorithm)."""


def _train_command(algorithm: str, summary: str):
    @train.command(name=algorithm, context_settings={"max_content_width": 110}, help=summary + """

    Every parameter of the Python API is a flag (--learning-rate for learning_rate).
    --config FILE reads a YAML file of the same names; flags override it.""")
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of parameters.")
    @click.option("--print-config", is_flag=True, help="Print the resolved parameters as JSON and exit.")
    @parameter_options(algorithm)
    def command(config_file: str | None, print_config: bool, **values: Any) -> None:
        from hone.api import run
        from hone.config import RunConfig

        cfg = RunConfig.from_sources(algorithm, config_file, given(values, algorithm))
        if print_config:
            click.echo(json.dumps(cfg.to_flat(), indent=2))
            return
        result = run(cfg)
        if result.status == "preempted":
            click.echo(f"\nstopped on SIGTERM after step {result.steps}: full state saved under "
                       f"{TrainingLayout(result.output_dir).checkpoints}; rerun with --resume-from auto to continue")
            return
        click.echo(f"\ntrained {result.steps} steps in {result.elapsed_s:.1f}s: loss {result.first_loss:.4f} -> "
                   f"{result.final_loss:.4f}")
        click.echo(f"  data:    {result.data_report.summary()}")
        if result.final_model_dir:
            click.echo(f"  model:   {result.final_model_dir}")
        click.echo(f"  metrics: {result.metrics_path}")
        click.echo(f"  chart:   {result.loss_chart_png}  ({result.loss_chart_html.name})")

    return command


for _spec in ALGORITHMS.values():
    _train_command(_spec.name, _spec.summary)


@cli.command("tiny-model")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Directory to write the model to.")
@click.option("--layers", default=2, show_default=True, help="Transformer blocks.")
@click.option("--hidden", default=64, show_default=True, help="Hidden size.")
@click.option("--heads", default=4, show_default=True, help="Attention heads.")
@click.option("--vocab-size", default=512, show_default=True, help="BPE vocabulary size (upper bound).")
@click.option("--seed", default=0, show_default=True, help="Seed for weights (the tokenizer is deterministic).")
@click.option("--corpus", type=click.Path(dir_okay=False), help="Text file to train the tokenizer on "
              "(default: the bundled corpus).")
@click.option("--pretrain-steps", default=0, show_default=True, help="Language-modelling steps on the corpus.")
def tiny_model(output: str, layers: int, hidden: int, heads: int, vocab_size: int, seed: int, corpus: str | None,
               pretrain_steps: int) -> None:
    """Build a tiny Qwen2-architecture model and tokenizer offline (for tests, demos and experiments)."""
    from hone.models.tiny import make_tiny_model

    path = make_tiny_model(output, layers=layers, hidden=hidden, heads=heads, vocab_size=vocab_size, seed=seed,
                           corpus=corpus, pretrain_steps=pretrain_steps)
    click.echo(f"tiny model written to {path}")


# Other command groups, one import + add_command line each (keep this block together).
from hone.cli.data import data as data_group  # noqa: E402
cli.add_command(data_group)
from hone.cli.kube import kube  # noqa: E402
cli.add_command(kube)
from hone.cli.registry import registry  # noqa: E402
cli.add_command(registry)
from hone.cli.eval import eval_command  # noqa: E402
cli.add_command(eval_command)
from hone.cli.pipeline import pipeline  # noqa: E402
cli.add_command(pipeline)
from hone.cli.chat import chat, generate  # noqa: E402
cli.add_command(chat); cli.add_command(generate)  # noqa: E702


def _not_printed_yet(record: logging.LogRecord) -> bool:
    """False for a record a library's own handler has printed already (huggingface_hub, datasets... add one to
    their logger and still propagate to the root): without this each of their lines, e.g. the hub's
    "Retrying in 1s [Retry 1/5]", is printed twice."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None and logger is not logging.root:
        if logger.handlers:
            return False
        if not logger.propagate:
            break
        logger = logger.parent
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point: HoneError -> message on stderr, exit 2, no traceback."""
    logging.basicConfig(level=logging.INFO, format="hone: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if _not_printed_yet not in handler.filters:
            handler.addFilter(_not_printed_yet)
    try:
        cli.main(args=argv, prog_name="hone", standalone_mode=False)
    except HoneError as err:
        from hone.secrets import scrub_text

        click.echo(f"error: {scrub_text(str(err), assignments=False)}", err=True)  # a last safety net
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
