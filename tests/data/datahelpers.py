"""Helpers shared by the data tests (imported by name: tests/ has no packages)."""
from __future__ import annotations

import json
import socket
from pathlib import Path

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
SECRET = "hone-test-secret-do-not-print-9f8e7d"
KEY_ID = "HONETESTKEYID123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(n)]
