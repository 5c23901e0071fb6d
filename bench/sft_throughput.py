#!/usr/bin/env python
"""SFT throughput: hone vs TRL's SFTTrainer on the same model, data, batch, learning rate and steps.

What runs
    * One Qwen2-architecture model with random weights, built offline (``hone.models.tiny.make_tiny_model``
      with a BPE tokenizer trained on a synthetic corpus, so the vocabulary can be realistic, 16k by default).
    * One chat data set, synthesised offline: conversations (optional system prompt, 1-3 user/assistant
      exchanges) whose rendered length in tokens is log-normal, clipped to 50-1500 tokens.
    * Three configurations, interleaved (hone, trl-default, trl-best, hone, ...), each run in a fresh
      subprocess so its peak RSS is its own:
        hone         ``hone.sft(...)`` with its defaults (padding-free micro-batches under max_tokens_per_gpu,
                     attention per packed sample: ``hone.models.attention``).
        trl-default  SFTTrainer with SFTConfig defaults: padded batches of ``--batch`` samples.
        trl-best     SFTTrainer with ``packing=True, packing_strategy="bfd", padding_free=True``: BFD-packed rows of
                     ``pack_len`` tokens (about one step's tokens), ``--batch``-sized steps in tokens.
      Equal everywhere: the model file, the data file, samples (or tokens) per optimizer step, steps, AdamW
      (betas 0.9/0.95, eps 1e-8, no weight decay), learning rate, cosine schedule without warm-up, clipping 1.0,
      float32, seed. Every configuration trains on assistant tokens only (TRL: ``assistant_only_loss=True`` with
      the same ChatML template plus ``{% generation %}`` markers, giving the same rendered text and the same loss
      mask as hone's template-agnostic masking). TRL's own ``gradient_checkpointing=True`` default is turned off
      (``--trl-gradient-checkpointing`` keeps it): recomputation trades time for memory that this model does not need.
    * Variants of hone for before/after measurements in the same session: ``hone+no-varlen`` (SDPA over the whole
      packed row, as before per-sample attention), ``hone+plain-loss``, ``hone+fused-adamw`` (see EXPERIMENTS).

What is reported (per configuration, medians over repeats)
    * real tokens/s: non-padding tokens of an optimizer step / wall time of that step (time between consecutive
      step ends, so data loading, the optimizer and logging are included); the median over the steps after
      ``--warmup``, then the median over repeats.
    * hone/TRL ratios, peak RSS of the run's process, padding fraction, and a loss sanity line (mean train loss
      of the last steps; the runs see the same data in different orders, so similar, not equal).

Usage
    .venv/bin/python bench/sft_throughput.py                 # full run (~10 min on a 2-core CPU)
    .venv/bin/python bench/sft_throughput.py --quick         # smaller model, fewer steps (~2-3 min)
    .venv/bin/python bench/sft_throughput.py --no-record     # do not record in bench/RESULTS.md
  See ``--help`` for model size, batch and step flags. Needs the ``bench`` extra (trl, psutil).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _results import git_commit, insert_section, machine  # noqa: E402

CONFIGS = ("hone", "trl-default", "trl-best")
RESULTS = ROOT / "bench" / "RESULTS.md"

# ChatML as in hone.models.tiny.CHATML_TEMPLATE, with TRL's {% generation %} markers around what an assistant turn
# generates (content + <|im_end|>): renders the same text, and the marked span equals hone's loss mask.
CHATML_GENERATION_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}"
    "{%- if message.get('reasoning_content') %}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- message['content'] + '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# --------------------------------------------------------------------------------------------------------------
# Synthetic text, tokenizer corpus, model and chat data (all offline, deterministic for a seed)
# --------------------------------------------------------------------------------------------------------------
class Lexicon:
    """Pseudo-words with a Zipf frequency law, so a BPE tokenizer learns a realistic vocabulary from them."""

    def __init__(self, size: int, seed: int):
        rng = random.Random(seed)
        onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
                  "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr"]
        vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ou", "oo", "y"]
        codas = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck"]
        words: set[str] = set()
        while len(words) < size:
            n = rng.choices([1, 2, 3, 4], weights=[3, 5, 3, 1])[0]
            words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n)))
        self.words = sorted(words)
        rng.shuffle(self.words)
        weights = [1.0 / (r + 1) ** 1.05 for r in range(size)]
        total = 0.0
        self.cum = []
        for w in weights:
            total += w
            self.cum.append(total)

    def text(self, n_words: int, rng: random.Random) -> str:
        words = rng.choices(self.words, cum_weights=self.cum, k=max(1, n_words))
        out, i = [], 0
        while i < len(words):
            k = rng.randint(5, 18)
            sent = words[i:i + k]
            sent[0] = sent[0].capitalize()
            if len(sent) > 6 and rng.random() < 0.4:
                sent[len(sent) // 2] += ","
            if rng.random() < 0.08:
                sent.append(str(rng.randint(2, 2030)))
            out.append(" ".join(sent) + rng.choice([".", ".", ".", "?", "!"]))
            i += k
        return " ".join(out)


def build_model(work: Path, args) -> Path:
    """Tokenizer (BPE on a synthetic corpus) + random-weight Qwen2 model, cached by its size."""
    from hone.models.tiny import make_tiny_model

    key = f"L{args.layers}-H{args.hidden}-A{args.heads}-KV{args.kv_heads}-I{args.intermediate}-V{args.vocab}-s{args.seed}"
    model_dir = work / f"model-{key}"
    if (model_dir / "config.json").is_file():
        return model_dir
    rng = random.Random(args.seed)
    lex = Lexicon(args.lexicon, args.seed)
    corpus = work / f"corpus-s{args.seed}.txt"
    if not corpus.is_file():
        corpus.parent.mkdir(parents=True, exist_ok=True)
        corpus.write_text("\n".join(lex.text(rng.randint(20, 120), rng) for _ in range(12000)) + "\n")
    make_tiny_model(model_dir, layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                    intermediate=args.intermediate, vocab_size=args.vocab, max_positions=4096, seed=args.seed,
                    corpus=corpus)
    return model_dir


def build_data(work: Path, model_dir: Path, args) -> tuple[Path, dict]:
    """Chat JSONL with log-normal token lengths (median ``--median-len``, clipped to [--min-len, --max-len])."""
    from transformers import AutoTokenizer

    n = args.batch * args.steps
    path = work / (f"chat-n{n}-m{args.median_len}-s{args.sigma}-{args.min_len}-{args.max_len}-"
                   f"seed{args.seed}-{model_dir.name}.jsonl")
    tok = AutoTokenizer.from_pretrained(model_dir)
    if not path.is_file():
        rng = random.Random(args.seed + 1)
        lex = Lexicon(args.lexicon, args.seed)
        probe = lex.text(4000, rng)
        tok_per_word = len(tok(probe, add_special_tokens=False)["input_ids"]) / 4000
        rows = []
        while len(rows) < n:
            target = min(max(rng.lognormvariate(math.log(args.median_len), args.sigma), args.min_len), args.max_len)
            for _ in range(4):  # draw, measure, rescale until the rendered length is in range
                msgs = _conversation(lex, rng, target, tok_per_word)
                length = len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
                if args.min_len <= length <= args.max_len:
                    rows.append({"messages": msgs})
                    break
                tok_per_word *= length / target
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = [len(tok.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True)["input_ids"])
               for line in path.read_text().splitlines()]
    stats = {"samples": len(lengths), "tokens": sum(lengths), "mean": statistics.mean(lengths),
             "median": statistics.median(lengths), "min": min(lengths), "max": max(lengths)}
    return path, stats


def _conversation(lex: Lexicon, rng: random.Random, target_tokens: float, tok_per_word: float) -> list[dict]:
    turns = rng.choices([1, 2, 3], weights=[6, 3, 1])[0]
    system = rng.random() < 0.3
    overhead = 5 * (2 * turns + system)  # <|im_start|>role\n ... <|im_end|>\n per message
    budget = max(target_tokens - overhead, 10 * turns) / tok_per_word  # in words
    msgs = []
    if system:
        k = rng.randint(8, 30)
        msgs.append({"role": "system", "content": lex.text(k, rng)})
        budget = max(budget - k, 6 * turns)
    shares = [rng.uniform(0.5, 1.5) for _ in range(turns)]
    for s in shares:
        words = budget * s / sum(shares)
        user = max(2, int(words * rng.uniform(0.15, 0.5)))
        msgs.append({"role": "user", "content": lex.text(user, rng)})
        msgs.append({"role": "assistant", "content": lex.text(max(2, int(words) - user), rng)})
    return msgs


# --------------------------------------------------------------------------------------------------------------
# Workers: one training run per process
# --------------------------------------------------------------------------------------------------------------
class Gate:
    """Lock-step interleaving: a worker stops at every step boundary until the driver lets it run one more step,
    so each configuration's k-th step runs next to the others' k-th step, and load that drifts on a shared
    machine hits them alike. Without the driver's pipes it never waits."""

    def __init__(self, fd_in: int | None = None, fd_out: int | None = None):
        self.r = os.fdopen(fd_in, "r") if fd_in is not None else None
        self.w = os.fdopen(fd_out, "w") if fd_out is not None else None

    def wait(self) -> None:
        if self.w is None:
            return
        self.w.write("ready\n")
        self.w.flush()
        if not self.r.readline():
            sys.exit("benchmark driver went away")


