"""Offline tiny-model factory: a BPE tokenizer and a Qwen2-architecture causal LM built from local text.

Tests and the demo use it because no model hub is reachable; the output is an ordinary Hugging Face
directory that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load offline.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from hone.errors import HoneError

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' and message.get('reasoning_content') %}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bundled_corpus() -> str:
    """The small English corpus shipped with hone."""
    return resources.files("hone.models").joinpath("corpus/tiny_corpus.txt").read_text()


def make_tiny_model(
    output_dir: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    vocab_size: int = 512,
    max_positions: int = 4096,
    seed: int = 0,
    corpus: str | Path | None = None,
    pretrain_steps: int = 0,
    pretrain_lr: float = 3e-3,
) -> Path:
    """Build and save a tiny tokenizer + Qwen2 model in ``output_dir``; deterministic for a seed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if hidden % heads:
        raise HoneError(f"hidden ({hidden}) must be divisible by heads ({heads})", where="--hidden/--heads",
                        fix="pick hidden as a multiple of heads")
    if corpus is not None:
        path = Path(corpus)
        if not path.is_file():
            raise HoneError(f"corpus file not found: {path}", where="--corpus", fix="pass an existing text file")
        text = path.read_text()
    else:
        text = bundled_corpus()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise HoneError("corpus is empty", where=str(corpus), fix="pass a text file with some content")

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(lines, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], model_max_length=max_positions,
    )
    tokenizer.chat_template = CHATML_TEMPLATE

    torch.manual_seed(seed)
    kv = kv_heads or max(1, heads // 2)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, intermediate_size=intermediate or 2 * hidden, max_position_embeddings=max_positions,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    if pretrain_steps > 0:
        _pretrain(model, bpe.encode(text).ids, pretrain_steps, pretrain_lr, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    from hone.models.save import save_hf_dir

    return save_hf_dir(model, tokenizer, output_dir)


def _pretrain(model, token_ids: list[int], steps: int, lr: float, seed: int, block: int = 64, batch: int = 8) -> None:
    # A plain next-token loop on contiguous blocks. The factory sits below the training layer (layers import
    # downward only), and a few steps of language modelling need none of the trainer's machinery.
    ids = torch.tensor(token_ids, dtype=torch.long)
    n = (len(ids) - 1) // block
    if n < 1:
        raise HoneError(f"corpus too short to pretrain ({len(ids)} tokens, need > {block})", where="--corpus",
                        fix="pass a longer text")
    blocks = ids[: n * block].view(n, block)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        rows = blocks[torch.randint(0, n, (min(batch, n),), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
