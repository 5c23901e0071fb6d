"""Every format is detected (or forced), reported, and converts to canonical messages — from JSONL, JSON, CSV
and Parquet alike — and what `hone data prepare` writes reads back unchanged."""
from __future__ import annotations

import csv
import io
import json

import pytest

from hone.config import DataConfig
from hone.data.formats import FormatSpec, detect_format, row_format
from hone.data.problems import RowError
from hone.data.stage import check_dataset, prepare_dataset

from datahelpers import write_jsonl

U, A, S, T = "user", "assistant", "system", "tool"


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# (format, source rows, canonical messages of each row)
CASES = {
    "messages": (
        [{"messages": msgs((S, "Be brief."), (U, "Hi"), (A, "Hello."))},
         {"messages": msgs((U, "2+2?"), (A, "4")), "id": 7}],
        [msgs((S, "Be brief."), (U, "Hi"), (A, "Hello.")), msgs((U, "2+2?"), (A, "4"))]),
    "conversations": (
        [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                            {"from": "gpt", "value": "Hello."}]},
         {"conversations": [{"from": "user", "value": "Weather?"}, {"from": "function_call", "value": "w()"},
                            {"from": "observation", "value": "Sunny"}, {"from": "assistant", "value": "Sunny."}],
          "system": "You can call tools."}],
        [msgs((S, "Be brief."), (U, "Hi"), (A, "Hello.")),
         msgs((S, "You can call tools."), (U, "Weather?"), (A, "w()"), (T, "Sunny"), (A, "Sunny."))]),
    "alpaca": (
        [{"instruction": "Add the numbers.", "input": "2 + 2", "output": "4"},
         {"instruction": "Say hi.", "input": "", "output": "Hi!"}],
        [msgs((U, "Add the numbers.\n\n2 + 2"), (A, "4")), msgs((U, "Say hi."), (A, "Hi!"))]),
    "prompt_completion": (
        [{"prompt": "Capital of France?", "completion": "Paris."},
         {"prompt": "Hi", "completion": "Hello.", "system": "Be nice."}],
        [msgs((U, "Capital of France?"), (A, "Paris.")), msgs((S, "Be nice."), (U, "Hi"), (A, "Hello."))]),
    "text": (
        [{"text": "The cat sat on the mat."}, {"text": "Birds sing."}],
        [msgs(("pretraining", "The cat sat on the mat.")), msgs(("pretraining", "Birds sing."))]),
}


def _write(path, fmt, rows, kind):
    if kind == "jsonl":
        return write_jsonl(path.with_suffix(".jsonl"), rows)
    if kind == "json":
        p = path.with_suffix(".json")
        p.write_text(json.dumps(rows, indent=2))
        return p
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = path.with_suffix(".parquet")
        keys = sorted({k for r in rows for k in r})  # from_pylist takes the schema from the first row only
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), p)
        return p
    p = path.with_suffix(".csv")
    keys = sorted({k for r in rows for k in r})
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    p.write_text(buf.getvalue())
    return p


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
@pytest.mark.parametrize("fmt", list(CASES))
def test_format_round_trips_to_canonical(tmp_path, fmt, kind):
    rows, expected = CASES[fmt]
    src = _write(tmp_path / "data", fmt, rows, kind)
    out = tmp_path / "out"
    report = prepare_dataset(DataConfig(data_path=str(src), train_split_ratio=1.0), out)
    assert report.format == fmt and report.format_detected
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    got = [r["messages"] for r in train]
    if kind == "parquet":  # Parquet structs carry every field of the schema: None-valued ones are dropped
        assert all(set(m) <= {"role", "content"} for r in got for m in r)
    assert got == expected
    assert (out / "eval.jsonl").read_text() == ""
    # the canonical output reads back as messages, unchanged
    again_out = tmp_path / "again"
    again = prepare_dataset(DataConfig(data_path=str(out / "train.jsonl"), train_split_ratio=1.0), again_out)
    assert again.format == "messages"  # canonical rows (pretraining-role messages for text)
    assert (again_out / "train.jsonl").read_text() == (out / "train.jsonl").read_text()


