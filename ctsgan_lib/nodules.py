"""Nodule injection and erasure on whole volumes (inference side of the nodule cGANs, paper §3.1, Fig B.1/B.2).

Pieces, each usable alone:

- :func:`extract_voi` cuts a cubic VOI around a centre; near the volume edge the volume is reflect-padded first.
- :func:`paste_voi` blends a VOI back with a weight map; voxels where the weight is 0 (everything outside the VOI and
  the VOI's own border) are left bit-identical.
- :func:`ball`, :func:`nodule_blend_weight`, :func:`voi_blend_weight`: the shape channel and the raised-cosine blend
  weights (so no seam shows at the VOI border).
- :func:`place_nodules`: centres inside the lung, at least one radius from the lung border, not overlapping other
  nodules; bounded work, reports a shortfall instead of looping.
- :class:`NoduleInjector` / :class:`NoduleEraser`: load a trained generator and paint / remove nodules.
- :func:`measure_nodule`: diameter (equivalent sphere) and mean HU of the bright blob at a centre (used by the checks).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .data.intensity import hu_to_model, model_to_hu
from .data.preprocess import grown_bbox
from .errors import CTSGANError
from .models.nodule_cgan import NoduleGenerator
from .utils.checkpoint import latest_checkpoint, load_checkpoint, load_state_strict

SOLID_THRESHOLD_HU = -400.0   # a voxel brighter than this inside the lung counts as nodule (solid/part-solid core)


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
    result = _place(lung_mask, diameters_vox, rng, existing, max_tries, gap_vox)
    centers = [result[k] for k in range(len(diameters_vox)) if k in result]
    return centers, len(diameters_vox) - len(centers)


def lung_edt(lung: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.distance_transform_edt(lung)``, computed on the lung's bounding box only.

    The box is widened by one background voxel on every side that does not touch the array's edge. The result is
    exactly the full transform: a background voxel outside the box, clamped onto the box, lands on that background
    margin and is no farther from any lung voxel. The lungs fill a fraction of a chest CT's field: 7.8× faster on a
    224³ phantom (1.87 → 0.24 s; the whole-array transform was a third of an injected volume's CPU time).
    """
    from scipy.ndimage import distance_transform_edt

    lung = np.asarray(lung, dtype=bool)
    out = np.zeros(lung.shape, dtype=np.float64)
    if not lung.any():
        return out
    box = grown_bbox(lung, [1] * lung.ndim)
    out[box] = distance_transform_edt(lung[box])
    return out


def _place(lung_mask, diameters_vox, rng, existing=(), max_tries: int = 200, gap_vox: float = 1.0) -> dict:
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
    from scipy.ndimage import label

    size = int(2 * np.ceil(search_radius_vox) + 3)
    voi = extract_voi(hu, center, size)
    c = size // 2
    if threshold_hu is None:
        # background: the darker quarter of the cube (lung), robust to a chest wall or vessel in the cube
        threshold_hu = max(SOLID_THRESHOLD_HU, 0.5 * (float(np.percentile(voi, 25)) + float(voi[c, c, c])))
    sel = (voi > threshold_hu) & (ball(size, 2 * search_radius_vox) >= 0.5)
    lab, _ = label(sel)
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


# ------------------------------------------------------------------------------------------------ models
@dataclass
class _Loaded:
    generator: NoduleGenerator
    role: str
    voi_size: int
    mask_size: int
    hu_min: float
    hu_max: float
    step: int
    path: str


def _load_generator(path: str | Path, role: str, device: str | torch.device) -> _Loaded:
    path = Path(path)
    if not path.exists():
        raise CTSGANError(f"{path}: no {role} checkpoint; run `ctsgan nodules train {role}` (or notebook 02) first")
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CTSGANError(f"{path}: no {role} checkpoint (ckpt_*.pt); run `ctsgan nodules train {role}` first")
        path = found
    ck = load_checkpoint(path, kind=f"nodule_{role}", map_location="cpu")
    ex = ck["extra"]
    g = NoduleGenerator(int(ex["voi_size"]), int(ex["base_channels"]), tuple(ex["prior_model"]))
    load_state_strict(g, ck["models"]["generator"], str(path))
    g.eval().to(device)
    return _Loaded(g, role, int(ex["voi_size"]), int(ex["mask_size"]), float(ex["hu_min"]), float(ex["hu_max"]),
                   int(ck["step"]), str(path))


