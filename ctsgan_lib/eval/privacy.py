"""Memorization check: is a synthetic volume a near-copy of a training patient? (Dar et al. 2024, arXiv 2402.01054)

The paper's motivation is data that cannot be shared, so a user must know whether the generator copied patients.

* **Embedding**: each volume is windowed to [0, 1] (the model HU window), downsampled to ``size³`` by area
  averaging, and z-scored. The dot product of two embeddings divided by their length is then the Pearson
  correlation of the downsampled volumes.
* **Nearest training volume** per query volume: the highest correlation.
* **Copy threshold** (Dar et al.): the ``percentile``-th percentile (95th) of the correlations between *real
  validation* volumes and their nearest training volume. Real held-out patients define how similar two different
  patients can be; a synthetic volume above that is flagged as a copy.
* **Report**: the share of synthetic volumes above the threshold and the closest pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.intensity import hu_to_unit
from ..errors import CTSGANError


def embed_volume(hu: np.ndarray, size: int = 16, hu_min: float = -1000.0, hu_max: float = 400.0) -> np.ndarray:
    """Fixed embedding of one HU volume: windowed, area-downsampled to ``size³``, z-scored, flattened (float64)."""
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise CTSGANError(f"expected a 3-D (z, y, x) volume, got shape {hu.shape}")
    x = torch.from_numpy(np.ascontiguousarray(hu_to_unit(hu, hu_min, hu_max), dtype=np.float32))[None, None]
    small = torch.nn.functional.adaptive_avg_pool3d(x, (size, size, size))[0, 0].numpy().astype(np.float64).ravel()
    std = small.std()
    if std < 1e-12:
        return np.zeros_like(small)  # a constant volume correlates with nothing
    return (small - small.mean()) / std


def embed_cohort(cohort, ids: Sequence[str], size: int = 16, hu_min: float = -1000.0,
                 hu_max: float = 400.0) -> np.ndarray:
    """Embeddings of ``ids`` (rows), reading each volume once."""
    rows = []
    for vid in tqdm(list(ids), desc="embedding volumes", leave=False):
        hu, _ = cohort.read(vid)
        rows.append(embed_volume(hu, size, hu_min, hu_max))
    return np.stack(rows) if rows else np.zeros((0, size ** 3))


def nearest(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Highest correlation of each query row with any reference row, and that row's index."""
    if len(reference) == 0:
        raise CTSGANError("memorization check: no training volumes to compare with")
    corr = query @ reference.T / query.shape[1]
    idx = corr.argmax(axis=1)
    return corr[np.arange(len(query)), idx], idx


@dataclass
class MemorizationReport:
    """Result of :func:`memorization_check`.

    Attributes
    ----------
    threshold : float
        Copy threshold (correlation) from real validation → nearest training.
    percentile : float
    val_corr : np.ndarray
        Real validation volumes' correlation with their nearest training volume.
    per_source : dict
        For each synthetic source: ``{"ids", "corr", "nearest_train", "copy_share", "n_copies"}``.
    """

    threshold: float
    percentile: float
    val_corr: np.ndarray
    train_ids: list[str]
    val_ids: list[str]
    per_source: dict[str, dict[str, Any]] = field(default_factory=dict)

    def table(self):
        """One row per synthetic source: volumes, copies above the threshold, share, highest correlation."""
        rows = []
        for name, r in self.per_source.items():
            rows.append({"source": name, "volumes": len(r["ids"]), "copies (corr > threshold)": r["n_copies"],
                         "copy share": round(r["copy_share"], 4), "max corr": round(float(np.max(r["corr"])), 4),
                         "median corr": round(float(np.median(r["corr"])), 4),
                         "threshold": round(self.threshold, 4),
                         "real val median corr": round(float(np.median(self.val_corr)), 4)})
        return pd.DataFrame(rows)

    def closest_pairs(self, k: int = 5):
        """The ``k`` synthetic volumes most similar to a training volume, over all sources."""
        rows = []
        for name, r in self.per_source.items():
            for vid, c, t in zip(r["ids"], r["corr"], r["nearest_train"]):
                rows.append({"source": name, "synthetic id": vid, "nearest train id": t, "corr": float(c),
                             "flagged copy": bool(c > self.threshold)})
        df = pd.DataFrame(rows)
        return df.sort_values("corr", ascending=False).head(k).reset_index(drop=True) if len(df) else df


def memorization_check(real, synthetic: dict[str, Any], size: int = 16, percentile: float = 95.0,
                       hu_min: float = -1000.0, hu_max: float = 400.0, train_split: str = "train",
                       val_split: str = "val", max_volumes: int = 0, seed: int = 0) -> MemorizationReport:
    """Flag synthetic volumes that are near-copies of training patients (Dar et al. 2024).

    Parameters
    ----------
    real : Cohort
        The real cohort with ``train`` and ``val`` splits (the generator was trained on ``train``).
    synthetic : dict
        ``{name: cohort}`` of synthetic cohorts.
    size : int
        Embedding grid side (voxels).
    percentile : float
        Threshold percentile of the real validation → nearest training correlation (Dar et al.: 95).
    max_volumes : int
        Check at most this many seeded-random synthetic volumes per source (0 = all).

    Returns
    -------
    MemorizationReport

    Raises
    ------
    CTSGANError
        Empty train or validation split, or an empty synthetic cohort.
    """
    train_ids = sorted(real.ids(split=train_split))
    val_ids = sorted(real.ids(split=val_split))
    where = getattr(real, "root", "real cohort")
    if not train_ids:
        raise CTSGANError(f"{where}: no {train_split!r} volumes for the memorization check")
    if not val_ids:
        raise CTSGANError(f"{where}: no {val_split!r} volumes to calibrate the copy threshold")
    train = embed_cohort(real, train_ids, size, hu_min, hu_max)
    val = embed_cohort(real, val_ids, size, hu_min, hu_max)
    val_corr, _ = nearest(val, train)
    threshold = float(np.percentile(val_corr, percentile))
    report = MemorizationReport(threshold, percentile, val_corr, train_ids, val_ids)
    rng = np.random.default_rng(seed)
    for name, cohort in synthetic.items():
        ids = sorted(cohort.ids())
        if not ids:
            raise CTSGANError(f"{getattr(cohort, 'root', name)}: synthetic cohort {name!r} is empty")
        if 0 < max_volumes < len(ids):
            ids = sorted(rng.choice(ids, size=max_volumes, replace=False).tolist())
        corr, idx = nearest(embed_cohort(cohort, ids, size, hu_min, hu_max), train)
        n_copies = int((corr > threshold).sum())
        report.per_source[name] = {"ids": ids, "corr": corr, "nearest_train": [train_ids[i] for i in idx],
                                   "n_copies": n_copies, "copy_share": n_copies / len(ids)}
    return report
