"""What is wrong with one row: where it is, which field, what was expected, and a kind for the summary."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Problem kinds (the keys of the summary by problem). Each row gets at most one problem: the first found.
KINDS = {
    "invalid_json": "not valid JSON",
    "invalid_utf8": "not valid UTF-8",
    "not_an_object": "row is not an object",
    "missing_field": "a required field is missing",
    "wrong_type": "a field has the wrong type",
    "empty_value": "a field is empty",
    "unknown_role": "unknown role or speaker",
    "no_assistant_turn": "nothing to train on (no assistant turn)",
    "mixed_pretraining": "pretraining mixed with chat roles",
    "length_mismatch": "input_ids and labels differ in length",
    "bad_csv_row": "CSV row with the wrong number of fields",
    "duplicate_key": "the same key twice in one object",
    "invalid_text": "text that is not valid Unicode (lone surrogate)",
}


class RowError(Exception):
    """Raised by converters and validators for one row; becomes a :class:`Problem` with the row's location."""

    def __init__(self, kind: str, message: str, field: str | None = None):
        super().__init__(message)
        self.kind, self.message, self.field = kind, message, field


@dataclass(frozen=True)
class Problem:
    where: str          # file:line, file[index], or dataset[split][index]
    kind: str           # one of KINDS
    message: str        # what is wrong and what is expected
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "field": self.field, "kind": self.kind, "message": self.message}
