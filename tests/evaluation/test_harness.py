"""lm-eval task resolution: local task directories without indexing lm-eval's built-in tasks, clear errors."""
from __future__ import annotations

import time

import pytest

from hone.errors import HoneError
from hone.evaluation import harness

from eval_paths import TASKS_DIR

LOCAL = ["hone_arith_mc", "hone_capitals_gen", "hone_retention_corpus", "hone_retention_facts"]


def test_local_tasks_resolve_without_the_builtin_index():
    start = time.monotonic()
    plan = harness.resolve_tasks(None, [str(TASKS_DIR)])
    assert plan.names == LOCAL and not plan.uses_defaults
    assert len(plan.manager.all_tasks) < 20  # only the include path was indexed (lm-eval has ~14,000)
    plan = harness.resolve_tasks("hone_retention", str(TASKS_DIR))  # a tag
    loaded = plan.load()
    assert sorted(t.task_name for t in loaded) == ["hone_retention_corpus", "hone_retention_facts"]
    assert time.monotonic() - start < 15


def test_relative_data_files_are_read_from_the_yaml_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # lm-eval alone would look for data/arith_mc.jsonl here
    plan = harness.resolve_tasks(["hone_arith_mc"], [str(TASKS_DIR)])
    (task,) = plan.load()
    assert len(task.eval_docs) == 24
    assert task.config.dataset_kwargs["data_files"]["test"] == str(TASKS_DIR / "data" / "arith_mc.jsonl")


def test_nothing_requested():
    assert harness.resolve_tasks(None, None) is None
    assert harness.split_names(["a, b", "c"]) == ["a", "b", "c"]


def test_unknown_task_is_named_with_a_suggestion():
    start = time.monotonic()
    with pytest.raises(HoneError, match="unknown evaluation task 'hone_arith_mcq': did you mean 'hone_arith_mc'") as err:
        harness.resolve_tasks(["hone_arith_mcq"], [str(TASKS_DIR)])
    assert err.value.where == "tasks (--tasks)" and "--include-path" in err.value.fix
    with pytest.raises(HoneError, match="unknown evaluation task 'no_such_task_anywhere'"):
        harness.resolve_tasks(["no_such_task_anywhere"], None)
    assert time.monotonic() - start < 20  # a text scan, not lm-eval's full index


def test_builtin_task_names_are_known_from_the_scan():
    names = harness.default_task_names()
    assert {"arc_easy", "hellaswag", "mmlu", "ai2_arc", "wikitext"} <= names


def test_broken_task_yaml_is_reported(tmp_path):
    (tmp_path / "bad.yaml").write_text("task: [unclosed\n")
    with pytest.raises(HoneError, match="could not be read: .*bad.yaml"):
        harness.resolve_tasks(["mytask"], [str(tmp_path)])
    with pytest.raises(HoneError, match="no lm-eval task YAML found"):
        harness.resolve_tasks(None, [str(tmp_path)])


def test_missing_task_directory(tmp_path):
    with pytest.raises(HoneError, match="task directory not found") as err:
        harness.resolve_tasks(None, [str(tmp_path / "nope")])
    assert "--include-path" in err.value.where


def test_hub_dataset_offline_names_the_task(tmp_path):
    (tmp_path / "hub_task.yaml").write_text(
        "task: my_hub_task\ndataset_path: some-org/some-dataset\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: 0\n")
    plan = harness.resolve_tasks(["my_hub_task"], [str(tmp_path)])
    with pytest.raises(HoneError, match="'my_hub_task' needs its dataset 'some-org/some-dataset' from the Hugging "
                                       "Face hub, which cannot be reached") as err:
        plan.load()
    assert "dataset_path: json" in err.value.fix and "my_hub_task" in err.value.where


def test_missing_local_data_file(tmp_path):
    (tmp_path / "t.yaml").write_text(
        "task: local_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data/missing.jsonl\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n")
    with pytest.raises(HoneError, match="'local_task' cannot be loaded") as err:
        harness.resolve_tasks(["local_task"], [str(tmp_path)]).load()
    assert "t.yaml" in err.value.where


def test_flatten_names_and_directions():
    results = {
        "results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict-match": 1.0,
                          "word_perplexity,none": 12.0, "bits_per_byte_stderr,none": "N/A"}},
        "higher_is_better": {"t": {"acc": True, "exact_match": True, "word_perplexity": False}},
    }
    values, better = harness.flatten(results)
    assert values == {"t/acc": 0.5, "t/exact_match.strict-match": 1.0, "t/word_perplexity": 12.0}
    assert better == {"t/acc": True, "t/exact_match.strict-match": True, "t/word_perplexity": False}


def test_vllm_backend_needs_vllm_and_a_gpu():
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") and torch.cuda.is_available():
        pytest.skip("vllm and a GPU are present")
    with pytest.raises(HoneError, match="vllm backend needs") as err:
        harness.check_backend("vllm")
    assert "--backend hf" in err.value.fix


def test_example_task_data_is_what_the_generator_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_tasks", TASKS_DIR.parent / "build_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for made in sorted(tmp_path.rglob("*.jsonl")):
        assert made.read_text() == (TASKS_DIR.parent / made.relative_to(tmp_path)).read_text(), made.name
