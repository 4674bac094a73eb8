"""Training loop of the nodule injector and eraser cGANs (paper §3.1; Jin et al. 2018; CT-GAN details).

- **Injector**: VOIs cut around the nodules of the nodule-bearing (lidc-like) training scans. Target: the real VOI.
  Input (``nodules.injector``): ``learned`` (default): the VOI with its centre cube blanked, the mask, the recorded
  diameter as a scalar channel, a soft size hint and fresh noise each step (:mod:`~.networks`); ``sphere``: the
  blanked VOI, the mask and the partial-volume sphere of the recorded sub-voxel centre and diameter.
- **Eraser**: pairs from nodule-free (nlst-like) training scans: nodules of the cohort's real sizes are injected by
  the trained injector (whichever kind it is) at random lung positions; input = injected VOI + mask + the region to
  replace, target = the original VOI.

Loss (both): LSGAN adversarial + ``l1_inside`` × L1 inside the centre cube + ``l1_outside`` × L1 outside it.
Checkpoints every ``ckpt_every`` steps (``ckpt_<step>.pt``, plain state dicts, atomic) and at the end; ``log.csv``
gets one row per step. Resuming restores both models, both optimizers, the step and the RNG states; the batch at
step ``k`` depends only on ``(seed, k)``, so an interrupted and resumed run sees the same batches as an unbroken one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data.cohort import Cohort
from ..data.intensity import hu_to_model
from ..errors import CTSGANError
from ..utils.atomic import clean_partials
from ..utils.checkpoint import latest_checkpoint, load_checkpoint, load_state_strict, save_checkpoint, set_rng_state
from ..utils.hardware import default_device
from ..utils.logs import CSVLog
from .geometry import ball, centre_mask, extract_voi, lung_of, nodule_blend_weight, place_nodules_indexed
from .inference import NoduleInjector, build_generator
from .networks import (INJECTORS, ROLES, PatchDiscriminator3D, learned_condition, lsgan_d_loss, lsgan_g_loss,
                       multi_mask_l1)

LOG_FIELDS = ["step", "loss_d", "loss_g", "adv_g", "l1_inside", "l1_outside", "d_real", "d_fake", "seconds"]


@dataclass
class VOISet:
    """Training VOIs in model units: condition ``(N, 3, V, V, V)`` and target ``(N, 1, V, V, V)``."""

    cond: np.ndarray
    target: np.ndarray
    diameters_vox: np.ndarray
    sources: list[str]

    def __len__(self) -> int:
        return len(self.target)


def injector_vois(cfg: Config, cohort, split: str = "train", kind: str | None = None) -> VOISet:
    """VOIs around every nodule (diameter <= ``mask_size``) of the nodule-bearing scans of ``split`` (module
    docstring); ``kind`` defaults to ``cfg.nodules.injector``. The learned injector's noise channel is left at 0 here
    and drawn per step by the training loop."""
    kind = cfg.nodules.injector if kind is None else kind
    v, m = cfg.nodules.voi_size, cfg.nodules.mask_size
    mask = centre_mask(v, m)
    conds, targets, diams, srcs = [], [], [], []
    for rid in cohort.ids(split=split, has_nodule=1):
        nods = cohort.row(rid)["nodules"] or []
        if not nods:
            continue
        hu, _ = cohort.read(rid)
        for k, nod in enumerate(nods):
            if nod.get("action", "original") == "erased":
                continue
            c = [int(round(float(x))) for x in nod["center_vox"]]
            d = float(nod["diameter_vox"])
            if d > m:
                continue   # does not fit the masked centre
            voi = hu_to_model(extract_voi(hu, c, v), cfg.data.hu_min, cfg.data.hu_max).astype(np.float32)
            if kind == "learned":
                conds.append(learned_condition(voi, mask, d, m, np.zeros_like(voi)))
            else:
                # partial-volume sphere at the recorded (sub-voxel) centre: a sub-voxel nodule is faint, as in data
                sub = [v // 2 + float(x) - ci for x, ci in zip(nod["center_vox"], c)]
                shape = ball(v, d, center=sub) * mask  # the model may only paint inside the blanked cube
                conds.append(np.stack([voi * (1 - mask), mask, shape]))
            targets.append(voi[None])
            diams.append(d)
            srcs.append(f"{rid}#{k}")
    if not targets:
        raise CTSGANError(f"{cohort.root}: no nodules in the {split} split to train the injector on "
                          "(the cohort needs nodule-bearing scans; run notebook 01 / `ctsgan prepare`)")
    return VOISet(np.stack(conds), np.stack(targets), np.asarray(diams), srcs)


def eraser_vois(cfg: Config, cohort, injector, split: str = "train", per_scan: int = 4,
                diameters_vox: np.ndarray | None = None) -> VOISet:
    """(injected VOI, original VOI) pairs from the nodule-free scans of ``split`` (see module docstring).

    ``diameters_vox`` to draw from: default the injector's training diameters (real nodule sizes of the cohort).
    """
    v, m = cfg.nodules.voi_size, cfg.nodules.mask_size
    mask = centre_mask(v, m)
    rng = np.random.default_rng([cfg.seed, 2])
    pool = np.asarray(diameters_vox if diameters_vox is not None else cfg.nodules.diameters_vox, dtype=float)
    pool = pool[(pool > 0) & (pool <= m)]
    if not len(pool):
        raise CTSGANError(f"no nodule diameters in (0, {m}] vox to train the eraser with")
    conds, targets, diams, srcs = [], [], [], []
    for rid in cohort.ids(split=split, has_nodule=0):
        hu, _ = cohort.read(rid)
        lung = lung_of(hu, cohort.read_label(rid))
        ds = rng.choice(pool, size=per_scan)
        placed = place_nodules_indexed(lung, ds, rng)
        for k, c in placed.items():
            d = float(ds[k])
            injected = injector.inject_at(hu, c, d, rng=rng)
            orig = hu_to_model(extract_voi(hu, c, v), cfg.data.hu_min, cfg.data.hu_max).astype(np.float32)
            inj = hu_to_model(extract_voi(injected, c, v), cfg.data.hu_min, cfg.data.hu_max).astype(np.float32)
            conds.append(np.stack([inj, mask, nodule_blend_weight(v, d)]))
            targets.append(orig[None])
            diams.append(d)
            srcs.append(f"{rid}@{c}")
    if not targets:
        raise CTSGANError(f"{cohort.root}: no nodule-free {split} scans with room in the lung to train the eraser")
    return VOISet(np.stack(conds), np.stack(targets), np.asarray(diams), srcs)


def _priors(cfg: Config, role: str, data: VOISet, kind: str = "sphere") -> tuple[float, float]:
    """Where the generator starts (model units): the training targets' median tissue around the nodules, and the
    solid-nodule density ``cfg.nodules.nodule_hu`` (sphere injector; the learned injector starts at the median of
    its whole centre cube and has no nodule prior).

    The nodule density is a physical prior rather than a data median because at low resolution (smoke, demo) most
    real nodules are sub-voxel and partial-volume faint; the shape channel carries the partial volume, so the
    nodule map itself should hold the density of solid tissue.
    """
    shape, mask = data.cond[:, 2:3], data.cond[:, 1:2]
    if role == "injector" and kind == "learned":
        bg = float(np.median(data.target[mask > 0.5]))
        return bg, bg
    near = (shape < 0.01) & (mask > 0.5)
    bg = float(np.median(data.target[near])) if near.any() else -0.8
    if role == "eraser":
        region = shape > 0.5
        bg = float(np.median(data.target[region])) if region.any() else bg
        return bg, bg
    nod = float(hu_to_model(np.float32(cfg.nodules.nodule_hu), cfg.data.hu_min, cfg.data.hu_max))
    return bg, nod


def _batch(data: VOISet, batch: int, seed: int, step: int, noise: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch of step ``step``: indices, random flips and (``noise``: the learned injector's last channel) noise from
    ``default_rng([seed, 1, step])`` (resume-exact)."""
    rng = np.random.default_rng([seed, 1, step])
    idx = rng.integers(0, len(data), size=batch)
    flips = rng.random((batch, 3)) < 0.5
    conds, targets = [], []
    for i, f in zip(idx, flips):
        axes = tuple(a + 1 for a in range(3) if f[a])  # spatial axes of (C, Z, Y, X)
        c, t = data.cond[i], data.target[i]
        if noise:
            c = c.copy()
            c[-1] = rng.standard_normal(c.shape[1:]).astype(np.float32) * c[1]   # inside the mask only
        if axes:
            c, t = np.flip(c, axes), np.flip(t, axes)
        conds.append(np.ascontiguousarray(c))
        targets.append(np.ascontiguousarray(t))
    return torch.from_numpy(np.stack(conds)), torch.from_numpy(np.stack(targets))


