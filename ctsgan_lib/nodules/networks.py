"""3D inpainting cGAN for nodule injection and erasure (paper §3.1 and Appendix B; Jin et al., MICCAI 2018).

Both models see a cubic volume of interest (VOI, side ``voi_size``; paper 64³), in model units ([-1, 1], see
:mod:`ctsgan_lib.data.intensity`), and output one whole VOI. Input channels (``conditions`` builds them):

**Learned injector** (``nodules.injector: learned``, the default; Jin et al.), five channels:

0. the VOI with its centre cube (side ``mask_size``; paper 32³) blanked to 0;
1. the mask channel: 1 inside the centre cube, 0 outside;
2. the size scalar: ``diameter_vox / mask_size`` everywhere inside the centre cube (a number, no geometry);
3. the size hint: an isotropic Gaussian bump ``exp(-ln 2 (r / (d/2))^2)`` at the centre, half its height at the
   requested radius. It says *where* and *about how big*, not the outline (no edge, no lobes) nor the density;
4. noise: N(0, 1) inside the centre cube (the seed picks one of many nodules of the same size).

The generator paints the whole centre: nodule, margin, density and the tissue around it. Shape, density and
part-solid appearance come only from the training targets (real nodules).

**Sphere injector** (``nodules.injector: sphere``, the previous default, kept as a named alternative), three
channels: the masked VOI, the mask, and the partial-volume sphere ``s`` of the requested diameter. Two output maps,
a background ``b`` and a nodule map ``n``; the VOI is ``(1 - s) b + s (level + t)`` with ``t`` the nodule map minus
its ``s``-weighted mean and ``level`` a fixed solid density (``cfg.nodules.nodule_hu``). Every nodule it makes is a
sphere of one density.

**Eraser**, three channels: the nodule-bearing VOI (unmasked), the mask, and the soft region to rewrite around the
nodule (:func:`~ctsgan_lib.nodules.geometry.nodule_blend_weight`). One output map: the VOI without the nodule.

The last layer starts at the training data's median intensities (bias = atanh of the prior, small weights).
:class:`PatchDiscriminator3D` is a 3D PatchGAN on ``[image, condition]`` trained with the LSGAN loss.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

ROLES = ("injector", "eraser")
INJECTORS = ("learned", "sphere")   # nodules.injector
LEARNED_CHANNELS = 5
SPHERE_CHANNELS = 3


def _levels(voi_size: int) -> int:
    """U-Net depth: halve the VOI down to 4 voxels (16 -> 2 levels, 64 -> 4 levels)."""
    if voi_size < 8 or voi_size & (voi_size - 1):
        raise ValueError(f"voi_size must be a power of two >= 8, got {voi_size}")
    return int(math.log2(voi_size)) - 2


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(cin, cout, 4, stride=2, padding=1, bias=not norm)]
        if norm:
            layers.append(nn.InstanceNorm3d(cout, affine=True))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return self.block(x)


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ConvTranspose3d(cin, cout, 4, stride=2, padding=1, bias=False),
            nn.InstanceNorm3d(cout, affine=True),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.block(x)


class NoduleGenerator(nn.Module):
    """3D U-Net generator of the nodule cGAN.

    Parameters
    ----------
    voi_size : int
        VOI side in voxels (power of two, >= 8).
    base_channels : int
        Channels of the first encoder level (doubled per level, capped at 8×).
    prior_model : (float, float)
        Initial background and nodule intensities in model units (the last layer's bias starts there).
    in_channels : int
        5 for the learned injector, 3 for the sphere injector and the eraser (module docstring).
    out_channels : int
        1 (learned injector, eraser: the VOI) or 2 (sphere injector: background and nodule maps).

    Forward
    -------
    ``forward(cond) -> (B, out_channels, V, V, V)`` in [-1, 1]; :meth:`compose` turns it into the VOI.
    """

    def __init__(self, voi_size: int = 16, base_channels: int = 8, prior_model: tuple[float, float] = (-0.8, 0.4),
                 in_channels: int = SPHERE_CHANNELS, out_channels: int = 2):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        n = _levels(voi_size)
        chans = [min(base_channels * 2 ** i, base_channels * 8) for i in range(n + 1)]
        self.stem = nn.Sequential(nn.Conv3d(self.in_channels, chans[0], 3, padding=1), nn.LeakyReLU(0.2, True))
        self.downs = nn.ModuleList(_Down(chans[i], chans[i + 1], norm=i + 1 < n) for i in range(n))
        self.ups = nn.ModuleList(_Up(chans[i + 1] * (1 if i == n - 1 else 2), chans[i]) for i in reversed(range(n)))
        self.head = nn.Conv3d(chans[0] * 2, self.out_channels, 3, padding=1)
        # mean density of painted nodules (model units); the network adds zero-mean texture around it
        self.register_buffer("nodule_level", torch.tensor(float(prior_model[1])))
        with torch.no_grad():  # start at the data prior (see module docstring); small weights keep it there early
            self.head.weight.mul_(0.1)
            p = np.clip(np.asarray(prior_model, dtype=float)[: self.out_channels], -0.95, 0.95)
            self.head.bias.copy_(torch.as_tensor(np.arctanh(p), dtype=self.head.bias.dtype))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        x = self.stem(cond)
        skips = [x]
        for d in self.downs:
            x = d(x)
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for i, u in enumerate(self.ups):
            x = u(x)
            x = torch.cat([x, skips.pop()], dim=1)
        return torch.tanh(self.head(x))

    def compose(self, out: torch.Tensor, cond: torch.Tensor, level: torch.Tensor | float | None = None
                ) -> torch.Tensor:
        """The generator's VOI from its raw output ``out`` and the condition it was given.

        One output map (learned injector, eraser): that map. Two (sphere injector): ``(1 - s) b + s (level + t)``
        where ``s`` is the sphere channel and ``t`` the nodule map minus its ``s``-weighted mean, i.e. zero-mean
        texture: the caller sets size and shape (``s``) and mean density (``level``, default the ``nodule_level``
        buffer = ``cfg.nodules.nodule_hu``).
        """
        if self.out_channels == 1:
            return out
        shape = cond[:, 2:3]
        return (1.0 - shape) * out[:, :1] + shape * self.paint(out[:, 1:2], shape, level)

    def paint(self, nodule: torch.Tensor, shape: torch.Tensor, level: torch.Tensor | float | None = None):
        """Nodule density map: ``level`` plus the nodule map's deviation from its ``shape``-weighted mean."""
        w = shape.flatten(1).sum(1).clamp_min(1e-6)
        mean = (nodule * shape).flatten(1).sum(1) / w
        lvl = self.nodule_level if level is None else torch.as_tensor(level, dtype=nodule.dtype,
                                                                       device=nodule.device)
        lvl = lvl.reshape(-1, 1, 1, 1, 1) if lvl.ndim else lvl
        return (lvl + nodule - mean.view(-1, 1, 1, 1, 1)).clamp(-1.0, 1.0)


class PatchDiscriminator3D(nn.Module):
    """3D PatchGAN on ``[image (1 ch), condition (3 ch)]``: one realism score per overlapping patch (LSGAN)."""

    def __init__(self, base_channels: int = 8, in_channels: int = 4):
        super().__init__()
        c = base_channels
        self.net = nn.Sequential(
            nn.Conv3d(in_channels, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True),
            nn.Conv3d(c, 2 * c, 4, stride=2, padding=1, bias=False), nn.InstanceNorm3d(2 * c, affine=True),
            nn.LeakyReLU(0.2, True),
            nn.Conv3d(2 * c, 4 * c, 3, stride=1, padding=1, bias=False), nn.InstanceNorm3d(4 * c, affine=True),
            nn.LeakyReLU(0.2, True),
            nn.Conv3d(4 * c, 1, 3, stride=1, padding=1),
        )

    def forward(self, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, cond], dim=1))


