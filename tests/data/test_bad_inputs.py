"""The bad-input corpus: each case gives one clear message (what, where, how to fix) and writes nothing.

File cases live in tests/data/bad/ with their expected message in bad/expected.json; the cases that need a
transport, credentials or parameters are built here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hone.config import DataConfig
from hone.data.stage import check_dataset, prepare_dataset
from hone.errors import HoneError

from datahelpers import KEY_ID, SECRET, chat_rows, write_jsonl

BAD = Path(__file__).parent / "bad"
EXPECTED = json.loads((BAD / "expected.json").read_text())


def _fails_cleanly(cfg: DataConfig, tmp_path: Path, **kw) -> str:
    out = tmp_path / "out"
    with pytest.raises(HoneError) as info:
        prepare_dataset(cfg, out, **kw)
    msg = str(info.value)
    assert "fix:" in msg and "where:" in msg
    assert not out.exists(), "a failed prepare must leave nothing behind"
    return msg


def test_corpus_is_complete():
    files = sorted(p.name for p in BAD.iterdir() if p.name != "expected.json")
    assert files == sorted(EXPECTED)
    assert len(EXPECTED) >= 25


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file(name, tmp_path):
    case = EXPECTED[name]
    path = BAD / name
    msg = _fails_cleanly(DataConfig(data_path=str(path), **case.get("options", {})), tmp_path)
    assert case["message"] in msg
    assert f"{path}{case['where']}" in msg


# `hone data` has no --block-size (a training setting), and --is-pretraining needs one: --format text reads the
# same document rows.
_FLAGS = {"data_format": "--format", "is_pretraining": ("--format", "text"), "block_size": None}


@pytest.mark.parametrize("command", ["check", "prepare"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_through_the_cli(name, command, tmp_path, capsys):
    """The same corpus as a user meets it: exit 2, the message and file:line printed, no traceback, nothing written."""
    from hone.cli.main import main

    case = EXPECTED[name]
    path = BAD / name
    args = ["data", command, str(path)]
    for key, value in case.get("options", {}).items():
        flag = _FLAGS[key]
        if isinstance(flag, tuple):
            args += list(flag)
        elif flag is not None:
            args += [flag] if value is True else [flag, str(value)]
    out = tmp_path / "out"
    if command == "prepare":
        args += ["--output", str(out)]
    rc = main(args)
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert rc == 2, text
    assert "Traceback" not in text and cap.err.startswith("error: ")
    assert case["message"] in text and f"{path}{case['where']}" in text
    assert not out.exists()


def test_existing_outputs_survive_a_failed_prepare(tmp_path):
    out = tmp_path / "out"
    good = write_jsonl(tmp_path / "good.jsonl", chat_rows(4))
    prepare_dataset(DataConfig(data_path=str(good), train_split_ratio=0.5), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(HoneError, match="invalid row"):
        prepare_dataset(DataConfig(data_path=str(BAD / "unknown_role.jsonl")), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary files left either


# -- cases built by the tests ----------------------------------------------------------------------------------

def test_unknown_uri_scheme(tmp_path):
    msg = _fails_cleanly(DataConfig(data_path="gs://bucket/data.jsonl"), tmp_path)
    assert "unknown URI scheme 'gs://'" in msg and "use hf://, s3://" in msg


def test_missing_local_file(tmp_path):
    msg = _fails_cleanly(DataConfig(data_path=str(tmp_path / "nope.jsonl")), tmp_path)
    assert f"data file not found: {tmp_path / 'nope.jsonl'}" in msg


def test_s3_with_only_one_credential(s3, monkeypatch, tmp_path):
    uri = s3.put(s3.bucket("one-cred"), "a.jsonl", json.dumps({"messages": chat_rows(1)[0]["messages"]}) + "\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    msg = _fails_cleanly(DataConfig(data_path=uri, s3_endpoint_url=s3.endpoint), tmp_path)
    assert "S3 credentials misconfigured: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not" in msg
    assert SECRET not in msg and KEY_ID not in msg


def test_s3_key_that_does_not_exist(s3, tmp_path):
    b = s3.bucket("no-key")
    msg = _fails_cleanly(DataConfig(data_path=f"s3://{b}/train.jsonl", s3_endpoint_url=s3.endpoint), tmp_path)
    assert "S3 object not found: s3://no-key/train.jsonl" in msg


def test_http_404(web, tmp_path):
    msg = _fails_cleanly(DataConfig(data_path=f"{web.url}/train.jsonl"), tmp_path)
    assert "HTTP 404 File not found for http://127.0.0.1" in msg


def test_pvc_path_escaping_the_root(tmp_path):
    root = tmp_path / "mnt"
    root.mkdir()
    write_jsonl(tmp_path / "outside.jsonl", chat_rows(1))
    msg = _fails_cleanly(DataConfig(data_path="pvc://../outside.jsonl", pvc_root=str(root)), tmp_path)
    assert "pvc://../outside.jsonl resolves outside the PVC mount root" in msg


def test_missing_hub_dataset_offline(hub_cache, tmp_path):
    msg = _fails_cleanly(DataConfig(data_path="hf://acme/absent:main"), tmp_path)
    assert "hub dataset 'acme/absent' is not in the local cache and the hub is off (offline mode)" in msg


def test_unknown_split(hub_cache, tmp_path):
    hub_cache("acme/splits", {"train": chat_rows(2), "test": chat_rows(1)})
    msg = _fails_cleanly(DataConfig(data_path="hf://acme/splits", split="tset"), tmp_path)
    assert "split 'tset' not found (available: train, test)" in msg and "did you mean 'test'" in msg


def test_subset_larger_than_the_data(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(3))
    msg = _fails_cleanly(DataConfig(data_path=str(f), subset=10), tmp_path)
    assert "subset=10 but the data has only 3 valid row(s)" in msg


@pytest.mark.parametrize("ratio", [0, -0.5])
def test_split_ratio_not_positive(ratio, tmp_path):
    from hone.config import RunConfig
    from hone.data.split import select

    with pytest.raises(HoneError, match="train_split_ratio must be greater than 0"):
        select(10, train_split_ratio=ratio)
    with pytest.raises(HoneError, match="invalid value for 'train_split_ratio'"):
        RunConfig.from_flat("sft", {"model_path": "m", "data_path": "d.jsonl", "ckpt_output_dir": "o",
                                    "train_split_ratio": ratio})


def test_invalid_rows_are_all_counted_but_listed_up_to_max_errors(tmp_path):
    rows = [{"messages": [{"role": "robot", "content": "x"}]}] * 30 + chat_rows(5) + ["{oops"] * 4
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    report = check_dataset(DataConfig(data_path=str(f), max_errors=5))
    assert report.rows == {"read": 39, "valid": 5, "invalid": 34}
    assert len(report.problems) == 5 and report.problem_counts == {"unknown_role": 30, "invalid_json": 4}
    msg = _fails_cleanly(DataConfig(data_path=str(f), max_errors=3), tmp_path)
    assert "34 invalid row(s) of 39" in msg and "... and 31 more" in msg
    assert "by problem: 30 unknown role or speaker (unknown_role), 4 not valid JSON (invalid_json)" in msg
