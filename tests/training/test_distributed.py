"""torchrun + FSDP2 / DDP on CPU (gloo): two processes train exactly like one."""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

import hone
from hone.config import DistributedConfig, RunConfig
from hone.errors import HoneError
from hone.training.distributed import split_among_ranks
from hone.training.launch import resolve_launch, torchrun_command

ARGS = dict(effective_batch_size=6, learning_rate=3e-3, num_epochs=2, max_seq_len=160, max_tokens_per_gpu=160,
            lr_scheduler="cosine", weight_decay=0.01, checkpoint_at_epoch=False, progress=False, device="cpu",
            dtype="float32")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = random.Random(1)
    rows = [{"messages": [{"role": "user", "content": "Tell me. " * rng.randint(1, 15)},
                          {"role": "assistant", "content": f"Number {i} " * rng.randint(1, 6)}]} for i in range(20)]
    path = tmp_path_factory.mktemp("d") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def single(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    hone.sft(str(tiny_model_dir), str(data), str(out), **ARGS)
    return out


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "training_metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("strategy", ["FULL_SHARD", "NO_SHARD"])
def test_two_processes_match_one(strategy, tiny_model_dir, data, single, tmp_path):
    out = tmp_path / "run"
    result = hone.sft(str(tiny_model_dir), str(data), str(out), nproc_per_node=2, fsdp_sharding_strategy=strategy,
                      **ARGS)
    assert result.world_size == 2 and result.steps == 8 and result.data_report.samples == 20
    one, two = _losses(single), _losses(out)
    assert len(one) == len(two) == 8
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1e-4
    w1 = load_file(single / "hf_format" / "final" / "model.safetensors")
    w2 = load_file(out / "hf_format" / "final" / "model.safetensors")
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-4
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out / "hf_format" / "final")
    ids = torch.tensor([[5, 17, 42, 99]])
    ref = AutoModelForCausalLM.from_pretrained(single / "hf_format" / "final")
    assert (reloaded(ids).logits - ref(ids).logits).abs().max().item() <= 1e-3


def test_split_among_ranks_balances_tokens_and_covers_everything():
    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(64)]
    indices = rng.sample(range(64), 40)
    shares = split_among_ranks(indices, lengths, 3)
    assert sorted(i for s in shares for i in s) == sorted(indices)
    loads = [sum(lengths[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(lengths)
    assert split_among_ranks(indices, lengths, 3) == shares  # every rank computes the same division
    assert split_among_ranks([1], lengths, 2)[1] == []  # a rank may get nothing: it runs placeholder passes


def test_launch_precedence_arguments_then_pet_env_then_defaults(monkeypatch):
    for k in ("PET_NPROC_PER_NODE", "PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT",
              "PET_RDZV_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    plan = resolve_launch(DistributedConfig())
    assert (plan.nproc_per_node, plan.nnodes, plan.node_rank, plan.master_addr) == (1, 1, 0, "127.0.0.1")
    monkeypatch.setenv("PET_NPROC_PER_NODE", "3")
    monkeypatch.setenv("PET_NNODES", "2")
    monkeypatch.setenv("PET_NODE_RANK", "1")
    monkeypatch.setenv("PET_MASTER_ADDR", "trainer-node-0")
    monkeypatch.setenv("PET_MASTER_PORT", "29400")
    plan = resolve_launch(DistributedConfig())
    assert (plan.nproc_per_node, plan.nnodes, plan.node_rank, plan.master_addr, plan.master_port) == \
        (3, 2, 1, "trainer-node-0", 29400)
    plan = resolve_launch(DistributedConfig(nproc_per_node=2, node_rank=0))
    assert (plan.nproc_per_node, plan.node_rank, plan.nnodes) == (2, 0, 2)
    cmd = torchrun_command(plan, "cfg.json")
    assert "--nnodes=2" in cmd and "--master_addr=trainer-node-0" in cmd and "--master_port=29400" in cmd
    assert cmd[-3:] == ["-m", "hone.worker", "cfg.json"]


def test_bad_launch_input():
    with pytest.raises(HoneError, match="mutually exclusive"):
        RunConfig.from_flat("sft", {"model_path": "m", "data_path": "d", "ckpt_output_dir": "o",
                                    "master_addr": "a", "rdzv_endpoint": "b:1"})
    if not torch.cuda.is_available():
        with pytest.raises(HoneError, match="no CUDA GPU"):
            resolve_launch(DistributedConfig(nproc_per_node="gpu"))
    with pytest.raises(HoneError, match="nproc_per_node"):
        RunConfig.from_flat("sft", {"model_path": "m", "data_path": "d", "ckpt_output_dir": "o", "nproc_per_node": 0})


def test_lora_under_two_fsdp_processes_matches_one(tiny_model_dir, data, tmp_path):
    """Adapters are gathered whole from the shards when saved (saving rank 0's shard only is the FSDP2 pitfall)."""
    args = {**ARGS, "num_epochs": 1, "lora_r": 4, "learning_rate": 1e-2}
    one, two = tmp_path / "one", tmp_path / "two"
    hone.lora_sft(str(tiny_model_dir), str(data), str(one), **args)
    hone.lora_sft(str(tiny_model_dir), str(data), str(two), nproc_per_node=2, fsdp_sharding_strategy="FULL_SHARD",
                  **args)
    a1 = load_file(one / "hf_format" / "final_adapter" / "adapter_model.safetensors")
    a2 = load_file(two / "hf_format" / "final_adapter" / "adapter_model.safetensors")
    assert a1.keys() == a2.keys() and len(a1) > 0
    assert max((a1[k] - a2[k]).abs().max().item() for k in a1) <= 1e-4
    assert max(abs(a - b) for a, b in zip(_losses(one), _losses(two))) <= 1e-4


def test_collective_timeout_reads_instructlab_variable():
    from datetime import timedelta

    from hone.training.distributed import COLLECTIVE_TIMEOUT_ENV, collective_timeout

    assert collective_timeout({}) == timedelta(minutes=30)
    assert collective_timeout({COLLECTIVE_TIMEOUT_ENV: "600000"}) == timedelta(minutes=10)
    for bad in ("0", "-5", "ten"):
        with pytest.raises(HoneError, match=COLLECTIVE_TIMEOUT_ENV):
            collective_timeout({COLLECTIVE_TIMEOUT_ENV: bad})
