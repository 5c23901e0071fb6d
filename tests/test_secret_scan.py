"""The secret scan (issue 19): plant every kind of secret, run what a user runs — training, the local pipeline (with
registration), compile, kube submit --dry-run, the registry — and grep every file written and every line printed
for the planted values. Nothing may be found.

Planted: a data URI with ``user:password@`` and a presigned query (X-Amz-Credential, X-Amz-Signature), served
by a real HTTP server on 127.0.0.1 (basic auth required); secret environment variables (WANDB_API_KEY, HF_TOKEN,
AWS_SECRET_ACCESS_KEY, a custom ``*_PASSWORD``); a ``WANDB_API_KEY=...`` pipeline environment parameter; token
shapes (``hf_...``, ``ghp_...``, a JWT, ``sk-...``) in a free-text parameter (the registry description); proxy
credentials in HTTP(S)_PROXY (kube dry-run).
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import logging
import os
import socket
import threading
from pathlib import Path

import pytest

from hone.cli.main import main

pytestmark = pytest.mark.usefixtures("single_cpu_thread")

USER, PASSWORD = "scanuser", "scanPass-5a1f0c9e77"
SIGNATURE = "scanSig0a9b8c7d6e5f4a3b2"
CREDENTIAL_ID = "AKIASCANTEST00000001"
ENV = {
    "WANDB_API_KEY": "wandbScanKey-3c2b1a0099ff",
    "HF_TOKEN": "hf_scanTokenABCDEFGHIJ123456",
    "AWS_SECRET_ACCESS_KEY": "awsScanSecret/abcDEF0123456789xyz",
    "MY_DB_PASSWORD": "dbScanPassword-778899",
}
ENV_PARAM_KEY = "wandbParamKey-77aa88bb99cc"         # only in phase_02_train_opt_env_vars
SHAPES = {                                          # only in free text (the registry description)
    "hf": "hf_descTokenQRSTUVWXYZ987654",
    "github": "ghp_" + "S" * 12 + "canGithubToken0123456789",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzY2FuLXRlc3QifQ.c2NhblNpZ25hdHVyZVZhbHVl",
    "openai": "sk-proj-scanOpenAiKey0123456789abcdef",
    "aws_id": "AKIASCANDESCRIPTION1",
}
PROXY_PASSWORD = "proxyScanPass-4d4d4d"

PLANTED = {"password": PASSWORD, "basic-auth header": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
           "signature": SIGNATURE, "credential id": CREDENTIAL_ID, "env param": ENV_PARAM_KEY,
           "proxy password": PROXY_PASSWORD, **{f"env {k}": v for k, v in ENV.items()},
           **{f"shape {k}": v for k, v in SHAPES.items()}}


def _rows(n: int) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) + "\n"
                   for i in range(n))


class _AuthHandler(http.server.SimpleHTTPRequestHandler):
    want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.headers.get("Authorization") != self.want:
            self.send_error(401)
            return
        self.path = self.path.split("?", 1)[0]
        super().do_GET()


@pytest.fixture(scope="module")
def scan_env(tmp_path_factory, tiny_model_dir):
    """The planted environment, a data server, and the list of everything printed (checked at the end)."""
    root = tmp_path_factory.mktemp("scan")
    www = root / "www"
    www.mkdir()
    (www / "chat.jsonl").write_text(_rows(24))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_AuthHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    uri = (f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/chat.jsonl?X-Amz-Credential={CREDENTIAL_ID}%2F20250101%2F"
           f"us-east-1%2Fs3%2Faws4_request&X-Amz-Signature={SIGNATURE}&X-Amz-Expires=300")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENV.items():
            mp.setenv(k, v)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield {"root": root, "uri": uri, "model": str(tiny_model_dir), "printed": []}
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def _cli(scan_env, capsys, caplog, *args: str) -> tuple[int, str]:
    caplog.set_level(logging.INFO)
    rc = main(list(args))
    cap = capsys.readouterr()
    text = cap.out + cap.err + caplog.text
    scan_env["printed"].append(text)
    return rc, text


def _leaks(text: str) -> list[str]:
    return [name for name, value in PLANTED.items() if value in text]


def _scan_files(*dirs: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for d in dirs:
        for p in Path(d).rglob("*"):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                hits = [name for name, value in PLANTED.items() if value.encode() in data]
                if hits:
                    found[str(p)] = hits
    return found


def test_training(scan_env, capsys, caplog):
    out = scan_env["root"] / "train"
    rc, text = _cli(scan_env, capsys, caplog, "train", "sft", "--model", scan_env["model"], "--data",
                    scan_env["uri"], "--output", str(out), "--max-steps", "1", "--effective-batch-size", "4",
                    "--max-seq-len", "256", "--no-progress")
    assert rc == 0, text
    assert not _leaks(text), _leaks(text)
    assert not _scan_files(out)


def test_pipeline_run_with_registration(scan_env, capsys, caplog):
    run = scan_env["root"] / "pipeline"
    home = scan_env["root"] / "home"
    description = "tuned; keys " + " ".join(SHAPES.values())
    params = {"phase_02_train_man_epochs": "1", "phase_02_train_man_train_batch": "8",
              "phase_02_train_man_tokens": "4096", "phase_02_train_opt_max_seq_len": "256",
              "phase_02_train_opt_save_epoch": "false", "phase_01_dataset_man_data_split": "0.8",
              "phase_03_eval_man_tasks": "[]", "phase_03_eval_opt_gen_kwargs": '{"max_new_tokens": 4}',
              "phase_02_train_opt_env_vars": f"WANDB_API_KEY={ENV_PARAM_KEY},OTHER=1",
              "phase_04_registry_opt_description": description,
              "phase_01_dataset_opt_hf_token": ENV["HF_TOKEN"]}
    args = ["pipeline", "run", "--data", scan_env["uri"], "--model", scan_env["model"], "--run-dir", str(run),
            "--registry-home", str(home)]
    for k, v in params.items():
        args += ["-p", f"{k}={v}"]
    rc, text = _cli(scan_env, capsys, caplog, *args)
    assert rc == 0, text
    assert not _leaks(text), _leaks(text)
    assert not _scan_files(run, home)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["registration"]["status"] == "completed"
    # the registry, as its own commands show it
    rc, text = _cli(scan_env, capsys, caplog, "registry", "list", "--registry-home", str(home)) \
        if _has_option("registry", "list", "--registry-home") else (0, "")
    assert not _leaks(text), _leaks(text)


def _has_option(*command: str) -> bool:
    import click

    from hone.cli.main import cli

    cmd = cli
    for name in command[:-1]:
        cmd = cmd.commands[name] if isinstance(cmd, click.Group) else cmd
    return any(command[-1] in p.opts for p in cmd.params)


def test_registry_register(scan_env, capsys, caplog):
    """The registry's own command: a description and metadata full of token shapes, the data URI as lineage."""
    home = scan_env["root"] / "home-register"
    model = scan_env["root"] / "train" / "hf_format" / "final"
    if not model.exists():
        pytest.skip("needs test_training's model")
    args = ["registry", "register", str(model), "--name", "scan-model", "--version", "1.0.0",
            "--description", "keys " + " ".join(SHAPES.values()), "--metadata", f"note={SHAPES['hf']}",
            "--metadata", f"WANDB_API_KEY={ENV['WANDB_API_KEY']}", "--dataset-uri", scan_env["uri"]]
    if _has_option("registry", "register", "--registry-home"):
        args += ["--registry-home", str(home)]
    else:
        args += ["--registry-uri", f"sqlite:///{home}/mlflow.db"] if _has_option("registry", "register",
                                                                                   "--registry-uri") else []
    home.mkdir(exist_ok=True)
    rc, text = _cli(scan_env, capsys, caplog, *args)
    assert rc == 0, text
    assert not _leaks(text), _leaks(text)
    assert not _scan_files(home, model.parent.parent)


