"""Training loop of the vanilla 3D GAN baseline (Table 1), on the same machinery as CT-SGAN (losses, run folder,
checkpoints, logs, data parallelism): whole volumes, resized once to ``gan3d.size``³."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..errors import CTSGANError
from ..utils.precision import autocast
from . import distributed as D
from . import losses
from .gan_common import GANRun, build_gan, orthogonal_views, resolve_device, set_requires_grad
from .volumes import VolumeDataset, training_dataset

LOSS_NAMES = ["loss_d", "gp_d", "loss_g"]


def critic_steps(cfg: Config) -> int:
    """Critic updates per generator update of the 3D GAN: ``gan3d.d_steps``, or CT-SGAN's ``ctsgan.d_steps`` when it
    is 0 (the default: the baseline gets the same schedule as CT-SGAN, for a fair Table 1)."""
    n = int(getattr(cfg.gan3d, "d_steps", 0) or 0)
    return max(1, n if n > 0 else int(cfg.ctsgan.d_steps))


def gan3d_step(nets: dict[str, torch.nn.Module], opts: dict[str, torch.optim.Optimizer], data: VolumeDataset, g3,
               batch: int, device: str, ctx: D.DistContext, d_steps: int = 1) -> dict[str, float]:
    """One alternating update: ``d_steps`` 3D critic updates (fresh real and fake batches each), then one generator
    update on the last fakes; returns losses as floats (D terms from the last critic update)."""
    gen, disc = nets["generator"], nets["d3d"]
    kind, amp = g3.loss, autocast(device, g3.bf16)
    set_requires_grad([disc], True)
    for k in range(max(1, int(d_steps))):
        index = torch.randint(0, len(data), (batch,))
        real = data.volumes(index).to(device)                               # (B, 1, s, s, s)
        z = torch.randn(batch, gen.z_dim).to(device)
        with amp:
            fake = gen(z).float()
        opts["d"].zero_grad(set_to_none=True)
        with amp:
            l_d = losses.d_loss(kind, disc(real), disc(fake.detach()))
            gp = losses.gradient_penalty(disc, real, fake) if kind == "wgan-gp" else torch.zeros((), device=device)
        loss_d = l_d + g3.gp_weight * gp
        loss_d.backward()
        D.all_reduce_grads(disc.parameters(), ctx)
        opts["d"].step()

    set_requires_grad([disc], False)
    opts["g"].zero_grad(set_to_none=True)
    with amp:
        loss_g = losses.g_loss(kind, disc(fake))
    loss_g.backward()
    D.all_reduce_grads(gen.parameters(), ctx)
    opts["g"].step()
    D.average_buffers(gen, ctx)
    set_requires_grad([disc], True)
    return {"loss_d": float(loss_d.detach()), "gp_d": float(gp.detach()), "loss_g": float(loss_g.detach())}


@torch.no_grad()
def sample_grid(gen, data: VolumeDataset, seed: int, n: int = 2) -> torch.Tensor:
    """Centre planes of one real and ``n`` generated volumes at the baseline's native size (fixed noise)."""
    g = torch.Generator().manual_seed(seed)
    was = gen.training
    gen.eval()
    try:
        dev = next(gen.parameters()).device
        fakes = gen(torch.randn(n, gen.z_dim, generator=g).to(dev)).float().cpu()[:, 0]
    finally:
        gen.train(was)
    vols = [data.data[0].float()] + list(fakes)
    return torch.stack([v for vol in vols for v in orthogonal_views(vol)])


def train_gan3d(cfg: Config, cohort_dir: str | Path | None = None, out_dir: str | Path | None = None,
                resume: bool = True, device: str | None = None, progress: bool = True,
                volumes_hu: np.ndarray | None = None, spacing_mm=(1.0, 1.0, 1.0)) -> dict[str, Any]:
    """Train the 3D DCGAN baseline on the CT-SGAN training set resized to ``cfg.gan3d.size``³.

    Parameters and return value as :func:`~ctsgan_lib.train.ctsgan_loop.train_ctsgan` (run folder default
    ``runs/<P>/gan3d``; settings from ``cfg.gan3d``).
    """
    g3 = cfg.gan3d
    ctx = D.init_from_env(str(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    try:
        dev = resolve_device(device, ctx)
        if g3.batch % ctx.world_size:
            raise CTSGANError(f"gan3d.batch ({g3.batch}) must be divisible by the number of processes "
                              f"({ctx.world_size})")
        full = training_dataset(cfg, cohort_dir, volumes_hu, spacing_mm, progress=progress and ctx.is_main)
        data = full.resized(g3.size)
        nets, opts = build_gan("gan3d", cfg.data.size, g3, dev, ctx, seed=cfg.seed)
        gen, disc = nets["generator"], nets["d3d"]
        run = GANRun(kind="gan3d", config=cfg.to_dict(), out_dir=out_dir or cfg.runs_dir / "gan3d",
                     models={"generator": gen, "d3d": disc}, optimizers=opts, iterations=g3.iterations,
                     ckpt_every=g3.ckpt_every, sample_every=g3.sample_every, loss_names=LOSS_NAMES, resume=resume,
                     seed=cfg.seed, ctx=ctx, device=dev, progress=progress,
                     extra={"spacing_mm": list(full.spacing_mm), "data_source": full.source, "n_volumes": len(data),
                            "native_size": g3.size, "d_steps": critic_steps(cfg)})
        per_rank = g3.batch // ctx.world_size
        n_d = critic_steps(cfg)
        return run.run(lambda step: gan3d_step(nets, opts, data, g3, per_rank, dev, ctx, n_d),
                       lambda step: sample_grid(gen, data, cfg.seed))
    finally:
        D.shutdown(ctx)


__all__ = ["train_gan3d", "gan3d_step", "critic_steps", "LOSS_NAMES"]
