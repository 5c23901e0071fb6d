"""Wall time of `make demo` once `.venv` exists (issue 10's goal: <= 120 s on a 2-core machine).

    .venv/bin/python bench/demo_time.py [--runs 1]

Each run starts from an empty demo-output/ (tiny model built and pre-trained, the four pipeline stages with OSFT,
the SFT comparison run), then `make demo` is run once more to time the fully cached rerun. Appends a section to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import git_commit, insert_section, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def stage_seconds() -> dict[str, float]:
    import json

    m = json.loads((ROOT / "demo-output" / "pipeline" / "manifest.json").read_text())
    return {k: v.get("duration_s", 0.0) for k, v in m["stages"].items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for i in range(args.runs):
        shutil.rmtree(ROOT / "demo-output", ignore_errors=True)
        load0 = os.getloadavg()[0]
        cold = timed(["make", "demo"])
        stages = stage_seconds()
        warm = timed(["make", "demo"])
        rows.append((cold, warm, stages, load0))
        print(f"run {i + 1}: make demo {cold:.1f}s from scratch, {warm:.1f}s cached; stages {stages}")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## make demo wall time (bench/demo_time.py), {now}", "",
             f"- command: `.venv/bin/python bench/demo_time.py --runs {args.runs}`",
             f"- commit: `{git_commit()}`; machine: {machine()}, Python {platform.python_version()}", "- goal: <= 120 s from an empty demo-output/ (with .venv installed)", "",
             "| run | from scratch s | cached rerun s | dataset s | training s | evaluation s | registration s | 1-min load at start |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, (cold, warm, st, load0) in enumerate(rows, 1):
        lines.append(f"| {i} | {cold:.1f} | {warm:.1f} | {st.get('dataset', 0):.1f} | {st.get('training', 0):.1f} | "
                     f"{st.get('evaluation', 0):.1f} | {st.get('registration', 0):.1f} | {load0:.1f} |")
    insert_section("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
