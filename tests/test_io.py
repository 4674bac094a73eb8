"""Real DICOM / NIfTI files written with pydicom / nibabel and read back by ctsgan_lib.data.io."""
from __future__ import annotations

import os
import random
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ctsgan_lib.data.io import (nifti_affine, read_dicom_series, read_nifti, read_volume, write_dicom_series,
                                write_nifti)
from ctsgan_lib.errors import InputFileError

SPACING = (2.5, 0.7, 0.8)  # (dz, dy, dx): all different so an axis mix-up cannot pass


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 1500, size=(7, 9, 11)).astype(np.float32)
    hu[0, 0, 0] = -1000  # an asymmetric marker: flips would move it
    hu[6, 8, 10] = 1200
    return hu


@pytest.fixture
def series(tmp_path, volume):
    return write_dicom_series(tmp_path / "series", volume, SPACING, series_description="io test",
                              origin_mm=(-40.0, 12.5, 100.0))


def _edit_all(folder, fn):
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        fn(ds, f)
        ds.save_as(f)


def _slices_by_z(folder):
    return sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


def test_dicom_shuffled_file_order_reads_back_identically(series, volume):
    files = sorted(series.iterdir())
    names = [f"{random.Random(1).random():.6f}_{i}.dcm" for i in range(len(files))]
    random.Random(3).shuffle(names)
    for f, n in zip(files, names):
        os.rename(f, series / n)
    # InstanceNumber lies too: only ImagePositionPatient may decide the order
    _edit_all(series, lambda ds, f: setattr(ds, "InstanceNumber", random.Random(f.name).randint(1, 99)))
    hu, spacing, meta = read_dicom_series(series)
    assert hu.dtype == np.float32 and hu.shape == volume.shape
    np.testing.assert_array_equal(hu, volume)
    assert spacing == pytest.approx(SPACING)
    assert meta["origin_mm"] == pytest.approx((-40.0, 12.5, 100.0))


def test_dicom_rescale_slope_intercept_gives_hu(series, volume):
    def to_unsigned(ds, f):  # store as pixel = HU + 1024 with intercept -1024, like many scanners
        arr = ds.pixel_array.astype(np.int32) + 1024
        ds.PixelRepresentation = 0
        ds.PixelData = arr.astype(np.uint16).tobytes()
        ds.RescaleIntercept = -1024
    _edit_all(series, to_unsigned)
    hu, _, _ = read_dicom_series(series)
    np.testing.assert_array_equal(hu, volume)


def test_dicom_flipped_orientation_is_reoriented(series, volume):
    """A series stored with rows/columns reversed (IOP -1,0,0,0,-1,0) lands on the same (z, y, x) grid."""
    nz, ny, nx = volume.shape
    dz, dy, dx = SPACING

    def flip(ds, f):
        arr = ds.pixel_array[::-1, ::-1].copy()
        ds.PixelData = arr.tobytes()
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + (nx - 1) * dx, y + (ny - 1) * dy, z]
    _edit_all(series, flip)
    hu, spacing, meta = read_dicom_series(series)
    np.testing.assert_array_equal(hu, volume)
    assert meta["origin_mm"] == pytest.approx((-40.0, 12.5, 100.0))


def test_dicom_writer_is_anonymous_and_derived(series):
    ds = pydicom.dcmread(next(series.iterdir()))
    assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert str(ds.PatientName) == "ANONYMOUS" and ds.BurnedInAnnotation == "NO"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([SPACING[1], SPACING[2]])
    assert float(ds.SliceThickness) == pytest.approx(SPACING[0])
    for tag in ("PatientBirthDate", "InstitutionName", "OperatorsName", "StudyDate"):
        assert not str(getattr(ds, tag, ""))


