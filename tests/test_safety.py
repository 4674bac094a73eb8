"""Issue 24 (red-team findings) through the command line: no escapes, one writer per folder, no silent geometry or
HU changes, one-line errors.

Every case checks what the README's failure-mode table promises: exit 2, one line ``error: ...`` naming the file and
the problem, no traceback, nothing deleted or written outside the stage's folders, no partial output. Fixtures are
16³-32³ so the file stays fast.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from cli_checks import assert_one_line_error as _refused

from ctsgan_lib.cli import main
from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort, CohortWriter
from ctsgan_lib.data.io import nifti_affine, write_dicom_series, write_nifti
from ctsgan_lib.models.ctsgan import build_ctsgan
from ctsgan_lib.utils.checkpoint import save_checkpoint
from ctsgan_lib.utils.atomic import file_sha256

VOL = np.random.default_rng(1).integers(-1000, 1000, size=(6, 8, 10)).astype(np.float32)
SPACING = (2.0, 1.0, 1.0)
# the smallest phantom cohort `prepare` builds (16³ cubes from 32³ phantoms), one worker
TINY = ["--profile", "smoke", "--no-progress", "--set", "data.n_patients=2", "--set", "data.phantom_size=32",
        "--set", "data.size=16", "--set", "data.workers=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(capsys, argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


def _tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` with its SHA-256 (symlinks not followed)."""
    return {str(p.relative_to(root)): (file_sha256(p) if p.is_file() and not p.is_symlink() else "link")
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def _cli(*argv, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctsgan_lib.cli", *map(str, argv)], env=env or ENV,
                          capture_output=True, text=True, **kw)


@pytest.fixture
def cohort(tmp_path, capsys) -> Path:
    """A finished 2-patient phantom cohort written by `ctsgan prepare`."""
    out = tmp_path / "cohort"
    assert main(["prepare", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    return out


# ================================================================================= 1-7: data loss and escapes
def test_1_rerun_never_deletes_a_file_a_manifest_row_names_outside_the_cohort(cohort, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    df = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    for i, path in enumerate([str(victim), "../victim"]):
        extra = df.iloc[[0]].copy()
        extra["id"], extra["path"], extra["label_path"] = f"zz-{i}", path, path
        pd.concat([df, extra]).to_csv(cohort / "manifest.csv", index=False)
        rc, err = _run(capsys, ["prepare", *TINY, "--out", cohort])  # the rerun drops the row it does not want
        _refused(rc, err, "manifest.csv", f"row 'zz-{i}'", "inside")
        assert victim.read_text() == "precious"


def test_2_foreign_files_in_out_are_refused_and_never_deleted(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "volumes").mkdir(parents=True)
    (out / "volumes" / "my-scan.nii.gz").write_bytes(b"user data")
    (out / "notes.txt").write_text("user notes")
    before = _tree(out)
    rc, err = _run(capsys, ["prepare", *TINY, "--out", out])
    _refused(rc, err, str(out), "not written by `ctsgan prepare`", "--allow-foreign")
    assert _tree(out) == before
    # with the explicit flag the cohort is written beside them, and the prune after the build spares them
    assert main(["prepare", *TINY, "--out", str(out), "--allow-foreign"]) == 0
    assert (out / "volumes" / "my-scan.nii.gz").read_bytes() == b"user data"
    assert (out / "notes.txt").read_text() == "user notes"
    assert all(Cohort(out).verify(r) for r in Cohort(out).ids())


def test_2_a_volumes_symlink_out_of_the_folder_is_never_followed(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.nii.gz").write_bytes(b"user data")
    out = tmp_path / "c"
    out.mkdir()
    (out / "volumes").symlink_to(elsewhere, target_is_directory=True)
    rc, err = _run(capsys, ["prepare", *TINY, "--out", out, "--allow-foreign"])
    _refused(rc, err, "volumes", "symbolic link")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.nii.gz"]


def test_3_input_folder_as_output_is_refused(tmp_path, capsys):
    src = tmp_path / "scans"
    for i in range(2):
        write_nifti(src / f"s{i}.nii.gz", VOL + i, SPACING)
    before = _tree(src)
    for flags in ([], ["--allow-foreign"]):
        rc, err = _run(capsys, ["prepare", "--source", "nifti", "--in", src, "--out", src, "--profile", "smoke",
                                "--no-progress", *flags])
        _refused(rc, err, "overlap")
        assert _tree(src) == before and not list(src.glob(".*"))


def _ckpt(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = load_profile("smoke")
    gen = build_ctsgan(cfg.data.size, cfg.ctsgan)["generator"]
    save_checkpoint(path, kind="ctsgan", step=1, config=cfg.to_dict(), models={"rv": gen.rv, "gslice": gen.gslice},
                    extra={"spacing_mm": (6.0, 6.0, 6.0)})
    return path


def test_4_generate_into_a_real_cohort_is_refused(cohort, tmp_path, capsys):
    before = _tree(cohort)
    rc, err = _run(capsys, ["generate", "--checkpoint", _ckpt(tmp_path / "g.pt"), "--n", "1", "--out", cohort,
                            "--inject-fraction", "0", "--device", "cpu", "--batch", "1"])
    _refused(rc, err, str(cohort), "written by `ctsgan prepare`")
    assert _tree(cohort) == before


def test_5_a_manifest_path_leaving_the_cohort_is_not_read(tmp_path, capsys):
    root = tmp_path / "c"
    with CohortWriter(root, compress=False) as w:
        w.write("p0", np.zeros((32, 32, 32)), (1, 1, 1), source="phantom", domain="nlst-like", split="train",
                has_nodule=0)
    write_nifti(tmp_path / "outside.nii", np.zeros((32, 32, 32)), (1, 1, 1))
    df = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    df.loc[0, "path"] = "../outside.nii"
    df.to_csv(root / "manifest.csv", index=False)
    rc, err = _run(capsys, ["train", "ctsgan", "--cohort", root, "--out", tmp_path / "run", "--profile", "smoke",
                            "--set", "ctsgan.iterations=1", "--device", "cpu", "--no-progress"])
    _refused(rc, err, str(root / "manifest.csv"), "row 'p0'", "'../outside.nii'")
    # a symlink inside the cohort pointing out is refused once resolved
    df.loc[0, "path"] = "volumes/p0.nii"
    df.to_csv(root / "manifest.csv", index=False)
    (root / "volumes" / "p0.nii").unlink()
    (root / "volumes" / "p0.nii").symlink_to(tmp_path / "outside.nii")
    with pytest.raises(Exception, match="outside"):
        Cohort(root).read("p0")


def test_6_set_profile_cannot_name_a_path(tmp_root, tmp_path, capsys):
    target = tmp_path / "abs"
    rc, err = _run(capsys, ["prepare", *TINY, "--set", f"profile={target}"])
    _refused(rc, err, "profile:", "plain name")
    assert not target.exists() and not (tmp_root / "data").exists()


def test_7_label_maps_are_not_scans_and_out_inside_in_is_refused(tmp_path, capsys):
    ph = tmp_path / "ph"
    assert main(["phantoms", "--n", "2", "--size", "16", "--out", str(ph)]) == 0
    out = tmp_path / "c"
    assert main(["prepare", "--source", "nifti", "--in", str(ph), "--out", str(out), "--profile", "smoke",
                 "--no-progress", "--set", "data.size=16"]) == 0
    assert len(Cohort(out)) == 2  # not 4: the _label maps beside their scans are skipped
    capsys.readouterr()
    before = _tree(ph)
    rc, err = _run(capsys, ["prepare", "--source", "nifti", "--in", ph, "--out", ph / "cohort", "--profile", "smoke",
                            "--no-progress", "--set", "data.size=16"])
    _refused(rc, err, "overlap")
    assert _tree(ph) == before


# ================================================================================= 8: concurrency
def _wait_for(cond, timeout_s=120.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_8_two_prepares_on_one_folder_one_is_refused_and_the_cohort_verifies(tmp_path):
    out = tmp_path / "c"
    base = ["--profile", "smoke", "--no-progress", "--set", "data.n_patients=6", "--set", "data.phantom_size=32",
            "--set", "data.workers=1"]
    cmd = [sys.executable, "-m", "ctsgan_lib.cli", "prepare", *base, "--out", str(out)]
    first = subprocess.Popen([*cmd, "--set", "data.size=32"], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "volumes").is_dir())
    second = subprocess.run([*cmd, "--set", "data.size=16"], env=ENV, capture_output=True, text=True)
    first_err = first.communicate(timeout=600)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    err = second.stderr.strip()
    assert len(err.splitlines()) == 1 and "in use by pid" in err and str(first.pid) in err, err
    c = Cohort(out)
    settings = json.loads((out / "cohort.json").read_text())
    assert settings["size"] == 32 and len(c) == 6
    assert all(c.verify(r) and tuple(c.row(r)["shape"]) == (32, 32, 32) for r in c.ids())


def test_8_two_phantoms_runs_on_one_folder(tmp_path):
    out = tmp_path / "ph"
    first = subprocess.Popen([sys.executable, "-m", "ctsgan_lib.cli", "phantoms", "--n", "4", "--size", "48",
                              "--out", str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / ".ctsgan.lock.json").is_file())
    second = _cli("phantoms", "--n", "2", "--size", "16", "--out", out)
    first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 2, second.stderr
    assert "in use by pid" in second.stderr and "Traceback" not in second.stderr
    m = pd.read_csv(out / "manifest.csv")
    assert len(m) == 4 and all(json.loads(s) == [48, 48, 48] for s in m["shape"])
    assert all(nib.load(out / p).shape == (48, 48, 48) for p in m["path"])


def test_8_the_lock_of_a_killed_writer_is_taken_over(tmp_path, capsys):
    out = tmp_path / "c"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ctsgan_lib.utils.lock import folder_lock\n"
                               "with folder_lock(sys.argv[1], 'prepare'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)\n", str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    rc, err = _run(capsys, ["prepare", *TINY, "--out", out])
    _refused(rc, err, str(out), f"in use by pid {holder.pid}")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    rc, err = _run(capsys, ["prepare", *TINY, "--out", out])  # the dead holder's lock is free again
    assert rc == 0, err
    assert json.loads((out / ".ctsgan.lock.json").read_text())["pid"] == os.getpid()
    assert all(Cohort(out).verify(r) for r in Cohort(out).ids())


def test_8_generate_refuses_a_locked_shard_folder(tmp_path, capsys):
    out = tmp_path / "syn"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ctsgan_lib.utils.lock import folder_lock\n"
                               "with folder_lock(sys.argv[1], 'generate'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)\n", str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err = _run(capsys, ["generate", "--checkpoint", _ckpt(tmp_path / "g.pt"), "--n", "1", "--out", out,
                                "--inject-fraction", "0", "--device", "cpu", "--batch", "1"])
        _refused(rc, err, str(out), f"in use by pid {holder.pid}", "`ctsgan generate`")
        assert not (out / "manifest.csv").exists()
    finally:
        holder.kill()
        holder.wait()


# ================================================================================= 9-12: silent wrong data
def _nifti(path: Path, data, affine=None, **hdr) -> Path:
    img = nib.Nifti1Image(data, nifti_affine(data.shape[::-1], SPACING) if affine is None else affine)
    for k, v in hdr.items():
        img.header[k] = v
    nib.save(img, str(path))
    return path


def _convert(capsys, tmp_path, src) -> tuple[int, str]:
    rc, err = _run(capsys, ["convert", src, tmp_path / "out.nii.gz"])
    if rc == 2:
        assert not (tmp_path / "out.nii.gz").exists() and not list(tmp_path.glob(".*part*"))
    return rc, err


@pytest.mark.parametrize("kind", ["sheared", "oblique"])
def test_9_sheared_or_oblique_nifti_is_refused(kind, tmp_path, capsys):
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    if kind == "sheared":
        aff[0, 1] = 0.4
    else:
        c, s = np.cos(0.3), np.sin(0.3)
        aff[:2, :2] = [[c, -s], [s, c]]
    src = _nifti(tmp_path / "in.nii", np.zeros((10, 8, 6), np.int16), aff)
    _refused(*_convert(capsys, tmp_path, src), str(src), "oblique or sheared", "resample")


def _dicom_edit(series: Path, **tags) -> Path:
    files = sorted(series.iterdir())
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(f)
    return files[0]


@pytest.mark.parametrize("tags, problem", [
    ({"PixelSpacing": [-1.0, 1.0]}, "spacing must be positive"),
    ({"PixelSpacing": [0.0, 1.0]}, "spacing must be positive"),
    ({"RescaleSlope": 0}, "RescaleSlope 0"),
    ({"ImagePositionPatient": [float("nan"), 0.0, 0.0]}, "finite numbers"),
], ids=["negative-spacing", "zero-spacing", "slope-0", "nan-position"])
def test_9_13_dicom_geometry_and_rescale_refused(tags, problem, tmp_path, capsys):
    series = write_dicom_series(tmp_path / "s", VOL, SPACING, series_description="t")
    first = _dicom_edit(series, **tags)
    rc, err = _convert(capsys, tmp_path, series)
    _refused(rc, err, problem)
    assert first.name in err or str(series) in err


def test_10_hu_beyond_int16_is_refused_not_clipped(tmp_path, capsys):
    # NIfTI: int16 x scl_slope 10
    src = _nifti(tmp_path / "big.nii", np.full((6, 8, 10), 30000, np.int16), scl_slope=10.0, scl_inter=0.0)
    _refused(*_convert(capsys, tmp_path, src), str(src), "exceeds the int16 range", "refusing to clip")
    # DICOM: unsigned 16-bit 65000 with intercept 0
    series = write_dicom_series(tmp_path / "s", VOL, SPACING, series_description="t")
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f)
        ds.PixelRepresentation = 0
        ds.PixelData = np.full((8, 10), 65000, np.uint16).tobytes()
        ds.RescaleIntercept = 0
        ds.save_as(f)
    _refused(*_convert(capsys, tmp_path, series), "exceeds the int16 range", "RescaleSlope 1")


def _jpeg_ls_series(folder: Path, n: int = 3) -> tuple[Path, np.ndarray]:
    """A CT series of JPEG-LS lossless slices built from pydicom's bundled test file."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    folder.mkdir(parents=True)
    series, frame = generate_uid(), generate_uid()
    for k in range(n):
        ds = src.copy()
        ds.Modality = "CT"
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.save_as(folder / f"{k:03d}.dcm")
    return folder, src.pixel_array.astype(np.float32) - 1024


def test_11_jpeg_ls_series_decodes(tmp_path, capsys):
    from ctsgan_lib.data.io import read_nifti

    series, slice0 = _jpeg_ls_series(tmp_path / "jls")
    rc, err = _convert(capsys, tmp_path, series)
    assert rc == 0, err
    hu, _, _ = read_nifti(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(hu[0], slice0)
    # JPEG Lossless (process 14) decodes too: pydicom's bundled example is a colour image
    from pydicom.data import get_testdata_file

    assert pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_gdcm.dcm")).pixel_array.shape == (100, 100, 3)
    j2k = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))  # and JPEG 2000 (openjpeg)
    assert j2k.pixel_array.shape == (j2k.Rows, j2k.Columns)


def test_11_missing_decoder_is_named(tmp_path):
    series, _ = _jpeg_ls_series(tmp_path / "jls")
    hide = ("import sys\nfor m in ('libjpeg', 'openjpeg', 'pylibjpeg', 'jpeg_ls', 'gdcm'):\n    sys.modules[m] = None\n"
            "from ctsgan_lib.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", hide, "convert", str(series), str(tmp_path / "o.nii.gz")], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "no decoder" in err and "JPEG-LS" in err and "pylibjpeg" in err, err


def test_11_rgb_and_complex_nifti_are_refused(tmp_path, capsys):
    rgb = np.zeros((6, 8, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    src = _nifti(tmp_path / "rgb.nii", rgb)
    _refused(*_convert(capsys, tmp_path, src), str(src), "RGB")
    src = _nifti(tmp_path / "cplx.nii", np.ones((6, 8, 10), np.complex64))
    _refused(*_convert(capsys, tmp_path, src), str(src), "complex")


def test_11_rgb_dicom_is_refused(tmp_path, capsys):
    series = write_dicom_series(tmp_path / "s", VOL, SPACING, series_description="t")
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.zeros((8, 10, 3), np.uint8).tobytes()
        ds.save_as(f)
    _refused(*_convert(capsys, tmp_path, series), "colour image")


def test_12_small_gz_declaring_1000_cubed_is_refused_before_decompressing(tmp_path, capsys):
    import gzip
    import tracemalloc

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((1000, 1000, 1000))
    src = tmp_path / "bomb.nii.gz"
    with gzip.open(src, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 4096)
    tracemalloc.start()
    try:
        rc, err = _convert(capsys, tmp_path, src)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _refused(rc, err, str(src), "truncated", "header declares")
    assert peak < 64 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB allocated for a 4 KiB file"


# ================================================================================= 13: one line, never a traceback
_real_fsync = os.fsync


def _enospc_on_volumes(fd):
    """The disk fills up while a volume is written: fsync of a ``.nii*`` file fails, other files go through."""
    if ".nii" in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, "No space left on device")
    return _real_fsync(fd)


@pytest.mark.parametrize("stage", ["phantoms", "prepare", "convert"])
def test_13_a_full_disk_is_one_line_and_leaves_no_partial_file(stage, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = {"phantoms": ["phantoms", "--n", "1", "--size", "16", "--out", out],
            "prepare": ["prepare", *TINY, "--out", out],
            "convert": ["convert", write_dicom_series(tmp_path / "s", VOL, SPACING, series_description="t"),
                        out / "x.nii.gz"]}[stage]
    monkeypatch.setattr(os, "fsync", _enospc_on_volumes)  # every atomic write fsyncs before its rename
    rc, err = _run(capsys, argv)
    _refused(rc, err, "No space left on device")
    assert not list(tmp_path.rglob("*.part*"))
    assert not out.exists() or not list(out.rglob("*.nii*"))  # no volume under its final name


def test_13_a_real_full_disk(tmp_path, capsys):
    """The same on a 1 MiB tmpfs (root only): `phantoms` runs out of space part-way."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs; the monkeypatched variant above runs everywhere")
    try:
        rc, err = _run(capsys, ["phantoms", "--n", "40", "--size", "64", "--out", mnt / "ph"])
        _refused(rc, err, "No space left on device")
        assert not list(mnt.rglob("*.part*"))
        names = {p.name for p in (mnt / "ph").iterdir()}
        assert "manifest.csv" not in names  # the manifest comes last, after every volume
        for p in (mnt / "ph").glob("*.nii.gz"):
            assert nib.load(p).get_fdata().shape == (64, 64, 64)  # what is there is complete
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)  # lazy: a failed run may still hold a file


def _read_only(folder: Path):
    """Make ``folder`` read-only for this process: chmod for a normal user, a read-only bind mount for root."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
        return lambda: [p.chmod(0o755) for p in [folder, *folder.rglob("*")] if p.is_dir()]
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if r.returncode != 0:
        r = subprocess.run(["sh", "-c", f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}'"],
                           capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot make a read-only folder here (root without mount)")
    return lambda: subprocess.run(["umount", "-l", str(folder)], check=True)


def test_13_read_only_root_finished_cohort_and_new_write(tmp_root, capsys):
    assert main(["prepare", *TINY]) == 0
    capsys.readouterr()
    undo = _read_only(tmp_root)
    try:
        rc, err = _run(capsys, ["prepare", *TINY])        # finished: nothing to write, nothing fails
        assert rc == 0, err
        rc, err = _run(capsys, ["prepare", *TINY[:-2], "--set", "data.workers=1", "--set", "data.n_patients=3"])
        _refused(rc, err)
        assert "Read-only" in err or "Permission denied" in err, err
    finally:
        undo()


@pytest.mark.parametrize("key, value, allowed", [
    ("data.split_fractions", "[0.5, 0.5]", "summing to 1"),
    ("data.split_fractions", "[1.2, -0.1, -0.1]", "in [0, 1]"),
    ("data.phantom_size", "0", ">= 1"),
    ("seed", "-1", ">= 0"),
    ("ctsgan.batch", "0", ">= 1"),
    ("ctsgan.lr_g", "-1", "> 0"),
    ("ctsgan.ngf", "0", ">= 1"),
    ("ctsgan.iterations", "-1", ">= 1"),
    ("data.lidc_fraction", "2", "in [0, 1]"),
    ("data.n_patients", "0", ">= 1"),
    ("ctsgan.loss", "hinge", "one of wgan-gp, js"),
])
def test_13_14_config_values_are_refused_before_anything_is_written(key, value, allowed, tmp_root, capsys):
    rc, err = _run(capsys, ["prepare", "--profile", "smoke", "--no-progress", "--set", f"{key}={value}"])
    _refused(rc, err, f"error: {key}: ", allowed)
    assert not (tmp_root / "data").exists()
    rc, err = _run(capsys, ["train", "ctsgan", "--profile", "smoke", "--set", f"{key}={value}", "--device", "cpu"])
    _refused(rc, err, f"{key}: ")
    assert not (tmp_root / "runs").exists()


@pytest.mark.parametrize("extra, problem", [
    (["--batch", "0"], "--batch"), (["--batch", "-1"], "--batch"), (["--merge", "-1"], "--merge"),
    (["--seed", "-1"], "--seed"), (["--n", "0"], "--n"), (["--inject-fraction", "2"], "--inject-fraction"),
])
def test_13_14_generate_arguments_are_refused_before_anything_is_written(extra, problem, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(capsys, ["generate", "--checkpoint", _ckpt(tmp_path / "g.pt"), "--n", "2", "--out", out,
                            "--inject-fraction", "0", "--device", "cpu", *extra])
    _refused(rc, err, problem)
    assert not out.exists()


def test_13_generate_out_is_a_file_and_cuda_without_gpu(tmp_path, capsys):
    ck = _ckpt(tmp_path / "g.pt")
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, err = _run(capsys, ["generate", "--checkpoint", ck, "--n", "1", "--out", afile, "--inject-fraction", "0",
                            "--device", "cpu"])
    _refused(rc, err, str(afile), "not a folder")
    if not torch.cuda.is_available():
        rc, err = _run(capsys, ["generate", "--checkpoint", ck, "--n", "1", "--out", tmp_path / "o",
                                "--inject-fraction", "0", "--device", "cuda"])
        _refused(rc, err, "--device cuda", "no CUDA GPU")
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", ["text", "no-config"])
def test_13_non_checkpoint_files_are_refused(content, tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    if content == "text":
        ck.write_text("this is not a checkpoint\n")
    else:
        torch.save({"kind": "ctsgan", "models": {}, "step": 1}, ck)
    out = tmp_path / "o"
    rc, err = _run(capsys, ["generate", "--checkpoint", ck, "--n", "1", "--out", out, "--inject-fraction", "0",
                            "--device", "cpu"])
    _refused(rc, err, str(ck))
    assert not out.exists()


@pytest.mark.parametrize("extra, problem", [(["--spacing", "nan"], "--spacing"), (["--size", "3000"], "--size"),
                                            (["--spacing", "-2"], "--spacing")])
def test_13_phantoms_arguments(extra, problem, tmp_path, capsys):
    rc, err = _run(capsys, ["phantoms", "--n", "1", "--out", tmp_path / "o", *extra])
    _refused(rc, err, problem)
    assert not (tmp_path / "o").exists()


def test_13_convert_overwrite_onto_a_folder(tmp_path, capsys):
    series = write_dicom_series(tmp_path / "s", VOL, SPACING, series_description="t")
    target = tmp_path / "target.nii.gz"
    (target / "inside").mkdir(parents=True)
    (target / "inside" / "f").write_text("keep")
    rc, err = _run(capsys, ["convert", series, target, "--overwrite"])
    _refused(rc, err, str(target), "folder")
    assert (target / "inside" / "f").read_text() == "keep"


def test_13_c_locale_without_utf8_mode(tmp_path):
    env = {**ENV, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    env.pop("PYTHONIOENCODING")
    r = _cli("phantoms", "--n", "1", "--size", "16", "--out", tmp_path / "ph", env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "16" in r.stdout


# ================================================================================= 14: values accepted silently
def test_14_no_volume_is_generated_from_a_negative_batch_or_count(tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = _run(capsys, ["generate", "--checkpoint", _ckpt(tmp_path / "g.pt"), "--n", "-3", "--out", out,
                            "--inject-fraction", "0", "--device", "cpu"])
    _refused(rc, err, "--n")
    assert not out.exists()
