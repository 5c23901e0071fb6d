"""Hostile inputs (issue 19), each through the command line as a user meets it: ``hone data check`` and
``hone data prepare`` exit 2 with what/where/how-to-fix and no traceback, and a failed prepare leaves nothing
behind; or the input is valid and is read correctly.

Cases are built here (tests/data/bad/ holds the fixture files of the plain-file cases). HTTP cases run against
a real ``http.server`` on 127.0.0.1 whose misbehaviour each test chooses (short bodies, wrong checksums, 5xx,
basic auth), started and stopped by the test.
"""
from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import http.server
import json
import lzma
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from hone.cli.main import main

from datahelpers import chat_rows, free_port, write_jsonl

OK = json.dumps(chat_rows(1)[0])
PASSWORD = "pw-hostile-7f3a9c"


@dataclass
class Case:
    build: Callable[[Path], str]         # -> the data_path (the builder writes what it needs under tmp_path)
    message: str                         # in the error (stderr) or the problems listed (stdout)
    where: str = ""                      # a location that must be named: "{path}" is the data_path, "{tmp}" tmp_path
    options: tuple[str, ...] = ()


def _file(name: str, content: bytes | str) -> Callable[[Path], str]:
    def build(tmp: Path) -> str:
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(p)
    return build


def _rows(name: str, rows: list) -> Callable[[Path], str]:
    return lambda tmp: str(write_jsonl(tmp / name, rows))


def _parquet(name: str, rows: list, *, duplicate: str | None = None) -> Callable[[Path], str]:
    def build(tmp: Path) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        if duplicate:
            table = table.append_column(duplicate, table.column(duplicate))
        pq.write_table(table, tmp / name)
        return str(tmp / name)
    return build


def _dir(files: dict[str, str | bytes], links: dict[str, str] | None = None) -> Callable[[Path], str]:
    def build(tmp: Path) -> str:
        d = tmp / "data"
        d.mkdir()
        for n, c in files.items():
            (d / n).parent.mkdir(parents=True, exist_ok=True)
            (d / n).write_bytes(c.encode() if isinstance(c, str) else c)
        for n, target in (links or {}).items():
            os.symlink(target, d / n)
        return str(d)
    return build


def _symlink_loop(tmp: Path) -> str:
    tmp.mkdir(exist_ok=True)
    os.symlink(tmp / "b.jsonl", tmp / "a.jsonl")
    os.symlink(tmp / "a.jsonl", tmp / "b.jsonl")
    return str(tmp / "a.jsonl")


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "pipe.jsonl")
    return str(tmp / "pipe.jsonl")