GATE = Gate()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# Variants of hone applied inside a hone run only (config names like ``hone+no-varlen+fused-adamw``), so that
# before/after can be measured in one interleaved session: an earlier state of hone ("before") or a proposed change
# that lives outside this benchmark's files (monkeypatched). Each one says what it is.
def _exp_plain_loss() -> None:
    """The loss before the fused head: full [T, V] logits for every position, then cross-entropy."""
    import hone.training.trainer as trainer
    from hone.training.loss import summed_cross_entropy

    def forward_loss_sum(model, batch):
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        return summed_cross_entropy(logits, batch.targets)

    trainer.forward_loss_sum = forward_loss_sum


def _exp_no_varlen() -> None:
    """hone before per-sample attention: stock SDPA over the whole packed row (transformers builds the row's
    block-diagonal [T, T] mask), through hone's own escape hatch HONE_ATTN_IMPLEMENTATION=sdpa."""
    os.environ["HONE_ATTN_IMPLEMENTATION"] = "sdpa"


def _exp_fused_adamw() -> None:
    """hone's AdamW with fused=True instead of foreach=True (TRL's default optimizer is adamw_torch_fused)."""
    import torch

    import hone.training.trainer as trainer

    original = trainer.make_optimizer

    def make_optimizer(*a, **k):
        opt = original(*a, **k)
        if type(opt) is not torch.optim.AdamW:
            return opt
        keep = ("params", "lr", "betas", "eps", "weight_decay", "amsgrad")
        groups = [{key: v for key, v in g.items() if key in keep} for g in opt.param_groups]
        d = opt.defaults
        return torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], weight_decay=d["weight_decay"],
                                 amsgrad=d["amsgrad"], fused=True)

    trainer.make_optimizer = make_optimizer


