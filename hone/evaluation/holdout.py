"""The holdout task: how well a model does on the eval split of its own fine-tuning data.

Two measurements, both with the model's **own** chat template:

- **loss / perplexity** over the assistant tokens, with exactly the training masking
  (:func:`hone.data.tokenize.tokenize_conversation`) and the training loss (packed rows, summed cross-entropy):
  ``perplexity = exp(sum of token losses / number of loss tokens)``, the same number the trainer would report;
- **greedy generation** of the last assistant turn from the conversation before it (``add_generation_prompt``),
  stopped at the end-of-turn token or ``max_new_tokens``, scored with exact match, contains-match and token F1
  (see :mod:`hone.evaluation.scoring`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from hone.data.batching import pack
from hone.data.messages import validate_messages
from hone.data.sources import read_records
from hone.data.tokenize import IGNORE, Tokenized, check_chat_tokenizer, special_token_ids, tokenize_conversation
from hone.errors import HoneError
from hone.evaluation.scoring import score, strip_reasoning
from hone.logs import progress

log = logging.getLogger("hone")

TASK = "holdout"
HIGHER_IS_BETTER = {"loss": False, "perplexity": False, "exact_match": True, "contains": True, "f1": True}
MAX_ERRORS_SHOWN = 10


@dataclass
class HoldoutSample:
    where: str                       # file:line
    messages: list[dict[str, Any]]
    tokens: Tokenized | None = None  # set by prepare()
    prompt_ids: list[int] | None = None
    target: str | None = None        # the last assistant turn's content (None: loss only)


@dataclass
class HoldoutResult:
    metrics: dict[str, float]                       # loss, perplexity, exact_match, contains, f1
    records: list[dict[str, Any]]                   # per sample: prompt, target, prediction, scores
    num_samples: int = 0
    num_generated: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"

    def summary(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "num_samples": self.num_samples, "num_generated": self.num_generated,
                "skipped": self.skipped}


def read_holdout(path: str, *, limit: int | float | None = None, where: str = "eval_data_path") -> list[HoldoutSample]:
    """Read and check the eval split: chat samples (``{"messages": [...]}``; the other conversation layouts the
    data stage reads -- ShareGPT ``conversations``, Alpaca, prompt/completion -- are converted the same way).
    Keeps the first ``limit`` rows (or that fraction of them when ``limit`` < 1)."""
    try:
        records = list(read_records(path))
    except HoneError as err:
        raise HoneError(err.what, where=where if err.where in (None, "data_path") else f"{where}: {err.where}",
                        fix=err.fix) from None
    if not records:
        raise HoneError("the eval data file holds no rows", where=f"{where}: {path}", fix="add chat samples")
    if limit is not None:
        records = records[:int(limit if limit >= 1 else math.ceil(limit * len(records)))]
    convert = _converter([r.row for r in records[:100]], path, where)
    samples, errors = [], []
    for r in records:
        try:
            samples.append(HoldoutSample(r.where, convert(r.row)["messages"]))
        except _RowProblem as err:
            errors.append(f"{r.where}: {err}")
    if errors:
        shown = "\n    ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n    ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise HoneError(f"{len(errors)} eval row(s) are not valid chat samples:\n    {shown}{more}",
                        where=f"{where}: {path}", fix=_FORMAT_FIX)
    return samples


_FORMAT_FIX = ('write one {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]} '
               "object per line (the format training reads; the eval split written by hone's data stage already is)")


class _RowProblem(Exception):
    pass


def _converter(rows: list[Any], path: str, where: str):
    """row -> {"messages": [...]} for the layout the rows use; raises HoneError for layouts without turns."""
    try:
        from hone.data.formats import FormatSpec, detect_format
        from hone.data.problems import RowError
    except ImportError:  # a data layer without format conversion: chat rows only
        def plain(row: Any) -> dict:
            problem = validate_messages(row)
            if problem:
                raise _RowProblem(problem)
            return row
        return plain

    fmt = detect_format(rows, ["text"])
    if fmt in (None, "text", "processed"):
        keys = sorted({str(k) for r in rows if isinstance(r, dict) for k in r})[:8]
        found = {None: f"rows with keys {keys}" if keys else "rows that are not JSON objects",
                 "text": "plain-text documents", "processed": "pre-tokenized rows (input_ids/labels)"}[fmt]
        raise HoneError(f"the eval data must be conversations with assistant turns to score, but it holds {found}",
                        where=f"{where}: {path}", fix=_FORMAT_FIX)
    spec = FormatSpec(fmt)

    def convert(row: Any) -> dict:
        try:
            return spec.convert(row)
        except RowError as err:
            raise _RowProblem(err.message) from None
    return convert


def prepare(samples: list[HoldoutSample], tokenizer, *, max_seq_len: int | None) -> tuple[list[HoldoutSample], list[str]]:
    """Tokenize with the training masking and render each generation prompt; returns (kept, skipped reasons)."""
    if any(s.messages[0]["role"] != "pretraining" for s in samples):
        check_chat_tokenizer(tokenizer, where="model_path (its tokenizer)")
    special = special_token_ids(tokenizer)
    kept, skipped = [], []
    for s in samples:
        tok = tokenize_conversation(tokenizer, s.messages, special_ids=special)
        if max_seq_len is not None and len(tok.input_ids) > max_seq_len:
            skipped.append(f"{s.where}: {len(tok.input_ids)} tokens > max_seq_len {max_seq_len}")
            continue
        if tok.num_loss_tokens == 0:
            skipped.append(f"{s.where}: no assistant token to score")
            continue
        s.tokens = tok
        last = max((i for i, m in enumerate(s.messages) if m["role"] == "assistant"), default=None)
        if last is not None and isinstance(s.messages[last].get("content"), str) and s.messages[last]["content"]:
            prompt = tokenizer.apply_chat_template(_plain(s.messages[:last]), tokenize=False, add_generation_prompt=True)
            s.prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            s.target = s.messages[last]["content"]
        kept.append(s)
    return kept, skipped


def _plain(messages: list[dict]) -> list[dict]:
    return [m if m.get("content") is not None else {**m, "content": ""} for m in messages]


def stop_token_ids(tokenizer, model, samples: list[HoldoutSample]) -> list[int]:
    """End-of-turn tokens: the tokenizer's EOS, the model's generation EOS, and the special token the chat
    template closes assistant turns with (the last trained token of each sample, when it is special)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(int(i) for i in ([gen_eos] if isinstance(gen_eos, int) else (gen_eos or [])))
    special = special_token_ids(tokenizer)
    for s in samples:
        trained = [t for t in s.tokens.labels if t != IGNORE] if s.tokens else []
        if trained and trained[-1] in special:
            ids.add(trained[-1])
    return sorted(ids)


