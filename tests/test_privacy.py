"""Memorization check (Dar et al. 2024): near-copies of training volumes are flagged, independent volumes are not."""
from __future__ import annotations

import numpy as np
import pytest

from ctsgan_lib.data.cohort import Cohort, CohortWriter
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.eval import privacy as P

from test_fidelity import chest


def _write(root, vols, splits=None, source="phantom"):
    with CohortWriter(root, compress=False) as w:
        for i, hu in enumerate(vols):
            w.write(f"{source}{i:03d}", hu, (1.0, 1.0, 1.0), source=source, domain="synthetic",
                    split=(splits[i] if splits else "train"), nodules=[])
    return Cohort(root)


@pytest.fixture
def cohorts(tmp_root):
    rng = np.random.default_rng(0)
    train = [chest(rng, 24) for _ in range(12)]
    val = [chest(rng, 24) for _ in range(8)]
    real = _write(tmp_root / "real", train + val, ["train"] * 12 + ["val"] * 8)
    # copies: exact, and near copies (fresh scanner-like noise, a 20 HU offset)
    copies = [train[0], train[3] + rng.normal(0, 20, train[3].shape).astype(np.float32), train[7] + 20.0,
              train[10] + rng.normal(0, 10, train[10].shape).astype(np.float32)]
    copied = _write(tmp_root / "copies", copies, source="ctsgan")
    independent = _write(tmp_root / "indep", [chest(np.random.default_rng(99 + i), 24) for i in range(10)],
                         source="gan3d")
    return real, copied, independent


def test_copies_flagged_independent_not(cohorts):
    real, copied, independent = cohorts
    rep = P.memorization_check(real, {"copies": copied, "independent": independent}, size=12)
    assert 0 < rep.threshold < 1 and len(rep.val_corr) == 8
    assert rep.per_source["copies"]["copy_share"] == 1.0
    assert rep.per_source["copies"]["nearest_train"] == ["phantom000", "phantom003", "phantom007", "phantom010"]
    assert rep.per_source["independent"]["copy_share"] <= 0.2
    table = rep.table()
    assert list(table["source"]) == ["copies", "independent"]
    top = rep.closest_pairs(3)
    assert len(top) == 3 and set(top["source"]) == {"copies"} and top["flagged copy"].all()


def test_embedding_is_a_correlation():
    rng = np.random.default_rng(1)
    a = chest(rng, 16)
    ea, eb = P.embed_volume(a, 8), P.embed_volume(a * 0.5 - 300.0, 8)  # linear HU change inside the window
    assert ea @ ea / ea.size == pytest.approx(1.0)
    assert ea @ eb / ea.size > 0.98
    assert not P.embed_volume(np.zeros((8, 8, 8)), 4).any()


def test_memorization_needs_train_and_val(tmp_root):
    rng = np.random.default_rng(0)
    only_train = _write(tmp_root / "t", [chest(rng, 16) for _ in range(3)])
    with pytest.raises(CTSGANError, match="'val'"):
        P.memorization_check(only_train, {"x": only_train})
    with CohortWriter(tmp_root / "empty", compress=False):
        pass
    both = _write(tmp_root / "tv", [chest(rng, 16) for _ in range(3)], ["train", "train", "val"])
    with pytest.raises(CTSGANError, match="empty"):
        P.memorization_check(both, {"empty": Cohort(tmp_root / "empty")})
