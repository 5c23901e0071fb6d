#!/usr/bin/env python
"""Continual learning, offline: how much of an old task each method keeps while it learns a new one.

What runs
    * A tiny Qwen2 model (``hone.models.tiny.make_tiny_model``: BPE tokenizer from the bundled corpus, 2 blocks,
      hidden 128, random weights) is first taught task A with SFT:
      task A = ``--facts`` made-up words, each with a 3-digit code ("what is the code of kolabi" ->
      "the code of kolabi is 417").
    * From that model, each method learns task B on the same data, batch and epochs:
      ``--task-b codes`` (default): as many other made-up words with their codes, in task A's exact form (new facts
      that compete with the old ones for the same weights); ``--task-b colours``: other words with a colour ("what
      colour is the zumeta" -> "the zumeta is purple"), a different answer form.
      Methods: SFT, OSFT at each ``--ratios`` value (u = 0.1, 0.25, 0.5; default targets, so embeddings, norms,
      lm_head and biases train freely), OSFT with every 2-D weight as a target (``--all-matrices``: embeddings and
      lm_head constrained too), and LoRA (``hone.lora_sft``'s hooks, r = 16, alpha 32, with its own learning rate).
    * After every epoch both tasks are scored in memory (the trainer's epoch-checkpoint hook is used for that, so
      nothing is written): a fact counts as known when the model's greedy next-token choice is right at every
      answer token (teacher-forced exact match).

What is reported
    * At matched new-task gain: the first epoch at which task-B accuracy reaches 50% and ``--target`` (90%), with
      task-A accuracy there (and as a share of task-A accuracy before task B: retention);
    * task-B and task-A accuracy after the ``--epochs`` budget. ``curves.json`` in the work directory has every epoch.

Usage
    .venv/bin/python bench/continual.py                       # ~4 min on 2 CPU cores
    .venv/bin/python bench/continual.py --task-b colours      # the other task B
    .venv/bin/python bench/continual.py --no-record           # do not record in bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _results import cpu_model, git_commit, insert_section  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SYLLABLES = ["ka", "lo", "mi", "zu", "te", "ra", "no", "bi", "sa", "ve", "du", "po", "ri", "ga", "fe", "ju", "xo",
             "ne", "ta", "wo"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "brown", "pink", "grey", "gold"]


# -- the two tasks ----------------------------------------------------------------------------------------------

def made_up_words(n: int, rng: random.Random, taken: set[str]) -> list[str]:
    words = []
    while len(words) < n:
        w = "".join(rng.choice(SYLLABLES) for _ in range(3))
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def tasks(n: int, seed: int, same_form: bool = False) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    taken: set[str] = set()
    a_words, b_words = made_up_words(n, rng, taken), made_up_words(n, rng, taken)

    def chat(q, a):
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    task_a = [chat(f"what is the code of {w}", f"the code of {w} is {rng.randrange(100, 1000)}") for w in a_words]
    if same_form:
        task_b = [chat(f"what is the code of {w}", f"the code of {w} is {rng.randrange(100, 1000)}") for w in b_words]
    else:
        task_b = [chat(f"what colour is the {w}", f"the {w} is {rng.choice(COLOURS)}") for w in b_words]
    return task_a, task_b


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- scoring ----------------------------------------------------------------------------------------------------

class Scorer:
    """Teacher-forced exact match of every answer token, for one task's rows."""

    def __init__(self, tokenizer, rows: list[dict]):
        from hone.data.tokenize import special_token_ids, tokenize_conversation

        special = special_token_ids(tokenizer)
        self.samples = [tokenize_conversation(tokenizer, r["messages"], special_ids=special) for r in rows]

    def __call__(self, model) -> float:
        import torch

        from hone.data.batching import pack
        from hone.data.tokenize import IGNORE

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                batch = pack(self.samples).to(next(model.parameters()).device)
                logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
        finally:
            model.train(was_training)
        pred, tgt = logits.argmax(-1).cpu(), batch.targets[0].cpu()
        known, start = 0, 0
        for s in self.samples:
            end = start + len(s.input_ids)
            mask = tgt[start:end] != IGNORE
            known += bool((pred[start:end][mask] == tgt[start:end][mask]).all())
            start = end
        return known / len(self.samples)


