"""VOI cutting and pasting on torch tensors (ours): :func:`~ctsgan_lib.nodules.geometry.extract_voi` and
:func:`~ctsgan_lib.nodules.geometry.paste_voi` for a volume that stays on its device (the GPU that generated it).

Cutting is pure indexing (the padding modes of ``np.pad`` reproduced as index maps), so the VOI equals the numpy one
bit for bit. Pasting is the same float32 formula ``(1 - w) * volume + w * voi`` where ``w > 0``, as separate
elementwise operations, so on the CPU it equals the numpy result bit for bit as well; on a GPU only the network pass
before it can differ (float rounding). Voxels with ``w == 0`` are never written.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import CTSGANError


def _pad_index(lo: int, size: int, n: int, mode: str, device) -> torch.Tensor:
    """Source indices for positions ``lo .. lo + size - 1`` of an axis of length ``n`` padded as ``np.pad`` does.

    Valid for pads ``< n`` (reflect) or ``<= n`` (symmetric): :func:`extract_voi_tensor` picks the mode so, as
    :func:`~ctsgan_lib.nodules.geometry.extract_voi` does.
    """
    i = torch.arange(lo, lo + size, device=device)
    if mode == "edge" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect":        # ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        i = torch.where(i < 0, -i, i)
        return torch.where(i > n - 1, 2 * (n - 1) - i, i)
    if mode == "symmetric":      # ... 1 0 | 0 1 ... n-1 | n-1 ...
        i = torch.where(i < 0, -i - 1, i)
        return torch.where(i > n - 1, 2 * n - 1 - i, i)
    raise CTSGANError(f"pad_mode must be reflect, symmetric or edge, got {mode!r}")


def extract_voi_tensor(volume: torch.Tensor, center: Sequence[float], size: int, pad_mode: str = "reflect"
                       ) -> torch.Tensor:
    """:func:`~ctsgan_lib.nodules.geometry.extract_voi` of a ``(z, y, x)`` tensor (same VOI, same padding rule)."""
    shape = tuple(volume.shape)
    c = [int(round(float(v))) for v in center]
    if any(not 0 <= ci < n for ci, n in zip(c, shape)):
        raise CTSGANError(f"VOI centre {c} lies outside the volume of shape {shape}")
    lo = [ci - size // 2 for ci in c]
    pad = [(max(0, -l), max(0, l + size - n)) for l, n in zip(lo, shape)]
    mode = pad_mode
    if mode == "reflect" and any(max(p) >= n for p, n in zip(pad, shape)):
        mode = "symmetric" if all(max(p) <= n for p, n in zip(pad, shape)) else "edge"
    out = volume
    for axis, (l, n) in enumerate(zip(lo, shape)):
        out = out.index_select(axis, _pad_index(l, size, n, mode, volume.device))
    return out.clone()


def paste_voi_tensor(volume: torch.Tensor, voi: torch.Tensor, center: Sequence[float], weight: torch.Tensor
                     ) -> torch.Tensor:
    """:func:`~ctsgan_lib.nodules.geometry.paste_voi` on tensors: a blended copy of ``volume``."""
    out = volume.clone()
    size = voi.shape[0]
    c = [int(round(float(v))) for v in center]
    src, dst = [], []
    for ci, n in zip(c, volume.shape):
        l = ci - size // 2
        a, b = max(l, 0), min(l + size, n)
        dst.append(slice(a, b))
        src.append(slice(a - l, b - l))
    region = out[tuple(dst)]
    w = weight.to(device=volume.device, dtype=torch.float32)[tuple(src)]
    v = voi.to(device=volume.device, dtype=out.dtype)[tuple(src)]
    sel = w > 0
    region[sel] = (1.0 - w[sel]) * region[sel] + w[sel] * v[sel]
    return out
