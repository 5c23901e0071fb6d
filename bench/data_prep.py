"""Benchmark of data preparation at scale: rows/s and peak RSS of hone's token samples vs the limit and Training Hub.

On N generated conversations (``messages`` rows, a system prompt on half, 1-3 exchanges, median ~180 tokens) with a
32k-vocabulary byte-level BPE tokenizer trained here (``tokenizers``; ChatML template), each measured in its own
process (peak RSS = ru_maxrss of that process and, separately, of its children):

1. hone: ``prepare_data`` (validate, convert, split, tokenize + mask, token samples written memory-mapped) with
   ``--workers`` processes, on an empty hone home (nothing reused); then again (reused: the second run skips
   preparation);
2. the one-process limit: ``apply_chat_template`` on batches of 256 conversations + the fast tokenizer on the
   batch with ``return_offsets_mapping=True``, in one process (JSON parsing not timed);
3. Training Hub's processing: instructlab-training's ``data_process`` in a separate virtualenv (``--ilab-venv``;
   never the project's environment) with ``--workers`` processes, on the same file (skipped above
   ``--ilab-max-rows``, or when the venv is missing: the table says so);
4. token identity: hone's samples against the reference per-row masking (``tokenize_conversation``) on a sample
   of rows, and against Training Hub's ``data.jsonl`` on every row both kept.

    .venv/bin/python bench/data_prep.py --rows 100000 --rows 1000000 --results bench/RESULTS.md
    .venv/bin/python bench/data_prep.py --rows 20000          # a quick look

The ilab venv: ``python3 -m venv /tmp/ilab-venv && /tmp/ilab-venv/bin/pip install torch==2.13.0 &&
/tmp/ilab-venv/bin/pip install instructlab-training==0.16.2``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYLLABLES = "ka lo mi ne ru sa te vo zu pi da ge ho ji ba co fe wu xi yo an el in or us".split()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Words:
    """Pseudo-words with a Zipf frequency law, so a BPE tokenizer learns a realistic 32k vocabulary from them."""

    def __init__(self, seed: int = 0, n: int = 60000):
        rng = random.Random(seed)
        words = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n)})
        rng.shuffle(words)
        self.words = words
        acc, total = [], 0.0
        for i in range(len(words)):
            total += 1 / (i + 1) ** 1.05
            acc.append(total)
        self.cum = acc

    def sentence(self, rng: random.Random, lo: int, hi: int) -> str:
        return " ".join(rng.choices(self.words, cum_weights=self.cum, k=rng.randint(lo, hi))).capitalize() + "."


def make_tokenizer(work: Path, words: Words) -> Path:
    model = work / "tok32k"
    if (model / "tokenizer.json").exists():
        return model
    from hone.models.tiny import make_tiny_model

    rng = random.Random(1)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(words.sentence(rng, 5, 30) for _ in range(120_000)))
    print("training a 32k-vocabulary BPE tokenizer", flush=True)
    make_tiny_model(model, vocab_size=32000, layers=1, hidden=32, heads=2, corpus=corpus)
    return model


def make_conversations(path: Path, rows: int, words: Words, seed: int = 0) -> Path:
    if path.exists():
        return path
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for _ in range(rows):
            msgs = [{"role": "system", "content": words.sentence(rng, 4, 12)}] if rng.random() < 0.5 else []
            for _ in range(rng.randint(1, 3)):
                msgs.append({"role": "user", "content": words.sentence(rng, 6, 30)})
                msgs.append({"role": "assistant", "content": words.sentence(rng, 8, 50)})
            fh.write(json.dumps({"messages": msgs}) + "\n")
    tmp.rename(path)
    return path


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def measure(kind: str, data: str, model: str, workers: int, extra: str) -> dict:
    """Runs inside the child process."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    base = _peak_mb(resource.RUSAGE_SELF)
    cpu0 = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
    out: dict = {"kind": kind, "workers": workers}
    if kind in ("hone", "hone-reuse"):
        from hone.config import DataConfig
        from hone.data.prepare import prepare_data

        start = time.perf_counter()
        result = prepare_data(DataConfig(data_path=data, max_seq_len=8192, train_split_ratio=1.0), tok,
                              num_workers=workers)
        elapsed = time.perf_counter() - start
        r = result.report
        out.update(rows=r.rows["train"], samples=r.samples, tokens=r.tokens, reused=r.reused,
                   samples_path=r.samples_path, tokenize_rows_per_s=r.rows_per_s)
    elif kind == "limit":
        import numpy as np  # noqa: F401  (as hone imports it)

        elapsed, rows, tokens, batch = 0.0, 0, 0, []
        with open(data) as fh:
            for line in fh:
                batch.append(json.loads(line)["messages"])
                if len(batch) == 256:
                    t0 = time.perf_counter()
                    texts = tok.apply_chat_template(batch, tokenize=False)
                    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
                    elapsed += time.perf_counter() - t0
                    rows += len(batch)
                    tokens += sum(len(x) for x in enc["input_ids"])
                    batch = []
        if batch:
            t0 = time.perf_counter()
            enc = tok(tok.apply_chat_template(batch, tokenize=False), add_special_tokens=False,
                      return_offsets_mapping=True)
            elapsed += time.perf_counter() - t0
            rows += len(batch)
            tokens += sum(len(x) for x in enc["input_ids"])
        out.update(rows=rows, tokens=tokens)
    else:  # ilab: Training Hub's data processing, in its own virtualenv
        venv_python, out_dir = extra.split("::")
        start = time.perf_counter()
        proc = subprocess.run([venv_python, "-m", "instructlab.training.data_process", "--data_path", data,
                               "--data_output_path", out_dir, "--max_seq_len", "8192", "--model_name_or_path", model,
                               "--num_cpu_procs", str(workers)], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"data_process failed:\n{proc.stderr[-3000:]}")
        n = sum(1 for _ in open(Path(out_dir) / "data.jsonl"))
        out.update(rows=sum(1 for _ in open(data)), samples=n)
    cpu = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime")) - cpu0
    out.update(cpu_s=cpu, rows_per_cpu_s=out["rows"] / cpu if cpu > 0 else None)
    out.update(elapsed_s=elapsed, rows_per_s=out["rows"] / elapsed, baseline_rss_mb=base,
               peak_rss_mb=_peak_mb(resource.RUSAGE_SELF), children_peak_rss_mb=_peak_mb(resource.RUSAGE_CHILDREN))
    return out


