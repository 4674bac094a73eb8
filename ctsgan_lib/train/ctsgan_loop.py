"""CT-SGAN training loop (paper §2, Eq. 1–2): alternating Dslice+Dslab and Gslice+Rv updates on sampled slabs.

Per step, for each of B real volumes a slab region of T 3D-slice positions is drawn. The generator draws fresh
patient and slice noise, runs Rv over all S − 2 positions (cheap) and Gslice only on the T slab positions, so Gslice
memory does not depend on S. Dslab judges the T centre slices of real and generated slabs; Dslice judges N of the
slab's 3D slices, conditioned on their positions.

The conditional CT-SGAN (issue 26, :mod:`ctsgan_lib.models.ctsgan_cond`) runs through the same step: each real
volume's condition (from its manifest nodules) is given to the generator for that sample's fake and to both critics
for the real and the fake, so the critics judge "real given this condition". :func:`train_ctsgan_cond` trains it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..errors import CTSGANError
from ..models.ctsgan import synthesize
from ..models.ctsgan_cond import condition_table
from ..utils.precision import autocast
from . import distributed as D
from . import losses
from .gan_common import GANRun, build_gan, orthogonal_views, resolve_device, set_requires_grad
from .volumes import VolumeDataset, sample_slab_batch, training_dataset

LOSS_NAMES = ["loss_d", "loss_dslice", "loss_dslab", "gp_dslice", "gp_dslab", "loss_g", "loss_g_slice",
              "loss_g_slab"]


def _gather_positions(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) and offsets (B, N) → (B·N, ...)."""
    b = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(offsets)
    return x[b.reshape(-1), offsets.reshape(-1)]


def slab_batch(gen, data: VolumeDataset, ct, batch: int, device: str, amp, with_grad: bool,
               labels: torch.Tensor | None = None):
    """Real slab/slices and generated slab/slices for one D or G update.

    A slab region per real volume and N slice offsets inside it; the generator runs Rv over all S−2 positions and
    Gslice only on the slab positions. With ``labels`` (N_volumes, N_CONDITION), or (N_volumes, S − 2, F) per
    position (``ctsgan.cond_z``), the conditional model: each fake is generated under the condition of the real
    volume it is paired with, returned last (None without ``labels``).
    """
    size, t_len = data.size, ct.slab_len
    index, start, offsets = sample_slab_batch(len(data), batch, size, t_len, ct.n_slices)
    if getattr(ct, "async_copies", False):
        return _slab_batch_async(gen, data, ct, batch, device, amp, with_grad, index, start, offsets, labels)
    offsets = offsets.to(device)
    window = data.slab_windows(index, start, t_len).to(device)                 # (B, T+2, S, S)
    real3 = torch.stack([window[:, k:k + 3] for k in range(t_len)], dim=1)     # (B, T, 3, S, S) real 3D slices
    real_slab = window[:, 1:t_len + 1, None].transpose(1, 2)                   # (B, 1, T, S, S) centre slices
    real_slices = _gather_positions(real3, offsets)                            # (B·N, 3, S, S)
    positions = (start[:, None] + offsets.cpu()).reshape(-1).to(device)        # (B·N,) in [0, S−2)
    patient_noise, slice_noise = gen.sample_noise(batch, device=device)
    slab_pos = (start[:, None] + torch.arange(t_len)[None]).to(device)         # (B, T)
    cond = None if labels is None else labels[index].to(device)                # (B, [S−2,] F): no RNG draw
    with amp, torch.set_grad_enabled(with_grad):
        fake3 = gen(patient_noise, slice_noise, slab_pos, *(() if cond is None else (cond,))).float()
    fake_slab = fake3[:, :, 1][:, None]                                        # (B, 1, T, S, S)
    fake_slices = _gather_positions(fake3, offsets)                            # (B·N, 3, S, S)
    # slab starts: only a position-conditioned Dslab (ctsgan.dslab_position) reads them
    return real_slices, real_slab, positions, fake_slices, fake_slab, start.to(device), cond


