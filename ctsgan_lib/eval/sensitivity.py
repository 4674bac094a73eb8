"""Sensitivity suite for a fidelity feature space (issue 21): does the metric rank a worse volume as worse?

Graded corruptions of held-out real volumes are compared, pair by pair, with other (clean) held-out real volumes;
the metric must rise monotonically with severity above the real–real baseline (clean vs clean, the same pairs'
partners). Reported per (feature space, variant, corruption): the mean at each severity, the relative FD (mean /
real–real mean), Spearman's rank correlation of the per-pair values with severity, and the real–real coefficient of
variation. Corruptions and the variants that can see them:

* ``blur`` (in-plane Gaussian, σ in voxels), ``noise`` (added in-plane-correlated Gaussian noise, σ in HU),
  ``hu_shift`` (HU offset), ``lung_to_soft`` (a share of the lung field, from the caudal end, replaced by soft tissue
  at 40 HU with noise): every variant;
* ``z_shuffle`` (a share of the slices permuted along z) and ``cc_flip`` (the volume reversed along z): only
  variants that see z order, the coronal view (2.5D) and the 3D encoder. A set of axial slices is unchanged by them
  by construction.

Severities. Level 1 lies beyond the cohort's own scanner variation (the phantom's two scanner domains differ by
~20–30 HU of noise σ and about a voxel of blur): inside it a corruption can move a volume *toward* its partner's
domain and legitimately lower the distance (measured: an in-plane blur of σ 0.6 voxels and a +30 HU shift lowered the
mean pair FID below the baseline at smoke and demo). The flip has one level: partial flips (the cranial 10/20/30 %
reversed) were not a graded scale (3D relative FD 1.00 / 1.61 / 1.38 at demo: a partial flip leaves a junction that
is stranger than the clean full flip).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage, stats

from ..data.preprocess import lung_mask
from ..errors import CTSGANError
from .domain import Domain3DRunner, DomainExtractor, lung_field_extent
from .distances import fid_from_features
from .fidelity import FeatureRunner, volume_slices
from .inception import Extractor

#: corruption → severities (levels 1, 2, 3; level 0 is the clean real–real baseline)
SEVERITIES: dict[str, tuple[float, ...]] = {
    "blur": (1.0, 2.0, 4.0),            # σ in voxels, in-plane
    "noise": (30.0, 60.0, 120.0),       # σ in HU of in-plane-correlated noise (1-voxel Gaussian kernel)
    "hu_shift": (50.0, 150.0, 400.0),   # HU added
    "z_shuffle": (0.1, 0.25, 0.5),      # share of the slices permuted along z (saturates past ~0.5: measured)
    "cc_flip": (1.0,),                  # the whole volume reversed along z: one level (see the module docstring)
    "lung_to_soft": (0.25, 0.5, 1.0),   # share of the lung field (from the caudal end) turned to soft tissue
}
Z_ORDER_ONLY = ("z_shuffle", "cc_flip")


def corruption_applies(kind: str, variant: str) -> bool:
    """Whether a variant can see a corruption (axial slice sets are blind to z order by construction)."""
    return not (kind in Z_ORDER_ONLY and variant == "axial")


def corrupt(hu: np.ndarray, kind: str, level: float, seed: int = 0,
            spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """One corrupted copy of a HU volume (z, y, x); deterministic given ``seed``."""
    hu = np.asarray(hu, dtype=np.float32)
    rng = np.random.default_rng(seed)
    nz = hu.shape[0]
    if kind == "blur":
        return ndimage.gaussian_filter(hu, sigma=(0.0, level, level))
    if kind == "noise":
        n = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), sigma=(0.0, 1.0, 1.0))
        return hu + n * (level / max(float(n.std()), 1e-6))
    if kind == "hu_shift":
        return hu + np.float32(level)
    if kind == "z_shuffle":
        k = max(2, int(round(level * nz)))
        idx = np.sort(rng.choice(nz, size=k, replace=False))
        out = hu.copy()
        out[idx] = hu[rng.permutation(idx)]
        return out
    if kind == "cc_flip":
        k = max(2, int(round(level * nz)))
        out = hu.copy()
        out[nz - k:] = hu[nz - k:][::-1]
        return out
    if kind == "lung_to_soft":
        mask = lung_mask(hu, spacing_mm)
        z0, z1 = lung_field_extent(hu)
        zcut = z0 + int(round(level * (z1 - z0 + 1)))
        mask[zcut:] = False
        out = hu.copy()
        out[mask] = 40.0 + 20.0 * rng.standard_normal(int(mask.sum())).astype(np.float32)
        return out
    raise CTSGANError(f"unknown corruption {kind!r}; choose from {', '.join(SEVERITIES)}")


@dataclass
class FeatureSpace:
    """A named feature space: ``features(hu, variant) -> (n, d)`` for each of its ``variants``."""

    name: str
    features: Callable[[np.ndarray, str], np.ndarray]
    variants: tuple[str, ...]
    meta: dict[str, Any]


def slice_space(extractor: Extractor, views: Sequence[str] = ("axial", "coronal"), max_slices: int = 0,
                hu_min: float = -1000.0, hu_max: float = 400.0, device: str | None = None,
                batch: int = 64) -> FeatureSpace:
    """A slice feature space (torch-fidelity extractor: domain 2D CNN or Inception) with one variant per view."""
    runner = FeatureRunner(extractor, batch, device)

    def features(hu: np.ndarray, view: str) -> np.ndarray:
        return runner(volume_slices(hu, view, max_slices, hu_min, hu_max))[extractor.fid_layer]

    return FeatureSpace(extractor.label, features, tuple(views),
                        {"extractor": extractor.name, "kind": extractor.kind, "sha256": extractor.sha256,
                         "max_slices": max_slices, "runner": runner})


def volume_space(extractor3d: DomainExtractor, hu_min: float = -1000.0, hu_max: float = 400.0,
                 device: str | None = None) -> FeatureSpace:
    """The 3D encoder's slab-feature space (one variant, ``3d``)."""
    runner = Domain3DRunner(extractor3d, device)
    return FeatureSpace(f"{extractor3d.name} [domain, sha256 {extractor3d.sha256[:12]}]",
                        lambda hu, _variant: runner(hu, hu_min, hu_max), ("3d",),
                        {"extractor": extractor3d.name, "kind": "domain", "sha256": extractor3d.sha256})


