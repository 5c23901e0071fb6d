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

import json
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
    masked_msgs, located, trained = _with_sentinels(messages, unmask_messages)
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

    ends = {i: (_prefix_end(tokenizer, messages[:i], text, add_generation_prompt=messages[i]["role"] == "assistant"),
                _prefix_end(tokenizer, messages[:i + 1], text)) for i, t in enumerate(trained) if t}
    return text, _assemble_spans(messages, text, order, located, value_spans, ends)


def _with_sentinels(messages: list[dict[str, Any]], unmask: bool
                    ) -> tuple[list[dict[str, Any]], list[tuple[int, str]], list[bool]]:
    """(messages with each text field replaced by a numbered sentinel, (message index, field) per sentinel
    number, which messages are trained)."""
    trained = [m["role"] == "assistant" or (unmask and m["role"] != "system") for m in messages]
    located: list[tuple[int, str]] = []
    masked = []
    for i, m in enumerate(messages):
        m2 = dict(m)
        for key in ("reasoning_content", "content"):
            # every message gets sentinels (not only trained ones): they bound the end-of-turn search
            if isinstance(m.get(key), str) and m[key]:
                m2[key] = _SENTINEL.format(len(located))
                located.append((i, key))
        masked.append(m2)
    return masked, located, trained


def _assemble_spans(messages: list[dict[str, Any]], text: str, order: list[int], located: list[tuple[int, str]],
                    value_spans: list[tuple[int, int]], ends: dict[int, tuple[int | None, int | None]]
                    ) -> list[tuple[int, int, int, int | None]]:
    """The spans of :func:`trainable_spans` from where each text field sits in ``text`` (``value_spans``, in
    sentinel ``order``) and, per trained message, where the rendering before it and up to it end (``ends``)."""
    by_message: dict[int, list[tuple[int, int]]] = {}
    for n, span in zip(order, value_spans):
        by_message.setdefault(located[n][0], []).append(span)
    starts = sorted(s for s, _ in value_spans) + [len(text)]
    spans = []
    for i, (before, turn_end) in ends.items():
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
    return spans


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


# -- the batched path: the same spans and labels, one render per conversation ------------------------------------

class RowError(Exception):
    """A row that cannot be tokenized: ``index`` in the batch, what is wrong, how to fix it."""

    def __init__(self, index: int, message: str, fix: str):
        super().__init__(message)
        self.index, self.message, self.fix = index, message, fix


def _labels_from_spans(ids: list[int], offsets: list[tuple[int, int]], spans, special) -> list[int]:
    """:func:`tokenize_conversation`'s labelling of ``ids`` (step for step the same walk, with the token starts and
    ends unpacked once)."""
    n = len(ids)
    labels = [IGNORE] * n
    if not spans or not n:
        return labels
    begins, ends_at = zip(*offsets)
    t = 0
    for start, content_end, limit, turn_end in spans:
        while t < n and ends_at[t] <= start:
            t += 1
        first = t
        if turn_end is not None:
            while t < n and begins[t] < turn_end:
                t += 1
            # the last special token of the turn after the content (scanning back: it is usually the last token)
            last = next((u for u in range(t - 1, first - 1, -1) if ids[u] in special and begins[u] >= content_end),
                        None)
            if last is not None:
                stop = last + 1
            elif content_end > start:
                stop = next((u for u in range(first, t) if begins[u] >= content_end), t)
            else:
                stop = t
            labels[first:stop] = ids[first:stop]
            t = stop
            continue
        while t < n and begins[t] < content_end:
            t += 1
        u = t
        while u < n and begins[u] < limit and ids[u] not in special:
            u += 1
        stop = u + 1 if u < n and begins[u] < limit and ids[u] in special else t
        labels[first:stop] = ids[first:stop]
        t = stop
    return labels


def _template_error(err: Exception) -> str:
    return f"the chat template rejects this conversation: {type(err).__name__}: {err}"


TEMPLATE_FIX = ("change the row so the model's chat template accepts it (e.g. merge a system message into the first "
                "user turn when the template supports no system role), leave it out, or use another model")
