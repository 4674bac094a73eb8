"""Loop machinery shared by the CT-SGAN and 3D GAN loops (one loop function per model family, stylegan3 style).

:class:`GANRun` owns everything that is not the model-specific update: the run folder and its
``training_options.json``, resume (networks, optimizers, step and per-rank RNG states), atomic checkpoints every K
steps (keeping the last few), ``log.csv``, periodic sample grids, the progress bar, and the NaN/Inf stop that keeps
the last good checkpoint.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import CTSGANError
from ..models.ctsgan import build_ctsgan
from ..models.ctsgan_cond import build_ctsgan_cond
from ..models.dcgan import init_weights
from ..models.gan3d import build_gan3d
from ..utils.atomic import atomic_path, atomic_write_text, clean_partials
from ..utils.checkpoint import (latest_checkpoint, load_checkpoint, load_state_strict, rng_state, save_checkpoint,
                                set_rng_state)
from ..utils.hardware import default_device, git_commit, hardware_info
from ..utils.logs import CSVLog
from . import distributed as D

CKPT_PATTERN = "ckpt_*.pt"


class TrainingDivergedError(CTSGANError):
    """A loss became NaN or Inf; the run stopped and the last good checkpoint was kept."""


def resolve_device(device: str | torch.device | None, ctx: D.DistContext | None = None) -> str:
    """``None`` → CUDA when present else CPU; under torchrun each rank takes ``cuda:<local_rank>`` (wrapped onto the
    visible GPUs when ranks outnumber them, see :func:`distributed.cuda_device_for`)."""
    dev = str(device) if device is not None else default_device()
    if dev == "cuda" and ctx is not None and ctx.enabled:
        dev = D.cuda_device_for(ctx.local_rank)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise CTSGANError(f"device {dev!r} requested but CUDA is not available")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_requires_grad(modules: Iterable[torch.nn.Module], flag: bool) -> None:
    """Freeze/unfreeze whole networks (the alternating updates of Eq. 1)."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


def build_gan(kind: str, size: int, sec, device: str, ctx: D.DistContext, seed: int | None = None
              ) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
    """The networks of a GAN run, initialised, on ``device`` and identical on every rank, with their Adam pair.

    The one run setup shared by CT-SGAN training, 3D GAN training and the benches.

    Parameters
    ----------
    kind : str
        ``"ctsgan"`` (Rv + Gslice as ``generator``, ``dslice``, ``dslab``), ``"ctsgan_cond"`` (the conditional
        CT-SGAN, same keys) or ``"gan3d"`` (``generator``, ``d3d``).
    size : int
        Volume side S (CT-SGAN; the 3D GAN's resolution is ``sec.size``).
    sec : CTSGANConfig or GAN3DConfig
        The model's config section (widths, ``lr_g``, ``lr_d``, ``betas``).
    device : str
    ctx : DistContext
        Rank 0's weights are broadcast to the others.
    seed : int, optional
        Seed the global RNGs first (so every rank starts from the same weights even before the broadcast).

    Returns
    -------
    nets, optimizers
        ``optimizers["g"]`` over the generator, ``optimizers["d"]`` over the discriminator(s).
    """
    if seed is not None:
        seed_everything(seed)
    if kind in ("ctsgan", "ctsgan_cond"):
        nets = (build_ctsgan if kind == "ctsgan" else build_ctsgan_cond)(size, sec)
        d_params = list(nets["dslice"].parameters()) + list(nets["dslab"].parameters())
    elif kind == "gan3d":
        nets = build_gan3d(sec)
        d_params = nets["d3d"].parameters()
    else:
        raise ValueError(f"unknown GAN kind {kind!r} (ctsgan or gan3d)")
    for m in nets.values():
        init_weights(m)
        m.to(device)
        D.broadcast_module(m, ctx)
    fused = bool(getattr(sec, "fused_adam", False))
    opts = {"g": make_adam(nets["generator"].parameters(), sec.lr_g, sec.betas, fused),
            "d": make_adam(d_params, sec.lr_d, sec.betas, fused)}
    return nets, opts


def make_adam(params, lr: float, betas, fused: bool = False) -> torch.optim.Adam:
    """Adam as the paper trains with; ``fused=True`` asks for torch's fused kernel (one launch for all parameters)
    where this torch has one for the parameters' device, else the multi-tensor ``foreach`` one. ``fused=False`` is
    torch's default implementation (what every run before issue 25 used). All three compute the same update to
    float rounding."""
    if not fused:
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas))
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=True)
    except (RuntimeError, TypeError, ValueError):   # no fused kernel for this device/dtype in this torch
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), foreach=True)


