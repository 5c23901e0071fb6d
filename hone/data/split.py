"""Subset and train/eval split of the valid rows: seeded, order-preserving, memory O(subset + eval rows)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hone.errors import HoneError


@dataclass(frozen=True)
class Selection:
    """Which of ``n`` valid rows go to train and which to eval (rows keep their original order)."""

    n: int
    keep: frozenset[int] | None     # None: every row (no subset)
    eval: frozenset[int]            # positions among the kept rows
    train_rows: int
    eval_rows: int

    def assign(self) -> "_Assigner":
        return _Assigner(self)


class _Assigner:
    """Call with consecutive row indices 0..n-1; returns 'train', 'eval' or None (not in the subset)."""

    def __init__(self, sel: Selection):
        self.sel, self.kept = sel, 0

    def __call__(self, i: int) -> str | None:
        if self.sel.keep is not None and i not in self.sel.keep:
            return None
        pos, self.kept = self.kept, self.kept + 1
        return "eval" if pos in self.sel.eval else "train"


def select(n: int, *, subset: int = 0, train_split_ratio: float = 1.0, seed: int = 42,
           where: str = "data_path") -> Selection:
    """Choose a seeded subset of ``subset`` rows (0 = all), then a seeded eval split of the rest.

    ``train_split_ratio >= 1.0`` puts every row in train (the eval split is empty); the train split always
    keeps at least one row.
    """
    if subset is None:
        subset = 0
    if subset < 0:
        raise HoneError(f"subset must be 0 (all rows) or a positive number of rows (got {subset})",
                        where="parameter subset", fix="pass subset=0 or a positive int")
    if not train_split_ratio > 0:
        raise HoneError(f"train_split_ratio must be greater than 0 (got {train_split_ratio})",
                        where="parameter train_split_ratio",
                        fix="use e.g. 0.9 (90% train, 10% eval), or 1.0 to train on every row")
    if subset > n:
        raise HoneError(f"subset={subset} but the data has only {n} valid row(s)", where=f"parameter subset ({where})",
                        fix=f"pass subset={n} or less, or 0 for every row")
    keep = frozenset(random.Random(seed).sample(range(n), subset)) if subset else None
    m = subset or n
    if train_split_ratio >= 1.0:
        n_train = m
    else:
        n_train = max(1, min(m, math.floor(m * train_split_ratio + 0.5)))
    n_eval = m - n_train
    eval_pos = frozenset(random.Random(seed + 1).sample(range(m), n_eval)) if n_eval else frozenset()
    return Selection(n, keep, eval_pos, n_train, n_eval)
