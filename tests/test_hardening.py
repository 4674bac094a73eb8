"""The bad-input corpus, run through the user-facing entry points (the README's failure-mode table).

Every case must end in one line on stderr naming the file and the problem, exit code 2, no traceback and no partial
output. The corpus is generated here with pydicom / nibabel / torch; the loader-level variants live in test_io.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import assert_one_line_error as _assert_one_line

from ctsgan_lib.cli import main
from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort, CohortWriter
from ctsgan_lib.data.io import nifti_affine, write_dicom_series
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.models.ctsgan import build_ctsgan
from ctsgan_lib.utils.checkpoint import save_checkpoint
from killing import killed_at
from test_io import BAD_DICOM, SPACING, _mixed  # the loader-level corpus builders

VOLUME = np.random.default_rng(0).integers(-1000, 1000, size=(7, 9, 11)).astype(np.float32)


def _run(capsys, argv) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


# ----------------------------------------------------------------------------------------------- DICOM via convert
@pytest.mark.parametrize("case", sorted(BAD_DICOM) + ["interleaved"])
def test_convert_rejects_every_bad_dicom_series(case, tmp_path, capsys):
    series = write_dicom_series(tmp_path / "series", VOLUME, SPACING, series_description="corpus")
    path, problem = _mixed(series, tmp_path, VOLUME) if case == "interleaved" else BAD_DICOM[case](series)
    out = tmp_path / "out.nii.gz"
    rc, err = _run(capsys, ["convert", str(series), str(out)])
    _assert_one_line(rc, err, str(path), problem)
    assert not out.exists() and not list(tmp_path.glob(".*part*"))


# ----------------------------------------------------------------------------------------------- NIfTI via convert
def _nan(p):
    v = VOLUME.copy()
    v[1, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(v, nifti_affine(v.shape, SPACING)), str(p))
    return "NaN or Inf"


def _four_d(p):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), str(p))
    return "4D"


def _zero_det(p):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), None)
    aff = np.eye(4)
    aff[1, 1] = 0.0
    img.set_sform(aff, code=1)
    img.set_qform(None, code=0)
    nib.save(img, str(p))
    return "zero determinant"


def _enormous(p):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((4000, 4000, 4000))
    with open(p, "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * 512)
    return "too large"


def _two_d(p):
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), str(p))
    return "expected a 3D volume"


@pytest.mark.parametrize("make", [_nan, _four_d, _zero_det, _enormous, _two_d], ids=lambda f: f.__name__.strip("_"))
def test_convert_rejects_bad_nifti(make, tmp_path, capsys):
    src = tmp_path / "in.nii"
    problem = make(src)
    out = tmp_path / "out.nii.gz"
    rc, err = _run(capsys, ["convert", str(src), str(out)])
    _assert_one_line(rc, err, str(src), problem)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- manifests
def _cohort(root: Path, n: int = 2) -> Path:
    with CohortWriter(root, compress=False) as w:
        for i in range(n):
            w.write(f"p{i}", VOLUME + i, SPACING, source="phantom", domain="nlst-like", split="train")
    return root


def test_manifest_with_missing_columns_is_refused_by_fid(tmp_root, tmp_path, capsys):
    root = _cohort(tmp_path / "c")
    df = pd.read_csv(root / "manifest.csv").drop(columns=["checksum", "split"])
    df.to_csv(root / "manifest.csv", index=False)
    rc, err = _run(capsys, ["fid", str(root), str(root), "--profile", "smoke"])
    _assert_one_line(rc, err, str(root / "manifest.csv"), "missing columns", "checksum")


def test_unknown_id_and_missing_volume_are_named(tmp_path):
    root = _cohort(tmp_path / "c")
    c = Cohort(root)
    with pytest.raises(CTSGANError, match="p9"):
        c.row("p9")
    (root / c.row("p1")["path"]).unlink()
    with pytest.raises(CTSGANError, match="p1"):
        c.read("p1")


# ----------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def ckpt_cfg():
    return load_profile("smoke")


def test_generate_refuses_a_pickle_that_carries_code(tmp_path, capsys):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"kind": "ctsgan", "models": {}, "config": Payload()}, tmp_path / "evil.pt")
    out = tmp_path / "out"
    rc, err = _run(capsys, ["generate", "--checkpoint", str(tmp_path / "evil.pt"), "--n", "1", "--out", str(out),
                            "--inject-fraction", "0", "--device", "cpu"])
    _assert_one_line(rc, err, "evil.pt", "refused")
    assert not marker.exists() and not out.exists()


def test_generate_refuses_a_checkpoint_of_another_config(tmp_path, ckpt_cfg, capsys):
    gen = build_ctsgan(ckpt_cfg.data.size, ckpt_cfg.ctsgan)["generator"]
    stored = ckpt_cfg.to_dict()
    stored["ctsgan"]["ngf"] = ckpt_cfg.ctsgan.ngf * 2     # config says one width, weights have another
    save_checkpoint(tmp_path / "other.pt", kind="ctsgan", step=1, config=stored,
                    models={"rv": gen.rv, "gslice": gen.gslice})
    out = tmp_path / "out"
    rc, err = _run(capsys, ["generate", "--checkpoint", str(tmp_path / "other.pt"), "--n", "1", "--out", str(out),
                            "--inject-fraction", "0", "--device", "cpu"])
    _assert_one_line(rc, err, "other.pt", "does not match")
    assert not out.exists()


def test_generate_refuses_a_checkpoint_of_another_architecture(tmp_path, ckpt_cfg, capsys):
    save_checkpoint(tmp_path / "cls.pt", kind="classifier", step=1, config=ckpt_cfg.to_dict(),
                    models={"net": torch.nn.Linear(2, 2)})
    rc, err = _run(capsys, ["generate", "--checkpoint", str(tmp_path / "cls.pt"), "--n", "1",
                            "--out", str(tmp_path / "out"), "--inject-fraction", "0", "--device", "cpu"])
    _assert_one_line(rc, err, "cls.pt", "not a volume generator")


def test_fid_refuses_inception_weights_with_a_wrong_checksum(tmp_root, tmp_path, capsys):
    root = _cohort(tmp_path / "c", n=3)
    weights = tmp_path / "pt_inception.pth"
    torch.save({"w": torch.zeros(3)}, weights)
    (tmp_path / "pt_inception.pth.sha256").write_text("0" * 64 + "\n")
    rc, err = _run(capsys, ["fid", str(root), str(root), "--profile", "smoke", "--weights", str(weights)])
    _assert_one_line(rc, err, str(weights), "checksum mismatch")


# ----------------------------------------------------------------------------------------------- kill and resume
def test_cohort_build_killed_mid_run_resumes_to_the_same_cohort(tmp_path):
    """SIGKILL `ctsgan prepare` part-way, rerun it: same manifest as an uninterrupted build, no partial files."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--source", "phantom", "--profile", "smoke", "--no-progress", "--set", "data.n_patients=8",
            "--set", "data.workers=1"]

    def cmd(root):
        return [sys.executable, "-m", "ctsgan_lib.cli", "prepare", *args, "--out", str(root)]

    killed = tmp_path / "killed"
    killed_at("phantom-*.nii.gz", 5, cmd(killed)[1:], env)   # dies inside the 5th volume/label rename
    n_before = len(list((killed / "volumes").glob("phantom-????.nii.gz")))
    assert 0 < n_before < 8, "the kill should land mid-build"
    subprocess.run(cmd(killed), env=env, check=True, capture_output=True)
    subprocess.run(cmd(tmp_path / "clean"), env=env, check=True, capture_output=True)
    a = pd.read_csv(killed / "manifest.csv").sort_values("id").reset_index(drop=True)
    b = pd.read_csv(tmp_path / "clean" / "manifest.csv").sort_values("id").reset_index(drop=True)
    cols = ["id", "domain", "split", "has_nodule", "nodules", "checksum"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert not list(killed.rglob("*.part*"))


# ----------------------------------------------------------------------------------------------- identifier-free outputs
PHI = {"PatientName": "DOE^JOHN", "PatientID": "MRN-99812345", "PatientBirthDate": "19511203",
       "InstitutionName": "St Example General Hospital", "ReferringPhysicianName": "HOUSE^GREGORY",
       "AccessionNumber": "ACC7731902", "StudyDescription": "CHEST CT FOR JOHN DOE"}
IDENTIFYING_TAGS = ("PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers", "InstitutionName",
                    "InstitutionAddress", "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName",
                    "AccessionNumber", "OtherPatientIDs")


def _identified_series(folder: Path) -> Path:
    import pydicom

    series = write_dicom_series(folder, VOLUME, SPACING, series_description="source")
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        for tag, value in PHI.items():
            setattr(ds, tag, value)
        ds.save_as(f)
    return series


def _all_bytes(root: Path) -> bytes:
    import gzip

    out = b""
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        data = f.read_bytes()
        out += gzip.decompress(data) if f.name.endswith(".gz") else data
    return out


def test_exports_carry_no_identifying_text_from_the_source(tmp_root, tmp_path, capsys):
    import pydicom

    src = tmp_path / "in" / "case01"
    _identified_series(src)
    assert main(["convert", str(src), str(tmp_path / "conv" / "scan.nii.gz")]) == 0
    assert main(["prepare", "--source", "dicom", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "cohort"),
                 "--profile", "smoke", "--no-progress"]) == 0
    capsys.readouterr()
    for root in (tmp_path / "conv", tmp_path / "cohort"):
        blob = _all_bytes(root)
        leaked = [v for v in PHI.values() if v.encode() in blob or v.split("^")[0].encode() in blob]
        assert not leaked, f"{root}: identifying text from the source scan found: {leaked}"
    # DICOM export of a derived volume: anonymous, derived, none of the identifying tags
    hu, spacing = Cohort(tmp_path / "cohort").read(Cohort(tmp_path / "cohort").ids()[0])
    out = write_dicom_series(tmp_path / "export", hu, spacing, series_description="derived", patient_id="syn-000001")
    for f in out.iterdir():
        ds = pydicom.dcmread(f)
        assert str(ds.PatientName) == "ANONYMOUS" and ds.PatientID == "syn-000001"
        assert "DERIVED" in ds.ImageType
        assert all(not str(getattr(ds, t, "") or "") for t in IDENTIFYING_TAGS), [
            t for t in IDENTIFYING_TAGS if getattr(ds, t, "")]
