"""Padding-free batching: steps, micro-batches under a token budget, packed rows."""
from __future__ import annotations

import random

import pytest
import torch

from hone.data.batching import count_loss_tokens, epoch_steps, micro_batches, pack
from hone.data.tokenize import IGNORE, Tokenized

# -- epoch_steps ---------------------------------------------------------------------------------------------


def test_epoch_steps_cover_every_sample_once_in_full_steps():
    steps = epoch_steps(103, 10, seed=1, epoch=0)
    assert [len(s) for s in steps] == [10] * 10 + [3]
    assert sorted(i for s in steps for i in s) == list(range(103))


def test_epoch_steps_deterministic_per_seed_and_epoch():
    assert epoch_steps(50, 8, seed=7, epoch=2) == epoch_steps(50, 8, seed=7, epoch=2)


def test_epoch_steps_differ_across_epochs_and_seeds():
    flat = lambda steps: [i for s in steps for i in s]  # noqa: E731
    e0, e1, e2 = (flat(epoch_steps(50, 8, seed=7, epoch=e)) for e in range(3))
    assert e0 != e1 and e1 != e2 and e0 != e2
    assert flat(epoch_steps(50, 8, seed=8, epoch=0)) != e0
    assert e0 != list(range(50))  # actually shuffled


def test_epoch_steps_batch_larger_than_data():
    steps = epoch_steps(5, 128, seed=0, epoch=0)
    assert len(steps) == 1 and sorted(steps[0]) == [0, 1, 2, 3, 4]


# -- micro_batches -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_micro_batches_respect_budget_and_cover_indices(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 100) for _ in range(60)]
    max_tokens = rng.randint(100, 400)
    for step in epoch_steps(len(lengths), rng.randint(1, 30), seed=seed, epoch=0):
        bins = micro_batches(step, lengths, max_tokens)
        assert all(bins), "no empty micro-batch"
        assert all(sum(lengths[i] for i in b) <= max_tokens for b in bins)
        flat = [i for b in bins for i in b]
        assert sorted(flat) == sorted(step) and len(flat) == len(set(flat))
        # never more micro-batches than needed by more than first-fit-decreasing's bound
        assert len(bins) <= max(1, -(-2 * sum(lengths[i] for i in step) // max_tokens))


def test_micro_batches_first_fit_decreasing():
    lengths = [6, 5, 4, 3, 2]
    bins = micro_batches([0, 1, 2, 3, 4], lengths, 10)
    assert bins == [[0, 2], [1, 3, 4]]


def test_micro_batches_exact_fit_and_singletons():
    assert micro_batches([0, 1], [10, 10], 10) == [[0], [1]]
    assert micro_batches([0, 1, 2], [4, 3, 3], 10) == [[0, 1, 2]]
    assert micro_batches([], [], 10) == []


def test_micro_batches_uses_global_indices():
    lengths = [100, 1, 2, 3, 100]
    assert micro_batches([3, 1], lengths, 5) == [[3, 1]]


def test_micro_batches_sample_over_budget():
    with pytest.raises(ValueError, match="11 tokens exceeds max_tokens_per_gpu=10"):
        micro_batches([0, 1], [3, 11], 10)


# -- pack ----------------------------------------------------------------------------------------------------

def test_pack_exact():
    a = Tokenized([10, 11, 12, 13], [IGNORE, IGNORE, 12, 13])
    b = Tokenized([20, 21, 22], [IGNORE, 21, 22])
    p = pack([a, b])
    assert p.input_ids.tolist() == [[10, 11, 12, 13, 20, 21, 22]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert p.targets.tolist() == [[IGNORE, 12, 13, IGNORE, 21, 22, IGNORE]]
    assert p.num_samples == 2 and p.num_tokens == 7
    assert p.input_ids.dtype == p.position_ids.dtype == p.targets.dtype == torch.long
    # the targets with loss are exactly the samples' loss tokens
    assert int((p.targets != IGNORE).sum()) == count_loss_tokens([a, b]) == 4


def test_pack_first_token_label_is_never_a_target():
    # a label on a sample's first token must not become the target of the previous sample's last token
    a = Tokenized([1, 2, 3], [1, 2, 3])
    b = Tokenized([4, 5, 6], [4, 5, 6])
    assert pack([a, b]).targets.tolist() == [[2, 3, IGNORE, 5, 6, IGNORE]]


@pytest.mark.parametrize("seed", range(5))
def test_pack_random_samples(seed):
    rng = random.Random(seed)
    samples = []
    for _ in range(rng.randint(1, 8)):
        n = rng.randint(1, 20)
        ids = [rng.randint(0, 500) for _ in range(n)]
        samples.append(Tokenized(ids, [i if rng.random() < 0.6 else IGNORE for i in ids]))
    p = pack(samples)
    ids, pos, tgt = p.input_ids[0].tolist(), p.position_ids[0].tolist(), p.targets[0].tolist()
    assert p.input_ids.shape == p.position_ids.shape == p.targets.shape == (1, sum(len(s.input_ids) for s in samples))
    off = 0
    for s in samples:
        n = len(s.input_ids)
        assert ids[off:off + n] == s.input_ids
        assert pos[off:off + n] == list(range(n))
        assert tgt[off + n - 1] == IGNORE  # no target crosses into the next sample
        for t in range(n - 1):
            assert tgt[off + t] == s.labels[t + 1]
        off += n
    assert int((p.targets != IGNORE).sum()) == count_loss_tokens(samples)


def test_packed_batch_to():
    p = pack([Tokenized([1, 2], [IGNORE, 2])]).to("cpu")
    assert p.targets.tolist() == [[2, IGNORE]] and p.num_samples == 1
