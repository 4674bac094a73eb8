"""Nodule cGANs: VOI geometry, placement, model, training/resume, and quantitative injector/eraser checks."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.nodules import (NoduleEraser, NoduleGenerator, NoduleInjector, PatchDiscriminator3D, PlacementError,
                                ball, extract_voi, measure_nodule, nodule_blend_weight, paste_voi, place_nodules,
                                train_nodule_gan, voi_blend_weight)
from ctsgan_lib.utils.checkpoint import load_checkpoint

from nodule_fixtures import make_cohort


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy cohort plus a *sphere* injector and an eraser trained at smoke size (24 iterations each); the learned
    injector has its own tests (test_learned_injector.py)."""
    root = tmp_path_factory.mktemp("nodgan")
    cohort_dir, truth = make_cohort(root / "cohort")
    cfg = load_profile("smoke", **{"nodules.iterations": 24, "nodules.ckpt_every": 12, "nodules.injector": "sphere"})
    train_nodule_gan(cfg, "injector", cohort_dir, root / "injector", device="cpu", progress=False)
    train_nodule_gan(cfg, "eraser", cohort_dir, root / "eraser", device="cpu", injector_dir=root / "injector",
                     progress=False)
    return {"root": root, "cohort": Cohort(cohort_dir), "truth": truth, "cfg": cfg,
            "injector": NoduleInjector.from_checkpoint(root / "injector"),
            "eraser": NoduleEraser.from_checkpoint(root / "eraser")}


# ------------------------------------------------------------------------------------------------ geometry
def test_voi_near_the_edge_is_reflect_padded():
    vol = np.arange(10 * 11 * 12, dtype=np.float32).reshape(10, 11, 12)
    voi = extract_voi(vol, (0, 5, 11), 8)
    assert voi.shape == (8, 8, 8)
    ref = np.pad(vol, 8, mode="reflect")[8 - 4:8 + 4, 8 + 1:8 + 9, 8 + 7:8 + 15]
    assert np.array_equal(voi, ref)
    assert np.array_equal(extract_voi(vol, (5, 5, 6), 4), vol[3:7, 3:7, 4:8])   # interior: a plain crop
    with pytest.raises(CTSGANError, match="outside the volume"):
        extract_voi(vol, (10, 0, 0), 8)


@pytest.mark.parametrize("center", [(8, 8, 8), (0, 3, 15)])
def test_paste_leaves_everything_outside_the_voi_bit_identical(center):
    rng = np.random.default_rng(0)
    vol = rng.normal(-500, 300, (16, 16, 16)).astype(np.float32)
    w = nodule_blend_weight(8, 3)
    out = paste_voi(vol, np.full((8,) * 3, 100.0, np.float32), center, w)
    inside = np.zeros(vol.shape, bool)
    lo = [c - 4 for c in center]
    inside[tuple(slice(max(l, 0), l + 8) for l in lo)] = True
    assert np.array_equal(out[~inside], vol[~inside])
    assert not np.array_equal(out[inside], vol[inside])
    assert out[center] == pytest.approx(100.0)


def test_blend_weights_vanish_on_the_voi_faces():
    for w in (nodule_blend_weight(16, 5), voi_blend_weight(16, 8), nodule_blend_weight(64, 30)):
        for face in (w[0], w[-1], w[:, 0], w[:, -1], w[:, :, 0], w[:, :, -1]):
            assert face.max() == 0.0
        c = w.shape[0] // 2
        assert w[c, c, c] == 1.0 and w.min() >= 0 and w.max() <= 1
    with pytest.raises(CTSGANError, match="does not fit"):
        nodule_blend_weight(8, 7)


def test_ball_has_the_requested_diameter():
    for d in (3.0, 5.0, 8.0, 12.0):
        n = (ball(24, d) >= 0.5).sum()
        assert abs((6 * n / np.pi) ** (1 / 3) - d) <= 0.5, d


# ------------------------------------------------------------------------------------------------ placement
def _two_lungs():
    lung = np.zeros((32, 32, 32), bool)
    lung[6:26, 6:14, 6:26] = True
    lung[6:26, 18:26, 6:26] = True
    return lung


def test_placement_respects_lung_border_and_other_nodules():
    from scipy.ndimage import distance_transform_edt

    lung = _two_lungs()
    edt = distance_transform_edt(lung)
    ds = [5.0, 3.0, 4.0, 3.0]
    existing = [{"center_vox": [10, 10, 10], "diameter_vox": 4.0}]
    centers, shortfall = place_nodules(lung, ds, np.random.default_rng(3), existing=existing)
    assert shortfall == 0 and len(centers) == 4
    allc = [(np.array(c), d / 2) for c, d in zip(centers, ds)] + [(np.array([10, 10, 10]), 2.0)]
    for c, r in allc[:4]:
        assert lung[tuple(c)] and edt[tuple(c)] >= r
    for i in range(len(allc)):
        for j in range(i + 1, len(allc)):
            assert np.linalg.norm(allc[i][0] - allc[j][0]) >= allc[i][1] + allc[j][1]
    again, _ = place_nodules(lung, ds, np.random.default_rng(3), existing=existing)
    assert again == centers                                        # seeded


