"""The classical lung mask of :func:`ctsgan_lib.data.preprocess.lung_mask`, batched in torch on any device (ours).

Same steps and the same rules as the numpy reference (which stays the default, and the only path on a CPU-only
cohort run); written so that a cohort's masks can be computed on the GPU that generated the volumes:

1. Gaussian smoothing: separable, ``mode="nearest"`` edges, scipy's kernel (truncate 4σ), each axis accumulated in
   float64 and stored as float32 between axes as :func:`scipy.ndimage.gaussian_filter` does, so the smoothed HU
   agree with scipy's to float32 rounding.
2. Threshold ``< threshold_hu``.
3. Connected components (6-connectivity, as ``scipy.ndimage.label``) by label propagation: every air voxel starts
   with its own flat index + 1; each iteration takes the maximum over the voxel and its 6 neighbours, then jumps each
   label once through the label of the voxel it names (pointer jumping; labels only grow and always name a voxel of
   the same component). A fixed point is reached when every component holds one label, its largest index.
   Iteration bound: plain propagation needs at most the longest geodesic path inside a component (≤ its voxel
   count) and the jumps only speed it up, so ``max_iterations`` defaults to the voxel count per volume (a proof
   bound, never reached in practice: tens of iterations on 64³-224³ chest volumes, see ``docs/performance.md``);
   hitting it raises rather than returning a partial labelling.
4. Components touching an in-plane face (outside air) are dropped; the largest remaining one is kept, and the second
   largest when it holds at least 10 % of the first (the reference's rule; ties between equal sizes may be broken
   differently, since scipy numbers components in raster order and we by their largest index).
5. Closing with the reference's ellipsoid (:func:`~ctsgan_lib.data.preprocess.ball_structure`, same radius rule via
   :func:`~ctsgan_lib.data.preprocess.lung_mask_radii`): dilation and erosion as 3D convolutions with that ball on
   the mask zero-padded by the radius, i.e. the whole-array closing the reference computes on a bounding box.
6. Per-slice hole filling: background components labelled in-plane (4-connectivity, nothing across slices) by the
   same propagation; those that do not touch their slice's border are holes.
7. Trachea removal stays on the CPU: :func:`~ctsgan_lib.data.preprocess.airway_mask` is a 2D walk from the top slice
   down, a few milliseconds per volume, and the mask has to come back to the CPU anyway (placement, writing).

The result equals the reference except where a smoothed voxel lies within float32 rounding of the threshold, or
on a tie in step 4; ``tests/test_lung_mask_torch.py`` states and checks the tolerance.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .preprocess import airway_mask, ball_structure, lung_mask_radii


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's 1D Gaussian weights (float64, sum 1) for ``sigma`` voxels."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) ** 2) * x ** 2)
    return phi / phi.sum()


def gaussian_smooth(vol: torch.Tensor, sigma_vox: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian of a ``(B, Z, Y, X)`` float32 batch, edges repeated (scipy ``mode="nearest"``).

    Each axis is a weighted sum of shifted copies accumulated in float64 (how scipy accumulates) and rounded to
    float32 before the next axis (scipy stores float32 input's passes as float32). Axes with σ ≤ 1e-15 are skipped.
    """
    out = vol.to(torch.float32)
    for axis, s in zip((1, 2, 3), sigma_vox):
        if float(s) <= 1e-15:
            continue
        w = _gaussian_kernel(float(s))
        rad = len(w) // 2
        n = out.shape[axis]
        src = out.to(torch.float64)
        # edge-repeat padding by index (works for any radius, also one larger than the axis)
        idx = torch.clamp(torch.arange(-rad, n + rad, device=out.device), 0, n - 1)
        padded = src.index_select(axis, idx)
        acc = torch.zeros_like(src)
        for j, wj in enumerate(w):
            acc += float(wj) * padded.narrow(axis, j, n)
        out = acc.to(torch.float32)
    return out


