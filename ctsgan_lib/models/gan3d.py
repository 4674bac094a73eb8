"""The vanilla 3D GAN baseline (paper Table 1: "3D GAN Synthetic Data (128³)").

A DCGAN generator and critic lifted to 3D: the whole volume is generated at once at ``gan3d.size`` (128³ at paper
scale) and upsampled trilinearly to S³ for comparison. Its memory grows with size³, which is the point of the
comparison with the slice-wise CT-SGAN.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .ctsgan import _widths, start_size


class Generator3D(nn.Module):
    """z (B, z_dim) → volume (B, 1, size, size, size) in [-1, 1].

    ConvTranspose3d k=start from 1³, then k4 s2 p1 stages; BatchNorm + ReLU; Tanh output (DCGAN).
    """

    def __init__(self, size: int, z_dim: int, ngf: int = 64):
        super().__init__()
        s0 = start_size(size)
        n_up = int(round(math.log2(size // s0)))
        if s0 * 2 ** n_up != size or n_up < 1:
            raise ValueError(f"gan3d size {size} must be start·2^k with k >= 1")
        widths = _widths(n_up, ngf)
        layers: list[nn.Module] = [nn.ConvTranspose3d(z_dim, widths[0], s0, 1, 0, bias=False),
                                   nn.BatchNorm3d(widths[0]), nn.ReLU(True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose3d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose3d(widths[-1], 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.size, self.z_dim = size, z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None, None])


class Discriminator3D(nn.Module):
    """Volume (B, 1, size³) → logits (B,). Conv3d k4 s2 p1 stages, LeakyReLU, no normalisation (see
    :mod:`ctsgan_lib.models.ctsgan`)."""

    def __init__(self, size: int, ndf: int = 64):
        super().__init__()
        s0 = start_size(size)
        n_down = int(round(math.log2(size // s0)))
        widths = [ndf * min(8, 2 ** k) for k in range(n_down)]
        layers: list[nn.Module] = [nn.Conv3d(1, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv3d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        self.trunk = nn.Sequential(*layers)
        self.linear = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.trunk(x).mean(dim=(2, 3, 4))).squeeze(1)


def build_gan3d(g3) -> dict[str, nn.Module]:
    """Generator and critic from a :class:`~ctsgan_lib.config.GAN3DConfig` (or a dict with its fields)."""
    g = (lambda k: g3[k]) if isinstance(g3, dict) else (lambda k: getattr(g3, k))
    return {"generator": Generator3D(g("size"), g("z_dim"), g("ngf")), "d3d": Discriminator3D(g("size"), g("ndf"))}


def upsample_volume(x: torch.Tensor, size: int | tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of (B, 1, d, h, w) volumes to ``size`` (Table 1: the 128³ baseline compared at 224³)."""
    if isinstance(size, int):
        size = (size, size, size)
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


__all__ = ["Generator3D", "Discriminator3D", "build_gan3d", "upsample_volume"]
