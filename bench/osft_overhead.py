#!/usr/bin/env python
"""OSFT's cost over SFT: step time and peak memory on the same model, data and settings (issue 4's targets:
OSFT step time <= 1.10x SFT, peak memory <= 1.30x SFT).

What runs
    * One Qwen2-shaped causal LM with random weights, built offline with ``transformers.Qwen2Config``: by
      default hidden 512, 8 blocks, 8 heads / 2 KV heads, MLP 2816, tied 32k vocabulary (56M parameters; the
      proportions of Qwen2-0.5B: 71% of the parameters in the block projections that OSFT targets).
    * One processed data set of random token rows (``use_processed_dataset``), every token trained.
    * Configurations ``sft`` and ``osft`` at each ``--ratios`` value (default u = 0.25 and 0.5), each run through the
      real trainer (``hone.training.run.run_training``) in a fresh subprocess, so its peak RSS is its own; the runs
      are interleaved (sft, osft-0.25, osft-0.5, then the reverse order, ...) so that load drifting on a shared
      machine hits every configuration alike. The SVD cache is shared, so only the first OSFT run decomposes.

What is reported (per configuration)
    * step time: the median over every run's steps after its first (the warm-up), each step's time as the trainer
      measures it (forward, backward, OSFT's gradient projection, clipping, AdamW, OSFT's restore);
    * ratio to SFT, two ways: the ratio of the medians (runs minutes apart: on a shared machine, load drift shows
      up here), and paired within each OSFT step, step / (step - time in OSFT's two hooks): everything else in an
      OSFT step is the SFT code path, so this isolates what the method adds; setup time (data, model load, SVD or
      cache read);
    * peak RSS of the run's process and its ratio to SFT.

Usage
    .venv/bin/python bench/osft_overhead.py                 # ~10 min on 2 CPU cores
    .venv/bin/python bench/osft_overhead.py --rounds 1 --steps 2 --tokens-per-step 1024   # quick look
    .venv/bin/python bench/osft_overhead.py --no-record     # do not record in bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _results  # noqa: E402
from _results import git_commit, insert_section  # noqa: E402



# -- the model and the data ------------------------------------------------------------------------------------

def build_model(args, workdir: Path) -> Path:
    """The Qwen2-shaped random model (rebuilt only when its shape changes)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from hone.models.save import save_hf_dir
    from hone.models.tiny import make_tiny_model

    shape = {"hidden_size": args.hidden, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
             "num_key_value_heads": args.kv_heads, "intermediate_size": args.intermediate, "vocab_size": args.vocab}
    model_dir = workdir / "model"
    stamp = model_dir / "bench_shape.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == shape:
        return model_dir
    tok_dir = make_tiny_model(workdir / "tokenizer-source", layers=1, hidden=16, heads=2, vocab_size=300)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    config = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    save_hf_dir(model, tokenizer, model_dir)
    stamp.write_text(json.dumps(shape))
    return model_dir


def build_data(args, workdir: Path, samples: int) -> Path:
    import random

    path = workdir / f"rows-{args.seq_len}x{samples}-v{args.vocab}.jsonl"
    if not path.is_file():
        rng = random.Random(0)
        with path.open("w") as fh:
            for _ in range(samples):
                ids = [rng.randrange(args.vocab) for _ in range(args.seq_len)]
                fh.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
    return path


