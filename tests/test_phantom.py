"""Phantom generator: HU per tissue, determinism, nodules, scanner domains, CLI (smoke sizes, a few seconds)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from ctsgan_lib.data import phantom as P

SIZE, SPACING = 64, 5.5


@pytest.fixture(scope="module")
def pair():
    """The same patient (same anatomy seed) seen by both scanner domains, without nodules."""
    return {d: P.render_phantom(P.sample_params(11, d, SIZE, SPACING, nodules=False)) for d in P.DOMAINS}


@pytest.fixture(scope="module")
def lidc_params():
    return P.sample_params(4, "lidc-like", SIZE, SPACING)


def _interior(ph, name):
    """Voxels of one tissue away from its boundary (partial volume and PSF excluded)."""
    return ndi.binary_erosion(ph.labels == P.LABELS[name])


def test_label_hu_statistics(pair):
    for ph in pair.values():
        med = {n: float(np.median(ph.hu[_interior(ph, n)])) for n in ("outside", "lung", "fat", "body", "bone")}
        assert med["outside"] < -980
        assert -900 < med["lung"] < -790
        assert -140 < med["fat"] < -70
        assert 25 < med["body"] < 65
        assert med["bone"] > 200
        assert ph.hu.dtype == np.float32 and ph.labels.dtype == np.uint8
        assert ph.hu.shape == ph.labels.shape == (SIZE,) * 3
        present = set(np.unique(ph.labels).tolist())
        assert {0, 1, 2, 3, 4, 5, 6, 8, 9} <= present        # every tissue except nodule (none requested)


def test_clean_tissue_values():
    hu, lab = P.render_clean(P.sample_params(3, "nlst-like", 48, 7.0))
    assert np.all(hu[lab == P.LABELS["table"]] <= P.HU_TABLE_SHELL)
    assert np.median(hu[lab == P.LABELS["heart"]]) == pytest.approx(P.HU_BLOOD, abs=1)
    assert np.median(hu[lab == P.LABELS["fat"]]) == pytest.approx(P.HU_FAT, abs=1)
    lung = hu[lab == P.LABELS["lung"]]
    assert -900 < np.median(lung) < -800 and lung.std() > 5          # gradient + texture, not a constant


@pytest.mark.portable
def test_deterministic(lidc_params):
    a = P.render_phantom(lidc_params)
    b = P.render_phantom(P.sample_params(4, "lidc-like", SIZE, SPACING))
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.nodules == b.nodules
    c = P.make_patient(5, "lidc-like", SIZE, SPACING)
    assert np.abs(c.hu - a.hu).mean() > 10                         # another seed is another patient


def test_params_roundtrip(lidc_params):
    d = json.loads(json.dumps(lidc_params.to_dict()))
    assert P.PhantomParams.from_dict(d) == lidc_params


def test_nodules_only_where_expected(lidc_params):
    assert P.sample_params(4, "nlst-like", SIZE, SPACING).nodules == []
    assert len(lidc_params.nodules) >= 1
    with_n = P.render_phantom(lidc_params)
    without = P.render_phantom(lidc_params, with_nodules=False)
    assert without.nodules == [] and len(with_n.nodules) == len(lidc_params.nodules)
    for n in with_n.nodules:
        assert set(n) == {"center_vox", "diameter_mm", "diameter_vox", "kind", "action"}
        assert n["kind"] in ("solid", "part-solid") and n["action"] == "original"
        assert n["diameter_vox"] == pytest.approx(n["diameter_mm"] / SPACING, rel=1e-3)
        c = np.round(n["center_vox"]).astype(int)
        assert without.labels[tuple(c)] in (P.LABELS["lung"], P.LABELS["vessel"])   # centre in the lung
    # same noise realisation: the volumes differ only near nodules (radius + PSF support)
    diff = np.abs(with_n.hu - without.hu) > 1e-3
    assert diff.any()
    zz, yy, xx = np.indices(diff.shape)
    near = np.zeros_like(diff)
    for n in with_n.nodules:
        c = n["center_vox"]
        d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        near |= d <= n["diameter_vox"] * 0.7 + 2 + 3 * 1.3 + 1
    assert not (diff & ~near).any()
    assert (with_n.labels == P.LABELS["nodule"]).any() or max(n["diameter_vox"] for n in with_n.nodules) < 1.5


def test_render_nodule_solid_and_part_solid():
    dens, mask = P.render_nodule((32, 32, 32), (16.2, 15.7, 16.0), 10.0, "solid", rng=1)
    assert dens.max() == pytest.approx(1.0) and dens.min() == 0.0
    vol_sphere = 4 / 3 * np.pi * 5 ** 3
    assert 0.6 * vol_sphere < mask.sum() < 1.5 * vol_sphere
    assert mask[16, 16, 16] and not mask[0, 0, 0]
    dens2, mask2 = P.render_nodule((32, 32, 32), (16, 16, 16), 10.0, "part-solid", rng=1)
    assert dens2[16, 16, 16] == pytest.approx(1.0)                   # solid core
    halo = dens2[mask2 & (dens2 < 0.9)]
    assert halo.size > 50 and 0.2 < np.median(halo) < 0.6            # ground glass around it
    hu = np.full((32, 32, 32), -860.0, np.float32)
    out = P.apply_nodule(hu, dens2)
    assert out[16, 16, 16] == pytest.approx(P.NODULE_HU) and -700 < np.median(out[mask2 & (dens2 < 0.9)]) < -300
    # a nodule partly outside the grid is cut, not an error
    d3, m3 = P.render_nodule((16, 16, 16), (0, 0, 0), 6.0)
    assert m3[0, 0, 0] and m3.sum() < mask.sum()


def test_vessels_touching_nodules_exist():
    touching = [n.touches_vessel for s in range(6) for n in P.sample_params(s, "lidc-like", SIZE, SPACING).nodules]
    assert any(touching) and not all(touching)


def test_default_nodule_distribution():
    dist = P.default_nodule_distribution()
    rng = np.random.default_rng(0)
    draws = [dist.sample(rng) for _ in range(300)]
    counts = np.array([len(d) for d in draws])
    diam = np.array([x for d in draws for x, _ in d])
    assert counts.min() >= 1 and np.mean(counts == 1) > 0.25 and counts.max() > 2 and counts.max() <= 10
    assert diam.min() >= 3.0 and diam.max() <= 30.0 and 4 < np.median(diam) < 12
    assert {k for d in draws for _, k in d} == {"solid", "part-solid"}


def _noise_region(ph):
    """Homogeneous soft tissue: the liver below the diaphragm, eroded."""
    m = ph.labels == P.LABELS["body"]
    m[ph.hu.shape[0] // 3:] = False
    return ndi.binary_erosion(m, iterations=2)


def _edge_rise(ph):
    """Mean skin-edge profile (air → fat) along x; returns the largest one-voxel rise over the total rise."""
    lab, hu = ph.labels, ph.hu
    prof = []
    for z in range(20, 44):
        for y in range(24, 40):
            row = np.flatnonzero(np.isin(lab[z, y], (1, 2)))
            if len(row) and row[0] >= 4:
                x0 = row[0]
                prof.append(hu[z, y, x0 - 4:x0 + 2])
    prof = np.mean(prof, axis=0)
    return np.max(np.diff(prof)) / (prof[-1] - prof[0])


def test_domains_differ_in_noise_texture_and_sharpness(pair):
    stats = {}
    for d, ph in pair.items():
        m = _noise_region(ph)
        assert m.sum() > 500
        resid = ph.hu - ndi.uniform_filter(ph.hu, 5)                # remove anatomy, keep noise
        r = np.where(m, resid, 0.0)
        lag1 = (r[:, :, 1:] * r[:, :, :-1])[m[:, :, 1:] & m[:, :, :-1]].mean() / (r[m] ** 2).mean()
        stats[d] = (ph.hu[m].std(), lag1, _edge_rise(ph))
    (sn, an, en), (sl, al, el) = stats["nlst-like"], stats["lidc-like"]
    assert sn > 1.4 * sl                       # low-dose screening is noisier
    assert al > an + 0.1                       # soft kernel: coarser (more correlated) grain
    assert an > -0.5 and al > 0                # correlated, not white and not alternating
    assert en > el + 0.08                      # sharp kernel: steeper edges


def test_correlated_noise_spectrum_peak():
    sc = P.ScannerParams(noise_sigma_hu=30.0, nps_peak_cyc=0.2, psf_sigma_vox=0.5, psf_z_sigma_vox=0.5,
                         noise_seed=1)
    n = P.correlated_noise((16, 64, 64), sc)
    assert n.std() == pytest.approx(30.0, rel=1e-3)
    nps = (np.abs(np.fft.fft2(n)) ** 2).mean(0)
    f = np.sqrt(np.fft.fftfreq(64)[:, None] ** 2 + np.fft.fftfreq(64)[None] ** 2)
    radial = [nps[(f >= a) & (f < a + 0.05)].mean() for a in np.arange(0, 0.5, 0.05)]
    assert 2 <= int(np.argmax(radial)) <= 5 and radial[0] < 0.5 * max(radial)   # ramp-shaped: low DC, peak ~0.2


def test_generate_many_parallel_matches_serial():
    serial = list(P.generate_many([1, 2], ["nlst-like", "lidc-like"], 32, 11.0, workers=1, progress=False))
    par = list(P.generate_many([1, 2], ["nlst-like", "lidc-like"], 32, 11.0, workers=2, progress=False))
    for a, b in zip(serial, par):
        np.testing.assert_array_equal(a.hu, b.hu)
        assert a.params.domain == b.params.domain


def test_cli_writes_readable_nifti(tmp_root):
    import nibabel as nib
    import pandas as pd

    from ctsgan_lib.cli import main
    from ctsgan_lib.data.io import read_nifti

    out = tmp_root / "ph"
    assert main(["phantoms", "--n", "2", "--size", "32", "--domain", "lidc-like", "--seed", "7",
                 "--out", str(out)]) == 0
    man = pd.read_csv(out / "manifest.csv")
    assert len(man) == 2 and set(man["domain"]) == {"lidc-like"} and man["has_nodule"].all()
    for _, row in man.iterrows():
        img = nib.load(out / row["path"])
        lab = nib.load(out / row["label_path"])
        assert img.shape == lab.shape == (32, 32, 32)
        np.testing.assert_allclose(img.header.get_zooms(), [11.0] * 3)
        np.testing.assert_allclose(img.affine, lab.affine)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        hu, sp, _ = read_nifti(out / row["path"])
        ref = P.make_patient(int(row["seed"]), "lidc-like", 32, 11.0)
        assert sp == pytest.approx((11.0, 11.0, 11.0))
        np.testing.assert_allclose(hu, np.clip(np.rint(ref.hu), -32768, 32767), atol=0.5)
        recorded = json.loads(row["nodules"])
        assert [{k: v for k, v in n.items() if k != "center_mm"} for n in recorded] == ref.nodules
    assert main(["phantoms", "--n", "1", "--domain", "ct-like", "--out", str(out)]) == 2


def _label_at_world_mm(img, center_mm) -> int:
    """The label nibabel reads at a world position (RAS+ mm): the inverse affine gives the voxel index."""
    ijk = np.linalg.inv(img.affine) @ np.array([*center_mm, 1.0])
    return int(np.asarray(img.dataobj)[tuple(int(round(v)) for v in ijk[:3])])


def test_center_mm_is_the_nodule_in_the_nifti_world_frame(tmp_root):
    """Issue 17: center_vox is our (z, y, x) array order; a nibabel/ITK user needs the NIfTI's world frame.

    Opened the way such a user would (nibabel, affine, no ctsgan_lib reader), the recorded centre holds a nodule
    voxel (label 7).
    """
    import nibabel as nib
    import pandas as pd

    from ctsgan_lib.cli import main

    assert P.LABELS["nodule"] == 7
    out = tmp_root / "ph"
    assert main(["phantoms", "--n", "2", "--size", "64", "--domain", "lidc-like", "--seed", "3",
                 "--out", str(out)]) == 0
    checked = 0
    for _, row in pd.read_csv(out / "manifest.csv").iterrows():
        lab = nib.load(out / row["label_path"])
        for n in json.loads(row["nodules"]):
            if n["diameter_vox"] < 2:      # sub-voxel nodules may not own their centre voxel after partial volume
                continue
            assert _label_at_world_mm(lab, n["center_mm"]) == 7, n
            checked += 1
    assert checked >= 2


def test_cohort_writer_records_center_mm_with_origin(tmp_path):
    """The cohort manifest (prepare, generate, debias all write through CohortWriter) with a non-zero origin."""
    import nibabel as nib

    from ctsgan_lib.data.cohort import Cohort, CohortWriter

    hu = np.full((10, 12, 14), -1000.0)
    label = np.zeros(hu.shape, np.uint8)
    label[2, 3, 9] = 7                                  # asymmetric in every axis: a flip would miss it
    w = CohortWriter(tmp_path / "c", compress=False)
    w.write("p0", hu, (2.0, 1.5, 0.5), label=label, origin_mm=(-30.0, 12.0, 100.0), split="train",
            source="phantom", domain="lidc-like", nodules=[{"center_vox": [2, 3, 9], "diameter_mm": 3.0}])
    w.close()
    c = Cohort(tmp_path / "c")
    (nod,) = c.row("p0")["nodules"]
    # LPS origin (-30, 12, 100) + (x 9 × 0.5, y 3 × 1.5, z 2 × 2) = LPS (-25.5, 16.5, 104) = RAS (25.5, -16.5, 104)
    assert nod["center_mm"] == pytest.approx([25.5, -16.5, 104.0])
    img = nib.load(tmp_path / "c" / c.row("p0")["label_path"])
    assert _label_at_world_mm(img, nod["center_mm"]) == 7
    data = np.asarray(img.dataobj)
    assert data[2, 3, 9] != 7 and data[9, 3, 2] != 7       # center_vox is not the file's (i, j, k)


def test_progress_bar_counts_the_last_patient_when_the_consumer_stops_with_it(capsys):
    """Issue 17: `prepare` zips its plan with this generator and stops after the last patient without resuming the
    generator, so a bar counted after `yield` ended at 23/24 although all 24 were written."""
    seeds = [0, 1]
    got = [ph for _, ph in zip(seeds, P.generate_many(seeds, "nlst-like", size=16, spacing_mm=22.0, progress=True))]
    assert len(got) == 2
    assert "2/2" in capsys.readouterr().err