def test_pipeline_compile(scan_env, capsys, caplog):
    out = scan_env["root"] / "compiled"
    out.mkdir()
    for flavour in ("sft", "lora-minimal"):
        rc, text = _cli(scan_env, capsys, caplog, "pipeline", "compile", "--flavor", flavour, "--output",
                        str(out / f"{flavour}.yaml"))
        assert rc == 0, text
        assert not _leaks(text), _leaks(text)
    assert not _scan_files(out)


def test_kube_dry_run_data_uri(scan_env, capsys, caplog):
    """The data URI's user:password and signature, and secret environment values, stay out of the TrainJob."""
    rc, text = _cli(scan_env, capsys, caplog, "kube", "submit", "sft", "--model", "m", "--data", scan_env["uri"],
                    "--output", "o", "--dry-run")
    assert rc == 0, text
    assert not _leaks(text), _leaks(text)


def test_kube_dry_run_proxy_credentials(scan_env, capsys, caplog, monkeypatch):
    """Proxy credentials from the environment stay out of the TrainJob's spec."""
    monkeypatch.setenv("HTTP_PROXY", f"http://puser:{PROXY_PASSWORD}@proxy.example:3128")
    monkeypatch.setenv("HTTPS_PROXY", f"http://puser:{PROXY_PASSWORD}@proxy.example:3128")
    rc, text = _cli(scan_env, capsys, caplog, "kube", "submit", "sft", "--model", "m", "--data", "d.jsonl",
                    "--output", "o", "--dry-run")
    assert rc == 0, text
    assert not _leaks(text), _leaks(text)


