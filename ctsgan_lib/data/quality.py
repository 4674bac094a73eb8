"""Scanner-noise and HU statistics of a cohort (the quality checks shown by notebook 01).

:func:`noise_hu` is the high-pass noise level of one volume; :func:`domain_noise` applies it per cohort volume and
:func:`native_phantom_noise` per phantom patient re-rendered on its native grid; :func:`tissue_hu_samples` gives HU
values per tissue label for the histograms.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..errors import CTSGANError
from . import phantom
from .cohort import Cohort

#: Homogeneous soft-tissue labels (phantom LABELS: body/muscle, fat, heart/mediastinum) used for noise estimates.
NOISE_LABELS = (1, 2, 8)


def noise_hu(hu: np.ndarray, labels: np.ndarray | None = None) -> float:
    """High-pass noise level of a volume in HU.

    Robust std (1.4826·MAD) of ``hu`` minus its 3×3×3 local mean, inside homogeneous tissue, scaled by
    sqrt(27/26) so that it equals σ for white noise (correlated, smooth noise reads lower: the estimate reflects
    both noise level and texture, which is what separates two CT kernels). The region is each of
    :data:`NOISE_LABELS` eroded by one voxel when ``labels`` are given, otherwise voxels whose 5³ median is in
    [-30, 100] HU (soft tissue), eroded.

    Returns
    -------
    float
        NaN when fewer than 50 voxels qualify.
    """
    hu = np.asarray(hu, dtype=np.float32)
    resid = hu - ndi.uniform_filter(hu, 3, mode="nearest")
    if labels is not None:
        mask = np.zeros(hu.shape, dtype=bool)
        for lab in NOISE_LABELS:
            mask |= ndi.binary_erosion(labels == lab, iterations=1)
    else:
        smooth = ndi.median_filter(hu, 5)
        mask = ndi.binary_erosion((smooth > -30) & (smooth < 100), iterations=1)
    if mask.sum() < 50:
        return float("nan")
    r = resid[mask]
    return float(1.4826 * np.median(np.abs(r - np.median(r))) * np.sqrt(27 / 26))


def domain_noise(cohort: Cohort, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`noise_hu` per volume: columns ``id``, ``domain``, ``noise_hu``."""
    rows = []
    for rid in ids if ids is not None else cohort.ids():
        hu, _ = cohort.read(rid)
        rows.append({"id": rid, "domain": cohort.row(rid)["domain"], "noise_hu": noise_hu(hu, cohort.read_label(rid))})
    return pd.DataFrame(rows, columns=["id", "domain", "noise_hu"])


def tissue_hu_samples(cohort: Cohort, ids: Sequence[str], max_per_tissue: int = 20000,
                      seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """HU values per tissue label and domain (``{tissue: {domain: values}}``), subsampled for plotting.

    Volumes without a label file are pooled under the tissue ``"all voxels"``.
    """
    names = {v: k for k, v in phantom.LABELS.items()}
    rng = np.random.default_rng(seed)
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}
    for rid in ids:
        hu, _ = cohort.read(rid)
        lab = cohort.read_label(rid)
        domain = cohort.row(rid)["domain"]
        groups = {"all voxels": hu.ravel()} if lab is None else {names.get(int(v), str(v)): hu[lab == v]
                                                                  for v in np.unique(lab)}
        for tissue, vals in groups.items():
            pooled.setdefault(tissue, {}).setdefault(domain, []).append(vals)
    out: dict[str, dict[str, np.ndarray]] = {}
    for tissue, per_domain in pooled.items():
        out[tissue] = {}
        for domain, parts in per_domain.items():
            vals = np.concatenate(parts)
            if len(vals) > max_per_tissue:
                vals = rng.choice(vals, max_per_tissue, replace=False)
            out[tissue][domain] = vals
    return out


def native_phantom_noise(cfg, cohort, ids) -> pd.DataFrame:
    """:func:`noise_hu` of phantom patients re-rendered on their native grid.

    Resizing to the cohort cube (anti-aliased) averages much of the fine-grained noise away, so the scanner-domain
    difference is clearest before preprocessing. Each patient is re-rendered from the ``seed`` in its manifest row
    (deterministic), with the profile's phantom grid. Columns: ``id``, ``domain``, ``noise_hu``, ``grid``.
    """
    rows = []
    grid = f"native {cfg.data.phantom_size}³ @ {cfg.data.phantom_spacing_mm:g} mm"
    for rid in ids:
        row = cohort.row(rid)
        if row["source"] != "phantom" or str(row.get("seed", "")) == "":
            raise CTSGANError(f"{rid}: not a phantom patient with a recorded seed")
        ph = phantom.make_patient(int(row["seed"]), row["domain"], size=cfg.data.phantom_size,
                                  spacing_mm=cfg.data.phantom_spacing_mm)
        rows.append({"id": rid, "domain": row["domain"], "noise_hu": noise_hu(ph.hu, ph.labels), "grid": grid})
    return pd.DataFrame(rows, columns=["id", "domain", "noise_hu", "grid"])