def train_nodule_gan(cfg: Config, role: str = "injector", cohort_dir: str | Path | None = None,
                     out_dir: str | Path | None = None, resume: bool = True, device: str | None = None,
                     injector_dir: str | Path | None = None, iterations: int | None = None,
                     progress: bool = True) -> dict:
    """Train (or resume) the nodule injector or eraser.

    Parameters
    ----------
    cfg : Config
        Uses ``cfg.nodules`` (VOI/mask size, channels, batch, iterations, lr, betas, L1 weights, ckpt_every),
        ``cfg.data.hu_min/hu_max`` and ``cfg.seed``.
    role : {"injector", "eraser"}
    cohort_dir : path, optional
        Default ``cfg.data_dir / "cohort"``.
    out_dir : path, optional
        Default ``cfg.runs_dir / "nodules" / role``.
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` (a finished run returns at once).
    device : str, optional
        Default :func:`ctsgan_lib.utils.hardware.default_device`.
    injector_dir : path, optional
        Eraser only: the trained injector (default ``cfg.runs_dir / "nodules" / "injector"``).
    iterations : int, optional
        Stop at this step instead of ``cfg.nodules.iterations`` (tests use it to interrupt a run).
    progress : bool
        tqdm bar.

    Returns
    -------
    dict
        ``checkpoint`` (path of the last one), ``step``, ``log`` (path), ``n_train`` (VOIs), ``resumed_from``.
    """
    if role not in ROLES:
        raise CTSGANError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    nc = cfg.nodules
    if nc.injector not in INJECTORS:
        raise CTSGANError(f"nodules.injector must be one of {', '.join(INJECTORS)}, got {nc.injector!r}")
    total = int(iterations if iterations is not None else nc.iterations)
    cohort = Cohort(cohort_dir if cohort_dir is not None else cfg.data_dir / "cohort")
    out = Path(out_dir) if out_dir is not None else cfg.runs_dir / "nodules" / role
    out.mkdir(parents=True, exist_ok=True)
    clean_partials(out)   # a run killed while writing a checkpoint leaves its temporary file behind
    device = torch.device(device or default_device())

    injector_src = ""
    kind = nc.injector if role == "injector" else "eraser"
    if role == "injector":
        data = injector_vois(cfg, cohort, kind=kind)
    else:
        inj_dir = Path(injector_dir) if injector_dir is not None else cfg.runs_dir / "nodules" / "injector"
        injector = NoduleInjector.from_checkpoint(inj_dir)
        injector_src = injector.source
        ick = load_checkpoint(injector.source, kind="nodule_injector")
        pool = np.asarray(ick["extra"].get("train_diameters_vox") or nc.diameters_vox, dtype=float)
        data = eraser_vois(cfg, cohort, injector, per_scan=nc.eraser_pairs_per_scan, diameters_vox=pool)

    torch.manual_seed(cfg.seed + ROLES.index(role))
    prior = _priors(cfg, role, data, kind)
    gen = build_generator(kind, nc.voi_size, nc.base_channels, prior).to(device)
    disc = PatchDiscriminator3D(nc.base_channels, 1 + gen.in_channels).to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=nc.lr, betas=tuple(nc.betas))
    opt_d = torch.optim.Adam(disc.parameters(), lr=nc.lr, betas=tuple(nc.betas))

    step, resumed_from = 0, None
    last = latest_checkpoint(out) if resume else None
    if last is not None:
        ck = load_checkpoint(last, kind=f"nodule_{role}", map_location="cpu")
        if role == "injector" and ck["extra"].get("injector", "sphere") != kind:
            raise CTSGANError(f"{last}: a {ck['extra'].get('injector', 'sphere')} injector, but nodules.injector is "
                              f"{kind!r}; pass --fresh (or resume=False) to start over")
        if "discriminator" not in ck["models"]:  # a shipped pretrained generator (ctsgan_lib.utils.pretrained)
            raise CTSGANError(f"{last}: has no discriminator (a shipped pretrained generator?), so it cannot resume "
                              "training; pass --fresh (or resume=False) to train from scratch")
        load_state_strict(gen, ck["models"]["generator"], str(last))
        load_state_strict(disc, ck["models"]["discriminator"], str(last))
        opt_g.load_state_dict(ck["optimizers"]["g"])
        opt_d.load_state_dict(ck["optimizers"]["d"])
        if ck.get("rng"):
            set_rng_state(ck["rng"])
        step, resumed_from = int(ck["step"]), str(last)
        prior = tuple(ck["extra"]["prior_model"])
    elif not resume:
        for old in out.glob("ckpt_*.pt"):
            old.unlink()

    extra = {"role": role, "voi_size": nc.voi_size, "mask_size": nc.mask_size, "base_channels": nc.base_channels,
             "prior_model": [float(p) for p in prior], "hu_min": cfg.data.hu_min, "hu_max": cfg.data.hu_max,
             "n_train": len(data), "train_diameters_vox": [float(d) for d in data.diameters_vox],
             "cohort": str(cohort.root), "injector_checkpoint": injector_src,
             "injector": kind if role == "injector" else None, "feather_vox": nc.feather_vox,
             "paste": nc.paste, "touchup_sigma_vox": nc.touchup_sigma_vox}

    def save(at: int) -> Path:
        return save_checkpoint(out / f"ckpt_{at:06d}.pt", kind=f"nodule_{role}", step=at, config=cfg.to_dict(),
                               models={"generator": gen, "discriminator": disc},
                               optimizers={"g": opt_g, "d": opt_d}, extra=extra)

    ckpt = last
    log = CSVLog(out / "log.csv", LOG_FIELDS, resume_step=step if resumed_from else None)
    gen.train()
    disc.train()
    try:
        for k in tqdm(range(step + 1, total + 1), desc=f"nodule {role}", disable=not progress, initial=step,
                      total=total):
            t0 = time.perf_counter()
            cond, real = (t.to(device) for t in _batch(data, nc.batch, cfg.seed, k, noise=kind == "learned"))
            mask = cond[:, 1:2]
            fake = gen.compose(gen(cond), cond)

            opt_d.zero_grad(set_to_none=True)
            d_real, d_fake = disc(real, cond), disc(fake.detach(), cond)
            loss_d = lsgan_d_loss(d_real, d_fake)
            loss_d.backward()
            opt_d.step()

            opt_g.zero_grad(set_to_none=True)
            adv = lsgan_g_loss(disc(fake, cond))
            l1_in, l1_out = multi_mask_l1(fake, real, mask)
            loss_g = adv + nc.l1_inside * l1_in + nc.l1_outside * l1_out
            loss_g.backward()
            opt_g.step()

            log.write(step=k, loss_d=f"{loss_d.item():.5f}", loss_g=f"{loss_g.item():.5f}",
                      adv_g=f"{adv.item():.5f}", l1_inside=f"{l1_in.item():.5f}", l1_outside=f"{l1_out.item():.5f}",
                      d_real=f"{d_real.mean().item():.4f}", d_fake=f"{d_fake.mean().item():.4f}",
                      seconds=f"{time.perf_counter() - t0:.3f}")
            step = k
            if k % nc.ckpt_every == 0 or k == total:
                ckpt = save(k)
                if nc.keep_checkpoints > 0:   # disk: 195 MiB a checkpoint at 64³ (docs/performance.md)
                    for old in sorted(out.glob("ckpt_*.pt"))[:-nc.keep_checkpoints]:
                        old.unlink(missing_ok=True)
    finally:
        log.close()
    if ckpt is None:  # nothing to train (total == 0): still leave a loadable checkpoint
        ckpt = save(step)
    return {"checkpoint": str(ckpt), "step": step, "log": str(out / "log.csv"), "n_train": len(data),
            "resumed_from": resumed_from}