def parameter_counts(model_dir: Path) -> tuple[int, int]:
    """(all parameters, OSFT's default targets)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hone.algorithms.osft import default_target_names

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    params = dict(model.named_parameters())
    return sum(p.numel() for p in params.values()), sum(params[n].numel() for n in default_target_names(model))


# -- one run, in its own process --------------------------------------------------------------------------------

def worker(spec: dict) -> dict:
    import torch

    from hone.algorithms.osft import OSFTHooks
    from hone.algorithms.sft import SFTHooks
    from hone.config import RunConfig
    from hone.training.metrics import read_metrics
    from hone.training.run import run_training

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    started = time.perf_counter()
    cfg = RunConfig.from_flat(spec["algorithm"], spec["params"])
    base = OSFTHooks if spec["algorithm"] == "osft" else SFTHooks

    class Timed(base):
        """The algorithm's own hooks, timing what they add to each step."""

        prepare_s = 0.0

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.hook_s: list[float] = []

        def prepare_model(self, model, **kw):
            t = time.perf_counter()
            out = super().prepare_model(model, **kw)
            self.prepare_s = time.perf_counter() - t
            return out

        def after_backward(self, model):
            t = time.perf_counter()
            super().after_backward(model)
            self.hook_s.append(time.perf_counter() - t)

        def after_optimizer_step(self, model, optimizer):
            t = time.perf_counter()
            super().after_optimizer_step(model, optimizer)
            self.hook_s[-1] += time.perf_counter() - t

    hooks = Timed(cfg.osft, seed=cfg.train.seed) if spec["algorithm"] == "osft" else Timed()
    result = run_training(cfg, hooks)
    wall = time.perf_counter() - started
    metrics = read_metrics(Path(spec["params"]["ckpt_output_dir"]) / "training_metrics.jsonl")
    return {
        "name": spec["name"],
        "step_s": [m["num_tokens"] / m["tokens_per_second"] for m in metrics],
        "tokens_per_step": [m["num_tokens"] for m in metrics],
        "hook_s": hooks.hook_s,
        "prepare_s": hooks.prepare_s,
        "setup_s": wall - result.elapsed_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "loss": [m["loss"] for m in metrics],
        "osft": {k: v for k, v in result.model_info.get("osft", {}).items() if k != "targets"},
        "layouts": sorted({t["layout"] for t in result.model_info.get("osft", {}).get("targets", [])}),
    }


