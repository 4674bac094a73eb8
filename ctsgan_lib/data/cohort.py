"""Cohorts on disk: one NIfTI per patient plus ``manifest.csv`` (the contract in ``docs/architecture.md``).

Read side: :class:`Cohort`. Write side: :class:`CohortWriter` (idempotent and crash-safe: every file is written
atomically, the manifest is rewritten atomically, and a rerun skips patients whose file matches its checksum).
:func:`assign_splits` gives the stratified 75/12.5/12.5 split. Building a cohort from a source (phantom, DICOM, NIfTI,
LIDC-IDRI + NLST) is :func:`ctsgan_lib.data.sources.build_cohort`; noise and HU statistics are in
:mod:`ctsgan_lib.data.quality`.

Example
-------
>>> from ctsgan_lib.data.cohort import Cohort            # doctest: +SKIP
>>> c = Cohort(cfg.data_dir / "cohort")
>>> hu, spacing_mm = c.read(c.ids(split="train", has_nodule=0)[0])
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import CTSGANError, InputFileError
from ..utils.atomic import atomic_path, atomic_write_bytes, clean_partials, file_sha256
from ..utils.paths import check_relative, owned_file, resolve_inside
from .io import read_nifti, with_center_mm, write_nifti

MANIFEST_COLUMNS = ["id", "source", "domain", "split", "has_nodule", "nodules", "spacing_mm", "shape", "path",
                    "label_path", "checksum"]
SPLITS = ("train", "val", "test")
_JSON_COLUMNS = ("nodules", "spacing_mm", "shape")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
FAILURE_COLUMNS = ["item", "problem"]
#: What a cohort writer names its volume files (``volumes/<id>[_label].nii[.gz]``): the only files it ever deletes.
_OWN_FILE_RE = re.compile(r"volumes/[A-Za-z0-9][A-Za-z0-9._-]*\.nii(\.gz)?")


def _own_names(rid: str) -> set[str]:
    """The file names :meth:`CohortWriter.write` gives the volume and label of ``rid``."""
    return {f"{rid}{label}{ext}" for label in ("", "_label") for ext in (".nii", ".nii.gz")}


def _decode(df: pd.DataFrame, manifest: Path) -> pd.DataFrame:
    """Parse the JSON/int columns of a manifest read as strings."""
    df = df.copy()
    for col in _JSON_COLUMNS:
        out = []
        for rid, text in zip(df["id"], df[col]):
            try:
                val = json.loads(text) if text not in ("", None) else ([] if col == "nodules" else None)
            except (json.JSONDecodeError, RecursionError):
                raise InputFileError(manifest, f"row {rid!r}: column {col!r} is not valid JSON ({text[:40]!r})") from None
            if col == "nodules" and not (isinstance(val, list) and all(isinstance(n, dict) for n in val)):
                raise InputFileError(manifest, f"row {rid!r}: column 'nodules' must be a JSON list of objects")
            if col != "nodules" and val is not None:
                if not (isinstance(val, list) and len(val) == 3 and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0
                        for v in val)):
                    raise InputFileError(manifest, f"row {rid!r}: column {col!r} must be three positive numbers "
                                                   f"({text[:40]!r})")
                val = tuple(val)
            out.append(val)
        df[col] = pd.Series(out, index=df.index, dtype=object)
    bad = ~df["has_nodule"].isin(["0", "1"])
    if bad.any():
        raise InputFileError(manifest, f"row {df['id'][bad].iloc[0]!r}: column 'has_nodule' must hold 0/1")
    df["has_nodule"] = df["has_nodule"].astype(int)
    return df


def encode_row(row: Mapping[str, Any]) -> dict[str, str]:
    """One manifest row as CSV strings (JSON for lists)."""
    out = {}
    for k, v in row.items():
        if k in _JSON_COLUMNS:
            out[k] = json.dumps(_plain(v if v is not None else []))
        elif k == "has_nodule":
            out[k] = str(int(v))
        else:
            out[k] = "" if v is None else str(v)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float):
        return round(v, 4)
    return v


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a ``manifest.csv`` (decoded: nodules → list[dict], spacing_mm/shape → tuples)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "cohort manifest not found (run notebook 01 or `ctsgan prepare` first)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputFileError(path, f"not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputFileError(path, f"missing columns: {', '.join(missing)} (expected {', '.join(MANIFEST_COLUMNS)})")
    dups = sorted(df["id"][df["id"].duplicated()].unique())
    if dups:
        raise InputFileError(path, f"duplicate ids in column 'id': {', '.join(dups[:5])}")
    for i, row in enumerate(df[["id", "path", "label_path"]].itertuples(index=False)):
        if not _ID_RE.match(row.id):
            raise InputFileError(path, f"row {i + 1}: id {row.id[:40]!r} is not a cohort id (letters, digits, '.', "
                                       "'_', '-')")
        # a path in a manifest may only name a file inside the cohort (checked again, symlinks resolved, on read)
        check_relative(row.path, f"{path}: row {row.id!r}: column 'path'")
        if row.label_path:
            check_relative(row.label_path, f"{path}: row {row.id!r}: column 'label_path'")
    return _decode(df, path).reset_index(drop=True)


class Cohort:
    """Read side of a cohort folder.

    Parameters
    ----------
    root : str or Path
        The cohort folder (holding ``manifest.csv``).

    Attributes
    ----------
    root : Path
    manifest : pandas.DataFrame
        One row per volume; ``nodules`` is a list of dicts, ``spacing_mm`` and ``shape`` are tuples.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_manifest(self.root / "manifest.csv")
        self._index = {rid: i for i, rid in enumerate(self.manifest["id"])}

    def __len__(self) -> int:
        return len(self.manifest)

    def __contains__(self, rid: str) -> bool:
        return rid in self._index

    def __repr__(self) -> str:
        return f"Cohort({str(self.root)!r}, n={len(self)})"

    def ids(self, split: str | None = None, has_nodule: int | bool | None = None, domain: str | None = None,
            source: str | None = None) -> list[str]:
        """Ids (manifest order, i.e. sorted) matching every filter given."""
        m = self.manifest
        keep = np.ones(len(m), dtype=bool)
        if split is not None:
            keep &= (m["split"] == split).to_numpy()
        if has_nodule is not None:
            keep &= (m["has_nodule"] == int(has_nodule)).to_numpy()
        if domain is not None:
            keep &= (m["domain"] == domain).to_numpy()
        if source is not None:
            keep &= (m["source"] == source).to_numpy()
        return m["id"][keep].tolist()

    def row(self, rid: str) -> dict:
        """The manifest row of ``rid`` as a dict."""
        try:
            return self.manifest.iloc[self._index[rid]].to_dict()
        except KeyError:
            raise CTSGANError(f"{self.root / 'manifest.csv'}: no volume with id {rid!r}") from None

    def path(self, rid: str) -> Path:
        """Absolute path of the volume file of ``rid`` (refused when it leaves the cohort folder)."""
        return resolve_inside(self.root, self.row(rid)["path"], f"{self.root / 'manifest.csv'}: row {rid!r}")

    def read(self, rid: str) -> tuple[np.ndarray, tuple[float, float, float]]:
        """(hu float32 (z, y, x), spacing_mm) of ``rid``."""
        hu, spacing_mm, _ = read_nifti(self.path(rid))
        return hu, spacing_mm

    def read_label(self, rid: str) -> np.ndarray | None:
        """uint8 tissue labels (same geometry as the volume) or None when the cohort has none for ``rid``."""
        rel = self.row(rid)["label_path"]
        if not rel:
            return None
        lab, _, _ = read_nifti(resolve_inside(self.root, rel, f"{self.root / 'manifest.csv'}: row {rid!r}"))
        return np.rint(lab).astype(np.uint8)

    def verify(self, rid: str) -> bool:
        """True when the volume file exists and its SHA-256 matches the manifest."""
        p = self.path(rid)
        return p.is_file() and file_sha256(p) == self.row(rid)["checksum"]