def lsgan_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss ``0.5 E[(D(real) - 1)^2] + 0.5 E[D(fake)^2]`` (Mao et al.; CT-GAN uses MSE)."""
    return 0.5 * ((d_real - 1.0) ** 2).mean() + 0.5 * (d_fake ** 2).mean()


def lsgan_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN generator loss ``0.5 E[(D(fake) - 1)^2]``."""
    return 0.5 * ((d_fake - 1.0) ** 2).mean()


def multi_mask_l1(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jin et al.'s multi-mask L1: mean absolute error inside and outside the centre mask, returned separately
    (the loop weights them with ``cfg.nodules.l1_inside`` / ``l1_outside``)."""
    err = (fake - real).abs()
    inside = (err * mask).sum() / mask.sum().clamp_min(1.0)
    outside = (err * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1.0)
    return inside, outside


def size_hint(voi_size: int, diameter_vox: float) -> np.ndarray:
    """Soft size hint of the learned injector: ``exp(-ln 2 (r / (d/2))^2)`` around the VOI's centre voxel.

    Half its height at the requested radius, smooth everywhere: it tells the generator where and roughly how big,
    but has no edge, lobes or density for the generator to copy.
    """
    g = np.indices((voi_size,) * 3, dtype=np.float32) - voi_size // 2
    r2 = (g ** 2).sum(0)
    return np.exp(-np.log(2.0) * r2 / max(diameter_vox / 2.0, 0.25) ** 2).astype(np.float32)


def learned_condition(voi_model: np.ndarray, mask: np.ndarray, diameter_vox: float, mask_size: int,
                      noise: np.ndarray) -> np.ndarray:
    """The learned injector's five input channels (module docstring) for one VOI in model units."""
    v = voi_model.shape[0]
    return np.stack([voi_model * (1.0 - mask), mask, mask * (diameter_vox / float(mask_size)),
                     size_hint(v, diameter_vox), noise * mask]).astype(np.float32)
