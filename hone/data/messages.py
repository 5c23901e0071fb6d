"""Validate chat samples in the messages format (pure functions, no tokenizer)."""
from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant", "tool", "pretraining")


def validate_messages(row: Any, *, unmask_messages: bool = False) -> str | None:
    """Return a description of what is wrong with one row, or None when it is a valid chat sample."""
    if not isinstance(row, dict):
        return f"row is a {type(row).__name__}, expected a JSON object with a 'messages' list"
    if "messages" not in row:
        keys = ", ".join(sorted(map(str, row))) or "none"
        return f"row has no 'messages' field (keys: {keys})"
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty list of {role, content} objects"
    roles = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages[{i}] is a {type(m).__name__}, expected an object with 'role' and 'content'"
        role = m.get("role")
        if role not in ROLES:
            return f"messages[{i}] has unknown role {role!r} (allowed: {', '.join(ROLES)})"
        content = m.get("content")
        if content is None and m.get("tool_calls"):
            content = ""  # OpenAI style: a tool-call-only turn has null content
        if not isinstance(content, str):
            return f"messages[{i}] ({role}) content is {type(content).__name__}, expected a string"
        if not content.strip() and not m.get("tool_calls"):
            return f"messages[{i}] ({role}) content is empty"
        rc = m.get("reasoning_content")
        if rc is not None and (role != "assistant" or not isinstance(rc, str)):
            return f"messages[{i}] reasoning_content must be a string on an assistant message"
        roles.append(role)
    if "pretraining" in roles and set(roles) != {"pretraining"}:
        return "a sample with a 'pretraining' message must hold only 'pretraining' messages"
    if "pretraining" not in roles and "assistant" not in roles and not unmask_messages:
        return "conversation has no assistant turn, so nothing would be trained (or set unmask_messages=True)"
    return None
