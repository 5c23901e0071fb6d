"""One data path: source -> prepared directory (train.jsonl, eval.jsonl, dataset_report.json) -> token samples.

Training on a directory written by ``prepare_dataset`` gives the very samples training on its source gives,
without opening the source or validating again; settings that would select other rows are refused.
"""
from __future__ import annotations

import json

import pytest

from hone.config import DataConfig
from hone.data.prepare import prepare_data
from hone.data.report import DatasetReport
from hone.data.stage import REPORT_FILE, is_prepared_dir, open_prepared, prepare_dataset
from hone.errors import HoneError

from datahelpers import chat_rows, write_jsonl


def pairs(data):
    return [(s.input_ids, s.labels) for s in data.samples]


@pytest.fixture
def source(tmp_path):
    rows = chat_rows(40)
    rows[5] = {"messages": [{"role": "system", "content": "Be brief."}] + rows[5]["messages"]}
    return write_jsonl(tmp_path / "src" / "chat.jsonl", rows)


def _prepare(source, out, **kw):
    seed = kw.pop("seed", 42)
    return prepare_dataset(DataConfig(data_path=str(source), **kw), out, seed=seed)


@pytest.mark.parametrize("settings", [{}, {"train_split_ratio": 0.75, "seed": 7},
                                      {"subset": 12, "train_split_ratio": 0.5, "seed": 3}])
def test_prepared_dir_gives_the_same_samples_as_the_source(tmp_path, source, tiny_tokenizer, settings):
    kw = {k: v for k, v in settings.items() if k != "seed"}
    seed = settings.get("seed", 42)
    d = tmp_path / "prepared"
    _prepare(source, d, seed=seed, **kw)
    assert is_prepared_dir(d) and is_prepared_dir(f"file://{d}")

    from_source = prepare_data(DataConfig(data_path=str(source), **kw), tiny_tokenizer, seed=seed)
    from_dir = prepare_data(DataConfig(data_path=str(d)), tiny_tokenizer, seed=seed)  # defaults: as prepared
    same_settings = prepare_data(DataConfig(data_path=str(d), **kw), tiny_tokenizer, seed=seed)
    assert pairs(from_dir) == pairs(from_source) == pairs(same_settings)
    assert len(from_dir.samples) == from_source.report.rows["train"] > 0

    # one report type, the same facts either way (only where the rows were read from differs)
    a, b = from_source.report, from_dir.report
    assert isinstance(a, DatasetReport) and isinstance(b, DatasetReport)
    for name in ("source", "sha256", "format", "rows", "roles", "turns", "selection", "mode", "samples", "tokens",
                 "loss_tokens", "max_len", "dropped_too_long", "dropped_no_loss_tokens"):
        assert getattr(a, name) == getattr(b, name), name
    assert b.outputs["train"]["rows"] == b.rows["train"] and a.outputs is None
    assert a.summary() == b.summary() and a.summary().startswith(f"{a.samples} samples from {a.rows['train']} rows")


def test_pretraining_and_processed_prepared_dirs(tmp_path, tiny_tokenizer):
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"document": f"Document number {i} about cats."} for i in range(9)])
    kw = {"is_pretraining": True, "block_size": 16}
    d = tmp_path / "docs-prepared"
    _prepare(docs, d, **kw)
    blocks = prepare_data(DataConfig(data_path=str(d), **kw), tiny_tokenizer)
    assert blocks.report.mode == "pretraining"
    assert pairs(blocks) == pairs(prepare_data(DataConfig(data_path=str(docs), **kw), tiny_tokenizer))

    processed = write_jsonl(tmp_path / "p.jsonl", [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                                                   {"input_ids": [4, 5], "labels": [-100, 5]}])
    p = tmp_path / "p-prepared"
    _prepare(processed, p, use_processed_dataset=True)
    again = prepare_data(DataConfig(data_path=str(p)), tiny_tokenizer)
    assert again.report.mode == "processed" and pairs(again) == [([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5])]


def test_prepared_dir_is_not_opened_or_validated_again(tmp_path, source, tiny_tokenizer, monkeypatch):
    d = tmp_path / "prepared"
    _prepare(source, d, train_split_ratio=0.8)
    expected = pairs(prepare_data(DataConfig(data_path=str(source), train_split_ratio=0.8), tiny_tokenizer))

    import hone.data.sources
    import hone.data.stage
    from hone.data.validate import Validator

    def refuse(*args, **kwargs):
        raise AssertionError("the source was opened or validated again")

    monkeypatch.setattr(hone.data.stage, "open_source", refuse)
    monkeypatch.setattr(hone.data.sources, "open_source", refuse)
    monkeypatch.setattr(Validator, "run", refuse)
    source.unlink()  # the original source is not needed any more
    data = prepare_data(DataConfig(data_path=str(d), train_split_ratio=0.8), tiny_tokenizer)
    assert pairs(data) == expected
    with pytest.raises(AssertionError, match="opened or validated again"):  # while a plain source still is
        prepare_data(DataConfig(data_path=str(d / "train.jsonl")), tiny_tokenizer)