class GANRun:
    """Run folder, resume, checkpoints, logging, samples and NaN handling for one adversarial training run.

    Parameters
    ----------
    kind : str
        Checkpoint kind (``"ctsgan"``, ``"gan3d"``); a checkpoint of another kind is refused.
    config : dict
        The full plain config (``cfg.to_dict()``), stored in every checkpoint.
    out_dir : Path
        ``runs/<P>/<kind>/``.
    models : dict of str → Module
        Networks saved in checkpoints (e.g. rv, gslice, dslice, dslab).
    optimizers : dict of str → Optimizer
    iterations : int
        Last step of the run.
    ckpt_every, sample_every : int
        Checkpoint / sample-grid period in steps (the last step always gets both).
    loss_names : list of str
        Columns of ``log.csv`` besides ``step``, ``seconds`` and ``world_size``.
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` if there is one; ``False`` starts over and removes the
        old checkpoints, samples and log of this folder.
    seed : int
        Base seed; rank r uses ``seed + 1_000_003 * r`` for its data and noise draws.
    ctx : DistContext
    device : str
    progress : bool
        tqdm progress bar (rank 0 only).
    extra : dict
        Plain values stored in every checkpoint (e.g. ``spacing_mm``, data source).
    keep : int
        Checkpoints kept on disk (older ones are removed after a newer one is safely written).
    log_every : int
        Write a ``log.csv`` row every this many steps (and at the last step).
    """

    def __init__(self, *, kind: str, config: dict[str, Any], out_dir: str | Path, models: dict[str, torch.nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], iterations: int, ckpt_every: int, sample_every: int,
                 loss_names: list[str], resume: bool, seed: int, ctx: D.DistContext, device: str,
                 progress: bool = True, extra: dict[str, Any] | None = None, keep: int = 3, log_every: int = 1):
        self.kind, self.config, self.out_dir = kind, config, Path(out_dir)
        self.models, self.optimizers = models, optimizers
        self.iterations, self.ckpt_every, self.sample_every = int(iterations), max(1, ckpt_every), max(1, sample_every)
        self.loss_names, self.ctx, self.device, self.progress = list(loss_names), ctx, device, progress
        self.extra, self.keep, self.seed, self.log_every = dict(extra or {}), keep, seed, max(1, log_every)
        self.last_checkpoint: Path | None = None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        clean_partials(self.out_dir)
        self.start_step = self._resume() if resume else self._fresh()
        if self.ctx.is_main:
            self.log = CSVLog(self.out_dir / "log.csv", ["step", *self.loss_names, "seconds", "world_size"],
                              resume_step=self.start_step if self.start_step > 0 else None)
            self._write_options()

    # ----- start / resume -------------------------------------------------------------------------------------
    def _fresh(self) -> int:
        if self.ctx.is_main:
            for p in self.out_dir.glob(CKPT_PATTERN):
                p.unlink()
            for p in (self.out_dir / "samples").glob("*.png") if (self.out_dir / "samples").is_dir() else ():
                p.unlink()
        D.barrier(self.ctx)
        seed_everything(self.seed + 1_000_003 * self.ctx.rank)
        return 0

    def _resume(self) -> int:
        path = latest_checkpoint(self.out_dir, CKPT_PATTERN)
        if path is None:
            return self._fresh()
        ck = load_checkpoint(path, kind=self.kind, map_location="cpu")
        for name, module in self.models.items():
            if name not in ck["models"]:
                hint = ("; it is a shipped pretrained generator (no critics), which cannot resume training: train "
                        "from scratch (fresh=True, --fresh)") if ck["extra"].get("pretrained") else ""
                raise CTSGANError(f"{path}: checkpoint has no network {name!r}{hint}")
            load_state_strict(module, ck["models"][name], f"{path} [{name}]")
        for name, opt in self.optimizers.items():
            if name in ck["optimizers"]:
                opt.load_state_dict(ck["optimizers"][name])
        ranks = ck["extra"].get("rng_ranks")
        if ranks and len(ranks) == self.ctx.world_size:
            set_rng_state(ranks[self.ctx.rank])
        elif self.ctx.rank == 0 and ck.get("rng"):
            set_rng_state(ck["rng"])
        else:  # world size changed: fresh but deterministic streams for the other ranks
            seed_everything(self.seed + 1_000_003 * self.ctx.rank + int(ck["step"]))
        self.last_checkpoint = path
        return int(ck["step"])

    def _write_options(self) -> None:
        opts = {"kind": self.kind, "config": self.config, "iterations": self.iterations,
                "world_size": self.ctx.world_size, "device": self.device, "resumed_from_step": self.start_step,
                "hardware": hardware_info(self.device.split(":")[0]), "commit": git_commit(), "extra": self.extra}
        atomic_write_text(self.out_dir / "training_options.json", json.dumps(opts, indent=2, default=str))

    # ----- per step -------------------------------------------------------------------------------------------
    def save(self, step: int) -> None:
        """Atomic checkpoint of every network, optimizer, the step and every rank's RNG state."""
        D.check_in_sync(self.models.values(), self.ctx)
        rngs = D.gather_objects(rng_state(), self.ctx)
        if not self.ctx.is_main:
            return
        path = self.out_dir / f"ckpt_{step:06d}.pt"
        save_checkpoint(path, kind=self.kind, step=step, config=self.config, models=self.models,
                        optimizers=self.optimizers, extra={**self.extra, "rng_ranks": rngs,
                                                          "world_size": self.ctx.world_size})
        self.last_checkpoint = path
        old = sorted(self.out_dir.glob(CKPT_PATTERN))[:-self.keep] if self.keep > 0 else []
        for p in old:
            p.unlink()

    def _check_finite(self, step: int, losses: dict[str, float], since: int | None = None,
                      earlier_ok: bool = True) -> None:
        """Stop on a non-finite loss; with lazy losses ``since`` is the first step not yet checked and ``earlier_ok``
        whether every step from ``since`` to ``step`` was finite (checked on the device)."""
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if D.all_reduce_max(1.0 if bad or not earlier_ok else 0.0, self.ctx, self.device) > 0:
            where = ", ".join(f"{k}={losses[k]}" for k in bad) or (
                "at an earlier step" if not earlier_ok else "on another rank")
            when = f"at step {step}" if since is None or since == step else f"between steps {since} and {step}"
            keep = self.last_checkpoint or "none (no checkpoint was written yet)"
            raise TrainingDivergedError(f"{self.kind} training diverged {when}: non-finite loss ({where}); "
                                        f"stopped without saving; last good checkpoint: {keep}")

    def run(self, step_fn: Callable[[int], dict[str, float]],
            sample_fn: Callable[[int], torch.Tensor] | None = None) -> dict[str, Any]:
        """Call ``step_fn(step)`` for every remaining step; handle logs, checkpoints, samples and NaN stops.

        ``step_fn`` returns the step's losses as Python floats; ``sample_fn(step)`` returns images (n, 1, H, W) in
        [-1, 1] for the sample grid.
        """
        bar = tqdm(total=self.iterations, initial=self.start_step, desc=f"train {self.kind}",
                   disable=not (self.progress and self.ctx.is_main), dynamic_ncols=True)
        losses: dict[str, float] = {}
        pending = None            # lazy losses: "all finite" of the steps not yet read, still on the device
        since = None              # first of those steps
        try:
            for step in range(self.start_step + 1, self.iterations + 1):
                t0 = time.perf_counter()
                losses = step_fn(step)
                last = step == self.iterations
                if any(isinstance(v, torch.Tensor) for v in losses.values()):
                    # the step returned device tensors (ctsgan.lazy_losses): accumulate the finiteness check on the
                    # device and read everything only where it is needed (log, checkpoint, sample grid, last step)
                    ok = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in losses.values()])
                    ok = torch.isfinite(ok).all()
                    pending = ok if pending is None else pending & ok
                    since = since or step
                    if not (step % self.log_every == 0 or step % self.ckpt_every == 0 or last
                            or step % self.sample_every == 0):
                        bar.update(1)
                        continue
                    losses = {k: float(v) for k, v in losses.items()}
                    self._check_finite(step, losses, since=since, earlier_ok=bool(pending))
                    pending = since = None
                else:
                    self._check_finite(step, losses)
                if self.ctx.is_main and (step % self.log_every == 0 or last):
                    self.log.write(step=step, seconds=round(time.perf_counter() - t0, 4),
                                   world_size=self.ctx.world_size, **losses)
                if step % self.ckpt_every == 0 or last:
                    self.save(step)
                if sample_fn is not None and self.ctx.is_main and (step % self.sample_every == 0 or last):
                    self._save_samples(step, sample_fn(step))
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
        finally:
            bar.close()
            if self.ctx.is_main:
                self.log.close()
        return {"out_dir": self.out_dir, "step": self.iterations, "checkpoint": self.last_checkpoint,
                "log": self.out_dir / "log.csv", "losses": losses}

    def _save_samples(self, step: int, images: torch.Tensor) -> None:
        from torchvision.utils import save_image  # torchvision: 1.5 s to import; only when a sample grid is written

        path = self.out_dir / "samples" / f"step_{step:06d}.png"
        with atomic_path(path) as tmp:
            save_image((images.float().clamp(-1, 1) + 1) / 2, str(tmp), nrow=3, padding=2, format="png")


def orthogonal_views(volume: torch.Tensor) -> list[torch.Tensor]:
    """Axial, coronal and sagittal centre planes (each (1, H, W)) of a (Z, Y, X) volume, for sample grids."""
    z, y, x = volume.shape
    return [volume[z // 2][None], volume[:, y // 2, :].flip(0)[None], volume[:, :, x // 2].flip(0)[None]]


__all__ = ["GANRun", "TrainingDivergedError", "build_gan", "make_adam", "resolve_device", "seed_everything",
           "set_requires_grad", "orthogonal_views"]
