"""Preprocessing: clip, isotropic resampling, body crop without the table, S³ cube, point mapping, lung mask."""
from __future__ import annotations

import numpy as np
import pytest

from ctsgan_lib.data import phantom as P
from ctsgan_lib.data import preprocess as Q


@pytest.fixture(scope="module")
def ph():
    return P.render_phantom(P.sample_params(21, "lidc-like", 64, 5.5))


def test_clip_hu():
    out = Q.clip_hu(np.array([-3000, -1000, 0, 400, 3000]))
    assert out.dtype == np.float32 and out.tolist() == [-1000, -1000, 0, 400, 400]


def test_resample_isotropic_keeps_field_of_view():
    vol = np.random.default_rng(0).normal(size=(20, 40, 30)).astype(np.float32)
    out, sp = Q.resample_isotropic(vol, (2.5, 1.0, 1.0), 2.0)
    assert out.shape == (25, 20, 15) and sp == pytest.approx((2.0, 2.0, 2.0))
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[None, :, None], (8, 40, 8))
    out, sp = Q.resample_isotropic(ramp, (1, 1, 1), 2.0)
    # voxel-centre aligned: output voxel j covers input voxels 2j, 2j+1 → value 2j + 0.5
    np.testing.assert_allclose(out[2, 3:17, 2], 2 * np.arange(3, 17) + 0.5, atol=1e-3)
    with pytest.raises(ValueError):
        Q.resample_isotropic(vol, (1.0, 0.0, 1.0), 1.0)


def test_resize_cube():
    assert Q.resize_cube(np.zeros((10, 30, 20)), 16).shape == (16, 16, 16)


def test_body_bbox_excludes_table(ph):
    bb = Q.body_bbox(ph.hu, spacing_mm=ph.spacing_mm)
    table_y = np.flatnonzero((ph.labels == P.LABELS["table"]).any(axis=(0, 2)))
    body = np.isin(ph.labels, [1, 2, 6])
    ys = np.flatnonzero(body.any(axis=(0, 2)))
    xs = np.flatnonzero(body.any(axis=(0, 1)))
    table_x = np.flatnonzero((ph.labels == P.LABELS["table"]).any(axis=(0, 1)))
    assert table_x.max() - table_x.min() > xs.max() - xs.min() + 4   # the table is wider than the patient ...
    assert bb[2].start >= table_x.min() + 3 and bb[2].stop <= table_x.max() - 2   # ... but not in the box
    assert bb[1].stop <= table_y.max() + 1
    assert bb[1].start <= ys.min() and bb[1].stop >= ys.max() - 1   # the whole body is
    assert bb[2].start <= xs.min() and bb[2].stop >= xs.max()


def test_preprocess_volume_shape_and_point_mapping(ph):
    cube, sp, info = Q.preprocess_volume(ph.hu, ph.spacing_mm, 32)
    assert cube.shape == (32, 32, 32) and cube.dtype == np.float32
    assert cube.min() >= -1000 and cube.max() <= 400
    assert sp[0] == sp[1] == sp[2] and info["lung_found"]
    lab = Q.preprocess_labels(ph.labels, info)
    assert lab.shape == (32, 32, 32) and lab.dtype == np.uint8
    # the lungs lie inside the cube, and a structure's centroid maps onto the same structure's centroid
    assert not (lab == P.LABELS["lung"])[[0, -1]].any()
    for name in ("heart", "lung"):              # large structures (thin ones alias under nearest neighbour)
        c_in = np.argwhere(ph.labels == P.LABELS[name]).mean(0)
        c_out = np.argwhere(lab == P.LABELS[name]).mean(0)
        np.testing.assert_allclose(Q.map_points(c_in, info)[0], c_out, atol=0.8)
    d_vox = Q.map_length_vox(11.0, info)
    assert d_vox == pytest.approx(11.0 / sp[0])