class _NoduleModel:
    role = ""

    def __init__(self, generator: NoduleGenerator, voi_size: int, mask_size: int, hu_min: float = -1000.0,
                 hu_max: float = 400.0, device: str | torch.device = "cpu", step: int = 0, source: str = ""):
        self.generator = generator.to(device).eval()
        self.voi_size, self.mask_size = int(voi_size), int(mask_size)
        self.hu_min, self.hu_max = float(hu_min), float(hu_max)
        self.device = torch.device(device)
        self.step, self.source = step, source
        self._mask = centre_mask(self.voi_size, self.mask_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu"):
        """Load the generator from a checkpoint file, or the newest ``ckpt_*.pt`` in a folder."""
        ld = _load_generator(path, cls.role, device)
        return cls(ld.generator, ld.voi_size, ld.mask_size, ld.hu_min, ld.hu_max, device, ld.step, ld.path)

    def _check_diameter(self, d: float) -> None:
        if not 0 < d <= self.mask_size:
            raise CTSGANError(f"nodule diameter {d} vox must be in (0, {self.mask_size}] (the {self.role}'s "
                              f"mask_size; use a model trained with a larger VOI for bigger nodules)")

    @torch.no_grad()
    def run_voi(self, voi_hu: np.ndarray, shape: np.ndarray, nodule_hu: float | None = None,
                parts: bool = False):
        """Run the generator on one VOI (HU) with a shape map; returns the composed VOI in HU.

        Parameters
        ----------
        nodule_hu : float, optional
            Injector: mean density of the painted nodule; default the checkpoint's ``nodule_hu``.
        parts : bool
            Also return the generated background and the painted nodule map (HU): ``(composed, background,
            painted)``.
        """
        level = None if nodule_hu is None else float(hu_to_model(np.float32(nodule_hu), self.hu_min, self.hu_max))
        x = hu_to_model(voi_hu.astype(np.float32), self.hu_min, self.hu_max)
        if self.role == "injector":
            x = x * (1.0 - self._mask)   # Jin et al.: the centre is blanked, the model sees only the context
        cond = torch.from_numpy(np.stack([x, self._mask, shape]).astype(np.float32))[None].to(self.device)
        b, n = self.generator(cond)
        s = cond[:, 2:3]
        out = self.generator.compose(self.role, b, n, s, level)

        def hu(t):
            return model_to_hu(t[0, 0].float().cpu().numpy(), self.hu_min, self.hu_max).astype(np.float32)

        if not parts:
            return hu(out)
        painted = self.generator.paint(n, s, level) if self.role == "injector" else b
        return hu(out), hu(b), hu(painted)


class NoduleInjector(_NoduleModel):
    """Paint nodules of chosen diameters into a volume (Fig B.1).

    Examples
    --------
    >>> inj = NoduleInjector.from_checkpoint("runs/smoke/nodules/injector")      # doctest: +SKIP
    >>> hu2, nodules = inj.inject(hu, [3.0, 5.0], np.random.default_rng(0))     # doctest: +SKIP
    """

    role = "injector"

    def inject_at(self, hu: np.ndarray, center: Sequence[int], diameter_vox: float, blend: str = "nodule",
                  shape: np.ndarray | None = None, nodule_hu: float | None = None) -> np.ndarray:
        """Inject one nodule centred at ``center``.

        Parameters
        ----------
        blend : {"nodule", "voi"}
            ``"nodule"`` (default) keeps the real tissue and composites the generated nodule (mean density +
            learned texture) with its partial-volume occupancy ``s``: ``(1 - s) hu + s nodule``, so nothing
            changes where ``s = 0`` and the edge is as soft as a real partial-volume edge. ``"voi"`` pastes the
            generator's whole centre cube (background too, as in Jin et al.) with a raised-cosine taper to the
            VOI faces.
        shape : ndarray, optional
            A custom ``voi_size``³ shape map in [0, 1] (e.g. a real LIDC mask from
            :func:`ctsgan_lib.data.lidc.nodule_mask`); default a ball of ``diameter_vox``.
        nodule_hu : float, optional
            Mean density of the nodule (default: the checkpoint's ``cfg.nodules.nodule_hu``, a solid nodule).
        """
        self._check_diameter(diameter_vox)
        s = ball(self.voi_size, diameter_vox) if shape is None else np.asarray(shape, dtype=np.float32)
        composed, _, painted = self.run_voi(extract_voi(hu, center, self.voi_size), s, nodule_hu, parts=True)
        if blend == "nodule":
            # keep the real tissue; composite the generated nodule with its partial-volume occupancy
            return paste_voi(hu, painted, center, s)
        if blend == "voi":
            return paste_voi(hu, composed, center, np.maximum(voi_blend_weight(self.voi_size, self.mask_size), s))
        raise CTSGANError(f"blend must be 'nodule' or 'voi', got {blend!r}")

    def inject(self, hu: np.ndarray, diameters_vox: Sequence[float], rng: np.random.Generator,
               lung: np.ndarray | None = None, existing: Iterable[dict] = (), spacing_mm: Sequence[float] | None = None,
               strict: bool = False, blend: str = "nodule",
               nodule_hu: float | None = None) -> tuple[np.ndarray, list[dict]]:
        """Place and paint ``len(diameters_vox)`` nodules.

        Parameters
        ----------
        hu : ndarray (z, y, x), HU
        diameters_vox : sequence of float
        rng : numpy Generator (placement)
        lung : ndarray of bool, optional
            Lung mask; default :func:`ctsgan_lib.data.preprocess.lung_mask`.
        existing : nodules already in the volume (not overlapped).
        spacing_mm : (dz, dy, dx), optional
            Used only to report ``diameter_mm`` (geometric mean spacing).
        strict : bool
            Raise :class:`PlacementError` when not all nodules fit; otherwise warn and return fewer.

        Returns
        -------
        (hu_new, nodules) : the new volume and one dict per injected nodule (cohort manifest format).
        """
        for d in diameters_vox:
            self._check_diameter(float(d))
        if lung is None:
            from .data.preprocess import lung_mask
            lung = lung_mask(hu)
        placed = _place(lung, diameters_vox, rng, existing)
        centers = [placed[k] for k in sorted(placed)]
        placed_d = [float(diameters_vox[k]) for k in sorted(placed)]
        shortfall = len(diameters_vox) - len(centers)
        if shortfall:
            msg = (f"only {len(centers)} of {len(diameters_vox)} nodules fit in the lung mask "
                   f"({int(np.asarray(lung).sum())} lung voxels); shortfall {shortfall}")
            if strict:
                raise PlacementError(msg)
            warnings.warn(msg, stacklevel=2)
        out = hu.astype(np.float32, copy=True)
        sp = float(np.prod(spacing_mm) ** (1 / 3)) if spacing_mm is not None else None
        nodules = []
        for c, d in zip(centers, placed_d):
            out = self.inject_at(out, c, float(d), blend=blend, nodule_hu=nodule_hu)
            nodules.append({"center_vox": [int(v) for v in c], "diameter_vox": float(d),
                            "diameter_mm": None if sp is None else float(d) * sp, "kind": "solid",
                            "action": "injected"})
        self.last_shortfall = shortfall
        return out, nodules


class NoduleEraser(_NoduleModel):
    """Replace nodules with healthy tissue (Fig B.2)."""

    role = "eraser"

    def erase(self, hu: np.ndarray, nodules: Iterable[dict], margin_vox: float | None = None) -> np.ndarray:
        """Erase each nodule (dicts with ``center_vox`` and ``diameter_vox``); returns the new volume in HU.

        The generated healthy VOI is pasted with a raised-cosine weight that is 1 over the nodule and falls to 0
        over ``margin_vox`` around it, so tissue away from the nodule stays as it was.
        """
        out = hu.astype(np.float32, copy=True)
        for nod in nodules:
            d = min(float(nod["diameter_vox"]), float(self.mask_size))
            c = [int(round(float(v))) for v in nod["center_vox"]]
            w = nodule_blend_weight(self.voi_size, d, margin_vox)
            gen = self.run_voi(extract_voi(out, c, self.voi_size), w)
            out = paste_voi(out, gen, c, w)
        return out


# ------------------------------------------------------------------------------------------------ quality checks
def injection_check(injector: NoduleInjector, cohort, diameters_vox: Sequence[float], n_scans: int = 6,
                    seed: int = 0) -> "pd.DataFrame":
    """Inject ``diameters_vox`` into nodule-free test/val/train scans and measure each nodule.

    Returns
    -------
    DataFrame: one row per injected nodule with ``requested_vox``, ``measured_vox`` (half-maximum equivalent
    sphere), ``core_hu``, ``in_lung`` and ``changed_outside_voi`` (voxels changed farther than the VOI: must be 0).
    """
    import pandas as pd

    from .train.nodule_loop import lung_of

    rows = []
    ids = [i for s in ("test", "val", "train") for i in cohort.ids(split=s, has_nodule=0)][:n_scans]
    for k, rid in enumerate(ids):
        hu, _ = cohort.read(rid)
        lung = lung_of(hu, cohort.read_label(rid))
        out, nods = injector.inject(hu, list(diameters_vox), np.random.default_rng([seed, k]), lung=lung)
        near = np.zeros(hu.shape, bool)
        half = injector.voi_size // 2
        for n in nods:
            near[tuple(slice(max(c - half, 0), c + half) for c in n["center_vox"])] = True
        changed = int((out[~near] != hu[~near]).sum())
        for n in nods:
            m = measure_nodule(out, n["center_vox"], n["diameter_vox"] / 2 + 1)
            rows.append({"scan": rid, "requested_vox": n["diameter_vox"], "measured_vox": m["diameter_vox"],
                         "core_hu": m["core_hu"], "in_lung": bool(lung[tuple(n["center_vox"])]),
                         "changed_outside_voi": changed})
    return pd.DataFrame(rows)


def phantom_truth(cfg, row: dict) -> np.ndarray:
    """Nodule-free truth of a phantom cohort row: the same patient rendered without its nodules (same noise) and
    preprocessed like the cohort (``ctsgan_lib.data.phantom.render_phantom(..., with_nodules=False)``)."""
    from .data import phantom
    from .data.sources import prepare_volume

    if str(row.get("source")) != "phantom" or row.get("seed") in (None, ""):
        raise CTSGANError(f"volume {row.get('id')!r} is not a phantom with a recorded seed: no nodule-free truth")
    p = phantom.sample_params(int(row["seed"]), row["domain"], cfg.data.phantom_size, cfg.data.phantom_spacing_mm)
    ph = phantom.render_phantom(p, with_nodules=False)
    hu, _, _, _ = prepare_volume(cfg, ph.hu, ph.spacing_mm)
    return hu


def erasure_check(eraser: NoduleEraser, cohort, truth_fn, ids: Sequence[str] | None = None) -> "pd.DataFrame":
    """Erase the nodules of nodule-bearing scans and compare with the known nodule-free truth.

    ``truth_fn(row) -> hu`` gives the truth (e.g. ``lambda r: phantom_truth(cfg, r)``). The error is measured on
    the nodule voxels (label 7 when the cohort has labels, else the sphere of the recorded diameter, at least the
    centre voxel) and on the whole erase support (weight > 0).

    Returns
    -------
    DataFrame: one row per scan with ``mae_nodule_before`` / ``mae_nodule_after`` and ``mae_support_before`` /
    ``mae_support_after`` (HU), and ``n_nodules``.
    """
    import pandas as pd

    rows = []
    for rid in (ids if ids is not None else cohort.ids(has_nodule=1)):
        row = cohort.row(rid)
        nods = [n for n in (row["nodules"] or []) if n.get("action", "original") != "erased"]
        if not nods:
            continue
        hu, _ = cohort.read(rid)
        label = cohort.read_label(rid)
        truth = truth_fn(row)
        out = eraser.erase(hu, nods)
        nod_mask = np.zeros(hu.shape, bool) if label is None else label == 7
        support = np.zeros(hu.shape, bool)
        for n in nods:
            c = [int(round(float(v))) for v in n["center_vox"]]
            nod_mask[tuple(c)] = True
            w = nodule_blend_weight(eraser.voi_size, min(float(n["diameter_vox"]), eraser.mask_size))
            support |= paste_voi(np.zeros(hu.shape, np.float32), np.ones_like(w), c, w) > 0
            if label is None:
                nod_mask |= paste_voi(np.zeros(hu.shape, np.float32), np.ones_like(w), c,
                                      (ball(eraser.voi_size, float(n["diameter_vox"])) >= 0.5).astype(np.float32)) > 0
        rows.append({"scan": rid, "n_nodules": len(nods),
                     "mae_nodule_before": float(np.abs(hu - truth)[nod_mask].mean()),
                     "mae_nodule_after": float(np.abs(out - truth)[nod_mask].mean()),
                     "mae_support_before": float(np.abs(hu - truth)[support].mean()),
                     "mae_support_after": float(np.abs(out - truth)[support].mean())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ figure data
def injector_examples(injector: NoduleInjector, cohort, diameters_vox: Sequence[float], seed: int = 0) -> list[dict]:
    """Fig B.1 panels: for each diameter, one nodule-free scan's VOI → masked input → injected VOI (HU arrays, the
    centre slice is ``[voi_size // 2]``)."""
    from .train.nodule_loop import lung_of

    ids = [i for s in ("test", "val", "train") for i in cohort.ids(split=s, has_nodule=0)]
    out = []
    for k, d in enumerate(diameters_vox):
        rid = ids[k % len(ids)]
        hu, _ = cohort.read(rid)
        new, nods = injector.inject(hu, [float(d)], np.random.default_rng([seed, k]),
                                    lung=lung_of(hu, cohort.read_label(rid)))
        if not nods:
            continue
        c = nods[0]["center_vox"]
        voi = extract_voi(hu, c, injector.voi_size)
        out.append({"scan": rid, "diameter_vox": float(d), "voi": voi,
                    "masked": np.where(injector._mask > 0, np.nan, voi),
                    "injected": extract_voi(new, c, injector.voi_size), "volume_before": hu, "volume_after": new,
                    "center_vox": c})
    return out


def eraser_examples(eraser: NoduleEraser, cohort, n: int = 3, truth_fn=None) -> list[dict]:
    """Fig B.2 panels: VOIs around real nodules → erased (and the nodule-free truth when ``truth_fn`` is given)."""
    ids = [i for s in ("test", "val", "train") for i in cohort.ids(split=s, has_nodule=1)]
    out = []
    for rid in ids:
        row = cohort.row(rid)
        nods = row["nodules"] or []
        if not nods:
            continue
        nod = max(nods, key=lambda x: float(x["diameter_vox"]))       # the most visible one
        hu, _ = cohort.read(rid)
        new = eraser.erase(hu, nods)
        c = [int(round(float(v))) for v in nod["center_vox"]]
        ex = {"scan": rid, "diameter_vox": float(nod["diameter_vox"]), "voi": extract_voi(hu, c, eraser.voi_size),
              "erased": extract_voi(new, c, eraser.voi_size), "center_vox": c}
        if truth_fn is not None:
            ex["truth"] = extract_voi(truth_fn(row), c, eraser.voi_size)
        out.append(ex)
        if len(out) >= n:
            break
    return out