def draw_suite_pairs(n_volumes: int, n_corrupted: int) -> list[tuple[int, int]]:
    """Pairs (a, b), a among the first ``n_corrupted`` volumes (the ones corrupted), b any other volume."""
    if n_volumes < 2:
        raise CTSGANError(f"the sensitivity suite needs at least 2 held-out volumes, got {n_volumes}")
    return [(a, b) for a in range(min(n_corrupted, n_volumes)) for b in range(n_volumes) if b != a]


def run_suite(space: FeatureSpace, volumes: Sequence[np.ndarray], spacing_mm: Sequence[float],
              n_corrupted: int = 3, corruptions: Sequence[str] = tuple(SEVERITIES), seed: int = 0,
              metric: Callable[[np.ndarray, np.ndarray], float] = fid_from_features) -> list[dict[str, Any]]:
    """Per-pair metric values of every (variant, corruption, level), level 0 = clean real–real.

    Returns
    -------
    list of dict
        ``space``, ``variant``, ``corruption`` (``none`` for the baseline), ``level`` (0..3), ``severity``,
        ``a``, ``b``, ``value``.
    """
    pairs = draw_suite_pairs(len(volumes), n_corrupted)
    records: list[dict[str, Any]] = []
    for variant in space.variants:
        clean = [space.features(v, variant) for v in volumes]
        for a, b in pairs:
            records.append({"space": space.name, "variant": variant, "corruption": "none", "level": 0,
                            "severity": 0.0, "a": a, "b": b, "value": metric(clean[a], clean[b])})
        for kind in corruptions:
            if not corruption_applies(kind, variant):
                continue
            for lvl, sev in enumerate(SEVERITIES[kind], start=1):
                bad = {a: space.features(corrupt(volumes[a], kind, sev, seed + a, spacing_mm), variant)
                       for a in sorted({a for a, _ in pairs})}
                for a, b in pairs:
                    records.append({"space": space.name, "variant": variant, "corruption": kind, "level": lvl,
                                    "severity": float(sev), "a": a, "b": b, "value": metric(bad[a], clean[b])})
    return records