SURROGATE_FIX = ("the text holds a lone UTF-16 surrogate (e.g. \\ud800, from a broken JSON escape): fix or remove "
                 "that character, or leave the row out")


def _surrogate_check(texts: list[str]) -> None:
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        for k, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as err:
                raise RowError(k, f"the text holds a lone surrogate {t[err.start]!r} (not valid Unicode text)",
                               SURROGATE_FIX) from None


class _Plan:
    """What rendering a conversation's sentinel form told about its template: shared by every conversation whose
    messages differ only in the text of their ``content`` / ``reasoning_content`` values."""

    __slots__ = ("pieces", "order", "located", "trained", "prefix", "slow")

    def __init__(self):
        self.slow = False


class BatchTokenizer:
    """Chat conversations -> exactly :func:`tokenize_conversation`'s ids and labels, in batches.

    Per batch: the conversations are rendered once each (the template applied to the batch), encoded with offsets
    in one call of the fast tokenizer, and labelled from character spans. The spans come from a *plan* cached per
    conversation shape (roles, tool calls, which text fields are set, the row's unmask): the sentinel rendering
    and the prefix renderings that :func:`trainable_spans` does for every row are done once per shape, in
    sentinel coordinates, and moved onto each row's text. That holds exactly when the row's rendering is its
    sentinel rendering with the values put back; any row where it is not (a template that trims or rewrites
    content) goes through :func:`tokenize_conversation` itself, as does everything when the tokenizer is not fast.
    """

    MAX_PLANS = 20000

    def __init__(self, tokenizer, *, special_ids: frozenset[int] | None = None):
        self.tokenizer = tokenizer
        self.special = special_ids if special_ids is not None else special_token_ids(tokenizer)
        self.backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self.plans: dict[Any, _Plan] = {}
        self.slow_rows = 0

    # -- rendering
    def _render_batch(self, convs: list[list[dict]]) -> list[str]:
        try:
            out = self.tokenizer.apply_chat_template(convs, tokenize=False) if convs else []
            if isinstance(out, str):
                out = [out]
            return list(out)
        except Exception:  # find the row, render the rest
            texts = []
            for k, c in enumerate(convs):
                try:
                    texts.append(_render(self.tokenizer, c))
                except HoneError:
                    raise
                except Exception as err:  # the template's own exception (raise_exception, a missing key...)
                    raise RowError(k, _template_error(err), TEMPLATE_FIX) from None
            return texts

    def _encode(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        if self.backend is not None:
            encs = self.backend.encode_batch(texts, add_special_tokens=False)
            return [(e.ids, e.offsets) for e in encs]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(enc["input_ids"], enc["offset_mapping"]))

    # -- plans
    def _plan(self, masked: list[dict], located: list[tuple[int, str]], trained: list[bool]) -> _Plan:
        plan = _Plan()
        plan.located, plan.trained = located, trained
        s_text = _render(self.tokenizer, masked)
        parts = _SENTINEL_RE.split(s_text)
        plan.pieces, plan.order = parts[0::2], [int(n) for n in parts[1::2]]
        if len(set(plan.order)) != len(plan.order):
            plan.slow = True  # tokenize_conversation raises its error for such a template
            return plan
        # a position in the sentinel text as (pieces before it, offset in that piece)
        bounds = []
        pos = 0
        for k, piece in enumerate(plan.pieces):
            bounds.append((pos, pos + len(piece)))
            pos += len(piece) + (len(_SENTINEL.format(plan.order[k])) if k < len(plan.order) else 0)

        def locate(p: int | None):
            if p is None:
                return None
            for k, (a, b) in enumerate(bounds):
                if a <= p <= b:
                    return k, p - a
            plan.slow = True  # inside a sentinel: not something a rendering ends on
            return None

        plan.prefix = {}
        for i in (i for i, t in enumerate(trained) if t):
            before = _prefix_end(self.tokenizer, masked[:i], s_text,
                                 add_generation_prompt=masked[i]["role"] == "assistant")
            turn_end = _prefix_end(self.tokenizer, masked[:i + 1], s_text)
            plan.prefix[i] = (locate(before), locate(turn_end))
        return plan

    def _spans(self, plan: _Plan, messages: list[dict], text: str):
        """The spans :func:`trainable_spans` finds for ``messages`` rendered as ``text``, or None when ``text`` is
        not the plan's sentinel rendering with the values put back (the row then takes the reference path)."""
        values = [messages[plan.located[n][0]][plan.located[n][1]] for n in plan.order]
        starts_in_text, piece_starts = [], []
        pos = 0
        for k, piece in enumerate(plan.pieces):
            if not text.startswith(piece, pos):
                return None
            piece_starts.append(pos)
            pos += len(piece)
            if k < len(values):
                if not text.startswith(values[k], pos):
                    return None
                starts_in_text.append(pos)
                pos += len(values[k])
        if pos != len(text):
            return None
        value_spans = [(s, s + len(v)) for s, v in zip(starts_in_text, values)]
        at = lambda loc: None if loc is None else piece_starts[loc[0]] + loc[1]  # noqa: E731
        ends = {i: (at(b), at(e)) for i, (b, e) in plan.prefix.items()}
        return _assemble_spans(messages, text, plan.order, plan.located, value_spans, ends)

    def _shape(self, messages: list[dict], unmask: bool):
        return _with_sentinels(messages, unmask)

    # -- the batch
    def tokenize(self, convs: list[list[dict[str, Any]]], unmask: list[bool]) -> list[Tokenized]:
        """One :class:`Tokenized` per conversation (chat or pretraining messages), equal to
        ``tokenize_conversation(tokenizer, messages, unmask_messages=unmask[k])``. A row the template rejects or
        whose text is not valid Unicode raises :class:`RowError` with its index."""
        out: list[Tokenized | None] = [None] * len(convs)
        chat, chat_idx = [], []
        for k, messages in enumerate(convs):
            if messages and messages[0]["role"] == "pretraining":
                text = "\n".join(m["content"] for m in messages)
                try:
                    _surrogate_check([text])
                except RowError as err:
                    raise RowError(k, err.message, err.fix) from None
                out[k] = tokenize_document(self.tokenizer, text)
            else:
                chat.append([m if m.get("content") is not None else {**m, "content": ""} for m in messages])
                chat_idx.append(k)
        if not chat:
            return out  # type: ignore[return-value]
        try:
            texts = self._render_batch(chat)
            _surrogate_check(texts)
        except RowError as err:
            raise RowError(chat_idx[err.index], err.message, err.fix) from None
        spans_of: list[Any] = []
        for j, (messages, text) in enumerate(zip(chat, texts)):
            um = unmask[chat_idx[j]]
            spans = None
            if self.backend is not None:
                masked, located, trained = self._shape(messages, um)
                if not any(trained):
                    spans = []
                else:
                    key = (um, json.dumps(masked, sort_keys=True, ensure_ascii=False, default=str))
                    plan = self.plans.get(key)
                    if plan is None:
                        if len(self.plans) >= self.MAX_PLANS:
                            self.plans.clear()
                        try:
                            plan = self.plans[key] = self._plan(masked, located, trained)
                        except Exception:
                            plan = _Plan()
                            plan.slow = True
                    if not plan.slow:
                        spans = self._spans(plan, messages, text)
            spans_of.append(spans)
        fast = [j for j, s in enumerate(spans_of) if s is not None]
        for j, (ids, offsets) in zip(fast, self._encode([texts[j] for j in fast])):
            out[chat_idx[j]] = Tokenized(list(ids), _labels_from_spans(ids, offsets, spans_of[j], self.special))
        for j, s in enumerate(spans_of):
            if s is None:
                self.slow_rows += 1
                try:
                    out[chat_idx[j]] = tokenize_conversation(self.tokenizer, convs[chat_idx[j]],
                                                             unmask_messages=unmask[chat_idx[j]],
                                                             special_ids=self.special)
                except HoneError:
                    raise
                except Exception as err:
                    raise RowError(chat_idx[j], _template_error(err), TEMPLATE_FIX) from None
        return out  # type: ignore[return-value]