EXPERIMENTS = {"plain-loss": _exp_plain_loss, "no-varlen": _exp_no_varlen, "fused-adamw": _exp_fused_adamw}


def worker_hone(spec: dict, experiments: list[str]) -> dict:
    import hone
    from hone.training import metrics as metrics_mod

    for name in experiments:
        EXPERIMENTS[name]()
    if spec.get("hone_attn"):  # e.g. flash_attention_2 on a GPU (gpu_mfu.py); hone's escape hatch
        os.environ.setdefault("HONE_ATTN_IMPLEMENTATION", spec["hone_attn"])
    # Stamp wall and CPU time when the trainer opens its metrics file and after each step's record, so a step's
    # time is measured as for TRL: from one step's end to the next (forward, backward, optimizer, logging, data).
    stamps: list[tuple[float, float]] = []  # [train start, end of step 1, end of step 2, ...]
    starts: list[tuple[float, float]] = []  # when step k+1 was let go (after the gate at the end of step k)
    writer = metrics_mod.MetricsWriter
    init, write = writer.__init__, writer.write

    def stamped_init(self, *a, **k):
        init(self, *a, **k)
        GATE.wait()
        stamps[:] = [(time.perf_counter(), time.process_time())]

    def stamped_write(self, record):
        write(self, record)
        if "step" in record:
            stamps.append((time.perf_counter(), time.process_time()))
            GATE.wait()
            starts.append((time.perf_counter(), time.process_time()))

    writer.__init__, writer.write = stamped_init, stamped_write
    out = Path(spec["work"]) / "runs" / ("hone" + "".join(f"-{e}" for e in experiments))  # one per concurrent run
    t0 = time.perf_counter()
    res = hone.sft(spec["model_dir"], spec["data_path"], str(out), effective_batch_size=spec["batch"],
                   learning_rate=spec["lr"], max_steps=spec["steps"], num_epochs=1000, max_seq_len=spec["max_len_cfg"],
                   max_tokens_per_gpu=spec["hone_max_tokens"], lr_scheduler="cosine", warmup_steps=0,
                   seed=spec["seed"], beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0, max_grad_norm=1.0,
                   checkpoint_at_epoch=False, save_final_checkpoint=False, progress=False, overwrite=True,
                   dtype=spec.get("dtype", "auto"))
    total = time.perf_counter() - t0
    metrics = [json.loads(line) for line in res.metrics_path.read_text().splitlines() if line.strip()]
    if len(stamps) != len(metrics) + 1:
        raise RuntimeError(f"expected {len(metrics) + 1} time stamps from the trainer, got {len(stamps)}")
    begins = [stamps[0]] + starts  # a step's time runs from its go to its end
    steps = [{"tokens": m["num_tokens"], "padded_tokens": m["num_tokens"], "loss_tokens": m["num_loss_tokens"],
              "time": b[0] - a[0], "cpu": b[1] - a[1], "loss": m["loss"]}
             for m, a, b in zip(metrics, begins, stamps[1:])]
    train_s = sum(x["time"] for x in steps)
    return {"steps": steps, "setup_s": total - (stamps[-1][0] - stamps[0][0]), "train_s": train_s}


