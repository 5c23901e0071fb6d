"""Real transports on 127.0.0.1, started and stopped by the tests: S3 (moto's server, through s3fs), HTTP and
HTTPS (http.server, a self-signed certificate trusted through SSL_CERT_FILE), and a Hugging Face hub dataset
held in a temporary datasets cache and loaded by repo id in offline mode."""
from __future__ import annotations

import datetime
import functools
import http.server
import ipaddress
import logging
import shutil
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from datahelpers import KEY_ID, SECRET, free_port, write_jsonl


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No credentials or endpoints leak in from the machine; each test sets what it needs."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "HF_TOKEN", "HONE_PVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# -- S3 (moto server mode: the real S3 HTTP API) --------------------------------------------------------------

@dataclass
class S3:
    endpoint: str
    client: object

    def bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, body: bytes | str) -> str:
        self.client.put_object(Bucket=bucket, Key=key, Body=body.encode() if isinstance(body, str) else body)
        return f"s3://{bucket}/{key}"


@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("s3fs", reason="s3:// needs the s3 extra (pip install 'hone[s3]')")
    ThreadedMotoServer = pytest.importorskip("moto.server").ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """Credentials in the environment (as the s3-secret provides them) and a client to put objects."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET)
    return S3(s3_server, client)


# -- HTTP and HTTPS ---------------------------------------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@dataclass
class Web:
    url: str
    root: Path

    def put(self, name: str, body: bytes | str) -> str:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body.encode() if isinstance(body, str) else body)
        return f"{self.url}/{name}"


def _serve(root: Path, context: ssl.SSLContext | None = None):
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server, thread = _serve(root)
    try:
        yield Web(f"http://127.0.0.1:{server.server_address[1]}", root)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def secure_web(tmp_path, monkeypatch):
    """HTTPS with a self-signed certificate that the client trusts through SSL_CERT_FILE (a private CA)."""
    root = tmp_path / "www-tls"
    root.mkdir()
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server, thread = _serve(root, ctx)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    try:
        yield Web(f"https://127.0.0.1:{server.server_address[1]}", root)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- Hugging Face hub (offline, from a datasets cache built here) --------------------------------------------------

@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A fresh datasets cache; returns ``add(repo_id, {split: rows}, config="default")`` which stores a dataset
    exactly where ``datasets.load_dataset(repo_id)`` looks for it when the hub is offline."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    cache = tmp_path / "hf-datasets-cache"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def add(repo_id: str, splits: dict[str, list[dict]], config: str = "default") -> Path:
        org, name = repo_id.split("/")
        src = tmp_path / "hub-src" / repo_id / config
        files = {split: str(write_jsonl(src / f"{split}.jsonl", rows)) for split, rows in splits.items()}
        build = tmp_path / "hub-build" / repo_id / config
        builder = Json(cache_dir=str(build), dataset_name=name, config_name=config, data_files=files)
        builder.download_and_prepare()
        dest = cache / f"{org}___{name}" / config / "0.0.0" / "0123456789abcdef"
        shutil.copytree(builder.cache_dir, dest)
        return dest

    return add