def run_one(spec: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"run {spec['name']} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# -- the whole benchmark ----------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="runs of each configuration (interleaved)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (the first is warm-up)")
    p.add_argument("--tokens-per-step", type=int, default=2048, help="tokens per optimizer step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5], help="unfreeze_rank_ratio values")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--threads", type=int, default=0, help="torch threads in each run (0: torch's default)")
    p.add_argument("--workdir", default="/tmp/hone-bench/osft_overhead")
    p.add_argument("--no-record", action="store_true", help=f"do not record in {RESULTS.relative_to(ROOT)}")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    started = time.time()
    load_before = os.getloadavg()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    per_step = max(1, args.tokens_per_step // args.seq_len)
    model_dir = build_model(args, workdir)
    data = build_data(args, workdir, per_step * args.steps)
    total_params, target_params = parameter_counts(model_dir)
    print(f"model {total_params / 1e6:.1f}M parameters ({target_params / total_params:.0%} in OSFT targets); "
          f"{per_step} x {args.seq_len} = {per_step * args.seq_len} tokens per step; {args.steps} steps x "
          f"{args.rounds} rounds", flush=True)

    configs = [("sft", "sft", None)] + [(f"osft u={u:g}", "osft", u) for u in args.ratios]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for r in range(args.rounds):
        for name, algorithm, u in (configs if r % 2 == 0 else configs[::-1]):
            params = {"model_path": str(model_dir), "data_path": str(data),
                      "ckpt_output_dir": str(workdir / "runs" / f"{name.replace(' ', '_')}-{r}"),
                      "use_processed_dataset": True, "max_seq_len": args.seq_len,
                      "max_tokens_per_gpu": max(args.tokens_per_step, args.seq_len), "effective_batch_size": per_step,
                      "num_epochs": 1, "max_steps": args.steps, "learning_rate": 1e-5, "weight_decay": 0.01,
                      "lr_scheduler": "constant", "dtype": "float32", "device": "cpu", "seed": 0, "progress": False,
                      "checkpoint_at_epoch": False, "save_final_checkpoint": False, "overwrite": True}
            if u is not None:
                params.update(unfreeze_rank_ratio=u, osft_svd_cache_dir=str(workdir / "svd-cache"))
            res = run_one({"name": name, "algorithm": algorithm, "params": params, "threads": args.threads})
            runs[name].append(res)
            print(f"  round {r + 1} {name:>11}: steps {', '.join(f'{s:.2f}' for s in res['step_s'])} s, hooks "
                  f"{', '.join(f'{s:.2f}' for s in res['hook_s'][1:]) or '-'} s, setup {res['setup_s']:.1f} s, "
                  f"peak RSS {res['peak_rss_gib']:.2f} GiB", flush=True)

    rows = summarise(runs)
    load_after = os.getloadavg()
    table = render(rows)
    print()
    print(table)
    elapsed = time.time() - started
    print(f"\n{elapsed / 60:.1f} min; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    if not args.no_record:
        record(args, table, rows, runs, total_params, target_params, per_step, elapsed, load_before, load_after)
        print(f"recorded in {RESULTS.relative_to(ROOT)} (newest first)")


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    def steps(name):
        return [s for run in runs[name] for s in run["step_s"][1:]]

    sft_step = statistics.median(steps("sft"))
    sft_rss = statistics.median(run["peak_rss_gib"] for run in runs["sft"])
    rows = []
    for name, rs in runs.items():
        step = statistics.median(steps(name))
        hooks = [h for run in rs for h in run["hook_s"][1:]]
        # Paired within each step: the step's time over the same step without OSFT's hooks (everything else in an
        # OSFT step is the SFT code path), so load drifting between runs cancels out.
        in_run = [s / (s - h) for run in rs for s, h in zip(run["step_s"][1:], run["hook_s"][1:]) if s > h]
        rss = statistics.median(run["peak_rss_gib"] for run in rs)
        rows.append({"name": name, "n": len(steps(name)), "step": step, "step_min": min(steps(name)),
                     "step_max": max(steps(name)), "ratio": step / sft_step,
                     "hook": statistics.median(hooks) if hooks else 0.0,
                     "hook_share": (statistics.median(hooks) / step) if hooks else 0.0,
                     "in_run": statistics.median(in_run) if in_run else 1.0,
                     "setup": [round(run["setup_s"], 1) for run in rs],
                     "prepare": [round(run["prepare_s"], 1) for run in rs],
                     "rss": rss, "rss_ratio": rss / sft_rss, "osft": rs[0]["osft"], "layouts": rs[0]["layouts"]})
    return rows


def render(rows: list[dict]) -> str:
    out = ["| configuration | step time, median (min-max) | vs SFT (medians) | OSFT hooks per step | vs SFT (paired "
           "in each step) | peak RSS | vs SFT | setup per run (prepare_model) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hook = f"{r['hook']:.2f} s ({r['hook_share']:.1%} of the step)" if r["name"] != "sft" else "-"
        paired = f"{r['in_run']:.3f}x" if r["name"] != "sft" else "-"
        out.append(f"| {r['name']} | {r['step']:.2f} s ({r['step_min']:.2f}-{r['step_max']:.2f}, n={r['n']}) | "
                   f"{r['ratio']:.3f}x | {hook} | {paired} | {r['rss']:.2f} GiB | {r['rss_ratio']:.3f}x | "
                   f"{', '.join(f'{s:g}' for s in r['setup'])} s ({', '.join(f'{s:g}' for s in r['prepare'])} s) |")
    return "\n".join(out)


def machine() -> str:
    import torch

    return (f"{_results.machine()}, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def record(args, table, rows, runs, total_params, target_params, per_step, elapsed, load_before, load_after) -> None:
    command = ".venv/bin/python bench/osft_overhead.py" + "".join(
        f" {a}" for a in map(shlex.quote, sys.argv[1:]))
    osft_rows = [r for r in rows if r["name"] != "sft"]
    lines = [
        "",
        f"## OSFT overhead vs SFT (bench/osft_overhead.py), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{command}` ({elapsed / 60:.1f} min)",
        f"- machine: {machine()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(other work was running on the machine)",
        f"- commit: {git_commit()}",
        f"- model: Qwen2-shaped, random weights, {total_params / 1e6:.1f}M parameters (hidden {args.hidden}, "
        f"{args.layers} blocks, {args.heads}/{args.kv_heads} heads, MLP {args.intermediate}, tied vocab {args.vocab}); "
        f"{target_params / total_params:.0%} of the parameters are OSFT targets; float32, CPU",
        f"- data and settings (equal for all): {per_step} rows x {args.seq_len} tokens = {per_step * args.seq_len} "
        f"tokens per optimizer step in one micro-batch, AdamW (weight decay 0.01), clipping 1.0, {args.steps} steps "
        f"per run (first excluded), {args.rounds} interleaved rounds, each run a fresh process",
        "- OSFT layouts used: " + "; ".join(
            f"{r['name']}: {', '.join(r['layouts'])}, {r['osft'].get('frozen_directions', 0):,} of "
            f"{r['osft'].get('frozen_directions', 0) + r['osft'].get('trainable_directions', 0):,} directions frozen, "
            f"bases {r['osft'].get('basis_bytes', 0) / 2**20:.0f} MiB" for r in osft_rows),
        "",
        table,
        "",
    ]
    insert_section("\n".join(lines), RESULTS)  # newest first, after the file's header


if __name__ == "__main__":
    main()
