"""read_records and prepare_data on real files with the tiny tokenizer."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from hone.config import DataConfig
from hone.data.prepare import prepare_data
from hone.data.sources import read_records
from hone.data.tokenize import IGNORE, tokenize_conversation, tokenize_document
from hone.errors import HoneError


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def conv(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


SHORT = conv("Hi", "Hello")
LONG = conv("Hi", "Hello friend, the weather is nice today and the sun is shining over the hills.")


# -- read_records ----------------------------------------------------------------------------------------

def test_read_records_locations_count_blank_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"a": 1}\n\n   \n{"a": 2}\n', encoding="utf-8")
    recs = list(read_records(f))
    assert [r.where for r in recs] == [f"{f}:1", f"{f}:4"]
    assert [r.row for r in recs] == [{"a": 1}, {"a": 2}]


def test_invalid_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"messages": []}\n\n{"messages": []}\n{"messages": [\n{"messages": []}\n', encoding="utf-8")
    with pytest.raises(HoneError) as info:
        list(read_records(f))
    assert f"{f}:4" in str(info.value)
    assert "invalid JSON" in str(info.value)


def test_invalid_jsonl_through_prepare_data(tmp_path, tok):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"messages": SHORT}) + "\n" + "{not json}\n", encoding="utf-8")
    with pytest.raises(HoneError) as info:
        prepare_data(DataConfig(data_path=str(f)), tok)
    assert f"{f}:2" in str(info.value)


def test_json_array_file(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"a": 1}, {"a": 2}]), encoding="utf-8")
    assert [(r.where, r.row) for r in read_records(f)] == [(f"{f}[0]", {"a": 1}), (f"{f}[1]", {"a": 2})]


def test_invalid_json_array_names_file_and_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n  {"a": 1},\n  {"a": 2,}\n]\n', encoding="utf-8")
    with pytest.raises(HoneError) as info:
        list(read_records(f))
    assert f"{f}:3" in str(info.value)


def test_missing_data_file(tmp_path, tok):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(HoneError) as info:
        list(read_records(missing))
    assert f"data file not found: {missing}" in str(info.value)
    with pytest.raises(HoneError, match="data file not found"):
        prepare_data(DataConfig(data_path=str(missing)), tok)


def test_empty_data_file(tmp_path, tok):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n", encoding="utf-8")
    with pytest.raises(HoneError, match="no rows"):
        prepare_data(DataConfig(data_path=str(f)), tok)


def test_invalid_rows_are_all_reported_with_location(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": SHORT}, {"msgs": SHORT},
                                           {"messages": [{"role": "bot", "content": "x"}]}])
    with pytest.raises(HoneError) as info:
        prepare_data(DataConfig(data_path=str(f)), tok)
    msg = str(info.value)
    assert "2 invalid row(s)" in msg
    assert f"{f}:2: row has no 'messages' field" in msg
    assert f"{f}:3: messages[0] has unknown role 'bot'" in msg


# -- filtering and the report ----------------------------------------------------------------------------

def test_too_long_rows_are_dropped_not_truncated(tmp_path, tok):
    short = tokenize_conversation(tok, SHORT)
    long = tokenize_conversation(tok, LONG)
    assert len(long.input_ids) > len(short.input_ids)
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": SHORT}, {"messages": LONG}, {"messages": SHORT}])
    data = prepare_data(DataConfig(data_path=str(f), max_seq_len=len(short.input_ids)), tok)
    assert [s.input_ids for s in data.samples] == [short.input_ids, short.input_ids]
    assert [s.labels for s in data.samples] == [short.labels, short.labels]
    r = data.report
    assert (r.rows["train"], r.samples, r.dropped_too_long, r.dropped_no_loss_tokens) == (3, 2, 1, 0)
    assert r.dropped_examples == [f"{f}:2: {len(long.input_ids)} tokens > {len(short.input_ids)}"]
    assert r.tokens == 2 * len(short.input_ids)
    assert r.loss_tokens == 2 * short.num_loss_tokens
    assert r.max_len == len(short.input_ids)
    assert data.lengths == [len(short.input_ids)] * 2
    # the limit is inclusive: one token short drops the long row, exactly its length keeps it
    data = prepare_data(DataConfig(data_path=str(f), max_seq_len=len(long.input_ids) - 1), tok)
    assert data.report.samples == 2 and data.report.dropped_too_long == 1
    data = prepare_data(DataConfig(data_path=str(f), max_seq_len=len(long.input_ids)), tok)
    assert data.report.samples == 3 and data.report.dropped_too_long == 0
    assert data.samples[1].input_ids == long.input_ids


def test_rows_without_trainable_tokens_are_dropped(tmp_path, tok):
    # unmask_messages=True makes a system-only conversation valid, but system is never trained
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "system", "content": "Only rules here."}]},
                                           {"messages": SHORT}])
    data = prepare_data(DataConfig(data_path=str(f), unmask_messages=True), tok)
    r = data.report
    assert (r.rows["train"], r.samples, r.dropped_too_long, r.dropped_no_loss_tokens) == (2, 1, 0, 1)
    assert r.dropped_examples == [f"{f}:1: no trainable token"]
    assert data.samples[0] == tokenize_conversation(tok, SHORT, unmask_messages=True)


def test_processed_rows_without_loss_are_dropped(tmp_path, tok):
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"input_ids": [5, 6, 7], "labels": [IGNORE, IGNORE, IGNORE]},
        {"input_ids": [5, 6, 7], "labels": [5, IGNORE, IGNORE]},  # only the first token: never a target
        {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
    ])
    data = prepare_data(DataConfig(data_path=str(f), use_processed_dataset=True), tok)
    assert data.report.dropped_no_loss_tokens == 2
    assert [(s.input_ids, s.labels) for s in data.samples] == [([5, 6, 7], [IGNORE, 6, 7])]
    assert data.report.loss_tokens == 2


def test_every_sample_dropped_is_an_error(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": LONG}, {"messages": LONG}])
    with pytest.raises(HoneError) as info:
        prepare_data(DataConfig(data_path=str(f), max_seq_len=5), tok)
    assert "every sample was dropped (2 longer than max_seq_len=5, 0 with no trainable token)" in str(info.value)


def test_every_sample_dropped_writes_nothing(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "system", "content": "Rules."}]}])
    out = tmp_path / "out"
    with pytest.raises(HoneError, match="1 with no trainable token"):
        prepare_data(DataConfig(data_path=str(f), unmask_messages=True), tok, output_dir=out)
    assert not (out / "data.jsonl").exists()


# -- processed data round trip -----------------------------------------------------------------------------

def test_processed_output_round_trips(tmp_path, tok):
    rows = [{"messages": SHORT}, {"messages": LONG},
            {"messages": [{"role": "system", "content": "Be kind."}] + SHORT + conv("More?", "Sure, more.")}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    first = prepare_data(DataConfig(data_path=str(f)), tok, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["data.jsonl", "report.json"]
    assert json.loads((out / "report.json").read_text()) == first.report.to_json()
    lines = (out / "data.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"input_ids": s.input_ids, "labels": s.labels}
                                                    for s in first.samples]
    assert [s.input_ids for s in first.samples] == [tokenize_conversation(tok, r["messages"]).input_ids for r in rows]

    again = prepare_data(DataConfig(data_path=str(out / "data.jsonl"), use_processed_dataset=True), tok)
    assert again.report.mode == "processed"
    assert [(s.input_ids, s.labels) for s in again.samples] == [(s.input_ids, s.labels) for s in first.samples]
    assert (again.report.tokens, again.report.loss_tokens) == (first.report.tokens, first.report.loss_tokens)


def test_processed_rows_with_mismatched_lengths(tmp_path, tok):
    f = write_jsonl(tmp_path / "p.jsonl", [{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]},
                                           {"input_ids": [1, 2, 3], "labels": [IGNORE, 2]}])
    with pytest.raises(HoneError) as info:
        prepare_data(DataConfig(data_path=str(f), use_processed_dataset=True), tok)
    assert f"{f}:2: 'input_ids' has 3 tokens but 'labels' has 2" in str(info.value)
    assert f"{f}:1" not in str(info.value)


@pytest.mark.parametrize("row, fragment", [
    ({"input_ids": [1, 2]}, "row needs 'input_ids' and 'labels'"),
    ({"input_ids": [1, "2"], "labels": [1, 2]}, "'input_ids' and 'labels' must be lists of integers"),
    ({"input_ids": [1, 2], "labels": [True, 2]}, "'input_ids' and 'labels' must be lists of integers"),
])
def test_processed_rows_malformed(tmp_path, tok, row, fragment):
    f = write_jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(HoneError) as info:
        prepare_data(DataConfig(data_path=str(f), use_processed_dataset=True), tok)
    assert f"{f}:1: {fragment}" in str(info.value)


# -- pretraining -------------------------------------------------------------------------------------------

DOCS = ["The cat sat on the mat.", "A dog ran in the park and barked loudly.", "Birds sing."]


def test_pretraining_cuts_the_token_stream_into_blocks(tmp_path, tok):
    f = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCS])
    block = 8
    stream = [i for d in DOCS for i in tokenize_document(tok, d).input_ids]
    assert stream.count(tok.eos_token_id) == len(DOCS)  # each document ends with EOS
    n_full, rest = divmod(len(stream), block)
    assert n_full >= 3 and rest >= 2, "pick documents whose stream leaves a trainable last block"
    data = prepare_data(DataConfig(data_path=str(f), is_pretraining=True, block_size=block,
                                   document_column_name="text", max_seq_len=4), tok)
    assert data.report.mode == "pretraining"
    assert [len(s.input_ids) for s in data.samples] == [block] * n_full + [rest]
    assert all(s.labels == s.input_ids for s in data.samples)
    assert [i for s in data.samples for i in s.input_ids] == stream  # nothing lost, nothing reordered
    assert data.report.dropped_too_long == 0  # max_seq_len does not apply to blocks


def test_pretraining_missing_column(tmp_path, tok):
    f = write_jsonl(tmp_path / "docs.jsonl", [{"document": "Some text."}, {"text": "Other text."}])
    with pytest.raises(HoneError) as info:
        prepare_data(DataConfig(data_path=str(f), is_pretraining=True, block_size=8), tok)
    assert f"{f}:2: row has no string column 'document'" in str(info.value)
    assert f"{f}:1:" not in str(info.value)


def test_pretraining_role_rows_in_messages_mode(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "pretraining", "content": DOCS[0]}]}])
    data = prepare_data(DataConfig(data_path=str(f)), tok)
    expected = tokenize_document(tok, DOCS[0])
    assert (data.samples[0].input_ids, data.samples[0].labels) == (expected.input_ids, expected.input_ids)


def test_chat_rows_need_a_chat_template(tmp_path, tiny_model_dir):
    no_template = AutoTokenizer.from_pretrained(tiny_model_dir)
    no_template.chat_template = None
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": SHORT}])
    with pytest.raises(HoneError, match="no chat template"):
        prepare_data(DataConfig(data_path=str(f)), no_template)
    # documents do not need one
    g = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "pretraining", "content": DOCS[0]}]}])
    assert prepare_data(DataConfig(data_path=str(g)), no_template).report.samples == 1
