"""The vanilla 3D GAN baseline (paper Table 1: "3D GAN Synthetic Data (128³)").

A DCGAN generator and critic lifted to 3D: the whole volume is generated at once at ``gan3d.size`` (128³ at paper
scale) and upsampled trilinearly to S³ for comparison. Its memory grows with size³, which is the point of the
comparison with the slice-wise CT-SGAN.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .dcgan import downsampling_layers, upsampling_layers


class Generator3D(nn.Module):
    """z (B, z_dim) → volume (B, 1, size, size, size) in [-1, 1].

    ConvTranspose3d k=start from 1³, then k4 s2 p1 stages; BatchNorm + ReLU; Tanh output (:mod:`.dcgan`).
    """

    def __init__(self, size: int, z_dim: int, ngf: int = 64):
        super().__init__()
        try:
            self.net = nn.Sequential(*upsampling_layers(3, z_dim, 1, size, ngf))
        except ValueError as exc:
            raise ValueError(f"gan3d {exc}") from None
        self.size, self.z_dim = size, z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None, None])


class Discriminator3D(nn.Module):
    """Volume (B, 1, size³) → logits (B,). Conv3d k4 s2 p1 stages, LeakyReLU, no normalisation (see
    :mod:`ctsgan_lib.models.ctsgan`)."""

    def __init__(self, size: int, ndf: int = 64):
        super().__init__()
        layers, width = downsampling_layers(3, 1, size, ndf)
        self.trunk = nn.Sequential(*layers)
        self.linear = nn.Linear(width, 1)

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