@pytest.mark.parametrize("asked, what", [
    ({"train_split_ratio": 0.5}, "train_split_ratio=0.5 but the prepared directory"),
    ({"subset": 5}, "subset=5 but the prepared directory"),
    ({"train_split_ratio": 0.8, "seed": 1}, "seed=1 but the prepared directory"),
    ({"use_processed_dataset": True}, "use_processed_dataset=True but the prepared directory"),
    ({"data_format": "alpaca"}, "data_format='alpaca' but the prepared directory"),
])
def test_settings_that_select_other_rows_are_refused(tmp_path, source, tiny_tokenizer, asked, what):
    d = tmp_path / "prepared"
    _prepare(source, d, train_split_ratio=0.8, seed=42)
    asked = dict(asked)
    seed = asked.pop("seed", 42)
    with pytest.raises(HoneError, match="re-prepare") as info:
        prepare_data(DataConfig(data_path=str(d), **asked), tiny_tokenizer, seed=seed)
    assert what in str(info.value)
    name = "seed" if seed != 42 else next(iter(asked))
    assert info.value.where == f"parameter {name}"


def test_incomplete_or_changed_prepared_dirs(tmp_path, source, tiny_tokenizer):
    d = tmp_path / "prepared"
    _prepare(source, d, train_split_ratio=0.8)
    report = (d / REPORT_FILE).read_text()

    # train.jsonl and eval.jsonl without the report (written last): an interrupted prepare, not plain data
    (d / REPORT_FILE).unlink()
    with pytest.raises(HoneError, match="incomplete `hone data prepare` output") as info:
        prepare_data(DataConfig(data_path=str(d)), tiny_tokenizer)
    assert "train.jsonl" in info.value.fix

    # a directory with train.jsonl alone (no report, no eval.jsonl) is a plain data directory, validated as usual
    (d / "eval.jsonl").unlink()
    assert not is_prepared_dir(d)
    plain = prepare_data(DataConfig(data_path=str(d)), tiny_tokenizer)
    assert pairs(plain) == pairs(prepare_data(DataConfig(data_path=str(d / "train.jsonl")), tiny_tokenizer))

    # the report without its train.jsonl, or with a train.jsonl changed since
    (d / REPORT_FILE).write_text(report)
    lines = (d / "train.jsonl").read_text().splitlines(keepends=True)
    (d / "train.jsonl").write_text("".join(lines[:-1]))
    with pytest.raises(HoneError, match="changed after it was prepared"):
        prepare_data(DataConfig(data_path=str(d)), tiny_tokenizer)
    (d / "train.jsonl").unlink()
    with pytest.raises(HoneError, match="train.jsonl is missing"):
        open_prepared(d)
    (d / REPORT_FILE).write_text("{not json")
    with pytest.raises(HoneError, match="unreadable dataset_report.json"):
        prepare_data(DataConfig(data_path=str(d)), tiny_tokenizer)


def test_report_json_forms(tmp_path, source, tiny_tokenizer):
    d = tmp_path / "prepared"
    dataset = _prepare(source, d, train_split_ratio=0.8)
    saved = json.loads((d / REPORT_FILE).read_text())
    assert "samples" not in saved and "mode" not in saved  # not tokenized yet: no sample facts
    assert DatasetReport.from_json(saved) == dataset
    out = tmp_path / "run-data"
    data = prepare_data(DataConfig(data_path=str(d)), tiny_tokenizer, out)
    written = json.loads((out / "report.json").read_text())
    assert written["samples"] == data.report.samples and written["sha256"] == dataset.sha256
    assert DatasetReport.from_json(written) == data.report
    assert sorted(p.name for p in out.iterdir()) == ["data.jsonl", "report.json"]  # eval rows stay in d
    # older forms: training's former DataReport, and dataset_report.json with "tokens" as length statistics
    legacy = DatasetReport.from_json({"rows": 4, "samples": 3, "dropped_too_long": 1, "tokens": 50, "loss_tokens": 20,
                                      "max_len": 20, "mode": "messages", "source": "x.jsonl", "source_sha256": "ab",
                                      "data_format": "messages", "rows_read": 5, "eval_rows": 1})
    assert legacy.rows == {"read": 5, "train": 4, "eval": 1} and (legacy.sha256, legacy.format) == ("ab", "messages")
    assert legacy.summary().startswith("3 samples from 4 rows (messages); dropped 1 longer")
    old = DatasetReport.from_json({**saved, "tokens": {"rows": 3, "p50": 7}})
    assert old.token_lengths == {"rows": 3, "p50": 7} and old.tokens == 0


@pytest.mark.usefixtures("single_cpu_thread")
def test_training_on_a_prepared_dir(tmp_path, source, tiny_model_dir):
    """A whole (one-step) run from the prepared directory: the same processed samples as from the source, and a
    result that reads back from training_result.json."""
    import hone
    from hone.training.run import TrainResult

    d = tmp_path / "prepared"
    _prepare(source, d, train_split_ratio=0.9, seed=5)
    kw = dict(num_epochs=1, effective_batch_size=64, max_seq_len=64, max_tokens_per_gpu=4096, seed=5,
              checkpoint_at_epoch=False, progress=False, device="cpu", dtype="float32")
    from_dir = hone.sft(str(tiny_model_dir), str(d), str(tmp_path / "run-dir"), **kw)
    from_src = hone.sft(str(tiny_model_dir), str(source), str(tmp_path / "run-src"), train_split_ratio=0.9, **kw)
    assert ((tmp_path / "run-dir" / "data" / "data.jsonl").read_bytes()
            == (tmp_path / "run-src" / "data" / "data.jsonl").read_bytes())
    assert from_dir.data_report.samples == from_src.data_report.samples == 36
    assert from_dir.tokens_trained == from_src.tokens_trained
    back = TrainResult.from_json(json.loads((tmp_path / "run-dir" / "training_result.json").read_text()))
    assert back.data_report == from_dir.data_report and back.to_json() == from_dir.to_json()
