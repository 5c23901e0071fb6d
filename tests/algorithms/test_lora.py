"""LoRA / QLoRA through peft on the one trainer: real training of the tiny model on CPU (float32)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import hone
from hone.algorithms.lora import LoRAHooks, adapter_dir, default_target_modules
from hone.config import LoRAConfig, RunConfig
from hone.data.tokenize import IGNORE
from hone.errors import HoneError
from hone.models.load import load_model, load_tokenizer
from hone.models.structure import transformer_blocks
from hone.training.metrics import read_metrics
from hone.training.run import run_training
from qa_pairs import QA

QWEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CPU = {"device": "cpu", "dtype": "float32", "progress": False}
# One optimizer step per epoch (all 8 samples), so step 1's loss is the untouched model's loss on all samples.
RUN = {**CPU, "effective_batch_size": 8, "max_seq_len": 64, "max_tokens_per_gpu": 256, "lr_scheduler": "constant",
       "learning_rate": 1e-2, "seed": 0}


def chat_rows(pairs=QA) -> list[dict]:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    if len(rows) > 3:
        rows[3]["messages"].insert(0, {"role": "system", "content": "answer in one short sentence"})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's tensors are too small to share out: on a busy 2-core machine one thread is ~10x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("lora-data") / "chat.jsonl", chat_rows())


class CapturingLoRAHooks(LoRAHooks):
    """LoRA that keeps a handle on the model it trains (the in-memory state after the run)."""

    model = None

    def prepare_model(self, model, **kwargs):
        self.model = super().prepare_model(model, **kwargs)
        return self.model


def lora_run(model_dir, data, out: Path, **params):
    cfg = RunConfig.from_flat("lora", {"model_path": str(model_dir), "data_path": str(data),
                                       "ckpt_output_dir": str(out), **RUN, **params})
    hooks = CapturingLoRAHooks(cfg.lora)
    return run_training(cfg, hooks), hooks.model


@pytest.fixture(scope="module")
def trained(tiny_model_dir, data_file, tmp_path_factory):
    """3 epochs with epoch checkpoints, LoRA dropout on (so any use of the RNG by a checkpoint would show)."""
    out = tmp_path_factory.mktemp("lora-run") / "run"
    result, model = lora_run(tiny_model_dir, data_file, out, num_epochs=3, lora_dropout=0.1, lora_r=8)
    return result, model.eval(), out


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def probe_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(chat_rows()[4]["messages"], tokenize=False)
    return torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])


# -- what trains ---------------------------------------------------------------------------------------------

def test_base_weights_unchanged_and_only_adapters_move(trained, tiny_model_dir):
    result, model, _ = trained
    base = load_model(str(tiny_model_dir)).state_dict()
    # the same initial adapter as the run built: same seed, same loading, same preparation
    torch.manual_seed(0)
    initial = LoRAHooks(LoRAConfig(lora_r=8, lora_dropout=0.1)).prepare_model(load_model(str(tiny_model_dir)))
    initial_sd = initial.state_dict()

    lora_names, base_names = [], []
    for name, p in model.named_parameters():
        (lora_names if "lora_" in name else base_names).append(name)
        assert p.requires_grad == ("lora_" in name), name
        assert not torch.equal(p, initial_sd[name]) if "lora_" in name else torch.equal(p, initial_sd[name]), name
    assert lora_names and base_names
    # every base tensor is bit-for-bit the one on disk (peft names it <module>.base_layer.weight)
    for name in base_names:
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(model.get_parameter(name), base[plain]), name
    assert {n.removeprefix("base_model.model.").replace(".base_layer.", ".") for n in base_names} == set(base)

    # adapters on exactly the block projections (found from the modules), none on embeddings or the head
    adapted = {n.split(".lora_A")[0] for n in lora_names if ".lora_A." in n}
    assert {a.rsplit(".", 1)[-1] for a in adapted} == set(QWEN_PROJECTIONS)
    assert len(adapted) == 2 * len(QWEN_PROJECTIONS)  # two blocks
    assert all(".layers." in a for a in adapted)

    info = result.model_info
    n_lora = sum(model.get_parameter(n).numel() for n in lora_names)
    assert info["trainable_parameters"] == n_lora
    assert info["total_parameters"] == n_lora + sum(t.numel() for t in base.values())
    assert sorted(info["target_modules"]) == sorted(QWEN_PROJECTIONS)
    saved = json.loads((result.output_dir / "training_result.json").read_text())["model_info"]
    assert saved["trainable_parameters"] == n_lora


def test_prompt_tokens_carry_no_loss(trained, tiny_model_dir):
    """Step 1 (all samples, adapter B = 0 so the model is the base) has exactly the base model's loss over the
    assistant replies and their end-of-turn token, found here independently of hone's masking code."""
    result, _, out = trained
    tokenizer = load_tokenizer(str(tiny_model_dir))
    base = load_model(str(tiny_model_dir)).eval()
    total, count, all_total, all_count = 0.0, 0, 0.0, 0
    for row in chat_rows():
        msgs = row["messages"]
        prompt = tokenizer(tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False).input_ids
        ids = tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False), add_special_tokens=False).input_ids
        reply = tokenizer(msgs[-1]["content"] + "<|im_end|>", add_special_tokens=False).input_ids
        assert ids[:len(prompt)] == prompt and ids[len(prompt):len(prompt) + len(reply)] == reply
        logp = torch.log_softmax(logits(base, torch.tensor([ids]))[0].double(), -1)
        token_nll = -logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]  # position t predicts ids[t+1]
        span = slice(len(prompt) - 1, len(prompt) - 1 + len(reply))
        total += token_nll[span].sum().item()
        count += len(reply)
        all_total += token_nll.sum().item()
        all_count += len(token_nll)

    first = read_metrics(out / "training_metrics.jsonl")[0]
    assert first["num_samples"] == len(QA)
    assert first["num_loss_tokens"] == count < all_count
    assert result.first_loss == pytest.approx(total / count, rel=1e-5)
    assert abs(result.first_loss - all_total / all_count) > 1e-3  # the check can tell the two apart
    # the processed data the run trained on: the trained labels are the replies, never a prompt token
    processed = [json.loads(line) for line in (out / "data" / "data.jsonl").read_text().splitlines()]
    for rec, row in zip(processed, chat_rows()):
        trained_ids = [x for x in rec["labels"] if x != IGNORE]
        assert tokenizer.decode(trained_ids) == row["messages"][-1]["content"] + "<|im_end|>"


