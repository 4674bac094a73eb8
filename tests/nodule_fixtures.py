"""A tiny chest-like cohort with known nodule-free truth, for the nodule tests (fast, independent of the phantom).

Each volume: air, a soft-tissue body (40 HU), two lungs (-850 HU) with a few vessels (40 HU), white noise. lidc-like
volumes carry 1–2 solid nodules (30 HU, label 7); the nodule-free truth of every volume is kept beside it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ctsgan_lib.data.cohort import CohortWriter

SIZE = 32


def chest(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(hu, label) of a nodule-free toy chest."""
    z, y, x = np.indices((size,) * 3, dtype=np.float32) - (size - 1) / 2
    s = size / 32.0
    hu = np.full((size,) * 3, -1000.0, np.float32)
    lab = np.zeros((size,) * 3, np.uint8)
    body = (y / (12 * s)) ** 2 + (x / (15 * s)) ** 2 <= 1
    hu[body], lab[body] = 40.0, 1
    for sx in (-1, 1):
        lung = ((z / (13 * s)) ** 2 + (y / (8 * s)) ** 2 + ((x - sx * 7 * s) / (5.5 * s)) ** 2) <= 1
        hu[lung], lab[lung] = -850.0, 3
    for _ in range(4):  # vessels: short straight tubes inside the lung
        p = np.argwhere(lab == 3)[rng.integers(0, (lab == 3).sum())]
        axis = rng.integers(0, 3)
        tube = np.zeros_like(lab, bool)
        sl = [slice(int(v), int(v) + 1) for v in p]
        sl[axis] = slice(max(0, int(p[axis]) - 4), int(p[axis]) + 4)
        tube[tuple(sl)] = True
        tube &= lab == 3
        hu[tube], lab[tube] = 40.0, 4
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return hu, lab


def add_nodule(hu: np.ndarray, lab: np.ndarray, center, diameter_vox: float, nodule_hu: float = 30.0) -> None:
    g = np.indices(hu.shape, dtype=np.float32)
    r = np.sqrt(sum((g[a] - center[a]) ** 2 for a in range(3)))
    sel = r <= diameter_vox / 2
    hu[sel] = nodule_hu + (hu[sel] - np.round(hu[sel] / 10) * 10)  # keep some noise texture
    lab[sel] = 7


def make_cohort(root: Path, n_lidc: int = 6, n_nlst: int = 4, seed: int = 0) -> tuple[Path, dict]:
    """Write the toy cohort; returns (cohort folder, {id: nodule-free truth HU})."""
    from ctsgan_lib.nodules import place_nodules

    rng = np.random.default_rng(seed)
    truth = {}
    with CohortWriter(root, compress=False) as w:
        for i in range(n_lidc + n_nlst):
            hu, lab = chest(rng)
            rid = f"p{i:02d}"
            truth[rid] = hu.copy()
            nodules = []
            if i < n_lidc:
                ds = list(rng.choice([3.0, 4.0, 5.0], size=int(rng.integers(1, 3))))
                centers, _ = place_nodules(lab == 3, ds, rng)
                for c, d in zip(centers, ds):
                    add_nodule(hu, lab, c, d)
                    nodules.append({"center_vox": c, "diameter_vox": float(d), "diameter_mm": float(d),
                                    "kind": "solid", "action": "original"})
            split = "test" if i in (n_lidc - 1, n_lidc + n_nlst - 1) else "train"
            w.write(rid, hu, (1.0, 1.0, 1.0), label=lab, source="phantom",
                    domain="lidc-like" if i < n_lidc else "nlst-like", split=split, nodules=nodules)
    return Path(root), truth
