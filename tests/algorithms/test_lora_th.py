"""Training Hub's lora_sft keywords on hone's LoRA: each maps onto a shared setting, or is a clear error."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

import hone
from hone.algorithms.lora import LoRAHooks
from hone.config import LoRAConfig, RunConfig
from hone.data.formats import FormatSpec
from hone.data.problems import RowError
from hone.errors import HoneError
from hone.models.load import load_model
from qa_pairs import QA

pytestmark = pytest.mark.usefixtures("single_cpu_thread")
BASE = {"model_path": "m", "data_path": "d.jsonl", "ckpt_output_dir": "out"}
CPU = {"device": "cpu", "dtype": "float32", "progress": False, "max_seq_len": 64, "max_tokens_per_gpu": 256,
       "checkpoint_at_epoch": False, "seed": 0}


def cfg(**params) -> RunConfig:
    return RunConfig.from_flat("lora", {**BASE, **params})


def test_training_hub_defaults():
    c = cfg()
    t = c.train
    assert (t.num_epochs, c.data.max_seq_len, t.learning_rate, t.lr_scheduler, t.warmup_steps) == (3, 2048, 2e-4,
                                                                                                  "linear", 10)
    assert (t.weight_decay, t.max_grad_norm, t.beta2) == (0.01, 0.3, 0.999)
    # micro_batch_size 2 x gradient_accumulation_steps 1 x 1 process; save_steps 500; save_total_limit 3
    assert (t.effective_batch_size, t.checkpoint_every_steps, t.keep_last_checkpoints) == (2, 500, 3)
    assert t.save_final_checkpoint and t.validation_frequency is None and c.data.data_format == "auto"


def test_batch_size_names():
    assert cfg(micro_batch_size=4, gradient_accumulation_steps=2).train.effective_batch_size == 8
    assert cfg(micro_batch_size=4, nproc_per_node=2).train.effective_batch_size == 8
    assert cfg(effective_batch_size=32).train.effective_batch_size == 32  # micro_batch_size is derived, as upstream
    assert cfg(effective_batch_size=32, micro_batch_size=8, gradient_accumulation_steps=4).train.effective_batch_size == 32
    # Training Hub: a given effective_batch_size wins and micro_batch_size is derived from it
    assert cfg(effective_batch_size=32, micro_batch_size=4).train.effective_batch_size == 32


def test_precision_checkpoint_and_validation_names():
    assert cfg(bf16=True).train.dtype == "bfloat16"
    assert cfg(fp16=True).train.dtype == "float16"
    assert cfg(bf16=False).train.dtype == "float32"
    assert cfg(fp16=False).train.dtype == "auto"
    assert cfg(micro_batch_size=4, save_steps=10).train.checkpoint_every_steps == 10
    assert cfg(checkpoint_every_steps=64).train.checkpoint_every_steps == 64  # hone's own name alone
    assert cfg(save_total_limit=5).train.keep_last_checkpoints == 5
    assert cfg(save_model=False).train.save_final_checkpoint is False
    c = cfg(eval_data_path="val.jsonl")
    assert (c.train.validation_data_path, c.train.validation_frequency) == ("val.jsonl", 500)
    assert cfg(eval_data_path="val.jsonl", eval_steps=7).train.validation_frequency == 7
    assert cfg(validation_split=0.1, eval_steps=3).train.validation_frequency == 3
    assert cfg(validation_split=0.1).train.validation_frequency is None  # hone's default: each epoch's end


def test_round_trip_through_flat_params():
    """The launcher writes to_flat() for torchrun's workers, which resolve it again: nothing may conflict."""
    c = cfg(micro_batch_size=4, gradient_accumulation_steps=2, bf16=True, save_steps=3, eval_data_path="v.jsonl",
            eval_steps=2, save_total_limit=4, dataset_type="alpaca", field_instruction="q", field_output="a")
    flat = {k: v for k, v in c.to_flat().items() if k != "algorithm"}
    assert RunConfig.from_flat("lora", flat).to_flat() == c.to_flat()


def test_eval_steps_without_validation_data_warns_like_training_hub(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="hone"):
        assert cfg(eval_steps=10).train.validation_frequency is None
    assert "no validation data" in caplog.text


def test_unpacked_batches_logging_and_eval_batch_map_onto_the_trainer():
    c = cfg(sample_packing=False, micro_batch_size=3, logging_steps=10, per_device_eval_batch_size=4)
    assert c.train.micro_batch_max_samples == 3 and c.train.logging_steps == 10
    assert c.train.validation_micro_batch_max_samples == 4
    assert cfg().train.micro_batch_max_samples is None and cfg().train.logging_steps == 1


