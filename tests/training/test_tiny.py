"""The offline tiny-model factory: deterministic, loadable with plain transformers, and pretraining helps."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hone.errors import HoneError
from hone.models.tiny import CHATML_TEMPLATE, bundled_corpus, make_tiny_model


pytestmark = pytest.mark.usefixtures("single_cpu_thread")


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_same_seed_gives_identical_model_and_tokenizer(tiny_model_dir, tmp_path):
    again = make_tiny_model(tmp_path / "again", seed=0)
    a, b = _weights(tiny_model_dir), _weights(again)
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_model_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    assert json.loads((tiny_model_dir / "config.json").read_text()) == json.loads((again / "config.json").read_text())


def test_different_seed_gives_different_weights(tiny_model_dir, tmp_path):
    other = make_tiny_model(tmp_path / "other", seed=1)
    a, b = _weights(tiny_model_dir), _weights(other)
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].ndim >= 2)
    # the tokenizer depends only on the corpus, not on the seed
    assert (tiny_model_dir / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_loads_offline_with_auto_classes(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "qwen2"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert tok.is_fast
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == config.eos_token_id
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == config.pad_token_id
    assert tok.chat_template == CHATML_TEMPLATE
    assert len(tok) == config.vocab_size
    msgs = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.eos_token_id) == 2
    assert tok.decode(ids) == text
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), config.vocab_size)
    assert torch.isfinite(logits).all()


def _corpus_loss(model, tokenizer, block: int = 64, blocks: int = 24) -> float:
    ids = torch.tensor(tokenizer(bundled_corpus())["input_ids"][: block * blocks]).view(blocks, block)
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def test_pretrain_steps_lower_the_corpus_loss(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = make_tiny_model(tmp_path / "plain", seed=3, pretrain_steps=0)
    trained = make_tiny_model(tmp_path / "trained", seed=3, pretrain_steps=10)
    tok = AutoTokenizer.from_pretrained(plain)
    loss_plain = _corpus_loss(AutoModelForCausalLM.from_pretrained(plain).eval(), tok)
    loss_trained = _corpus_loss(AutoModelForCausalLM.from_pretrained(trained).eval(), tok)
    assert loss_trained < loss_plain - 0.5, (loss_plain, loss_trained)
    # pretraining is seeded too
    again = make_tiny_model(tmp_path / "again", seed=3, pretrain_steps=10)
    a, b = _weights(trained), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(HoneError, match="divisible"):
        make_tiny_model(tmp_path / "m", hidden=30, heads=4)
    with pytest.raises(HoneError, match="corpus file not found"):
        make_tiny_model(tmp_path / "m", corpus=tmp_path / "missing.txt")