@torch.no_grad()
def token_losses(model, samples: list[Tokenized], device: torch.device, bar: Any = None) -> list[tuple[float, int]]:
    """(summed loss, loss tokens) per sample, computed by the training loss itself
    (:func:`hone.training.loss.forward_loss_sum` on a one-sample packed row: float32 cross-entropy over the
    trained tokens, the next-token shift inside the sample). ``bar``: a progress bar advanced per sample."""
    from hone.training.loss import forward_loss_sum

    out = []
    for s in samples:
        row = pack([s])
        positions = (row.targets.reshape(-1) != IGNORE).nonzero().squeeze(1)
        batch = row.to(device)
        batch.loss_positions = positions.to(device)  # host-computed: no device sync inside the loss
        out.append((float(forward_loss_sum(model, batch)), int(positions.numel())))
        if bar is not None:
            bar.update(1)
    return out


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, stop_ids: list[int],
             batch_size: int, device: torch.device, bar: Any = None) -> list[str]:
    """Greedy continuations of token prompts (left-padded batches of similar length; deterministic).
    ``bar``: a progress bar advanced per prompt."""
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids[0] if stop_ids else 0)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids or None,
                              pad_token_id=pad, use_cache=True)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    texts: list[str] = [""] * len(prompts)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = prompts[i]
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            for k, t in enumerate(new):
                if t in stop_ids:
                    new = new[:k]
                    break
            texts[i] = tokenizer.decode(new, skip_special_tokens=True)
        if bar is not None:
            bar.update(len(idx))
    return texts


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def run_holdout(model, tokenizer, samples: list[HoldoutSample], *, device: torch.device, max_new_tokens: int = 64,
                batch_size: int = 8, max_seq_len: int | None = None, generate_answers: bool = True,
                desc: str = "holdout") -> HoldoutResult:
    """Loss, perplexity and generation scores of ``model`` on ``samples`` (from :func:`read_holdout`);
    ``desc`` names the progress bar (drawn only on a terminal: :func:`hone.logs.progress`)."""
    samples = [HoldoutSample(s.where, s.messages) for s in samples]  # prepare() fills per-tokenizer fields
    if max_seq_len is None:
        max_seq_len = getattr(model.config, "max_position_embeddings", None)
    kept, skipped = prepare(samples, tokenizer, max_seq_len=max_seq_len)
    for reason in skipped[:MAX_ERRORS_SHOWN]:
        log.warning("holdout: skipped %s", reason)
    if not kept:
        raise HoneError(f"no eval sample can be scored ({len(skipped)} skipped: {skipped[0] if skipped else ''})",
                        where="eval_data_path",
                        fix="give conversations with assistant turns that fit the model's context (max_seq_len)")
    was_training = model.training
    model.eval()
    gen = [s for s in kept if s.target is not None] if generate_answers else []
    # one bar: a loss per sample, then a generation per sample with an answer
    bar = progress(desc=desc, total=len(kept) + len(gen), unit="sample")
    try:
        losses = token_losses(model, [s.tokens for s in kept], device, bar=bar)
        predictions = generate(model, tokenizer, [s.prompt_ids for s in gen], max_new_tokens=max_new_tokens,
                               stop_ids=stop_token_ids(tokenizer, model, kept), batch_size=batch_size,
                               device=device, bar=bar) if gen else []
    finally:
        bar.close()
        model.train(was_training)

    total_loss, total_tokens = sum(loss for loss, _ in losses), sum(n for _, n in losses)
    mean_loss = total_loss / total_tokens
    metrics = {"loss": mean_loss, "perplexity": _exp(mean_loss)}
    by_sample = {id(s): pred for s, pred in zip(gen, predictions)}
    records, sums = [], {"exact_match": 0.0, "contains": 0.0, "f1": 0.0}
    for s, (loss, n) in zip(kept, losses):
        rec: dict[str, Any] = {"task": TASK, "where": s.where, "loss": loss / n, "perplexity": _exp(loss / n),
                               "loss_tokens": n}
        if id(s) in by_sample:
            raw = by_sample[id(s)]
            answer = strip_reasoning(raw).strip()
            scores = score(answer, s.target)
            for k, v in scores.items():
                sums[k] += v
            rec.update(prompt=tokenizer.decode(s.prompt_ids), target=s.target, prediction=answer, **scores)
        records.append(rec)
    if gen:
        metrics.update({k: v / len(gen) for k, v in sums.items()})
    return HoldoutResult(metrics, records, num_samples=len(kept), num_generated=len(gen), skipped=skipped)