def _nii_ext(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"


def _link_or_copy(origin: Path, dest: Path) -> None:
    """``dest`` becomes a hard link to ``origin`` (a copy across devices), atomically: a link to a temporary name
    beside it, then a rename, so a crash leaves either the old ``dest`` or the new one. (Not :func:`atomic_path`: it
    fsyncs and chmods its temporary file, which for a link would change the source's shared inode.)"""
    tmp = dest.with_name(f".{dest.name.split('.')[0]}.{uuid.uuid4().hex[:8]}.part{_nii_ext(dest)}")
    try:
        os.link(origin, tmp)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOTSUP):
            raise
        with atomic_path(dest) as part:
            shutil.copyfile(origin, part)
        return
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _largest_remainder(n: int, fractions: Sequence[float]) -> list[int]:
    quotas = np.asarray(fractions, dtype=float) * n
    counts = np.floor(quotas).astype(int)
    for i in np.argsort(-(quotas - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def assign_splits(df: pd.DataFrame, fractions: Sequence[float] = (0.75, 0.125, 0.125), seed: int = 0,
                  strata: Sequence[str] = ("source", "has_nodule")) -> pd.Series:
    """Stratified train/val/test split.

    The global counts are exact (largest remainder: 900/150/150 for 1200 rows); within each stratum the counts are
    the floors of the quotas, with the leftover rows handed out so every split reaches its global count. Rows are
    shuffled within a stratum by a seeded RNG after sorting by id, so the result depends only on the set of ids,
    the strata values, ``fractions`` and ``seed`` (not on row order).

    Parameters
    ----------
    df : DataFrame
        Needs ``id`` and the ``strata`` columns.
    fractions : (train, val, test)
    seed : int
    strata : sequence of str

    Returns
    -------
    pandas.Series
        ``train``/``val``/``test`` indexed like ``df``.
    """
    if abs(sum(fractions) - 1) > 1e-6 or len(fractions) != 3:
        raise ValueError(f"split fractions must be three numbers summing to 1, got {fractions}")
    n = len(df)
    out = pd.Series([""] * n, index=df.index, dtype=object)
    if n == 0:
        return out
    targets = _largest_remainder(n, fractions)
    keys = df[list(strata)].astype(str).agg("|".join, axis=1) if strata else pd.Series("all", index=df.index)
    groups = sorted(keys.unique())
    sizes = {g: int((keys == g).sum()) for g in groups}
    counts = {g: np.floor(np.asarray(fractions) * sizes[g]).astype(int) for g in groups}
    left_g = {g: sizes[g] - int(counts[g].sum()) for g in groups}
    left_s = [targets[s] - sum(int(counts[g][s]) for g in groups) for s in range(3)]
    # hand out the leftovers, largest fractional quota first (deterministic tie-break by group and split order)
    cells = sorted(((fractions[s] * sizes[g] - counts[g][s], g, s) for g in groups for s in range(3)),
                   key=lambda t: (-t[0], groups.index(t[1]), t[2]))
    for _, g, s in cells:
        if left_g[g] > 0 and left_s[s] > 0:
            counts[g][s] += 1
            left_g[g] -= 1
            left_s[s] -= 1
    for g in groups:  # rare leftovers the greedy pass could not place within one extra per cell
        for s in range(3):
            while left_g[g] > 0 and left_s[s] > 0:
                counts[g][s] += 1
                left_g[g] -= 1
                left_s[s] -= 1
    rng = np.random.default_rng(seed)
    for g in groups:
        idx = df.index[(keys == g).to_numpy()]
        idx = idx[np.argsort(df.loc[idx, "id"].astype(str).to_numpy(), kind="stable")]
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for s, name in enumerate(SPLITS):
            out.loc[idx[start:start + counts[g][s]]] = name
            start += counts[g][s]
    return out


class CohortWriter:
    """Write side of a cohort folder; idempotent and crash-safe.

    Parameters
    ----------
    root : str or Path
        Cohort folder. An existing ``manifest.csv`` is loaded so a rerun resumes.
    compress : bool
        ``.nii.gz`` (True) or ``.nii``.
    source_defaults : dict, optional
        Field values every row gets unless :meth:`write` passes them (e.g. ``{"source": "ctsgan",
        "domain": "synthetic"}``).
    settings : dict, optional
        What the volumes were made with (size, HU window, source, seed, ...). Stored in ``cohort.json``; when an
        existing cohort was made with other settings its rows are discarded and rebuilt.
    flush_every : int
        Rewrite the manifest after this many new rows (and always on :meth:`flush` / :meth:`close`).
    """

    def __init__(self, root: str | Path, compress: bool = True, source_defaults: Mapping[str, Any] | None = None,
                 settings: Mapping[str, Any] | None = None, flush_every: int = 8):
        self.root = Path(root)
        self.volumes = self.root / "volumes"
        if self.volumes.is_symlink() or (self.volumes.exists() and not self.volumes.is_dir()):
            # writing (and pruning) through a link would touch files outside the cohort
            raise CTSGANError(f"{self.volumes}: is a symbolic link or not a folder; a cohort keeps its volumes in a "
                              "real folder inside it")
        self.volumes.mkdir(parents=True, exist_ok=True)
        clean_partials(self.volumes)
        clean_partials(self.root)
        self.compress = compress
        self.defaults = dict(source_defaults or {})
        self.flush_every = flush_every
        self.settings = _plain(dict(settings)) if settings is not None else None
        self._rows: dict[str, dict] = {}
        self._failures: list[dict] = []
        self._pending = 0
        #: ids whose files this writer may delete: rows of its own previous manifest and rows it writes
        self._owned_ids: set[str] = set()
        manifest = self.root / "manifest.csv"
        settings_file = self.root / "cohort.json"
        old_text = None
        if manifest.is_file():
            old_settings = None
            if settings_file.is_file():
                old_text = settings_file.read_text(encoding="utf-8")
                try:
                    old_settings = json.loads(old_text)
                except ValueError:
                    raise InputFileError(settings_file, "not valid JSON; delete it to rebuild the cohort") from None
            df = read_manifest(manifest)
            self._owned_ids.update(df["id"])
            if self.settings is None or old_settings == self.settings:
                for rec in df.to_dict(orient="records"):
                    self._rows[rec["id"]] = rec
        elif settings_file.is_file():
            old_text = settings_file.read_text(encoding="utf-8", errors="replace")
        self._written_manifest = manifest.read_text(encoding="utf-8") if manifest.is_file() else None
        if self.settings is not None:
            text = json.dumps(self.settings, indent=2, sort_keys=True)
            if text != old_text:  # unchanged settings are not rewritten (a finished cohort may be read-only)
                atomic_write_bytes(settings_file, text.encode("utf-8"))

    # -- state ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        return sorted(self._rows)

    def get(self, rid: str) -> dict | None:
        """The current row of ``rid`` (None when absent)."""
        row = self._rows.get(rid)
        return dict(row) if row is not None else None

    def done(self, rid: str) -> bool:
        """True when ``rid`` has a manifest row, its file exists and matches the recorded checksum."""
        row = self._rows.get(rid)
        if row is None:
            return False
        p = owned_file(self.root, row["path"], _OWN_FILE_RE)
        if p is None or file_sha256(p) != row["checksum"]:
            return False
        return not row.get("label_path") or owned_file(self.root, row["label_path"], _OWN_FILE_RE) is not None

    def frame(self) -> pd.DataFrame:
        """The manifest as a (decoded) DataFrame, sorted by id."""
        rows = [self._rows[k] for k in sorted(self._rows)]
        cols = MANIFEST_COLUMNS + sorted({k for r in rows for k in r} - set(MANIFEST_COLUMNS))
        return pd.DataFrame(rows, columns=cols)

    # -- writing ----------------------------------------------------------------------------------------------
    def write(self, rid: str, hu: np.ndarray, spacing_mm: Sequence[float], *, label: np.ndarray | None = None,
              origin_mm: Sequence[float] = (0.0, 0.0, 0.0), **fields: Any) -> dict:
        """Write one volume (and optional label volume) atomically and add its manifest row.

        Parameters
        ----------
        rid : str
            Unique id; letters, digits, ``.``, ``_``, ``-`` (it becomes a file name).
        hu : np.ndarray
            (z, y, x) HU volume (stored as int16).
        spacing_mm : (dz, dy, dx)
        label : np.ndarray, optional
            uint8 labels with the same shape.
        origin_mm : LPS (x, y, z) of voxel [0, 0, 0]
        **fields
            Manifest columns (``source``, ``domain``, ``split``, ``nodules``, ``has_nodule``) and extra columns.

        Returns
        -------
        dict
            The row.
        """
        if not isinstance(rid, str) or not _ID_RE.match(rid):
            raise CTSGANError(f"invalid cohort id {rid!r}: use letters, digits, '.', '_' and '-' only")
        hu = np.asarray(hu)
        if label is not None and np.asarray(label).shape != hu.shape:
            raise ValueError(f"{rid}: label shape {np.asarray(label).shape} != volume shape {hu.shape}")
        ext = ".nii.gz" if self.compress else ".nii"
        vol_path = self.volumes / f"{rid}{ext}"
        write_nifti(vol_path, hu, spacing_mm, origin_mm)
        label_rel = ""
        if label is not None:
            # label maps are always gzipped: a 224³ phantom label map shrinks 17-fold, and it is read far less often
            # than the volume (data.compress: false is for the volumes' read speed); docs/performance.md
            write_nifti(self.volumes / f"{rid}_label.nii.gz", label, spacing_mm, origin_mm, dtype="uint8")
            label_rel = f"volumes/{rid}_label.nii.gz"
            stale = self._deletable(f"volumes/{rid}_label.nii", rid) if rid in self._owned_ids else None
            if stale is not None:   # an uncompressed label from an earlier build of this cohort
                stale.unlink(missing_ok=True)
        row = {c: "" for c in MANIFEST_COLUMNS}
        row.update(self.defaults)
        row.update(fields)
        # center_mm: the NIfTI's world frame (RAS+ mm), for users who open the file with nibabel/ITK (issue 17)
        nodules = [with_center_mm(n, hu.shape, spacing_mm, origin_mm) for n in (row.get("nodules") or [])]
        row.update({
            "id": rid, "nodules": nodules,
            "has_nodule": int(fields["has_nodule"]) if "has_nodule" in fields else int(len(nodules) > 0),
            "spacing_mm": tuple(round(float(s), 6) for s in spacing_mm), "shape": tuple(int(s) for s in hu.shape),
            "path": f"volumes/{rid}{ext}", "label_path": label_rel, "checksum": file_sha256(vol_path),
        })
        return self._add_row(rid, row)

    def _add_row(self, rid: str, row: dict) -> dict:
        self._rows[rid] = row
        self._owned_ids.add(rid)
        self._pending += 1
        if self._pending >= self.flush_every:
            self.flush()
        return row

    def link(self, rid: str, source: Cohort, **fields: Any) -> dict:
        """Add ``source``'s volume ``rid`` unchanged: its files hard-linked into ``volumes/``, its row with ``fields``.

        A debiased or nodule-free cohort leaves half or more of its scans as they were; a link instead of a copy
        saves their whole size on disk (at paper scale about 33 GiB: docs/performance.md). Where the file system
        cannot link (another device, no hard links), the file is copied. Every write in this project is an atomic
        rename, never an in-place change, so the two cohorts cannot alter each other through a shared file.

        Parameters
        ----------
        rid : str
            The id in ``source`` (and here).
        source : Cohort
            The cohort whose files are reused; read only.
        **fields
            Manifest columns to set or add (``debias_action``, ``source_id``, ...).
        """
        src = source.row(rid)
        rels = {}
        for key in ("path", "label_path"):
            rel = src.get(key) or ""
            if rel:
                origin = resolve_inside(source.root, rel, f"{source.root / 'manifest.csv'}: row {rid!r}")
                name = f"{rid}_label{_nii_ext(origin)}" if key == "label_path" else f"{rid}{_nii_ext(origin)}"
                _link_or_copy(origin, self.volumes / name)
                rel = f"volumes/{name}"
            rels[key] = rel
        row = {k: v for k, v in src.items() if not (isinstance(v, float) and np.isnan(v))}
        row.update(self.defaults)
        row.update(fields)
        # the same bytes as the source's file: its recorded checksum holds (a corrupt source fails done() here too)
        checksum = src.get("checksum") or file_sha256(self.volumes / Path(rels["path"]).name)
        row.update({"id": rid, "path": rels["path"], "label_path": rels["label_path"], "checksum": checksum})
        return self._add_row(rid, row)

    def _deletable(self, rel: str, rid: str) -> Path | None:
        """``rel`` when it is this writer's own file of ``rid`` (its naming, inside ``volumes/``, no symlink)."""
        rel = str(rel)
        if rid not in self._owned_ids or not rel.startswith("volumes/") or rel[len("volumes/"):] not in _own_names(rid):
            return None
        return owned_file(self.root, rel, _OWN_FILE_RE)

    def remove(self, rid: str) -> None:
        """Drop a row and its files (e.g. a patient no longer in the source).

        Only files this writer made are deleted: ``volumes/<rid>[_label].nii[.gz]`` of a row of its own manifest,
        never through a symlink; anything else a row names is left alone.
        """
        row = self._rows.pop(rid, None)
        if row:
            for key in ("path", "label_path"):
                if row.get(key):
                    p = self._deletable(row[key], rid)
                    if p is not None:
                        p.unlink(missing_ok=True)
            self._pending += 1

    def prune(self) -> int:
        """Delete volume files of this writer's earlier rows that no current row references.

        Candidates are ``volumes/<id>[_label].nii[.gz]`` for ids of the previous manifest (e.g. a build with other
        settings) and of rows written here; other files in ``volumes/`` are never touched.
        """
        keep = {Path(r[k]).name for r in self._rows.values() for k in ("path", "label_path") if r.get(k)}
        n = 0
        for p in sorted(self.volumes.iterdir()):
            stem = re.sub(r"\.nii(\.gz)?$", "", p.name)
            owners = [rid for rid in (stem, stem.removesuffix("_label")) if rid in self._owned_ids]
            if p.name in keep or not any(self._deletable(f"volumes/{p.name}", rid) for rid in owners):
                continue
            p.unlink()
            n += 1
        return n

    def set_splits(self, splits: Mapping[str, str] | pd.Series) -> None:
        """Set the ``split`` of rows by id (a Series indexed by id, or a dict)."""
        for rid, split in dict(splits).items():
            if split not in SPLITS:
                raise ValueError(f"{rid}: split must be one of {SPLITS}, got {split!r}")
            self._rows[rid]["split"] = split
        self._pending += 1

    def assign_splits(self, fractions: Sequence[float] = (0.75, 0.125, 0.125), seed: int = 0,
                      strata: Sequence[str] = ("source", "has_nodule")) -> None:
        """Stratified splits over all rows (see :func:`assign_splits`)."""
        df = self.frame()
        if len(df):
            self.set_splits(pd.Series(assign_splits(df, fractions, seed, strata).to_numpy(), index=df["id"]))

    def record_failure(self, item: str | Path, problem: str) -> None:
        """Note a scan that could not be prepared; written to ``failures.csv`` on :meth:`flush`."""
        self._failures = [f for f in self._failures if f["item"] != str(item)]
        self._failures.append({"item": str(item), "problem": str(problem)})
        self._pending += 1

    @property
    def failures(self) -> list[dict]:
        return list(self._failures)

    def flush(self) -> None:
        """Rewrite ``manifest.csv`` (sorted by id) and ``failures.csv`` atomically."""
        df = self.frame()
        text = pd.DataFrame([encode_row(r) for r in df.to_dict(orient="records")],
                            columns=df.columns).to_csv(index=False)
        if text != self._written_manifest:  # an unchanged manifest is not rewritten (finished, read-only cohort)
            atomic_write_bytes(self.root / "manifest.csv", text.encode("utf-8"))
            self._written_manifest = text
        fail_path = self.root / "failures.csv"
        if self._failures:
            atomic_write_bytes(fail_path, pd.DataFrame(self._failures, columns=FAILURE_COLUMNS).to_csv(index=False)
                               .encode("utf-8"))
        elif fail_path.is_file() and not fail_path.is_symlink():
            fail_path.unlink()  # a stale report from an earlier run would mislead
        self._pending = 0

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "CohortWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.flush()


def cohort_summary(cohort: Cohort) -> pd.DataFrame:
    """Split table: counts per split × (source, domain, has_nodule), with totals."""
    m = cohort.manifest
    table = m.groupby(["source", "domain", "has_nodule", "split"]).size().unstack("split", fill_value=0)
    table = table.reindex(columns=list(SPLITS), fill_value=0)
    table["total"] = table.sum(axis=1)
    total = table.sum(axis=0).to_frame().T
    total.index = pd.MultiIndex.from_tuples([("all", "", "")], names=table.index.names)
    return pd.concat([table, total])


def volume_checksum(cohort, vid: str) -> str:
    """The manifest's SHA-256 of volume ``vid``, or the SHA-256 of its float32 array when the manifest has none.

    Feature caches and extractor digests key on it (``eval.fidelity``, ``eval.domain``).
    """
    try:
        row = cohort.row(vid)
        checksum = str(row["checksum"]) if row is not None and "checksum" in row else ""
    except (KeyError, TypeError):
        checksum = ""
    if not checksum or checksum == "nan":
        hu, _ = cohort.read(vid)
        checksum = hashlib.sha256(np.ascontiguousarray(hu, dtype=np.float32).tobytes()).hexdigest()
    return checksum
