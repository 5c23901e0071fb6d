"""Fixtures for the evaluation tests: the shipped example tasks, a deliberately damaged copy of the tiny model."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eval_paths import HOLDOUT, ROOT, TASKS_DIR  # noqa: F401  (re-exported for fixtures)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's kernels are microseconds long: on a shared 2-core machine, one intra-op thread is
    several times faster than two fighting for the cores (measured 4 ms vs 28 ms per forward)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def degraded_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with seeded noise planted in every weight matrix (a "fine-tune" that destroyed it)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("degraded") / "model"
    shutil.copytree(tiny_model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(out)
    return out
