"""Cohort manifest, stratified splits, crash-safe idempotent writing and cohort building."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pandas as pd
import pytest

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import MANIFEST_COLUMNS, Cohort, CohortWriter, assign_splits, cohort_summary
from ctsgan_lib.data.sources import build_cohort
from ctsgan_lib.errors import CTSGANError, InputFileError


# ---------------------------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------------------------
def _paper_frame():
    ids = [f"p{i:04d}" for i in range(1200)]
    return pd.DataFrame({"id": ids, "source": ["lidc"] * 600 + ["nlst"] * 600, "has_nodule": [1] * 600 + [0] * 600})


def test_paper_scale_split_is_exactly_900_150_150_and_stratified():
    df = _paper_frame()
    split = assign_splits(df, (0.75, 0.125, 0.125), seed=0)
    assert split.value_counts().to_dict() == {"train": 900, "val": 150, "test": 150}
    table = pd.crosstab([df["source"], df["has_nodule"]], split)
    assert (table["train"] == 450).all() and (table["val"] == 75).all() and (table["test"] == 75).all()


def test_split_depends_on_ids_and_seed_not_row_order():
    df = _paper_frame()
    a = assign_splits(df, seed=0)
    shuffled = df.sample(frac=1.0, random_state=5)
    b = assign_splits(shuffled, seed=0).reindex(df.index)
    assert (a == b).all()
    c = assign_splits(df, seed=1)
    assert (a != c).any() and c.value_counts()["train"] == 900


@pytest.mark.parametrize("n", [7, 24, 25, 103])
def test_small_uneven_strata_hit_global_counts(n):
    rng = np.random.default_rng(n)
    df = pd.DataFrame({"id": [f"x{i}" for i in range(n)], "source": rng.choice(["lidc", "nlst", "phantom"], n),
                       "has_nodule": rng.integers(0, 2, n)})
    split = assign_splits(df, (0.75, 0.125, 0.125), seed=3)
    quotas = np.array([0.75, 0.125, 0.125]) * n
    counts = split.value_counts().reindex(["train", "val", "test"], fill_value=0).to_numpy()
    assert counts.sum() == n and np.all(np.abs(counts - quotas) < 1)
    # every stratum is split close to its own quotas (never off by more than one per split)
    for _, grp in split.groupby([df["source"], df["has_nodule"]]):
        c = grp.value_counts().reindex(["train", "val", "test"], fill_value=0).to_numpy()
        assert np.all(np.abs(c - np.array([0.75, 0.125, 0.125]) * len(grp)) <= 1.0 + 1e-9)


# ---------------------------------------------------------------------------------------------------------------
# writer / reader on synthetic arrays
# ---------------------------------------------------------------------------------------------------------------
def _write_some(root, n=6, compress=True):
    rng = np.random.default_rng(0)
    w = CohortWriter(root, compress=compress, source_defaults={"source": "phantom"})
    vols = {}
    for i in range(n):
        hu = rng.integers(-1000, 400, (12, 10, 8)).astype(np.float32)
        nodules = [{"center_vox": [5.0, 4.0, 3.0], "diameter_mm": 6.0, "diameter_vox": 2.0, "kind": "solid",
                    "action": "original"}] if i % 2 else []
        w.write(f"ph-{i:03d}", hu, (1.5, 1.0, 2.0), label=(hu > 0).astype(np.uint8),
                domain="lidc-like" if i % 2 else "nlst-like", nodules=nodules, extra_col=i)
        vols[f"ph-{i:03d}"] = hu
    w.assign_splits((0.5, 0.25, 0.25), seed=0)
    w.close()
    return vols


def test_writer_reader_roundtrip(tmp_root):
    root = tmp_root / "cohort"
    vols = _write_some(root)
    c = Cohort(root)
    assert len(c) == 6 and list(c.manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert "extra_col" in c.manifest.columns  # extra columns are kept
    assert c.ids(has_nodule=1) == ["ph-001", "ph-003", "ph-005"]
    assert c.ids(domain="nlst-like", has_nodule=1) == []
    assert sorted(c.manifest["split"].unique()) == ["test", "train", "val"]
    for rid, hu in vols.items():
        got, spacing = c.read(rid)
        np.testing.assert_array_equal(got, hu)
        assert spacing == pytest.approx((1.5, 1.0, 2.0))
        np.testing.assert_array_equal(c.read_label(rid), (hu > 0).astype(np.uint8))
        assert c.verify(rid)
    row = c.row("ph-001")
    assert row["nodules"][0]["diameter_mm"] == 6.0 and row["shape"] == (12, 10, 8) and row["has_nodule"] == 1
    with pytest.raises(CTSGANError, match="nope"):
        c.row("nope")
    table = cohort_summary(c)
    assert int(table.loc[("all", "", ""), "total"]) == 6


def test_writer_resumes_and_detects_corruption(tmp_root):
    root = tmp_root / "cohort"
    _write_some(root, n=3, compress=False)
    w = CohortWriter(root)
    assert all(w.done(r) for r in ("ph-000", "ph-001", "ph-002")) and not w.done("ph-003")
    path = root / "volumes" / "ph-001.nii"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not w.done("ph-001") and not Cohort(root).verify("ph-001")
    (root / "volumes" / "ph-002.nii").unlink()
    assert not w.done("ph-002")


def test_label_maps_are_gzipped_even_when_volumes_are_not(tmp_root):
    root = tmp_root / "cohort"
    vols = _write_some(root, n=2, compress=False)
    c = Cohort(root)
    for rid, hu in vols.items():
        assert c.row(rid)["path"].endswith(".nii") and c.row(rid)["label_path"].endswith("_label.nii.gz")
        np.testing.assert_array_equal(c.read_label(rid), (hu > 0).astype(np.uint8))
    assert not list((root / "volumes").glob("*_label.nii"))


def test_link_reuses_the_source_file_and_survives_it(tmp_root):
    """An unchanged scan of a derived cohort is a hard link to the source's file, not a copy: same bytes, same
    inode, its own row; deleting it or the source's file leaves the other intact."""
    vols = _write_some(tmp_root / "cohort", n=3, compress=False)
    src = Cohort(tmp_root / "cohort")
    with CohortWriter(tmp_root / "derived", compress=False) as w:
        row = w.link("ph-001", src, debias_action="none", source_id="ph-001")
        w.link("ph-002", src, debias_action="none", source_id="ph-002")
    d = Cohort(tmp_root / "derived")
    got, _ = d.read("ph-001")
    np.testing.assert_array_equal(got, vols["ph-001"])
    np.testing.assert_array_equal(d.read_label("ph-001"), src.read_label("ph-001"))
    assert d.path("ph-001").stat().st_ino == src.path("ph-001").stat().st_ino        # linked, not copied
    assert row["debias_action"] == "none" and row["split"] == src.row("ph-001")["split"] and d.verify("ph-001")
    assert d.row("ph-001")["nodules"] == src.row("ph-001")["nodules"]
    assert d.row("ph-001")["extra_col"] == src.row("ph-001")["extra_col"]                # extra columns kept
    with CohortWriter(tmp_root / "derived", compress=False) as w:
        assert w.done("ph-001")                                                      # a rerun skips it
        w.remove("ph-002")
    assert src.verify("ph-002")                                                      # the source's file stays
    src.path("ph-001").unlink()
    got, _ = Cohort(tmp_root / "derived").read("ph-001")                             # ... and the link outlives it
    np.testing.assert_array_equal(got, vols["ph-001"])