def test_nifti_roundtrip_and_header(tmp_path, volume):
    p = write_nifti(tmp_path / "v.nii.gz", volume, SPACING, origin_mm=(-40.0, 12.5, 100.0))
    img = nib.load(str(p))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.get_data_dtype() == np.int16
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"ctsgan_lib synthetic/derived"
    hu, spacing, affine = read_nifti(p)
    np.testing.assert_array_equal(hu, volume)
    assert spacing == pytest.approx(SPACING)
    _, _, info = read_volume(p)
    assert info["origin_mm"] == pytest.approx((-40.0, 12.5, 100.0))


@pytest.mark.parametrize("kind", ["flip_x", "flip_yz", "permuted"])
def test_nifti_with_noncanonical_affine_reads_back_canonical(tmp_path, volume, kind):
    aff = nifti_affine(volume.shape, SPACING)
    ras = volume[:, ::-1, ::-1].transpose(2, 1, 0)  # what write_nifti stores: (i → R, j → A, k → S)
    data, a = ras.copy(), aff.copy()
    flips = {"flip_x": [0], "flip_yz": [1, 2], "permuted": []}[kind]
    for ax in flips:  # same world positions, stored reversed along ax
        data = np.flip(data, axis=ax)
        a[:3, 3] += a[:3, ax] * (data.shape[ax] - 1)
        a[:3, ax] *= -1
    if kind == "permuted":  # store as (k, i, j)
        data = data.transpose(2, 0, 1)
        a[:3, :3] = a[:3, [2, 0, 1]]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data).astype(np.int16), a), str(tmp_path / "x.nii.gz"))
    assert nib.aff2axcodes(nib.load(str(tmp_path / "x.nii.gz")).affine) != ("R", "A", "S") or kind == "permuted"
    hu, spacing, affine = read_nifti(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(hu, volume)
    assert spacing == pytest.approx(SPACING)
    np.testing.assert_allclose(affine, aff, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# bad input: every case names the file/folder and the problem
# ---------------------------------------------------------------------------------------------------------------
def _modality(series):
    f = _slices_by_z(series)[3]
    ds = pydicom.dcmread(f)
    ds.Modality = "MR"
    ds.save_as(f)
    return f, "not CT"


def _mixed(series, tmp_path, volume):
    other = write_dicom_series(tmp_path / "other", volume[:2], SPACING, series_description="other",
                               origin_mm=(-40.0, 12.5, 300.0))
    for f in other.iterdir():
        shutil.move(str(f), series / f"other_{f.name}")
    return series, "mixed series"


def _non_dicom(series):
    f = series / "notes.bin"
    f.write_bytes(b"hello, this is not a slice" * 10)
    return f, "not a DICOM file"


def _truncated(series):
    f = _slices_by_z(series)[2]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 60])
    return f, "truncated"


def _gap(series):
    _slices_by_z(series)[3].unlink()
    return series, "missing slice"


def _duplicate(series):
    f = _slices_by_z(series)[3]
    ds = pydicom.dcmread(f)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(series / "copy.dcm")
    return series, "duplicated slice position"


def _nonuniform(series):
    f = _slices_by_z(series)[3]
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                               float(ds.ImagePositionPatient[2]) + 0.9]
    ds.save_as(f)
    return series, "non-uniform slice spacing"


def _oblique(series):
    c, s = np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10))
    _edit_all(series, lambda ds, f: setattr(ds, "ImageOrientationPatient", [c, s, 0, -s, c, 0]))
    return series / sorted(p.name for p in series.iterdir())[0], "oblique"


def _tilted(series):
    def tilt(ds, f):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * (z - 100.0), z]
    _edit_all(series, tilt)
    return series, "tilted gantry"


def _single(series):
    for f in _slices_by_z(series)[1:]:
        f.unlink()
    return series, "only one slice"


def _empty(series):
    for f in series.iterdir():
        f.unlink()
    return series, "empty folder"


def _enormous(series):
    def huge(ds, f):
        ds.Rows = ds.Columns = 60000
    _edit_all(series, huge)
    return series, "too large"


BAD_DICOM = {"modality": _modality, "non_dicom": _non_dicom, "truncated": _truncated, "gap": _gap,
             "duplicate": _duplicate, "nonuniform": _nonuniform, "oblique": _oblique, "tilted": _tilted,
             "single": _single, "empty": _empty, "enormous": _enormous}


