"""Nodule realism: the realism-CNN AUC separates different nodule sets and not two halves of one; the measurements."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ctsgan_lib.data.phantom import render_nodule
from ctsgan_lib.nodules import ball
from ctsgan_lib.nodules.realism import bootstrap_auc, nodule_features, realism_auc

SIDE = 12


def _vois(kind: str, n: int, seed: int) -> np.ndarray:
    """``n`` VOIs of lung noise (-850 ± 20 HU) with one nodule of 3-5 voxels at the centre: ``sphere`` (solid
    ball, 40 HU) or the phantom's ``part-solid`` nodule (ground-glass halo, solid core)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, SIDE, SIDE, SIDE), np.float32)
    for i in range(n):
        lung = -850.0 + rng.normal(0, 20, (SIDE,) * 3)
        d = rng.uniform(3.0, 5.0)
        c = SIDE // 2 + rng.uniform(-0.5, 0.5, 3)
        if kind == "sphere":
            dens = ball(SIDE, d, center=c)
        else:
            dens, _ = render_nodule((SIDE,) * 3, c, d, "part-solid", rng)
        out[i] = lung + dens * (40.0 - lung)
    return out


def test_realism_auc_separates_spheres_from_part_solid_and_not_two_halves_of_one_set():
    spheres, part_solid = _vois("sphere", 48, 0), _vois("part-solid", 48, 1)
    diff = realism_auc(part_solid, spheres, folds=3, steps=60, seed=0, n_boot=200)
    same = realism_auc(spheres[:24], spheres[24:], folds=3, steps=60, seed=0, n_boot=200)
    print(f"AUC part-solid vs spheres {diff['auc']:.2f} [{diff['ci_low']:.2f}, {diff['ci_high']:.2f}]; "
          f"two halves of the spheres {same['auc']:.2f} [{same['ci_low']:.2f}, {same['ci_high']:.2f}]")
    assert diff["auc"] > 0.9 and diff["ci_low"] > 0.75
    assert 0.25 < same["auc"] < 0.75 and same["ci_low"] < 0.5 < same["ci_high"]
    assert len(diff["scores"]) == 96 and diff["labels"].sum() == 48


def test_bootstrap_interval_brackets_the_auc_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200), np.zeros(200)].astype(int)
    s = y + rng.normal(0, 1.2, 400)
    auc = roc_auc_score(y, s)
    lo, hi = bootstrap_auc(y, s, 400, 0)
    lo2, hi2 = bootstrap_auc(y[::4], s[::4], 400, 0)
    assert lo < auc < hi and (hi - lo) < (hi2 - lo2)


def test_nodule_features_of_a_ball_and_of_a_part_solid_nodule():
    lung = np.full((SIDE,) * 3, -850.0, np.float32)
    solid = lung + ball(SIDE, 5.0) * (40.0 + 850.0)
    f = nodule_features(solid, 5.0)
    assert abs(f["measured_vox"] - 5.0) < 0.6 and f["mean_hu"] > -250 and not f["part_solid"]
    assert 0.5 < f["sphericity"] < 1.0
    dens, _ = render_nodule((SIDE,) * 3, [SIDE // 2] * 3, 6.0, "part-solid", np.random.default_rng(2))
    ps = nodule_features(lung + dens * (40.0 + 850.0), 6.0)
    assert ps["part_solid"] and ps["ggo_share"] > 0.3 and ps["mean_hu"] < f["mean_hu"]