def test_too_many_nodules_is_a_reported_shortfall_not_a_hang(trained):
    lung = _two_lungs()
    t0 = time.perf_counter()
    centers, shortfall = place_nodules(lung, [7.0] * 40, np.random.default_rng(0))
    assert time.perf_counter() - t0 < 10
    assert shortfall > 0 and len(centers) + shortfall == 40
    _, none = place_nodules(np.zeros((8, 8, 8), bool), [3.0], np.random.default_rng(0))
    assert none == 1
    hu = np.full(lung.shape, 40.0, np.float32)
    hu[lung] = -850
    with pytest.raises(PlacementError, match="shortfall"):
        trained["injector"].inject(hu, [7.0] * 40, np.random.default_rng(0), lung=lung, strict=True)
    with pytest.warns(UserWarning, match="shortfall"):
        _, nods = trained["injector"].inject(hu, [7.0] * 40, np.random.default_rng(0), lung=lung)
    assert 0 < len(nods) < 40


# ------------------------------------------------------------------------------------------------ model
def test_sphere_generator_controls_the_nodule_through_the_shape_channel():
    torch.manual_seed(0)
    for v in (16, 32):
        g = NoduleGenerator(v, 4, prior_model=(-0.8, 0.4))
        cond = torch.randn(2, 3, v, v, v)
        s = (torch.rand(2, 1, v, v, v) > 0.5).float()
        cond[:, 2:3] = s
        raw = g(cond)
        b, n = raw[:, :1], raw[:, 1:]
        assert raw.shape == (2, 2, v, v, v)
        assert abs(b.mean().item() + 0.8) < 0.1 and abs(n.mean().item() - 0.4) < 0.1   # starts at the data prior
        out = g.compose(raw, cond)
        assert torch.equal(out[s == 0], b[s == 0])
        t = n - (n * s).sum((1, 2, 3, 4), keepdim=True) / s.sum((1, 2, 3, 4), keepdim=True)
        assert torch.allclose(out[s == 1], (0.4 + t)[s == 1].clamp(-1, 1), atol=1e-5)   # level + zero-mean texture
        assert PatchDiscriminator3D(4)(out, cond).shape[:2] == (2, 1)
    with pytest.raises(ValueError):
        NoduleGenerator(24)


def test_learned_generator_has_five_inputs_and_paints_one_map():
    g = NoduleGenerator(16, 4, prior_model=(-0.7, -0.7), in_channels=5, out_channels=1)
    cond = torch.randn(2, 5, 16, 16, 16)
    out = g(cond)
    assert out.shape == (2, 1, 16, 16, 16) and torch.equal(g.compose(out, cond), out)
    assert abs(out.mean().item() + 0.7) < 0.1


# ------------------------------------------------------------------------------------------------ training
def test_training_logs_and_the_loss_moves(trained):
    log = pd.read_csv(trained["root"] / "injector" / "log.csv")
    assert log["step"].tolist() == list(range(1, 25))
    first, last = log["l1_inside"].iloc[:5].mean(), log["l1_inside"].iloc[-5:].mean()
    assert last < first                                            # the reconstruction inside the mask improves
    ck = load_checkpoint(trained["root"] / "injector" / "ckpt_000024.pt", kind="nodule_injector")
    assert ck["step"] == 24 and ck["extra"]["n_train"] > 0


@pytest.mark.portable
def test_resume_continues_step_and_optimizer_state(tmp_path, trained):
    cfg = load_profile("smoke", **{"nodules.ckpt_every": 3, "nodules.iterations": 6})
    cohort_dir = trained["cohort"].root
    full = train_nodule_gan(cfg, "injector", cohort_dir, tmp_path / "full", device="cpu", progress=False)
    part = train_nodule_gan(cfg, "injector", cohort_dir, tmp_path / "part", device="cpu", iterations=3,
                            progress=False)
    assert part["step"] == 3
    ck3 = load_checkpoint(tmp_path / "part" / "ckpt_000003.pt")
    assert int(ck3["optimizers"]["g"]["state"][0]["step"]) == 3
    resumed = train_nodule_gan(cfg, "injector", cohort_dir, tmp_path / "part", device="cpu", progress=False)
    assert resumed["resumed_from"].endswith("ckpt_000003.pt") and resumed["step"] == 6
    a = load_checkpoint(tmp_path / "full" / "ckpt_000006.pt")
    b = load_checkpoint(tmp_path / "part" / "ckpt_000006.pt")
    assert int(b["optimizers"]["g"]["state"][0]["step"]) == 6 and int(b["optimizers"]["d"]["state"][0]["step"]) == 6
    for k, v in a["models"]["generator"].items():                  # interrupted + resumed == one unbroken run
        assert torch.allclose(v, b["models"]["generator"][k], atol=1e-6), k
    assert pd.read_csv(tmp_path / "part" / "log.csv")["step"].tolist() == list(range(1, 7))
    again = train_nodule_gan(cfg, "injector", cohort_dir, tmp_path / "part", device="cpu", progress=False)
    assert again["step"] == 6                                      # a finished run returns at once