def run_child(kind: str, data: Path, model: Path, workers: int, home: Path, extra: str = "") -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HONE_HOME": str(home)}
    proc = subprocess.run([sys.executable, __file__, "--_measure", kind, str(data), str(model), str(workers), extra],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        print(f"  {kind} failed:\n{proc.stderr[-3000:]}", flush=True)
        return {"kind": kind, "failed": proc.stderr[-1500:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {kind:10s} {out['rows']:>9,} rows  {out['workers']:>2} proc  {out['elapsed_s']:8.1f} s  "
          f"{out['rows_per_s']:>8,.0f} rows/s  peak RSS {out['peak_rss_mb']:.0f} MB (children "
          f"{out['children_peak_rss_mb']:.0f} MB)", flush=True)
    return out


def identity(data: Path, model: Path, samples_path: str, ilab_out: Path | None, n_ref: int) -> dict:
    """hone's samples vs the reference per-row masking on ``n_ref`` rows, and vs Training Hub on every row."""
    from transformers import AutoTokenizer

    from hone.data.samples import TokenSamples
    from hone.data.tokenize import tokenize_conversation

    tok = AutoTokenizer.from_pretrained(model)
    ts = TokenSamples(samples_path)
    ref_ok = ref_n = 0
    with open(data) as fh:
        for i, line in enumerate(fh):
            if i >= n_ref:
                break
            want = tokenize_conversation(tok, json.loads(line)["messages"])
            got = ts[i]
            ref_n += 1
            ref_ok += got.input_ids == want.input_ids and got.labels == want.labels
    res = {"reference_rows": ref_n, "reference_equal": ref_ok}
    if ilab_out is not None and (ilab_out / "data.jsonl").exists():
        eq = n = 0
        with open(ilab_out / "data.jsonl") as fh:
            for i, line in enumerate(fh):
                row = json.loads(line)
                got = ts[i]
                n += 1
                eq += row["input_ids"] == got.input_ids and row["labels"] == got.labels
        res.update(ilab_rows=n, ilab_equal=eq, hone_samples=len(ts))
    return res


def _commit() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _results import git_commit

    return git_commit()


def section(cmd: str, runs: dict, n_cores: int, wall: float) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"## Data preparation at scale: token samples vs the one-process limit vs Training Hub "
             f"(bench/data_prep.py), {when}", "",
             f"Commit: `{_commit()}`. Machine: {n_cores} cores, {platform.processor() or platform.machine()}, Python "
             f"{platform.python_version()}; load average at the end {load} (other work shares the machine). "
             "32k-vocabulary byte-level BPE tokenizer trained here, ChatML template; generated `messages` rows "
             "(system prompt on half, 1-3 exchanges of Zipf pseudo-words). Every measurement a fresh process; "
             f"TOKENIZERS_PARALLELISM=false everywhere. Wall time of the whole run {wall / 60:.1f} min.", "",
             f"Command: `{cmd}`", "",
             "| rows | what | processes | seconds | rows/s | rows per CPU-second | peak RSS MB (process) | "
             "children peak MB |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    names = {"hone": "hone `prepare_data` (validate, split, tokenize + mask, write samples)",
             "hone-reuse": "hone again (samples reused, preparation skipped)",
             "limit": "one-process limit (template + encode with offsets)",
             "ilab": "Training Hub (instructlab-training `data_process`)"}
    for n, rs in runs.items():
        for r in rs["results"]:
            if "failed" in r:
                lines.append(f"| {n:,} | {names[r['kind']]} | | failed: {r['failed'][-200:]!r} | | | | |")
                continue
            lines.append(f"| {r['rows']:,} | {names[r['kind']]} | {r['workers']} | {r['elapsed_s']:.1f} | "
                         f"{r['rows_per_s']:,.0f} | {r.get('rows_per_cpu_s') or 0:,.0f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['children_peak_rss_mb']:.0f} |")
        for note in rs.get("notes", []):
            lines.append(f"| {n:,} | {note} | | | | | | |")
    lines.append("")
    for n, rs in runs.items():
        by = {r["kind"]: r for r in rs["results"] if "failed" not in r}
        h = by.get("hone")
        if not h:
            continue
        parts = [f"{n:,} rows: hone {h['rows_per_s']:,.0f} rows/s end to end ({h.get('tokenize_rows_per_s') or 0:,.0f} "
                 f"rows/s tokenizing), {h.get('tokens', 0) / max(1, h['samples']):.0f} tokens per sample on average"]
        if "limit" in by:
            parts.append(f"{h['rows_per_s'] / by['limit']['rows_per_s']:.2f}x the one-process limit "
                         f"({by['limit']['rows_per_s']:,.0f} rows/s)")
        if "ilab" in by:
            parts.append(f"{h['rows_per_s'] / by['ilab']['rows_per_s']:.2f}x Training Hub "
                         f"({by['ilab']['rows_per_s']:,.0f} rows/s)")
        if "limit" in by and h.get("rows_per_cpu_s") and by["limit"].get("rows_per_cpu_s"):
            parts.append(f"per CPU-second {h['rows_per_cpu_s'] / by['limit']['rows_per_cpu_s']:.2f}x the limit's "
                         "(what two free cores would multiply)")
        parts.append(f"peak RSS {h['peak_rss_mb']:.0f} MB (workers {h['children_peak_rss_mb']:.0f} MB)")
        if "hone-reuse" in by:
            parts.append(f"second run {by['hone-reuse']['elapsed_s']:.1f} s (reused)")
        ident = rs.get("identity")
        if ident:
            parts.append(f"token-identical to the reference masking on {ident['reference_equal']:,} of "
                         f"{ident['reference_rows']:,} rows checked" + (
                             f", to Training Hub on {ident['ilab_equal']:,} of {ident['ilab_rows']:,} rows"
                             if "ilab_rows" in ident else ""))
        lines.append("- " + "; ".join(parts) + ".")
    lines += ["", "Goals (issue 20): >= 5x Training Hub's rows/s, >= 1.6x the one-process limit with two workers, "
              "peak RSS under 1 GB at 1M rows, token-identical output. Reading the figures: the encoding with "
              "offsets is most of the one-process limit, and hone must encode every token once, so per CPU-second "
              "hone can at best equal the limit; two workers then give at most 2x the limit when both cores are "
              "free, and less when other work shares them (the load average above). Training Hub on the same "
              "file is already a fair part of the limit, so 5x Training Hub would need more than two cores' worth "
              "of the limit: not reachable on two cores; the ratio per CPU-second is the machine-independent "
              "figure. RSS: the samples stream to disk (int32 ids, a uint8 mask, int64 offsets) and are read "
              "memory-mapped; what grows with the rows is the list of source locations kept for error messages."]
    return "\n".join(lines) + "\n"


def write_results(path: Path, text: str) -> None:
    """A new section right after the file's header (newest first); earlier sections stay as they are."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _results import insert_section

    insert_section(text, path)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_measure":
        kind, data, model, workers, extra = sys.argv[2:7]
        print(json.dumps(measure(kind, data, model, int(workers), extra)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="conversations (repeat for several sizes; "
                    "default 100000)")
    ap.add_argument("--workers", type=int, default=cores(), help="processes for hone and Training Hub")
    ap.add_argument("--ilab-venv", default="/tmp/ilab-venv", help="virtualenv with instructlab-training")
    ap.add_argument("--ilab-max-rows", type=int, default=200_000, help="run Training Hub up to this many rows")
    ap.add_argument("--limit-max-rows", type=int, default=200_000, help="measure the limit up to this many rows "
                    "(it is per row: larger sets use the figure of the largest size measured)")
    ap.add_argument("--check-rows", type=int, default=2000, help="rows compared with the reference masking")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "data_prep"), help="scratch directory")
    ap.add_argument("--results", help="write the results section into this markdown file (e.g. bench/RESULTS.md)")
    args = ap.parse_args()
    sizes = args.rows or [100_000]
    t_start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    words = Words()
    model = make_tokenizer(work, words)
    ilab_python = Path(args.ilab_venv) / "bin" / "python"
    runs: dict = {}
    for n in sizes:
        print(f"{n:,} conversations", flush=True)
        data = make_conversations(work / f"messages-{n}.jsonl", n, words)
        home = work / f"home-{n}-{os.getpid()}"
        results, notes = [run_child("hone", data, model, args.workers, home)], []
        results.append(run_child("hone-reuse", data, model, args.workers, home))
        if n <= args.limit_max_rows:
            results.append(run_child("limit", data, model, 1, home))
        else:
            notes.append(f"limit not measured at this size (per-row cost; see the {args.limit_max_rows:,}-row figure)")
        ilab_out = None
        if n > args.ilab_max_rows:
            notes.append(f"Training Hub not run at this size (above --ilab-max-rows {args.ilab_max_rows:,})")
        elif not ilab_python.exists():
            notes.append(f"Training Hub not run: no virtualenv at {args.ilab_venv}")
        else:
            ilab_out = work / f"ilab-{n}"
            results.append(run_child("ilab", data, model, args.workers, home, f"{ilab_python}::{ilab_out}"))
        ident = None
        hone = results[0]
        if "failed" not in hone:
            ident = identity(data, model, hone["samples_path"], ilab_out, args.check_rows)
            print(f"  identity: {ident}", flush=True)
        runs[n] = {"results": results, "notes": notes, "identity": ident}
        subprocess.run(["rm", "-rf", str(home)])
    (work / "results.json").write_text(json.dumps(runs, indent=2, default=str))
    cmd = ".venv/bin/python bench/data_prep.py " + " ".join(a for a in sys.argv[1:] if a)
    text = section(cmd.strip(), runs, cores(), time.perf_counter() - t_start)
    print("\n" + text)
    if args.results:
        write_results(Path(args.results), text)
        print(f"written to {args.results}")


if __name__ == "__main__":
    main()