def test_loss_decreases_on_memorisable_data(tiny_model_dir, tmp_path):
    # The tiny model is untrained: its random head gives flat logits that only an adapter on lm_head can
    # sharpen, so this run names its targets (which also checks a user's target_modules).
    data = write_rows(tmp_path / "four.jsonl", chat_rows(QA[:4]))
    out = tmp_path / "run"
    result = hone.lora_sft(str(tiny_model_dir), str(data), str(out), **{**RUN, "effective_batch_size": 4},
                           num_epochs=30, target_modules=[*QWEN_PROJECTIONS, "lm_head"], checkpoint_at_epoch=False,
                           save_final_checkpoint=False)
    metrics = read_metrics(out / "training_metrics.jsonl")
    assert result.steps == len(metrics) == 30
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert result.final_loss < 0.25 * result.first_loss, (result.first_loss, result.final_loss)
    assert sum(m["loss"] for m in metrics[-5:]) < 0.25 * sum(m["loss"] for m in metrics[:5])
    assert "lm_head" in result.model_info["target_modules"]
    assert not (out / "hf_format").exists()


# -- what is saved -------------------------------------------------------------------------------------------

def test_merged_model_equals_base_plus_adapter_and_reloads_with_transformers(trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, model, out = trained
    final = out / "hf_format" / "final"
    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    assert type(merged).__name__ == "Qwen2ForCausalLM" and merged.dtype == torch.float32
    base_sd = load_model(str(tiny_model_dir)).state_dict()
    merged_sd = merged.state_dict()
    assert merged_sd.keys() == base_sd.keys()  # the plain architecture, no adapter left
    changed = [n for n in base_sd if not torch.equal(base_sd[n], merged_sd[n])]
    assert changed and all(n.rsplit(".", 2)[-2] in QWEN_PROJECTIONS for n in changed)

    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.chat_template == load_tokenizer(str(tiny_model_dir)).chat_template
    ids = probe_ids(tokenizer)
    diff = (logits(model, ids) - logits(merged, ids)).abs().max().item()
    assert diff <= 1e-5, diff
    assert (logits(model, ids) - logits(load_model(str(tiny_model_dir)).eval(), ids)).abs().max() > 1e-3


def test_adapter_reloads_with_peft_onto_the_base(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, model, out = trained
    path = out / "hf_format" / "final_adapter"
    assert path == adapter_dir(out / "hf_format", "final")
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert sorted(config["target_modules"]) == sorted(QWEN_PROJECTIONS)
    assert (path / "adapter_model.safetensors").is_file() and not (path / "model.safetensors").exists()
    saved = load_file(path / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reloaded = PeftModel.from_pretrained(base, path).eval()
    ids = probe_ids(AutoTokenizer.from_pretrained(path))
    diff = (logits(model, ids) - logits(reloaded, ids)).abs().max().item()
    assert diff <= 1e-6, diff


def test_epoch_checkpoints_are_adapter_plus_merged(trained):
    result, _, out = trained
    hf = out / "hf_format"
    names = ["epoch_1", "epoch_2", "epoch_3", "final"]
    # written once per epoch as samples_<N> (+ _adapter); hone's names are links (final = epoch_3)
    assert sorted(p.name for p in hf.iterdir() if p.is_symlink()) == sorted(names + [f"{n}_adapter" for n in names])
    written = [p.name for p in hf.iterdir() if not p.is_symlink()]
    assert len(written) == 6 and all(n.startswith("samples_") for n in written)
    assert result.checkpoints == [hf / n for n in names]
    for n in names:
        assert (hf / n / "model.safetensors").is_file() and (hf / n / "config.json").is_file()
        assert (hf / f"{n}_adapter" / "adapter_model.safetensors").is_file()
        for d in (hf / n, hf / f"{n}_adapter"):
            assert (d / "tokenizer.json").is_file() and (d / "tokenizer_config.json").is_file()
    assert not sorted(str(p) for p in out.rglob(".*"))  # no temporary left behind

    adapters = {n: load_file(hf / f"{n}_adapter" / "adapter_model.safetensors") for n in names}
    assert all(torch.equal(adapters["epoch_3"][k], adapters["final"][k]) for k in adapters["final"])
    assert any(not torch.equal(adapters["epoch_1"][k], adapters["final"][k]) for k in adapters["final"])
    merged = {n: load_file(hf / n / "model.safetensors") for n in ("epoch_1", "final")}
    assert any(not torch.equal(merged["epoch_1"][k], merged["final"][k]) for k in merged["final"])


def test_checkpoints_do_not_disturb_training(trained, tiny_model_dir, data_file, tmp_path):
    """The same run without epoch checkpoints ends with the very same adapter, bit for bit (dropout is on, so
    a checkpoint that touched the RNG, the weights or the train/eval mode would show)."""
    result, model, out = trained
    other, other_model = lora_run(tiny_model_dir, data_file, tmp_path / "run", num_epochs=3, lora_dropout=0.1,
                                  lora_r=8, checkpoint_at_epoch=False)
    assert other.checkpoints == [tmp_path / "run" / "hf_format" / "final"]
    assert [m["loss"] for m in read_metrics(tmp_path / "run" / "training_metrics.jsonl")] == \
        [m["loss"] for m in read_metrics(out / "training_metrics.jsonl")]
    mine, theirs = dict(model.named_parameters()), dict(other_model.named_parameters())
    assert all(torch.equal(mine[n], theirs[n]) for n in mine)


# -- options -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return lambda: load_model(str(tiny_model_dir))


def lora_layers(peft_model):
    from peft.tuners.lora import LoraLayer

    return [m for m in peft_model.modules() if isinstance(m, LoraLayer)]


def test_rslora_scaling_is_alpha_over_sqrt_r(tiny_model):
    plain = lora_layers(LoRAHooks(LoRAConfig(lora_r=4, lora_alpha=8)).prepare_model(tiny_model()))
    rs = lora_layers(LoRAHooks(LoRAConfig(lora_r=4, lora_alpha=8, use_rslora=True)).prepare_model(tiny_model()))
    assert len(plain) == len(rs) == 14
    assert all(m.scaling["default"] == 8 / 4 for m in plain)
    assert all(m.scaling["default"] == 8 / math.sqrt(4) for m in rs)


def test_dora_adds_trainable_magnitude_vectors(tiny_model):
    model = LoRAHooks(LoRAConfig(lora_r=4, use_dora=True)).prepare_model(tiny_model())
    layers = lora_layers(model)
    for m in layers:
        mag = m.lora_magnitude_vector["default"].weight
        assert mag.requires_grad and mag.shape == (m.out_features,)
        # DoRA's magnitude starts as the norm of each output row of the base weight (peft's definition)
        assert torch.allclose(mag, m.get_base_layer().weight.norm(p=2, dim=1), atol=1e-6)
    plain = LoRAHooks(LoRAConfig(lora_r=4)).prepare_model(tiny_model())
    assert not any("lora_magnitude_vector" in n for n, _ in plain.named_parameters())
    extra = LoRAHooks(LoRAConfig()).describe(model)["trainable_parameters"] - \
        LoRAHooks(LoRAConfig()).describe(plain)["trainable_parameters"]
    assert extra == sum(m.out_features for m in layers)


def test_dora_rslora_run_merges_and_reloads(tiny_model_dir, data_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, model = lora_run(tiny_model_dir, data_file, tmp_path / "run", num_epochs=2, lora_r=4, use_dora=True,
                             use_rslora=True, checkpoint_at_epoch=False)
    model.eval()
    hf = tmp_path / "run" / "hf_format"
    config = json.loads((hf / "final_adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] and config["use_rslora"]
    ids = probe_ids(load_tokenizer(str(tiny_model_dir)))
    merged = AutoModelForCausalLM.from_pretrained(hf / "final").eval()
    assert not any("lora" in k for k in merged.state_dict())
    assert (logits(model, ids) - logits(merged, ids)).abs().max().item() <= 1e-5
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), hf / "final_adapter")
    assert (logits(model, ids) - logits(reloaded.eval(), ids)).abs().max().item() <= 1e-6


def test_default_targets_are_found_from_the_modules(tiny_model):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert default_target_modules(tiny_model()) == QWEN_PROJECTIONS
    # another architecture, other names, Conv1D projections: nothing is looked up by model name
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    assert transformer_blocks(gpt2) == ["transformer.h.0", "transformer.h.1"]
    assert default_target_modules(gpt2) == ["c_attn", "c_proj", "c_fc"]
    peft_gpt2 = LoRAHooks(LoRAConfig(lora_r=2)).prepare_model(gpt2)
    assert len(lora_layers(peft_gpt2)) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.norm = nn.Linear(4, 4), nn.LayerNorm(4)

    class Toy(nn.Module):  # a short name that also exists outside the blocks: full names are used
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block(), Block()])
            self.proj = nn.Linear(4, 4)

    assert default_target_modules(Toy()) == ["layers.0.proj", "layers.1.proj"]


def test_target_module_matching_nothing_is_an_error(tiny_model):
    with pytest.raises(HoneError) as err:
        LoRAHooks(LoRAConfig(target_modules=["q_proj", "qkv_proj"])).prepare_model(tiny_model())
    assert "'qkv_proj'" in err.value.what and "q_proj" not in err.value.what
    assert err.value.where == "parameter target_modules"
    assert "q_proj, k_proj, v_proj" in err.value.fix
    # peft's "all-linear" is accepted as the default
    all_linear = LoRAHooks(LoRAConfig(target_modules=["all-linear"]))
    assert len(lora_layers(all_linear.prepare_model(tiny_model()))) == 14


def test_unsupported_init_is_refused_before_loading():
    with pytest.raises(HoneError, match="init_lora_weights='pissa'"):
        LoRAHooks(LoRAConfig(init_lora_weights="pissa")).validate()
    LoRAHooks(LoRAConfig(init_lora_weights="gaussian")).validate()
    with pytest.raises(HoneError, match="even lora_r"):  # peft itself would fail only after loading the weights
        LoRAHooks(LoRAConfig(init_lora_weights="orthogonal", lora_r=3)).validate()


# -- QLoRA -----------------------------------------------------------------------------------------------------

def test_load_in_4bit_without_cuda_is_a_clear_error_before_anything_is_written(tiny_model_dir, data_file,
                                                                               tmp_path):
    from hone.cli.main import main

    out = tmp_path / "run"
    with pytest.raises(HoneError) as err:
        hone.lora_sft(str(tiny_model_dir), str(data_file), str(out), load_in_4bit=True, **CPU)
    assert "load_in_4bit" in err.value.what and "CUDA" in err.value.what
    assert "no CUDA GPU is available" in err.value.what
    assert "bitsandbytes" in err.value.what and "bitsandbytes" in err.value.fix
    assert err.value.where == "parameter load_in_4bit"
    assert not out.exists()

    assert main(["train", "lora", "--model", str(tiny_model_dir), "--data", str(data_file), "--output", str(out),
                 "--load-in-8bit"]) == 2
    assert not out.exists()


def test_quantization_config(monkeypatch):
    with pytest.raises(HoneError, match="load_in_4bit and load_in_8bit are both set"):
        LoRAHooks(LoRAConfig(load_in_4bit=True, load_in_8bit=True)).validate()
    # with a GPU but no bitsandbytes, only the package is named
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    hooks = LoRAHooks(LoRAConfig(load_in_4bit=True, bnb_4bit_compute_dtype="float16"))
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(HoneError) as err:
            hooks.validate()
        assert "bitsandbytes package is not installed" in err.value.what and "CUDA GPU is" not in err.value.what
    kw = hooks.load_kwargs()
    q = kw["quantization_config"]
    assert q.load_in_4bit and not q.load_in_8bit
    assert (q.bnb_4bit_quant_type, q.bnb_4bit_compute_dtype, q.bnb_4bit_use_double_quant) == \
        ("nf4", torch.float16, True)
    assert kw["device_map"] == {"": 0}
    q8 = LoRAHooks(LoRAConfig(load_in_8bit=True)).load_kwargs()["quantization_config"]
    assert q8.load_in_8bit and not q8.load_in_4bit
    assert LoRAHooks(LoRAConfig()).load_kwargs() == {}


# -- the command -----------------------------------------------------------------------------------------------

def test_cli_train_lora(tiny_model_dir, data_file, tmp_path):
    from hone.cli.main import main

    out = tmp_path / "run"
    code = main(["train", "lora", "--model", str(tiny_model_dir), "--data", str(data_file), "--output", str(out),
                 "--num-epochs", "1", "--effective-batch-size", "8", "--max-seq-len", "64",
                 "--max-tokens-per-gpu", "256", "--device", "cpu", "--dtype", "float32", "--no-progress",
                 "--lora-r", "4", "--target-modules", "q_proj", "--target-modules", "v_proj", "--no-save-merged",
                 "--no-checkpoint-at-epoch"])
    assert code == 0
    adapter = out / "hf_format" / "final_adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (out / "hf_format" / "final").exists()  # save_merged off
    params = json.loads((out / "training_params.json").read_text())
    assert params["algorithm"] == "lora" and params["learning_rate"] == 2e-4 and params["save_merged"] is False
