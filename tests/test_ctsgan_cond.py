"""Conditional CT-SGAN (issue 26): the unconditional model is unchanged, the conditional one trains, checkpoints,
resumes exactly, and its networks read the condition."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.models.ctsgan_cond import (N_CONDITION, build_ctsgan_cond, condition_of_nodules, condition_table,
                                           condition_vector, condition_with_z, z_profile)
from ctsgan_lib.synthesis import load_generator
from ctsgan_lib.train import ctsgan_loop
from ctsgan_lib.utils.checkpoint import load_checkpoint

from test_ctsgan_train import TINY, _volumes

GOLDEN = Path(__file__).with_name("data") / "ctsgan_unconditional_losses.json"


def _log(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def cond_volumes(n: int = 4, size: int = 32, seed: int = 0) -> tuple[np.ndarray, list[list[dict]]]:
    """Toy volumes, every other one with a bright 'nodule' in a lung, and their manifest-style nodule lists."""
    vols = _volumes(n, size, seed)
    z, y, x = np.mgrid[:size, :size, :size]
    nodules = []
    for i in range(n):
        if i % 2:
            c, d = (size // 2, size // 2, int(size * 0.68)), 5.0
            vols[i][(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= (d / 2) ** 2] = 30.0
            nodules.append([{"center_vox": list(map(float, c)), "diameter_vox": d}])
        else:
            nodules.append([])
    return vols, nodules


def killed_then_resumed(monkeypatch, cfg, vols, nods, out: Path) -> dict:
    """Conditional training interrupted in its third step (after the step-2 checkpoint), then rerun to the end."""
    real_step = ctsgan_loop.ctsgan_step
    calls = []

    def killed_at_3(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real_step(*args, **kw)

    monkeypatch.setattr(ctsgan_loop, "ctsgan_step", killed_at_3)
    with pytest.raises(KeyboardInterrupt):
        ctsgan_loop.train_ctsgan_cond(cfg, volumes_hu=vols, nodules=nods, out_dir=out, progress=False)
    monkeypatch.setattr(ctsgan_loop, "ctsgan_step", real_step)
    return ctsgan_loop.train_ctsgan_cond(cfg, volumes_hu=vols, nodules=nods, out_dir=out, progress=False)


@pytest.mark.portable
def test_unconditional_losses_are_those_of_the_code_before_the_conditional_model(tmp_root):
    """The refactor for the conditional model left the unconditional CT-SGAN's numbers alone.

    Reference: the same run at 495cc2e. rtol 1e-4: float32 CPU kernels may sum in another order on another
    machine (BLAS, oneDNN); a change to the model or the RNG stream moves the losses by far more (O(1e-2) and up).
    """
    ref = json.loads(GOLDEN.read_text())
    cfg = load_profile("smoke", **ref["config"])
    res = ctsgan_loop.train_ctsgan(cfg, volumes_hu=_volumes(), out_dir=tmp_root / "unc", progress=False)
    rows = _log(res["log"])
    assert len(rows) == len(ref["losses"])
    for got, want in zip(rows, ref["losses"]):
        for k in ctsgan_loop.LOSS_NAMES:
            assert float(got[k]) == pytest.approx(want[k], rel=1e-4, abs=1e-6), f"step {got['step']} {k}"


def test_condition_vector_and_table():
    assert torch.equal(condition_vector(0, 7.0), torch.zeros(N_CONDITION))
    assert condition_vector(2, 4.0).tolist() == [1.0, 0.5, 0.5]
    assert condition_of_nodules([{"diameter_vox": 3.0}, {"diameter_vox": 5.0}]) == (2, 4.0)
    assert condition_table([[], [{"diameter_vox": 8.0}]]).tolist() == [[0, 0, 0], [1.0, 0.25, 1.0]]
    with pytest.raises(ValueError):
        condition_vector(1, 0.0)


def test_conditional_networks_read_the_condition():
    cfg = load_profile("smoke", **TINY)
    torch.manual_seed(0)
    nets = build_ctsgan_cond(32, cfg.ctsgan)
    gen = nets["generator"].eval()
    pn, sn = gen.sample_noise(2, generator=torch.Generator().manual_seed(1))
    c0 = torch.stack([condition_vector(0, 0), condition_vector(0, 0)])
    c1 = torch.stack([condition_vector(2, 5.0), condition_vector(2, 5.0)])
    with torch.no_grad():
        a, a2, b = gen(pn, sn, cond=c0), gen(pn, sn, cond=c0), gen(pn, sn, cond=c1)
        assert torch.equal(a, a2) and (a - b).abs().max() > 1e-4
        x = torch.randn(2, 3, 32, 32)
        pos = torch.tensor([3, 7])
        assert (nets["dslice"](x, pos, c0) - nets["dslice"](x, pos, c1)).abs().max() > 1e-6
        slab = torch.randn(2, 1, cfg.ctsgan.slab_len, 32, 32)
        assert (nets["dslab"](slab, None, c0) - nets["dslab"](slab, None, c1)).abs().max() > 1e-6
    with pytest.raises(ValueError, match="condition"):
        gen(pn, sn)


@pytest.mark.portable
def test_conditional_trains_checkpoints_and_resumes_exactly(tmp_root, monkeypatch):
    cfg = load_profile("smoke", **TINY)
    vols, nods = cond_volumes()
    ref = ctsgan_loop.train_ctsgan_cond(cfg, volumes_hu=vols, nodules=nods, out_dir=tmp_root / "ref",
                                        progress=False)
    ref_rows = _log(ref["log"])
    assert [int(r["step"]) for r in ref_rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r[k])) for r in ref_rows for k in ctsgan_loop.LOSS_NAMES)
    ck = load_checkpoint(ref["checkpoint"], kind="ctsgan_cond")
    assert set(ck["models"]) == {"rv", "gslice", "gcond", "dslice", "dslab"}
    assert ck["extra"]["n_with_nodules"] == 2
    with pytest.raises(CTSGANError, match="expected 'ctsgan'"):
        load_checkpoint(ref["checkpoint"], kind="ctsgan")
    assert (tmp_root / "ref" / "samples" / "step_000004.png").stat().st_size > 0

    res = killed_then_resumed(monkeypatch, cfg, vols, nods, tmp_root / "run")
    rows = _log(res["log"])
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for a, b in zip(rows, ref_rows):
        for k in ctsgan_loop.LOSS_NAMES:
            assert a[k] == b[k], f"step {a['step']} {k}: resumed {a[k]} vs uninterrupted {b[k]}"
    got = load_checkpoint(res["checkpoint"], kind="ctsgan_cond")["models"]
    for net, state in ck["models"].items():
        for name, t in state.items():
            assert torch.equal(t, got[net][name]), f"{net}.{name}"


def test_conditional_needs_both_kinds_of_volume(tmp_root):
    cfg = load_profile("smoke", **TINY)
    vols, _ = cond_volumes()
    with pytest.raises(CTSGANError, match="with and without nodules"):
        ctsgan_loop.train_ctsgan_cond(cfg, volumes_hu=vols, nodules=[[]] * 4, out_dir=tmp_root / "x",
                                      progress=False)


def test_z_profile_and_per_position_conditions():
    p = z_profile(10, [4.0], [2.0])
    assert int(p.argmax()) == 3 and float(p[3]) == 1.0 and float(p[0]) < 0.02     # position 3 = volume slice 4
    assert torch.equal(z_profile(5, [], []), torch.zeros(5))
    c = condition_with_z(2, 4.0, [3.0, 7.0], 10)
    assert c.shape == (10, N_CONDITION + 1) and torch.equal(c[:, :N_CONDITION], condition_vector(2, 4.0).expand(10, -1))
    assert float(c[2, -1]) == 1.0 and float(c[6, -1]) == 1.0
    with pytest.raises(ValueError, match="one z position per nodule"):
        condition_with_z(2, 4.0, [3.0], 10)
    t = condition_table([[], [{"diameter_vox": 4.0, "center_vox": [5.0, 1.0, 1.0]}]], n_positions=8)
    assert t.shape == (2, 8, N_CONDITION + 1) and float(t[0].abs().sum()) == 0.0 and float(t[1, 4, -1]) == 1.0


def test_cond_z_model_trains_resumes_and_reads_the_z_position(tmp_root, monkeypatch):
    cfg = load_profile("smoke", **{**TINY, "ctsgan.cond_z": True})
    vols, nods = cond_volumes()
    ref = ctsgan_loop.train_ctsgan_cond(cfg, volumes_hu=vols, nodules=nods, out_dir=tmp_root / "ref",
                                        progress=False)
    res = killed_then_resumed(monkeypatch, cfg, vols, nods, tmp_root / "run")
    losses = lambda rows: [[r[k] for k in ["step", *ctsgan_loop.LOSS_NAMES]] for r in rows]
    assert losses(_log(res["log"])) == losses(_log(ref["log"]))   # resumed after step 2: the same losses, exactly
    gen = load_generator(res["checkpoint"])
    assert gen.cond_z and load_checkpoint(res["checkpoint"], kind="ctsgan_cond")["config"]["ctsgan"]["cond_z"]
    pn, sn = gen.sample_noise(1, generator=torch.Generator().manual_seed(0))
    low, high = (condition_with_z(1, 5.0, [z], 30)[None] for z in (8.0, 22.0))
    with torch.no_grad():
        assert (gen(pn, sn, cond=low) - gen(pn, sn, cond=high)).abs().max() > 1e-5
    with pytest.raises(ValueError, match="N_CONDITION \\+ 1"):
        gen(pn, sn, cond=condition_vector(1, 5.0)[None])
