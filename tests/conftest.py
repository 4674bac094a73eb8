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
def _threads():
    """Keep torch to the machine's cores (tests run on 2-core CI)."""
    try:
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:  # pragma: no cover
        pass
    yield