def test_link_copies_where_the_file_system_cannot_link(tmp_root, monkeypatch):
    def no_links(*_):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    vols = _write_some(tmp_root / "cohort", n=2)
    src = Cohort(tmp_root / "cohort")
    monkeypatch.setattr(os, "link", no_links)
    with CohortWriter(tmp_root / "derived") as w:
        w.link("ph-000", src)
    d = Cohort(tmp_root / "derived")
    assert d.path("ph-000").stat().st_ino != src.path("ph-000").stat().st_ino
    np.testing.assert_array_equal(d.read("ph-000")[0], vols["ph-000"])
    assert not list((tmp_root / "derived" / "volumes").glob(".*part*"))


def test_unflushed_rows_are_not_trusted(tmp_root):
    """A crash after a file was written but before the manifest was: the file is redone, never half-trusted."""
    root = tmp_root / "cohort"
    w = CohortWriter(root, flush_every=100)
    w.write("a", np.zeros((4, 4, 4)), (1, 1, 1))
    w.flush()
    w.write("b", np.zeros((4, 4, 4)), (1, 1, 1))  # no flush: "crash"
    w2 = CohortWriter(root)
    assert w2.done("a") and not w2.done("b")


def test_bad_manifests_are_rejected(tmp_root):
    root = tmp_root / "c"
    root.mkdir()
    with pytest.raises(InputFileError, match="manifest not found"):
        Cohort(root)
    (root / "manifest.csv").write_text("id,source\na,phantom\n")
    with pytest.raises(InputFileError, match="missing columns: domain, split") as err:
        Cohort(root)
    assert err.value.path.endswith("manifest.csv")
    with pytest.raises(InputFileError, match="missing columns"):
        CohortWriter(root)  # a writer never resumes from (or overwrites) a broken manifest
    root = tmp_root / "c2"
    _write_some(root, n=2)
    text = (root / "manifest.csv").read_text().splitlines()
    (root / "manifest.csv").write_text("\n".join(text + [text[1]]) + "\n")
    with pytest.raises(InputFileError, match="duplicate ids in column 'id': ph-000"):
        Cohort(root)


