"""The holdout task: the training masking and loss, generation that stops at the end of the turn, clear errors."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from hone.errors import HoneError
from hone.evaluation import holdout
from hone.models.load import load_model, load_tokenizer

from eval_paths import HOLDOUT

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def test_perplexity_is_exp_of_the_training_loss(tiny):
    """Holdout perplexity = exp(mean assistant-token loss) as the training code computes it on the same data."""
    from hone.config import DataConfig
    from hone.data.batching import count_loss_tokens, pack
    from hone.data.prepare import prepare_data
    from hone.training.loss import forward_loss_sum

    model, tok = tiny
    result = holdout.run_holdout(model, tok, holdout.read_holdout(str(HOLDOUT)), device=CPU, generate_answers=False)

    prepared = prepare_data(DataConfig(data_path=str(HOLDOUT)), tok).samples  # training's reading + masking
    with torch.no_grad():
        total = float(forward_loss_sum(model, pack(prepared)))  # all samples in one packed row, as in training
    expected = total / count_loss_tokens(prepared)
    assert result.num_samples == len(prepared) == 18
    assert result.metrics["loss"] == pytest.approx(expected, rel=1e-4)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
    # per-sample values are there too, and weight back to the total
    assert sum(r["loss"] * r["loss_tokens"] for r in result.records) == pytest.approx(total, rel=1e-4)


class _Scripted(torch.nn.Module):
    """A stand-in model whose greedy 'generation' is a fixed continuation per prompt."""

    def __init__(self, replies: dict[tuple[int, ...], list[int]], config):
        super().__init__()
        self.replies, self.config = replies, config
        self.generation_config = None

    def generate(self, input_ids, attention_mask, generation_config):
        rows = [row.tolist() + self.replies[tuple(row[attention_mask[i].bool()].tolist())]
                for i, row in enumerate(input_ids)]
        width = max(map(len, rows))
        pad = generation_config.pad_token_id
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


def test_generation_stops_at_end_of_turn_and_is_scored(tiny):
    model, tok = tiny
    samples = holdout.read_holdout(str(HOLDOUT), limit=3)
    kept, _ = holdout.prepare(samples, tok, max_seq_len=None)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert holdout.stop_token_ids(tok, model, kept) == [eot]
    junk = tok("never shown", add_special_tokens=False)["input_ids"]
    replies = {}
    for i, s in enumerate(kept):
        answer = s.target if i != 1 else "wrong answer entirely"
        replies[tuple(s.prompt_ids)] = tok(answer, add_special_tokens=False)["input_ids"] + [eot] + junk
    texts = holdout.generate(_Scripted(replies, model.config), tok, [s.prompt_ids for s in kept], max_new_tokens=64,
                             stop_ids=[eot], batch_size=2, device=CPU)
    assert texts[0] == kept[0].target and texts[2] == kept[2].target
    assert "never shown" not in "".join(texts)
    assert holdout.score(texts[1], kept[1].target)["exact_match"] == 0.0


def test_prompts_use_the_models_own_chat_template(tiny):
    _, tok = tiny
    kept, _ = holdout.prepare(holdout.read_holdout(str(HOLDOUT))[-1:], tok, max_seq_len=None)
    prompt = tok.decode(kept[0].prompt_ids)
    assert prompt.startswith("<|im_start|>system\nYou are a concise geography assistant.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")  # the generation prompt, nothing of the answer
    assert kept[0].target == "The capital of Austria is Vienna."


def test_generation_is_deterministic_and_batch_size_free(tiny):
    model, tok = tiny
    samples = holdout.read_holdout(str(HOLDOUT), limit=4)
    a = holdout.run_holdout(model, tok, samples, device=CPU, max_new_tokens=6, batch_size=4)
    b = holdout.run_holdout(model, tok, samples, device=CPU, max_new_tokens=6, batch_size=4)
    assert a.records == b.records and a.metrics == b.metrics
    assert set(a.metrics) == {"loss", "perplexity", "exact_match", "contains", "f1"}
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in a.records)


def test_too_long_samples_are_skipped_and_reported(tiny):
    model, tok = tiny
    samples = holdout.read_holdout(str(HOLDOUT), limit=3)
    kept, skipped = holdout.prepare(samples, tok, max_seq_len=10)
    assert not kept and len(skipped) == 3 and "max_seq_len 10" in skipped[0]
    with pytest.raises(HoneError, match="no eval sample can be scored"):
        holdout.run_holdout(model, tok, samples, device=CPU, max_seq_len=10)


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


@pytest.mark.parametrize("rows, message", [
    ([{"text": "a plain document"}] * 2, "plain-text documents"),
    ([{"input_ids": [1, 2], "labels": [1, 2]}], "pre-tokenized rows"),
    ([{"question": "q", "answer": "a"}], "rows with keys ['answer', 'question']"),
    ([GOOD, {"messages": [{"role": "user", "content": "Hi"}]}], "d.jsonl:2: conversation has no assistant turn"),
    ([GOOD, {"messages": [{"role": "wizard", "content": "x"}, GOOD["messages"][1]]}], "unknown role 'wizard'"),
    ([GOOD, '{"messages": [}'], "invalid JSON"),
    ([], "holds no rows"),
])
def test_eval_data_in_a_wrong_format(tmp_path, rows, message):
    with pytest.raises(HoneError, match=re.escape(message)) as err:
        holdout.read_holdout(_jsonl(tmp_path / "d.jsonl", rows))
    assert "eval_data_path" in err.value.where and err.value.fix


def test_missing_eval_data(tmp_path):
    with pytest.raises(HoneError, match="not found") as err:
        holdout.read_holdout(str(tmp_path / "nope.jsonl"))
    assert err.value.where.startswith("eval_data_path")


def test_other_conversation_layouts_are_converted(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]
    samples = holdout.read_holdout(_jsonl(tmp_path / "sharegpt.jsonl", rows))
    assert samples[0].messages == GOOD["messages"]
