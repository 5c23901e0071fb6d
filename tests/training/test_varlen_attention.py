"""Per-sample SDPA for packed rows (hone.models.attention): the same numbers as the stock paths, no T x T mask,
stock SDPA for everything it does not handle, and the trainer really uses it (float32, CPU)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import hone
from hone.models import attention
from hone.models.load import load_model

LENGTHS = [5, 17, 1, 30, 9, 2]  # includes a one-token sample


pytestmark = pytest.mark.usefixtures("single_cpu_thread")


@pytest.fixture
def fresh_calls():
    attention.calls.clear()
    yield attention.calls
    attention.calls.clear()


def packed_row(vocab: int, lengths=LENGTHS, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (1, sum(lengths)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return ids, pos


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _loss(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (logits.float() * weight).sum()  # touches every logit, so every position's gradient counts


def _assert_close(a, b, what: str, atol: float = 1e-5):
    diff = (a - b).abs().max().item()
    assert diff <= atol + 1e-4 * b.abs().max().item(), f"{what}: max difference {diff}"


# -- loading ---------------------------------------------------------------------------------------------------

def test_training_load_uses_varlen_and_evaluation_load_stays_sdpa(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.delenv(attention.ENV_VAR, raising=False)
    train_model = load_model(str(tiny_model_dir), training=True)
    assert train_model.config._attn_implementation == attention.VARLEN_SDPA
    assert load_model(str(tiny_model_dir)).config._attn_implementation == "sdpa"
    # nothing of it reaches a saved config.json
    train_model.save_pretrained(tmp_path / "saved")
    assert attention.VARLEN_SDPA not in (tmp_path / "saved" / "config.json").read_text()


@pytest.mark.parametrize("value", ["sdpa", "eager"])
def test_environment_escape_hatch(tiny_model_dir, monkeypatch, value):
    monkeypatch.setenv(attention.ENV_VAR, value)
    assert load_model(str(tiny_model_dir), training=True).config._attn_implementation == value


def test_unknown_environment_value_is_a_clear_error(tiny_model_dir, monkeypatch):
    from hone.errors import HoneError

    monkeypatch.setenv(attention.ENV_VAR, "fastest")
    with pytest.raises(HoneError, match=attention.ENV_VAR) as err:
        load_model(str(tiny_model_dir), training=True)
    assert "sdpa" in str(err.value)


def test_unsupported_configs_keep_sdpa():
    from transformers import MistralConfig, Qwen2Config, Qwen2ForCausalLM

    small = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64)
    assert attention.supports_varlen(Qwen2Config(**small))
    sliding = Qwen2Config(**small, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert not attention.supports_varlen(sliding)
    assert not attention.supports_varlen(MistralConfig(**small, sliding_window=8))
    assert attention.supports_varlen(MistralConfig(**small, sliding_window=None))
    model = Qwen2ForCausalLM(sliding)
    assert attention.enable_for_training(model) == "sdpa"
    eager = Qwen2ForCausalLM(Qwen2Config(**small, attn_implementation="eager"))
    assert attention.enable_for_training(eager) == "eager"  # another implementation is left alone


# -- the same numbers ------------------------------------------------------------------------------------------

def _tiny(model_type: str, seed: int = 0, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type == "mistral":
        extra.setdefault("sliding_window", None)  # Mistral's default 4096-token window is not supported
    cfg = AutoConfig.for_model(model_type, vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256, **extra)
    cfg.use_cache = False
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)


def _varlen_copy(model):
    import copy

    other = copy.deepcopy(model)
    assert attention.enable_for_training(other) == attention.VARLEN_SDPA
    return other


@pytest.mark.parametrize("model_type", ["qwen2", "llama", "mistral", "qwen3"])
def test_packed_row_equals_samples_alone_and_stock_sdpa(model_type, fresh_calls):
    """Logits and parameter gradients of one packed row with varlen attention equal (a) each sample run alone
    and (b) the stock sdpa path with its block-diagonal mask."""
    stock = _tiny(model_type).train()  # dropout is 0 in these configs; train mode as in the trainer
    varlen = _varlen_copy(stock).train()
    ids, pos = packed_row(stock.config.vocab_size)
    weight = torch.randn(1, ids.shape[1], stock.config.vocab_size, generator=torch.Generator().manual_seed(1))

    out_v = varlen(input_ids=ids, position_ids=pos, use_cache=False).logits
    _loss(out_v, weight).backward()
    assert fresh_calls["varlen"] == stock.config.num_hidden_layers and fresh_calls["fallback"] == 0

    out_s = stock(input_ids=ids, position_ids=pos, use_cache=False).logits
    _loss(out_s, weight).backward()
    _assert_close(out_v, out_s, "logits vs stock sdpa")
    gv, gs = _grads(varlen), _grads(stock)
    assert gv.keys() == gs.keys()
    for name in gs:
        _assert_close(gv[name], gs[name], f"grad {name} vs stock sdpa")

    alone = _tiny(model_type).train()
    off = 0
    for n in LENGTHS:
        out_a = alone(input_ids=ids[:, off:off + n], position_ids=pos[:, off:off + n], use_cache=False).logits
        _assert_close(out_v[:, off:off + n], out_a, f"logits of the {n}-token sample vs alone")
        _loss(out_a, weight[:, off:off + n]).backward()
        off += n
    ga = _grads(alone)
    for name in ga:
        _assert_close(gv[name], ga[name], f"grad {name} vs samples alone")


def test_no_quadratic_mask_is_built_for_a_packed_row(monkeypatch, fresh_calls):
    import transformers.masking_utils as mu

    built = []
    real = mu.sdpa_mask

    def spy(*a, **k):
        built.append(k)
        return real(*a, **k)

    monkeypatch.setattr(mu, "sdpa_mask", spy)  # what hone's mask function would call
    monkeypatch.setitem(mu.AttentionMaskInterface._global_mapping, "sdpa", spy)  # what the stock path calls
    model = _varlen_copy(_tiny("qwen2"))
    ids, pos = packed_row(model.config.vocab_size)
    with torch.no_grad():
        model(input_ids=ids, position_ids=pos, use_cache=False)
    assert built == [] and fresh_calls["varlen"] == 2
    # control: the stock path builds the [1, 1, T, T] block-diagonal mask through the same function
    stock = _tiny("qwen2")
    with torch.no_grad():
        stock(input_ids=ids, position_ids=pos, use_cache=False)
    assert len(built) == 1 and built[0]["q_length"] == ids.shape[1]


# -- fallbacks -------------------------------------------------------------------------------------------------

def test_padded_batch_with_attention_mask_falls_back(fresh_calls):
    stock = _tiny("qwen2").eval()
    varlen = _varlen_copy(stock).eval()
    ids = torch.randint(3, 96, (3, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    with torch.no_grad():
        a = varlen(input_ids=ids, attention_mask=mask, use_cache=False).logits
        b = stock(input_ids=ids, attention_mask=mask, use_cache=False).logits
        c = varlen(input_ids=ids, use_cache=False).logits  # batch > 1 without a mask
        d = stock(input_ids=ids, use_cache=False).logits
    assert fresh_calls["varlen"] == 0 and fresh_calls["fallback"] == 4
    assert torch.equal(a, b) and torch.equal(c, d)


def test_generation_with_kv_cache_matches_sdpa(fresh_calls):
    stock = _tiny("qwen2").eval()
    varlen = _varlen_copy(stock).eval()
    for m in (stock, varlen):
        m.config.use_cache = True
        m.generation_config.pad_token_id = 0
    prompt = torch.randint(3, 96, (1, 7), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt), use_cache=True)
    with torch.no_grad():
        assert torch.equal(varlen.generate(prompt, **kw), stock.generate(prompt, **kw))
    assert fresh_calls["fallback"] >= 2 * 5  # every decoding step (one query token) goes to stock sdpa
    # batched, left-padded generation
    batch = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    with torch.no_grad():
        assert torch.equal(varlen.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False, use_cache=True),
                           stock.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False, use_cache=True))


class _Module(torch.nn.Module):
    def __init__(self, groups: int, causal: bool = True, sliding_window=None):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = causal
        self.sliding_window = sliding_window


def _qkv(t: int, heads: int = 4, kv_heads: int = 2, dim: int = 16, seed: int = 0, q_len: int | None = None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, q_len or t, dim, generator=g)
    return q, torch.randn(1, kv_heads, t, dim, generator=g), torch.randn(1, kv_heads, t, dim, generator=g)


def _block_causal_mask(lengths) -> torch.Tensor:
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    t = len(seg)
    causal = torch.arange(t)[:, None] >= torch.arange(t)[None, :]
    return (causal & (seg[:, None] == seg[None, :]))[None, None]


@pytest.mark.parametrize("dim", [16, 288], ids=["enable_gqa", "repeat_kv"])
@pytest.mark.parametrize("scaling", [None, 0.3])
def test_function_gqa_scaling_and_layout(dim, scaling, fresh_calls):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv(sum(LENGTHS), dim=dim)
    pos = torch.cat([torch.arange(n) for n in LENGTHS]).unsqueeze(0)
    module = _Module(groups=2)
    out, weights = attention.varlen_sdpa_attention(module, q, k, v, None, scaling=scaling, position_ids=pos)
    ref, _ = sdpa_attention_forward(module, q, k, v, _block_causal_mask(LENGTHS), scaling=scaling)
    assert weights is None and out.shape == ref.shape == (1, sum(LENGTHS), 4, dim) and out.is_contiguous()
    _assert_close(out, ref, "varlen vs block-diagonal sdpa")
    assert fresh_calls["varlen"] == 1


def test_function_dropout_is_applied_per_sample(fresh_calls):
    q, k, v = _qkv(sum(LENGTHS))
    pos = torch.cat([torch.arange(n) for n in LENGTHS]).unsqueeze(0)
    module = _Module(groups=2)
    plain, _ = attention.varlen_sdpa_attention(module, q, k, v, None, dropout=0.0, position_ids=pos)
    torch.manual_seed(5)
    dropped, _ = attention.varlen_sdpa_attention(module, q, k, v, None, dropout=0.5, position_ids=pos)
    assert not torch.allclose(plain, dropped)
    torch.manual_seed(5)
    bounds = [0]
    for n in LENGTHS:
        bounds.append(bounds[-1] + n)
    ref = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], dropout_p=0.5,
                                                    is_causal=True, enable_gqa=True)
                     for s, e in zip(bounds[:-1], bounds[1:])], dim=2).transpose(1, 2)
    _assert_close(dropped, ref, "dropout per sample")


@pytest.mark.parametrize("case", ["mask", "no_position_ids", "non_causal_module", "is_causal_false", "sliding",
                                  "q_len_ne_k_len", "one_query", "position_bias"])
def test_function_falls_back_to_stock_sdpa(case, fresh_calls):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    t = 12
    q, k, v = _qkv(t, q_len=4 if case == "q_len_ne_k_len" else 1 if case == "one_query" else None)
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])[:, -q.shape[2]:]
    module = _Module(groups=2, causal=case != "non_causal_module", sliding_window=4 if case == "sliding" else None)
    kwargs = {"position_ids": pos}
    mask = None
    if case == "mask":
        mask = _block_causal_mask([5, 7])
    elif case == "no_position_ids":
        kwargs = {}
    elif case == "is_causal_false":
        kwargs["is_causal"] = False
    elif case == "position_bias":
        kwargs["position_bias"] = torch.randn(1, 4, t, t)
    out, _ = attention.varlen_sdpa_attention(module, q, k, v, mask, **kwargs)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)
    assert fresh_calls == {"fallback": 1}
    assert torch.equal(out, ref)


def test_mask_function_defers_to_sdpa_mask_outside_the_packed_case():
    from transformers import Qwen2Config
    from transformers.masking_utils import causal_mask_function

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    common = dict(q_length=6, kv_length=6, mask_function=causal_mask_function, config=cfg, allow_is_causal_skip=False)
    assert attention.varlen_sdpa_mask(batch_size=1, **common) is None
    for change in ({"batch_size": 2}, {"batch_size": 1, "attention_mask": torch.ones(1, 6, dtype=torch.bool)},
                   {"batch_size": 1, "local_size": 3}, {"batch_size": 1, "kv_offset": 2}):
        mask = attention.varlen_sdpa_mask(**{**common, **change})
        assert isinstance(mask, torch.Tensor) and mask.shape[-2:] == (6, 6), change


def test_segment_bounds():
    assert attention.segment_bounds(torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1]])) == [0, 3, 5, 6, 8]
    assert attention.segment_bounds(torch.tensor([[4, 5, 6]])) == [0, 3]  # one sample not starting at 0
    assert attention.segment_bounds(torch.tensor([[0]])) == [0, 1]


# -- the trainer uses it ---------------------------------------------------------------------------------------

def test_sft_training_runs_on_varlen_attention(tiny_model_dir, tmp_path, monkeypatch, fresh_calls):
    monkeypatch.delenv(attention.ENV_VAR, raising=False)
    rows = [{"messages": [{"role": "user", "content": f"question {i} about the sky"},
                          {"role": "assistant", "content": "the sky is blue " * (i + 1)}]} for i in range(6)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = hone.sft(str(tiny_model_dir), str(data), str(tmp_path / "run"), num_epochs=1, effective_batch_size=6,
                      learning_rate=1e-3, max_seq_len=128, max_tokens_per_gpu=4096, checkpoint_at_epoch=False,
                      save_final_checkpoint=False, seed=0, progress=False, device="cpu", dtype="float32")
    assert result.steps == 1
    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    # one forward of one packed row holding all six samples: one varlen call per layer, no fallback
    assert fresh_calls["varlen"] == layers and fresh_calls["fallback"] == 0
