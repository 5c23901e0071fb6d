"""Scores of a generated answer against its reference: exact match, contains-match and token F1.

Both texts are normalised first: lower case, punctuation removed, whitespace collapsed (SQuAD's normalisation
without its English-only article removal), so "The capital is Rome." matches "the capital is rome".
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

_PUNCT = set(string.punctuation)
_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.S)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCT or unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def strip_reasoning(text: str) -> str:
    """Drop a leading ``<think>...</think>`` block (reasoning models answer after it)."""
    return _THINK.sub("", text, count=1)


def exact_match(prediction: str, target: str) -> float:
    return float(normalize(prediction) == normalize(target))


def contains_match(prediction: str, target: str) -> float:
    """1.0 when the normalised target occurs in the normalised prediction, on word boundaries."""
    p, t = normalize(prediction), normalize(target)
    if not t:
        return float(not p)
    return float(f" {t} " in f" {p} ")


def token_f1(prediction: str, target: str) -> float:
    """Harmonic mean of word precision and recall (a bag of words, as SQuAD scores it)."""
    p, t = normalize(prediction).split(), normalize(target).split()
    if not p or not t:
        return float(p == t)
    common = sum((Counter(p) & Counter(t)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(t)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, target: str) -> dict[str, float]:
    return {"exact_match": exact_match(prediction, target), "contains": contains_match(prediction, target),
            "f1": token_f1(prediction, target)}
