"""Training Hub's own calls, replayed with ``from hone import ...``.

``training_hub_calls.json`` records every call to ``sft``/``osft``/``lora_sft`` in Training Hub's examples,
notebooks and docs (Red-Hat-AI-Innovation-Team/training_hub at f7930341), with the values each script would
pass (``<expr: ...>`` where a value is only known at run time). Every complete call must validate; every
distinct argument set also trains on the tiny model for two steps (paths, sizes and multi-node settings
scaled down to this machine), or fails with a clear reason when it needs hardware hone cannot have here.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

import hone
from hone.config import RunConfig
from hone.errors import HoneError

CALLS = json.loads((Path(__file__).with_name("training_hub_calls.json")).read_text())
COMPLETE = [c for c in CALLS if not c.get("incomplete_in_source") and not c.get("commented_out")]
ALGORITHM = {"sft": "sft", "osft": "osft", "lora_sft": "lora"}
# A placeholder name in Training Hub's docs ("custom_optimization_flag=True"): Training Hub drops it silently,
# hone names it as unknown (a typo must never be ignored).
PLACEHOLDERS = {"custom_optimization_flag"}
DISTRIBUTED = ("nnodes", "node_rank", "rdzv_id", "rdzv_endpoint", "master_addr", "master_port", "nproc_per_node")
# what needs a GPU: the message must say so
NEEDS_GPU = {"load_in_4bit": "CUDA", "load_in_8bit": "CUDA", "enable_model_splitting": "GPU"}

pytestmark = pytest.mark.usefixtures("single_cpu_thread")


def _id(call: dict) -> str:
    return f"{call['function']}:{call['file']}:{call.get('cell', '')}:{call['line']}"


class Recorder(hone.TrainingHubCallback):
    """A callback as Training Hub's smoke scripts write one."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_step_end(self, context: Any) -> None:
        self.seen.append("on_step_end")

    def on_train_end(self, context: Any) -> None:
        self.seen.append("on_train_end")


def _stand_in(name: str, value: Any, tmp: Path) -> Any:
    """A value the script only knows at run time -> one that fits this machine."""
    text = value if isinstance(value, str) else ""
    if name == "fsdp_options":
        return {"cpu_offload_params": True} if "cpu_offload_params=True" in text else \
            {"sharding_strategy": "FULL_SHARD"}
    if name == "callbacks":
        return [Recorder()]
    if name == "mlflow_run_name":
        return "run-{time}"
    return {"max_seq_len": 512, "max_tokens_per_gpu": 1024, "nproc_per_node": 1, "node_rank": 0,
            "rdzv_endpoint": "127.0.0.1:29500", "data_output_dir": str(tmp / "processed")}.get(name, value)


def _data(tmp: Path, kw: dict) -> str:
    """A small data file shaped like the call expects (chat, documents, alpaca columns, processed rows)."""
    rng = random.Random(0)
    rows = []
    for i in range(24):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        q, r = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        if kw.get("is_pretraining"):
            rows.append({kw.get("document_column_name", "document"): f"{q} {r} " * 4})
        elif kw.get("dataset_type") == "alpaca":
            rows.append({kw.get("field_instruction", "instruction"): q, kw.get("field_input", "input"): "",
                         kw.get("field_output", "output"): r})
        else:
            rows.append({kw.get("field_messages", "messages"): [{"role": "user", "content": q},
                                                              {"role": "assistant", "content": r}]})
    path = tmp / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _params(call: dict, model: str, tmp: Path) -> dict:
    kw = {k: v for k, v in call["kwargs"].items() if k not in PLACEHOLDERS}
    kw = {k: _stand_in(k, v, tmp) if isinstance(v, str) and v.startswith("<expr") else v for k, v in kw.items()}
    kw.update(model_path=model, ckpt_output_dir=str(tmp / "out"))
    if kw.get("use_processed_dataset"):
        kw["data_path"] = _processed(tmp, model)
    else:
        kw["data_path"] = _data(tmp, kw)
    if "data_output_dir" in kw:
        kw["data_output_dir"] = str(tmp / "processed")
    if kw.get("eval_data_path"):
        (tmp / "eval").mkdir()
        kw["eval_data_path"] = _data(tmp / "eval", kw)
    if kw.get("mlflow_tracking_uri"):
        kw["mlflow_tracking_uri"] = f"sqlite:///{tmp}/mlflow.db"
    if kw.get("tensorboard_log_dir"):
        kw["tensorboard_log_dir"] = str(tmp / "tb")
    return kw