def test_only_the_newest_checkpoints_are_kept(tmp_path, trained):
    cfg = load_profile("smoke", **{"nodules.ckpt_every": 2, "nodules.iterations": 8, "nodules.keep_checkpoints": 2})
    (tmp_path / "inj").mkdir()
    (tmp_path / "inj" / "notes.txt").write_text("mine")
    train_nodule_gan(cfg, "injector", trained["cohort"].root, tmp_path / "inj", device="cpu", iterations=4,
                     progress=False)
    res = train_nodule_gan(cfg, "injector", trained["cohort"].root, tmp_path / "inj", device="cpu", progress=False)
    assert res["resumed_from"].endswith("ckpt_000004.pt") and res["step"] == 8
    assert sorted(p.name for p in (tmp_path / "inj").glob("ckpt_*.pt")) == ["ckpt_000006.pt", "ckpt_000008.pt"]
    assert (tmp_path / "inj" / "notes.txt").read_text() == "mine"
    cfg0 = cfg.replace(**{"nodules.keep_checkpoints": 0})                   # 0: every checkpoint stays
    train_nodule_gan(cfg0, "injector", trained["cohort"].root, tmp_path / "all", device="cpu", progress=False)
    assert len(list((tmp_path / "all").glob("ckpt_*.pt"))) == 4


def test_eraser_needs_a_trained_injector(tmp_path, trained):
    with pytest.raises(CTSGANError, match="nodules train injector"):
        train_nodule_gan(trained["cfg"], "eraser", trained["cohort"].root, tmp_path / "e",
                         injector_dir=tmp_path / "none", device="cpu", progress=False)


# ------------------------------------------------------------------------------------------------ quality
def test_injected_nodules_have_the_requested_size_and_solid_hu(trained):
    c, inj = trained["cohort"], trained["injector"]
    for rid in c.ids(has_nodule=0):
        hu, _ = c.read(rid)
        lung = c.read_label(rid) == 3
        out, nods = inj.inject(hu, [3.0, 5.0], np.random.default_rng(1), lung=lung)
        assert [n["diameter_vox"] for n in nods] == [3.0, 5.0]
        touched = np.zeros(hu.shape, bool)
        for n in nods:
            assert lung[tuple(n["center_vox"])]
            m = measure_nodule(out, n["center_vox"], n["diameter_vox"] / 2 + 1)
            assert abs(m["diameter_vox"] - n["diameter_vox"]) <= 1.0, (rid, n, m)
            assert m["core_hu"] > -100, (rid, m)                    # solid-nodule density, not ground glass
            lo = [v - 8 for v in n["center_vox"]]
            touched[tuple(slice(max(l, 0), l + 16) for l in lo)] = True
        assert np.array_equal(out[~touched], hu[~touched])


def test_erased_vois_are_close_to_the_nodule_free_truth(trained):
    c, era, truth = trained["cohort"], trained["eraser"], trained["truth"]
    before, after = [], []
    for rid in c.ids(has_nodule=1):
        hu, _ = c.read(rid)
        nods = c.row(rid)["nodules"]
        out = era.erase(hu, nods)
        for n in nods:
            sel = ball(16, n["diameter_vox"]) >= 0.5
            t = extract_voi(truth[rid], n["center_vox"], 16)[sel]
            before.append(np.abs(extract_voi(hu, n["center_vox"], 16)[sel] - t).mean())
            after.append(np.abs(extract_voi(out, n["center_vox"], 16)[sel] - t).mean())
    print(f"eraser MAE inside the nodule vs nodule-free truth: {np.mean(after):.1f} HU (before: {np.mean(before):.1f})")
    assert np.mean(after) < 0.15 * np.mean(before)


def test_bad_inputs_are_clear_errors(tmp_path, trained):
    with pytest.raises(CTSGANError, match="no injector checkpoint"):
        NoduleInjector.from_checkpoint(tmp_path)
    hu = np.full((32, 32, 32), -850.0, np.float32)
    with pytest.raises(CTSGANError, match="mask_size"):
        trained["injector"].inject(hu, [12.0], np.random.default_rng(0), lung=hu < 0)


def test_lung_edt_on_the_bounding_box_equals_the_full_transform():
    """The cropped distance transform is exact: blobs inside, touching the edges, filling the array, or absent."""
    from scipy.ndimage import distance_transform_edt

    from ctsgan_lib.nodules import lung_edt

    rng = np.random.default_rng(0)
    masks = []
    for _ in range(20):
        shape = tuple(int(v) for v in rng.integers(6, 28, 3))
        zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
        m = np.zeros(shape, bool)
        for _ in range(int(rng.integers(1, 4))):
            c, r = [int(rng.integers(0, s)) for s in shape], int(rng.integers(1, 8))
            m |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        masks.append(m)
    masks += [np.zeros((5, 6, 7), bool), np.ones((5, 6, 7), bool)]
    edge = np.zeros((8, 9, 10), bool)
    edge[0, 2:5, 3:6] = True                          # touches the first z face: no margin may be added there
    masks.append(edge)
    for m in masks:
        np.testing.assert_array_equal(lung_edt(m), distance_transform_edt(m))