def worker_trl(spec: dict, best: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    tok.chat_template = CHATML_GENERATION_TEMPLATE
    dtype = spec.get("dtype", "float32")
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=getattr(torch, dtype),
                                                 attn_implementation=spec.get("trl_attn", "sdpa"))
    if torch.cuda.is_available():
        model.to("cuda")
    model.config.use_cache = False
    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines() if line.strip()]
    data = Dataset.from_list(rows)
    common = dict(
        output_dir=str(Path(spec["work"]) / "runs" / ("trl-best" if best else "trl-default")),
        max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="cosine", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0, seed=spec["seed"],
        bf16=dtype == "bfloat16", fp16=False, gradient_checkpointing=spec["trl_gradient_checkpointing"],
        assistant_only_loss=True, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    if best:
        cfg = SFTConfig(**common, packing=True, packing_strategy="bfd", padding_free=True,
                        max_length=spec["pack_len"], per_device_train_batch_size=1,
                        gradient_accumulation_steps=spec["pack_rows"])
    else:
        cfg = SFTConfig(**common, max_length=spec["max_len_cfg"], per_device_train_batch_size=spec["batch"],
                        gradient_accumulation_steps=1)

    counts = {"tokens": 0, "padded_tokens": 0, "loss_tokens": 0}
    steps: list[dict] = []
    marks: dict[str, float] = {}

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            counts["tokens"] += int(mask.sum()) if mask is not None else ids.numel()
            counts["padded_tokens"] += ids.numel()
            counts["loss_tokens"] += int((inputs["labels"][:, 1:] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    class Timing(TrainerCallback):  # on a GPU, step ends are synchronised (hone's end with the loss's .item())
        def on_train_begin(self, args, state, control, **kw):
            sync()
            GATE.wait()
            marks["last"], marks["cpu"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            sync()
            now, cpu = time.perf_counter(), time.process_time()
            steps.append({**counts, "time": now - marks["last"], "cpu": cpu - marks["cpu"], "loss": float("nan")})
            GATE.wait()
            marks["last"], marks["cpu"] = time.perf_counter(), time.process_time()
            for k in counts:
                counts[k] = 0

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and steps:
                steps[state.global_step - 1]["loss"] = float(logs["loss"])

    trainer = Counting(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[Timing()])
    setup = time.perf_counter() - t0
    trainer.train()
    return {"steps": steps, "setup_s": setup, "train_s": sum(x["time"] for x in steps)}


def run_worker(config: str, spec_path: Path, result_path: Path, gate_fds: str | None = None) -> None:
    global GATE
    if gate_fds:
        fd_in, fd_out = (int(x) for x in gate_fds.split(","))
        GATE = Gate(fd_in, fd_out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    spec = json.loads(spec_path.read_text())
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if config.startswith("hone"):
        out = worker_hone(spec, config.split("+")[1:])
    else:
        out = worker_trl(spec, best=(config == "trl-best"))
    out.update(config=config, peak_rss_mb=peak_rss_mb(), threads=torch.get_num_threads())
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result_path.write_text(json.dumps(out))


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------
def summarise_run(run: dict, warmup: int) -> dict:
    steps = run["steps"][warmup:] or run["steps"]
    rates = [s["tokens"] / s["time"] for s in steps]
    tail = [s["loss"] for s in run["steps"][-3:] if s["loss"] == s["loss"]]
    return {
        "rates": rates,
        "median_tok_s": statistics.median(rates),
        "cpu_tok_s": statistics.median(s["tokens"] / s["cpu"] for s in steps),
        "aggregate_tok_s": sum(s["tokens"] for s in steps) / sum(s["time"] for s in steps),
        "median_step_s": statistics.median(s["time"] for s in steps),
        "tokens_per_step": statistics.mean(s["tokens"] for s in run["steps"]),
        "padding": 1 - sum(s["tokens"] for s in run["steps"]) / sum(s["padded_tokens"] for s in run["steps"]),
        "first_loss": run["steps"][0]["loss"],
        "final_loss": statistics.mean(tail) if tail else float("nan"),
        "peak_rss_mb": run["peak_rss_mb"],
        "setup_s": run["setup_s"],
        "train_s": run["train_s"],
    }


def file_versions() -> str:
    """Git blob ids of the files that decide hone's step time, so a dirty tree still says which code ran."""
    out = []
    for f in ("hone/training/loss.py", "hone/training/trainer.py", "hone/data/batching.py", "hone/models/load.py",
              "hone/models/attention.py"):
        try:
            blob = subprocess.run(["git", "hash-object", f], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()[:10]
        except (OSError, subprocess.CalledProcessError):
            blob = "?"
        out.append(f"{Path(f).name} {blob}")
    return ", ".join(out)


def versions() -> str:
    out = []
    for mod in ("torch", "transformers", "trl"):
        try:
            out.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            out.append(f"{mod} missing")
    return ", ".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small model, fewer steps, one repeat (~2-3 min)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 2; quick 1)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 6; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="first steps left out of the medians")
    p.add_argument("--batch", type=int, default=8, help="samples per optimizer step (effective batch)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--layers", type=int, default=None, help="(default 6; quick 4)")
    p.add_argument("--hidden", type=int, default=None, help="(default 384; quick 256)")
    p.add_argument("--heads", type=int, default=None, help="(default 6; quick 4)")
    p.add_argument("--kv-heads", type=int, default=None, help="(default 2)")
    p.add_argument("--intermediate", type=int, default=None, help="(default 1024; quick 768)")
    p.add_argument("--vocab", type=int, default=None, help="BPE vocabulary size (default 16384; quick 8192)")
    p.add_argument("--lexicon", type=int, default=40000, help="pseudo-words in the synthetic language")
    p.add_argument("--median-len", type=int, default=280, help="median sample length in tokens (log-normal)")
    p.add_argument("--sigma", type=float, default=0.8, help="log-normal sigma of sample lengths")
    p.add_argument("--min-len", type=int, default=50)
    p.add_argument("--max-len", type=int, default=1500)
    p.add_argument("--hone-max-tokens", type=int, default=10000, help="hone max_tokens_per_gpu (its default)")
    p.add_argument("--trl-pack-len", type=int, default=0,
                   help="trl-best row length (default: the longest sample rounded up to a multiple of 64)")
    p.add_argument("--trl-gradient-checkpointing", action="store_true",
                   help="keep TRL's default gradient_checkpointing=True")
    p.add_argument("--interleave", choices=("steps", "runs"), default="steps",
                   help="steps: every round starts all its runs (separate processes) and lets them take one "
                        "optimizer step in turn; runs: one run after the other")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "sft_throughput"), help="cache and run directory")
    p.add_argument("--no-record", action="store_true", help="do not record in bench/RESULTS.md")
    p.add_argument("--note", default="", help="a line recorded with the results (e.g. what changed)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--gate", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    defaults = dict(repeats=1 if q else 2, steps=5 if q else 6, warmup=1, layers=4 if q else 6, hidden=256 if q else 384,
                    heads=4 if q else 6, kv_heads=2, intermediate=768 if q else 1024, vocab=8192 if q else 16384)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, Path(args.spec), Path(args.result), args.gate)
        return 0
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS and not (
        c.startswith("hone+") and all(e in EXPERIMENTS for e in c.split("+")[1:]))]
    if bad:
        sys.exit(f"unknown config(s) {bad}; choose from {CONFIGS}, or hone+EXP[+EXP...] with EXP in "
                 f"{', '.join(EXPERIMENTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    t_all = time.perf_counter()

    model_dir = build_model(work, args)
    data_path, stats = build_data(work, model_dir, args)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    n_params = _count_params(cfg)
    # TRL-best: BFD packs rows of pack_len tokens (by default the shortest multiple of 64 that holds the longest
    # sample: BFD truncates longer samples, and shorter rows waste less attention on CPU, where SDPA computes the
    # whole row with a block-diagonal mask); one step = pack_rows rows, about the tokens of --batch samples.
    step_tokens = args.batch * stats["mean"]
    pack_len = args.trl_pack_len or 64 * math.ceil(max(stats["max"], args.max_len) / 64)
    if pack_len < stats["max"]:
        sys.exit(f"--trl-pack-len {pack_len} is shorter than the longest sample ({stats['max']} tokens)")
    pack_rows = max(1, round(step_tokens / pack_len))
    spec = {"work": str(work), "model_dir": str(model_dir), "data_path": str(data_path), "batch": args.batch,
            "steps": args.steps, "lr": args.lr, "seed": args.seed, "max_len_cfg": max(2048, args.max_len),
            "hone_max_tokens": args.hone_max_tokens, "pack_len": pack_len, "pack_rows": pack_rows,
            "trl_gradient_checkpointing": args.trl_gradient_checkpointing, "threads": args.threads}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    print(f"model: {model_dir.name}: {n_params['total'] / 1e6:.1f}M parameters "
          f"({n_params['non_embedding'] / 1e6:.1f}M non-embedding), vocab {cfg.vocab_size}")
    print(f"data:  {stats['samples']} chats, tokens/sample mean {stats['mean']:.0f} median {stats['median']:.0f} "
          f"min {stats['min']} max {stats['max']}; batch {args.batch} samples (~{step_tokens:.0f} tokens), "
          f"{args.steps} steps; trl-best packs {pack_rows} row(s) of {pack_len} tokens per step")

    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        results = {c: work / f"result-{c}-{r}.json" for c in configs}
        for c in configs:
            results[c].unlink(missing_ok=True)
        if args.interleave == "steps":
            _round_lockstep(configs, spec_path, results, work, r)
        else:
            for c in configs:
                _round_lockstep([c], spec_path, {c: results[c]}, work, r)
        for c in configs:
            s = summarise_run(json.loads(results[c].read_text()), args.warmup)
            runs[c].append(s)
            print(f"  round {r + 1}/{args.repeats} {c:<30} {s['median_tok_s']:7.0f} tok/s {s['cpu_tok_s']:6.0f} tok/CPU-s"
                  f"  step {s['median_step_s']:6.2f}s  rss {s['peak_rss_mb']:6.0f} MB"
                  f"  loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}", flush=True)
        print(f"  (round {r + 1}: {time.perf_counter() - t0:.0f}s)", flush=True)

    table, summary = report(runs, args)
    print()
    print(table)
    print(summary)
    elapsed = time.perf_counter() - t_all
    print(f"\ntotal {elapsed:.0f}s")
    if not args.no_record:
        record(args, argv, started, elapsed, cfg, n_params, stats, spec, table, summary, load_start)
        print(f"recorded in {RESULTS} (newest first)")
    return 0


def _round_lockstep(configs: list[str], spec_path: Path, results: dict[str, Path], work: Path, r: int) -> None:
    """Start one worker process per configuration; once all are set up, let them take one step each in turn."""
    procs, gates = {}, {}
    for c in configs:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        log = (work / f"log-{c}-{r}.txt").open("w")
        procs[c] = (subprocess.Popen(
            [sys.executable, __file__, "--worker", c, "--spec", str(spec_path), "--result", str(results[c]),
             "--gate", f"{to_child_r},{from_child_w}"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, pass_fds=(to_child_r, from_child_w)), log)
        os.close(to_child_r)
        os.close(from_child_w)
        gates[c] = (os.fdopen(to_child_w, "w"), os.fdopen(from_child_r, "r"))
    active = [c for c in configs if gates[c][1].readline()]  # every worker set up and waiting before step 1
    while active:
        for c in list(active):
            go, ready = gates[c]
            go.write("go\n")
            go.flush()
            if not ready.readline():  # finished (or failed): the pipe closed
                active.remove(c)
    for c in configs:
        proc, log = procs[c]
        code = proc.wait()
        log.close()
        if code != 0 or not results[c].is_file():
            print((work / f"log-{c}-{r}.txt").read_text()[-6000:], file=sys.stderr)
            for other, (p, _) in procs.items():
                if p.poll() is None:
                    p.kill()
            sys.exit(f"{c} run {r + 1} failed (exit {code}); log: {work / f'log-{c}-{r}.txt'}")


def _count_params(cfg) -> dict:
    h, i, v, n = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    hd = h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    attn = h * h + h + 2 * (h * kv + kv) + h * h  # q (bias), k, v (bias), o (no bias)
    layer = attn + 3 * h * i + 2 * h
    emb = v * h * (1 if cfg.tie_word_embeddings else 2)
    return {"total": n * layer + emb + h, "non_embedding": n * layer + h}


def report(runs: dict[str, list[dict]], args) -> tuple[str, str]:
    med = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "rates"} for c, rs in runs.items() if rs}
    trls = [c for c in ("trl-default", "trl-best") if c in med]
    rows = ["| config | real tok/s: median (per round) | tok per CPU-s | step s | tokens/step | padding | peak RSS MB | "
            "loss first -> last 3 |" + "".join(f" hone / {t} |" for t in trls),
            "|---|---:|---:|---:|---:|---:|---:|---|" + "---:|" * len(trls)]
    for c, m in med.items():
        spread = ", ".join(f"{r['median_tok_s']:.0f}" for r in runs[c])
        ratios = [f"{m['median_tok_s'] / med[t]['median_tok_s']:.2f}x" if c.startswith("hone") else "" for t in trls]
        rows.append(f"| {c} | {m['median_tok_s']:.0f} ({spread}) | {m['cpu_tok_s']:.0f} | {m['median_step_s']:.2f} | "
                    f"{m['tokens_per_step']:.0f} | {m['padding']:.0%} | {m['peak_rss_mb']:.0f} | "
                    f"{m['first_loss']:.3f} -> {m['final_loss']:.3f} |" + "".join(f" {r} |" for r in ratios))
    lines = []
    for h in (c for c in med if c.startswith("hone")):
        for t in trls:
            per_round = [a["median_tok_s"] / b["median_tok_s"] for a, b in zip(runs[h], runs[t])]
            paired = [x / y for a, b in zip(runs[h], runs[t]) for x, y in zip(a["rates"], b["rates"])]
            lines.append(f"{h} / {t}: {med[h]['median_tok_s'] / med[t]['median_tok_s']:.2f}x real tokens/s "
                         f"(per round: {', '.join(f'{x:.2f}' for x in per_round)}; step by step: median "
                         f"{statistics.median(paired):.2f}, range {min(paired):.2f}-{max(paired):.2f}; per CPU-second "
                         f"{med[h]['cpu_tok_s'] / med[t]['cpu_tok_s']:.2f}x), "
                         f"peak RSS {med[h]['peak_rss_mb'] / med[t]['peak_rss_mb']:.2f}x")
        for t in trls:
            a, b = med[h]["final_loss"], med[t]["final_loss"]
            rel = abs(a - b) / max(abs(b), 1e-9)
            lines.append(f"loss sanity {h} vs {t}: {a:.3f} vs {b:.3f} (train loss, mean of the last 3 steps, "
                         f"from {med[h]['first_loss']:.3f} / {med[t]['first_loss']:.3f}): {rel:.1%} apart, "
                         f"{'similar' if rel < 0.05 else 'DIFFERENT'}")
    return "\n".join(rows), "\n".join(lines)


def record(args, argv, started, elapsed, cfg, n_params, stats, spec, table, summary, load_start) -> None:
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/sft_throughput.py", *(argv or sys.argv[1:])])
    load = os.getloadavg()
    text = f"""## SFT throughput: hone vs TRL SFTTrainer, CPU (bench/sft_throughput.py), {started:%Y-%m-%d %H:%M} UTC

- command: `{cmd}`{f"  {chr(10)}- note: {args.note}" if args.note else ""}
- commit: `{git_commit()}` (blobs: {file_versions()}); {versions()}
- machine: {machine()}; 1-min load average {load_start[0]:.1f} at the start, {load[0]:.1f} at the end (other jobs share the cores)
- model: Qwen2, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV, intermediate {cfg.intermediate_size}, vocab {cfg.vocab_size}: {n_params['total'] / 1e6:.1f}M parameters ({n_params['non_embedding'] / 1e6:.1f}M non-embedding), float32; attention: hone per-sample SDPA (`hone_varlen_sdpa`; `+no-varlen`: SDPA over the packed row with its block-diagonal mask), TRL SDPA
- data: {stats['samples']} synthetic chats, tokens/sample log-normal (median {stats['median']:.0f}, mean {stats['mean']:.0f}, {stats['min']}–{stats['max']}); assistant-only loss everywhere
- per run: {args.steps} optimizer steps of {args.batch} samples, lr {args.lr}, cosine, AdamW(0.9, 0.95); medians over steps after {args.warmup} warm-up step(s), then over {args.repeats} round(s), runs interleaved {'step by step (lock-step processes)' if args.interleave == 'steps' else 'run by run'}; trl-best = packing bfd + padding_free, {spec['pack_rows']} row(s) × {spec['pack_len']} tokens per step; TRL gradient checkpointing {'on' if args.trl_gradient_checkpointing else 'off'}; hone max_tokens_per_gpu {args.hone_max_tokens}
- wall time of the whole benchmark: {elapsed:.0f}s

{table}

{summary}
"""
    insert_section(text, RESULTS)  # newest first, after the file's header


if __name__ == "__main__":
    sys.exit(main())
