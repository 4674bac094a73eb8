"""Nodule geometry on whole volumes: VOIs, shape and blend maps, placement in the lung, measurement (paper §3.1).

Pieces, each usable alone:

- :func:`extract_voi` cuts a cubic VOI around a centre; near the volume edge the volume is reflect-padded first.
- :func:`paste_voi` blends a VOI back with a weight map; voxels where the weight is 0 (everything outside the VOI and
  the VOI's own border) are left bit-identical.
- :func:`ball`, :func:`nodule_blend_weight`, :func:`voi_blend_weight`: the shape channel and the raised-cosine blend
  weights (so no seam shows at the VOI border); :func:`scan_detail` and :func:`noise_touch_up`, the
  scan's own fine detail under a smooth generated centre.
- :func:`place_nodules`: centres inside the lung, at least one radius from the lung border, not overlapping other
  nodules; bounded work, reports a shortfall instead of looping.
- :func:`measure_nodule`: diameter (equivalent sphere) and mean HU of the bright blob at a centre (used by the checks).
- :func:`lung_of`: the lung mask of a cohort volume (its label map when it has one).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..data.phantom import LABELS
from ..data.preprocess import grown_bbox, lung_mask
from ..errors import CTSGANError

SOLID_THRESHOLD_HU = -400.0   # a voxel brighter than this inside the lung counts as nodule (solid/part-solid core)
NODULE_LABEL = LABELS["nodule"]
LUNG_LABEL = LABELS["lung"]


class PlacementError(CTSGANError):
    """The lung cannot hold the requested nodules (raised only when the caller asks for strict placement)."""


# ------------------------------------------------------------------------------------------------ geometry
def _centre_index(size: int) -> int:
    """The VOI voxel that sits on the nodule centre (``extract_voi`` puts the centre at ``size // 2``)."""
    return size // 2


def _reach(size: int) -> int:
    """Voxels from the centre voxel to the nearest VOI face (``size // 2 - 1`` for even sizes)."""
    return size - 1 - size // 2


def ball(size: int, diameter_vox: float, center: Sequence[float] | None = None, supersample: int = 4) -> np.ndarray:
    """Partial-volume occupancy of a sphere of ``diameter_vox`` in a ``size``³ cube, values in [0, 1].

    Each voxel holds the fraction of its volume inside the sphere (``supersample``³ sub-samples per voxel), so a
    sub-voxel nodule is faint and a large one is 1 in its core, as in a real scan. Thresholding at 0.5 gives about
    the voxels within ``diameter_vox / 2`` of the centre. ``center`` (z, y, x, may be fractional) defaults to the
    VOI's centre voxel ``size // 2``.
    """
    c = np.full(3, float(_centre_index(size))) if center is None else np.asarray(center, dtype=float)
    r = diameter_vox / 2.0
    out = np.zeros((size,) * 3, dtype=np.float32)
    lo = np.maximum(np.floor(c - r - 1).astype(int), 0)
    hi = np.minimum(np.ceil(c + r + 2).astype(int), size)
    if np.any(hi <= lo) or r <= 0:
        return out
    g = np.indices(tuple(hi - lo), dtype=np.float32) + lo.reshape(3, 1, 1, 1).astype(np.float32)
    off = (np.arange(supersample, dtype=np.float32) + 0.5) / supersample - 0.5
    acc = np.zeros(g.shape[1:], dtype=np.float32)
    for oz in off:
        dz = (g[0] + oz - c[0]) ** 2
        for oy in off:
            dzy = dz + (g[1] + oy - c[1]) ** 2
            for ox in off:
                acc += dzy + (g[2] + ox - c[2]) ** 2 <= r * r
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = acc / supersample ** 3
    return out


def centre_mask(voi_size: int, mask_size: int) -> np.ndarray:
    """Mask channel: 1 in the centred ``mask_size``³ cube of the VOI."""
    m = np.zeros((voi_size,) * 3, dtype=np.float32)
    lo = voi_size // 2 - mask_size // 2
    m[lo:lo + mask_size, lo:lo + mask_size, lo:lo + mask_size] = 1.0
    return m


def _raised_cosine(t: np.ndarray) -> np.ndarray:
    """1 for t <= 0, 0 for t >= 1, ``0.5 (1 + cos(pi t))`` in between."""
    t = np.clip(t, 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def nodule_blend_weight(voi_size: int, diameter_vox: float, margin_vox: float | None = None) -> np.ndarray:
    """Radial raised-cosine weight: 1 within the nodule radius (+0.5 voxel), falling to 0 over ``margin_vox``.

    ``margin_vox`` defaults to ``max(1.5, radius / 2)`` and is capped so the weight is 0 on the VOI's outer faces.
    """
    r = diameter_vox / 2.0 + 0.5
    margin = max(1.5, diameter_vox / 4.0) if margin_vox is None else float(margin_vox)
    margin = max(1.0, min(margin, _reach(voi_size) - r))
    if _reach(voi_size) - r < 1.0:
        raise CTSGANError(f"nodule diameter {diameter_vox} vox does not fit a {voi_size}³ VOI with a blend margin")
    g = np.indices((voi_size,) * 3, dtype=np.float32) - _centre_index(voi_size)
    dist = np.sqrt((g ** 2).sum(0))
    return _raised_cosine((dist - r) / margin)


def voi_blend_weight(voi_size: int, mask_size: int) -> np.ndarray:
    """Separable raised-cosine weight: 1 on the centre cube, 0 on the VOI faces (Jin-style whole-centre paste)."""
    x = np.abs(np.arange(voi_size, dtype=np.float32) - _centre_index(voi_size))
    inner, outer = mask_size / 2.0, _reach(voi_size)
    w1 = _raised_cosine((x - inner) / max(outer - inner, 1e-6))
    return (w1[:, None, None] * w1[None, :, None] * w1[None, None, :]).astype(np.float32)


def centre_feather_weight(voi_size: int, mask_size: int, feather_vox: float = 0.0) -> np.ndarray:
    """Jin-style paste-back weight: 1 over the centre cube, a raised-cosine feather across its border, 0 beyond.

    Per axis the weight falls from 1 at ``mask_size / 2 - feather / 2`` voxels from the centre voxel to 0 at
    ``mask_size / 2 + feather / 2`` (``feather_vox`` 0 means ``max(2, mask_size / 4)``; capped so the weight is 0
    on the VOI's faces); the 3D weight is the product of the three axes. Where it is 0 nothing is written.
    """
    f = max(2.0, mask_size / 4.0) if feather_vox <= 0 else float(feather_vox)
    half = mask_size / 2.0
    outer = min(half + f / 2.0, float(_reach(voi_size)))
    inner = max(min(half - f / 2.0, outer - 1.0), 0.0)
    x = np.abs(np.arange(voi_size, dtype=np.float32) - _centre_index(voi_size))
    w1 = _raised_cosine((x - inner) / max(outer - inner, 1e-6))
    return (w1[:, None, None] * w1[None, :, None] * w1[None, None, :]).astype(np.float32)


def scan_detail(voi_hu: np.ndarray, sigma_vox: float) -> np.ndarray:
    """The fine detail of a VOI: ``voi_hu`` minus its Gaussian blur of ``sigma_vox`` (HU, same shape).

    σ = 1 voxel keeps frequencies above about 0.13 cycles/voxel (half power), where CT noise lives, and drops anatomy
    larger than about 4 voxels. ``sigma_vox`` 0 gives zeros.
    """
    v = np.asarray(voi_hu, dtype=np.float32)
    if sigma_vox <= 0:
        return np.zeros_like(v)
    return (v - ndi.gaussian_filter(v, float(sigma_vox), mode="reflect")).astype(np.float32)


def robust_sd(x: np.ndarray) -> float:
    """1.4826 × the median absolute deviation: the SD of the Gaussian part of ``x``, blind to sparse outliers."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else 0.0


def noise_touch_up(generated_hu: np.ndarray, voi_hu: np.ndarray, inside: np.ndarray, sigma_vox: float,
                   clip_sd: float = 3.0) -> np.ndarray:
    """Top the generated VOI's grain up to the scan's, with the scan's own noise (the noise touch-up).

    The generator's centre is often smoother than CT noise (the L1 term pulls it to the mean); a discriminator, or
    a reader, sees the smooth patch at once. CT-GAN (Mirsky et al. 2019) adds noise touch-ups after pasting for the
    same reason. Here the missing grain is taken from the scan itself, so its correlation and level are the scan's:

    - the scan's fine detail (:func:`scan_detail`), with the values beyond ``clip_sd`` robust SDs set to 0: those
      are edges of anatomy (a vessel wall), not noise, and copying them would draw a ghost of what the generator
      replaced;
    - added with ``k = sqrt(max(0, sd_scan² − sd_gen²)) / sd_scan``, both SDs robust (:func:`robust_sd`) over
      ``inside`` (the centre the generator rewrote), so a generator that already draws the grain gets none added
      (k = 0) and a smooth one gets all of it (k = 1).

    Parameters
    ----------
    generated_hu, voi_hu : ndarray
        The generator's VOI and the scan's VOI at the same place (HU, same shape).
    inside : ndarray of bool or {0, 1}
        Where the two SDs are measured.
    sigma_vox : float
        The detail's Gaussian σ (:func:`scan_detail`); 0: ``generated_hu`` unchanged.
    clip_sd : float
        Detail beyond this many robust SDs counts as anatomy.
    """
    g = np.asarray(generated_hu, dtype=np.float32)
    if sigma_vox <= 0:
        return g
    detail = scan_detail(voi_hu, sigma_vox)
    sel = np.asarray(inside) > 0
    sd_scan, sd_gen = robust_sd(detail[sel]), robust_sd(scan_detail(g, sigma_vox)[sel])
    if sd_scan <= 0:
        return g
    k = np.sqrt(max(sd_scan ** 2 - sd_gen ** 2, 0.0)) / sd_scan
    noise = np.where(np.abs(detail) <= clip_sd * sd_scan, detail, 0.0)
    return (g + np.float32(k) * noise).astype(np.float32)


def _voi_slices(center: Sequence[int], size: int) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    lo = [int(c) - size // 2 for c in center]
    return tuple(slice(a, a + size) for a in lo), tuple(lo)


def extract_voi(volume: np.ndarray, center: Sequence[float], size: int, pad_mode: str = "reflect") -> np.ndarray:
    """Cut a ``size``³ VOI whose voxel ``size // 2`` sits on ``center`` (rounded).

    Near the edge the volume is padded with ``pad_mode`` (reflect: anatomy continues plausibly) before cutting.

    Raises
    ------
    CTSGANError
        If the centre lies outside the volume.
    """
    c = [int(round(float(v))) for v in center]
    if any(not 0 <= ci < n for ci, n in zip(c, volume.shape)):
        raise CTSGANError(f"VOI centre {c} lies outside the volume of shape {tuple(volume.shape)}")
    (sz, sy, sx), lo = _voi_slices(c, size)
    pad = [(max(0, -l), max(0, l + size - n)) for l, n in zip(lo, volume.shape)]
    if any(p for pp in pad for p in pp):
        mode = pad_mode
        if mode == "reflect" and any(max(p) >= n for p, n in zip(pad, volume.shape)):
            mode = "symmetric" if all(max(p) <= n for p, n in zip(pad, volume.shape)) else "edge"
        padded = np.pad(volume, pad, mode=mode)
        lo = [l + p[0] for l, p in zip(lo, pad)]
        return padded[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size].copy()
    return volume[sz, sy, sx].copy()


def paste_voi(volume: np.ndarray, voi: np.ndarray, center: Sequence[float], weight: np.ndarray) -> np.ndarray:
    """Blend ``voi`` into a copy of ``volume`` at ``center``: ``(1 - w) * volume + w * voi`` where ``w > 0``.

    The part of the VOI that falls outside the volume (it came from padding) is cropped away. Voxels with ``w == 0``
    are not written, so they stay bit-identical.
    """
    out = volume.copy()
    size = voi.shape[0]
    c = [int(round(float(v))) for v in center]
    _, lo = _voi_slices(c, size)
    src, dst = [], []
    for l, n in zip(lo, volume.shape):
        a, b = max(l, 0), min(l + size, n)
        dst.append(slice(a, b))
        src.append(slice(a - l, b - l))
    region = out[tuple(dst)]
    w = weight[tuple(src)]
    v = voi[tuple(src)].astype(out.dtype)
    sel = w > 0
    region[sel] = (1.0 - w[sel]) * region[sel] + w[sel] * v[sel]
    return out


# ------------------------------------------------------------------------------------------------ placement
def place_nodules(lung_mask: np.ndarray, diameters_vox: Sequence[float], rng: np.random.Generator,
                  existing: Iterable[dict | Sequence[float]] = (), max_tries: int = 200,
                  gap_vox: float = 1.0) -> tuple[list[list[int]], int]:
    """Choose nodule centres inside the lung.

    Rules: the centre is a lung voxel at least one radius from the lung border (Euclidean distance transform), and
    no two nodules (new or ``existing``) come closer than the sum of their radii plus ``gap_vox``.

    Up to ``max_tries`` random lung voxels are tried per nodule (cheap on large volumes); if none fits, every valid
    voxel is enumerated once, so the answer is decisive: a nodule that cannot fit is counted in ``shortfall`` and the
    function returns, never loops.

    Parameters
    ----------
    lung_mask : ndarray of bool, (z, y, x)
    diameters_vox : sequence of float
        Requested diameters; larger ones are placed first (they are the hardest to fit).
    rng : numpy Generator
    existing : iterable
        Nodules already present: dicts with ``center_vox`` and ``diameter_vox``, or ``(z, y, x, diameter)``.
    max_tries : int
        Random draws per nodule before falling back to enumeration.

    Returns
    -------
    centers : list of [z, y, x]
        In the order of ``diameters_vox``; a nodule that did not fit is omitted.
    shortfall : int
        How many requested nodules could not be placed.
    """
    result = place_nodules_indexed(lung_mask, diameters_vox, rng, existing, max_tries, gap_vox)
    centers = [result[k] for k in range(len(diameters_vox)) if k in result]
    return centers, len(diameters_vox) - len(centers)


def lung_edt(lung: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.distance_transform_edt(lung)``, computed on the lung's bounding box only.

    The box is widened by one background voxel on every side that does not touch the array's edge. The result is
    exactly the full transform: a background voxel outside the box, clamped onto the box, lands on that background
    margin and is no farther from any lung voxel. The lungs fill a fraction of a chest CT's field: 7.8× faster on a
    224³ phantom (1.87 → 0.24 s; the whole-array transform was a third of an injected volume's CPU time).
    """
    lung = np.asarray(lung, dtype=bool)
    out = np.zeros(lung.shape, dtype=np.float64)
    if not lung.any():
        return out
    box = grown_bbox(lung, [1] * lung.ndim)
    out[box] = ndi.distance_transform_edt(lung[box])
    return out


def place_nodules_indexed(lung_mask, diameters_vox, rng, existing=(), max_tries: int = 200,
                          gap_vox: float = 1.0) -> dict:
    """:func:`place_nodules` keyed by request index (so callers know which diameters were placed)."""
    lung = np.asarray(lung_mask, dtype=bool)
    if lung.ndim != 3:
        raise CTSGANError(f"lung mask must be 3D, got shape {lung.shape}")
    edt = lung_edt(lung)
    placed: list[tuple[np.ndarray, float]] = []
    for e in existing:
        if isinstance(e, dict):
            placed.append((np.asarray(e["center_vox"], dtype=float), float(e.get("diameter_vox", 0.0)) / 2.0))
        else:
            placed.append((np.asarray(e[:3], dtype=float), float(e[3]) / 2.0))
    lung_idx = np.argwhere(lung)
    order = np.argsort(-np.asarray(diameters_vox, dtype=float), kind="stable")
    result: dict[int, list[int]] = {}
    for k in order:
        r = float(diameters_vox[k]) / 2.0

        def ok(p: np.ndarray) -> bool:
            return edt[tuple(p)] >= r and all(np.linalg.norm(p - c) >= r + rc + gap_vox for c, rc in placed)

        chosen = None
        if len(lung_idx):
            for p in lung_idx[rng.integers(0, len(lung_idx), size=max(0, max_tries))]:
                if ok(p):
                    chosen = p
                    break
        if chosen is None:  # decisive fallback: enumerate every valid voxel once
            cand = np.argwhere(edt >= max(r, 1e-6))
            for c, rc in placed:
                if len(cand):
                    cand = cand[np.linalg.norm(cand - c, axis=1) >= r + rc + gap_vox]
            if len(cand):
                chosen = cand[rng.integers(0, len(cand))]
        if chosen is not None:
            result[int(k)] = [int(v) for v in chosen]
            placed.append((np.asarray(chosen, dtype=float), r))
    return result


# ------------------------------------------------------------------------------------------------ measurement
def measure_nodule(hu: np.ndarray, center: Sequence[float], search_radius_vox: float,
                   threshold_hu: float | None = None) -> dict:
    """Measure the bright blob at ``center``: voxels above a threshold connected to the centre, within
    ``search_radius_vox``.

    The threshold defaults to half-maximum: midway between the local background (25th percentile of the cube) and
    the centre voxel, floored at :data:`SOLID_THRESHOLD_HU` (so a faint blob does not count as a nodule).

    Returns
    -------
    dict with ``n_voxels``, ``diameter_vox`` (equivalent sphere ``(6 V / pi)^(1/3)``), ``mean_hu`` (whole blob,
    partial-volume rim included), ``core_hu`` (voxels at least one voxel inside the equivalent sphere: the density a
    radiologist would read for solid vs ground-glass) and ``threshold_hu``.
    """
    size = int(2 * np.ceil(search_radius_vox) + 3)
    voi = extract_voi(hu, center, size)
    c = size // 2
    if threshold_hu is None:
        # background: the darker quarter of the cube (lung), robust to a chest wall or vessel in the cube
        threshold_hu = max(SOLID_THRESHOLD_HU, 0.5 * (float(np.percentile(voi, 25)) + float(voi[c, c, c])))
    sel = (voi > threshold_hu) & (ball(size, 2 * search_radius_vox) >= 0.5)
    lab, _ = ndi.label(sel)
    if lab[c, c, c] == 0:
        return {"n_voxels": 0, "diameter_vox": 0.0, "mean_hu": float("nan"), "core_hu": float("nan"),
                "threshold_hu": float(threshold_hu)}
    comp = lab == lab[c, c, c]
    n = int(comp.sum())
    d_eq = float((6.0 * n / np.pi) ** (1 / 3))
    core = comp & (ball(size, max(1.0, d_eq - 2.0)) >= 0.5)
    return {"n_voxels": n, "diameter_vox": d_eq, "mean_hu": float(voi[comp].mean()),
            "core_hu": float(voi[core].mean()) if core.any() else float(voi[c, c, c]),
            "threshold_hu": float(threshold_hu)}


# ------------------------------------------------------------------------------------------------ lung
def lung_of(hu: np.ndarray, label: np.ndarray | None) -> np.ndarray:
    """Lung mask: the phantom label when there is one (exact), else the classical mask from preprocessing."""
    if label is not None and (label == LUNG_LABEL).any():
        return (label == LUNG_LABEL) | (label == NODULE_LABEL)
    return np.asarray(lung_mask(hu), dtype=bool)
