"""Training's data path: a source, or a prepared dataset directory, to tokenized, filtered samples.

One path for every caller: source URI -> validated canonical split (:func:`hone.data.stage.split_source`, the
code ``hone data prepare`` / :func:`~hone.data.stage.prepare_dataset` runs) -> token samples -> (the trainer's)
micro-batches. ``cfg.data_path`` is either

- a directory written by ``prepare_dataset`` (:func:`~hone.data.stage.is_prepared_dir`: it holds
  ``dataset_report.json``): its ``train.jsonl`` rows are canonical and valid already, so they are only parsed
  (no second validation, subset or split) and tokenized; or
- any URI :func:`hone.data.sources.open_source` accepts (hub, S3, HTTP(S), PVC, local) in any supported format:
  every row is validated (all problems are reported before anything is tokenized), converted to canonical
  form and subset/split as configured, exactly as ``prepare_dataset`` does, then tokenized.

Both give the same samples for the same settings. Tokenizing masks labels and uses every core.
"""
from __future__ import annotations

import json
import math
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hone.config import DataConfig
from hone.data.parallel import resolve_workers, tokenize_rows
from hone.data.report import DatasetReport
from hone.data.stage import PREPARE_CMD, is_prepared_dir, open_prepared, split_source
from hone.data.tokenize import IGNORE, Tokenized, check_chat_tokenizer
from hone.errors import HoneError
from hone.io import atomic_write_text
from hone.layout import PROCESSED_SAMPLES_FILE, PROCESSED_VALIDATION_FILE
from hone.logs import progress

MAX_ERRORS_SHOWN = 10
PARALLEL_MIN_ROWS = 2000  # below this, forking workers costs more than it saves


# what the fix text of invalid rows offers instead of --skip-invalid (training has no such option)
SKIP_INVALID_HINT = f"; or leave invalid rows out with `{PREPARE_CMD} --skip-invalid` and train on DIR"


@dataclass
class PreparedData:
    samples: list[Tokenized]
    report: DatasetReport
    validation: list[Tokenized] = field(default_factory=list)  # held out for validation loss (validation_split)

    @property
    def lengths(self) -> list[int]:
        return [len(s.input_ids) for s in self.samples]


def hold_out(samples: list[Tokenized], fraction: float, *, seed: int) -> tuple[list[Tokenized], list[Tokenized]]:
    """(train, validation): a seeded random ``fraction`` of the samples (rounded up, as ``datasets``'
    ``train_test_split`` does) held out; both keep the samples' order."""
    if fraction <= 0:
        return samples, []
    n_val = math.ceil(fraction * len(samples))
    if n_val >= len(samples):
        raise HoneError(f"validation_split={fraction} leaves no training sample ({len(samples)} samples)",
                        where="validation_split", fix="lower validation_split or add data")
    held = set(random.Random(seed).sample(range(len(samples)), n_val))
    return ([s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held])


def prepare_data(cfg: DataConfig, tokenizer, output_dir: str | Path | None = None, *, seed: int = 42,
                 num_workers: int | None = None, validation_split: float = 0.0,
                 validation_data_path: str | None = None) -> PreparedData:
    """``cfg.data_path`` -> canonical train rows -> tokenized samples, dropping what cannot be trained; report.

    A prepared directory (see the module docstring) is read as it is: ``subset`` and ``train_split_ratio`` must
    then be their defaults or what its ``dataset_report.json`` says was applied (with the same ``seed``), else
    :class:`HoneError` says to re-prepare (:meth:`hone.data.stage.PreparedDir.check_settings`). A directory
    without ``dataset_report.json`` is a plain data directory (an interrupted prepare is an error:
    :func:`hone.data.stage.is_prepared_dir`).

    ``validation_split`` holds a seeded fraction of the tokenized samples out of training (:func:`hold_out`),
    as Training Hub's backends split their processed data, to measure validation loss; or
    ``validation_data_path`` names other data, read and tokenized with the same settings (every row).

    When ``output_dir`` is given the processed samples (``data.jsonl``) and ``report.json`` (the
    :class:`DatasetReport`, with the sample counts) are written there, and, when the split of a source leaves
    an eval part, ``eval.jsonl`` (canonical rows; a prepared directory has its own); the held-out validation
    samples go to ``validation.jsonl``.
    """
    eval_lines: list[str] = []
    if is_prepared_dir(cfg.data_path):
        prepared = open_prepared(cfg.data_path)
        prepared.check_settings(cfg, seed=seed)
        train: list[tuple[str, Any]] = prepared.train_rows()
        report = prepared.report
        chat = any("messages" in row and row["messages"][0].get("role") != "pretraining" for _, row in train)
    else:
        with tempfile.TemporaryDirectory(prefix="hone-data-") as spool, \
                split_source(cfg, spool, seed=seed, keep_where=True, skip_hint=SKIP_INVALID_HINT) as split:
            train = []
            for target, where, line in split.rows():
                if target == "train":
                    train.append((where, line))  # the JSON line: parsed where it is tokenized
                else:
                    eval_lines.append(line)
            report = split.report(cfg, seed=seed)
            chat = split.scan.chat_rows > 0
    samples = tokenize_samples(train, cfg, tokenizer, report, chat=chat, num_workers=num_workers)
    samples, validation = hold_out(samples, validation_split, seed=seed)
    if validation_data_path is not None:
        other = cfg.model_copy(update={"data_path": validation_data_path, "subset": 0, "train_split_ratio": 1.0})
        validation = prepare_data(other, tokenizer, seed=seed, num_workers=num_workers).samples
    if output_dir is not None:
        write_processed(samples, report, output_dir, eval_rows=eval_lines, validation=validation)
    return PreparedData(samples, report, validation)


