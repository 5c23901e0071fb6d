"""Shared fixtures: everything is built locally (no model hub here)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _hone_home(tmp_path_factory):
    """$HONE_HOME in a temporary directory for the whole session: a pipeline run registers its model in the hone
    home by default, and nothing a test does may land in the repository's ./hone-runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HONE_HOME", str(tmp_path_factory.mktemp("hone-home")))
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from hone.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def single_cpu_thread():
    """The tiny model is far too small to gain from intra-op threads, and with other processes on a 2-core box
    torch's spinning worker threads make each step up to ten times slower; one thread keeps timings stable.
    Modules use it with ``pytestmark = pytest.mark.usefixtures("single_cpu_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def one_chat_file(tmp_path_factory):
    """A JSONL file with one valid conversation: enough data for tests about everything but the data."""
    import json

    path = tmp_path_factory.mktemp("one-chat") / "d.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello there."}]}) + "\n")
    return path
