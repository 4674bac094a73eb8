"""Binary classification metrics for nodule detection (paper §4.2, Fig 3b) and the split checks behind them.

Written with numpy only (no scikit-learn at run time); ``tests/test_classifier.py`` checks every number against
scikit-learn.
"""
from __future__ import annotations

import numpy as np

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