def label_components(binary: torch.Tensor, axes: Sequence[int] = (1, 2, 3), max_iterations: int | None = None
                     ) -> tuple[torch.Tensor, int]:
    """Connected components of a boolean ``(B, Z, Y, X)`` batch by max-label propagation with pointer jumping.

    Parameters
    ----------
    binary : torch.Tensor of bool
    axes : sequence of int
        Axes along which voxels are neighbours (face connectivity): ``(1, 2, 3)`` is scipy's 3D default, ``(2, 3)``
        labels every axial slice on its own with 4-connectivity. Axis 0 (the batch) never connects.
    max_iterations : int, optional
        Default: voxels per volume (the proof bound of the module docstring).

    Returns
    -------
    labels : torch.Tensor of int64
        0 off ``binary``; otherwise ``1 +`` the flat index (over the whole batch) of the component's last voxel,
        so labels are unique across the batch.
    iterations : int
        Propagation iterations until the fixed point.
    """
    if binary.dim() != 4:
        raise ValueError(f"expected a (B, Z, Y, X) batch, got shape {tuple(binary.shape)}")
    n_vox = int(np.prod(binary.shape[1:]))
    bound = n_vox if max_iterations is None else int(max_iterations)
    lab = torch.where(binary, torch.arange(1, binary.numel() + 1, device=binary.device).view(binary.shape),
                      torch.zeros((), dtype=torch.int64, device=binary.device))
    zero = torch.zeros((), dtype=torch.int64, device=binary.device)
    for it in range(1, bound + 1):
        new = lab.clone()
        for a in axes:
            n = lab.shape[a]
            if n < 2:
                continue
            lo, hi = new.narrow(a, 0, n - 1), new.narrow(a, 1, n - 1)
            torch.maximum(lo, lab.narrow(a, 1, n - 1), out=lo)
            torch.maximum(hi, lab.narrow(a, 0, n - 1), out=hi)
        new = torch.where(binary, new, zero)
        flat = new.view(-1)
        # a label names a voxel of the same component whose label is at least as large: jump to it
        new = torch.where(binary, flat[(flat - 1).clamp_min(0)].view(binary.shape), zero)
        if torch.equal(new, lab):
            return lab, it
        lab = new
    raise RuntimeError(f"connected components did not converge in {bound} iterations (shape {tuple(binary.shape)})")


def _keep_largest(lab: torch.Tensor, air: torch.Tensor) -> torch.Tensor:
    """One volume's kept lung components (the reference's rule) as a bool mask; ``lab`` is ``(Z, Y, X)``."""
    empty = torch.zeros_like(air)
    vals, counts = torch.unique(lab[air], return_counts=True)
    if vals.numel() == 0:
        return empty
    border = torch.unique(torch.cat([lab[:, 0, :].reshape(-1), lab[:, -1, :].reshape(-1),
                                     lab[:, :, 0].reshape(-1), lab[:, :, -1].reshape(-1)]))
    inner = ~torch.isin(vals, border)
    vals, counts = vals[inner], counts[inner]
    if vals.numel() == 0:
        return empty
    order = torch.argsort(counts, descending=True, stable=True)
    keep = [vals[order[0]]]
    if vals.numel() > 1 and int(counts[order[1]]) >= 0.1 * int(counts[order[0]]):
        keep.append(vals[order[1]])
    return torch.isin(lab, torch.stack(keep))


