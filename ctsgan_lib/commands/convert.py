"""``ctsgan convert INPUT OUT.nii.gz``: a DICOM series folder or a NIfTI file → NIfTI in HU (like dcm2niix)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CTSGANError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="DICOM series folder or NIfTI → NIfTI in HU (canonical, no resampling)",
                       description="Read a CT DICOM series (one folder, slices ordered by ImagePositionPatient) or a "
                                   "NIfTI file and write a NIfTI in HU (int16) with the exact voxel spacing, "
                                   "RAS+ canonical orientation and the scanner's world position. No resampling.")
    p.add_argument("input", help="DICOM series folder, or a .nii / .nii.gz file")
    p.add_argument("output", help="output .nii or .nii.gz")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.io import read_volume, write_nifti

    out = Path(args.output)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise CTSGANError(f"{out}: output must end in .nii or .nii.gz")
    if out.is_dir() or out.is_symlink():
        raise CTSGANError(f"{out}: is a folder or a symbolic link; --overwrite replaces files only")
    if out.exists() and not args.overwrite:
        raise CTSGANError(f"{out}: already exists (use --overwrite to replace it)")
    if out.parent.exists() and not out.parent.is_dir():
        raise CTSGANError(f"{out.parent}: is not a folder")
    hu, spacing_mm, info = read_volume(args.input)  # every check happens before anything is written
    write_nifti(out, hu, spacing_mm, info["origin_mm"])
    dz, dy, dx = spacing_mm
    nz, ny, nx = hu.shape
    print(f"wrote {out}: {nx}x{ny}x{nz} voxels (x, y, z), spacing {dx:.4g} x {dy:.4g} x {dz:.4g} mm, "
          f"HU {hu.min():.0f}..{hu.max():.0f}")
    return 0
