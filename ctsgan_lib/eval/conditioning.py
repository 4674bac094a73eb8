"""Does the condition take? Conditioning AUC and measured nodule size of conditional CT-SGAN volumes (ours, issue 26).

A detector trained on real data only scores volumes generated *with* a nodule condition and volumes generated
*without*; the ROC AUC of those scores, per requested size, says how well the generated volumes carry the requested
nodules (0.5: the condition is ignored, as far as the detector can tell; 1: every volume with nodules scores above
every volume without). The interval is a stratified percentile bootstrap. Independently of any detector, the size
of the largest dense blob inside the lungs is measured and compared with the requested diameter.

The volumes and the detector come from elsewhere (``ctsgan_lib.synthesis.conditional`` glues generator, detector and
this module together); everything here works on arrays.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..data.preprocess import lung_mask
from .classification import roc_auc


def auc_interval(labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`~ctsgan_lib.eval.classification.roc_auc`.

    Positives and negatives are resampled separately (stratified), so every resample has both classes.

    Parameters
    ----------
    labels : array of {0, 1}
    scores : array of float
    n_boot : int
        Resamples.
    seed : int
    level : float
        Coverage (0.95: the 2.5 % and 97.5 % quantiles).

    Returns
    -------
    (low, high)
    """
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    both = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
    draws = [roc_auc(both, np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(n_boot)]
    tail = (1.0 - level) / 2.0
    return float(np.quantile(draws, tail)), float(np.quantile(draws, 1.0 - tail))


def conditioning_auc(scores_with: Sequence[float], scores_without: Sequence[float], n_boot: int = 1000,
                     seed: int = 0) -> dict[str, float]:
    """AUC of detector scores of volumes generated with (positives) against without (negatives) nodules.

    Returns
    -------
    dict
        ``auc``, ``ci_low``, ``ci_high`` (95 % bootstrap), ``n_with``, ``n_without``, ``mean_score_with``,
        ``mean_score_without``.
    """
    pos = np.asarray(scores_with, dtype=np.float64).ravel()
    neg = np.asarray(scores_without, dtype=np.float64).ravel()
    y = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
    s = np.r_[pos, neg]
    lo, hi = auc_interval(y, s, n_boot, seed)
    return {"auc": roc_auc(y, s), "ci_low": lo, "ci_high": hi, "n_with": int(len(pos)), "n_without": int(len(neg)),
            "mean_score_with": float(pos.mean()) if len(pos) else float("nan"),
            "mean_score_without": float(neg.mean()) if len(neg) else float("nan")}


def largest_blob_diameter_vox(hu: np.ndarray, spacing_mm: Sequence[float] | None = None,
                              dense_hu: float = -300.0, lung: np.ndarray | None = None) -> float:
    """Equivalent-sphere diameter (voxels) of the largest dense connected blob inside the lungs; 0.0 if none.

    "Dense" is ``hu > dense_hu`` (solid nodules are soft tissue, lung parenchyma is near −850 HU); the lungs are the
    classical :func:`~ctsgan_lib.data.preprocess.lung_mask` (holes filled, so nodules and vessels are inside) unless
    ``lung`` is given. Vessels are dense blobs too: in a volume without nodules this measures the largest vessel
    segment, which is why the report sets it beside the volumes generated without nodules.
    """
    hu = np.asarray(hu, dtype=np.float32)
    lung = lung_mask(hu, spacing_mm) if lung is None else np.asarray(lung, dtype=bool)
    dense = (hu > dense_hu) & lung
    if not dense.any():
        return 0.0
    labels, n = ndimage.label(dense)
    largest = int(np.bincount(labels.ravel())[1:].max()) if n else 0
    return float((6.0 * largest / np.pi) ** (1.0 / 3.0))


def size_agreement(requested_vox: float, measured_vox: Sequence[float],
                   measured_without_vox: Sequence[float] = ()) -> dict[str, float]:
    """Measured blob diameters of volumes generated with a requested diameter, against it (and against volumes
    generated without nodules, the vessel baseline).

    Returns
    -------
    dict
        ``requested_vox``, ``measured_median_vox``, ``measured_iqr_vox`` (25th, 75th percentiles),
        ``median_abs_error_vox``, ``baseline_median_vox`` (nan without baseline volumes).
    """
    m = np.asarray(measured_vox, dtype=np.float64)
    b = np.asarray(measured_without_vox, dtype=np.float64)
    if not len(m):
        raise ValueError("no measured diameters")
    return {"requested_vox": float(requested_vox), "measured_median_vox": float(np.median(m)),
            "measured_iqr_vox": [float(np.quantile(m, 0.25)), float(np.quantile(m, 0.75))],
            "median_abs_error_vox": float(np.median(np.abs(m - requested_vox))),
            "baseline_median_vox": float(np.median(b)) if len(b) else float("nan")}


__all__ = ["auc_interval", "conditioning_auc", "largest_blob_diameter_vox", "size_agreement"]
