"""The pre-flight check of evaluation data: offline, a built-in task's hub dataset must be in the cache."""
from __future__ import annotations

import time

import pytest

from hone.errors import HoneError
from hone.evaluation.availability import builtin_datasets, check_task_data


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_builtin_tasks_name_their_hub_dataset():
    assert builtin_datasets(["arc_easy", "no_such_task"]) == {"arc_easy": "allenai/ai2_arc"}


def test_offline_hub_task_without_cache_fails_in_seconds(empty_cache):
    t0 = time.monotonic()
    with pytest.raises(HoneError, match=r"arc_easy \(allenai/ai2_arc\): offline") as err:
        check_task_data(["arc_easy"])
    assert time.monotonic() - t0 < 10
    assert "include-path" in err.value.fix and "empty task list" in err.value.fix


def test_cached_local_and_empty_task_lists_pass(empty_cache):
    (empty_cache / "hub" / "datasets--allenai--ai2_arc").mkdir(parents=True)
    check_task_data(["arc_easy"])
    check_task_data([])
    check_task_data(["my_local_task"])  # not a built-in task: lm-eval reads it from the include path


def test_pipeline_stops_before_training_with_the_pipeline_parameter(empty_cache, tmp_path, tiny_model_dir):
    import json

    from hone.pipeline.runner import run_pipeline

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(10)))
    run_dir = tmp_path / "run"
    with pytest.raises(HoneError, match="arc_easy") as err:
        run_pipeline(str(data), model=str(tiny_model_dir), run_dir=run_dir, report=False)
    assert "phase_03_eval_man_tasks" in err.value.where and "phase_03_eval_opt_include_path" in err.value.fix
    assert not (run_dir / "02-training").exists()
