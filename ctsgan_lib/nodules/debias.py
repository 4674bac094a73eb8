"""Device-debiased real cohort (paper Fig 3a) and the nodule-free CT-SGAN training set (paper §3.1).

In the real data every nodule-bearing scan comes from the LIDC scanners and every nodule-free one from NLST, so a
nodule classifier could learn the scanner instead of the nodule. The fix (Fig 3a): erase the nodules from half of
the LIDC (lidc-like) scans and inject nodules into half of the NLST (nlst-like) scans, within each split. Afterwards
nodule presence is independent of the scanner domain (:func:`domain_leakage` measures it).

CT-SGAN itself is trained on nodule-free anatomy: :func:`build_nodule_free_cohort` erases the nodules of the
training split.

Both write cohorts in the format of ``docs/architecture.md`` with :class:`~ctsgan_lib.data.cohort.CohortWriter`
(idempotent: a rerun with the same models and seed skips finished volumes; other models or seed rebuild).
Extra manifest columns: ``source_id`` (the id in the source cohort), ``debias_action`` (``erased``, ``injected``,
``none``) and ``shortfall`` (requested nodules that did not fit in the lung).
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, fisher_exact
from tqdm.auto import tqdm

from ..config import Config
from ..data.cohort import SPLITS, Cohort, CohortWriter
from ..data.lidc import sample_nodule_count
from ..errors import CTSGANError
from ..utils.atomic import file_sha256
from .geometry import LUNG_LABEL, NODULE_LABEL, ball, lung_of


def _rng(seed: int, rid: str) -> np.random.Generator:
    """Per-volume RNG: depends on the seed and the id only (not on order or on which volumes were skipped)."""
    return np.random.default_rng([int(seed), zlib.crc32(rid.encode())])


def _model_tag(model) -> dict:
    return {"checkpoint": Path(model.source).name, "step": int(model.step),
            "sha256": file_sha256(model.source) if model.source and Path(model.source).is_file() else ""}


def _half(groups: Sequence[Sequence[str]], seed: int, salt: int) -> set[str]:
    """A seeded half of the ids, taken within each group (split), so every split is balanced.

    Each group gives ``floor(n / 2)``; the odd ones left over (one per odd group) are pooled and every other one is
    taken, so across splits the total is within one of half.
    """
    rng = np.random.default_rng([int(seed), salt])
    chosen, leftovers = set(), []
    for ids in groups:
        ids = sorted(ids)
        perm = [ids[i] for i in rng.permutation(len(ids))]
        chosen |= set(perm[: len(ids) // 2])
        if len(ids) % 2:
            leftovers.append(perm[-1])
    leftovers = [leftovers[i] for i in rng.permutation(len(leftovers))]
    return chosen | set(leftovers[::2])


def _erase_label(label: np.ndarray | None) -> np.ndarray | None:
    if label is None:
        return None
    out = label.copy()
    out[out == NODULE_LABEL] = LUNG_LABEL  # erased nodules become parenchyma
    return out


def _inject_label(label: np.ndarray | None, nodules: list[dict]) -> np.ndarray | None:
    if label is None:
        return None
    out = label.copy()
    for n in nodules:
        d = float(n["diameter_vox"])
        size = int(2 * np.ceil(d / 2) + 3)
        b = ball(size, d) >= 0.5
        c = np.asarray(n["center_vox"], dtype=int)
        lo = c - size // 2
        src, dst = [], []
        for l, dim in zip(lo, label.shape):
            a, e = max(l, 0), min(l + size, dim)
            src.append(slice(a - l, e - l))
            dst.append(slice(a, e))
        region = out[tuple(dst)]
        region[b[tuple(src)]] = NODULE_LABEL
    return out


def nodule_pool_vox(cohort: Cohort, max_vox: float) -> np.ndarray:
    """Diameters (voxels) of the cohort's original nodules that fit the injector (``<= max_vox``)."""
    ds = [float(n["diameter_vox"]) for rid in cohort.ids(has_nodule=1) for n in (cohort.row(rid)["nodules"] or [])]
    ds = np.asarray([d for d in ds if 0 < d <= max_vox])
    return ds