def binary_closing(mask: torch.Tensor, radius_vox: Sequence[int]) -> torch.Tensor:
    """Closing of a bool ``(B, Z, Y, X)`` batch with the ellipsoid ``ball_structure(radius_vox)``.

    The mask is zero-padded by the largest radius, dilated and eroded as convolutions with the ball (0/1 values, so
    the counts are exact in float32 and under TF32), and cropped back: scipy's ``binary_closing`` of the padded
    array, which :func:`~ctsgan_lib.data.preprocess.lung_mask` computes (on a bounding box of it).
    """
    r = [int(v) for v in radius_vox]
    pad = max(r)
    if pad == 0:
        return mask
    ball = torch.from_numpy(ball_structure(r).astype(np.float32)).to(mask.device)[None, None]
    total = float(ball.sum())
    x = F.pad(mask.to(torch.float32)[:, None], (pad,) * 6)
    dil = (F.conv3d(x, ball, padding=tuple(r)) > 0.5).to(torch.float32)
    ero = F.conv3d(dil, ball, padding=tuple(r)) > total - 0.5
    return ero[:, 0, pad:-pad, pad:-pad, pad:-pad]


def fill_holes_per_slice(mask: torch.Tensor) -> torch.Tensor:
    """Per-slice ``binary_fill_holes`` of a bool ``(B, Z, Y, X)`` batch (background 4-connected in-plane)."""
    bg = ~mask
    lab, _ = label_components(bg, axes=(2, 3))
    border = torch.cat([lab[:, :, 0, :].reshape(-1), lab[:, :, -1, :].reshape(-1),
                        lab[:, :, :, 0].reshape(-1), lab[:, :, :, -1].reshape(-1)])
    open_bg = torch.zeros(lab.numel() + 1, dtype=torch.bool, device=mask.device)
    open_bg[border] = True
    return mask | (bg & ~open_bg[lab])


def lung_mask_batch(hu, spacing_mm: Sequence[float] | None = None, threshold_hu: float = -400,
                    smooth_mm: float = 2.0, close_mm: float = 6.0, remove_airways: bool = True,
                    device: str | torch.device | None = None, stats: dict | None = None) -> np.ndarray:
    """:func:`~ctsgan_lib.data.preprocess.lung_mask` of a batch of volumes that share one voxel size, in torch.

    Parameters
    ----------
    hu : np.ndarray or torch.Tensor
        ``(Z, Y, X)`` or ``(B, Z, Y, X)`` HU.
    spacing_mm, threshold_hu, smooth_mm, close_mm, remove_airways
        As :func:`~ctsgan_lib.data.preprocess.lung_mask`.
    device : str or torch.device, optional
        Where to compute (default: the tensor's device, or CPU for an array).
    stats : dict, optional
        Filled with ``label_iterations`` (the 3D labelling's iteration count), for benchmarks and tests.

    Returns
    -------
    np.ndarray of bool
        ``(B, Z, Y, X)`` (or ``(Z, Y, X)`` for one volume) on the CPU.
    """
    t = hu if isinstance(hu, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
    single = t.dim() == 3
    if single:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"expected a (Z, Y, X) volume or a (B, Z, Y, X) batch, got shape {tuple(t.shape)}")
    if device is not None:
        t = t.to(device)
    sp = np.asarray(spacing_mm if spacing_mm is not None else (1.0, 1.0, 1.0), dtype=float).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, 3)
    if sp.size != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing_mm must be three positive numbers (dz, dy, dx), got {spacing_mm}")
    sig, r = lung_mask_radii(sp, spacing_mm is not None, smooth_mm, close_mm)
    vol = gaussian_smooth(t, sig) if sig is not None else t.to(torch.float32)
    air = vol < float(threshold_hu)
    lab, iters = label_components(air)
    if stats is not None:
        stats["label_iterations"] = iters
    mask = torch.stack([_keep_largest(lab[b], air[b]) for b in range(lab.shape[0])])
    if r.max() > 0:
        mask = binary_closing(mask, r)
    mask = fill_holes_per_slice(mask)
    out = mask.cpu().numpy()
    if remove_airways:   # 2D tracking on the CPU (module docstring, step 7)
        for b in range(out.shape[0]):
            if out[b].any():
                out[b] &= ~airway_mask(out[b], sp, None if spacing_mm is None else 1000.0)
    return out[0] if single else out