def tokenize_samples(train: list[tuple[str, Any]], cfg: DataConfig, tokenizer, report: DatasetReport, *,
                     chat: bool, num_workers: int | None = None) -> list[Tokenized]:
    """Tokenize ``(where, canonical row or its JSON line)`` pairs; drop samples longer than the limit or with no
    trainable token; fill ``report``'s sample facts. Raises :class:`HoneError` when every sample is dropped."""
    if report.format == "processed":
        mode = "processed"
    elif cfg.is_pretraining:
        mode = "pretraining"
    else:
        mode = "messages"
        if chat:
            check_chat_tokenizer(tokenizer)
    wheres = [w for w, _ in train]
    rows = [r for _, r in train]
    workers = num_workers or cfg.data_num_workers or (resolve_workers(None) if len(rows) >= PARALLEL_MIN_ROWS
                                                      else 1)
    tokenized = list(progress(tokenize_rows(rows, tokenizer, unmask_messages=cfg.unmask_messages, workers=workers),
                              desc="tokenizing", total=len(rows)))
    del rows
    if mode == "pretraining":
        stream = [t for tok in tokenized for t in tok.input_ids]
        size = cfg.block_size
        tokenized = [Tokenized(stream[i:i + size], stream[i:i + size]) for i in range(0, len(stream), size)]
        wheres = [f"block {i // size}" for i in range(0, len(stream), size)]

    limit = cfg.block_size if cfg.is_pretraining else cfg.max_seq_len
    report.mode, report.dropped_examples = mode, []
    report.samples = report.dropped_too_long = report.dropped_no_loss_tokens = 0
    report.tokens = report.loss_tokens = report.max_len = 0
    samples = []
    for where, tok in zip(wheres, tokenized):
        if len(tok.input_ids) > limit:
            report.dropped_too_long += 1
            if len(report.dropped_examples) < MAX_ERRORS_SHOWN:
                report.dropped_examples.append(f"{where}: {len(tok.input_ids)} tokens > {limit}")
        elif tok.num_loss_tokens == 0:
            report.dropped_no_loss_tokens += 1
            if len(report.dropped_examples) < MAX_ERRORS_SHOWN:
                report.dropped_examples.append(f"{where}: no trainable token")
        else:
            samples.append(tok)
            report.tokens += len(tok.input_ids)
            report.loss_tokens += tok.num_loss_tokens
            report.max_len = max(report.max_len, len(tok.input_ids))
    report.samples = len(samples)
    if not samples:
        raise HoneError(
            f"every sample was dropped ({report.dropped_too_long} longer than max_seq_len={limit}, "
            f"{report.dropped_no_loss_tokens} with no trainable token)",
            where=report.source,
            fix="raise max_seq_len, check that conversations have assistant turns, or set unmask_messages=True",
        )
    return samples


def _jsonl(samples: list[Tokenized]) -> str:
    return "".join(json.dumps({"input_ids": s.input_ids, "labels": s.labels}, separators=(",", ":")) + "\n"
                   for s in samples)


def write_processed(samples: list[Tokenized], report: DatasetReport, output_dir: str | Path, *,
                    eval_rows: list[str] | None = None, validation: list[Tokenized] | None = None) -> Path:
    """Write ``data.jsonl`` (input_ids, labels: the use_processed_dataset format), ``report.json``, with
    eval rows (canonical JSON lines) ``eval.jsonl``, and with held-out samples ``validation.jsonl``."""
    out = Path(output_dir)
    atomic_write_text(out / PROCESSED_SAMPLES_FILE, _jsonl(samples))
    if validation:
        atomic_write_text(out / PROCESSED_VALIDATION_FILE, _jsonl(validation))
    else:
        (out / PROCESSED_VALIDATION_FILE).unlink(missing_ok=True)  # from an earlier run with a split
    if eval_rows:
        atomic_write_text(out / "eval.jsonl", "".join(eval_rows))
    atomic_write_text(out / "report.json", json.dumps(report.to_json(), indent=2) + "\n")
    return out


__all__ = ["PreparedData", "hold_out", "prepare_data", "tokenize_samples", "write_processed", "IGNORE"]
