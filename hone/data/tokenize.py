"""Chat samples -> ``input_ids`` + ``labels`` with the tokenizer's own chat template.

Masking must work for *any* template, and most real templates have no ``{% generation %}`` markers, so
hone finds the trainable text itself: it renders the conversation once with every trainable value replaced
by a unique sentinel, which splits the rendered text into template pieces; the real rendering is then
walked piece by piece to find the exact character span of each value (this also copes with templates that
trim or reformat content). A trained turn covers everything the model would generate for it: from the end
of the generation prompt (``add_generation_prompt=True`` on the preceding messages) through the first
special token after its content (the end-of-turn token). Character spans become token labels through the
fast tokenizer's offset mapping.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hone.errors import HoneError

IGNORE = -100
_SENTINEL = "\u27e6hone{}\u27e7"  # ⟦hone0⟧: survives templates untouched, never meets real text
_SENTINEL_RE = re.compile("\u27e6hone(\\d+)\u27e7")


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_loss_tokens(self) -> int:
        """Tokens that are next-token targets with loss (the first token never is one)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


def check_chat_tokenizer(tokenizer, where: str = "model_path") -> None:
    """Raise a clear error when ``tokenizer`` cannot be used for chat masking."""
    if not getattr(tokenizer, "chat_template", None):
        raise HoneError(
            "the tokenizer has no chat template, so chat samples cannot be rendered",
            where=where,
            fix="use an instruct/chat model, add a chat_template to tokenizer_config.json, or train on "
                "pre-processed data (use_processed_dataset=True) or documents (is_pretraining=True)",
        )
    if not getattr(tokenizer, "is_fast", False):
        raise HoneError("a fast (Rust) tokenizer is required for exact label masking", where=where,
                        fix="save the tokenizer with tokenizer.json (transformers' fast tokenizer)")


def special_token_ids(tokenizer) -> frozenset[int]:
    ids = set(tokenizer.all_special_ids)
    for idx, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            ids.add(int(idx))
    return frozenset(ids)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def trainable_spans(tokenizer, messages: list[dict[str, Any]], *, unmask_messages: bool = False
                    ) -> tuple[str, list[tuple[int, int, int, int | None]]]:
    """Render ``messages`` and return ``(text, spans)``, one span per trained message.

    A span is ``(start, content_end, limit, turn_end)`` in characters. ``start`` is where the model's output
    begins (after the generation prompt for assistant turns); ``turn_end`` is where the message's rendering
    ends (from rendering the conversation up to it), or None when the template does not render prefixes
    consistently — the caller then trains through the first special token after ``content_end`` that starts
    before ``limit`` (where the next message's text begins).
    """
    trained = [m["role"] == "assistant" or (unmask_messages and m["role"] != "system") for m in messages]
    located: list[tuple[int, str]] = []  # (message index, field) per sentinel number
    masked_msgs = []
    for i, m in enumerate(messages):
        m2 = dict(m)
        for key in ("reasoning_content", "content"):
            # every message gets sentinels (not only trained ones): they bound the end-of-turn search
            if isinstance(m.get(key), str) and m[key]:
                m2[key] = _SENTINEL.format(len(located))
                located.append((i, key))
        masked_msgs.append(m2)

    text = _render(tokenizer, messages)
    if not any(trained):
        return text, []
    sentinel_text = _render(tokenizer, masked_msgs)
    parts = _SENTINEL_RE.split(sentinel_text)  # piece, n, piece, n, ..., piece
    pieces, order = parts[0::2], [int(n) for n in parts[1::2]]
    if len(set(order)) != len(order):
        raise HoneError("the chat template renders a message's content more than once; hone cannot tell which "
                        "copy to train on", where="tokenizer chat_template",
                        fix="use a template that renders each message once")
    value_spans = _walk(text, pieces, [messages[located[n][0]][located[n][1]] for n in order])

    by_message: dict[int, list[tuple[int, int]]] = {}
    for n, span in zip(order, value_spans):
        by_message.setdefault(located[n][0], []).append(span)
    starts = sorted(s for s, _ in value_spans) + [len(text)]
    spans = []
    for i in (i for i, t in enumerate(trained) if t):
        before = _prefix_end(tokenizer, messages[:i], text, add_generation_prompt=messages[i]["role"] == "assistant")
        turn_end = _prefix_end(tokenizer, messages[:i + 1], text)
        vs = by_message.get(i)
        if vs:
            start, content_end = min(s for s, _ in vs), max(e for _, e in vs)
            if messages[i]["role"] == "assistant" and before is not None and before <= start:
                start = before
        elif before is not None and turn_end is not None and before < turn_end:
            start = content_end = before  # no text fields (e.g. only tool calls): the whole rendered turn
        else:
            continue  # rendered nowhere we can find: nothing to train in this message
        if turn_end is not None and turn_end < content_end:
            turn_end = None
        spans.append((start, content_end, next(s for s in starts if s >= content_end), turn_end))
    return text, spans


