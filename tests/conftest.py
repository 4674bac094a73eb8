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


@pytest.fixture(scope="module")
def ctsgan_ckpt(tmp_path_factory) -> Path:
    """An untrained smoke CT-SGAN checkpoint in the format the training loop writes, voxel size 6 mm."""
    # imported here: conftest stays light, only the modules that use this fixture pay for torch and the models
    import torch

    from ctsgan_lib.config import load_profile
    from ctsgan_lib.models.ctsgan import build_ctsgan
    from ctsgan_lib.utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = load_profile("smoke")
    gen = build_ctsgan(cfg.data.size, cfg.ctsgan)["generator"]
    path = tmp_path_factory.mktemp("ck") / "ckpt_000001.pt"
    save_checkpoint(path, kind="ctsgan", step=1, config=cfg.to_dict(), models={"rv": gen.rv, "gslice": gen.gslice},
                    extra={"spacing_mm": (6.0, 6.0, 6.0)})
    return path
