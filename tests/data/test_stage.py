"""The dataset stage's outputs: train/eval split and subset (seeded), dataset_report.json, token lengths,
atomic writes; and the parallel tokenizer matching the sequential one."""
from __future__ import annotations

import hashlib
import json
import math

import pytest

from hone.config import DataConfig
from hone.data.parallel import tokenize_rows
from hone.data.split import select
from hone.data.stage import check_dataset, prepare_dataset
from hone.data.tokenize import tokenize_conversation

from datahelpers import chat_rows, write_jsonl


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_prepare_writes_canonical_split_and_report(tmp_path):
    rows = chat_rows(20)
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    report = prepare_dataset(DataConfig(data_path=str(f), train_split_ratio=0.75), out, seed=7)
    assert sorted(p.name for p in out.iterdir()) == ["dataset_report.json", "eval.jsonl", "train.jsonl"]
    train, evals = lines(out / "train.jsonl"), lines(out / "eval.jsonl")
    assert (len(train), len(evals)) == (15, 5)
    assert sorted(map(json.dumps, train + evals)) == sorted(map(json.dumps, rows))  # a partition
    assert train == [r for r in rows if r in train]  # original order kept
    saved = json.loads((out / "dataset_report.json").read_text())
    assert saved == report.to_json()
    assert saved["rows"] == {"read": 20, "valid": 20, "invalid": 0, "train": 15, "eval": 5}
    assert saved["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert saved["format"] == "messages" and saved["source"] == str(f)
    assert saved["roles"] == {"user": 20, "assistant": 20}
    assert saved["turns"] == {"min": 2, "max": 2, "mean": 2.0, "histogram": {"2": 20}}
    assert saved["selection"] == {"subset": 0, "train_split_ratio": 0.75, "seed": 7, "skip_invalid": False}
    assert saved["outputs"]["train"]["sha256"] == hashlib.sha256((out / "train.jsonl").read_bytes()).hexdigest()
    assert saved["outputs"]["eval"]["rows"] == 5
    # same seed, same split; another seed, another split
    again = tmp_path / "again"
    prepare_dataset(DataConfig(data_path=str(f), train_split_ratio=0.75), again, seed=7)
    assert (again / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()
    other = tmp_path / "other"
    prepare_dataset(DataConfig(data_path=str(f), train_split_ratio=0.75), other, seed=8)
    assert (other / "train.jsonl").read_bytes() != (out / "train.jsonl").read_bytes()


def test_ratio_one_or_more_puts_everything_in_train(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(5))
    for ratio in (1.0, 3.0):
        out = tmp_path / f"out{ratio}"
        report = prepare_dataset(DataConfig(data_path=str(f), train_split_ratio=ratio), out)
        assert report.rows["train"] == 5 and report.rows["eval"] == 0
        assert (out / "eval.jsonl").read_text() == ""


def test_subset_is_a_seeded_sample(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(50))
    out = tmp_path / "out"
    report = prepare_dataset(DataConfig(data_path=str(f), subset=10, train_split_ratio=0.8), out, seed=3)
    assert report.rows["valid"] == 50 and (report.rows["train"], report.rows["eval"]) == (8, 2)
    chosen = lines(out / "train.jsonl") + lines(out / "eval.jsonl")
    assert len({json.dumps(r) for r in chosen}) == 10


def test_select_units():
    sel = select(10, train_split_ratio=0.9, seed=1)
    assert (sel.train_rows, sel.eval_rows) == (9, 1)
    assign = sel.assign()
    got = [assign(i) for i in range(10)]
    assert got.count("eval") == 1 and got.count("train") == 9
    sel = select(1, train_split_ratio=0.1)
    assert (sel.train_rows, sel.eval_rows) == (1, 0)  # train keeps at least one row
    sel = select(100, subset=10, train_split_ratio=0.5, seed=2)
    assign = sel.assign()
    got = [assign(i) for i in range(100)]
    assert got.count(None) == 90 and got.count("train") == 5 and got.count("eval") == 5


def test_skip_invalid_leaves_rows_out_and_counts_them(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(4) + ["{broken", {"messages": []}])
    report = prepare_dataset(DataConfig(data_path=str(f), train_split_ratio=1.0), tmp_path / "out",
                             skip_invalid=True)
    assert report.rows == {"read": 6, "valid": 4, "invalid": 2, "train": 4, "eval": 0}
    assert [p["where"] for p in report.problems] == [f"{f}:5", f"{f}:6"]
    assert report.problems[1] == {"where": f"{f}:6", "field": "messages", "kind": "empty_value",
                                  "message": "'messages' must be a non-empty list of {role, content} objects"}


def test_token_lengths_and_rows_over_max_seq_len(tmp_path, tiny_tokenizer):
    rows = chat_rows(30) + [{"messages": [{"role": "user", "content": "word " * 60},
                                          {"role": "assistant", "content": "ok"}]}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    expected = sorted(len(tokenize_conversation(tiny_tokenizer, r["messages"]).input_ids) for r in rows)
    limit = expected[-2]
    report = check_dataset(DataConfig(data_path=str(f), max_seq_len=limit), tiny_tokenizer, tokenizer_name="tiny")
    t = report.token_lengths
    n = len(expected)
    assert t["rows"] == n and t["max"] == expected[-1] and t["tokenizer"] == "tiny"
    assert (t["p50"], t["p90"], t["p99"]) == tuple(expected[math.ceil(p / 100 * n) - 1] for p in (50, 90, 99))
    assert t["over_max_seq_len"] == 1 and t["max_seq_len"] == limit
    out = tmp_path / "out"
    prepared = prepare_dataset(DataConfig(data_path=str(f), max_seq_len=limit, train_split_ratio=1.0), out,
                               tiny_tokenizer, tokenizer_name="tiny")
    assert prepared.token_lengths == report.token_lengths


def test_parallel_tokenization_matches_sequential(tiny_tokenizer):
    rows = chat_rows(40) + [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                            {"messages": [{"role": "pretraining", "content": "A document."}]}]
    one = list(tokenize_rows(rows, tiny_tokenizer, workers=1))
    two = list(tokenize_rows(rows, tiny_tokenizer, workers=2, chunk=7))
    assert one == two and len(one) == 42
    assert list(tokenize_rows([json.dumps(r) for r in rows], tiny_tokenizer, workers=2, chunk=5,
                              lengths_only=True)) == [len(t.input_ids) for t in one]


def test_check_with_tokenizer_needs_a_chat_template(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from hone.errors import HoneError

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(2))
    with pytest.raises(HoneError, match="no chat template"):
        check_dataset(DataConfig(data_path=str(f)), tok)
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": "A document."}])
    assert check_dataset(DataConfig(data_path=str(docs)), tok).token_lengths["rows"] == 1


def test_training_split_writes_eval_rows(tmp_path, tiny_tokenizer):
    from hone.data.prepare import prepare_data

    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(10))
    out = tmp_path / "data"
    data = prepare_data(DataConfig(data_path=str(f), train_split_ratio=0.8, subset=5), tiny_tokenizer, out)
    assert data.report.rows["train"] == 4 and data.report.eval_rows == 1 and data.report.samples == 4
    assert len(lines(out / "eval.jsonl")) == 1
    assert data.report.format == "messages" and data.report.source == str(f)
