"""Data at scale: the batched tokenizing path equals the reference token for token, samples on disk are read
memory-mapped, preparation is cached and done once per node, and bad rows are clear errors."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
from transformers import AutoTokenizer

from hone.data.tokenize import IGNORE, BatchTokenizer, RowError, tokenize_conversation
from test_tokenize import (LLAMA3_SPECIAL, LLAMA3_TEMPLATE, MULTI_TURN, PLAIN_EOS_TEMPLATE, PLAIN_TEMPLATE,
                           THINK_TEMPLATE, TOOLS_TEMPLATE)

WORDS = "the model data train token value river cloud green quick answer question table city music".split()
TOOL_CALL = [{"type": "function", "function": {"name": "get_weather", "arguments": {}}}]


def _tokenizer(tiny_model_dir, family: str):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    if family == "llama3":
        t.add_special_tokens({"bos_token": "<|begin_of_text|>", "additional_special_tokens": LLAMA3_SPECIAL},
                             replace_extra_special_tokens=False)
        t.chat_template = LLAMA3_TEMPLATE
    elif family == "think":
        t.chat_template = THINK_TEMPLATE
    elif family == "plain":
        t.chat_template = PLAIN_TEMPLATE
    elif family == "plain_eos":
        t.chat_template = PLAIN_EOS_TEMPLATE
    elif family.startswith("tools"):
        if family == "tools_special":
            t.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]},
                                 replace_extra_special_tokens=False)
        t.chat_template = TOOLS_TEMPLATE
    return t


def _say(rng: random.Random, lo: int = 1, hi: int = 9, pad: bool = False) -> str:
    s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + rng.choice(".?!")
    if pad and rng.random() < 0.3:
        s = rng.choice([" ", "\n", "  "]) + s + rng.choice([" ", "\n\n", ""])  # trimmed by some templates
    return s


def conversations(seed: int = 0, n: int = 60) -> list[list[dict]]:
    """Fixed cases of the masking tests plus generated ones: system or not, 1-3 exchanges, reasoning, tools,
    tool-call-only turns, padded text, no assistant turn, pretraining documents."""
    rng = random.Random(seed)
    out = [MULTI_TURN,
           [{"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "reasoning_content": "Two and two make four.", "content": "Four."}],
           [{"role": "user", "content": "Hello"}],
           [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": TOOL_CALL},
            {"role": "tool", "content": "Sunny"}, {"role": "assistant", "content": "It is sunny."}],
           [{"role": "pretraining", "content": "The cat sat."}, {"role": "pretraining", "content": "It slept."}]]
    for _ in range(n):
        conv = [{"role": "system", "content": _say(rng, pad=True)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            conv.append({"role": "user", "content": _say(rng, pad=True)})
            a = {"role": "assistant", "content": _say(rng, pad=True)}
            r = rng.random()
            if r < 0.15:
                a["reasoning_content"] = _say(rng)
            elif r < 0.25:
                a["tool_calls"] = TOOL_CALL
                if rng.random() < 0.5:
                    a["content"] = ""
            conv.append(a)
            if "tool_calls" in a:
                conv.append({"role": "tool", "content": _say(rng)})
                conv.append({"role": "assistant", "content": _say(rng)})
        out.append(conv)
    return out


FAMILIES = ["chatml", "llama3", "think", "plain", "plain_eos", "tools_plain", "tools_special"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("unmask", ["off", "on", "per_row"])
def test_batched_path_equals_reference_token_for_token(tiny_model_dir, family, unmask):
    tok = _tokenizer(tiny_model_dir, family)
    convs = conversations(seed=FAMILIES.index(family))
    flags = [unmask == "on" or (unmask == "per_row" and k % 2 == 0) for k in range(len(convs))]
    bt = BatchTokenizer(tok)
    for lo in range(0, len(convs), 16):  # several batches: plans are reused across them
        got = bt.tokenize(convs[lo:lo + 16], flags[lo:lo + 16])
        for k, g in enumerate(got, lo):
            want = tokenize_conversation(tok, convs[k], unmask_messages=flags[k])
            assert g.input_ids == want.input_ids, (family, k)
            assert g.labels == want.labels, (family, k, convs[k])
    assert len(bt.plans) < len(convs)  # shapes repeat: the plan cache is used
    if family == "chatml":
        assert bt.slow_rows == 0  # a template that renders content as it is never needs the reference path


def test_batched_path_reports_the_row_a_template_rejects(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir, "chatml")
    tok.chat_template = ("{%- for m in messages %}{%- if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{%- endif %}"
                         "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}")
    ok = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    bad = [{"role": "system", "content": "Be kind."}, *ok]
    with pytest.raises(RowError) as info:
        BatchTokenizer(tok).tokenize([ok, ok, bad, ok], [False] * 4)
    assert info.value.index == 2
    assert "System role not supported" in info.value.message


def test_batched_path_reports_a_lone_surrogate(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir, "chatml")
    ok = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    bad = [{"role": "user", "content": "Hi \ud800 there"}, {"role": "assistant", "content": "Yo"}]
    with pytest.raises(RowError) as info:
        BatchTokenizer(tok).tokenize([ok, bad], [False, False])
    assert info.value.index == 1
    assert "surrogate" in info.value.message


# -- token samples on disk -------------------------------------------------------------------------------------

from hone.config import DataConfig  # noqa: E402
from hone.data.prepare import PreparedData, hold_out, prepare_data  # noqa: E402
from hone.data.samples import SampleWriter, TokenSamples  # noqa: E402
from hone.data.tokenize import Tokenized  # noqa: E402
from hone.errors import HoneError  # noqa: E402

from datahelpers import write_jsonl  # noqa: E402


def _write(path, samples, full=False):
    w = SampleWriter(path, full_labels=full)
    for k, s in enumerate(samples):
        ids = np.asarray(s.input_ids, np.int32)
        lab = np.asarray(s.labels, np.int32)
        w.add(ids, lab if full else (lab != IGNORE).astype(np.uint8), np.array([len(ids)]),
              np.array([s.num_loss_tokens]), np.array([k]))
    w.commit({"key": "k"})
    return TokenSamples(path)


def test_token_samples_round_trip_select_and_pickle(tmp_path):
    import pickle

    given = [Tokenized([5, 6, 7], [IGNORE, 6, 7]), Tokenized([1, 2], [IGNORE, IGNORE]), Tokenized([9], [9])]
    ts = _write(tmp_path / "s", given)
    assert len(ts) == 3 and list(ts) == given and ts[-1] == given[2] and ts[0:2] == given[:2]
    assert isinstance(ts.lengths, np.ndarray) and ts.lengths.tolist() == [3, 2, 1]
    assert ts.loss_tokens.tolist() == [s.num_loss_tokens for s in given] == [2, 0, 0]
    sub = ts.select([2, 0])
    assert list(sub) == [given[2], given[0]] and sub.lengths.tolist() == [1, 3] and sub.rows.tolist() == [2, 0]
    assert list(pickle.loads(pickle.dumps(sub))) == [given[2], given[0]]
    with pytest.raises(IndexError):
        ts[3]
    # processed rows keep any label (not only the token or IGNORE): the full form
    odd = [Tokenized([5, 6, 7], [IGNORE, 8, 9])]
    assert list(_write(tmp_path / "full", odd, full=True)) == odd
    assert np.load(tmp_path / "s" / "input_ids.npy", mmap_mode="r").dtype == np.int32


def test_hold_out_on_token_samples_equals_the_list_form(tmp_path):
    given = [Tokenized([i, i + 1], [IGNORE, i + 1]) for i in range(10)]
    ts = _write(tmp_path / "s", given)
    a_train, a_val = hold_out(given, 0.3, seed=7)
    b_train, b_val = hold_out(ts, 0.3, seed=7)
    assert list(b_train) == a_train and list(b_val) == a_val
    assert PreparedData(b_train, None).lengths == [2] * 7


def _chats(n, seed=0):
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": _say(rng)}, {"role": "assistant", "content": _say(rng, 1, 30)}]}
            for _ in range(n)]


def test_prepare_data_writes_memory_mapped_samples_equal_to_the_reference(tmp_path, tiny_tokenizer):
    rows = _chats(40)
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    data = prepare_data(DataConfig(data_path=str(f)), tiny_tokenizer, num_workers=2)
    assert isinstance(data.samples, TokenSamples)
    assert [(s.input_ids, s.labels) for s in data.samples] == [
        (t.input_ids, t.labels) for t in (tokenize_conversation(tiny_tokenizer, r["messages"]) for r in rows)]
    assert data.report.samples_path == str(data.samples.path) and data.report.rows_per_s > 0
    assert data.lengths == [len(s.input_ids) for s in data.samples]


def test_second_run_reuses_the_samples_and_any_max_seq_len_does(tmp_path, tiny_tokenizer, monkeypatch, caplog):
    import hone.data.prepare as prep

    rows = _chats(30, seed=3)
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    first = prepare_data(DataConfig(data_path=str(f)), tiny_tokenizer)
    assert not first.report.reused

    def no_tokenizing(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(prep, "tokenize_chunks", no_tokenizing)
    caplog.set_level("INFO", logger="hone.data.prepare")
    again = prepare_data(DataConfig(data_path=str(f)), tiny_tokenizer)
    assert again.report.reused and "preparation skipped" in caplog.text
    assert [(s.input_ids, s.labels) for s in again.samples] == [(s.input_ids, s.labels) for s in first.samples]
    # a lower max_seq_len reads the same samples and leaves the long ones out, naming them
    limit = sorted(first.lengths)[len(rows) // 2]
    short = prepare_data(DataConfig(data_path=str(f), max_seq_len=limit), tiny_tokenizer)
    assert short.lengths == [n for n in first.lengths if n <= limit]
    assert short.report.dropped_too_long == sum(n > limit for n in first.lengths) > 0
    assert short.report.dropped_examples[0].startswith(f"{f}:")
    # another setting that shapes the samples (unmask_messages) is not reused
    monkeypatch.undo()
    other = prepare_data(DataConfig(data_path=str(f), unmask_messages=True), tiny_tokenizer)
    assert not other.report.reused


def test_cli_prepare_with_tokenizer_writes_samples_training_reuses_them(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                          capsys, monkeypatch):
    import hone.data.prepare as prep
    from hone.cli.main import main

    f = write_jsonl(tmp_path / "d.jsonl", _chats(20, seed=5))
    out = tmp_path / "prepared"
    assert main(["data", "prepare", str(f), "--output", str(out), "--tokenizer", str(tiny_model_dir)]) == 0
    printed = capsys.readouterr().out
    assert (out / "samples" / "meta.json").is_file() and f"on disk:  {out / 'samples'}" in printed
    monkeypatch.setattr(prep, "tokenize_chunks", lambda *a, **k: (_ for _ in ()).throw(AssertionError("again")))
    data = prepare_data(DataConfig(data_path=str(out)), tiny_tokenizer)
    assert data.report.reused and data.report.samples_path == str(out / "samples")
    assert data.report.samples == 18  # train_split_ratio 0.9 by default in `hone data prepare`


# -- bad rows: clear errors naming the row ---------------------------------------------------------------------

@pytest.mark.parametrize("row, what", [
    ({"input_ids": [1, 2, 100000], "labels": [-100, 2, 100000]}, "100000"),
    ({"input_ids": [1, -3, 4], "labels": [-100, -3, 4]}, "-3"),  # (the validator may catch it first)
    ({"input_ids": [1, 2, 3], "labels": [-100, -1, 3]}, "-1"),
    ({"input_ids": [1, 2, 3], "labels": [-100, 2, 99999]}, "99999"),
])
def test_processed_rows_outside_the_vocabulary_are_named(tmp_path, tiny_tokenizer, row, what):
    good = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
    f = write_jsonl(tmp_path / "p.jsonl", [good, good, row])
    with pytest.raises(HoneError) as info:
        prepare_data(DataConfig(data_path=str(f), use_processed_dataset=True), tiny_tokenizer)
    err = info.value
    assert what in err.what and f"{f}:3" in str(err) and err.fix and "Traceback" not in str(err)


def test_a_row_the_template_rejects_is_named_with_the_templates_message(tmp_path, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = ("{%- for m in messages %}{%- if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{%- endif %}"
                         "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}")
    rows = _chats(3) + [{"messages": [{"role": "system", "content": "Be kind."}, *_chats(1)[0]["messages"]]}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(HoneError) as info:
        prepare_data(DataConfig(data_path=str(f)), tok)
    assert "System role not supported" in info.value.what and f"{f}:4" in str(info.value)


def test_a_lone_surrogate_is_named(tmp_path, tiny_tokenizer):
    rows = _chats(2) + [{"messages": [{"role": "user", "content": "Hi \ud800"}, {"role": "assistant", "content": "Yo"}]}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(HoneError) as info:
        prepare_data(DataConfig(data_path=str(f)), tiny_tokenizer)
    assert f"{f}:3" in str(info.value) and "surrogate" in str(info.value)


# -- once per node under torchrun -------------------------------------------------------------------------------

RANK_SCRIPT = r"""
import json, os, sys
import hone.data.prepare as prep
from hone.config import DataConfig
from transformers import AutoTokenizer
if os.environ["LOCAL_RANK"] != "0":
    def no(*a, **k):
        raise AssertionError("a rank other than 0 tokenized")
    prep.tokenize_chunks = no