def scoring_hooks(base_cls, scorers: dict, log: list, *args):
    """``base_cls`` hooks whose epoch checkpoint scores the tasks in memory instead of writing files."""

    class Scoring(base_cls):
        def save(self, model, tokenizer, hf_root, name, **kwargs):
            log.append({"epoch": int(name.split("_")[-1]), **{k: f(model) for k, f in scorers.items()}})
            return hf_root / name

    return Scoring(*args)


# -- the experiment ---------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--facts", type=int, default=48, help="facts per task")
    p.add_argument("--epochs", type=int, default=30, help="epochs on task B (the budget)")
    p.add_argument("--epochs-a", type=int, default=60, help="epochs of SFT on task A")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate on task B (SFT, OSFT)")
    p.add_argument("--lr-a", type=float, default=3e-3, help="learning rate on task A")
    p.add_argument("--lora-lr", type=float, default=3e-3, help="learning rate of LoRA on task B")
    p.add_argument("--batch", type=int, default=8, help="samples per optimizer step")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.25, 0.5], help="OSFT unfreeze_rank_ratio values")
    p.add_argument("--target", type=float, default=0.9, help="task-B accuracy that counts as learned")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the tiny model's matrices are too small "
                   "for more to help, and on a shared machine they wait on each other)")
    p.add_argument("--no-lora", action="store_true", help="skip LoRA")
    p.add_argument("--task-b", choices=["codes", "colours"], default="codes",
                   help="task B: word -> colour facts, or more word -> code facts in task A's exact form")
    p.add_argument("--all-matrices", type=float, nargs="*", default=[0.25],
                   help="also run OSFT at these u with every 2-D weight as a target (embeddings and lm_head too)")
    p.add_argument("--workdir", default="/tmp/hone-bench/continual")
    p.add_argument("--no-record", action="store_true", help=f"do not record in {RESULTS.relative_to(ROOT)}")
    args = p.parse_args()

    import torch
    from transformers import AutoTokenizer

    import hone
    from hone.algorithms.osft import OSFTHooks
    from hone.algorithms.sft import SFTHooks
    from hone.config import RunConfig
    from hone.models.load import load_model
    from hone.models.tiny import make_tiny_model
    from hone.training.run import run_training

    torch.set_num_threads(args.threads)
    started = time.time()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    task_a, task_b = tasks(args.facts, args.seed, same_form=args.task_b == "codes")
    file_a, file_b = write_jsonl(task_a, work / "task_a.jsonl"), write_jsonl(task_b, work / "task_b.jsonl")
    base = make_tiny_model(work / "random", layers=args.layers, hidden=args.hidden, heads=4, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    scorers = {"A": Scorer(tokenizer, task_a), "B": Scorer(tokenizer, task_b)}
    common = {"effective_batch_size": args.batch, "max_seq_len": 64, "max_tokens_per_gpu": 1024,
              "lr_scheduler": "constant", "seed": args.seed, "device": "cpu", "dtype": "float32", "progress": False,
              "overwrite": True}

    # 1. the model that knows task A
    res_a = hone.sft(str(base), str(file_a), str(work / "after_a"), num_epochs=args.epochs_a, learning_rate=args.lr_a,
                     checkpoint_at_epoch=False, **common)
    model_a = res_a.final_model_dir
    start = {k: f(load_model(str(model_a))) for k, f in scorers.items()}
    print(f"after task A ({args.epochs_a} epochs SFT, {time.time() - started:.0f} s): task A {start['A']:.0%}, "
          f"task B {start['B']:.0%}", flush=True)

    # 2. each method learns task B from there
    methods = [("SFT", "sft", {}, args.lr)] + [(f"OSFT u={u:g}", "osft", {"unfreeze_rank_ratio": u}, args.lr)
                                                for u in args.ratios]
    methods += [(f"OSFT u={u:g}, all matrices", "osft",
                 {"unfreeze_rank_ratio": u, "target_patterns": [r"(proj|embed_tokens|lm_head)\.weight$"]}, args.lr) for u in args.all_matrices]
    if not args.no_lora:
        methods.append(("LoRA r=16", "lora", {"lora_r": 16, "lora_alpha": 32}, args.lora_lr))
    rows = []
    for label, algorithm, extra, lr in methods:
        t0 = time.time()
        log: list[dict] = []
        cfg = RunConfig.from_flat(algorithm, {
            "model_path": str(model_a), "data_path": str(file_b), "ckpt_output_dir": str(work / label.replace(" ", "_")),
            "num_epochs": args.epochs, "learning_rate": lr, "checkpoint_at_epoch": True,
            "save_final_checkpoint": False, **common, **extra})
        if algorithm == "sft":
            hooks = scoring_hooks(SFTHooks, scorers, log)
        elif algorithm == "osft":
            hooks = scoring_hooks(OSFTHooks, scorers, log, cfg.osft)
        else:
            try:
                from hone.algorithms.lora import LoRAHooks
            except ImportError as err:
                print(f"  {label}: skipped ({err})")
                continue
            hooks = scoring_hooks(LoRAHooks, scorers, log, cfg.lora)
        try:
            result = run_training(cfg, hooks)
        except Exception as err:  # LoRA may not be available in this checkout; report, do not hide
            print(f"  {label}: failed ({type(err).__name__}: {err})")
            continue
        info = result.model_info
        rows.append({"method": label, "lr": lr, "at": {str(t): first_reaching(log, t) for t in thresholds(args)},
                     "final_B": log[-1]["B"], "final_A": log[-1]["A"], "final_loss": result.final_loss,
                     "trainable": info.get("trainable_parameters"), "total": info.get("total_parameters"),
                     "seconds": time.time() - t0, "curve": log})
        r = rows[-1]
        print(f"  {label:>11}: " + "; ".join(
            f"B >= {float(t):.0%} at epoch {e['epoch']}, A {e['A']:.0%}" if e else f"B never >= {float(t):.0%}"
            for t, e in r["at"].items()) + f"; after {args.epochs} epochs B {r['final_B']:.0%}, A {r['final_A']:.0%} "
              f"({r['seconds']:.0f} s)", flush=True)

    table = render(rows, start, args)
    print()
    print(table)
    elapsed = time.time() - started
    print(f"\n{elapsed / 60:.1f} min")
    if not args.no_record:
        record(args, table, rows, start, elapsed)
        print(f"recorded in {RESULTS.relative_to(ROOT)} (newest first)")
    (work / "curves.json").write_text(json.dumps({"start": start, "rows": rows}, indent=1))


def thresholds(args) -> list[float]:
    return sorted({0.5, args.target})


def first_reaching(log: list[dict], threshold: float) -> dict | None:
    return next((e for e in log if e["B"] >= threshold), None)


def render(rows: list[dict], start: dict, args) -> str:
    ts = thresholds(args)
    head = " | ".join(f"first epoch B >= {t:.0%}: B, A (retention)" for t in ts)
    out = [f"| method | lr | trainable (of {rows[0]['total']:,}) | {head} | after {args.epochs} epochs: B, A |",
           "|---|---|---|" + "---|" * len(ts) + "---|"]
    for r in rows:
        cells = []
        for t in ts:
            e = r["at"][str(t)]
            cells.append(f"epoch {e['epoch']}: {e['B']:.0%}, {e['A']:.0%} ({e['A'] / start['A']:.0%})" if e
                         else "not reached")
        out.append(f"| {r['method']} | {r['lr']:g} | {r['trainable']:,} | " + " | ".join(cells) +
                   f" | {r['final_B']:.0%}, {r['final_A']:.0%} |")
    return "\n".join(out)


def record(args, table: str, rows: list[dict], start: dict, elapsed: float) -> None:
    import torch

    cpu = cpu_model()
    command = ".venv/bin/python bench/continual.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    lines = [
        "",
        f"## Continual learning: task A retention while learning task B = {args.task_b} (bench/continual.py), "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{command}` ({elapsed / 60:.1f} min)",
        f"- machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({args.threads} thread); "
        f"commit {git_commit()}",
        f"- model: tiny Qwen2 ({args.layers} blocks, hidden {args.hidden}, random init), taught task A "
        f"({args.facts} word -> 3-digit code facts) by SFT for {args.epochs_a} epochs at lr {args.lr_a:g}: task A "
        f"{start['A']:.0%}, task B {start['B']:.0%}",
        f"- task B: {args.facts} other word -> " + ("code facts in task A's form" if args.task_b == "codes" else
                                                     "colour facts") +
        f", {args.epochs} epochs, batch {args.batch}, constant lr, AdamW; accuracy = teacher-forced exact match of "
        "every answer token; retention = task-A accuracy / task-A accuracy before task B",
        "",
        table,
        "",
    ]
    insert_section("\n".join(lines), RESULTS)  # newest first, after the file's header


if __name__ == "__main__":
    main()
