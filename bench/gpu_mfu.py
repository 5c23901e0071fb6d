#!/usr/bin/env python
"""GPU MFU: hone SFT vs TRL's SFTTrainer (its best configuration) on a Qwen2.5-1.5B-shaped model, same call.

What runs
    * A Qwen2 model with the shape of Qwen/Qwen2.5-1.5B-Instruct's public config.json (``QWEN2_5_1_5B`` below:
      28 layers, hidden 1536, 12 query / 2 key-value heads, MLP 8960, vocab 151936, tied embeddings, rope theta
      1e6; 1.54B parameters, 1.31B without the embedding) with random weights, built locally, in bfloat16 on a GPU.
      The tokenizer is a small BPE trained offline (its ids are a subset of the model's vocabulary; the LM head
      still has all 151936 rows, so the compute is the real model's).
    * The chat data, steps, optimizer and step timing of ``bench/sft_throughput.py`` (its data builder and worker
      processes are reused): ``hone`` = ``hone.sft`` with its defaults; ``trl-best`` = ``SFTTrainer`` with
      ``packing=True, packing_strategy="bfd", padding_free=True`` in rows of ``--trl-pack-len`` tokens (default:
      hone's ``max_tokens_per_gpu``, so both run micro-batches of the same size).
    * Attention: the fastest available: ``flash_attention_2`` for both when ``flash_attn`` imports on a GPU;
      otherwise hone's per-sample SDPA (``hone.models.attention``) and TRL's SDPA.
    * Runs one after the other on a GPU (two 1.5B runs at once would share its memory), in lock-step on a CPU.

FLOPs and MFU
    Model FLOPs of one training step (forward + backward = 3 x forward; a multiply-add is 2 FLOPs), summed over
    the packed samples of the data, each of length ``n`` tokens:

        FLOPs(sample) = 6 * N * n  +  6 * n_layers * hidden * n^2

    * ``N``: non-embedding parameters (every layer's q/k/v/o projections with their biases, the MLP, the norms):
      each costs 2 FLOPs per token forward, 6 forward + backward. The input embedding is a lookup, and the LM head
      (``6 * hidden * vocab`` per token, 1.4 GFLOP for this model) is not in ``N``: the "MFU" column follows
      that convention, the "MFU +head" column adds the LM head at every position.
    * Attention scores and their weighted sum: per layer and sample, ``Q K^T`` and ``A V`` are each
      ``2 * n^2 * hidden`` FLOPs forward without a mask (``hidden = heads * head_dim``); causal attention needs
      half of them, so ``2 * n^2 * hidden`` forward for both, and ``6 * n^2 * hidden`` forward + backward. With
      per-sample lengths, packing several samples in a row adds no attention FLOPs (attention never crosses a
      sample boundary), so the sum runs over samples, not rows. (PaLM's ``12 * n_layers * hidden * seq_len`` per
      token is the same term without the causal halving.)
    * FLOPs per token of the data = (sum over samples of FLOPs(sample)) / (sum of n): the data set's token-
      weighted mean. Achieved model FLOP/s = real tokens/s x FLOPs per token; MFU = that / ``--peak-tflops``
      (989 TFLOP/s: H100 SXM dense bf16). Recomputation (activation checkpointing) is not counted.

Usage
    .venv/bin/python bench/gpu_mfu.py                    # on a GPU machine: full run, recorded in RESULTS.md
    .venv/bin/python bench/gpu_mfu.py --smoke            # tiny model on the CPU, 2 steps (< 1 min), not recorded
    .venv/bin/python bench/gpu_mfu.py --peak-tflops 1979 # another peak (e.g. counting sparsity, or another GPU)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sft_throughput as st  # noqa: E402  (data builder, workers, timing, machine/commit helpers)
from _results import RESULTS, insert_section  # noqa: E402

# Qwen/Qwen2.5-1.5B-Instruct config.json (the architecture fields; weights are random here)
QWEN2_5_1_5B = dict(
    hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960,
    vocab_size=151936, rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768,
    rms_norm_eps=1e-6, hidden_act="silu", attention_dropout=0.0, use_sliding_window=False, max_window_layers=21,
)
# --smoke: the same architecture, tiny (vocab: the tokenizer's)
SMOKE_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=4096,
                   rms_norm_eps=1e-6, hidden_act="silu", attention_dropout=0.0, use_sliding_window=False)
H100_SXM_BF16_DENSE_TFLOPS = 989.0


def non_embedding_params(shape: dict) -> int:
    """Parameters outside the embedding and LM head (Qwen2: q/k/v with bias, o without, SwiGLU MLP, 2 norms
    per layer, the final norm)."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    return n * layer + h


