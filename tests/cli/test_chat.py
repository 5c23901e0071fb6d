"""`hone generate` and `hone chat` on the tiny model, offline: prompts and prompt files, a LoRA adapter on its
base, training-output directories, clear errors, and the interactive chat driven through a terminal (tmux, and
a pseudo-terminal so the interactive path is tested where tmux is missing)."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import pytest

from hone.cli.main import main

pytestmark = pytest.mark.usefixtures("single_cpu_thread")
ROOT = Path(__file__).resolve().parents[2]
GREEDY = ["--temperature", "0", "--max-new-tokens", "6", "--device", "cpu"]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter built with peft directly (random B, so it changes the model), naming its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with warnings.catch_warnings():  # peft calls a deprecated transformers name
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "final_adapter"
    peft_model.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]).resolve() == Path(tiny_model_dir).resolve()
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_prompts_and_prompts_file(tiny_model_dir, tmp_path, capsys):
    code, out, err = _run(capsys, "generate", str(tiny_model_dir), "--prompt", "Hello there", *GREEDY)
    assert code == 0, err
    assert "loading" in err and out.strip()  # the reply (the tiny model's words) on stdout
    # the same prompt twice, greedy: the same reply; a text file of prompts and a JSON Lines file
    text = tmp_path / "prompts.txt"
    text.write_text("Hello there\n\nWhat is the capital of France?\n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(json.dumps({"prompt": "Hello there"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "reference answer"}]}) + "\n")
    answers = tmp_path / "answers.jsonl"
    code, out2, err = _run(capsys, "generate", str(tiny_model_dir), "--prompts", str(text), "--output", str(answers),
                           *GREEDY)
    assert code == 0, err
    assert "### [1/2] Hello there" in out2 and "### [2/2] What is the capital of France?" in out2
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["Hello there", "What is the capital of France?"]
    assert records[0]["response"] == out.strip()
    code, _, err = _run(capsys, "generate", str(tiny_model_dir), "--prompts", str(jsonl), "--output", str(answers),
                        "--system", "Be brief.", *GREEDY)
    assert code == 0, err
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [m["role"] for m in records[0]["messages"]] == ["system", "user"]
    assert [m["role"] for m in records[1]["messages"]] == ["system", "user"]  # the reference answer left out


def test_lora_adapter_loads_with_its_base(tiny_model_dir, adapter_dir, tmp_path, capsys):
    import torch

    from hone.models.generate import load_generator, locate

    src = locate(str(adapter_dir))
    assert src.adapter == adapter_dir and Path(src.model).resolve() == Path(tiny_model_dir).resolve()
    tuned = load_generator(str(adapter_dir), device="cpu")
    plain = load_generator(str(tiny_model_dir), device="cpu")
    ids = torch.tensor([tuned.render([{"role": "user", "content": "Hello"}])])
    with torch.no_grad():
        assert not torch.allclose(tuned.model(ids).logits, plain.model(ids).logits)  # the adapter is applied
    # --base given explicitly (a copy of the base elsewhere), and through the CLI
    moved = tmp_path / "base-copy"
    shutil.copytree(tiny_model_dir, moved)
    assert Path(locate(str(adapter_dir), base=str(moved)).model) == moved
    code, out, err = _run(capsys, "generate", str(adapter_dir), "--base", str(moved), "--prompt", "Hello", *GREEDY)
    assert code == 0, err
    assert out.strip()


def test_training_output_directories(tiny_model_dir, adapter_dir, tmp_path):
    from hone.models.generate import locate

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "hf_format" / "samples_8")
    (run / "hf_format" / "final").symlink_to("samples_8")
    assert locate(str(run)).model == str(run / "hf_format" / "final")
    lora_run = tmp_path / "lora-run"  # save_merged=False: only the adapter
    shutil.copytree(adapter_dir, lora_run / "hf_format" / "final_adapter")
    src = locate(str(lora_run))
    assert src.adapter == lora_run / "hf_format" / "final_adapter"
    assert Path(src.model).resolve() == Path(tiny_model_dir).resolve()


def test_clear_errors(tiny_model_dir, adapter_dir, tmp_path, capsys):
    cases = [
        (["generate", str(tmp_path / "missing"), "--prompt", "hi"], "model path does not exist"),
        (["chat", str(tmp_path / "missing")], "model path does not exist"),
        (["generate", str(tmp_path), "--prompt", "hi"], "holds no model"),
        (["generate", str(tiny_model_dir)], "nothing to generate from"),
        (["generate", str(tiny_model_dir), "--prompts", str(tmp_path / "none.txt")], "prompts file does not exist"),
        (["generate", str(tiny_model_dir), "--base", str(tiny_model_dir), "--prompt", "x"], "is not a LoRA adapter"),
        (["generate", "no-such-org/no-such-model", "--prompt", "x"], "cannot load 'no-such-org/no-such-model'"),
    ]
    orphan = tmp_path / "orphan"
    shutil.copytree(adapter_dir, orphan)
    cfg = json.loads((orphan / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (orphan / "adapter_config.json").write_text(json.dumps(cfg))
    cases.append((["generate", str(orphan), "--prompt", "x"], "base model of the adapter"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    cases.append((["generate", str(tiny_model_dir), "--prompts", str(bad)], f"bad JSON at {bad}:2"))
    for argv, expected in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2, (argv, err)
        assert expected in err and "Traceback" not in err, (argv, err)


def test_model_without_chat_template(tiny_model_dir, tmp_path, capsys):
    plain = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    code, out, err = _run(capsys, "generate", str(plain), "--prompt", "Once upon a time", *GREEDY)
    assert code == 0 and "no chat template" in err and "continued as plain text" in err
    code, _, err = _run(capsys, "chat", str(plain), *GREEDY)
    assert code == 2 and "has no chat template" in err and "Traceback" not in err


def test_long_conversations_drop_the_oldest_turns(tiny_model_dir):
    from hone.errors import HoneError
    from hone.models.generate import load_generator

    gen = load_generator(str(tiny_model_dir), device="cpu")
    turn = [{"role": "user", "content": "tell me about the corpus " * 4}, {"role": "assistant", "content": "ok " * 8}]
    messages = [{"role": "system", "content": "Be brief."}] + turn * 6 + [{"role": "user", "content": "last"}]
    gen.max_positions = len(gen.render(messages[:1] + turn + messages[-1:])) + 8
    kept, ids = gen.fit(messages, max_new_tokens=8)
    assert kept[0] == messages[0] and kept[-1] == messages[-1] and len(kept) < len(messages)
    assert len(ids) + 8 <= gen.max_positions
    gen.max_positions = 4
    with pytest.raises(HoneError, match="does not fit the model's context"):
        gen.fit(messages, max_new_tokens=8)


# -- the interactive chat --------------------------------------------------------------------------------------
def _chat_command(model: Path) -> list[str]:
    return [sys.executable, "-m", "hone", "chat", str(model), "--system", "You are terse.", *GREEDY]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TERM": os.environ.get("TERM", "xterm")}


def _wait(read, pattern: str, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = read()
        if pattern in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} did not appear within {timeout:.0f}s; the terminal shows:\n{read()}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed: the chat is driven through a "
                    "pseudo-terminal instead (test_chat_in_a_pseudo_terminal)")
def test_chat_under_tmux(tiny_model_dir, tmp_path):
    socket = f"hone-test-{uuid.uuid4().hex[:8]}"  # a private tmux server: nothing of the user's is touched
    tmux = ["tmux", "-L", socket]
    done = tmp_path / "exit-status"
    script = tmp_path / "chat.sh"
    script.write_text(" ".join(f"'{a}'" for a in _chat_command(tiny_model_dir)) + f"; echo $? > '{done}'\n")
    subprocess.run([*tmux, "new-session", "-d", "-s", "chat", "-x", "160", "-y", "50", "bash", str(script)],
                   check=True, env=_env())

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "chat", "-S", "-200"], capture_output=True,
                              text=True).stdout

    def send(text: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", "chat", "-l", text], check=True)
        subprocess.run([*tmux, "send-keys", "-t", "chat", "Enter"], check=True)

    try:
        _wait(screen, "/exit or Ctrl-D quits")
        send("Hello there")
        send("/history")
        _wait(screen, "(2 message(s) in the conversation)")
        send("What is OSFT?")
        send("/history")
        text = _wait(screen, "(4 message(s) in the conversation)")
        assert "system: You are terse." in text and "user: Hello there" in text and "user: What is OSFT?" in text
        send("/reset")
        send("/history")
        _wait(screen, "(0 message(s) in the conversation)")
        send("/exit")
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_chat_in_a_pseudo_terminal(tiny_model_dir):
    """The same session through Python's pty module (runs everywhere tmux may not): streamed replies, the
    conversation kept, /reset, and Ctrl-D ending the chat with status 0."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(_chat_command(tiny_model_dir), stdin=slave, stdout=slave, stderr=slave, env=_env(),
                            close_fds=True)
    os.close(slave)
    seen = bytearray()

    def read() -> str:
        while select.select([master], [], [], 0.05)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen.extend(chunk)
        return seen.decode("utf-8", "replace").replace("\r\n", "\n")

    def send(text: str) -> None:
        os.write(master, text.encode() + b"\r")

    try:
        _wait(read, "/exit or Ctrl-D quits")
        send("Hello there")
        send("/history")
        _wait(read, "(2 message(s) in the conversation)")
        send("/reset")
        send("/history")
        _wait(read, "(0 message(s) in the conversation)")
        start = len(read())
        send("Hello there")
        send("/history")
        text = _wait(read, "(2 message(s) in the conversation)")
        assert text[start:].count("user: Hello there") == 1
        os.write(master, b"\x04")  # Ctrl-D at the prompt
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
