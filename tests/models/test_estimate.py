"""The memory estimate against the measured peak of real CPU runs (SFT float32, OSFT, LoRA).

Each model is trained in a fresh process (this file run as a script) so that nothing else shares its memory:
glibc's mmap threshold is fixed (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the resident set, the
resident set is read just before the model is loaded, the kernel's high-water mark is reset once it is loaded
(``/proc/self/clear_refs``; the loader's transient second copy of the file is not training memory), and the peak
growth is the high-water mark at the end minus the resident set before loading. Checkpoints are not written (the
LoRA merge reloads the base on the CPU, which on a GPU run is host memory).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOKENS = 2048          # max_tokens_per_gpu: two micro-batches of 4 blocks per step
BLOCK = 512
STEPS = 2              # the second step has AdamW's moments alive during its forward pass
CONFIGS = {            # algorithm, extra parameters
    "sft": ("sft", {}),
    "osft": ("osft", {"unfreeze_rank_ratio": 0.25}),
    "lora": ("lora", {"lora_r": 8, "save_merged": False}),
}
MODELS = {"tiny": {}, "h256x4": {"hidden": 256, "layers": 4}}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _documents() -> list[dict]:
    """Pretraining documents: cut into blocks of exactly BLOCK tokens, so that every micro-batch holds exactly
    TOKENS tokens, every one of them a loss token (what the estimate assumes of a full micro-batch)."""
    from hone.models.tiny import bundled_corpus

    return [{"document": bundled_corpus()}] * 3  # ~17,800 tokens: 34 blocks


def probe(model_dir: str, work: str) -> dict:
    """Train each configuration of CONFIGS once; return its measured peak growth and the estimate (bytes)."""
    import gc

    import torch

    import hone.training.run as run
    from hone.api import train
    from hone.hub import estimate_detail

    torch.set_num_threads(1)
    data = Path(work) / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _documents()))
    original, marks = run.load_model, {}

    def measured_load(*args, **kwargs):
        gc.collect()
        marks["before"] = _rss_kib("VmRSS")
        model = original(*args, **kwargs)
        Path("/proc/self/clear_refs").write_text("5")  # high-water mark := the resident set now
        return model

    def params(name: str, extra: dict, **over) -> dict:
        return {"model_path": model_dir, "data_path": str(data), "ckpt_output_dir": f"{work}/{name}",
                "dtype": "float32", "device": "cpu", "max_tokens_per_gpu": TOKENS, "is_pretraining": True,
                "block_size": BLOCK,
                "effective_batch_size": 8, "max_steps": STEPS, "save_final_checkpoint": False,
                "checkpoint_at_epoch": False, "progress": False, "data_num_workers": 1, **extra, **over}

    # One short run of each first: what a process does once (imports, the loss chart's matplotlib, kernels and
    # code pages touched the first time) is not the training's memory.
    for name, (algorithm, extra) in CONFIGS.items():
        train(algorithm, params(f"warmup-{name}", extra, max_steps=1, effective_batch_size=2))
    run.load_model = measured_load
    out = {}
    for name, (algorithm, extra) in CONFIGS.items():
        result = train(algorithm, params(name, extra))
        peak = (_rss_kib("VmHWM") - marks["before"]) * 1024
        est = estimate_detail(algorithm, model_path=model_dir, num_gpus=1,
                              max_tokens_per_gpu=TOKENS, dtype="float32", lora_r=extra.get("lora_r", 32),
                              unfreeze_rank_ratio=extra.get("unfreeze_rank_ratio", 0.25))
        out[name] = {"measured": peak, "estimated": est.total, "components": est.components,
                     "steps": result.steps, "tokens": result.tokens_trained}
        gc.collect()
    return out


@pytest.fixture(scope="module")
def measurements(tmp_path_factory):
    from hone.models.tiny import make_tiny_model

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    for label, shape in MODELS.items():
        root = tmp_path_factory.mktemp(label)
        model_dir = make_tiny_model(root / "model", seed=0, **shape)
        proc = subprocess.run([sys.executable, __file__, str(model_dir), str(root)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.slow
@pytest.mark.parametrize("label", list(MODELS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_estimate_is_within_25_percent_of_the_measured_peak(measurements, label, config):
    m = measurements[label][config]
    assert m["steps"] == STEPS
    ratio = m["estimated"] / m["measured"]
    print(f"{label} {config}: measured {m['measured'] / 2**20:.1f} MiB, estimated {m['estimated'] / 2**20:.1f} MiB "
          f"({ratio:.2f}x) {m['components']}")
    assert 0.75 <= ratio <= 1.25, m


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2])))
