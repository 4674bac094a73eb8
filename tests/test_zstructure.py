"""z-structure statistics: a repeated slice, flicker, identical patients and a shifted profile are told apart."""
from __future__ import annotations

import numpy as np
import pytest

from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.eval.zstructure import mean_profile, z_structure, z_structure_table


def _chest(n: int, z: int = 24, s: int = 16, seed: int = 0, dome_at: float = 0.7) -> np.ndarray:
    """Volumes whose lungs (-1) end at a dome at ``dome_at`` of the depth; body 0.5; per-patient dome jitter."""
    rng = np.random.default_rng(seed)
    zz = np.arange(z)[:, None, None] / (z - 1)
    yy, xx = np.mgrid[:s, :s] / (s - 1) - 0.5
    lung = (np.abs(xx) > 0.08) & (np.abs(xx) < 0.35) & (np.abs(yy) < 0.3)
    out = []
    for _ in range(n):
        top = dome_at + rng.normal(0, 0.05)
        out.append(np.where(lung[None] & (zz < top), -1.0, 0.5) + rng.normal(0, 0.01, (z, s, s)))
    return np.stack(out)


def test_statistics_separate_bars_flicker_collapse_and_misplaced_anatomy():
    real = _chest(8)
    good = z_structure(_chest(8, seed=1), real)
    assert good["profile_corr"] > 0.95 and good["z_std"] == pytest.approx(z_structure(real)["z_std"], rel=0.2)
    bars = z_structure(np.repeat(real[:, 5:6], real.shape[1], axis=1), real)     # one slice repeated along z
    assert bars["z_std"] < good["z_std"] / 10 and bars["profile_std"] < 1e-3
    assert np.isnan(bars["profile_corr"])                                      # a flat profile correlates with nothing
    same = z_structure(np.repeat(real[:1], 8, axis=0), real)                     # every patient identical
    assert same["patient_std"] < 1e-12 and good["patient_std"] > 0.01
    flipped = z_structure(real[:, ::-1], real)                                   # anatomy at the wrong end
    assert flipped["profile_corr"] < 0 and flipped["z_std"] == pytest.approx(z_structure(real)["z_std"])
    # profile_corr is the Pearson correlation of the mean profiles
    np.testing.assert_allclose(good["profile_corr"],
                               np.corrcoef(mean_profile(_chest(8, seed=1)), mean_profile(real))[0, 1])


def test_bad_input_is_a_clear_error():
    with pytest.raises(CTSGANError, match="at least 2 volumes"):
        z_structure(np.zeros((1, 4, 4, 4)))
    with pytest.raises(CTSGANError, match="depth"):
        z_structure(_chest(2, z=8), _chest(2, z=10))


def test_table_of_hu_sources_matches_z_structure_in_the_model_range():
    def hu(v):                                                   # model range [-1, 1] -> HU in [-1000, 400]
        return [(x + 1.0) / 2.0 * 1400.0 - 1000.0 for x in v]

    real, other = np.clip(_chest(3), -1, 1), np.clip(_chest(3, seed=1), -1, 1)   # inside the window: no clipping
    t = z_structure_table({"real": hu(real), "other": hu(other)}, hu(real), -1000.0, 400.0)
    assert list(t.index) == ["real", "other"]
    for k, v in z_structure(other, real).items():
        assert t.loc["other", k] == pytest.approx(v, rel=1e-4, abs=1e-6)
