"""Shared fixtures. Every test that writes data or runs gets its own project root via ``CTSGAN_ROOT``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tmp_root(tmp_path, monkeypatch) -> Path:
    """A throwaway project root: ``data/`` and ``runs/`` go under it, never into the checkout."""
    monkeypatch.setenv("CTSGAN_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: the test models are tiny, and on a 2-core machine (CI, or one shared with a
    notebook kernel) two OpenMP threads spin-wait far more than they compute. ``CTSGAN_TEST_THREADS`` overrides."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("CTSGAN_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(n)