def _processed(tmp: Path, model: str) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rows = []
    for i in range(24):
        ids = tok(f"sample {i}: the sky is blue and the grass is green")["input_ids"]
        rows.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    path = tmp / "processed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("call", COMPLETE, ids=_id)
def test_every_training_hub_call_validates(call, tiny_model_dir, tmp_path):
    params = _params(call, str(tiny_model_dir), tmp_path)
    cfg = RunConfig.from_flat(ALGORITHM[call["function"]], params)
    assert cfg.train.model_path == str(tiny_model_dir)
    if call["function"] == "osft":
        assert cfg.osft.unfreeze_rank_ratio == call["kwargs"]["unfreeze_rank_ratio"]


def test_a_placeholder_name_is_named_not_ignored(tiny_model_dir, tmp_path):
    call = next(c for c in COMPLETE if "custom_optimization_flag" in c["kwargs"])
    params = {**_params(call, str(tiny_model_dir), tmp_path), "custom_optimization_flag": True}
    with pytest.raises(HoneError, match="unknown parameter 'custom_optimization_flag' for sft"):
        RunConfig.from_flat("sft", params)


def _distinct(calls: list[dict]) -> list[dict]:
    seen, out = set(), []
    for c in calls:
        key = (c["function"], tuple(sorted(k for k in c["kwargs"] if k not in DISTRIBUTED)),
               tuple(sorted(k for k, v in c["kwargs"].items() if v is True)))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _scaled(kw: dict) -> dict:
    """Two optimizer steps on the tiny model, on this machine's processes."""
    kw = {k: v for k, v in kw.items() if k not in DISTRIBUTED}
    kw["max_seq_len"] = min(kw.get("max_seq_len", 512), 512)
    if "max_tokens_per_gpu" in kw:
        kw["max_tokens_per_gpu"] = max(min(kw["max_tokens_per_gpu"], 2048), kw["max_seq_len"])
    if "block_size" in kw:
        kw["block_size"] = min(kw["block_size"], 64)
    for name in ("effective_batch_size", "micro_batch_size"):
        if name in kw:
            kw[name] = min(kw[name], 4)
    kw.pop("gradient_accumulation_steps", None) if "effective_batch_size" in kw else None
    if kw.get("save_samples"):
        kw["save_samples"] = 4
    for name in ("save_steps", "eval_steps", "validation_frequency", "logging_steps"):
        if kw.get(name):
            kw[name] = 1
    kw.update(num_epochs=1, max_steps=2, progress=False, data_num_workers=1)
    return kw


@pytest.mark.parametrize("call", _distinct(COMPLETE), ids=_id)
def test_each_argument_set_trains_two_steps(call, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    function = getattr(hone, call["function"])
    kw = _scaled(_params(call, str(tiny_model_dir), tmp_path))
    needs = [n for n in NEEDS_GPU if kw.get(n)]
    if needs:
        with pytest.raises(HoneError, match=NEEDS_GPU[needs[0]]):
            function(**kw)
        return
    result = function(**kw)
    assert result.status == "completed" and result.steps == 2
    assert result.final_model_dir is None or result.final_model_dir.exists()
    for cb in kw.get("callbacks") or []:
        assert cb.seen[-1] == "on_train_end" and cb.seen.count("on_step_end") == 2
    if kw.get("save_final_checkpoint", True) and kw.get("save_model", True):
        samples = sorted((Path(kw["ckpt_output_dir"]) / "hf_format").glob("samples_*"), key=os.path.getctime)
        assert samples, "Training Hub's scripts find the latest checkpoint as hf_format/samples_*"