def test_nothing_printed_leaked(scan_env):
    leaks = {i: _leaks(t) for i, t in enumerate(scan_env["printed"]) if _leaks(t)}
    assert not leaks


def test_secrets_module_rules():
    """The rules the scan relies on, one place: userinfo, signed-URL queries, token shapes, KEY=VALUE."""
    from hone.secrets import redact_uri, scrub_text

    uri = "https://u:p4ss@h/x.jsonl?X-Amz-Signature=abc&X-Amz-Credential=AKIA/x&sig=s&token=t&a=1#access_token=z"
    red = redact_uri(uri)
    assert red == "https://***@h/x.jsonl?X-Amz-Signature=***&X-Amz-Credential=***&sig=***&token=***&a=1" \
                  "#access_token=***"
    for value in SHAPES.values():
        assert value not in scrub_text(f"desc {value} end", known=())
    text = scrub_text("WANDB_API_KEY=abc123,MY_DB_PASSWORD=xyz, TOKENIZERS_PARALLELISM=false max_tokens=5",
                      known=())
    assert text == "WANDB_API_KEY=[REDACTED],MY_DB_PASSWORD=[REDACTED], TOKENIZERS_PARALLELISM=false max_tokens=5"
    assert scrub_text('{"hf_token": "abc", "aws_secret_access_key": "def"}', known=()) == \
        '{"hf_token": "[REDACTED]", "aws_secret_access_key": "[REDACTED]"}'
    assert redact_uri("http://[bad@h/?token=abc") != "http://[bad@h/?token=abc"


def test_data_check_output_and_report(scan_env, capsys, caplog, tmp_path):
    """`hone data check` / `prepare`: the problems listed quote the row (a token-shaped role here) masked, and the
    data URI is shown and recorded without its credentials."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": SHAPES["hf"], "content": "x"}]}) + "\n")
    rc, text = _cli(scan_env, capsys, caplog, "data", "check", str(bad), "--json")
    assert rc == 2 and "[REDACTED]" in text
    assert not _leaks(text), _leaks(text)
    out = tmp_path / "prepared"
    rc, text = _cli(scan_env, capsys, caplog, "data", "prepare", scan_env["uri"], "--output", str(out))
    assert rc == 0, text
    assert not _leaks(text), _leaks(text)
    assert not _scan_files(out)
    assert json.loads((out / "dataset_report.json").read_text())["source"].startswith("http://127.0.0.1:")
