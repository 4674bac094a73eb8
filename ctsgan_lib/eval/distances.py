"""Metrics from features and volumes: FID and IS (equal to torch-fidelity's), and beside them (issue 21) KID, 3D MMD
and MS-SSIM from torch-fidelity and torchmetrics rather than by hand.

* :func:`kid_from_features`: KID (unbiased MMD², cubic polynomial kernel) of two feature sets, torch-fidelity's
  ``kid_features_to_metric``, with the subset size set to the smaller set (≤ 1000) so it works per scan pair;
  on slab features of the 3D encoder the same function gives the 3D MMD;
* :func:`msssim_3d`: 3D MS-SSIM between two volumes (torchmetrics), the diversity score of Medical Diffusion
  (mean over pairs of generated volumes, beside the same over pairs of real ones: lower = more diverse).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from ..data.intensity import hu_to_unit
from ..errors import CTSGANError


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets (rows = samples), equal to torch-fidelity's computation.

    With ``A_i`` the centred features and ``Σ_i = A_iᵀA_i/(n_i-1)``, the non-zero eigenvalues of ``Σ_1Σ_2`` are the
    squared singular values of ``A_1A_2ᵀ/√((n_1-1)(n_2-1))``, so ``tr √(Σ_1Σ_2)`` is their sum. Exact, and cheap when
    ``n_i`` is small; for large sets torch-fidelity's own ``fid_statistics_to_metric`` is used.
    """
    f1 = np.asarray(f1)
    f2 = np.asarray(f2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise CTSGANError(f"feature sets do not match: {f1.shape} vs {f2.shape}")
    n1, n2 = len(f1), len(f2)
    if n1 < 2 or n2 < 2:
        raise CTSGANError(f"FID needs at least 2 slices per side, got {n1} and {n2}")
    if min(n1, n2) >= f1.shape[1]:
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric  # torch-fidelity: 1.6 s to import (torchvision)

        s1 = fid_features_to_statistics(torch.from_numpy(f1))
        s2 = fid_features_to_statistics(torch.from_numpy(f2))
        return float(fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"])
    a = f1.astype(np.float64)
    b = f2.astype(np.float64)
    diff = a.mean(0) - b.mean(0)
    a = a - a.mean(0)
    b = b - b.mean(0)
    tr1 = float((a * a).sum()) / (n1 - 1)
    tr2 = float((b * b).sum()) / (n2 - 1)
    sv = np.linalg.svd(a @ b.T, compute_uv=False) / math.sqrt((n1 - 1) * (n2 - 1))
    return float(diff @ diff + tr1 + tr2 - 2.0 * sv.sum())


def is_from_logits(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> float:
    """Inception Score from unbiased logits via torch-fidelity's ``isc_features_to_metric`` (shuffled, seeded)."""
    from torch_fidelity.metric_isc import isc_features_to_metric  # torch-fidelity: 1.6 s to import (torchvision)

    logits = np.asarray(logits)
    if splits < 1 or len(logits) < splits:
        raise CTSGANError(f"Inception Score with {splits} splits needs at least {splits} slices, got {len(logits)}; "
                          "lower fidelity.isc_splits or raise fidelity.max_slices")
    out = isc_features_to_metric(torch.from_numpy(logits), splits, True, int(seed))
    return float(out["inception_score_mean"])


#: MS-SSIM's standard scale weights (Wang et al. 2003); fewer scales at small sizes, renormalised to sum 1
MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MSSSIM_KERNEL = 5


def kid_from_features(f1: np.ndarray, f2: np.ndarray, subsets: int = 50, seed: int = 0,
                      max_subset: int = 1000) -> float:
    """KID (mean over ``subsets`` random subsets) of two feature sets with torch-fidelity's implementation."""
    from torch_fidelity.metric_kid import kid_features_to_metric  # torch-fidelity: 1.6 s to import (torchvision)

    n = min(len(f1), len(f2), max_subset)
    if n < 2:
        raise CTSGANError(f"KID needs at least 2 samples per side, got {len(f1)} and {len(f2)}")
    out = kid_features_to_metric(torch.from_numpy(np.asarray(f1, np.float32)),
                                 torch.from_numpy(np.asarray(f2, np.float32)), kid_subsets=int(subsets),
                                 kid_subset_size=int(n), rng_seed=int(seed), verbose=False)
    return float(out["kernel_inception_distance_mean"])


def msssim_scales(side: int, kernel: int = MSSSIM_KERNEL) -> int:
    """Scales a side of ``side`` voxels supports (each halves it; the smallest must still hold ~2 kernels)."""
    return int(max(1, min(len(MSSSIM_BETAS), math.floor(math.log2(max(1, side) / (2 * (kernel - 1)))) + 1)))


def msssim_3d(hu_a: np.ndarray, hu_b: np.ndarray, hu_min: float, hu_max: float) -> float:
    """3D MS-SSIM of two HU volumes windowed to [0, 1] (torchmetrics, Gaussian kernel 5, ReLU-normalised)."""
    a = torch.from_numpy(hu_to_unit(np.asarray(hu_a, np.float32), hu_min, hu_max))[None, None]
    b = torch.from_numpy(hu_to_unit(np.asarray(hu_b, np.float32), hu_min, hu_max))[None, None]
    if a.shape != b.shape:
        raise CTSGANError(f"MS-SSIM needs volumes of one shape, got {tuple(a.shape[2:])} and {tuple(b.shape[2:])}")
    k = msssim_scales(min(a.shape[2:]))
    betas = tuple(w / sum(MSSSIM_BETAS[:k]) for w in MSSSIM_BETAS[:k])
    v = multiscale_structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=MSSSIM_KERNEL, betas=betas,
                                                       normalize="relu")
    return float(v)