def flops_per_token(shape: dict, lengths: list[int]) -> tuple[float, float]:
    """(model FLOPs per token by the docstring's formula, the LM head's FLOPs per token), fwd + bwd."""
    n_ne, layers, h = non_embedding_params(shape), shape["num_hidden_layers"], shape["hidden_size"]
    total = sum(6 * n_ne * n + 6 * layers * h * n * n for n in lengths)
    return total / sum(lengths), 6.0 * h * shape["vocab_size"]


def build_model(work: Path, args, device: str) -> tuple[Path, dict]:
    """A small BPE tokenizer + a random-weight Qwen2 of the chosen shape, saved as a Hugging Face directory."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from hone.models.save import save_hf_dir
    from hone.models.tiny import make_tiny_model

    shape = dict(SMOKE_SHAPE if args.smoke else QWEN2_5_1_5B)
    tok_dir = work / f"tokenizer-v{args.tokenizer_vocab}-s{args.seed}"
    if not (tok_dir / "tokenizer.json").is_file():
        corpus = None
        if not args.smoke:  # a realistic vocabulary from the synthetic language of the chat data
            import random

            rng, lex = random.Random(args.seed), st.Lexicon(args.lexicon, args.seed)
            corpus = work / f"corpus-s{args.seed}.txt"
            corpus.write_text("\n".join(lex.text(rng.randint(20, 120), rng) for _ in range(12000)) + "\n")
        make_tiny_model(tok_dir, layers=1, hidden=32, heads=2, vocab_size=args.tokenizer_vocab, seed=args.seed,
                        corpus=corpus)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if args.smoke:
        shape["vocab_size"] = len(tok)
    key = "smoke" if args.smoke else "qwen2.5-1.5b"
    model_dir = work / f"model-{key}-{args.dtype}-s{args.seed}"
    if not (model_dir / "config.json").is_file():
        cfg = Qwen2Config(**shape, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
        model.to(getattr(torch, args.dtype))
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        save_hf_dir(model, tok, model_dir)
        del model
    return model_dir, shape


def sample_lengths(data_path: Path, model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [len(tok.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True)["input_ids"])
            for line in data_path.read_text().splitlines() if line.strip()]


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no GPU (CPU run)"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny model on the CPU, 2 steps, float32 (checks the script end to end; not recorded)")
    p.add_argument("--configs", default=None, help="comma-separated: hone, trl-best (default both; smoke: both if "
                                                   "trl imports)")
    p.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_DENSE_TFLOPS,
                   help="the device's peak dense TFLOP/s for the dtype (H100 SXM bf16: 989)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 12; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="first steps left out of the medians (default 3; smoke 1)")
    p.add_argument("--batch", type=int, default=None, help="samples per optimizer step (default 64; smoke 4)")
    p.add_argument("--repeats", type=int, default=1, help="rounds")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--median-len", type=int, default=None, help="median sample length (default 280; smoke 60)")
    p.add_argument("--sigma", type=float, default=0.8)
    p.add_argument("--min-len", type=int, default=None, help="(default 50; smoke 20)")
    p.add_argument("--max-len", type=int, default=None, help="(default 1500; smoke 200)")
    p.add_argument("--hone-max-tokens", type=int, default=None, help="hone max_tokens_per_gpu (default 8192; smoke "
                                                                     "1024)")
    p.add_argument("--trl-pack-len", type=int, default=0,
                   help="trl-best row length (default: --hone-max-tokens on a GPU; on the CPU the longest sample "
                        "rounded up to 64, as in sft_throughput.py)")
    p.add_argument("--attn", choices=("auto", "flash_attention_2", "sdpa"), default="auto",
                   help="auto: flash_attention_2 for both if flash_attn imports on a GPU, else hone's per-sample "
                        "SDPA and TRL's SDPA; sdpa: that second choice always")
    p.add_argument("--trl-gradient-checkpointing", action="store_true")
    p.add_argument("--tokenizer-vocab", type=int, default=None, help="BPE vocabulary (default 8192; smoke 512)")
    p.add_argument("--lexicon", type=int, default=40000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "gpu_mfu"), help="cache and run directory")
    p.add_argument("--no-record", action="store_true", help="do not record in bench/RESULTS.md")
    p.add_argument("--record", action="store_true", help="record a --smoke run too")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    s = args.smoke
    defaults = dict(steps=2 if s else 12, warmup=1 if s else 3, batch=4 if s else 64, median_len=60 if s else 280,
                    min_len=20 if s else 50, max_len=200 if s else 1500, hone_max_tokens=1024 if s else 8192,
                    tokenizer_vocab=512 if s else 8192)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import importlib.util

    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    if args.smoke and args.configs is None:
        args.configs = "hone,trl-best" if importlib.util.find_spec("trl") else "hone"
    configs = [c.strip() for c in (args.configs or "hone,trl-best").split(",") if c.strip()]
    bad = [c for c in configs if c not in ("hone", "trl-best")]
    if bad:
        sys.exit(f"unknown config(s) {bad}; choose from hone, trl-best")
    args.dtype = "bfloat16" if cuda else "float32"
    flash = cuda and args.attn != "sdpa" and importlib.util.find_spec("flash_attn") is not None
    if args.attn == "flash_attention_2" and not flash:
        sys.exit("--attn flash_attention_2: flash_attn does not import here, or there is no GPU")
    attn = {"hone": "flash_attention_2" if flash else "hone_varlen_sdpa (per-sample SDPA)",
            "trl-best": "flash_attention_2" if flash else "sdpa"}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    t_all = time.perf_counter()

    model_dir, shape = build_model(work, args, "cuda" if cuda else "cpu")
    data_args = argparse.Namespace(batch=args.batch, steps=args.steps, median_len=args.median_len, sigma=args.sigma,
                                   min_len=args.min_len, max_len=args.max_len, seed=args.seed, lexicon=args.lexicon)
    data_path, stats = st.build_data(work, model_dir, data_args)
    lengths = sample_lengths(data_path, model_dir)
    fpt, head_fpt = flops_per_token(shape, lengths)
    n_ne = non_embedding_params(shape)
    pack_len = args.trl_pack_len or (args.hone_max_tokens if cuda else 64 * math.ceil(max(lengths) / 64))
    if pack_len < max(lengths):
        sys.exit(f"--trl-pack-len {pack_len} is shorter than the longest sample ({max(lengths)} tokens)")
    step_tokens = args.batch * stats["mean"]
    pack_rows = max(1, round(step_tokens / pack_len))
    spec = {"work": str(work), "model_dir": str(model_dir), "data_path": str(data_path), "batch": args.batch,
            "steps": args.steps, "lr": args.lr, "seed": args.seed, "max_len_cfg": max(args.max_len, max(lengths)),
            "hone_max_tokens": args.hone_max_tokens, "pack_len": pack_len, "pack_rows": pack_rows,
            "trl_gradient_checkpointing": args.trl_gradient_checkpointing, "threads": args.threads,
            "dtype": args.dtype, "trl_attn": "flash_attention_2" if flash else "sdpa",
            "hone_attn": "flash_attention_2" if flash else None}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    print(f"model: Qwen2 {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, vocab "
          f"{shape['vocab_size']}: {n_ne:,} non-embedding parameters, {args.dtype}, "
          f"{'cuda' if cuda else 'cpu'}; attention: hone {attn['hone']}, TRL {attn['trl-best']}")
    print(f"data:  {stats['samples']} chats, tokens/sample mean {stats['mean']:.0f} median {stats['median']:.0f} "
          f"({stats['min']}-{stats['max']}); {args.batch} samples/step; FLOPs/token {fpt / 1e9:.4g} G "
          f"(+ LM head {head_fpt / 1e9:.4g} G); trl-best: {pack_rows} row(s) x {pack_len} tokens per step")

    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for r in range(args.repeats):
        results = {c: work / f"result-{c}-{r}.json" for c in configs}
        for c in configs:
            results[c].unlink(missing_ok=True)
        if cuda:  # one after the other: each run has the GPU (and its memory) to itself
            for c in configs:
                st._round_lockstep([c], spec_path, {c: results[c]}, work, r)
        else:
            st._round_lockstep(configs, spec_path, results, work, r)
        for c in configs:
            raw = json.loads(results[c].read_text())
            runs[c].append({**st.summarise_run(raw, args.warmup), "peak_gpu_gib": raw.get("peak_gpu_gib", 0.0)})

    table, summary = report(runs, fpt, head_fpt, args.peak_tflops, attn)
    print()
    print(table)
    if summary:
        print(summary)
    if not cuda:
        print("(CPU run: the MFU figures are against the GPU peak given by --peak-tflops, so they only show that "
              "the columns are computed)")
    elapsed = time.perf_counter() - t_all
    print(f"\ntotal {elapsed:.0f}s")
    if (not args.no_record and not args.smoke) or args.record:
        record(args, argv, started, elapsed, shape, n_ne, stats, lengths, fpt, head_fpt, spec, attn, table, summary,
               cuda)
        print(f"recorded in {RESULTS} (newest first)")
    return 0


def report(runs, fpt, head_fpt, peak_tflops, attn) -> tuple[str, str]:
    med = {c: {k: statistics.median(r[k] for r in rs) for k in ("median_tok_s", "median_step_s", "tokens_per_step",
                                                                  "peak_rss_mb", "peak_gpu_gib", "first_loss",
                                                                  "final_loss")}
           for c, rs in runs.items()}
    rows = ["| config | attention | real tok/s | step s | tokens/step | model TFLOP/s | MFU | MFU +head | "
            "peak RSS MB | peak GPU GiB | loss first -> last |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c, m in med.items():
        tflops = m["median_tok_s"] * fpt / 1e12
        mfu, mfu_head = 100 * tflops / peak_tflops, 100 * m["median_tok_s"] * (fpt + head_fpt) / 1e12 / peak_tflops
        rows.append(f"| {c} | {attn[c]} | {m['median_tok_s']:.0f} | {m['median_step_s']:.3f} | "
                    f"{m['tokens_per_step']:.0f} | {tflops:.4g} | {mfu:.3g}% | {mfu_head:.3g}% | "
                    f"{m['peak_rss_mb']:.0f} | {m['peak_gpu_gib']:.1f} | {m['first_loss']:.3f} -> {m['final_loss']:.3f} |")
    lines = []
    if "hone" in med and "trl-best" in med:
        lines.append(f"hone / trl-best: {med['hone']['median_tok_s'] / med['trl-best']['median_tok_s']:.2f}x real "
                     f"tokens/s (same FLOPs per token, so the same ratio of MFU)")
    return "\n".join(rows), "\n".join(lines)


def record(args, argv, started, elapsed, shape, n_ne, stats, lengths, fpt, head_fpt, spec, attn, table, summary,
           cuda) -> None:
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/gpu_mfu.py", *(argv or sys.argv[1:])])
    note = f"\n- note: {args.note}" if args.note else ""
    text = f"""## GPU MFU: hone vs TRL SFTTrainer (best), Qwen2.5-1.5B shape (bench/gpu_mfu.py), {started:%Y-%m-%d %H:%M} UTC

