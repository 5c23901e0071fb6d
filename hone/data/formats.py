"""Row layouts: detect which one a dataset uses and convert each row to the canonical form.

The canonical form is ``{"messages": [{"role", "content", ...}, ...]}`` (roles: system, user, assistant, tool,
pretraining); processed rows stay ``{"input_ids": [...], "labels": [...]}``. Every converter checks the
fields of its own layout (so a problem names the field the user wrote, e.g. ``conversations[2].from``) and
raises :class:`~hone.data.problems.RowError`; the messages it builds are then checked like any chat row.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from hone.data.messages import check_messages
from hone.data.problems import RowError

# name -> what a row of that layout looks like (for messages and docs)
FORMATS: dict[str, str] = {
    "messages": "{'messages': [{'role', 'content'}, ...]}",
    "conversations": "{'conversations': [{'from': 'human'|'gpt'|..., 'value'}, ...]} (ShareGPT)",
    "alpaca": "{'instruction', 'input' (optional), 'output'} (Alpaca)",
    "prompt_completion": "{'prompt', 'completion'}",
    "text": "{'<document_column_name>' or 'text': '...'} (plain text, pretraining)",
    "processed": "{'input_ids': [...], 'labels': [...]} (already tokenized)",
}
# every field a layout reads (what column_names may map)
FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",), "conversations": ("conversations", "system"),
    "alpaca": ("instruction", "input", "output", "system"), "prompt_completion": ("prompt", "completion", "system"),
    "text": (), "processed": ("input_ids", "labels"),
}
ALIASES = {"sharegpt": "conversations", "chat": "messages", "pretraining": "text", "instruction": "alpaca",
           "prompt-completion": "prompt_completion", "tokenized": "processed"}

# ShareGPT speaker names -> canonical roles
SPEAKERS = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "model": "assistant", "function_call": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool", "function_response": "tool", "ipython": "tool",
}
DETECT_ROWS = 100  # rows looked at to detect the format


@dataclass(frozen=True)
class FormatSpec:
    """The format of a dataset and what converting it needs."""

    name: str
    text_column: str = "text"
    unmask_messages: bool = False
    detected: bool = False
    columns: tuple[tuple[str, str], ...] = ()  # (field, the column that holds it) where they differ

    def __post_init__(self) -> None:
        unknown = [f for f, _ in self.columns if f not in FIELDS[self.name]]
        if unknown:
            from hone.errors import HoneError

            raise HoneError(f"column_names names {', '.join(map(repr, unknown))}, which {self.name} rows do not "
                            "have", where="column_names (field_* of lora)",
                            fix=f"map fields of {self.name} rows: {', '.join(FIELDS[self.name]) or 'none'}")

    def required_columns(self) -> list[str]:
        cols = dict(self.columns)
        return [cols.get(f, f) for f in self._required()]

    def _required(self) -> list[str]:
        return {"messages": ["messages"], "conversations": ["conversations"], "alpaca": ["instruction", "output"],
                "prompt_completion": ["prompt", "completion"], "text": [self.text_column],
                "processed": ["input_ids", "labels"]}[self.name]

    def convert(self, row: Any) -> dict[str, Any]:
        """Canonical form of one row; raises :class:`RowError`."""
        if not isinstance(row, dict):
            raise RowError("not_an_object", f"row is a {type(row).__name__}, expected a JSON object "
                           f"({FORMATS[self.name]})")
        out = _CONVERTERS[self.name](self._renamed(row) if self.columns else row, self)
        if self.name != "processed":
            check_messages(out, unmask_messages=self.unmask_messages or out.get("unmask") is True)
        return out

    def _renamed(self, row: dict) -> dict:
        """The row with each mapped column under its field's name (a column named like a mapped field is not read)."""
        cols = dict(self.columns)
        out = {k: v for k, v in row.items() if k not in cols and k not in cols.values()}
        for f, col in cols.items():
            if col in row:
                out[f] = row[col]
            elif f in self._required():
                keys = ", ".join(sorted(map(str, row))) or "none"
                raise RowError("missing_field", f"row has no {col!r} field (the column given for {f!r}; keys: "
                               f"{keys})", col)
        return out


def normalize_format(name: str) -> str:
    from hone.errors import HoneError, suggest

    key = name.strip().lower().replace("-", "_") if name else "auto"
    key = ALIASES.get(key, ALIASES.get(name, key))
    if key != "auto" and key not in FORMATS:
        hint = suggest(key, list(FORMATS) + list(ALIASES))
        raise HoneError(f"unknown data format {name!r}" + (f": {hint}" if hint else ""), where="data_format",
                        fix=f"use auto or one of {', '.join(FORMATS)}")
    return key