tok = AutoTokenizer.from_pretrained(sys.argv[2])
try:
    data = prep.prepare_data(DataConfig(data_path=sys.argv[1]), tok)
    print(json.dumps({"ok": [[s.input_ids, s.labels] for s in data.samples], "path": str(data.samples.path)}))
except Exception as err:
    print(json.dumps({"error": type(err).__name__, "text": str(err)}))
"""


def _ranks(tmp_path, data, model, run_id):
    import subprocess
    import sys

    env = {**os.environ, "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": run_id,
           "HONE_HOME": str(tmp_path / "home"), "HONE_DATA_WAIT_S": "120"}
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(data), str(model)],
                              env={**env, "LOCAL_RANK": str(r), "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (1, 0)]  # rank 1 starts first: it waits
    outs = [p.communicate(timeout=300) for p in procs]
    return [json.loads(o.strip().splitlines()[-1]) if o.strip() else {"stderr": e} for o, e in outs]


def test_local_rank_0_prepares_and_the_others_read(tmp_path, tiny_model_dir):
    f = write_jsonl(tmp_path / "d.jsonl", _chats(12, seed=9))
    r1, r0 = _ranks(tmp_path, f, tiny_model_dir, "run-a")
    assert "ok" in r0 and "ok" in r1, (r0, r1)
    assert r0["ok"] == r1["ok"] and r0["path"] == r1["path"] and len(r0["ok"]) == 12


def test_a_failure_on_rank_0_stops_every_rank_with_its_message(tmp_path, tiny_model_dir):
    good = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
    f = write_jsonl(tmp_path / "p.jsonl", [good, {"input_ids": [1, 2, 100000], "labels": [-100, 2, 3]}])
    r1, r0 = _ranks(tmp_path, f, tiny_model_dir, "run-b")
    assert r0.get("error") == "HoneError" and r1.get("error") == "HoneError", (r0, r1)
    assert "input_ids[2] = 100000" in r1["text"] and f"{f}:2" in r1["text"] and "local rank 0" in r1["text"]


def test_data_check_with_a_tokenizer_names_a_row_it_cannot_tokenize(tmp_path, tiny_model_dir, capsys):
    from hone.cli.main import main

    rows = _chats(2) + [{"messages": [{"role": "user", "content": "Hi \ud800"}, {"role": "assistant", "content": "Yo"}]}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    assert main(["data", "check", str(f), "--tokenizer", str(tiny_model_dir)]) == 2
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err and ("surrogate" in cap.out + cap.err and "d.jsonl:3" in cap.out + cap.err)


def test_cache_keeps_recent_entries_and_drops_the_least_recently_used(tmp_path):
    import os
    import time

    from hone.data.prepare import prune_cache

    cache = tmp_path / "token-samples"
    entries = []
    for i, age_h in enumerate((30, 20, 10, 0)):
        d = cache / f"k{i}"
        d.mkdir(parents=True)
        (d / "ids.npy").write_bytes(b"x" * 1024)
        (d / "meta.json").write_text("{}")
        t = time.time() - age_h * 3600
        os.utime(d / "meta.json", (t, t))
        entries.append(d)
    # 4 x 1026 bytes, limit 2100 bytes: the two oldest go; the newest (used now) stays even under a zero limit
    removed = prune_cache(cache, limit_gb=2100 / 1024 ** 3)
    assert removed == entries[:2] and all(d.is_dir() for d in entries[2:])
    removed = prune_cache(cache, limit_gb=0, keep=entries[2])
    assert removed == [] and entries[2].is_dir() and entries[3].is_dir()
