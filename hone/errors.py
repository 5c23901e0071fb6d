"""The one exception type users see: what was wrong, where, and how to fix it."""
from __future__ import annotations

import difflib
from typing import Iterable


class HoneError(ValueError):
    """A user-facing error. The CLI prints ``str(err)`` without a traceback and exits 2.

    A ``ValueError`` (as Training Hub's configuration errors are), so ``except ValueError`` catches it.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [what]
        if where:
            parts.append(f"  where: {where}")
        if fix:
            parts.append(f"  fix: {fix}")
        super().__init__("\n".join(parts))


def suggest(name: str, valid: Iterable[str], n: int = 3) -> str:
    """'did you mean' text for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, sorted(valid), n=n, cutoff=0.6)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def embedded(err: Exception) -> "HoneError | None":
    """The :class:`HoneError` a validator raised inside a pydantic ``ValidationError`` (pydantic wraps every
    ``ValueError`` raised by a validator), or None."""
    for item in getattr(err, "errors", lambda: [])():
        inner = (item.get("ctx") or {}).get("error")
        if isinstance(inner, HoneError):
            return inner
    return None