def row_format(row: Any, text_columns: Iterable[str]) -> str | None:
    """The layout one row looks like (by its keys), or None."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "conversations"
    if "input_ids" in row:
        return "processed"
    if "instruction" in row:
        return "alpaca"
    if "prompt" in row:
        return "prompt_completion"
    if any(c in row for c in text_columns):
        return "text"
    return None


def detect_format(rows: list[Any], text_columns: Iterable[str]) -> str | None:
    """The layout most of ``rows`` look like (ties go to the earlier name in FORMATS), or None."""
    cols = list(text_columns)
    votes = Counter(f for f in (row_format(r, cols) for r in rows) if f)
    if not votes:
        return None
    order = list(FORMATS)
    return max(votes, key=lambda f: (votes[f], -order.index(f)))


def text_column_for(rows: list[Any], document_column_name: str) -> str:
    """``document_column_name`` when rows have it, else ``text``."""
    have = Counter(c for r in rows if isinstance(r, dict) for c in (document_column_name, "text") if c in r)
    if have[document_column_name] or not have["text"]:
        return document_column_name
    return "text"


# -- converters ------------------------------------------------------------------------------------------------

def _string(row: dict, key: str, fmt: str, *, optional: bool = False, field: str | None = None) -> str | None:
    field = field or key
    if key not in row or row[key] is None:
        if optional:
            return None
        keys = ", ".join(sorted(map(str, row))) or "none"
        raise RowError("missing_field", f"row has no {key!r} field (keys: {keys}); {fmt} rows look like "
                       f"{FORMATS[fmt]}", field)
    value = row[key]
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{field} is {type(value).__name__}, expected a string", field)
    return value


def _nonempty(value: str, field: str) -> str:
    if not value.strip():
        raise RowError("empty_value", f"{field} is empty", field)
    return value


def _system(row: dict) -> list[dict]:
    s = row.get("system")
    if s is None or s == "":
        return []
    if not isinstance(s, str):
        raise RowError("wrong_type", f"system is {type(s).__name__}, expected a string", "system")
    return [{"role": "system", "content": s}]


def _clean(m: dict) -> dict:
    """Drop keys whose value is None (Parquet/Arrow rows have every column of the struct)."""
    if None not in m.values():
        return m
    return {k: v for k, v in m.items() if v is not None or k in ("role", "content")}


def _messages(row: dict, spec: FormatSpec) -> dict:
    msgs = row.get("messages")
    if isinstance(msgs, list) and any(isinstance(m, dict) and (None in m.values() or m.get("role") == "function")
                                      for m in msgs):
        # OpenAI's legacy 'function' role is a tool result
        msgs = [m if not isinstance(m, dict) else {**_clean(m), "role": "tool"} if m.get("role") == "function"
                else _clean(m) for m in msgs]
    if "messages" not in row:
        return dict(row)  # check_messages explains a missing field
    if isinstance(msgs, list):
        _no_content_parts(msgs, "messages")
    unmask = row.get("unmask")
    if unmask is None:
        return {"messages": msgs}
    if not isinstance(unmask, bool):
        raise RowError("wrong_type", f"unmask is {type(unmask).__name__}, expected true or false", "unmask")
    # instructlab-training's per-row switch: this conversation trains on every non-system turn
    return {"messages": msgs, "unmask": unmask} if unmask else {"messages": msgs}


def _no_content_parts(msgs: list, field: str) -> None:
    """Content given as a list of parts (OpenAI's multimodal form) is refused with what to write instead: joining
    the text parts would guess at separators, and other parts (images, audio) cannot be trained on here."""
    for i, m in enumerate(msgs):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            kinds = sorted({str(p.get("type")) for p in content if isinstance(p, dict)} or {"?"})
            raise RowError("wrong_type", f"{field}[{i}] content is a list of parts (types: {', '.join(kinds)}), "
                           "expected a string: hone trains on text chats; write the text as one string "
                           "(join the text parts yourself, leave out images/audio)", f"{field}[{i}].content")


def _conversations(row: dict, spec: FormatSpec) -> dict:
    conv = row.get("conversations")
    if "conversations" not in row:
        _string(row, "conversations", "conversations")
    if not isinstance(conv, list) or not conv:
        raise RowError("wrong_type" if not isinstance(conv, list) else "empty_value",
                       "'conversations' must be a non-empty list of {from, value} objects", "conversations")
    out = _system(row)
    for i, turn in enumerate(conv):
        f = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"{f} is a {type(turn).__name__}, expected an object with 'from' and "
                           "'value'", f)
        if "from" in turn or "value" in turn:
            speaker = turn.get("from")
            if speaker is None:
                raise RowError("missing_field", f"{f} has no 'from' (the speaker: human, gpt, system, tool)",
                               f"{f}.from")
            role = SPEAKERS.get(str(speaker).lower())
            if role is None:
                raise RowError("unknown_role", f"{f}.from is {speaker!r}, expected one of "
                               f"{', '.join(sorted(set(SPEAKERS)))}", f"{f}.from")
            value = turn.get("value")
            if not isinstance(value, str):
                raise RowError("wrong_type" if "value" in turn else "missing_field",
                               f"{f}.value is {type(value).__name__}, expected a string", f"{f}.value")
            out.append({"role": role, "content": value})
        else:  # already role/content
            out.append(_clean(turn))
    return {"messages": out}


def _alpaca(row: dict, spec: FormatSpec) -> dict:
    instruction = _nonempty(_string(row, "instruction", "alpaca"), "instruction")
    extra = _string(row, "input", "alpaca", optional=True)
    output = _nonempty(_string(row, "output", "alpaca"), "output")
    user = instruction if not extra or not extra.strip() else f"{instruction}\n\n{extra}"
    return {"messages": _system(row) + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]}


def _turns(value: Any, field: str, default_role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": default_role, "content": _nonempty(value, field)}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return [_clean(m) for m in value]  # conversational prompt/completion (lists of messages)
    raise RowError("wrong_type", f"{field} is {type(value).__name__}, expected a string or a list of "
                   "{role, content} messages", field)


def _prompt_completion(row: dict, spec: FormatSpec) -> dict:
    for key in ("prompt", "completion"):
        if row.get(key) is None:
            _string(row, key, "prompt_completion")
    return {"messages": _system(row) + _turns(row["prompt"], "prompt", "user")
            + _turns(row["completion"], "completion", "assistant")}


def _text(row: dict, spec: FormatSpec) -> dict:
    col = spec.text_column
    if col not in row:
        msgs = row.get("messages")  # canonical pretraining rows (what `hone data prepare` writes) read back
        if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and m.get("role") == "pretraining"
                                                   for m in msgs):
            return {"messages": [_clean(m) for m in msgs]}
    value = row.get(col)
    if not isinstance(value, str):
        what = "no string column" if col not in row or value is None else f"a {type(value).__name__} in column"
        raise RowError("missing_field" if col not in row else "wrong_type", f"row has {what} {col!r}"
                       + (" (set document_column_name to the column that holds the text)" if col not in row else ""),
                       col)
    return {"messages": [{"role": "pretraining", "content": _nonempty(value, col)}]}


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _processed(row: dict, spec: FormatSpec) -> dict:
    if "input_ids" not in row or "labels" not in row:
        missing = [k for k in ("input_ids", "labels") if k not in row]
        raise RowError("missing_field", "row needs 'input_ids' and 'labels' (use_processed_dataset=True)", missing[0])
    ids, labels = row["input_ids"], row["labels"]
    if not (_int_list(ids) and _int_list(labels)):
        raise RowError("wrong_type", "'input_ids' and 'labels' must be lists of integers",
                       "input_ids" if not _int_list(ids) else "labels")
    if len(ids) != len(labels):
        raise RowError("length_mismatch", f"'input_ids' has {len(ids)} tokens but 'labels' has {len(labels)}",
                       "labels")
    if not ids:
        raise RowError("empty_value", "'input_ids' is empty", "input_ids")
    bad_id = next((i for i, v in enumerate(ids) if v < 0), None)
    if bad_id is not None:
        raise RowError("wrong_type", f"input_ids[{bad_id}] is {ids[bad_id]}: token ids are 0 or more", "input_ids")
    bad_label = next((i for i, v in enumerate(labels) if v < 0 and v != -100), None)
    if bad_label is not None:
        raise RowError("wrong_type", f"labels[{bad_label}] is {labels[bad_label]}: a label is a token id (0 or more) "
                       "or -100 (no loss on that token)", "labels")
    return {"input_ids": list(ids), "labels": list(labels)}


_CONVERTERS: dict[str, Callable[[dict, FormatSpec], dict]] = {
    "messages": _messages, "conversations": _conversations, "alpaca": _alpaca,
    "prompt_completion": _prompt_completion, "text": _text, "processed": _processed,
}
