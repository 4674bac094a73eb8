"""Binary classification metrics for nodule detection (paper §4.2, Fig 3b), the split checks behind them, and the
paired bootstrap interval of a difference between two models (:func:`paired_bootstrap_difference`; beyond the paper).

Written with numpy only (no scikit-learn at run time); ``tests/test_classifier.py`` checks every number against
scikit-learn.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

from ..errors import CTSGANError


def roc_auc(y_true, score) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic (ties count one half).

    Parameters
    ----------
    y_true : array of {0, 1}
    score : array of float
        Higher means "more likely positive".

    Returns
    -------
    float
        ``nan`` when only one class is present (AUC is undefined).

    Examples
    --------
    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # average ranks (1-based), ties share their mean rank
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_metrics(y_true, p_positive, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, balanced accuracy, AUC, sensitivity and specificity.

    Parameters
    ----------
    y_true : array of {0, 1}
        1 = nodule present.
    p_positive : array of float
        Predicted probability of "nodule present".
    threshold : float
        Predicted positive when ``p_positive >= threshold`` (0.5 = argmax of two softmax outputs).

    Returns
    -------
    dict
        ``accuracy, balanced_accuracy, auc, sensitivity, specificity, n, n_pos, n_neg, tp, tn, fp, fn``.
        Sensitivity (specificity) is ``nan`` without positives (negatives).
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(p_positive, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true and p_positive differ in length ({len(y)} vs {len(p)})")
    if len(y) == 0:
        raise CTSGANError("cannot compute metrics on an empty set")
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    n_pos, n_neg = tp + fn, tn + fp
    sens = tp / n_pos if n_pos else float("nan")
    spec = tn / n_neg if n_neg else float("nan")
    bal = float(np.nanmean([sens, spec])) if (n_pos or n_neg) else float("nan")
    return {
        "accuracy": (tp + tn) / len(y), "balanced_accuracy": bal, "auc": roc_auc(y, p),
        "sensitivity": sens, "specificity": spec,
        "n": int(len(y)), "n_pos": n_pos, "n_neg": n_neg, "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


def check_classes(labels, where: str) -> None:
    """Raise a one-line :class:`CTSGANError` when a split lacks one of the two classes.

    Parameters
    ----------
    labels : array of {0, 1}
    where : str
        Names the split and its source in the message, e.g. ``"data/smoke/debiased: split 'val'"``.
    """
    y = np.asarray(labels).astype(int).ravel()
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        missing = "nodule-bearing (label 1)" if n_pos == 0 else "nodule-free (label 0)"
        raise CTSGANError(f"{where}: no {missing} volumes ({n_pos} positive, {n_neg} negative); a classifier "
                          f"cannot be trained or evaluated on one class")


def balanced_indices(labels, rng: np.random.Generator, where: str) -> np.ndarray:
    """Indices of a balanced subset: every minority-class item plus an equal random draw of the majority class.

    Paper Fig 3b reports accuracy "for the balanced binary test set".

    Raises
    ------
    CTSGANError
        When one class is empty (the set cannot be balanced).
    """
    y = np.asarray(labels).astype(int).ravel()
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise CTSGANError(f"{where}: test set cannot be balanced: {len(pos)} positive and {len(neg)} negative "
                          f"volumes (both classes are needed)")
    k = min(len(pos), len(neg))
    keep = np.concatenate([rng.permutation(pos)[:k] if len(pos) > k else pos,
                           rng.permutation(neg)[:k] if len(neg) > k else neg])
    return np.sort(keep)


def _accuracy(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Accuracy at threshold 0.5 of each row of ``p`` (resamples × items) against the matching row of ``y``."""
    return ((p >= 0.5).astype(int) == y).mean(axis=-1)


def _auc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """:func:`roc_auc` of each row (Mann–Whitney with tied ranks averaged), vectorised over resamples."""
    ranks = rankdata(p, axis=-1)
    n_pos = (y == 1).sum(axis=-1)
    n_neg = (y == 0).sum(axis=-1)
    u = (ranks * (y == 1)).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


BOOTSTRAP_METRICS = {"accuracy": _accuracy, "auc": _auc_rows}
BOOTSTRAP_METHOD = ("paired bootstrap over seeds and test scans (seeds resampled, then scans within each seed, "
                    "positives and negatives separately; percentile interval)")


def paired_bootstrap_difference(groups: Sequence[tuple], metric: str = "accuracy", n_boot: int = 2000,
                                level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Difference of a test metric between two models scored on the same scans, with a paired bootstrap interval.

    The estimate is the mean over seeds of ``metric(y, p_b) - metric(y, p_a)``. Each resample draws the seeds with
    replacement and, within each drawn seed, the test scans with replacement, the positives and the negatives
    separately (a balanced test set stays balanced); both models are scored on the same drawn scans (paired).

    Parameters
    ----------
    groups : sequence of (y, p_a, p_b)
        One per seed: labels and the two models' probabilities of "nodule present", item for item the same scans.
    metric : "accuracy" or "auc"
    n_boot : int
        Resamples.
    level : float
        Interval coverage (0.95: the 2.5 and 97.5 percentiles).
    seed : int
        Of the resampling.

    Returns
    -------
    dict
        ``estimate``, ``low``, ``high`` (percentile interval), ``n_seeds``, ``n_scans`` (per seed, summed),
        ``n_boot``, ``metric``.

    Examples
    --------
    >>> y = np.array([0, 0, 1, 1]); a = np.array([0.9, 0.9, 0.1, 0.1]); b = 1 - a
    >>> r = paired_bootstrap_difference([(y, a, b)], n_boot=50)
    >>> (r["estimate"], r["low"], r["high"])
    (1.0, 1.0, 1.0)
    """
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric must be one of {', '.join(BOOTSTRAP_METRICS)}, got {metric!r}")
    if not groups:
        raise ValueError("no (y, p_a, p_b) groups to compare")
    fn = BOOTSTRAP_METRICS[metric]
    gs = []
    for y, pa, pb in groups:
        y, pa, pb = (np.asarray(v, dtype=float).ravel() for v in (y, pa, pb))
        if not len(y) == len(pa) == len(pb):
            raise ValueError(f"labels and probabilities differ in length ({len(y)}, {len(pa)}, {len(pb)})")
        gs.append((y.astype(int), pa, pb))
    est = float(np.mean([fn(y[None], pb[None])[0] - fn(y[None], pa[None])[0] for y, pa, pb in gs]))
    rng = np.random.default_rng(seed)
    k = len(gs)
    seed_draw = rng.integers(0, k, size=(n_boot, k))
    diffs = np.zeros(n_boot)
    for j, (y, pa, pb) in enumerate(gs):
        # the scans of seed j, resampled once per bootstrap replicate (used by every replicate that draws seed j)
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), size=(n_boot, int((y == c).sum())))
                              for c in (0, 1) if (y == c).any()], axis=1)
        d = fn(y[idx], pb[idx]) - fn(y[idx], pa[idx])
        diffs += (seed_draw == j).sum(axis=1) * d
    diffs /= k
    lo, hi = np.nanpercentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    return {"metric": metric, "estimate": est, "low": float(lo), "high": float(hi), "n_seeds": k,
            "n_scans": int(sum(len(g[0]) for g in gs)), "n_boot": int(n_boot)}
