"""Paths of the shipped example evaluation tasks (a uniquely named module: test dirs share sys.path)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = ROOT / "examples" / "eval" / "tasks"
HOLDOUT = ROOT / "examples" / "eval" / "holdout.jsonl"