def _prefix_end(tokenizer, messages: list[dict], text: str, add_generation_prompt: bool = False) -> int | None:
    """Length of the rendering of ``messages`` when it is a prefix of ``text`` (else None)."""
    if not messages:
        return 0 if not add_generation_prompt else None
    try:
        prefix = _render(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    except Exception:  # e.g. a template that insists on a complete conversation
        return None
    return len(prefix) if text.startswith(prefix) else None


def _walk(text: str, pieces: list[str], values: list[str]) -> list[tuple[int, int]]:
    """Character spans of ``values`` in ``text`` = pieces[0] v0 pieces[1] v1 ... pieces[-1]."""
    def fail(what: str) -> HoneError:
        return HoneError(f"cannot locate message text in the rendered chat template ({what})",
                         where="tokenizer chat_template",
                         fix="the template must render message content (possibly trimmed) between fixed text; "
                             "pre-tokenize the data yourself and use use_processed_dataset=True")

    if not text.startswith(pieces[0]) or not text.endswith(pieces[-1]):
        raise fail("template text differs around the messages")
    cursor, spans = len(pieces[0]), []
    for k, value in enumerate(values):
        nxt, last = pieces[k + 1], k + 1 == len(values)
        if text.startswith(value, cursor) and (
                text.endswith(nxt, cursor + len(value)) if last else text.startswith(nxt, cursor + len(value))):
            end = cursor + len(value)
        elif last:
            end = len(text) - len(nxt)
        elif nxt:
            end = text.find(nxt, cursor)
        else:
            raise fail("two values are rendered with nothing between them")
        if end < cursor:
            raise fail(f"value {k} not found")
        spans.append((cursor, end))
        cursor = end + len(nxt)
    return spans


def tokenize_conversation(tokenizer, messages: list[dict[str, Any]], *, unmask_messages: bool = False,
                          special_ids: frozenset[int] | None = None) -> Tokenized:
    """Tokenize one conversation; labels are -100 except the trained turns and their end-of-turn token."""
    if messages and messages[0]["role"] == "pretraining":
        return tokenize_document(tokenizer, "\n".join(m["content"] for m in messages))
    messages = [m if m.get("content") is not None else {**m, "content": ""} for m in messages]
    text, spans = trainable_spans(tokenizer, messages, unmask_messages=unmask_messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    special = special_ids if special_ids is not None else special_token_ids(tokenizer)
    labels = [IGNORE] * len(ids)
    t = 0
    for start, content_end, limit, turn_end in spans:
        while t < len(ids) and offsets[t][1] <= start:
            t += 1
        first = t
        if turn_end is not None:
            # the whole rendered turn, through its last special token (the end-of-turn), not the separator after
            while t < len(ids) and offsets[t][0] < turn_end:
                t += 1
            ends = [u for u in range(first, t) if ids[u] in special and offsets[u][0] >= content_end]
            if ends:
                stop = ends[-1] + 1
            elif content_end > start:  # no end-of-turn token: the template's separator is not the model's
                stop = next((u for u in range(first, t) if offsets[u][0] >= content_end), t)
            else:
                stop = t
            labels[first:stop] = ids[first:stop]
            t = stop
            continue
        while t < len(ids) and offsets[t][0] < content_end:  # tokens overlapping the turn
            t += 1
        # extend through the end-of-turn token: the first special token before the next message's text
        u = t
        while u < len(ids) and offsets[u][0] < limit and ids[u] not in special:
            u += 1
        stop = u + 1 if u < len(ids) and offsets[u][0] < limit and ids[u] in special else t
        labels[first:stop] = ids[first:stop]
        t = stop
    return Tokenized(list(ids), labels)


def tokenize_document(tokenizer, text: str) -> Tokenized:
    """A raw document: BOS (if the tokenizer has one) + text + EOS, every token trained."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return Tokenized(ids, list(ids))
