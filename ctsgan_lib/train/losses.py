"""GAN losses shared by every adversarial loop: vanilla JS (Eq. 2) and WGAN-GP (Gulrajani et al. 2017).

Conventions: discriminators return raw logits/critic values of shape (M,). ``kind`` is ``"js"`` or ``"wgan-gp"``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

KINDS = ("js", "wgan-gp")


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(KINDS)}")


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss, averaged over samples.

    JS (Eq. 2): E_v[−log D(v)] + E_v'[−log(1 − D(v'))] with D = sigmoid(logit), i.e. softplus(−r) + softplus(f).
    WGAN: E[D(v')] − E[D(v)] (the penalty is added separately by :func:`gradient_penalty`).
    """
    _check(kind)
    real, fake = real.float(), fake.float()
    if kind == "js":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    return fake.mean() - real.mean()


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss: non-saturating −log D(v') for JS, −E[D(v')] for WGAN."""
    _check(kind)
    fake = fake.float()
    if kind == "js":
        return F.softplus(-fake).mean()
    return -fake.mean()


def gradient_penalty(critic: Callable[..., torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     *cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP penalty E[(‖∇_x̂ D(x̂)‖₂ − 1)²] at random interpolates x̂ = αx + (1−α)x' (one α per sample).

    Parameters
    ----------
    critic : callable
        ``critic(x, *cond) -> (M,)``.
    real, fake : Tensor (M, ...)
        Same shapes; ``fake`` should be detached.
    *cond : Tensor
        Extra critic inputs (e.g. slice positions), passed unchanged.
    generator : torch.Generator, optional
        Source of α (default: the global RNG).
    """
    alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=generator).to(real.device, real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(x_hat, *cond)
    (grad,) = torch.autograd.grad(out.float().sum(), x_hat, create_graph=True)
    norm = grad.float().flatten(1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


__all__ = ["KINDS", "d_loss", "g_loss", "gradient_penalty"]
