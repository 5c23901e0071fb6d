"""`hone chat MODEL` and `hone generate MODEL`: try a model — any hone output, an oci:// image or a hub id."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from hone.errors import HoneError

HELP_LINE = "/reset starts over, /history shows the conversation, /exit or Ctrl-D quits"


def _model_options(f):
    for option in reversed([
        click.argument("model", metavar="MODEL"),
        click.option("--base", metavar="DIR|ID", help="Base model of a LoRA adapter (default: the adapter's "
                     "base_model_name_or_path)."),
        click.option("--system", metavar="TEXT", help="System prompt (first turn of every conversation)."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Most tokens to generate per reply."),
        click.option("--temperature", type=click.FloatRange(min=0.0), default=0.7, show_default=True,
                     help="Sampling temperature; 0 = greedy (deterministic)."),
        click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=None,
                     help="Nucleus sampling: keep the smallest set of tokens with this probability mass."),
        click.option("--seed", type=int, default=None, help="Random seed for sampling (reproducible replies)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True, help="Weights' dtype (auto: float32 on CPU, bfloat16 on GPU)."),
        click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True,
                     help="Run code shipped with the model (only for models you trust)."),
    ]):
        f = option(f)
    return f


def _load(model: str, base: str | None, device: str, dtype: str, trust_remote_code: bool, seed: int | None):
    from hone.models.generate import load_generator

    click.echo(f"loading {model} ...", err=True)
    gen = load_generator(model, base=base, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    return gen


def _stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@click.command("chat", context_settings={"max_content_width": 110})
@_model_options
def chat(model: str, base: str | None, system: str | None, max_new_tokens: int, temperature: float,
         top_p: float | None, seed: int | None, device: str, dtype: str, trust_remote_code: bool) -> None:
    """Chat with a model in the terminal: replies stream as they are generated, the conversation is kept
    across turns.

    \b
    MODEL is a model directory, a training output directory (its hf_format/final), a LoRA adapter
    directory (on the base its adapter_config.json names, or --base), a pipeline run directory, an
    oci://registry/repo:tag reference or a Hugging Face hub id.
    In the chat: /reset starts over, /history shows the conversation, /exit (or Ctrl-D) quits.

    \b
    Example:
      hone chat runs/sft --temperature 0 --system "You are concise."
    """
    gen = _load(model, base, device, dtype, trust_remote_code, seed)
    if not gen.has_template:
        raise HoneError(f"{gen.source.describe()} has no chat template, so a conversation cannot be rendered",
                        where="MODEL", fix="use a chat model (one whose tokenizer has a chat_template), or "
                                           "hone generate, which continues plain text")
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    click.echo(f"chatting with {gen.source.describe()} on {gen.device}. {HELP_LINE}.")
    while True:
        try:
            line = input("\n> ")
        except EOFError:
            click.echo("")
            break
        except KeyboardInterrupt:
            click.echo("")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = list(start)
            click.echo("(conversation cleared)")
            continue
        if text == "/history":
            turns = [m for m in messages if m["role"] != "system"]
            click.echo(f"({len(turns)} message(s) in the conversation)")
            for m in messages:
                click.echo(f"{m['role']}: {m['content']}")
            continue
        if text in ("/help", "/?") or (text.startswith("/") and " " not in text):
            click.echo(("" if text in ("/help", "/?") else f"unknown command {text}: ") + HELP_LINE)
            continue
        messages.append({"role": "user", "content": line})
        try:
            kept, _ = gen.fit(messages, max_new_tokens)
            if len(kept) < len(messages):
                click.echo(f"(the oldest {len(messages) - len(kept)} message(s) no longer fit the model's context "
                           "and are left out)", err=True)
                messages = kept
            reply = gen.generate(messages, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 on_text=_stream)
        except KeyboardInterrupt:
            click.echo("\n(interrupted; this turn is dropped)")
            messages.pop()
            continue
        except HoneError as err:
            click.echo(f"error: {err}", err=True)
            messages.pop()
            continue
        click.echo("")
        messages.append({"role": "assistant", "content": reply})


def read_prompts(path: str) -> list[list[dict[str, str]]]:
    """A prompts file as conversations: JSON Lines (``{"prompt": ...}`` or ``{"messages": [...]}`` per line, or a
    plain JSON string), a JSON array of those, or plain text (one prompt per non-empty line)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise HoneError(f"prompts file does not exist: {path}", where="--prompts",
                        fix="pass a text file (one prompt per line) or a JSON Lines file")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".jsonl", ".json"):
        stripped = text.strip()
        if p.suffix == ".json" and stripped.startswith("["):
            try:
                items = [(f"{path} item {i}", v) for i, v in enumerate(json.loads(stripped), 1)]
            except ValueError as err:
                raise HoneError(f"{path} is not valid JSON: {err}", where="--prompts", fix="fix the file") from None
        else:
            items = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        items.append((f"{path}:{n}", json.loads(line)))
                    except ValueError as err:
                        raise HoneError(f"bad JSON at {path}:{n}: {err}", where="--prompts",
                                        fix='write one JSON object per line: {"prompt": "..."} or '
                                            '{"messages": [...]}') from None
        out = [_conversation(where, v) for where, v in items]
    else:
        out = [[{"role": "user", "content": line.strip()}] for line in text.splitlines() if line.strip()]
    if not out:
        raise HoneError(f"{path} holds no prompt", where="--prompts", fix="write one prompt per line")
    return out