def summarise_suite(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (space, variant, corruption): means per level, relative FD, monotone flag, Spearman ρ, and the
    real–real baseline's mean, std and coefficient of variation."""
    out = []
    keys = sorted({(r["space"], r["variant"]) for r in records})
    for space, variant in keys:
        rec = [r for r in records if r["space"] == space and r["variant"] == variant]
        base = np.asarray([r["value"] for r in rec if r["level"] == 0], dtype=np.float64)
        bm, bs = float(base.mean()), float(base.std(ddof=1)) if len(base) > 1 else 0.0
        for kind in dict.fromkeys(r["corruption"] for r in rec if r["level"] > 0):
            levels = sorted({r["level"] for r in rec if r["corruption"] == kind})
            vals = [base] + [np.asarray([r["value"] for r in rec if r["corruption"] == kind and r["level"] == lvl])
                             for lvl in levels]
            means = [float(v.mean()) for v in vals]
            lv = np.concatenate([np.full(len(v), i) for i, v in enumerate(vals)])
            rho = float(stats.spearmanr(lv, np.concatenate(vals)).statistic)
            out.append({"space": space, "variant": variant, "corruption": kind, "means": means,
                        "relative_fd": [m / bm if bm > 0 else float("nan") for m in means],
                        "monotone": bool(all(means[i] < means[i + 1] for i in range(len(means) - 1))),
                        "spearman": rho, "baseline_mean": bm, "baseline_std": bs,
                        "baseline_cv": bs / bm if bm > 0 else float("nan")})
    return out


def seed_stability(summary_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Across extractor seeds, per (extractor kind, variant, corruption): monotone under every seed, the spread of
    the relative FD at the strongest level ((max − min) / mean), and whether the corruptions' ranking (by relative FD
    at the strongest level) is the same under every seed. Rows need ``kind`` and ``seed`` keys beside
    :func:`summarise_suite`'s."""
    out = []
    for kind, variant in sorted({(r["kind"], r["variant"]) for r in summary_rows}):
        rows = [r for r in summary_rows if r["kind"] == kind and r["variant"] == variant]
        seeds = sorted({r["seed"] for r in rows})
        rankings = {s: [r["corruption"] for r in sorted((r for r in rows if r["seed"] == s),
                                                        key=lambda r: -r["relative_fd"][-1])] for s in seeds}
        same_rank = len({tuple(v) for v in rankings.values()}) == 1
        base = {s: next(r for r in rows if r["seed"] == s) for s in seeds}
        rr = np.asarray([base[s]["baseline_mean"] for s in seeds])
        cv = np.asarray([base[s]["baseline_cv"] for s in seeds])
        for kind_c in dict.fromkeys(r["corruption"] for r in rows):
            per = [r for r in rows if r["corruption"] == kind_c]
            top = np.asarray([r["relative_fd"][-1] for r in per])
            out.append({"kind": kind, "variant": variant, "corruption": kind_c, "seeds": seeds,
                        "monotone_all_seeds": all(r["monotone"] for r in per),
                        "spearman_mean": float(np.mean([r["spearman"] for r in per])),
                        "relative_fd_top": top.tolist(),
                        "relative_fd_top_spread": float((top.max() - top.min()) / top.mean()),
                        "same_corruption_ranking": same_rank, "ranking": rankings[seeds[0]],
                        "real_real_cv_mean": float(cv.mean()),
                        "real_real_fid_by_seed": rr.tolist(),
                        "real_real_fid_seed_ratio": float(rr.max() / rr.min()) if rr.min() > 0 else float("inf")})
    return out