@pytest.mark.parametrize("params, message", [
    ({"bf16": True, "fp16": True}, "one dtype"),
    ({"bf16": True, "dtype": "float16"}, "dtype='bfloat16'"),
    ({"save_steps": 2, "checkpoint_every_steps": 5}, "checkpoint_every_steps=2"),
    ({"save_total_limit": 2, "keep_last_checkpoints": 4}, "keep_last_checkpoints=2"),
    ({"save_model": False, "save_final_checkpoint": True}, "save_final_checkpoint=False"),
    ({"eval_data_path": "v.jsonl", "validation_split": 0.1}, "both choose validation data"),
    ({"enable_model_splitting": True, "nproc_per_node": 2}, "2 processes"),
    ({"sample_packing": False, "micro_batch_max_samples": 5}, "micro_batch_max_samples=2"),
    ({"logging_steps": 10, "hone_logging": 1}, "unknown parameter 'hone_logging'"),
    ({"loftq_config": {"loftq_bits": 4}}, "replaces the base weights"),
    ({"dataset_type": "chat_template", "field_instruction": "q"}, "field_instruction"),
    ({"dataset_type": "alpaca", "field_messages": "chat"}, "field_messages"),
    ({"dataset_type": "alpaca", "data_format": "messages"}, "data_format='alpaca'"),
    ({"dataset_type": "sharegpt"}, "dataset_type"),
])
def test_invalid_combinations(params, message):
    with pytest.raises(HoneError, match=message):
        cfg(**params)


def test_dataset_type_and_fields_become_format_and_columns():
    c = cfg(dataset_type="alpaca", field_instruction="question", field_input="context", field_output="answer")
    assert c.data.data_format == "alpaca"
    assert c.data.column_names == {"instruction": "question", "input": "context", "output": "answer"}
    assert cfg(field_messages="chat").data.data_format == "messages"  # chat_template implied
    assert cfg(dataset_type="passthrough").data.data_format == "auto"
    spec = FormatSpec("alpaca", columns=(("instruction", "question"), ("output", "answer")))
    assert spec.required_columns() == ["question", "answer"]
    with pytest.raises(RowError, match="'question'"):
        spec.convert({"instruction": "not this column", "answer": "a"})
    with pytest.raises(HoneError, match="'messages'"):
        FormatSpec("alpaca", columns=(("messages", "chat"),))


def test_device_bound_keywords_on_cpu(caplog):
    LoRAHooks(LoRAConfig(tf32=True), device="cpu").validate()  # Training Hub accepts it anywhere; a note on CPU
    LoRAHooks(LoRAConfig(tf32=False), device="cpu").validate()  # nothing to switch off on the CPU
    with pytest.raises(HoneError, match="several GPUs"):
        LoRAHooks(LoRAConfig(enable_model_splitting=True), device="cpu").validate()
    hooks = LoRAHooks(LoRAConfig(flash_attention=True), device="cpu")
    with caplog.at_level(logging.WARNING, logger="hone"):
        kwargs = hooks.load_kwargs()
    if not torch.cuda.is_available():
        assert "attn_implementation" not in kwargs and "per-sample SDPA" in caplog.text


def test_vision_and_language_layers(tiny_model_dir):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = load_model(str(tiny_model_dir))
    for flag in ({"finetune_vision_layers": True}, {"finetune_language_layers": False}):
        with pytest.raises(HoneError, match="text-only model"):
            LoRAHooks(LoRAConfig(**flag)).resolve_target_modules(text)
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vlm = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(**small, image_size=8, patch_size=4),
        text_config=LlamaConfig(**small, num_key_value_heads=2, vocab_size=64)))
    vlm.config.architectures = ["LlavaForConditionalGeneration"]

    def sides(**kw):
        names = LoRAHooks(LoRAConfig(**kw)).resolve_target_modules(vlm)
        return {"vision" if "vision_tower" in n else "language" for n in names}
    assert sides() == {"language"}  # Training Hub's default on a VLM: language layers only
    assert sides(finetune_vision_layers=True) == {"vision", "language"}
    assert sides(finetune_vision_layers=True, finetune_language_layers=False) == {"vision"}
    with pytest.raises(HoneError, match="nothing to adapt"):
        sides(finetune_language_layers=False)


def test_pattern_key_matching_nothing_is_an_error(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    with pytest.raises(HoneError, match="rank_pattern key 'qproj'"):
        LoRAHooks(LoRAConfig(rank_pattern={"qproj": 4})).prepare_model(model)


def test_alpaca_columns_batch_names_and_patterns_train(tiny_model_dir, tmp_path):
    """Training Hub's call shape on an Alpaca file with its own column names: 8 rows, micro_batch_size 2 x
    gradient_accumulation_steps 2 = 4 samples a step, rank/alpha patterns reaching peft."""
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps({"question": q, "ctx": "", "answer": a}) + "\n" for q, a in QA[:8]))
    result = hone.lora_sft(
        str(tiny_model_dir), str(data), str(tmp_path / "run"), backend="unsloth", **CPU, num_epochs=1,
        dataset_type="alpaca", field_instruction="question", field_input="ctx", field_output="answer",
        micro_batch_size=2, gradient_accumulation_steps=2, lora_r=8, rank_pattern={"q_proj": 4},
        alpha_pattern={"q_proj": 16}, warmup_steps=0)
    assert result.steps == 2 and result.data_report.format == "alpaca"
    adapter = tmp_path / "run" / "hf_format" / "final_adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"q_proj": 4} and config["alpha_pattern"] == {"q_proj": 16}
    shapes = {k: v.shape for k, v in load_file(adapter / "adapter_model.safetensors").items()}
    assert all(s[0] == (4 if "q_proj.lora_A" in k else 8) for k, s in shapes.items() if "lora_A" in k)