@pytest.mark.parametrize("case", sorted(BAD_DICOM))
def test_bad_dicom_is_rejected_naming_file_and_problem(series, case):
    path, problem = BAD_DICOM[case](series)
    with pytest.raises(InputFileError) as err:
        read_dicom_series(series)
    assert err.value.path == str(path)
    assert problem in err.value.problem
    assert "\n" not in str(err.value)


def test_mixed_series_rejected(series, tmp_path, volume):
    path, problem = _mixed(series, tmp_path, volume)
    with pytest.raises(InputFileError, match=problem) as err:
        read_dicom_series(series)
    assert err.value.path == str(path)


def test_missing_folder_rejected(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        read_dicom_series(tmp_path / "nope")


def test_bad_nifti_rejected(tmp_path, volume):
    aff = nifti_affine(volume.shape, SPACING)
    nan = volume.copy()
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, aff), str(tmp_path / "nan.nii"))
    with pytest.raises(InputFileError, match="NaN or Inf") as err:
        read_nifti(tmp_path / "nan.nii")
    assert err.value.path == str(tmp_path / "nan.nii")

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), aff), str(tmp_path / "4d.nii.gz"))
    with pytest.raises(InputFileError, match="4D"):
        read_nifti(tmp_path / "4d.nii.gz")

    flat = aff.copy()
    flat[2, 2] = 0.0
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), None)
    img.set_sform(flat, code=1)  # nibabel refuses a singular qform, so only the sform carries it
    img.set_qform(None, code=0)
    nib.save(img, str(tmp_path / "det0.nii.gz"))
    with pytest.raises(InputFileError, match="zero determinant"):
        read_nifti(tmp_path / "det0.nii.gz")

    # a header declaring 5000³ voxels over a few bytes of data: refused before any allocation
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((5000, 5000, 5000))
    hdr.set_qform(aff, code=1)
    with open(tmp_path / "huge.nii", "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * (int(hdr["vox_offset"]) - fh.tell() + 64))
    with pytest.raises(InputFileError, match="too large"):
        read_nifti(tmp_path / "huge.nii")

    (tmp_path / "junk.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputFileError, match="not a readable NIfTI"):
        read_nifti(tmp_path / "junk.nii.gz")


def test_writers_leave_no_partial_output(tmp_path, volume):
    with pytest.raises(ValueError):
        write_nifti(tmp_path / "bad.nii.gz", volume[0], SPACING)
    with pytest.raises(ValueError):
        write_dicom_series(tmp_path / "bad", volume[0], SPACING, series_description="x")
    assert list(tmp_path.iterdir()) == []


def test_dicom_export_carries_the_attributes_a_validator_requires(series):
    """pydicom-level checks, run everywhere: every value valid for its VR, and the Type 1C/2 attributes dciodvfy asks
    for present (issue 17). Type 2 may be empty; the dates stay empty on purpose (de-identification)."""
    from pydicom import config

    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE   # a value invalid for its VR raises while reading
    try:
        for f in sorted(series.iterdir()):
            ds = pydicom.dcmread(f)
            for elem in ds.iterall():
                elem.value  # noqa: B018  (decoding validates)
            assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
            (code,) = ds.DeidentificationMethodCodeSequence
            assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
            for type2 in ("KVP", "AcquisitionNumber", "PositionReferenceIndicator", "StudyDate", "StudyTime"):
                assert type2 in ds, type2
            assert ds.BodyPartExamined == "CHEST" and "Laterality" not in ds   # unpaired: Laterality not required
    finally:
        config.settings.reading_validation_mode = old


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian: apt-get install dicom3tools; .ci/run installs it)")
def test_dicom_export_passes_dciodvfy(series):
    import subprocess

    for f in sorted(series.iterdir()):
        res = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        report = res.stdout + res.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert res.returncode == 0 and not errors, f"{f.name}:\n{report}"
        assert "CTImage" in report                                   # it validated against the CT Image IOD