def build_debiased_cohort(cfg: Config, injector, eraser, out: str | Path | None = None,
                          cohort_dir: str | Path | None = None, diameter_vox: float | None = None,
                          seed: int | None = None, progress: bool = True) -> Path:
    """Fig 3a: erase nodules from half of the lidc-like scans and inject into half of the nlst-like scans.

    Parameters
    ----------
    cfg : Config
    injector : :class:`~ctsgan_lib.nodules.NoduleInjector`
    eraser : :class:`~ctsgan_lib.nodules.NoduleEraser`
    out : path, optional
        Default ``cfg.data_dir / "debiased"``.
    cohort_dir : path, optional
        The prepared cohort (default ``cfg.data_dir / "cohort"``).
    diameter_vox : float, optional
        Inject nodules of this one size (the Fig 3b size experiments); default: sizes drawn from the cohort's own
        nodules. The number of nodules per injected scan follows the real LIDC per-scan distribution
        (:func:`ctsgan_lib.data.lidc.sample_nodule_count`).
    seed : int, optional
        Default ``cfg.seed``. Halves are chosen per split and domain.

    Returns
    -------
    Path
        The debiased cohort folder.
    """
    seed = cfg.seed if seed is None else int(seed)
    src = Cohort(cohort_dir if cohort_dir is not None else cfg.data_dir / "cohort")
    out = Path(out) if out is not None else cfg.data_dir / "debiased"
    pool = np.asarray([float(diameter_vox)]) if diameter_vox is not None else \
        nodule_pool_vox(src, injector.mask_size)
    if not len(pool):
        pool = np.asarray(cfg.nodules.diameters_vox, dtype=float)
    erase_ids = _half([src.ids(split=s, domain="lidc-like", has_nodule=1) for s in SPLITS], seed, 10)
    inject_ids = _half([src.ids(split=s, domain="nlst-like", has_nodule=0) for s in SPLITS], seed, 20)
    settings = {"kind": "debiased", "seed": seed, "diameter_vox": diameter_vox, "source": str(src.root),
                "source_manifest_sha256": file_sha256(src.root / "manifest.csv"),
                "injector": _model_tag(injector), "eraser": _model_tag(eraser)}
    with CohortWriter(out, compress=cfg.data.compress, settings=settings) as w:
        for rid in tqdm(src.ids(), desc="debias", disable=not progress):
            if w.done(rid):
                continue
            row = src.row(rid)
            nods = [dict(n) for n in (row["nodules"] or [])]
            if rid not in erase_ids and rid not in inject_ids:   # unchanged: a link, not a copy (disk)
                w.link(rid, src, source_id=rid, debias_action="none", shortfall=0)
                continue
            hu, spacing = src.read(rid)
            label = src.read_label(rid)
            action, shortfall = "none", 0
            if rid in erase_ids:
                hu = eraser.erase(hu, nods)
                label = _erase_label(label)
                nods = [{**n, "action": "erased"} for n in nods]
                action = "erased"
            elif rid in inject_ids:
                rng = _rng(seed, rid)
                n_req = sample_nodule_count(rng, at_least_one=True)
                ds = rng.choice(pool, size=n_req)
                lung = lung_of(hu, label)
                hu, new = injector.inject(hu, ds, rng, lung=lung, existing=nods, spacing_mm=spacing)
                shortfall = int(injector.last_shortfall)
                label = _inject_label(label, new)
                nods = nods + new
                action = "injected"
            has = int(any(n.get("action", "original") != "erased" for n in nods))
            w.write(rid, hu, spacing, label=label, source=row["source"], domain=row["domain"], split=row["split"],
                    nodules=nods, has_nodule=has, source_id=rid, debias_action=action, shortfall=shortfall)
    return out


def build_nodule_free_cohort(cfg: Config, eraser, out: str | Path | None = None,
                             cohort_dir: str | Path | None = None, split: str = "train",
                             progress: bool = True) -> Path:
    """The CT-SGAN training set: the ``split`` scans with every nodule erased (paper §3.1).

    Returns
    -------
    Path
        Default ``cfg.data_dir / "nodule_free"``; every row has ``has_nodule = 0``.
    """
    src = Cohort(cohort_dir if cohort_dir is not None else cfg.data_dir / "cohort")
    out = Path(out) if out is not None else cfg.data_dir / "nodule_free"
    ids = src.ids(split=split)
    if not ids:
        raise CTSGANError(f"{src.root / 'manifest.csv'}: no volumes in split {split!r}")
    settings = {"kind": "nodule_free", "split": split, "source": str(src.root),
                "source_manifest_sha256": file_sha256(src.root / "manifest.csv"), "eraser": _model_tag(eraser)}
    with CohortWriter(out, compress=cfg.data.compress, settings=settings) as w:
        for rid in tqdm(ids, desc="erase nodules", disable=not progress):
            if w.done(rid):
                continue
            row = src.row(rid)
            nods = [dict(n) for n in (row["nodules"] or []) if n.get("action", "original") != "erased"]
            if not nods:   # nothing to erase: a link, not a copy (disk)
                w.link(rid, src, nodules=[], has_nodule=0, source_id=rid, debias_action="none", shortfall=0)
                continue
            hu, spacing = src.read(rid)
            label = src.read_label(rid)
            hu = eraser.erase(hu, nods)
            label = _erase_label(label)
            action = "erased"
            w.write(rid, hu, spacing, label=label, source=row["source"], domain=row["domain"], split=row["split"],
                    nodules=[{**n, "action": "erased"} for n in nods], has_nodule=0, source_id=rid,
                    debias_action=action, shortfall=0)
    return out


def domain_leakage(cohort: Cohort | str | Path) -> dict:
    """How well the scanner domain predicts nodule presence.

    Returns
    -------
    dict
        ``table`` (domain × has_nodule counts), ``phi`` (the correlation of the two binary variables: ±1 = fully
        confounded, 0 = independent), ``accuracy`` (best domain → label rule) and ``p_value`` (chi-squared test of
        independence; Fisher's exact test when a cell is small).
    """
    c = cohort if isinstance(cohort, Cohort) else Cohort(cohort)
    m = c.manifest[c.manifest["domain"].isin(["lidc-like", "nlst-like"])]
    t = pd.crosstab(m["domain"], m["has_nodule"]).reindex(index=["lidc-like", "nlst-like"], columns=[0, 1],
                                                            fill_value=0)
    a, b, cc, d = (float(v) for v in t.to_numpy().ravel())
    denom = np.sqrt((a + b) * (cc + d) * (a + cc) * (b + d))
    phi = (a * d - b * cc) / denom if denom > 0 else float("nan")
    acc = max(a + d, b + cc) / max(a + b + cc + d, 1.0)
    if t.to_numpy().min() < 5:
        p = float(fisher_exact(t.to_numpy())[1])
    else:
        p = float(chi2_contingency(t.to_numpy())[1])
    t.columns = ["no nodule", "nodule"]
    return {"table": t, "phi": float(phi), "accuracy": float(acc), "p_value": p}
