"""`hone data check|prepare`: the dataset stage from the command line (a thin skin over hone.data.stage)."""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import click

from hone.errors import HoneError

FORMAT_CHOICES = ["auto", "messages", "conversations", "alpaca", "prompt_completion", "text", "processed"]


def _source_options(fn: Callable) -> Callable:
    """Options shared by check and prepare (each maps onto a DataConfig field of the same name)."""
    options = [
        click.argument("uri"),
        click.option("--format", "data_format", type=click.Choice(FORMAT_CHOICES), default=None,
                     help="Row layout (default: detected)."),
        click.option("--split", default=None, help="Split of a hub or save_to_disk dataset (default: train, "
                     "train_sft, train_gen, training, else the first)."),
        click.option("--document-column-name", default=None, help="Column holding plain text (text format)."),
        click.option("--is-pretraining", is_flag=True, default=None,
                     help="Rows are documents (text format, document column)."),
        click.option("--block-size", type=int, default=None,
                     help="Tokens per block of the concatenated documents (required with --is-pretraining)."),
        click.option("--use-processed-dataset", is_flag=True, default=None,
                     help="Rows hold input_ids and labels."),
        click.option("--unmask-messages", is_flag=True, default=None,
                     help="Conversations without an assistant turn are valid (every non-system role trains)."),
        click.option("--max-errors", type=int, default=None, help="Invalid rows listed in full  [default: 20]"),
        click.option("--tokenizer", default=None, help="Model (directory or hub id) whose tokenizer measures "
                     "token lengths."),
        click.option("--max-seq-len", type=int, default=None, help="Rows longer than this are counted "
                     "(they are dropped in training)  [default: 8192]"),
        click.option("--num-workers", "data_num_workers", type=int, default=None,
                     help="Tokenizing processes (default: every core)."),
        click.option("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default $AWS_ENDPOINT_URL)."),
        click.option("--s3-region", default=None, help="S3 region (default $AWS_REGION)."),
        click.option("--pvc-root", default=None, help="Mount root of pvc:// paths (default $HONE_PVC_ROOT or "
                     "/workspace)."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _config(uri: str, values: dict[str, Any]):
    from pydantic import ValidationError

    from hone.config import DataConfig

    params = {k: v for k, v in values.items() if v is not None and k in DataConfig.model_fields}
    params["data_path"] = uri
    try:
        return DataConfig(**params)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][-1]) if first["loc"] else "?"
        raise HoneError(f"invalid value for {name!r}: {first.get('input')!r} ({first['msg']})",
                        where=f"option --{name.replace('_', '-')}", fix="see `hone data --help`") from None


def _tokenizer(name: str | None):
    if not name:
        return None
    from hone.models.load import load_tokenizer

    return load_tokenizer(name)


@click.group("data")
def data() -> None:
    """Check and prepare datasets: any source (hf://, s3://, https://, pvc://, files), any format.

    \b
      hone data check s3://bucket/chat.jsonl --tokenizer Qwen/Qwen2.5-1.5B-Instruct
      hone data prepare hf://org/name --output data/ --train-split-ratio 0.9 --subset 2000
    """


@data.command("check")
@_source_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(uri: str, as_json: bool, tokenizer: str | None, **values: Any) -> None:
    """Validate every row of URI and print a report (exit 0 when valid, 2 when not); writes nothing."""
    from hone.data.stage import check_dataset

    cfg = _config(uri, values)
    tok = _tokenizer(tokenizer)
    start = time.perf_counter()
    report = check_dataset(cfg, tok, tokenizer_name=tokenizer)
    elapsed = time.perf_counter() - start
    click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False) if as_json else report.render(
        elapsed_s=elapsed))
    r = report.rows
    if not r["read"]:
        raise HoneError("the data holds no rows", where=report.source,
                        fix="check the source: an empty file, or a directory/prefix without data rows?")
    if not report.valid:
        raise HoneError(f"{r['invalid']:,} of {r['read']:,} rows are invalid", where=report.source,
                        fix="fix the rows listed above (or leave them out with `hone data prepare --skip-invalid`)")


@data.command("prepare")
@_source_options
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Directory for train.jsonl, "
              "eval.jsonl and dataset_report.json.")
@click.option("--train-split-ratio", type=float, default=0.9, show_default=True,
              help="Fraction of rows for train; the rest is eval (>= 1.0: everything in train, empty eval).")
@click.option("--subset", type=int, default=0, show_default=True, help="Seeded random sample of N rows (0 = all).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the subset and the split.")
@click.option("--skip-invalid", is_flag=True, help="Leave invalid rows out (counted in the report) instead of "
              "failing.")
def prepare(uri: str, output: str, seed: int, skip_invalid: bool, tokenizer: str | None, **values: Any) -> None:
    """Validate and convert URI to canonical train.jsonl / eval.jsonl plus dataset_report.json in --output.

    With --tokenizer the train rows are also tokenized into token samples (OUTPUT/samples/, memory-mapped by
    training): training on OUTPUT with the same tokenizer and settings reuses them instead of tokenizing again.
    """
    from pathlib import Path

    from hone.data.prepare import token_samples
    from hone.data.stage import prepare_dataset
    from hone.layout import TOKEN_SAMPLES_DIR

    cfg = _config(uri, values)
    tok = _tokenizer(tokenizer)
    start = time.perf_counter()
    report = prepare_dataset(cfg, output, tok, seed=seed, skip_invalid=skip_invalid, tokenizer_name=tokenizer)
    click.echo(report.render(elapsed_s=time.perf_counter() - start))
    click.echo(f"report:   {output.rstrip('/')}/dataset_report.json")
    if tok is not None:
        prepared = cfg.model_copy(update={"data_path": output, "subset": 0, "train_split_ratio": 1.0})
        samples, srep = token_samples(prepared, tok, seed=seed, samples_dir=Path(output) / TOKEN_SAMPLES_DIR)
        how = "reused" if srep.reused else f"{srep.rows_per_s or 0:,.0f} rows/s"
        click.echo(f"samples:  {srep.summary()}")
        click.echo(f"on disk:  {samples.path} ({how}); training on {output} with this tokenizer reuses them")
