"""hone/__init__.pyi (the explicit signatures editors read) is what the schema generates today."""
from __future__ import annotations

import ast

from hone.cli import stubgen


def test_checked_in_stub_is_current():
    assert stubgen.STUB.read_text() == stubgen.render(), "regenerate it: python -m hone.cli.stubgen"


def test_stub_lists_every_parameter_with_its_algorithm_default():
    tree = ast.parse(stubgen.render())
    defs = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            defs.setdefault(node.name, []).append(node)
    from hone.config import RunConfig

    for public, (algorithm, shapes) in stubgen.FUNCTIONS.items():
        assert len(defs[public]) == len(shapes)
        for fn in defs[public]:
            names = [a.arg for a in fn.args.args + fn.args.kwonlyargs]
            assert set(names) == set(RunConfig.parameter_names(algorithm)), public
    lora = defs["lora_sft"][0]
    kw = {a.arg: d for a, d in zip(lora.args.kwonlyargs, lora.args.kw_defaults)}
    assert ast.literal_eval(kw["learning_rate"]) == 2e-4  # the algorithm's own default


def test_osft_accepts_training_hubs_positional_order_and_hones(monkeypatch):
    import hone.api as api

    seen = []
    monkeypatch.setattr(api, "train", lambda algorithm, params, source="": seen.append((algorithm, params)))
    api.osft("m", "d", 0.25, 8, 4096, 1024, 1e-5, "out")
    assert seen[-1][1] == {"model_path": "m", "data_path": "d", "unfreeze_rank_ratio": 0.25,
                           "effective_batch_size": 8, "max_tokens_per_gpu": 4096, "max_seq_len": 1024,
                           "learning_rate": 1e-5, "ckpt_output_dir": "out"}
    api.osft("m", "d", "out", unfreeze_rank_ratio=0.5)
    assert seen[-1][1] == {"model_path": "m", "data_path": "d", "ckpt_output_dir": "out", "unfreeze_rank_ratio": 0.5}
    api.sft("m", "d", "out", "instructlab-training", num_epochs=2)
    assert seen[-1][1]["backend"] == "instructlab-training" and seen[-1][1]["num_epochs"] == 2
    import pytest

    with pytest.raises(TypeError, match="multiple values for argument 'ckpt_output_dir'"):
        api.sft("m", "d", "out", ckpt_output_dir="x")
    with pytest.raises(TypeError, match="missing required argument"):
        api.sft("m", "d")