def test_lung_mask_matches_phantom_lungs(ph):
    m = Q.lung_mask(ph.hu, ph.spacing_mm)
    from scipy import ndimage as ndi

    lung = ph.labels == P.LABELS["lung"]
    # the lungs' own vessels, airways and nodules count as lung (the mask fills them)
    inside = np.isin(ph.labels, [4, 5, 7]) & ndi.binary_dilation(lung, iterations=2)
    ref = lung | inside
    dice = 2 * (m & ref).sum() / (m.sum() + ref.sum())
    assert dice > 0.93
    assert Q.lung_mask_flags(m) == []
    # the trachea above the lungs is taken out (nodule sites must not fall in it), unless asked to keep it
    trachea = (ph.labels == P.LABELS["airway"]) & ~ndi.binary_dilation(lung, iterations=2)
    kept = Q.lung_mask(ph.hu, ph.spacing_mm, remove_airways=False)
    assert (kept & trachea).sum() > 0.5 * trachea.sum()
    assert (m & trachea).sum() < 0.2 * trachea.sum()


def test_lung_mask_on_preprocessed_cube(ph):
    cube, sp, info = Q.preprocess_volume(ph.hu, ph.spacing_mm, 32)
    m = Q.lung_mask(cube, sp)
    assert Q.lung_mask_flags(m) == []


def test_lung_mask_flags_bad_volumes(ph):
    soft = np.full((32, 32, 32), 40.0, np.float32)
    assert Q.lung_mask_flags(Q.lung_mask(soft, (5, 5, 5))) == ["empty"]
    one = ph.hu.copy()
    right = (ph.labels != 0) & (np.arange(64)[None, None, :] < 32)    # fill the right half of the body
    one[right & (one < -300)] = 40.0
    flags = Q.lung_mask_flags(Q.lung_mask(one, ph.spacing_mm))
    assert "one_lung" in flags
    tiny = np.zeros((64, 64, 64), bool)
    tiny[30:33, 30:33, 20:23] = tiny[30:33, 30:33, 40:43] = True
    assert "tiny" in Q.lung_mask_flags(tiny)
    leak = np.zeros((32, 32, 32), bool)
    leak[5:20, 0:20, 2:12] = leak[5:20, 0:20, 18:28] = True
    assert "touches_border" in Q.lung_mask_flags(leak)


def test_preprocess_anisotropic_scan_maps_points(ph):
    # a "real-scan-like" grid: every second slice (dz = 11 mm, dy = dx = 5.5 mm)
    hu, lab = ph.hu[::2], ph.labels[::2]
    cube, sp, info = Q.preprocess_volume(hu, (11.0, 5.5, 5.5), 32)
    assert cube.shape == (32, 32, 32) and sp[0] == sp[1] == sp[2]
    assert info["step_vox"][0] == pytest.approx(info["step_vox"][1] / 2)
    lab_c = Q.preprocess_labels(lab, info)
    c_in = np.argwhere(lab == P.LABELS["heart"]).mean(0)
    c_out = np.argwhere(lab_c == P.LABELS["heart"]).mean(0)
    np.testing.assert_allclose(Q.map_points(c_in, info)[0], c_out, atol=0.8)


def test_fill_holes_per_slice_equals_the_slice_loop():
    from scipy import ndimage as ndi

    from ctsgan_lib.data.preprocess import fill_holes_per_slice

    rng = np.random.default_rng(1)
    for _ in range(25):
        m = rng.random(tuple(int(v) for v in rng.integers(1, 20, 3))) < rng.uniform(0.2, 0.8)
        ref = m.copy()
        for k in range(ref.shape[0]):
            ref[k] = ndi.binary_fill_holes(ref[k])
        np.testing.assert_array_equal(fill_holes_per_slice(m), ref)


def test_closing_on_the_grown_bounding_box_equals_the_whole_array():
    """lung_mask closes only around the mask; the result must be the whole-array closing, edges included."""
    from scipy import ndimage as ndi

    from ctsgan_lib.data.preprocess import _ball, grown_bbox

    rng = np.random.default_rng(2)
    for _ in range(15):
        shape = tuple(int(v) for v in rng.integers(8, 24, 3))
        m = rng.random(shape) < 0.04
        m[tuple(int(rng.integers(0, s)) for s in shape)] = True          # never empty
        r = np.array([int(v) for v in rng.integers(1, 4, 3)])
        pad = r.max()
        padded = np.pad(m, pad)
        whole = ndi.binary_closing(padded, structure=_ball(r))
        box = grown_bbox(padded, 2 * r + 1)
        cropped = np.zeros_like(padded)
        cropped[box] = ndi.binary_closing(padded[box], structure=_ball(r))
        np.testing.assert_array_equal(cropped, whole)
