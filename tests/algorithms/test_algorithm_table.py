"""The table of algorithms: one module + one table entry make a new algorithm, reachable from every skin.

The toy algorithm ("norms": train only the normalisation weights, with its own parameter section) is written
as a module in a temporary directory and registered from the test, exactly as docs/architecture.md tells a
contributor to add one under hone/algorithms/.
"""
from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from hone.config import ALGORITHMS, Algorithm, RunConfig, get_algorithm, register_algorithm
from hone.errors import HoneError

TOY_MODULE = textwrap.dedent('''
    from typing import Any

    from pydantic import Field

    from hone.config import Section
    from hone.training.hooks import AlgorithmHooks


    class NormsConfig(Section):
        """Train only the normalisation weights."""

        norm_pattern: str = Field("norm", description="Substring of the parameter names that train.")


    class NormsHooks(AlgorithmHooks):
        name = "norms"

        @classmethod
        def from_config(cls, cfg: Any) -> "NormsHooks":
            return cls(cfg.norms)

        def __init__(self, cfg: NormsConfig):
            self.cfg = cfg

        def prepare_model(self, model, *, data=None, device=None):
            for name, p in model.named_parameters():
                p.requires_grad_(self.cfg.norm_pattern in name)
            return model
''')


@pytest.fixture
def norms(tmp_path, monkeypatch):
    """The toy algorithm registered for one test (the table is restored afterwards)."""
    (tmp_path / "hone_toy_norms.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hone_toy_norms", raising=False)
    import hone_toy_norms

    spec = Algorithm("norms", "Train only the normalisation weights.", "hone_toy_norms:NormsHooks",
                     section=hone_toy_norms.NormsConfig, defaults={"learning_rate": 1e-2},
                     pipeline_defaults={"workers": 1})
    monkeypatch.setitem(ALGORITHMS, "norms", spec)
    return spec


def test_the_table_drives_config_sections_and_defaults(norms):
    cfg = RunConfig.from_flat("norms", {"model_path": "m", "data_path": "d", "ckpt_output_dir": "o",
                                        "norm_pattern": "input_layernorm"})
    assert cfg.norms.norm_pattern == "input_layernorm" and cfg.method is cfg.norms
    assert cfg.train.learning_rate == 1e-2  # the algorithm's default
    assert cfg.to_flat()["norm_pattern"] == "input_layernorm"
    with pytest.raises(HoneError, match="unknown parameter 'lora_r' for norms"):
        RunConfig.from_flat("norms", {"model_path": "m", "data_path": "d", "ckpt_output_dir": "o", "lora_r": 8})
    with pytest.raises(HoneError, match="unknown parameter 'norm_pattern' for sft"):
        RunConfig.from_flat("sft", {"model_path": "m", "data_path": "d", "ckpt_output_dir": "o", "norm_pattern": "x"})


def test_unknown_algorithms_and_bad_entries_are_clear_errors():
    with pytest.raises(HoneError, match="unknown algorithm 'sfft': did you mean 'sft'"):
        get_algorithm("sfft")
    with pytest.raises(HoneError, match="invalid algorithm name"):
        register_algorithm(Algorithm("data", "clashes with a config section", "x:Y"))
    assert "data" not in ALGORITHMS


def test_every_algorithm_entry_is_complete():
    import hone
    from hone.algorithms import hooks_class

    for name, spec in ALGORITHMS.items():
        hooks = hooks_class(name)
        assert hooks.name == name
        if spec.api:
            assert callable(getattr(hone, spec.api)), spec.api
        for key in spec.defaults:  # a default for a name the algorithm does not have would be silently lost
            assert key in RunConfig.parameter_names(name), (name, key)


def test_a_registered_algorithm_trains_through_the_api(norms, tiny_model_dir, tmp_path, single_cpu_thread):
    from hone.api import train

    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"what is {i} + {i}?"},
                          {"role": "assistant", "content": f"{i} + {i} = {2 * i}"}]} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = train("norms", {"model_path": str(tiny_model_dir), "data_path": str(data), "ckpt_output_dir": str(out),
                             "effective_batch_size": 4, "max_seq_len": 256, "max_tokens_per_gpu": 1024,
                             "checkpoint_at_epoch": False, "progress": False})
    assert result.status == "completed" and result.steps == 4
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(result.final_model_dir / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("norm" in k for k in changed), sorted(changed)
    saved = json.loads((out / "training_params.json").read_text())
    assert saved["algorithm"] == "norms" and saved["norm_pattern"] == "norm"


def test_a_registered_algorithm_gets_pipeline_flavours(norms):
    from hone.pipeline import params as P

    assert {"norms", "norms-minimal"} <= set(P.flavours())
    values = P.resolve("norms", {P.DATA_URI: "d.jsonl"})
    assert values["phase_02_train_man_workers"] == 1  # its pipeline default
    assert values["phase_04_registry_man_name"] == "norms-model"
    assert values["phase_02_train_opt_learning_rate"] == 1e-2
    assert not any(p.name.endswith("lora_r") for p in P.params_for("norms"))
    with pytest.raises(HoneError, match="applies to osft, not to norms"):
        P.resolve("norms", {P.DATA_URI: "d.jsonl", "phase_02_train_man_unfreeze_rank_ratio": 0.5})
