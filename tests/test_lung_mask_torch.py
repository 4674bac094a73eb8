"""The torch cohort path (``ctsgan generate --cohort-device``) against the numpy reference, run on the CPU.

The same tensor code runs on a GPU; here it runs on the CPU, so what is checked is the algorithm, not CUDA rounding.

Tolerances (why these numbers):

- Lung masks: Dice >= 0.999 and at most 0.05 % of the reference's voxels (at least 2) differing. Both paths smooth
  with the same float64-accumulated kernel and store float32, so a voxel can only flip where its smoothed HU lies
  within float32 rounding (~3e-5 HU at -400) of the threshold, or where two components tie for "largest"; on the
  volumes below the measured difference is 0 voxels. A GPU's summation order could flip a handful of such voxels,
  never a region; a wrong step (radius, connectivity, border rule) changes hundreds to thousands of voxels.
- Injection: at most 0.01 HU anywhere. The VOI is cut by indexing and pasted with the same float32 operations, so on
  one device the difference is 0 (measured); the allowance is for a GPU network pass (float rounding of a
  [-1, 1] output scaled by 700 HU).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage as ndi

from cli_checks import assert_one_line_error
from ctsgan_lib.cli import main
from ctsgan_lib.commands.generate import cohort_torch_device
from ctsgan_lib.data import phantom as P
from ctsgan_lib.data import preprocess as Q
from ctsgan_lib.data.io import read_nifti
from ctsgan_lib.data.lung_mask_torch import (binary_closing, fill_holes_per_slice, gaussian_smooth, label_components,
                                             lung_mask_batch)
from ctsgan_lib.nodules.inference import NoduleInjector, build_generator
from ctsgan_lib.synthesis import VolumePlan, finish_volume, generate_cohort, synthetic_cohort

DICE_MIN = 0.999
DIFF_SHARE_MAX = 0.0005
HU_TOL = 0.01


def assert_masks_agree(ref: np.ndarray, got: np.ndarray) -> None:
    assert ref.shape == got.shape and got.dtype == bool
    n_ref, n_got = int(ref.sum()), int(got.sum())
    diff = int((ref != got).sum())
    dice = 1.0 if n_ref + n_got == 0 else 2 * int((ref & got).sum()) / (n_ref + n_got)
    assert dice >= DICE_MIN, f"Dice {dice:.5f} < {DICE_MIN}"
    assert diff <= max(2, DIFF_SHARE_MAX * n_ref), f"{diff} voxels differ (reference mask {n_ref})"


@pytest.fixture(scope="module")
def phantoms():
    return [P.make_patient(21, "lidc-like", 64, 5.5), P.make_patient(3, "nlst-like", 64, 5.5),
            P.make_patient(8, "lidc-like", 48, 7.0)]


def test_torch_mask_equals_numpy_mask_on_phantoms(phantoms):
    for ph in phantoms:
        for sp in (ph.spacing_mm, None):          # mm radii and the voxel-scale radii of an unknown spacing
            for airways in (True, False):
                ref = Q.lung_mask(ph.hu, sp, remove_airways=airways)
                assert ref.sum() > 1000               # a real lung, not two empty masks agreeing
                assert_masks_agree(ref, lung_mask_batch(ph.hu, sp, remove_airways=airways))


def test_torch_mask_on_smoke_cubes_and_noisy_volumes(phantoms):
    rng = np.random.default_rng(5)
    for ph in phantoms[:2]:
        cube, sp, _ = Q.preprocess_volume(ph.hu, ph.spacing_mm, 32)       # what a smoke cohort holds
        assert_masks_agree(Q.lung_mask(cube, sp), lung_mask_batch(cube, sp))
        noisy = (ph.hu + rng.normal(0, 120, ph.hu.shape)).astype(np.float32)   # ragged, many small air blobs
        ref = Q.lung_mask(noisy, ph.spacing_mm)
        assert ref.sum() > 1000
        assert_masks_agree(ref, lung_mask_batch(noisy, ph.spacing_mm))
    empty = np.full((24, 24, 24), 40.0, np.float32)                     # no air: both empty
    assert not lung_mask_batch(empty, (5, 5, 5)).any() and not Q.lung_mask(empty, (5, 5, 5)).any()


def test_batched_masks_equal_one_at_a_time(phantoms):
    """Labels are unique across the batch: one volume's components never leak into another's."""
    a, b = phantoms[0].hu, phantoms[1].hu
    batch = lung_mask_batch(np.stack([a, b, a]), phantoms[0].spacing_mm)
    assert batch.shape == (3,) + a.shape
    np.testing.assert_array_equal(batch[0], lung_mask_batch(a, phantoms[0].spacing_mm))
    np.testing.assert_array_equal(batch[1], lung_mask_batch(b, phantoms[0].spacing_mm))
    np.testing.assert_array_equal(batch[2], batch[0])


def _same_partition(ref_lab: np.ndarray, lab: np.ndarray) -> None:
    on = ref_lab > 0
    assert np.array_equal(on, lab > 0)
    pairs = np.unique(np.stack([ref_lab[on], lab[on]]), axis=1)
    # a bijection between the two labellings' components
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_label_components_matches_scipy_label():
    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.7):          # around the 3D percolation threshold: long winding components
        vol = rng.random((2, 20, 24, 28)) < density
        lab, iters = label_components(torch.from_numpy(vol))
        for b in range(2):
            _same_partition(ndi.label(vol[b])[0], lab[b].numpy())
            inplane = np.zeros((3, 3, 3), bool)
            inplane[1] = ndi.generate_binary_structure(2, 1)
            lab2, _ = label_components(torch.from_numpy(vol[b:b + 1]), axes=(2, 3))
            _same_partition(ndi.label(vol[b], structure=inplane)[0], lab2[0].numpy())
        assert 1 <= iters < vol[0].size
    with pytest.raises(RuntimeError, match="did not converge"):      # the bound is enforced, not a silent cut
        label_components(torch.from_numpy(rng.random((1, 20, 24, 28)) < 0.5), max_iterations=2)


def test_smoothing_closing_and_hole_filling_match_scipy():
    rng = np.random.default_rng(1)
    vol = rng.normal(-500, 400, (18, 22, 26)).astype(np.float32)
    for sig in ((1.0, 0.7, 2.0), (0.5, 0.5, 0.5)):
        ref = ndi.gaussian_filter(vol, sig, mode="nearest")
        got = gaussian_smooth(torch.from_numpy(vol)[None], sig)[0].numpy()
        assert np.abs(got - ref).max() <= 1e-3      # float32 storage of |HU| ~ 1000: ~1e-4 apart at most
    mask = ndi.gaussian_filter(rng.random((18, 22, 26)), 1.5) > 0.5
    for r in ((1, 1, 1), (2, 3, 3), (0, 2, 1)):
        pad = max(r)
        ref = ndi.binary_closing(np.pad(mask, pad), structure=Q.ball_structure(r))[pad:-pad, pad:-pad, pad:-pad]
        np.testing.assert_array_equal(binary_closing(torch.from_numpy(mask)[None], r)[0].numpy(), ref)
    np.testing.assert_array_equal(fill_holes_per_slice(torch.from_numpy(mask)[None])[0].numpy(),
                                  Q.fill_holes_per_slice(mask))


def _injector(kind: str) -> NoduleInjector:
    torch.manual_seed(0)       # an untrained generator: what is compared is the plumbing, not realism
    return NoduleInjector(build_generator(kind, 16, 8, (-0.8, 0.4)), 16, 8, kind=kind)


@pytest.mark.parametrize("kind", ["learned", "sphere"])
def test_injection_on_tensors_equals_numpy(phantoms, kind):
    inj = _injector(kind)
    ph = phantoms[0]
    plan = VolumePlan(index=4, inject=True, diameters_vox=[3.0, 5.0, 4.0])
    hu_np, f_np = finish_volume(plan, ph.hu, ph.spacing_mm, inj, seed=7)
    lung = lung_mask_batch(ph.hu, ph.spacing_mm)
    hu_t, f_t = finish_volume(plan, ph.hu, ph.spacing_mm, inj, seed=7, lung=lung, device="cpu")
    assert len(f_np["nodules"]) == 3 and f_t == f_np       # same placements (same rng stream), same fields
    assert isinstance(hu_t, np.ndarray) and hu_t.dtype == np.float32
    assert not np.array_equal(hu_np, ph.hu)                  # something was painted
    assert np.abs(hu_t - hu_np).max() <= HU_TOL
    # a nodule at the volume's edge: the reflect / symmetric padding of the cut agrees too
    edge_np = inj.inject_at(ph.hu, (0, 1, 63), 5.0, rng=np.random.default_rng(2))
    edge_t = inj.inject_at(torch.from_numpy(ph.hu), (0, 1, 63), 5.0, rng=np.random.default_rng(2))
    assert np.abs(edge_t.numpy() - edge_np).max() <= HU_TOL




def test_cohort_written_on_the_torch_path_equals_the_numpy_cohort(ctsgan_ckpt, tmp_path, monkeypatch):
    """The whole `generate` loop, numpy path vs torch path (on the CPU), with lungs and injection.

    An untrained CT-SGAN's volumes have no lungs (every mask empty, nothing injected), which would compare nothing;
    so the generator is replaced by phantom patients (one per index) and the injector by an untrained one.
    """
    def phantom_volumes(gen, count, seed, batch=1, device="cpu", start=0, **kw):
        for i in range(start, start + count):
            ph = P.make_patient(100 + i, ("lidc-like", "nlst-like")[i % 2], 48, 7.0)
            yield ph.hu, ph.spacing_mm

    inj = _injector("learned")
    monkeypatch.setattr(synthetic_cohort, "generate_volumes", phantom_volumes)
    monkeypatch.setattr(synthetic_cohort, "MASK_VOXELS_PER_CALL", 2 * 48 ** 3)   # blocks of 4 in calls of 2
    monkeypatch.setattr(NoduleInjector, "from_checkpoint", classmethod(lambda cls, path, device="cpu": inj))
    kw = dict(n=6, seed=3, inject_fraction=0.5, batch=4, progress=False, injector="untrained",
              nodule_diameters_vox=[3.0, 5.0])
    ref = generate_cohort(ctsgan_ckpt, out=tmp_path / "numpy", **kw)
    got = generate_cohort(ctsgan_ckpt, out=tmp_path / "torch", cohort_device="cpu", **kw)
    m_ref = pd.read_csv(ref / "manifest.csv", keep_default_na=False)
    m_got = pd.read_csv(got / "manifest.csv", keep_default_na=False)
    assert len(m_ref) == 6 and (m_ref["lung_volume_ml"] > 100).all() and m_ref["has_nodule"].sum() >= 2
    # ids, splits, lung volumes, flags, nodule places and sizes, paths (checksums are compared below with volumes)
    pd.testing.assert_frame_equal(m_ref.drop(columns="checksum"), m_got.drop(columns="checksum"))
    for rel in m_ref["path"]:
        a = read_nifti(ref / rel)[0]
        b = read_nifti(got / rel)[0]
        assert np.abs(np.asarray(a, float) - np.asarray(b, float)).max() <= HU_TOL
    assert json.loads((got / "cohort.json").read_text()).get("cohort_path") == "torch"
    assert "cohort_path" not in json.loads((ref / "cohort.json").read_text())


def test_cohort_device_choice_maps_to_the_path(tmp_path, capsys, monkeypatch):
    assert cohort_torch_device("cpu", "cuda:1") is None                # the numpy reference, whatever the device
    assert cohort_torch_device("auto", "cpu") is None and cohort_torch_device("auto", "cuda:1") == "cuda:1"
    assert cohort_torch_device("cuda", "cpu") == "cuda" and cohort_torch_device("cuda", "cuda:2") == "cuda:2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "c"
    rc = main(["generate", "--checkpoint", str(tmp_path / "none.pt"), "--n", "1", "--out", str(out),
               "--cohort-device", "cuda", "--no-progress"])
    assert_one_line_error(rc, capsys.readouterr().err, "--cohort-device cuda", "no CUDA GPU")
    assert not out.exists()
