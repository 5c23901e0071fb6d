"""`hone data check` and `hone data prepare`: readable report, exit 0 when valid and 2 when not, no traceback."""
from __future__ import annotations

import json
import subprocess
import sys

from hone.cli.main import main

from datahelpers import KEY_ID, SECRET, chat_rows, write_jsonl


def test_check_valid_prints_report_and_exits_0(tmp_path, capsys):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(3))
    assert main(["data", "check", str(f)]) == 0
    out = capsys.readouterr().out
    assert f"source:   {f}" in out and "format:   messages (detected)" in out
    assert "rows:     3 read, 3 valid, 0 invalid" in out and "result:   VALID" in out


def test_check_invalid_exits_2_with_rows_listed(tmp_path, capsys):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(2) + [{"messages": [{"role": "bot", "content": "x"}]}])
    assert main(["data", "check", str(f)]) == 2
    cap = capsys.readouterr()
    assert f"{f}:3: messages[0] has unknown role 'bot'" in cap.out and "INVALID" in cap.out
    assert cap.err.startswith("error: 1 of 3 rows are invalid") and "Traceback" not in cap.err


def test_check_with_tokenizer_json_and_format(tmp_path, tiny_model_dir, capsys):
    f = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Say hi.", "output": "Hi!"}] * 3)
    assert main(["data", "check", str(f), "--tokenizer", str(tiny_model_dir), "--max-seq-len", "8",
                 "--format", "alpaca", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "alpaca" and not report["format_detected"]
    assert report["token_lengths"]["rows"] == 3 and report["token_lengths"]["over_max_seq_len"] == 3
    assert main(["data", "check", str(f), "--tokenizer", str(tiny_model_dir)]) == 0
    assert "tokens:   p50" in capsys.readouterr().out


def test_prepare_writes_outputs(tmp_path, capsys):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(10))
    out = tmp_path / "out"
    assert main(["data", "prepare", str(f), "--output", str(out), "--train-split-ratio", "0.8", "--subset", "5",
                 "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "split:    4 train, 1 eval" in text and f"report:   {out}/dataset_report.json" in text
    report = json.loads((out / "dataset_report.json").read_text())
    assert report["selection"] == {"subset": 5, "train_split_ratio": 0.8, "seed": 1, "skip_invalid": False}


def test_prepare_default_split_is_the_pipelines_0_9(tmp_path, capsys):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(10))
    assert main(["data", "prepare", str(f), "--output", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "dataset_report.json").read_text())["rows"]["eval"] == 1


def test_prepare_bad_parameters_and_data_exit_2(tmp_path, capsys):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(3) + ["{oops"])
    out = tmp_path / "out"
    assert main(["data", "prepare", str(f), "--output", str(out), "--train-split-ratio", "0"]) == 2
    assert "invalid value for 'train_split_ratio'" in capsys.readouterr().err
    assert main(["data", "prepare", str(f), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{f}:4: invalid JSON" in err and "--skip-invalid" in err and not out.exists()
    assert main(["data", "prepare", str(f), "--output", str(out), "--skip-invalid"]) == 0


def test_check_s3_from_the_command_line_hides_secrets(s3, capsys):
    uri = s3.put(s3.bucket("cli"), "chat.jsonl", "".join(json.dumps(r) + "\n" for r in chat_rows(2)))
    assert main(["data", "check", uri, "--s3-endpoint-url", s3.endpoint, "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["rows"]["valid"] == 2
    assert SECRET not in cap.out + cap.err and KEY_ID not in cap.out + cap.err


def test_real_process_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hone", "data", "check", str(tmp_path / "missing.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data file not found") and "Traceback" not in proc.stderr


def test_help(capsys):
    assert main(["data", "--help"]) == 0
    assert "check" in capsys.readouterr().out
    assert main(["data", "prepare", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--output", "--train-split-ratio", "--subset", "--seed", "--format", "--tokenizer", "--split"):
        assert flag in text


def test_pretraining_documents_need_and_take_block_size(tmp_path, capsys):
    f = write_jsonl(tmp_path / "docs.jsonl", [{"document": "first text"}, {"document": "second text"}])
    assert main(["data", "check", str(f), "--is-pretraining"]) == 2
    assert "block_size" in capsys.readouterr().err
    assert main(["data", "check", str(f), "--is-pretraining", "--block-size", "128"]) == 0
    out = tmp_path / "prepared"
    assert main(["data", "prepare", str(f), "--is-pretraining", "--block-size", "128", "--output", str(out)]) == 0
    assert (out / "train.jsonl").is_file()
