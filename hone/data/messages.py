"""Validate chat samples in the messages format (pure functions, no tokenizer)."""
from __future__ import annotations

from typing import Any

from hone.data.problems import RowError

ROLES = ("system", "user", "assistant", "tool", "pretraining")


def check_messages(row: Any, *, unmask_messages: bool = False) -> None:
    """Raise :class:`RowError` (kind, field, message) for the first thing wrong with one canonical row."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is a {type(row).__name__}, expected a JSON object with a 'messages' list")
    if "messages" not in row:
        keys = ", ".join(sorted(map(str, row))) or "none"
        raise RowError("missing_field", f"row has no 'messages' field (keys: {keys})", "messages")
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        kind = "empty_value" if isinstance(msgs, list) else "wrong_type"
        raise RowError(kind, "'messages' must be a non-empty list of {role, content} objects", "messages")
    roles = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RowError("wrong_type", f"messages[{i}] is a {type(m).__name__}, expected an object with 'role' and "
                           "'content'", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise RowError("unknown_role" if "role" in m else "missing_field",
                           f"messages[{i}] has unknown role {role!r} (allowed: {', '.join(ROLES)})",
                           f"messages[{i}].role")
        content = m.get("content")
        if content is None and m.get("tool_calls"):
            content = ""  # OpenAI style: a tool-call-only turn has null content
        if not isinstance(content, str):
            raise RowError("wrong_type", f"messages[{i}] ({role}) content is {type(content).__name__}, expected a "
                           "string", f"messages[{i}].content")
        if not content.strip() and not m.get("tool_calls"):
            raise RowError("empty_value", f"messages[{i}] ({role}) content is empty", f"messages[{i}].content")
        rc = m.get("reasoning_content")
        if rc is not None and (role != "assistant" or not isinstance(rc, str)):
            raise RowError("wrong_type", f"messages[{i}] reasoning_content must be a string on an assistant message",
                           f"messages[{i}].reasoning_content")
        roles.append(role)
    if "pretraining" in roles and set(roles) != {"pretraining"}:
        raise RowError("mixed_pretraining",
                       "a sample with a 'pretraining' message must hold only 'pretraining' messages", "messages")
    if "pretraining" not in roles and "assistant" not in roles and not unmask_messages:
        raise RowError("no_assistant_turn", "conversation has no assistant turn, so nothing would be trained (or set "
                       "unmask_messages=True)", "messages")


def validate_messages(row: Any, *, unmask_messages: bool = False) -> str | None:
    """Return a description of what is wrong with one row, or None when it is a valid chat sample."""
    try:
        check_messages(row, unmask_messages=unmask_messages)
    except RowError as err:
        return err.message
    return None

