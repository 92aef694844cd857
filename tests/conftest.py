"""Shared test settings: offline, and every tiny model built under a temporary cache."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub: a stray download fails fast


@pytest.fixture(autouse=True)
def _tiny_model_cache(tmp_path_factory, monkeypatch):
    """Keep tiny models built by tests out of the user's ~/.cache/feedlearn."""
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path_factory.getbasetemp() / "feedlearn-cache"))


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models run faster on one thread; on a busy 2-core machine several threads fight (10-100x)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
