"""Table C1 (issue 26, build item 3, fidelity): Table 1's metrics for the conditional CT-SGAN cohort split by its
condition, beside the unconditional CT-SGAN cohort and the real-vs-real reference row.

Smoke-sized: 32³ toy chests (the helpers of ``test_fidelity``), 4 slices per view, two views, the offline domain
extractor trained for a few steps (the extractor Table 1 picks at smoke when no ImageNet weights are cached).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort, CohortWriter
from ctsgan_lib.errors import CTSGANError, MissingInputError
from ctsgan_lib.eval import fidelity as F
from ctsgan_lib.reporting.conditional import (COND_WITH, COND_WITHOUT, ConditionSubset, conditional_fidelity_sources,
                                              run_tableC1)

from conftest import REPO
from test_fidelity import chest, write_cohort

OVERRIDES = {"fidelity.n_pairs": 2, "fidelity.volumes_per_source": 3, "fidelity.max_slices": 4,
             "fidelity.views": "axial,sagittal", "fidelity.pooled_volumes": 2, "fidelity.isc_splits": 1,
             "fidelity.kid_subsets": 5, "fidelity.domain_steps": 10, "fidelity.domain_max_volumes": 4,
             "fidelity.metrics_3d": True, "fidelity.batch": 16}
NOISE_HU = 250.0  # the volumes "with nodules" of the toy conditional cohort: known-worse (heavy noise added)


def write_conditional_cohort(root, n_per_condition: int = 3, seed: int = 13) -> Cohort:
    """A cohort in the format `ctsgan generate --nodules` writes (``condition_nodules``, ``condition_diameter_vox``):
    the volumes without nodules are clean toy chests, those with nodules have heavy noise added."""
    rng = np.random.default_rng(seed)
    with CohortWriter(root, compress=False) as w:
        for i in range(2 * n_per_condition):
            k = i % 2
            hu = chest(rng) + (rng.normal(0, NOISE_HU, (32,) * 3).astype(np.float32) if k else 0.0)
            w.write(f"ctsgan_cond{i:03d}", hu, (1.0, 1.0, 1.0), source="ctsgan_cond", domain="synthetic",
                    split="train", nodules=[], has_nodule=k, condition_nodules=k,
                    condition_diameter_vox=4.0 if k else 0.0)
    return Cohort(root)


@pytest.fixture(scope="module")
def tablec1(tmp_path_factory):
    root = tmp_path_factory.mktemp("c1root")
    mp = pytest.MonkeyPatch()
    mp.setenv("CTSGAN_ROOT", str(root))
    mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))  # no ImageNet weights: the offline default
    cfg = load_profile("smoke", **OVERRIDES)
    write_cohort(cfg.data_dir / "cohort", 6, seed=11)
    write_cohort(cfg.data_dir / "synthetic" / "ctsgan", 3, seed=12, source="ctsgan")
    write_conditional_cohort(cfg.data_dir / "synthetic" / "ctsgan_cond")
    out = run_tableC1(cfg, device="cpu", progress=False)
    yield cfg, root, out
    mp.undo()


def test_rows_values_and_relative_fd(tablec1):
    cfg, _, out = tablec1
    t, recs = out["table"], out["records"]
    assert list(t["Data Source"]) == ["Real Data (real vs real: the reference)",
                                      "CT-SGAN Synthetic Data (unconditional)",
                                      "Conditional CT-SGAN, generated with nodules",
                                      "Conditional CT-SGAN, generated without nodules"]
    assert "with nodules (1 × 4 vox)" in t.loc[2, "volumes (condition)"]
    assert list(t["volumes compared"]) == [3, 3, 3, 3]
    for col in ("fid_mean", "kid_mean", "is_mean", "fid3d_mean", "mmd3d_mean", "msssim_mean", "relative_fd"):
        assert np.isfinite(t[col].astype(float)).all(), col
    assert (t["n_pairs"] == cfg.fidelity.n_pairs).all()
    # relative FD: the row's mean axial pair FID over the real-vs-real mean of the same run (Table 1's definition);
    # recomputed here from the records, so the reference row is 1 by definition
    fid = {k: np.mean([r["value"] for r in recs if r["row"] == k and r["metric"] == "fid"
                       and r["protocol"] == "pair" and r["view"] == "axial"])
           for k in ("real", "ctsgan", COND_WITH, COND_WITHOUT)}
    assert t.loc[0, "relative_fd"] == 1.0 and t.loc[0, "3D relative FD [95 % CI]"] == "1.00 (reference)"
    for i, k in enumerate(fid):
        assert t.loc[i, "relative_fd"] == pytest.approx(fid[k] / fid["real"], rel=1e-9)
    # each conditional row compares only the volumes of its own condition
    cond = Cohort(cfg.data_dir / "synthetic" / "ctsgan_cond").manifest.set_index("id")["condition_nodules"]
    for key, want in ((COND_WITH, 1), (COND_WITHOUT, 0)):
        ids = {r["a"] for r in recs if r["row"] == key and r["protocol"] in ("pair", "volume")}
        assert ids and {int(cond[i]) for i in ids} == {want}


def test_known_worse_source_ranks_worse_than_unconditional(tablec1):
    t = tablec1[2]["table"].set_index("Data Source")
    noisy = t.loc["Conditional CT-SGAN, generated with nodules"]
    clean = t.loc["Conditional CT-SGAN, generated without nodules"]
    unconditional = t.loc["CT-SGAN Synthetic Data (unconditional)"]
    assert noisy["relative_fd"] > 1.5 * unconditional["relative_fd"]
    assert noisy["relative_fd"] > 1.5 * clean["relative_fd"]
    assert noisy["fid3d_mean"] > unconditional["fid3d_mean"]


def test_unconditional_and_reference_rows_repeat_table1(tablec1):
    """Same pools, pairs, seed and extractor as Table 1: run_fidelity on Table 1's own rows gives the same values."""
    cfg, root, out = tablec1
    real = F.Source("real", Cohort(cfg.data_dir / "cohort"), "cohort")     # Table 1's sources (table1_sources)
    ctsgan = F.Source("ctsgan", Cohort(cfg.data_dir / "synthetic" / "ctsgan"), "synthetic/ctsgan")
    t1 = F.run_fidelity(cfg, real, [real, ctsgan], out=root / "t1.jsonl", device="cpu", progress=False)
    key = lambda r: (r["row"], r["metric"], r["protocol"], r["view"], r.get("pair"), str(r.get("a")))  # noqa: E731
    mine = {key(r): r["value"] for r in out["records"] if r["row"] in ("real", "ctsgan")}
    theirs = {key(r): r["value"] for r in t1}
    assert mine and mine.keys() == theirs.keys()
    # slice metrics come from the same cached features: identical. The 3D encoder's features are not cached and are
    # recomputed; float32 reductions may then differ in the last bits, hence the tolerance
    for k, v in mine.items():
        assert v == (theirs[k] if k[3] != "3d" else pytest.approx(theirs[k], rel=1e-5)), k