def _conversation(where: str, value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict) and isinstance(value.get("prompt"), str):
        return [{"role": "user", "content": value["prompt"]}]
    if isinstance(value, dict) and isinstance(value.get("messages"), list) and value["messages"] and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value["messages"]):
        msgs = [{"role": m["role"], "content": m["content"]} for m in value["messages"]]
        while msgs and msgs[-1]["role"] == "assistant":  # a reference answer: the model writes its own
            msgs.pop()
        if msgs:
            return msgs
    raise HoneError(f"{where}: expected a string, {{\"prompt\": \"...\"}} or {{\"messages\": [{{\"role\": ..., "
                    f"\"content\": ...}}, ...]}}", where="--prompts", fix="fix that line")


@click.command("generate", context_settings={"max_content_width": 110})
@_model_options
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT", help="A prompt (repeat for several).")
@click.option("--prompts", "prompts_file", metavar="FILE", help="A file of prompts: one per line (text), or JSON "
              'Lines with {"prompt": ...} or {"messages": [...]} per line.')
@click.option("--output", metavar="FILE", help="Also write one JSON line per prompt: prompt, messages, response.")
def generate(model: str, base: str | None, system: str | None, max_new_tokens: int, temperature: float,
             top_p: float | None, seed: int | None, device: str, dtype: str, trust_remote_code: bool,
             prompts: tuple[str, ...], prompts_file: str | None, output: str | None) -> None:
    """Generate replies to one or more prompts, each on its own (streamed as they are generated).

    \b
    MODEL: as for hone chat (a model, training output, LoRA adapter or pipeline run directory,
    oci:// reference or hub id). Each prompt is rendered with the model's chat template (plain
    text continuation when the model has none).

    \b
    Examples:
      hone generate runs/sft --prompt "What is OSFT?" --temperature 0
      hone generate runs/lora/hf_format/final_adapter --prompts questions.txt --output answers.jsonl
    """
    if not prompts and not prompts_file:
        raise HoneError("nothing to generate from", where="--prompt / --prompts",
                        fix='pass --prompt "..." (repeatable) or --prompts FILE')
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    if prompts_file:
        conversations += read_prompts(prompts_file)
    if output and Path(output).expanduser().is_dir():
        raise HoneError(f"{output} is a directory", where="--output", fix="name a file, e.g. answers.jsonl")
    gen = _load(model, base, device, dtype, trust_remote_code, seed)
    if not gen.has_template:
        click.echo(f"note: {gen.source.describe()} has no chat template; prompts are continued as plain text",
                   err=True)
    records = []
    several = len(conversations) > 1
    for i, conv in enumerate(conversations, 1):
        messages = ([{"role": "system", "content": system}] if system and conv[0]["role"] != "system" else []) + conv
        if several:
            click.echo(f"### [{i}/{len(conversations)}] {conv[-1]['content']}")
        reply = gen.generate(messages, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             on_text=_stream)
        click.echo("\n" if several and i < len(conversations) else "")
        records.append({"prompt": conv[-1]["content"], "messages": messages, "response": reply})
    if output:
        from hone.io import atomic_write_text

        path = atomic_write_text(Path(output).expanduser(), "".join(json.dumps(r) + "\n" for r in records))
        click.echo(f"responses written to {path}", err=True)