def critic_conditions(cond: torch.Tensor, positions: torch.Tensor, start: torch.Tensor, slab_len: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditions Dslice and Dslab judge under: per judged slice (B·N, F) and per slab (B, F).

    ``cond`` is (B, F) per volume, or (B, S − 2, F) per position (``ctsgan.cond_z``): then each slice gets the
    condition at its position and each slab the mean over its positions. ``positions`` (B·N,) are b-major.
    """
    b = cond.shape[0]
    per_volume = torch.arange(b, device=cond.device).repeat_interleave(positions.shape[0] // b)
    if cond.dim() == 2:
        return cond[per_volume], cond
    slab = start.to(cond.device)[:, None] + torch.arange(slab_len, device=cond.device)[None]
    return cond[per_volume, positions.to(cond.device)], cond[torch.arange(b, device=cond.device)[:, None], slab].mean(1)


def _upload(t: torch.Tensor, device: str) -> torch.Tensor:
    """Host → device without a host synchronisation on CUDA (pinned staging, non-blocking); a plain move elsewhere."""
    if str(device).startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _slab_batch_async(gen, data: VolumeDataset, ct, batch: int, device: str, amp, with_grad: bool,
                      index: torch.Tensor, start: torch.Tensor, offsets: torch.Tensor,
                      labels: torch.Tensor | None = None):
    """:func:`slab_batch` with every host → device copy non-blocking (``ctsgan.async_copies``): the same draws from
    the same RNGs in the same order, so the same values; only the copies no longer wait for the GPU to drain."""
    t_len = ct.slab_len
    window = _upload(data.slab_windows(index, start, t_len), device)           # (B, T+2, S, S)
    positions = _upload((start[:, None] + offsets).reshape(-1), device)        # (B·N,)
    offsets = _upload(offsets, device)
    real3 = torch.stack([window[:, k:k + 3] for k in range(t_len)], dim=1)
    real_slab = window[:, 1:t_len + 1, None].transpose(1, 2)
    real_slices = _gather_positions(real3, offsets)
    patient_noise, slice_noise = (_upload(t, device) for t in gen.sample_noise(batch))   # drawn on the CPU as before
    slab_pos = _upload(start[:, None] + torch.arange(t_len)[None], device)
    cond = None if labels is None else _upload(labels[index], device)
    with amp, torch.set_grad_enabled(with_grad):
        fake3 = gen(patient_noise, slice_noise, slab_pos, *(() if cond is None else (cond,))).float()
    fake_slab = fake3[:, :, 1][:, None]
    fake_slices = _gather_positions(fake3, offsets)
    return real_slices, real_slab, positions, fake_slices, fake_slab, _upload(start, device), cond


def dslab_is_conditioned(dslab: torch.nn.Module) -> bool:
    """Whether Dslab takes the slab start (``ctsgan.dslab_position``); sees through the DDP wrapper."""
    return getattr(getattr(dslab, "module", dslab), "position", None) is not None


def ctsgan_step(nets: dict[str, torch.nn.Module], opts: dict[str, torch.optim.Optimizer], data: VolumeDataset,
                ct, batch: int, device: str, ctx: D.DistContext, labels: torch.Tensor | None = None
                ) -> dict[str, float]:
    """One alternating update: ``ct.d_steps`` Dslice + Dslab updates (generator fixed), then one Gslice + Rv update
    (discriminators fixed) on the last D update's fakes. ``labels``: the conditional model's per-volume conditions
    (see :func:`slab_batch`).

    Returns the step's losses as floats (see ``LOSS_NAMES``; D terms from the last D update), or as 0-d device
    tensors with ``ct.lazy_losses`` (no host synchronisation; :class:`~.gan_common.GANRun` reads them when it logs).
    """
    gen, dslice, dslab = nets["generator"], nets["dslice"], nets["dslab"]
    kind, amp = ct.loss, autocast(device, ct.bf16)
    n_d = max(1, int(getattr(ct, "d_steps", 1)))
    gp_fp32 = bool(getattr(ct, "gp_fp32", False))
    slab_conditioned = dslab_is_conditioned(dslab)

    # --- D steps (Eq. 2; the N-slice sum is averaged so Dslice's scale does not depend on N) ----------------------
    set_requires_grad([dslice, dslab], True)
    for k in range(n_d):
        real_slices, real_slab, positions, fake_slices, fake_slab, start, cond = slab_batch(
            gen, data, ct, batch, device, amp, with_grad=k == n_d - 1, labels=labels)   # last fakes feed the G step
        slab_cond = (start,) if slab_conditioned else ()
        slice_cond: tuple = ()
        if cond is not None:
            slice_c, slab_c = critic_conditions(cond, positions, start, ct.slab_len)
            slice_cond, slab_cond = (slice_c,), (start if slab_conditioned else None, slab_c)
        opts["d"].zero_grad(set_to_none=True)
        with amp:
            l_dslice = losses.d_loss(kind, dslice(real_slices, positions, *slice_cond),
                                     dslice(fake_slices.detach(), positions, *slice_cond))
            l_dslab = losses.d_loss(kind, dslab(real_slab, *slab_cond), dslab(fake_slab.detach(), *slab_cond))
            gp_slice = gp_slab = torch.zeros((), device=device)
            if kind == "wgan-gp" and not gp_fp32:
                gp_slice = losses.gradient_penalty(dslice, real_slices, fake_slices, positions, *slice_cond)
                gp_slab = losses.gradient_penalty(dslab, real_slab, fake_slab, *slab_cond)
        if kind == "wgan-gp" and gp_fp32:
            # ctsgan.gp_fp32: the penalty is a double backward of ‖∇D‖ − 1, a difference of numbers near 1: in bf16
            # (8 mantissa bits) it would be rounding noise; eager, so no compiled graph needs double backward
            with torch.autocast(str(device).split(":")[0], enabled=False):
                gp_slice = losses.gradient_penalty(dslice, real_slices, fake_slices, positions, *slice_cond)
                gp_slab = losses.gradient_penalty(dslab, real_slab, fake_slab, *slab_cond)
        loss_d = l_dslice + l_dslab + ct.gp_weight * (gp_slice + gp_slab)
        loss_d.backward()
        D.all_reduce_grads(list(dslice.parameters()) + list(dslab.parameters()), ctx)
        opts["d"].step()

    # --- G step: the last fakes through the updated discriminators ------------------------------------------------
    set_requires_grad([dslice, dslab], False)
    opts["g"].zero_grad(set_to_none=True)
    with amp:
        l_g_slice = losses.g_loss(kind, dslice(fake_slices, positions, *slice_cond))
        l_g_slab = losses.g_loss(kind, dslab(fake_slab, *slab_cond))
    loss_g = l_g_slice + l_g_slab
    loss_g.backward()
    D.all_reduce_grads(gen.parameters(), ctx)
    opts["g"].step()
    D.average_buffers(gen, ctx)
    set_requires_grad([dslice, dslab], True)

    vals = [loss_d, l_dslice, l_dslab, gp_slice, gp_slab, loss_g, l_g_slice, l_g_slab]
    if getattr(ct, "lazy_losses", False):   # no host sync here: GANRun reads them at its log/checkpoint steps
        return {k: v.detach() for k, v in zip(LOSS_NAMES, vals)}
    return {k: float(v.detach()) for k, v in zip(LOSS_NAMES, vals)}


def sample_grid(gen, data: VolumeDataset, seed: int, n: int = 2, chunk: int = 32,
                cond: torch.Tensor | None = None) -> torch.Tensor:
    """Axial/coronal/sagittal centre planes of one real and ``n`` generated volumes (fixed noise, eval mode;
    ``cond`` (n, N_CONDITION) for the conditional model)."""
    g = torch.Generator().manual_seed(seed)
    was = gen.training
    gen.eval()
    try:
        pn = torch.randn(n, gen.patient_dim, generator=g)
        sn = torch.randn(n, gen.n_positions, gen.slice_noise_dim, generator=g)
        fakes = synthesize(gen, pn, sn, chunk, cond=cond)
    finally:
        gen.train(was)
    vols = [data.data[0].float()] + list(fakes)
    return torch.stack([v for vol in vols for v in orthogonal_views(vol)])


def train_ctsgan(cfg: Config, cohort_dir: str | Path | None = None, out_dir: str | Path | None = None,
                 resume: bool = True, device: str | None = None, progress: bool = True,
                 volumes_hu: np.ndarray | None = None, spacing_mm=(1.0, 1.0, 1.0), *, conditional: bool = False,
                 nodules: list[list[dict]] | None = None) -> dict[str, Any]:
    """Train CT-SGAN (Rv, Gslice, Dslice, Dslab), or with ``conditional`` the conditional CT-SGAN.

    Parameters
    ----------
    cfg : Config
        Profile; uses ``cfg.data`` (size, HU window), ``cfg.ctsgan`` (all model and optimisation settings) and
        ``cfg.seed``.
    cohort_dir : path, optional
        Training cohort (default: :func:`~ctsgan_lib.train.volumes.training_cohort_dir`, the nodule-free set).
    out_dir : path, optional
        Run folder (default ``runs/<P>/ctsgan``): ``ckpt_<step>.pt``, ``log.csv``, ``samples/``,
        ``training_options.json``.
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` (exactly: networks, optimizers, step and RNG states).
        ``False`` starts over and removes that folder's old checkpoints.
    device : str, optional
        ``"cpu"``, ``"cuda"``; default CUDA when present (bf16 autocast there if ``ctsgan.bf16``). Under ``torchrun``
        each rank uses its own GPU (or CPU with gloo) and ``ctsgan.batch`` is split over ranks.
    progress : bool
        tqdm progress bar.
    volumes_hu : array (N, S, S, S), optional
        In-memory training volumes in HU instead of a cohort (tests, experiments).
    spacing_mm : tuple
        Spacing of ``volumes_hu``.
    conditional : bool
        Train the conditional model (issue 26): see :func:`train_ctsgan_cond`.
    nodules : list of list of dict, optional
        Conditional model with ``volumes_hu``: each volume's nodules (``diameter_vox`` each), as a manifest has them.

    Returns
    -------
    dict
        ``out_dir``, ``step``, ``checkpoint`` (last written), ``log`` (log.csv path), ``losses`` (last step).

    Raises
    ------
    TrainingDivergedError
        A loss became NaN/Inf; the last good checkpoint is kept.
    """
    ct = cfg.ctsgan
    ctx = D.init_from_env(str(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    try:
        dev = resolve_device(device, ctx)
        if ct.batch % ctx.world_size:
            raise CTSGANError(f"ctsgan.batch ({ct.batch}) must be divisible by the number of processes "
                              f"({ctx.world_size})")
        kind = "ctsgan_cond" if conditional else "ctsgan"
        if conditional and cohort_dir is None and volumes_hu is None:
            cohort_dir = conditional_cohort_dir(cfg)
        data = training_dataset(cfg, cohort_dir, volumes_hu, spacing_mm, progress=progress and ctx.is_main,
                                with_nodules=conditional)
        labels, extra = (condition_labels(data, nodules, ct.cond_z) if conditional else (None, {}))
        # seeded: same initial weights on every rank (then broadcast anyway)
        nets, opts = build_gan(kind, cfg.data.size, ct, dev, ctx, seed=cfg.seed)
        gen, dslice, dslab = nets["generator"], nets["dslice"], nets["dslab"]
        models = {"rv": gen.rv, "gslice": gen.gslice, "dslice": dslice, "dslab": dslab}
        if conditional:
            models["gcond"] = gen.gcond
        run = GANRun(kind=kind, config=cfg.to_dict(), out_dir=out_dir or cfg.runs_dir / kind, models=models,
                     optimizers=opts, iterations=ct.iterations, ckpt_every=ct.ckpt_every,
                     sample_every=ct.sample_every, loss_names=LOSS_NAMES, resume=resume, seed=cfg.seed, ctx=ctx,
                     device=dev, progress=progress, log_every=ct.log_every,
                     extra={"spacing_mm": list(data.spacing_mm), "data_source": data.source, "n_volumes": len(data),
                            **extra})
        per_rank = ct.batch // ctx.world_size
        # the conditional sample grid: one volume without nodules, one with the training set's first nodule condition
        grid_cond = None
        if labels is not None:
            has = labels[..., 0].reshape(len(labels), -1).amax(dim=1) > 0
            grid_cond = torch.stack([torch.zeros_like(labels[0]), labels[has][0]])
        return run.run(lambda step: ctsgan_step(nets, opts, data, ct, per_rank, dev, ctx, labels=labels),
                       lambda step: sample_grid(gen, data, cfg.seed, chunk=ct.chunk, cond=grid_cond))
    finally:
        D.shutdown(ctx)


def conditional_cohort_dir(cfg: Config) -> Path:
    """The conditional CT-SGAN's default training set: the prepared cohort ``data/<P>/cohort`` (its train split, with
    the native nodules; docs/ctsgan.md says why not the debiased cohort)."""
    return cfg.data_dir / "cohort"


def condition_labels(data: VolumeDataset, nodules: list[list[dict]] | None = None, cond_z: bool = False
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Per-volume conditions (N, N_CONDITION) of a training set, or per position (N, S − 2, N_CONDITION + 1) with
    ``cond_z`` (from each nodule's ``center_vox`` z), and what a checkpoint records about them.

    ``nodules`` is needed for in-memory volumes; a cohort's come from its manifest (``data.nodules``).
    """
    rows = data.nodules if nodules is None else nodules
    if rows is None or len(rows) != len(data):
        raise CTSGANError(f"{data.source}: the conditional CT-SGAN needs each training volume's nodules "
                          f"(got {'none' if rows is None else len(rows)} lists for {len(data)} volumes)")
    need = ("diameter_vox", "center_vox") if cond_z else ("diameter_vox",)
    lacking = [(data.ids[i], k) for i, r in enumerate(rows) for n in r for k in need if k not in n]
    if lacking:
        raise CTSGANError(f"{data.source}: nodules without {lacking[0][1]!r} in the manifest (e.g. {lacking[0][0]!r}); "
                          f"the conditional CT-SGAN needs each nodule's {' and '.join(need)} (`ctsgan prepare` "
                          f"writes them)")
    labels = condition_table(rows, data.size - 2 if cond_z else None)
    n_pos = int((labels[..., 0].amax(dim=-1) if cond_z else labels[:, 0]).gt(0).sum())
    if n_pos == 0 or n_pos == len(data):
        raise CTSGANError(f"{data.source}: the conditional CT-SGAN needs training volumes with and without nodules "
                          f"(got {n_pos} of {len(data)} with nodules)")
    what = "nodules (presence, count, mean diameter_vox" + (", z profile)" if cond_z else ")")
    return labels, {"condition": what, "n_with_nodules": n_pos}


def train_ctsgan_cond(cfg: Config, cohort_dir: str | Path | None = None, out_dir: str | Path | None = None,
                      **kw: Any) -> dict[str, Any]:
    """Train the conditional CT-SGAN (issue 26; :mod:`ctsgan_lib.models.ctsgan_cond`), kind ``ctsgan_cond``.

    Same settings, schedule, checkpoints and exact resume as :func:`train_ctsgan`; the training set is every train
    scan of ``cohort_dir`` (default :func:`conditional_cohort_dir`), with and without nodules, each conditioned on its
    manifest nodules; the run folder defaults to ``runs/<P>/ctsgan_cond``. Other keywords as :func:`train_ctsgan`
    (``nodules=`` gives the nodule lists of in-memory ``volumes_hu``).
    """
    return train_ctsgan(cfg, cohort_dir, out_dir, conditional=True, **kw)


__all__ = ["train_ctsgan", "train_ctsgan_cond", "conditional_cohort_dir", "condition_labels", "critic_conditions",
           "ctsgan_step", "slab_batch", "dslab_is_conditioned", "sample_grid", "LOSS_NAMES"]
