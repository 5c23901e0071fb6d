"""bench/gpu_mfu.py --smoke runs end to end on the CPU (tiny model, 2 steps) and prints its table, so the GPU
benchmark does not rot between the sessions that have a GPU. Not a timed test: only the table is checked."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_mfu_smoke_prints_tokens_per_second_and_mfu(tmp_path):
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_mfu.py"), "--smoke", "--threads", "1",
                           "--work", str(tmp_path / "work")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if re.match(r"\| (hone|trl-best) \|", line)]
    assert rows and rows[0].startswith("| hone |"), proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        tok_s, mfu, mfu_head = float(cells[2]), cells[6], cells[7]
        assert tok_s > 0, row
        assert re.fullmatch(r"[0-9.e+-]+%", mfu) and float(mfu[:-1]) > 0, row
        assert re.fullmatch(r"[0-9.e+-]+%", mfu_head) and float(mfu_head[:-1]) > float(mfu[:-1]), row
    assert "FLOPs/token" in proc.stdout
    # a smoke run records nothing
    assert (results.read_bytes() if results.exists() else None) == before
