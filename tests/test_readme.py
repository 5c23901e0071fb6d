"""The README is a runnable tutorial: every shell command in its ```bash / ```sh / ```console blocks runs, in
order, in a fresh copy of the repository, offline, with the project's .venv first on PATH.

A command that needs what this machine has not (a cluster, a GPU, the network) ends with a comment
``# needs: cluster`` (or ``gpu``, ``network``); it is not run, and is reported as a skipped test of its own
(``-ra`` lists them). ``make test`` is not run either: it would run this test again. The quick start of
``hone --help`` is checked to use only shipped files or files made by its own earlier commands.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NEEDS = re.compile(r"#\s*needs:\s*([\w ,-]+?)\s*$")
NOT_RUN = {"make test": "runs the whole test suite, this test included"}
INPUT_FLAGS = ("--data", "--config", "--eval-data", "--base", "--tokenizer", "--include-path", "--model")


@dataclass
class Command:
    text: str           # as run (continuation lines joined)
    line: int           # where it starts in README.md
    skip: str | None    # why it is not run


def _strip_comment(text: str) -> str:
    """The command without a trailing ``# ...`` comment (a '#' outside quotes, after a space)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    block: str | None = None
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w-]*)", raw)
        if fence:
            block = None if block is not None else fence.group(1).lower()
            continue
        if block not in ("bash", "sh", "shell", "console"):
            continue
        line = raw.rstrip()
        if not pending:
            if block == "console":  # only the prompt lines are commands; the rest is their output
                if not line.lstrip().startswith("$ "):
                    continue
                line = line.lstrip()[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        needs = NEEDS.search(full)
        command = _strip_comment(full)
        skip = f"needs {needs.group(1)}" if needs else NOT_RUN.get(command)
        commands.append(Command(command, start, skip))
    assert not pending, "a README command ends with a line continuation"
    return commands


COMMANDS = readme_commands(README.read_text())


def test_readme_starts_with_the_two_commands():
    first = [c.text for c in COMMANDS[:2]]
    assert first == ["make demo", "make test"]
    head = README.read_text().split("\n## ", 1)[0]
    assert "source .venv/bin/activate" in head and ".venv/bin/hone" in head


def _inputs_exist(commands: list[str], root: Path, what: str) -> None:
    """Every input a command names (--data FILE, --model DIR, ...) is shipped or made by an earlier command."""
    made: set[str] = set()
    for command in commands:
        words = shlex.split(command)
        for flag, value in zip(words, words[1:]):
            if flag in INPUT_FLAGS and not value.startswith(("hf://", "s3://", "oci://", "http")):
                norm = value.rstrip("/")
                shipped = (root / norm).exists()
                earlier = any(norm == m or norm.startswith(m + "/") for m in made)
                assert shipped or earlier, f"{what}: {command!r} uses {value}, which is neither shipped nor made before"
        for flag, value in zip(words, words[1:]):
            if flag == "--output":
                made.add(value.rstrip("/"))
        if words[:2] == ["make", "demo"]:
            made.add("demo-output")


def test_readme_and_quick_start_use_only_shipped_or_earlier_files():
    _inputs_exist([c.text for c in COMMANDS], ROOT, "README.md")
    from hone.cli.main import cli

    help_text = cli.help or ""
    quick = [line.strip().split("  #")[0].strip() for line in help_text.split("Quick start", 1)[1].splitlines()[1:]
             if line.strip().startswith("hone ")]
    assert len(quick) >= 3 and quick[0].startswith("hone tiny-model")
    _inputs_exist(quick, ROOT, "hone --help's quick start")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.skip], ids=lambda c: f"README.md:{c.line}")
def test_readme_command_not_run_here(command):
    pytest.skip(f"README.md:{command.line} not run ({command.skip}): {command.text}")


def _venv() -> Path | None:
    for venv in (ROOT / ".venv", Path(sys.prefix)):
        if (venv / "bin" / "hone").is_file() and (venv / "pyvenv.cfg").is_file():
            return venv
    return None


def _fresh_copy(dest: Path, venv: Path) -> None:
    """The repository's files as a clone would have them (tracked, and new files not ignored), and a .venv
    that is the project's (linked, not installed again) with a fresh install stamp, so that `make demo` runs
    the demo and does not reinstall."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venv").mkdir()
    for name in ("bin", "lib", "lib64", "include", "pyvenv.cfg"):
        if (venv / name).exists():
            (dest / ".venv" / name).symlink_to(venv / name)
    (dest / ".venv" / ".hone-installed").touch()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_runs_as_written(tmp_path):
    venv = _venv()
    if venv is None:
        pytest.skip("no virtual environment with hone installed (run `make test`)")
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("needs make and git")
    repo = tmp_path / "hone"
    repo.mkdir()
    _fresh_copy(repo, venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HONE_", "PYTEST_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    timings: list[str] = []
    for command in COMMANDS:
        if command.skip:
            timings.append(f"  skipped  README.md:{command.line}  {command.text}  ({command.skip})")
            continue
        start = time.monotonic()
        proc = subprocess.run(["bash", "-c", command.text], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=600)
        seconds = time.monotonic() - start
        timings.append(f"  {seconds:6.1f}s  README.md:{command.line}  {command.text}")
        output = (proc.stdout + proc.stderr)[-4000:]
        assert proc.returncode == 0, f"README.md:{command.line}: `{command.text}` exited {proc.returncode}:\n{output}"
        if command.text == "make demo":  # the demo says how to reach hone, and registers where hone looks
            assert "source .venv/bin/activate" in proc.stdout, proc.stdout[-2000:]
        if command.text.startswith("hone registry list"):
            assert "demo-osft" in proc.stdout, proc.stdout
    print("README commands:\n" + "\n".join(timings))
