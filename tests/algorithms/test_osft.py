"""OSFT on the tiny model (float32, CPU): the subspace invariants under AdamW, u = 1 is SFT, saving, targets,
adaptive rank, the SVD cache, distributed decomposition, full-state round trip, and every user error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hone
import hone.api
from hone.algorithms import osft_subspace
from hone.algorithms.osft import (MIN_RETENTION_RATIO, OSFTHooks, adaptive_ratio, default_target_names,
                                  select_targets)
from hone.algorithms.osft_subspace import Subspace, frozen_rank, thin_svd
from hone.config import OSFTConfig, RunConfig
from hone.errors import HoneError
from hone.models.load import load_model
from hone.training.run import run_training
from qa_pairs import QA

RUN = {"effective_batch_size": 2, "learning_rate": 1e-3, "lr_scheduler": "constant", "max_seq_len": 64,
       "max_tokens_per_gpu": 64, "checkpoint_at_epoch": False, "seed": 0, "progress": False, "device": "cpu",
       "dtype": "float32"}
TOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's matrices are too small for two threads to help, and on a loaded machine a thread pool's
    barriers make every op wait for a descheduled thread (measured: 200 steps 5 s with one thread, up to 90 s
    with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class CapturingOSFTHooks(OSFTHooks):
    """OSFT that keeps a handle on the model it trains (the in-memory state after the run)."""

    model = None

    def prepare_model(self, model, **kwargs):
        self.model = super().prepare_model(model, **kwargs)
        return self.model


def run_osft(model_dir, data_file, out, **params):
    cfg = RunConfig.from_flat("osft", {"model_path": str(model_dir), "data_path": str(data_file),
                                       "ckpt_output_dir": str(out), **RUN, **params})
    hooks = CapturingOSFTHooks(cfg.osft, seed=cfg.train.seed)
    return run_training(cfg, hooks), hooks


def invariant_errors(w0: torch.Tensor, wt: torch.Tensor, k: int) -> tuple[float, float]:
    """||U_h^T (W_t - W0)|| / ||W0|| and ||(W_t - W0) V_h|| / ||W0||, with U_h, V_h from an independent SVD."""
    u, _, vh = torch.linalg.svd(w0, full_matrices=False)
    d = wt - w0
    return float((u[:, :k].T @ d).norm() / w0.norm()), float((d @ vh[:k].T).norm() / w0.norm())


# -- the invariants, saving and learning, in one 200-step run per layout ----------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("u, layouts", [(0.25, {"tall", "wide"}), (0.6, {"direct"})])
def test_invariants_hold_after_200_adamw_steps_and_final_checkpoint_is_the_effective_model(
        tiny_model_dir, data_file, tmp_path, u, layouts):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    result, hooks = run_osft(tiny_model_dir, data_file, out, unfreeze_rank_ratio=u, num_epochs=50, max_steps=200,
                             weight_decay=0.1)
    assert result.steps == 200
    info = result.model_info["osft"]
    assert info["target_matrices"] == 14
    assert {row["layout"] for row in info["targets"]} == layouts
    # the loss went down
    assert result.final_loss < 0.5 * result.first_loss, (result.first_loss, result.final_loss)

    base = load_model(str(tiny_model_dir)).state_dict()
    trained = hooks.model.eval().state_dict()
    for row in info["targets"]:
        name, k = row["name"], row["frozen_directions"]
        assert k == int((1 - u) * row["rank"] + 1e-9)
        e_left, e_right = invariant_errors(base[name], trained[name], k)
        assert e_left <= TOL and e_right <= TOL, (name, e_left, e_right)
        # ... and the target did train, in its free directions
        assert (trained[name] - base[name]).norm() / base[name].norm() > 1e-2, name
    # what is not a target trains normally: embeddings, norms, lm_head, biases
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                 "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.bias"):
        assert not torch.equal(base[name], trained[name]), name

    # the saved final checkpoint is a plain Hugging Face model equal to the in-memory effective weights
    final = out / "hf_format" / "final"
    reloaded = AutoModelForCausalLM.from_pretrained(final).eval()
    disk = reloaded.state_dict()
    assert disk.keys() == trained.keys()
    for name in trained:
        assert torch.equal(trained[name], disk[name]), name
    assert not any("osft" in p.name.lower() for p in final.iterdir())


def test_unfreeze_rank_ratio_1_is_sft_exactly(tiny_model_dir, data_file, tmp_path, monkeypatch):
    def no_svd(*a, **k):
        raise AssertionError("u = 1 must not decompose anything")

    monkeypatch.setattr(osft_subspace, "thin_svd", no_svd)
    params = {**RUN, "num_epochs": 5, "weight_decay": 0.1}
    sft = hone.sft(str(tiny_model_dir), str(data_file), str(tmp_path / "sft"), **params)
    osft = hone.osft(str(tiny_model_dir), str(data_file), str(tmp_path / "osft"), unfreeze_rank_ratio=1.0, **params)
    assert osft.steps == sft.steps == 20
    assert osft.model_info["osft"]["unfreeze_rank_ratio"] == 1.0  # no silent fallback to another ratio
    assert osft.model_info["osft"]["frozen_directions"] == 0
    a = load_model(str(sft.final_model_dir)).state_dict()
    b = load_model(str(osft.final_model_dir)).state_dict()
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name
    assert osft.final_loss == sft.final_loss


def test_unfreeze_rank_ratio_0_freezes_every_target(tiny_model_dir, data_file, tmp_path):
    result, hooks = run_osft(tiny_model_dir, data_file, tmp_path / "run", unfreeze_rank_ratio=0.0, num_epochs=2)
    base = load_model(str(tiny_model_dir)).state_dict()
    trained = hooks.model.state_dict()
    info = result.model_info["osft"]
    assert info["trainable_directions"] == 0 and {r["layout"] for r in info["targets"]} == {"frozen"}
    for row in info["targets"]:
        assert torch.equal(base[row["name"]], trained[row["name"]]), row["name"]
    assert not torch.equal(base["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])
    assert result.final_loss < result.first_loss


def test_cli_train_osft(tiny_model_dir, data_file, tmp_path, capsys):
    from hone.cli.main import main

    out = tmp_path / "cli"
    assert main(["train", "osft", "--model", str(tiny_model_dir), "--data", str(data_file), "--output", str(out),
                 "--unfreeze-rank-ratio", "0.5", "--num-epochs", "1", "--effective-batch-size", "4",
                 "--max-seq-len", "64", "--max-tokens-per-gpu", "64", "--device", "cpu", "--no-progress"]) == 0
    assert str(out / "hf_format" / "final") in capsys.readouterr().out
    assert json.loads((out / "training_params.json").read_text())["unfreeze_rank_ratio"] == 0.5


# -- adaptive rank -----------------------------------------------------------------------------------------------

def test_adaptive_rank_follows_the_papers_formula(tiny_model_dir, data_file, tmp_path):
    u = 0.3
    result, hooks = run_osft(tiny_model_dir, data_file, tmp_path / "run", unfreeze_rank_ratio=u,
                             rank_policy="adaptive", num_epochs=2)
    info = result.model_info["osft"]
    importance = info["block_importance"]
    assert len(importance) == 2 and all(0.0 <= x <= 1.0 for x in importance)
    base = load_model(str(tiny_model_dir)).state_dict()
    trained = hooks.model.state_dict()
    for row in info["targets"]:
        block = int(row["name"].split(".")[2])
        r = MIN_RETENTION_RATIO + importance[block] * ((1 - u) - MIN_RETENTION_RATIO)
        assert row["frozen_directions"] == frozen_rank(r, row["rank"])
        assert MIN_RETENTION_RATIO * row["rank"] - 1 <= row["frozen_directions"] <= (1 - u) * row["rank"]
        e_left, e_right = invariant_errors(base[row["name"]], trained[row["name"]], row["frozen_directions"])
        assert e_left <= TOL and e_right <= TOL


def test_adaptive_ratio_bounds():
    assert adaptive_ratio(0.0, 0.2) == pytest.approx(0.1)
    assert adaptive_ratio(1.0, 0.2) == pytest.approx(0.8)  # the paper's trr = 0.8 is u = 0.2
    assert adaptive_ratio(0.7, 1.0) == 0.0                 # u = 1 stays SFT under the adaptive policy
    assert adaptive_ratio(0.5, 0.95) == pytest.approx(0.05)


# -- targets -----------------------------------------------------------------------------------------------------

def _tiny(config_cls, model_cls, **kw):
    torch.manual_seed(0)
    return model_cls(config_cls(**kw))


def test_default_targets_are_the_block_projections_for_split_and_fused_layouts():
    from transformers import GPT2Config, GPT2LMHeadModel, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    qwen = _tiny(Qwen2Config, Qwen2ForCausalLM, vocab_size=64, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    names = default_target_names(qwen)
    assert len(names) == 14
    assert {n.split(".")[-2] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"}
    phi = _tiny(Phi3Config, Phi3ForCausalLM, vocab_size=64, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    assert {n.split(".")[-2] for n in default_target_names(phi)} == {"qkv_proj", "o_proj", "gate_up_proj",
                                                                      "down_proj"}
    gpt2 = _tiny(GPT2Config, GPT2LMHeadModel, vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    assert {".".join(n.split(".")[-3:-1]) for n in default_target_names(gpt2)} == {
        "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    for model in (qwen, phi, gpt2):  # never embeddings, norms or the LM head
        assert not any(x in n for n in default_target_names(model) for x in ("embed", "wte", "wpe", "norm", "ln_",
                                                                                "lm_head"))


def test_target_patterns_override_and_skip_biases_beside_their_weight():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = _tiny(Qwen2Config, Qwen2ForCausalLM, vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    chosen = [n for n, _ in select_targets(model, ["q_proj", r"layers\.1\.mlp\.down_proj\.weight$"])]
    assert chosen == ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight",
                      "model.layers.1.mlp.down_proj.weight"]


# -- user errors: clear messages, before any training ------------------------------------------------------------

@pytest.mark.parametrize("u", [1.5, -0.1])
def test_unfreeze_rank_ratio_outside_0_1_is_a_clear_error(tiny_model_dir, data_file, tmp_path, u):
    with pytest.raises(HoneError) as err:
        hone.osft(str(tiny_model_dir), str(data_file), str(tmp_path / "run"), unfreeze_rank_ratio=u, **RUN)
    msg = str(err.value)
    assert "unfreeze_rank_ratio" in msg and str(u) in msg
    assert ("less than or equal to 1" in msg) if u > 1 else ("greater than or equal to 0" in msg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(HoneError, match=r"unfreeze_rank_ratio must be in \[0, 1\]"):
        OSFTHooks(OSFTConfig.model_construct(unfreeze_rank_ratio=u, target_patterns=None, rank_policy="uniform",
                                             osft_svd_cache_dir=None)).validate()


def test_missing_unfreeze_rank_ratio_is_a_clear_error(tiny_model_dir, data_file, tmp_path):
    with pytest.raises(HoneError, match="missing required parameter 'unfreeze_rank_ratio'"):
        hone.api.train("osft", {"model_path": str(tiny_model_dir), "data_path": str(data_file),
                                "ckpt_output_dir": str(tmp_path / "run")})


@pytest.mark.parametrize("patterns, message", [
    (["nonexistent_proj"], "matches no parameter of the model"),
    (["input_layernorm"], "which is not a 2-D weight matrix"),
    (["q_proj.bias"], "which is not a 2-D weight matrix"),
    (["q_proj("], "is not a valid regular expression"),
])
def test_bad_target_patterns_are_clear_errors(tiny_model_dir, data_file, tmp_path, patterns, message):
    with pytest.raises(HoneError) as err:
        hone.osft(str(tiny_model_dir), str(data_file), str(tmp_path / "run"), unfreeze_rank_ratio=0.5,
                  target_patterns=patterns, **RUN)
    assert message in str(err.value)
    assert err.value.where == "target_patterns" and err.value.fix
    assert not (tmp_path / "run" / "hf_format").exists()


# -- the SVD: cache, distribution, full-state round trip ---------------------------------------------------------

def _prepare(model_dir, u=0.5, **cfg):
    hooks = OSFTHooks(OSFTConfig(unfreeze_rank_ratio=u, **cfg))
    model = hooks.prepare_model(load_model(str(model_dir)))
    return hooks, model


def test_svd_cache_is_reused_and_written_atomically(tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "svd"
    first, _ = _prepare(tiny_model_dir, osft_svd_cache_dir=str(cache))
    files = sorted(cache.iterdir())
    assert len(files) == 14 and all(f.suffix == ".safetensors" and not f.name.startswith(".") for f in files)

    def no_svd(*a, **k):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(osft_subspace, "thin_svd", no_svd)
    second, _ = _prepare(tiny_model_dir, u=0.25, osft_svd_cache_dir=str(cache))  # another u, the same SVDs
    assert sorted(cache.iterdir()) == files
    third, _ = _prepare(tiny_model_dir, u=0.5, osft_svd_cache_dir=str(cache))
    for a, b in zip(first.targets, third.targets):
        assert a.k == b.k and a.subspace.kind == b.subspace.kind
        for name in a.subspace.tensors:
            assert torch.equal(a.subspace.tensors[name], b.subspace.tensors[name])
    # a damaged entry is recomputed, not trusted
    files[0].write_bytes(b"not a safetensors file")
    monkeypatch.undo()
    _prepare(tiny_model_dir, osft_svd_cache_dir=str(cache))
    assert len(list(cache.iterdir())) == 14


def test_full_state_round_trip_keeps_the_original_bases(tiny_model_dir, monkeypatch):
    hooks, model = _prepare(tiny_model_dir, u=0.4)
    w0 = {t.name: model.get_parameter(t.name).detach().clone() for t in hooks.targets}
    state = hooks.state_dict()

    # a "resumed" model whose weights moved (in every direction): the bases must come from the state
    moved = load_model(str(tiny_model_dir))
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.01 * torch.randn_like(p))

    def no_svd(*a, **k):
        raise AssertionError("a resumed run must not decompose the trained weights")

    monkeypatch.setattr(osft_subspace, "thin_svd", no_svd)
    resumed = OSFTHooks(OSFTConfig(unfreeze_rank_ratio=0.4))
    resumed.load_state_dict(state)
    resumed.prepare_model(moved)
    for t in resumed.targets:
        p = moved.get_parameter(t.name)
        p.grad = torch.zeros_like(p)  # as after a step (a parameter without one was not stepped)
    resumed.after_optimizer_step(moved, None)  # puts the frozen components back to W0's
    for t in resumed.targets:
        e_left, e_right = invariant_errors(w0[t.name], moved.get_parameter(t.name).detach(), t.k)
        assert e_left <= TOL and e_right <= TOL, t.name
    with pytest.raises(HoneError, match="not in a format"):
        resumed.load_state_dict({"format": "something else"})


@pytest.mark.parametrize("shape, k, kind", [
    (shape, k, kind)
    for shape, k in [((48, 32), 24), ((32, 48), 24), ((40, 40), 10), ((40, 40), 30)]
    for kind in ("direct", "tall", "wide")
    if kind == "direct" or (kind == "tall") == (shape[1] == min(shape)) or shape[0] == shape[1]])
def test_every_layout_is_the_same_orthogonal_projection(shape, k, kind):
    n, m = shape
    torch.manual_seed(1)
    w0 = torch.randn(shape) / 6
    u, s, vh = thin_svd(w0)
    sub = Subspace.build(w0, u, s, vh, k, kind, torch.float32)
    ph = torch.eye(n) - u[:, :k] @ u[:, :k].T
    pv = torch.eye(m) - vh[:k].T @ vh[:k]
    x = torch.randn(shape)
    got = x.clone()
    sub.project_(got)
    assert torch.allclose(got, ph @ x @ pv, atol=1e-5)
    w = w0 + 0.05 * torch.randn(shape)
    sub.restore_(w_r := w.clone())
    assert torch.allclose(w_r, w0 + ph @ (w - w0) @ pv, atol=1e-5)


# -- the trainer's full-state checkpoints and distributed training -----------------------------------------------

DIST = {**RUN, "effective_batch_size": 4, "num_epochs": 2, "weight_decay": 0.01, "unfreeze_rank_ratio": 0.25}


def _final(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "hf_format" / "final" / "model.safetensors")


def test_resume_from_a_full_state_checkpoint_continues_exactly(tiny_model_dir, data_file, tmp_path):
    whole = tmp_path / "whole"
    hone.osft(str(tiny_model_dir), str(data_file), str(whole), checkpoint_every_steps=2, **DIST)
    step2 = whole / "checkpoints" / "step_00000002"
    state = torch.load(step2 / "algorithm_state.pt", weights_only=False)
    assert len(state["targets"]) == 14 and all(e["subspace"] for e in state["targets"].values())
    resumed = tmp_path / "resumed"
    result = hone.osft(str(tiny_model_dir), str(data_file), str(resumed), resume_from=str(step2), **DIST)
    assert result.steps == 4
    a, b = _final(whole), _final(resumed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


@pytest.mark.slow
def test_two_fsdp_processes_train_like_one_and_keep_the_invariants(tiny_model_dir, data_file, tmp_path):
    """torchrun with FSDP2 (FULL_SHARD): the SVD is shared out across the two ranks and broadcast, each rank keeps
    the bases of its rows only, and the projections sum their products across ranks."""
    one = tmp_path / "one"
    hone.osft(str(tiny_model_dir), str(data_file), str(one), **DIST)
    two = tmp_path / "two"
    result = hone.osft(str(tiny_model_dir), str(data_file), str(two), nproc_per_node=2, checkpoint_every_steps=4,
                       fsdp_sharding_strategy="FULL_SHARD", **DIST)
    assert result.world_size == 2 and result.steps == 4
    a, b = _final(one), _final(two)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4
    base = load_model(str(tiny_model_dir)).state_dict()
    k_of = {r["name"]: r["frozen_directions"] for r in result.model_info["osft"]["targets"]}
    for name, k in k_of.items():
        e_left, e_right = invariant_errors(base[name], b[name], k)
        assert e_left <= TOL and e_right <= TOL, (name, e_left, e_right)
        assert (b[name] - base[name]).norm() > 0, name
    # the checkpoint holds the whole bases (rank 0 keeps them when the weights are sharded)
    state = torch.load(two / "checkpoints" / "step_00000004" / "algorithm_state.pt", weights_only=False)
    for name, entry in state["targets"].items():
        sub = Subspace.from_state(entry["subspace"])
        rows = sub.tensors["U"] if "U" in sub.tensors else sub.tensors["Uc"]
        assert rows.shape[0] == base[name].shape[0], name


def test_hooks_follow_the_parameters_through_a_ddp_wrapper(tiny_model_dir, tmp_path):
    from torch.nn.parallel import DistributedDataParallel as DDP

    hooks, model = _prepare(tiny_model_dir, u=0.25)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = DDP(model)
        w0 = {t.name: model.get_parameter(t.name).detach().clone() for t in hooks.targets}
        with torch.no_grad():
            for t in hooks.targets:
                p = model.get_parameter(t.name)
                p.add_(0.01 * torch.randn_like(p))
                p.grad = 0.01 * torch.randn_like(p)
        hooks.after_backward(wrapped)
        hooks.after_optimizer_step(wrapped, None)
        for t in hooks.targets:
            p = model.get_parameter(t.name)
            assert t.param is p
            for got in invariant_errors(w0[t.name], p.detach(), t.k) + invariant_errors(w0[t.name], w0[t.name] + p.grad, t.k):
                assert got <= TOL, t.name
    finally:
        torch.distributed.destroy_process_group()
