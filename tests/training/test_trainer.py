"""Packed, padding-free loss and step splitting: real forward/backward passes on the tiny model (float32, CPU).

* Packing several samples into one row must give exactly the losses (and logits) of running each sample alone:
  any attention across the sample boundary would change them.
* How ``max_tokens_per_gpu`` splits one optimizer step into micro-batches must change neither the step's loss
  nor its gradient.
"""
from __future__ import annotations

import pytest
import torch

from hone.data.batching import count_loss_tokens, micro_batches, pack
from hone.data.tokenize import IGNORE, tokenize_conversation
from hone.models.load import load_model, load_tokenizer
from hone.training.loss import forward_loss_sum
from hone.training.trainer import train_step

pytestmark = pytest.mark.usefixtures("single_cpu_thread")


WORDS = ("the quick brown fox jumps over a lazy dog while seven small birds sing near the old river "
         "and a tall man reads his book under the green tree").split()


def _text(n: int, offset: int) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n))


def conversations() -> list[list[dict]]:
    """Chats of clearly different lengths: single and multi-turn, with and without a system prompt."""
    convs = []
    for k, (q, a) in enumerate([(2, 3), (5, 12), (9, 1), (3, 25), (14, 7), (6, 40)]):
        msgs = [{"role": "user", "content": _text(q, k)}, {"role": "assistant", "content": _text(a, 3 * k + 1)}]
        if k % 2:
            msgs.insert(0, {"role": "system", "content": _text(4, 2 * k)})
        if k in (2, 5):  # multi-turn
            msgs += [{"role": "user", "content": _text(k + 2, k + 5)},
                     {"role": "assistant", "content": _text(2 * k + 3, k + 7)}]
        convs.append(msgs)
    return convs


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def samples(tokenizer):
    out = [tokenize_conversation(tokenizer, m) for m in conversations()]
    lengths = [len(s.input_ids) for s in out]
    assert len(set(lengths)) == len(lengths), f"want varied lengths, got {lengths}"
    assert all(s.num_loss_tokens > 0 for s in out)
    return out