- command: `{cmd}`{note}
- commit: `{st.git_commit()}` (blobs: {st.file_versions()}); {st.versions()}
- machine: {st.machine()}; GPU: {gpu_name()}
- model: Qwen2, {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, {shape['num_attention_heads']} heads / {shape['num_key_value_heads']} KV, intermediate {shape['intermediate_size']}, vocab {shape['vocab_size']}, tied; {n_ne / 1e9:.3f}B non-embedding parameters; random weights, {args.dtype}; attention: hone {attn['hone']}, TRL {attn['trl-best']}
- data: {stats['samples']} synthetic chats, tokens/sample log-normal (median {stats['median']:.0f}, mean {stats['mean']:.0f}, {stats['min']}–{stats['max']}); assistant-only loss
- per run: {args.steps} optimizer steps of {args.batch} samples, lr {args.lr}, cosine, AdamW(0.9, 0.95); medians over steps after {args.warmup} warm-up step(s), {args.repeats} round(s), runs {'one after the other' if cuda else 'interleaved step by step'}; hone max_tokens_per_gpu {args.hone_max_tokens}; trl-best = packing bfd + padding_free, {spec['pack_rows']} row(s) x {spec['pack_len']} tokens per step
- FLOPs per token (bench/gpu_mfu.py docstring): sum over samples of 6·N·n + 6·layers·hidden·n², divided by the tokens: {fpt / 1e9:.3f} GFLOP (N = {n_ne / 1e9:.3f}B non-embedding), LM head {head_fpt / 1e9:.3f} GFLOP more in "MFU +head"; peak {args.peak_tflops:g} TFLOP/s
- wall time of the whole benchmark: {elapsed:.0f}s

{table}

{summary}
"""
    insert_section(text, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
