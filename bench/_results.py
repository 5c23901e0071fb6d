"""bench/RESULTS.md: newest section first, old sections never edited.

Every benchmark script records through :func:`insert_section`, which puts the new section right after the file's
header (the title and the paragraph under it, i.e. everything before the first ``## `` heading) and leaves
every existing section byte for byte as it was. The file is written to a temporary name and renamed into place.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmark results

Newest first. Each section is one invocation of a script in `bench/` (see `bench/README.md`), with its exact
command, machine, date and commit; sections are never edited afterwards: a new measurement is a new section,
inserted here, under this paragraph.
"""


def split_header(text: str) -> tuple[str, str]:
    """(header, sections): the header is everything before the first line starting with ``## ``."""
    if text.startswith("## "):
        return "", text
    i = text.find("\n## ")
    return (text, "") if i < 0 else (text[: i + 1], text[i + 1:])


def insert_section(section: str, path: Path = RESULTS) -> Path:
    """Insert ``section`` (markdown starting with a ``## `` heading) after the header of ``path``."""
    section = section.strip("\n") + "\n"
    if not section.startswith("## "):
        raise ValueError("a results section must start with a '## ' heading")
    old = path.read_text(encoding="utf-8") if path.exists() else HEADER
    header, rest = split_header(old)
    new = header.rstrip("\n") + "\n\n" + section + ("\n" + rest if rest else "")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), else what platform knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


def machine() -> str:
    """'<cores> cores (nproc <usable>), <cpu>, <RAM> GiB RAM' for a results section."""
    mem = ""
    try:
        kib = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}{mem}"


def git_commit() -> str:
    """The short HEAD commit, '+dirty' when tracked files differ from it."""
    import subprocess

    root = RESULTS.parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