def _model(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(str(tiny_model_dir), dtype=torch.float32, device="cpu")


# -- 1. packing ------------------------------------------------------------------------------------------

def test_pack_layout(samples):
    batch = pack(samples)
    total = sum(len(s.input_ids) for s in samples)
    assert batch.input_ids.shape == batch.position_ids.shape == batch.targets.shape == (1, total)
    assert batch.num_samples == len(samples) and batch.num_tokens == total
    off = 0
    for s in samples:
        n = len(s.input_ids)
        assert batch.input_ids[0, off:off + n].tolist() == s.input_ids
        assert batch.position_ids[0, off:off + n].tolist() == list(range(n))
        # targets are shifted within the sample, and the last position never targets the next sample
        assert batch.targets[0, off:off + n].tolist() == s.labels[1:] + [IGNORE]
        off += n
    assert int((batch.targets != IGNORE).sum()) == count_loss_tokens(samples)


def test_packed_loss_equals_token_weighted_mean_of_single_samples(tiny_model_dir, samples):
    model = _model(tiny_model_dir).eval()
    with torch.no_grad():
        packed = pack(samples)
        packed_sum = forward_loss_sum(model, packed).item()
        singles = [forward_loss_sum(model, pack([s])).item() for s in samples]
        total = count_loss_tokens(samples)
        assert total == sum(s.num_loss_tokens for s in samples)
        assert abs(packed_sum / total - sum(singles) / total) <= 1e-5, (packed_sum / total, sum(singles) / total)

        # per-position logits of sample k inside the pack equal sample k run alone
        logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits
        off = 0
        for k, s in enumerate(samples):
            n = len(s.input_ids)
            alone = pack([s])
            ref = model(input_ids=alone.input_ids, position_ids=alone.position_ids, use_cache=False).logits
            diff = (logits[0, off:off + n] - ref[0]).abs().max().item()
            assert diff <= 1e-4, f"sample {k}: packed logits differ from the sample alone by {diff}"
            off += n


def test_packing_check_detects_cross_sample_attention(tiny_model_dir, samples):
    """Control: the same row with positions that do *not* restart (plain causal attention over the whole row)
    changes later samples' logits by far more than the tolerance above, so the equality test has teeth."""
    model = _model(tiny_model_dir).eval()
    packed = pack(samples)
    n0, n1 = len(samples[0].input_ids), len(samples[1].input_ids)
    with torch.no_grad():
        leaky = model(input_ids=packed.input_ids, use_cache=False).logits[0, n0:n0 + n1]
        alone = model(input_ids=torch.tensor([samples[1].input_ids]), use_cache=False).logits[0]
    assert (leaky - alone).abs().max().item() > 1e-2


# -- 2. micro-batch splitting ------------------------------------------------------------------------------

def _run_step(tiny_model_dir, samples, indices, max_tokens):
    model = _model(tiny_model_dir).train()
    lengths = [len(s.input_ids) for s in samples]
    loss_sum, n_loss, n_tokens = train_step(model, samples, indices, lengths, max_tokens, torch.device("cpu"))
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    return loss_sum.item() / n_loss, n_loss, n_tokens, grads


@pytest.mark.parametrize("indices", [[0, 1, 2, 3, 4, 5], [5, 1, 3, 4]], ids=["all", "subset"])
def test_step_loss_and_gradient_do_not_depend_on_micro_batching(tiny_model_dir, samples, indices):
    lengths = [len(s.input_ids) for s in samples]
    step_tokens = sum(lengths[i] for i in indices)
    big, small = step_tokens, max(lengths[i] for i in indices)
    assert len(micro_batches(indices, lengths, big)) == 1
    split = micro_batches(indices, lengths, small)
    assert len(split) > 1, split
    assert sorted(i for mb in split for i in mb) == sorted(indices)
    assert all(sum(lengths[i] for i in mb) <= small for mb in split)

    loss_a, n_loss_a, n_tok_a, grads_a = _run_step(tiny_model_dir, samples, indices, big)
    loss_b, n_loss_b, n_tok_b, grads_b = _run_step(tiny_model_dir, samples, indices, small)

    step_samples = [samples[i] for i in indices]
    assert n_loss_a == n_loss_b == count_loss_tokens(step_samples)
    assert n_tok_a == n_tok_b == step_tokens
    assert abs(loss_a - loss_b) <= 1e-5, (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    worst = max((grads_a[k] - grads_b[k]).abs().max().item() for k in grads_a)
    assert worst <= 1e-5, f"gradients differ by {worst}"
    # the comparison is not vacuous: the step produced real gradients everywhere
    assert all(g.abs().sum().item() > 0 for g in grads_a.values())

    # and the step loss is the plain token mean over the step's samples
    model = _model(tiny_model_dir).eval()
    with torch.no_grad():
        ref = forward_loss_sum(model, pack(step_samples)).item() / count_loss_tokens(step_samples)
    assert abs(loss_a - ref) <= 1e-5


def test_step_gradient_equals_mean_loss_gradient(tiny_model_dir, samples):
    """A split step's accumulated gradient is the gradient of the step's token-mean loss (not a mean of
    micro-batch means, which would weight short micro-batches more)."""
    indices = list(range(len(samples)))
    lengths = [len(s.input_ids) for s in samples]
    _, _, _, grads = _run_step(tiny_model_dir, samples, indices, max(lengths))

    model = _model(tiny_model_dir).train()
    total = count_loss_tokens(samples)
    (sum(forward_loss_sum(model, pack([s])) for s in samples) / total).backward()
    worst = max((grads[n] - p.grad).abs().max().item() for n, p in model.named_parameters())
    assert worst <= 1e-5, worst


def test_micro_batches_rejects_oversized_sample():
    with pytest.raises(ValueError, match="max_tokens_per_gpu"):
        micro_batches([0, 1], [5, 12], 10)