def test_files_carry_provenance_and_no_machine_path(tablec1):
    cfg, root, out = tablec1
    md_path, csv_path = (root / "figures" / "smoke" / f"tableC1_conditional_fidelity.{e}" for e in ("md", "csv"))
    assert [p.name for p in out["paths"]] == [csv_path.name, md_path.name]
    md, csv = md_path.read_text(), csv_path.read_text()
    prov = out["provenance"]
    for text in (md, csv):
        assert str(root) not in text and prov["weights_sha256"] in text
    assert "profile: smoke" in md and "seed: 7" in md and "hardware" in md and "NOT comparable to the paper" in md
    assert "Table C1" in md and "ctsgan-domain2d" in md
    back = pd.read_csv(csv_path)
    assert len(back) == 4 and back["profile"].eq("smoke").all()
    assert back["relative_fd"].tolist() == pytest.approx(out["table"]["relative_fd"].tolist())
    lines = (cfg.runs_dir / "ctsgan_cond" / "fidelity_metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(out["records"])


def test_missing_or_unconditional_cohort_is_named(tmp_root):
    cfg = load_profile("smoke", **OVERRIDES)
    write_cohort(cfg.data_dir / "cohort", 3, seed=11)
    for want in ("04_synthetic_cohort.ipynb", "09_conditional_ctsgan.ipynb"):   # the notebooks that make the inputs
        with pytest.raises(MissingInputError, match=want):
            conditional_fidelity_sources(cfg)
        assert (REPO / "notebooks" / want).is_file()
        write_cohort(cfg.data_dir / "synthetic" / "ctsgan", 2, seed=12, source="ctsgan")
    with pytest.raises(CTSGANError, match="not a conditional cohort"):
        ConditionSubset(Cohort(cfg.data_dir / "synthetic" / "ctsgan"), True)
    with CohortWriter(cfg.data_dir / "synthetic" / "ctsgan_cond", compress=False) as w:   # all without nodules
        for i in range(2):
            w.write(f"c{i}", chest(np.random.default_rng(i)), (1.0, 1.0, 1.0), source="ctsgan_cond", split="train",
                    nodules=[], has_nodule=0, condition_nodules=0, condition_diameter_vox=0.0)
    with pytest.raises(CTSGANError, match="no volume generated with nodules"):
        conditional_fidelity_sources(cfg)
    subset = ConditionSubset(Cohort(cfg.data_dir / "synthetic" / "ctsgan_cond"), False)
    assert subset.ids() == ["c0", "c1"] and subset.read("c1")[0].shape == (32, 32, 32)
