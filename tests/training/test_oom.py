"""Out-of-memory is survivable: an OOM inside a step halves the micro-batch token budget and redoes the step,
with the same update; only a sample that cannot fit in the halved budget stops the run (HoneError naming it).
The OOM is injected on CPU: the loss function raises ``torch.OutOfMemoryError`` for a micro-batch above a size."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hone.training.trainer as trainer
from hone.cli.main import main

pytestmark = pytest.mark.usefixtures("single_cpu_thread")

WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing near the old river".split()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("oom") / "d.jsonl"
    rows = []
    for k in range(8):
        q = " ".join(WORDS[(k + i) % len(WORDS)] for i in range(3 + k))
        a = " ".join(WORDS[(2 * k + i) % len(WORDS)] for i in range(4 + 2 * k))
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(model_dir, data, out: Path, *extra: str) -> int:
    return main(["train", "sft", "--model", str(model_dir), "--data", str(data), "--output", str(out),
                 "--max-seq-len", "128", "--max-tokens-per-gpu", "256", "--effective-batch-size", "4",
                 "--max-steps", "2", "--learning-rate", "1e-3", "--no-checkpoint-at-epoch", "--lr-scheduler",
                 "constant", "--no-progress", *extra])


def _inject_oom(monkeypatch, above: int = 0, times: int | None = None, exactly: int | None = None) -> list[int]:
    """Raise OutOfMemoryError for micro-batches of more than ``above`` tokens (or of ``exactly`` that many),
    the first ``times`` of them or always; returns the sizes of the micro-batches that ran."""
    real = trainer.forward_loss_sum
    ran: list[int] = []
    raised = [0]

    def forward(model, batch):
        n = batch.input_ids.shape[1]
        hit = n == exactly if exactly is not None else n > above
        if hit and (times is None or raised[0] < times):
            raised[0] += 1
            # the failed forward had started: gradients of an earlier micro-batch may already be there
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        ran.append(n)
        return real(model, batch)

    monkeypatch.setattr(trainer, "forward_loss_sum", forward)
    return ran


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "hf_format" / "final" / "model.safetensors"))


def test_oom_halves_the_budget_and_the_update_is_unchanged(tiny_model_dir, data, tmp_path, monkeypatch, caplog):
    assert _train(tiny_model_dir, data, tmp_path / "plain") == 0
    ran_plain = _inject_oom(monkeypatch, above=10_000, times=0)
    # (a second plain run shows the micro-batching: one micro-batch per step)
    assert _train(tiny_model_dir, data, tmp_path / "plain2") == 0
    biggest = max(ran_plain)
    monkeypatch.undo()

    ran = _inject_oom(monkeypatch, above=biggest - 1, times=1)
    with caplog.at_level(logging.WARNING, logger="hone"):
        assert _train(tiny_model_dir, data, tmp_path / "oom") == 0
    warnings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(warnings) == 1 and "at most 128 tokens" in warnings[0]
    assert max(ran) <= 128 and len(ran) > len(ran_plain)  # the rest of the run kept the halved budget
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "oom")
    assert a.keys() == b.keys()
    # the same update up to float summation order (AdamW moves every weight by ~lr=1e-3 per step; the
    # difference stays below 1% of the 2e-3 the two steps moved the weights)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=0), k
    # with the halved budget from the start, the micro-batches are the same: the weights are identical
    monkeypatch.undo()
    assert _train(tiny_model_dir, data, tmp_path / "plain128", "--max-tokens-per-gpu", "128") == 0
    c = _weights(tmp_path / "plain128")
    assert all(torch.equal(b[k], c[k]) for k in b)
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert any(not torch.equal(base[k], b[k]) for k in base)  # it trained


def test_a_sample_that_cannot_fit_stops_the_run_naming_it(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    _inject_oom(monkeypatch, above=8, times=None)  # every real micro-batch runs out of memory
    out = tmp_path / "out"
    assert _train(tiny_model_dir, data, out) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "out of memory: sample" in err and "tokens) does not fit" in err
    assert "training sample" in err and "fix:" in err and "max_seq_len" in err
    assert not (out / "hf_format").exists()


def test_oom_safe_step_directly(tiny_model_dir, monkeypatch):
    """Unit level: the budget returned is the halved one; gradients equal those of a plain step."""
    from hone.data.tokenize import Tokenized
    from hone.models.load import load_model

    torch.manual_seed(0)
    samples = [Tokenized(list(range(3, 3 + n)), list(range(3, 3 + n))) for n in (30, 20, 12, 9)]
    lengths = [len(s.input_ids) for s in samples]

    def grads(inject: bool) -> tuple[list[torch.Tensor], int]:
        model = load_model(str(tiny_model_dir), dtype=torch.float32, device="cpu")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        monkeypatch.undo()
        if inject:
            _inject_oom(monkeypatch, above=40, times=2)
        *_, budget = trainer.oom_safe_step(model, opt, samples, [0, 1, 2, 3], lengths, 128, torch.device("cpu"))
        return [p.grad.clone() for p in model.parameters()], budget

    plain, b0 = grads(False)
    survived, b1 = grads(True)
    assert b0 == 128 and b1 == 32
    for g0, g1 in zip(plain, survived):
        assert torch.allclose(g0, g1, atol=1e-6, rtol=1e-5)


def test_partial_gradients_of_the_failed_attempt_are_dropped(tiny_model_dir, monkeypatch):
    """The OOM strikes the second micro-batch, after the first one's backward: those gradients are zeroed."""
    from hone.data.tokenize import Tokenized
    from hone.models.load import load_model

    samples = [Tokenized(list(range(3, 3 + n)), list(range(3, 3 + n))) for n in (30, 20, 12, 9)]
    lengths = [len(s.input_ids) for s in samples]
    out = []
    for inject in (False, True):
        model = load_model(str(tiny_model_dir), dtype=torch.float32, device="cpu")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        monkeypatch.undo()
        ran = _inject_oom(monkeypatch, exactly=9, times=1) if inject else []
        # budget 64: micro-batches [30, 20, 12] then [9]; the OOM hits [9]; halved to 32: [30], [20, 12], [9]
        *_, budget = trainer.oom_safe_step(model, opt, samples, [0, 1, 2, 3], lengths, 64, torch.device("cpu"))
        out.append([p.grad.clone() for p in model.parameters()])
        if inject:
            assert budget == 32 and ran == [62, 30, 32, 9]
    for g0, g1 in zip(*out):
        assert torch.allclose(g0, g1, atol=1e-6, rtol=1e-5)
