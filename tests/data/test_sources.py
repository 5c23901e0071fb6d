"""Every source through its real transport: local files and shards, file://, pvc://, S3 (moto server + s3fs),
HTTP/HTTPS (http.server), and the hub path (datasets in offline mode)."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import os

import pytest

from hone.config import DataConfig
from hone.data.sources import choose_split, open_source
from hone.data.stage import check_dataset
from hone.errors import HoneError
from hone.secrets import redact_uri

from datahelpers import CHAT, KEY_ID, SECRET, chat_rows, write_jsonl


def check(uri: str, **kw):
    return check_dataset(DataConfig(data_path=uri, **kw))


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# -- local ------------------------------------------------------------------------------------------------------

def test_local_file_plain_path_and_file_uri(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", chat_rows(3))
    for uri in (str(f), f"file://{f}"):
        r = check(uri)
        assert r.valid and r.rows == {"read": 3, "valid": 3, "invalid": 0}
        assert r.format == "messages" and r.format_detected
        assert r.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
        assert r.source_kind == "file"


def test_directory_of_shards_mixed_types_and_compression(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "shards"
    d.mkdir()
    rows = chat_rows(8)
    (d / "part-0.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(rows[:2])))
    (d / "part-1.json").write_text(json.dumps(rows[2:4]))
    pq.write_table(pa.Table.from_pylist(rows[4:6]), d / "part-2.parquet")
    (d / "part-3.jsonl.bz2").write_bytes(bz2.compress(jsonl_bytes(rows[6:])))
    (d / ".hidden.jsonl").write_text("garbage\n")
    (d / "README.md").write_text("# not data\n")
    r = check(str(d))
    assert r.valid and r.rows["valid"] == 8
    assert [os.path.basename(f) for f in r.files] == ["part-0.jsonl.gz", "part-1.json", "part-2.parquet",
                                                      "part-3.jsonl.bz2"]
    expected = hashlib.sha256(b"".join((d / n).read_bytes() for n in
                                       ["part-0.jsonl.gz", "part-1.json", "part-2.parquet", "part-3.jsonl.bz2"]))
    assert r.sha256 == expected.hexdigest()


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(chat_rows(5))
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(chat_rows(2)),
                          "train_sft": datasets.Dataset.from_list(chat_rows(4))}).save_to_disk(str(tmp_path / "dd"))
    r = check(str(tmp_path / "single"))
    assert r.valid and r.rows["valid"] == 5
    r = check(str(tmp_path / "dd"))
    assert r.split == "train_sft" and r.rows["valid"] == 4  # train_sft preferred over test
    assert r.files == [f"{tmp_path / 'dd'}[train_sft]"]
    r = check(str(tmp_path / "dd"), split="test")
    assert r.split == "test" and r.rows["valid"] == 2
    with pytest.raises(HoneError, match=r"split 'validation' not found \(available: test, train_sft\)"):
        check(str(tmp_path / "dd"), split="validation")


def test_local_hub_format_directory_splits_by_file_name(tmp_path):
    repo = tmp_path / "repo"
    write_jsonl(repo / "data" / "train.jsonl", chat_rows(6))
    write_jsonl(repo / "data" / "test.jsonl", chat_rows(2))
    r = check(str(repo))
    assert r.split == "train" and r.rows["valid"] == 6


def test_choose_split_order():
    assert choose_split(["test", "train_gen", "train_sft"], None, "x") == "train_sft"
    assert choose_split(["validation", "training"], None, "x") == "training"
    assert choose_split(["b", "a"], None, "x") == "b"
    assert choose_split(["b", "a"], "a", "x") == "a"


# -- PVC --------------------------------------------------------------------------------------------------------

def test_pvc_resolves_under_root_from_parameter_and_environment(tmp_path, monkeypatch):
    root = tmp_path / "mnt"
    write_jsonl(root / "datasets" / "chat.jsonl", chat_rows(2))
    r = check("pvc://datasets/chat.jsonl", pvc_root=str(root))
    assert r.valid and r.files == ["pvc://datasets/chat.jsonl"] and r.source_kind == "pvc"
    monkeypatch.setenv("HONE_PVC_ROOT", str(root))
    assert check("pvc://datasets/").files == ["pvc://datasets/chat.jsonl"]


def test_pvc_refuses_escapes(tmp_path):
    root = tmp_path / "mnt"
    root.mkdir()
    outside = write_jsonl(tmp_path / "secret.jsonl", chat_rows(1))
    (root / "link.jsonl").symlink_to(outside)
    (root / "dir").mkdir()
    (root / "dir" / "shard.jsonl").symlink_to(outside)
    for uri in ("pvc://../secret.jsonl", "pvc://link.jsonl", "pvc://dir"):
        with pytest.raises(HoneError, match="resolves outside the PVC mount root") as info:
            check(uri, pvc_root=str(root))
        assert "fix:" in str(info.value)
    with pytest.raises(HoneError, match="must be relative to the mount root"):
        check(f"pvc://{outside}", pvc_root=str(root))
    with pytest.raises(HoneError, match="not found under the PVC mount root"):
        check("pvc://nope.jsonl", pvc_root=str(root))
    with pytest.raises(HoneError, match="PVC mount root .* does not exist"):
        check("pvc://x.jsonl", pvc_root=str(tmp_path / "no-mount"))


# -- S3 ---------------------------------------------------------------------------------------------------------

def test_s3_file_with_endpoint_parameter(s3):
    b = s3.bucket("single")
    uri = s3.put(b, "chat/train.jsonl", jsonl_bytes(chat_rows(3)))
    r = check(uri, s3_endpoint_url=s3.endpoint)
    assert r.valid and r.rows["valid"] == 3 and r.source == uri and r.source_kind == "s3"
    assert r.sha256 == hashlib.sha256(jsonl_bytes(chat_rows(3))).hexdigest()


def test_s3_prefix_of_shards_with_endpoint_from_environment(s3, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import io

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    b = s3.bucket("shards")
    rows = chat_rows(6)
    s3.put(b, "ds/part-0.jsonl", jsonl_bytes(rows[:3]))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows[3:]), buf)
    s3.put(b, "ds/part-1.parquet", buf.getvalue())
    s3.put(b, "ds/_SUCCESS", b"")
    for uri in (f"s3://{b}/ds/", f"s3://{b}/ds", f"s3://{b}/ds/part-"):
        r = check(uri)
        assert r.valid and r.rows["valid"] == 6, uri
        assert r.files == [f"s3://{b}/ds/part-0.jsonl", f"s3://{b}/ds/part-1.parquet"]


def test_s3_save_to_disk_directory(s3, tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(chat_rows(3))}).save_to_disk(str(tmp_path / "dd"))
    b = s3.bucket("arrow")
    for f in (tmp_path / "dd").rglob("*"):
        if f.is_file():
            s3.put(b, f"dd/{f.relative_to(tmp_path / 'dd')}", f.read_bytes())
    r = check(f"s3://{b}/dd", s3_endpoint_url=s3.endpoint)
    assert r.valid and r.rows["valid"] == 3 and r.split == "train"


def test_s3_errors(s3, monkeypatch):
    b = s3.bucket("errors")
    s3.put(b, "a.jsonl", jsonl_bytes(chat_rows(1)))
    with pytest.raises(HoneError, match="S3 object not found: s3://errors/missing.jsonl"):
        check(f"s3://{b}/missing.jsonl", s3_endpoint_url=s3.endpoint)
    with pytest.raises(HoneError, match="S3 bucket 'no-such-bucket' not found"):
        check("s3://no-such-bucket/a.jsonl", s3_endpoint_url=s3.endpoint)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(HoneError) as info:
        check(f"s3://{b}/a.jsonl", s3_endpoint_url=s3.endpoint)
    msg = str(info.value)
    assert "S3 credentials misconfigured: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not" in msg
    assert KEY_ID not in msg
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(HoneError, match="AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not") as info:
        check(f"s3://{b}/a.jsonl", s3_endpoint_url=s3.endpoint)
    assert SECRET not in str(info.value)


def test_s3_secrets_never_in_report(s3, tmp_path):
    from hone.data.stage import prepare_dataset

    b = s3.bucket("secrets")
    uri = s3.put(b, "chat.jsonl", jsonl_bytes(chat_rows(4)))
    out = tmp_path / "out"
    prepare_dataset(DataConfig(data_path=uri, s3_endpoint_url=s3.endpoint, train_split_ratio=0.5), out)
    for f in out.iterdir():
        text = f.read_text()
        assert SECRET not in text and KEY_ID not in text


# -- HTTP(S) ----------------------------------------------------------------------------------------------------

def test_http_jsonl_csv_parquet_and_unknown_extension(web):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = chat_rows(3)
    assert check(web.put("chat.jsonl", jsonl_bytes(rows))).rows["valid"] == 3
    assert check(web.put("pc.csv", "prompt,completion\nHi,Hello\nBye,See you\n")).format == "prompt_completion"
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    r = check(web.put("chat.parquet", buf.getvalue()))
    assert r.valid and r.rows["valid"] == 3 and r.sha256 == hashlib.sha256(buf.getvalue()).hexdigest()
    r = check(web.put("download", gzip.compress(jsonl_bytes(rows))))  # no extension: sniffed, gzip detected
    assert r.valid and r.rows["valid"] == 3


def test_http_404_and_unreachable(web):
    with pytest.raises(HoneError, match=r"HTTP 404 .* for http://127\.0\.0\.1:\d+/missing\.jsonl") as info:
        check(f"{web.url}/missing.jsonl")
    assert "check the URL" in str(info.value)
    port = web.url.rsplit(":", 1)[1]
    with pytest.raises(HoneError, match="cannot fetch"):
        check(f"http://127.0.0.1:1/{port}.jsonl")


def test_https_with_private_ca(secure_web):
    r = check(secure_web.put("chat.jsonl", jsonl_bytes(chat_rows(2))))
    assert r.valid and r.source.startswith("https://127.0.0.1:")


def test_https_untrusted_certificate_is_an_error(secure_web, monkeypatch):
    url = secure_web.put("chat.jsonl", jsonl_bytes(chat_rows(2)))
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent")
    with pytest.raises(HoneError, match="cannot fetch .*CERTIFICATE_VERIFY_FAILED"):
        check(url)


def test_signed_url_query_is_redacted(web):
    url = web.put("chat.jsonl", jsonl_bytes(chat_rows(1))) + "?X-Amz-Signature=abcdef123456&X-Amz-Credential=AKIA1&v=2"
    r = check(url)
    assert "abcdef123456" not in json.dumps(r.to_json()) and "AKIA1" not in json.dumps(r.to_json())
    assert "X-Amz-Signature=***" in r.source and "v=2" in r.source
    assert redact_uri("https://user:pw@host/x.jsonl") == "https://***@host/x.jsonl"


# -- Hugging Face hub (offline cache) -----------------------------------------------------------------------------

def test_hub_dataset_by_hf_uri_and_bare_id(hub_cache, monkeypatch):
    hub_cache("acme/tiny-chat", {"test": chat_rows(2), "train_sft": chat_rows(5)})
    monkeypatch.setenv("HF_TOKEN", SECRET)
    for uri in ("hf://acme/tiny-chat", "acme/tiny-chat", "hf://acme/tiny-chat:default@main"):
        r = check(uri)
        assert r.valid and r.split == "train_sft" and r.rows["valid"] == 5, uri
        assert r.source_kind == "hf" and SECRET not in json.dumps(r.to_json())
    r = check("hf://acme/tiny-chat", split="test")
    assert r.split == "test" and r.rows["valid"] == 2


def test_hub_dataset_missing_offline(hub_cache):
    with pytest.raises(HoneError) as info:
        check("hf://acme/not-downloaded")
    msg = str(info.value)
    assert "hub dataset 'acme/not-downloaded' is not in the local cache and the hub is off (offline mode)" in msg
    assert "fix:" in msg and "Traceback" not in msg


def test_open_source_does_not_guess_a_hub_id_for_file_names(tmp_path):
    with pytest.raises(HoneError, match="data file not found"):
        open_source("some/file.jsonl")


def test_unknown_scheme_suggests(tmp_path):
    with pytest.raises(HoneError, match=r"unknown URI scheme 's4://': did you mean 's3'"):
        open_source("s4://bucket/key.jsonl")
    with pytest.raises(HoneError, match=r"unknown URI scheme 'ftp://'") as info:
        open_source("ftp://host/data.jsonl")
    assert "hf://, s3://, https://" in str(info.value)


def test_training_prepare_data_accepts_any_uri(s3, web, tiny_tokenizer, tmp_path):
    """prepare_data (what every training API calls) reads S3, HTTP and PVC URIs directly."""
    from hone.data.prepare import prepare_data

    body = jsonl_bytes([{"messages": CHAT}] * 3)
    b = s3.bucket("train")
    root = tmp_path / "mnt"
    (root / "d").mkdir(parents=True)
    (root / "d" / "chat.jsonl").write_bytes(body)
    results = [prepare_data(DataConfig(data_path=s3.put(b, "chat.jsonl", body), s3_endpoint_url=s3.endpoint),
                            tiny_tokenizer),
               prepare_data(DataConfig(data_path=web.put("chat.jsonl", body)), tiny_tokenizer),
               prepare_data(DataConfig(data_path="pvc://d/chat.jsonl", pvc_root=str(root)), tiny_tokenizer)]
    first = [(s.input_ids, s.labels) for s in results[0].samples]
    for data in results:
        assert data.report.samples == 3 and [(s.input_ids, s.labels) for s in data.samples] == first
        assert data.report.sha256 == hashlib.sha256(body).hexdigest()


def test_training_end_to_end_from_an_http_uri(web, tiny_model_dir, tmp_path):
    import hone

    url = web.put("chat.jsonl", jsonl_bytes([{"messages": CHAT}] * 4))
    result = hone.sft(str(tiny_model_dir), url, str(tmp_path / "run"), max_steps=1, effective_batch_size=2,
                      max_seq_len=256, max_tokens_per_gpu=512, progress=False, device="cpu",
                      save_final_checkpoint=False, checkpoint_at_epoch=False)
    assert result.steps == 1 and result.data_report.source == url and result.data_report.samples == 4


def test_http_checksum_headers_read():
    """The integrity headers read from an HTTP answer (hone.data.sources.HTTP_CHECKS), by algorithm."""
    import base64
    from email.message import Message

    from hone.data.sources import _expected_digests

    body = b"data\n"
    md5, sha = hashlib.md5(body), hashlib.sha256(body)
    b64 = lambda h: base64.b64encode(h.digest()).decode()  # noqa: E731
    h = Message()
    h["Digest"] = f"md5={b64(md5)}, sha-256={b64(sha)}"
    h["x-goog-hash"] = f"crc32c=AAAAAA==,md5={b64(md5)}"
    assert _expected_digests(h) == {"md5": (md5.hexdigest(), "Digest"), "sha256": (sha.hexdigest(), "Digest")}
    h = Message()
    h["ETag"] = f'"{md5.hexdigest()}"'
    assert _expected_digests(h) == {}  # not from S3: an ETag is not known to be an MD5
    h["x-amz-id-2"] = "x"
    assert _expected_digests(h) == {"md5": (md5.hexdigest(), "ETag")}
    h = Message()
    h["ETag"] = '"0123456789abcdef0123456789abcdef-3"'  # a multipart upload's ETag is no MD5 of the bytes
    h["x-amz-id-2"] = "x"
    assert _expected_digests(h) == {}
    h = Message()
    h["Content-MD5"] = "not base64!"
    assert _expected_digests(h) == {}  # unreadable: ignored (logged), not a failure


def test_file_uri_path_forms():
    from hone.data.sources import file_uri_path

    assert str(file_uri_path("file://localhost/tmp/a%20b/x.jsonl")) == "/tmp/a b/x.jsonl"
    assert str(file_uri_path("file:///tmp/%C3%A9.jsonl")) == "/tmp/é.jsonl"
    assert str(file_uri_path("file:/tmp/x.jsonl")) == "/tmp/x.jsonl"
    with pytest.raises(HoneError, match="names the host 'elsewhere'"):
        file_uri_path("file://elsewhere/x.jsonl")