def _truncated_gzip(tmp: Path) -> str:
    data = gzip.compress(("\n".join([OK] * 200) + "\n").encode())
    (tmp / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    return str(tmp / "cut.jsonl.gz")


def _truncated_xz(tmp: Path) -> str:
    data = lzma.compress(("\n".join([OK] * 200) + "\n").encode())
    (tmp / "cut.jsonl.xz").write_bytes(data[: len(data) // 2])
    return str(tmp / "cut.jsonl.xz")


def _truncated_parquet(tmp: Path) -> str:
    path = _parquet("p.parquet", chat_rows(50))(tmp)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return path


def _pvc(rel: str) -> Callable[[Path], str]:
    def build(tmp: Path) -> str:
        (tmp / "mnt").mkdir(exist_ok=True)
        return rel
    return build


MSG = '{{"messages": [{{"role": "user", "content": "Hi"}}, {{"role": "{role}", "content": {content}}}]}}'

# Each must fail with a clear message: (data_path builder, message, where).
FAILING: dict[str, Case] = {
    # -- JSON Lines content ------------------------------------------------------------------------------------------
    "only_whitespace": Case(_file("ws.jsonl", "   \n\t\n  \n"), "the data holds no rows", "{path}"),
    "only_crlf_blank_lines": Case(_file("crlf.jsonl", "\r\n\r\n"), "the data holds no rows", "{path}"),
    "zero_byte_json": Case(_file("e.json", b""), "the data holds no rows", "{path}"),
    "empty_json_array": Case(_file("e.json", "[]"), "the data holds no rows", "{path}"),
    "messages_of_strings": Case(_rows("s.jsonl", [{"messages": ["hi", "there"]}]),
                                "messages[0] is a str, expected an object with 'role' and 'content'", "{path}:1"),
    "messages_is_object": Case(_rows("o.jsonl", [{"messages": {"role": "user", "content": "x"}}]),
                               "'messages' must be a non-empty list", "{path}:1"),
    "messages_empty_list": Case(_rows("e.jsonl", [{"messages": []}]), "'messages' must be a non-empty list",
                                "{path}:1"),
    "messages_null": Case(_rows("n.jsonl", [{"messages": None}]), "'messages' must be a non-empty list", "{path}:1"),
    "role_typo": Case(_file("t.jsonl", MSG.format(role="asistant", content='"x"') + "\n"),
                      "messages[1] has unknown role 'asistant' (allowed: system, user, assistant", "{path}:1"),
    "role_capitalised": Case(_file("c.jsonl", MSG.format(role="Assistant", content='"x"') + "\n"),
                             "messages[1] has unknown role 'Assistant'", "{path}:1"),
    "content_whitespace_only": Case(_file("w.jsonl", MSG.format(role="assistant", content='" \\n\\t "') + "\n"),
                                    "messages[1] (assistant) content is empty", "{path}:1"),
    "content_text_parts": Case(_file("p.jsonl", MSG.format(role="assistant",
                                                            content='[{"type": "text", "text": "x"}]') + "\n"),
                               "messages[1] content is a list of parts (types: text), expected a string", "{path}:1"),
    "content_is_object": Case(_file("d.jsonl", MSG.format(role="assistant", content='{"text": "x"}') + "\n"),
                              "messages[1] (assistant) content is dict, expected a string", "{path}:1"),
    "json_comment_line": Case(_file("c.jsonl", OK + "\n// a comment\n"), "invalid JSON: Expecting value", "{path}:2"),
    "pretty_printed_object": Case(_file("p.jsonl", json.dumps(chat_rows(1)[0], indent=2) + "\n"),
                                  "invalid JSON", "{path}:1"),
    "single_quoted_python_dict": Case(_file("q.jsonl", str(chat_rows(1)[0]) + "\n"),
                                      "Expecting property name enclosed in double quotes", "{path}:1"),
    "lone_low_surrogate": Case(_file("l.jsonl", MSG.format(role="assistant", content='"x\\udc00"') + "\n"),
                               "messages[1].content (character 2: \\udc00) holds a lone UTF-16 surrogate", "{path}:1"),
    "surrogate_in_key": Case(_file("k.jsonl", '{"messages": [], "\\ud800": 1}\n'), "lone UTF-16 surrogate",
                             "{path}:1"),
    "deep_nesting_100k": Case(_file("deep.jsonl", OK + "\n" + '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
                              "nested too deeply", "{path}:2"),
    "deep_nesting_in_json_array": Case(_file("deep.json", "[" + OK + ",\n" + "[" * 100_000 + "]" * 100_000 + "]"),
                                       "nested too deeply", "{path}:2"),
    "lone_surrogate_in_json_array": Case(_file("s.json", "[\n" + OK + ",\n" + MSG.format(
        role="assistant", content='"\\ud800"') + "\n]"), "lone UTF-16 surrogate", "{path}:3"),
    "second_bom_in_json_array": Case(_file("b.json", "[" + OK + ",\n\ufeff" + OK + "]"),
                                     "a UTF-8 byte-order mark (BOM) inside the file", "{path}:2"),
    "unmask_not_bool": Case(_rows("u.jsonl", [{**chat_rows(1)[0], "unmask": "true"}]),
                            "unmask is str, expected true or false", "{path}:1"),
    "processed_float_ids": Case(_rows("f.jsonl", [{"input_ids": [1.5, 2], "labels": [1, 2]}]),
                                "'input_ids' and 'labels' must be lists of integers", "{path}:1"),
    "processed_bool_labels": Case(_rows("b.jsonl", [{"input_ids": [1, 2], "labels": [True, 2]}]),
                                  "'input_ids' and 'labels' must be lists of integers", "{path}:1"),
    "processed_label_minus_one": Case(_rows("m.jsonl", [{"input_ids": [5, 6], "labels": [-1, 6]}]),
                                      "labels[0] is -1: a label is a token id (0 or more) or -100", "{path}:1"),
    "processed_negative_id": Case(_rows("n.jsonl", [{"input_ids": [5, -3], "labels": [-100, -100]}]),
                                  "input_ids[1] is -3: token ids are 0 or more", "{path}:1"),
    "processed_empty": Case(_rows("e.jsonl", [{"input_ids": [], "labels": []}]), "'input_ids' is empty", "{path}:1"),
    "alpaca_output_list": Case(_rows("a.jsonl", [{"instruction": "x", "output": ["y"]}]),
                               "output is list, expected a string", "{path}:1"),
    "sharegpt_empty": Case(_rows("g.jsonl", [{"conversations": []}]),
                           "'conversations' must be a non-empty list", "{path}:1"),
    "json_array_of_strings": Case(_file("s.json", '["a", "b"]'), "row is a str, expected a JSON object", "{path}[0]"),
    "json_extra_after_array": Case(_file("x.json", "[" + OK + "] []"), "extra data after the array", "{path}:1"),
    # -- compressed and binary files -----------------------------------------------------------------------------------
    "truncated_gzip": Case(_truncated_gzip, "Compressed file ended before the end-of-stream marker", "{path}"),
    "truncated_xz": Case(_truncated_xz, "cannot read", "{path}"),
    "corrupt_bz2": Case(_file("c.jsonl.bz2", b"BZh91AY&SY" + b"\x00" * 40), "cannot read", "{path}"),
    "plain_text_named_gz": Case(_file("p.jsonl.gz", OK + "\n"), "Not a gzipped file", "{path}"),
    "binary_without_extension": Case(_file("blob", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
                                     "cannot tell the file type", "{path}"),
    "truncated_parquet": Case(_truncated_parquet, "not a readable Parquet file", "{path}"),
    "zero_byte_parquet": Case(_file("z.parquet", b""), "not a readable Parquet file", "{path}"),
    "parquet_wrong_schema": Case(_parquet("w.parquet", [{"question": "q", "answer": "a"}]),
                                 "cannot tell the data format: the rows have the fields (answer, question)",
                                 "{path}[0]"),
    "parquet_messages_as_string": Case(_parquet("s.parquet", [{"messages": "hi"}]),
                                       "'messages' must be a non-empty list", "{path}[0]"),
    "parquet_duplicate_column": Case(_parquet("d.parquet", [{"prompt": "p", "completion": "c"}],
                                              duplicate="prompt"),
                                     "the Parquet schema names the column 'prompt' twice", "{path}"),
    "csv_duplicate_header": Case(_file("d.csv", "prompt,completion,prompt\na,b,c\n"),
                                 "the CSV header names the column 'prompt' twice", "{path}:1"),
    "csv_cell_duplicate_key": Case(_file("k.csv", 'messages\n"[{""role"": ""user"", ""role"": ""assistant"", '
                                          '""content"": ""x""}]"\n'), "column 'messages': the key 'role' appears twice",
                                   "{path}:2"),
    "csv_header_only": Case(_file("h.csv", "prompt,completion\n"), "the data holds no rows", "{path}"),
    # -- paths, directories and special files ----------------------------------------------------------------------------
    "symlink_loop": Case(_symlink_loop, "is a symbolic link loop", "{path}"),
    "dangling_symlink_path": Case(lambda tmp: (os.symlink(tmp / "gone.jsonl", tmp / "l.jsonl"), str(tmp / "l.jsonl"))[1],
                                  "is a broken symbolic link: its target", "{path}"),
    "fifo": Case(_fifo, "is a named pipe (FIFO), not a data file", "{path}"),
    "char_device": Case(lambda tmp: "/dev/null", "/dev/null is a device, not a data file", "data_path"),
    "empty_directory": Case(_dir({}), "no data files", "{path}"),
    "directory_of_hidden_files": Case(_dir({".a.jsonl": OK + "\n", "_b.jsonl": OK + "\n"}), "no data files",
                                      "{path}"),
    "directory_dangling_shard": Case(_dir({"part-0.jsonl": OK + "\n"}, {"part-1.jsonl": "/nonexistent/part-1.jsonl"}),
                                     "part-1.jsonl is a broken symbolic link: its target '/nonexistent/part-1.jsonl'",
                                     "{path}/part-1.jsonl"),
    "hub_layout_dangling_shard": Case(_dir({"data/train-0.jsonl": OK + "\n"},
                                           {"data/train-1.jsonl": "/nonexistent/train-1.jsonl"}),
                                      "data/train-1.jsonl is a broken symbolic link", "{path}/data/train-1.jsonl"),
    "directory_shard_loop": Case(_dir({"part-0.jsonl": OK + "\n"}, {"part-1.jsonl": "part-1.jsonl"}),
                                 "part-1.jsonl is a symbolic link loop", "{path}/part-1.jsonl"),
    "directory_one_bad_shard": Case(_dir({"a.jsonl": OK + "\n", "b.jsonl": OK + "\n{oops\n"}), "invalid JSON",
                                    "{path}/b.jsonl:2"),
    "path_through_a_file": Case(lambda tmp: (write_jsonl(tmp / "f.jsonl", chat_rows(1)), str(tmp / "f.jsonl/x"))[1],
                                "a part of the path is a file, not a directory", "data_path"),
    "tilde_missing": Case(lambda tmp: "~/hone-no-such-dir-8d1/data.jsonl", "data file not found", "data_path"),
    "nul_in_path": Case(lambda tmp: "data\x00.jsonl", "data_path contains a NUL character", "data_path"),
    # -- URIs --------------------------------------------------------------------------------------------------------------
    "scheme_typo": Case(lambda tmp: "htps://example.com/d.jsonl", "unknown URI scheme 'htps://': did you mean 'https'",
                        "data_path"),
    "ftp_scheme": Case(lambda tmp: "ftp://example.com/d.jsonl", "unknown URI scheme 'ftp://'", "data_path"),
    "single_slash_scheme": Case(lambda tmp: "https:/example.com/d.jsonl", "malformed URI", "data_path"),
    "s3_without_bucket": Case(lambda tmp: "s3:///key.jsonl", "no bucket in 's3:///key.jsonl'", "data_path"),
    "s3_nothing": Case(lambda tmp: "s3://", "no bucket", "data_path"),
    "pvc_without_path": Case(_pvc("pvc://"), "a pvc:// path must be relative to the mount root", "data_path",
                             ("--pvc-root", "{tmp}/mnt")),
    "pvc_absolute": Case(_pvc("pvc:///etc/passwd"), "a pvc:// path must be relative", "data_path",
                         ("--pvc-root", "{tmp}/mnt")),
    "pvc_symlink_loop": Case(lambda tmp: (_symlink_loop(tmp / "mnt"), "pvc://a.jsonl")[1],
                             "pvc://a.jsonl is a symbolic link loop", "data_path", ("--pvc-root", "{tmp}/mnt")),
    "pvc_missing_root": Case(lambda tmp: "pvc://d.jsonl", "the PVC mount root", "pvc_root",
                             ("--pvc-root", "{tmp}/no-mount")),
    "hf_with_credentials": Case(lambda tmp: f"hf://user:{PASSWORD}@org/name", "credentials in an hf:// URI are not "
                                "read: hf://***@org/name", "data_path"),
    "s3_with_credentials": Case(lambda tmp: f"s3://AKIAHOSTILE:{PASSWORD}@bucket/k.jsonl", "credentials in an s3:// "
                                "URI are not read: s3://***@bucket/k.jsonl", "data_path"),
    "pvc_with_credentials": Case(_pvc(f"pvc://user:{PASSWORD}@x.jsonl"), "pvc://***@x.jsonl not found", "data_path",
                                 ("--pvc-root", "{tmp}/mnt")),
    "hf_empty": Case(lambda tmp: "hf://", "invalid Hugging Face dataset reference", "data_path"),
    "hf_too_many_parts": Case(lambda tmp: "hf://a/b/c/d", "invalid Hugging Face dataset reference", "data_path"),
    "http_without_host": Case(lambda tmp: "http:///d.jsonl", "no host in the URL", "data_path"),
    "http_bad_port": Case(lambda tmp: "http://127.0.0.1:99999/d.jsonl", "malformed URL", "data_path"),
    "http_unclosed_ipv6": Case(lambda tmp: "http://[::1/d.jsonl", "malformed URL", "data_path"),
    "file_uri_other_host": Case(lambda tmp: "file://fileserver.example/data/d.jsonl",
                                "file:// URI names the host 'fileserver.example'", "data_path"),
    "file_uri_empty": Case(lambda tmp: "file://", "the file:// URI has no path", "data_path"),
    "path_too_long": Case(lambda tmp: "d" * 5000 + ".jsonl", "data_path is too long for the filesystem", "data_path"),
    "file_uri_with_query": Case(lambda tmp: "file:///tmp/d.jsonl?token=abc", "a file:// URI cannot have a query",
                                "data_path"),
    "file_uri_missing": Case(lambda tmp: f"file://{tmp}/a%20b/missing.jsonl", "data file not found: {tmp}/a b/missing",
                             "data_path"),
}


def _fmt(s: str, tmp: Path, path: str) -> str:
    return s.replace("{path}", path).replace("{tmp}", str(tmp))


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _fails_cleanly(rc: int, out: str, err: str, message: str, where: str) -> None:
    text = out + err
    assert rc == 2, text
    assert PASSWORD not in text, text
    assert "Traceback" not in text and "RecursionError" not in text, text
    assert err.startswith("error: "), err
    assert message in text, text
    assert where in text, text


@pytest.mark.parametrize("command", ["check", "prepare"])
@pytest.mark.parametrize("name", sorted(FAILING))
def test_hostile_input_fails_cleanly(name, command, tmp_path, capsys):
    case = FAILING[name]
    path = case.build(tmp_path)
    options = [_fmt(o, tmp_path, path) for o in case.options]
    out_dir = tmp_path / "out"
    args = ["data", command, path, *options] + (["--output", str(out_dir)] if command == "prepare" else [])
    rc, out, err = _run(args, capsys)
    _fails_cleanly(rc, out, err, _fmt(case.message, tmp_path, path), _fmt(case.where, tmp_path, path))
    assert not out_dir.exists(), "a failed prepare must leave nothing behind"


def test_case_count():
    assert len(FAILING) + len(ACCEPTED) + len(HTTP_CASES) >= 95  # issue 19: at least 45 new ones (plus the listed)


# -- valid inputs that must be read correctly ------------------------------------------------------------------------

def _tilde(tmp: Path) -> str:
    home = Path(os.path.expanduser("~"))  # the test's own $HOME (test_valid_input_is_read sets it)
    write_jsonl(home / "data" / "d.jsonl", chat_rows(2))
    return "~/data/d.jsonl"


ACCEPTED: dict[str, tuple[Callable[[Path], str], int]] = {  # -> (builder, valid rows)
    "crlf_line_endings": (_file("crlf.jsonl", (OK + "\r\n") * 3), 3),
    "bom_and_crlf": (_file("b.jsonl", "\ufeff" + (OK + "\r\n") * 2), 2),
    "no_trailing_newline": (_file("n.jsonl", OK + "\n" + OK), 2),
    "blank_lines_between_rows": (_file("b.jsonl", "\n\n" + OK + "\n\n\n" + OK + "\n\n"), 2),
    "valid_surrogate_pair_emoji": (_file("e.jsonl", MSG.format(role="assistant", content='"\\ud83d\\ude00"') + "\n"), 1),
    "nul_escape_inside_text": (_file("z.jsonl", MSG.format(role="assistant", content='"a\\u0000b"') + "\n"), 1),
    "extra_unknown_keys": (_rows("x.jsonl", [{**chat_rows(1)[0], "id": 7, "meta": {"k": [1, 2]}}]), 1),
    "jsonl_content_named_txt": (_file("d.txt", OK + "\n" + OK + "\n"), 2),
    "jsonl_without_extension": (_file("data", OK + "\n"), 1),
    "json_lines_in_dot_json": (_file("l.json", OK + "\n" + OK + "\n"), 2),
    "huge_single_line": (_rows("h.jsonl", [{"messages": [{"role": "user", "content": "x" * 4_000_000},
                                                          {"role": "assistant", "content": "y"}]}]), 1),
    "xz_jsonl": (_file("d.jsonl.xz", lzma.compress(((OK + "\n") * 2).encode())), 2),
    "gzip_without_gz_name": (_file("d.jsonl", gzip.compress((OK + "\n").encode())), 1),
    "csv_with_bom": (_file("b.csv", "\ufeffprompt,completion\nHi,Hello\n"), 1),
    "tsv": (_file("t.tsv", "instruction\toutput\nSay hi\tHi\n"), 1),
    "mixed_types_directory": (_dir({"a.jsonl": OK + "\n", "b.json": "[" + OK + "]",
                                    "c.csv": 'messages\n"' + json.dumps(chat_rows(1)[0]["messages"]).replace(
                                        '"', '""') + '"\n'}), 3),
    "directory_with_a_subdir_named_like_data": (_dir({"a.jsonl": OK + "\n", "sub.jsonl/readme": "x"}), 1),
    "symlinked_shard": (lambda tmp: (write_jsonl(tmp / "real.jsonl", chat_rows(1)),
                                     _dir({"a.jsonl": OK + "\n"}, {"b.jsonl": str(tmp / "real.jsonl")})(tmp))[1], 2),
    "file_uri_localhost": (lambda tmp: f"file://localhost{write_jsonl(tmp / 'd.jsonl', chat_rows(2))}", 2),
    "file_uri_percent_encoded": (lambda tmp: (write_jsonl(tmp / "a b" / "é.jsonl", chat_rows(2)),
                                              f"file://{tmp}/a%20b/%C3%A9.jsonl")[1], 2),
    "file_uri_short_form": (lambda tmp: f"file:{write_jsonl(tmp / 'd.jsonl', chat_rows(1))}", 1),
    "tilde_path": (_tilde, 2),
    "openai_tool_call_null_content": (_rows("t.jsonl", [{"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function",
                                                                "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}]), 1),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_valid_input_is_read(name, tmp_path, capsys, monkeypatch):
    build, valid = ACCEPTED[name]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    uri = build(tmp_path)
    rc, out, err = _run(["data", "check", uri, "--json"], capsys)
    assert rc == 0, out + err
    report = json.loads(out)
    assert report["rows"]["valid"] == valid and report["rows"]["invalid"] == 0


def test_valid_input_prepares(tmp_path, capsys):
    uri = f"file://localhost{tmp_path}/a%20b/%C3%A9.jsonl"
    write_jsonl(tmp_path / "a b" / "é.jsonl", chat_rows(4))
    rc, out, err = _run(["data", "prepare", uri, "--output", str(tmp_path / "out")], capsys)
    assert rc == 0, out + err
    report = json.loads((tmp_path / "out" / "dataset_report.json").read_text())
    assert report["rows"]["valid"] == 4 and report["source"] == uri
    assert report["files"] == [f"{tmp_path}/a b/é.jsonl"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path, capsys):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(1))
    f.chmod(0)
    rc, out, err = _run(["data", "check", str(f)], capsys)
    _fails_cleanly(rc, out, err, "permission denied", str(f))


def test_unreadable_file_through_the_reader(tmp_path, capsys, monkeypatch):
    """The same failure where the test runs as root: the open itself is made to fail as it would for another user."""
    import builtins

    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(1))
    real_open = builtins.open

    def deny(file, *a, **kw):
        if str(file) == str(f):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", deny)
    rc, out, err = _run(["data", "check", str(f)], capsys)
    _fails_cleanly(rc, out, err, f"permission denied reading {f} (Permission denied)", "make the file readable")


def test_data_path_is_root_does_not_walk_the_disk(tmp_path, capsys, monkeypatch):
    """A directory with no data files directly in it is searched a few levels deep only, in bounded entries."""
    import hone.data.sources as sources

    monkeypatch.setattr(sources, "_NESTED_ENTRIES", 50)
    d = tmp_path / "big"
    for i in range(30):
        (d / f"sub{i}" / "x").mkdir(parents=True)
    rc, out, err = _run(["data", "check", str(d)], capsys)
    _fails_cleanly(rc, out, err, "too many entries below it", "data_path")


# -- HTTP: a real server on 127.0.0.1 that misbehaves as each test asks ---------------------------------------------------

@dataclass
class Route:
    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    send_bytes: int | None = None     # send only this many bytes of the body (with the full Content-Length)
    short_times: int = 0              # ... on this many requests, then the whole body
    fail_times: int = 0               # answer 503 this many times first
    needs_auth: str | None = None     # the Authorization header it requires


@dataclass
class Server:
    url: str
    routes: dict[str, Route]
    seen: list[dict[str, str]]

    def route(self, name: str, route: Route) -> str:
        self.routes["/" + name] = route
        return f"{self.url}/{name}"


@pytest.fixture
def server():
    routes: dict[str, Route] = {}
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            r = routes.get(self.path.split("?")[0])
            if r is None:
                return self._send(404, b"not found")
            if r.needs_auth and self.headers.get("Authorization") != r.needs_auth:
                return self._send(401, b"auth", {"WWW-Authenticate": 'Basic realm="data"'})
            if r.fail_times:
                r.fail_times -= 1
                return self._send(503, b"busy")
            if r.status in (301, 302):
                return self._send(r.status, b"", r.headers)
            body = r.body
            if r.send_bytes is not None and r.short_times:
                r.short_times -= 1
                body = body[: r.send_bytes]
            self.send_response(r.status)
            self.send_header("Content-Length", str(len(r.body)))
            for k, v in r.headers.items():
                self.send_header(k, v)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True

        def _send(self, status, body, headers=None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", routes, seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    import hone.data.sources as sources

    monkeypatch.setattr(sources, "HTTP_RETRY_DELAY_S", 0.01)


BODY = ("\n".join([OK] * 5) + "\n").encode()
SHORT = BODY[: BODY.index(b"\n", len(BODY) // 2) + 1]  # ends on a line boundary: looks like a complete file
MD5_B64 = base64.b64encode(hashlib.md5(BODY).digest()).decode()
SHA256_B64 = base64.b64encode(hashlib.sha256(BODY).digest()).decode()

HTTP_CASES = {  # name -> (route, message or None when accepted, valid rows)
    "short_every_time": (Route(BODY, send_bytes=len(SHORT), short_times=99),
                         f"received {len(SHORT):,} bytes but the server announced {len(BODY):,} (Content-Length)",
                         0),
    "short_once_then_complete": (Route(BODY, send_bytes=len(SHORT), short_times=1), None, 5),
    "content_md5_mismatch": (Route(BODY, headers={"Content-MD5": base64.b64encode(b"\0" * 16).decode()}),
                             "the server's Content-MD5 header says", 0),
    "content_md5_match": (Route(BODY, headers={"Content-MD5": MD5_B64}), None, 5),
    "s3_etag_mismatch": (Route(BODY, headers={"ETag": '"' + "0" * 32 + '"', "x-amz-request-id": "r1"}),
                         "the server's ETag header says", 0),
    "s3_etag_match": (Route(BODY, headers={"ETag": f'"{hashlib.md5(BODY).hexdigest()}"', "Server": "AmazonS3"}),
                      None, 5),
    "non_s3_etag_ignored": (Route(BODY, headers={"ETag": '"' + "0" * 32 + '"'}), None, 5),
    "amz_checksum_sha256_mismatch": (Route(BODY, headers={"x-amz-checksum-sha256": base64.b64encode(
        b"\1" * 32).decode()}), "the server's x-amz-checksum-sha256 header says", 0),
    "repr_digest_match": (Route(BODY, headers={"Repr-Digest": f"sha-256=:{SHA256_B64}:"}), None, 5),
    "server_busy_then_ok": (Route(BODY, fail_times=2), None, 5),
    "server_busy_always": (Route(BODY, fail_times=99), "HTTP 503", 0),
    "redirect_loop": (Route(b"", status=302, headers={"Location": "/loop.jsonl"}), "HTTP 302", 0),
}


@pytest.mark.parametrize("name", sorted(HTTP_CASES))
def test_http_download(name, server, tmp_path, capsys):
    route, message, valid = HTTP_CASES[name]
    route = Route(**{**route.__dict__, "headers": dict(route.headers)})
    uri = server.route("loop.jsonl" if name == "redirect_loop" else "d.jsonl", route)
    out_dir = tmp_path / "out"
    rc, out, err = _run(["data", "prepare", uri, "--output", str(out_dir)], capsys)
    if message is None:
        assert rc == 0, out + err
        assert json.loads((out_dir / "dataset_report.json").read_text())["rows"]["valid"] == valid
    else:
        _fails_cleanly(rc, out, err, message, uri)
        assert not out_dir.exists()


def test_http_short_download_is_retried_then_fails(server, tmp_path, capsys):
    uri = server.route("d.jsonl", Route(BODY, send_bytes=len(SHORT), short_times=99))
    rc, out, err = _run(["data", "check", uri], capsys)
    _fails_cleanly(rc, out, err, "the download is incomplete (tried 3 times)", uri)
    assert len(server.seen) == 3


def test_http_basic_auth_in_the_url(server, tmp_path, capsys):
    want = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    url = server.route("private.jsonl", Route(BODY, needs_auth=want))
    uri = url.replace("http://", f"http://alice:{PASSWORD}@")
    out_dir = tmp_path / "out"
    rc, out, err = _run(["data", "prepare", uri, "--output", str(out_dir)], capsys)
    assert rc == 0, out + err
    assert server.seen[-1]["authorization"] == want
    written = "".join(p.read_text() for p in out_dir.iterdir())
    for text in (out, err, written):
        assert PASSWORD not in text and "alice" not in text
    report = json.loads((out_dir / "dataset_report.json").read_text())
    assert report["source"] == url and report["rows"]["valid"] == 5


def test_http_wrong_password(server, tmp_path, capsys):
    url = server.route("private.jsonl", Route(BODY, needs_auth="Basic nope"))
    uri = url.replace("http://", f"http://alice:{PASSWORD}@")
    rc, out, err = _run(["data", "check", uri], capsys)
    _fails_cleanly(rc, out, err, "HTTP 401", "the server refused the user name and password in the URL")
    assert PASSWORD not in out + err


def test_http_closed_port_with_password(tmp_path, capsys):
    port = free_port()
    rc, out, err = _run(["data", "check", f"https://bob:{PASSWORD}@127.0.0.1:{port}/d.jsonl"], capsys)
    _fails_cleanly(rc, out, err, f"connection refused by 127.0.0.1:{port}", "data_path")
    assert PASSWORD not in out + err and "bob" not in out + err


def test_http_presigned_url_is_not_recorded(server, tmp_path, capsys):
    sig, cred = "a1b2c3d4e5f6hostile", "AKIAHOSTILE000000000/20250101/us-east-1/s3/aws4_request"
    url = server.route("signed.jsonl", Route(BODY))
    uri = f"{url}?X-Amz-Credential={cred}&X-Amz-Signature={sig}&X-Amz-Expires=60"
    out_dir = tmp_path / "out"
    rc, out, err = _run(["data", "prepare", uri, "--output", str(out_dir)], capsys)
    assert rc == 0, out + err
    written = "".join(p.read_text() for p in out_dir.iterdir())
    for text in (out, err, written):
        assert sig not in text and "AKIAHOSTILE" not in text
    assert server.seen[-1]["path"].endswith(sig + "&X-Amz-Expires=60")  # the signature itself is sent, of course


def test_http_basic_auth_follows_a_redirect_on_the_same_server_only(server, tmp_path, capsys):
    want = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    server.route("private.jsonl", Route(BODY, needs_auth=want))
    moved = server.route("moved.jsonl", Route(b"", status=302, headers={"Location": "/private.jsonl"},
                                              needs_auth=want))
    rc, out, err = _run(["data", "check", moved.replace("http://", f"http://alice:{PASSWORD}@")], capsys)
    assert rc == 0, out + err
    assert [s.get("authorization") for s in server.seen] == [want, want]


def test_http_basic_auth_is_not_sent_to_another_server(server, tmp_path, capsys):
    other = Server(server.url.replace("127.0.0.1", "localhost"), server.routes, server.seen)  # another origin
    other.route("public.jsonl", Route(BODY))
    away = server.route("away.jsonl", Route(b"", status=302, headers={"Location": f"{other.url}/public.jsonl"}))
    rc, out, err = _run(["data", "check", away.replace("http://", f"http://alice:{PASSWORD}@")], capsys)
    assert rc == 0, out + err
    assert [s.get("authorization") is not None for s in server.seen] == [True, False]