def test_processed_rows_pass_through(tmp_path):
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5],
                                                                "attention_mask": [1, 1]}]
    f = write_jsonl(tmp_path / "p.jsonl", rows)
    report = prepare_dataset(DataConfig(data_path=str(f), train_split_ratio=1.0), tmp_path / "out")
    assert report.format == "processed"
    assert [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()] == [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]


def test_detection_is_by_majority_and_reported(tmp_path):
    rows = [{"text": "a doc"}] + [{"prompt": f"p{i}", "completion": "c"} for i in range(3)]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    r = check_dataset(DataConfig(data_path=str(f)))
    assert r.format == "prompt_completion" and r.format_detected
    assert r.rows == {"read": 4, "valid": 3, "invalid": 1}
    assert r.problems[0]["where"] == f"{f}:1" and "row has no 'prompt' field" in r.problems[0]["message"]


def test_format_override_and_document_column(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"body": "Doc one.", "title": "x"}, {"body": "Doc two.", "title": "y"}])
    with pytest.raises(Exception, match="cannot tell the data format"):
        check_dataset(DataConfig(data_path=str(f)))
    r = check_dataset(DataConfig(data_path=str(f), document_column_name="body"))
    assert r.format == "text" and r.text_column == "body" and r.valid
    r = check_dataset(DataConfig(data_path=str(f), data_format="text", document_column_name="body"))
    assert r.format == "text" and not r.format_detected and r.valid
    r = check_dataset(DataConfig(data_path=str(f), is_pretraining=True, block_size=512, document_column_name="body"))
    assert r.valid and r.roles == {"pretraining": 2}


def test_forced_format_reports_rows_that_do_not_fit(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": msgs((U, "Hi"), (A, "Yo"))}])
    r = check_dataset(DataConfig(data_path=str(f), data_format="alpaca"))
    assert not r.valid and r.format == "alpaca" and not r.format_detected
    assert "row has no 'instruction' field" in r.problems[0]["message"]


def test_conflicting_format_flags():
    with pytest.raises(Exception, match="contradicts use_processed_dataset"):
        DataConfig(data_path="x.jsonl", data_format="alpaca", use_processed_dataset=True)
    with pytest.raises(Exception, match="contradicts is_pretraining"):
        DataConfig(data_path="x.jsonl", data_format="messages", is_pretraining=True, block_size=512)


def test_row_format_and_detect_format_units():
    assert row_format({"messages": []}, ["text"]) == "messages"
    assert row_format({"instruction": "x"}, ["text"]) == "alpaca"
    assert row_format({"document": "x"}, ["document", "text"]) == "text"
    assert row_format([1], ["text"]) is None
    assert detect_format([{"text": "a"}, {"messages": []}], ["text"]) == "messages"  # tie: earlier format wins
    assert detect_format([{"x": 1}], ["text"]) is None


def test_prompt_completion_lists_of_messages():
    spec = FormatSpec("prompt_completion")
    row = {"prompt": msgs((S, "Rules."), (U, "Hi")), "completion": msgs((A, "Hello."))}
    assert spec.convert(row) == {"messages": msgs((S, "Rules."), (U, "Hi"), (A, "Hello."))}


def test_sharegpt_role_content_items_and_errors():
    spec = FormatSpec("conversations")
    assert spec.convert({"conversations": msgs((U, "Hi"), (A, "Yo"))}) == {"messages": msgs((U, "Hi"), (A, "Yo"))}
    with pytest.raises(RowError, match=r"conversations\[0\] has no 'from'"):
        spec.convert({"conversations": [{"value": "Hi"}]})
    with pytest.raises(RowError, match="'conversations' must be a non-empty list"):
        spec.convert({"conversations": []})


def test_messages_legacy_function_role_and_null_fields():
    spec = FormatSpec("messages")
    row = {"messages": [{"role": "user", "content": "Weather?", "name": None},
                        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "w"}}]},
                        {"role": "function", "content": "Sunny"}, {"role": "assistant", "content": "Sunny."}]}
    out = spec.convert(row)["messages"]
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "assistant"]
    assert out[0] == {"role": "user", "content": "Weather?"} and out[1]["tool_calls"]
