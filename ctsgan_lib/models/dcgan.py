"""DCGAN building blocks shared by CT-SGAN's Gslice/Dslice (2D) and the 3D GAN baseline (3D).

A generator is a transposed convolution from a 1×1 code to ``start_size(S)``², then k4 s2 p1 upsampling stages, with
BatchNorm + ReLU after every layer but the last (Tanh) and no biases before BatchNorm (Radford et al. 2016). A critic
is k4 s2 p1 strided convolutions with LeakyReLU(0.2) and no normalisation (why: :mod:`ctsgan_lib.models.ctsgan`).
"""
from __future__ import annotations

import math

from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_DECONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def start_size(size: int) -> int:
    """Spatial size a generator starts from: halve ``size`` while it stays even and above 7.

    224 → 7 (7→14→28→56→112→224, five upsampling stages); 64 → 4 (four stages); 32 → 4 (three stages).
    """
    s = size
    while s % 2 == 0 and s > 7:
        s //= 2
    return s


def n_stages(size: int) -> int:
    """Number of ×2 stages between ``start_size(size)`` and ``size``."""
    return int(round(math.log2(size // start_size(size))))


def layer_widths(n_maps: int, base: int, cap: int = 8) -> list[int]:
    """Channel widths of ``n_maps`` generator feature maps, widest first: base·min(cap, 2^(n−1−k)) (MoCoGAN: 512,
    256, 128, 64)."""
    return [base * min(cap, 2 ** (n_maps - 1 - k)) for k in range(n_maps)]


def critic_widths(n_maps: int, base: int, cap: int = 8) -> list[int]:
    """Channel widths of ``n_maps`` critic feature maps, narrowest first: base·min(cap, 2^k)."""
    return [base * min(cap, 2 ** k) for k in range(n_maps)]


def upsampling_layers(dims: int, in_channels: int, out_channels: int, size: int, ngf: int) -> list[nn.Module]:
    """DCGAN generator layers from a ``(B, in_channels, 1, …)`` code to ``(B, out_channels, size, …)`` in [-1, 1].

    Raises
    ------
    ValueError
        ``size`` is not ``start_size(size)·2^k`` with k >= 1.
    """
    s0, n_up = start_size(size), n_stages(size)
    if s0 * 2 ** n_up != size or n_up < 1:
        raise ValueError(f"size {size} must be start·2^k with k >= 1 (start {s0})")
    deconv, norm = _DECONV[dims], _NORM[dims]
    widths = layer_widths(n_up, ngf)
    layers: list[nn.Module] = [deconv(in_channels, widths[0], s0, 1, 0, bias=False), norm(widths[0]), nn.ReLU(True)]
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += [deconv(cin, cout, 4, 2, 1, bias=False), norm(cout), nn.ReLU(True)]
    layers += [deconv(widths[-1], out_channels, 4, 2, 1, bias=False), nn.Tanh()]
    return layers


def downsampling_layers(dims: int, in_channels: int, size: int, ndf: int) -> tuple[list[nn.Module], int]:
    """DCGAN critic trunk from ``size`` down to ``start_size(size)``; returns the layers and the last width."""
    conv = _CONV[dims]
    widths = critic_widths(n_stages(size), ndf)
    layers: list[nn.Module] = [conv(in_channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += [conv(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    return layers, widths[-1]


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation of generator layers: transposed-conv weights N(0, 0.02), BatchNorm scales N(1, 0.02).

    Critic convolutions keep PyTorch's default (Kaiming-uniform) initialisation: without normalisation layers,
    N(0, 0.02) weights would shrink activations stage by stage and leave the critics with near-zero logits.
    """
    for m in module.modules():
        if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