def test_bad_ids_refused(tmp_root):
    w = CohortWriter(tmp_root / "c")
    with pytest.raises(CTSGANError, match="invalid cohort id"):
        w.write("../escape", np.zeros((4, 4, 4)), (1, 1, 1))


# ---------------------------------------------------------------------------------------------------------------
# build_cohort: phantom source at a tiny size
# ---------------------------------------------------------------------------------------------------------------
def _tiny_cfg():
    return load_profile("smoke", **{"data.n_patients": 8, "data.phantom_size": 48, "data.phantom_spacing_mm": 7.0,
                                    "data.workers": 1})


def test_build_phantom_cohort_is_stratified_and_idempotent(tmp_root):
    cfg = _tiny_cfg()
    out = build_cohort(cfg, source="phantom", progress=False)
    assert out == cfg.data_dir / "cohort"
    c = Cohort(out)
    m = c.manifest
    assert len(c) == 8
    assert set(m["domain"]) == {"nlst-like", "lidc-like"} and (m["source"] == "phantom").all()
    assert (m.loc[m["domain"] == "nlst-like", "has_nodule"] == 0).all()
    assert m.loc[m["domain"] == "lidc-like", "has_nodule"].sum() >= 1
    assert m["split"].value_counts().to_dict() == {"train": 6, "val": 1, "test": 1}
    hu, spacing = c.read(c.ids()[0])
    assert hu.shape == (cfg.data.size,) * 3 and hu.min() >= cfg.data.hu_min and hu.max() <= cfg.data.hu_max
    label = c.read_label(c.ids()[0])
    assert label is not None and label.shape == hu.shape and label.max() > 3
    for rid in c.ids(has_nodule=1):
        for nod in c.row(rid)["nodules"]:
            z, y, x = (int(round(v)) for v in nod["center_vox"])
            assert 0 <= z < cfg.data.size and nod["diameter_vox"] > 0
            assert nod["action"] == "original"

    # rerun: nothing is rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()}
    manifest_before = (out / "manifest.csv").read_text()
    build_cohort(cfg, source="phantom", progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()} == stamps
    assert (out / "manifest.csv").read_text() == manifest_before

    # a corrupted volume is rebuilt identically (same seed), the others are left alone
    victim = out / c.row(c.ids()[2])["path"]
    victim.write_bytes(b"garbage")
    build_cohort(cfg, source="phantom", progress=False)
    assert Cohort(out).verify(c.ids()[2])
    assert (out / "manifest.csv").read_text() == manifest_before
    assert victim.stat().st_mtime_ns != stamps[victim.name]
    others = {n: t for n, t in stamps.items() if not n.startswith(c.ids()[2])}  # its label file is redone too
    assert {p.name: p.stat().st_mtime_ns for p in (out / "volumes").iterdir() if p.name in others} == others

    # other settings (a different cube size) rebuild everything rather than mixing grids
    cfg2 = load_profile("smoke", **{"data.n_patients": 8, "data.phantom_size": 48, "data.phantom_spacing_mm": 7.0,
                                    "data.workers": 1, "data.size": 16})
    build_cohort(cfg2, source="phantom", progress=False)
    assert Cohort(out).read(c.ids()[0])[0].shape == (16, 16, 16)
    assert json.loads((out / "cohort.json").read_text())["size"] == 16
    cfg3 = load_profile("smoke", **{"data.n_patients": 4, "data.phantom_size": 48, "data.phantom_spacing_mm": 7.0,
                                    "data.workers": 1, "data.size": 16})
    build_cohort(cfg3, source="phantom", progress=False)  # fewer patients: the others' files are removed
    c3 = Cohort(out)
    assert len(c3) == 4 and len(list((out / "volumes").iterdir())) == 8
    assert c3.manifest["domain"].tolist() == ["nlst-like", "nlst-like", "lidc-like", "lidc-like"]


def test_unknown_source_and_missing_input(tmp_root):
    cfg = _tiny_cfg()
    with pytest.raises(CTSGANError, match="unknown source"):
        build_cohort(cfg, source="mri")
    with pytest.raises(CTSGANError, match="needs an input folder"):
        build_cohort(cfg, source="dicom")
    with pytest.raises(InputFileError, match="input folder not found"):
        build_cohort(cfg, source="nifti", in_dir=tmp_root / "absent")
    assert not (cfg.data_dir / "cohort").exists()
