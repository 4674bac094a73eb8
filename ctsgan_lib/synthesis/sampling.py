"""Sampling from a trained generator: CT-SGAN (or 3D GAN) checkpoints → volumes in HU.

CT-SGAN volumes are streamed: Rv runs over all positions (cheap), then Gslice runs over ``chunk`` positions at a time
and each chunk's centre channels are written into the output, so a 224³ volume never holds more than one chunk of
Gslice activations. Every volume has its own seed, ``volume_seed(seed, index)``, so volume ``index`` is the same
whether it is generated alone, in a batch or in a shard (bit-identical for the same ``batch`` and ``chunk``; equal
to float rounding across different batch sizes).

Examples
--------
>>> gen = load_generator("runs/smoke/ctsgan/ckpt_000030.pt", "cpu")          # doctest: +SKIP
>>> for hu, spacing_mm in generate_volumes(gen, n=2, seed=0):                 # doctest: +SKIP
...     print(hu.shape, hu.dtype, spacing_mm)
(32, 32, 32) float32 (5.5, 5.5, 5.5)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..data.intensity import model_to_hu
from ..errors import CTSGANError
from ..models.ctsgan import DEFAULT_META, CTSGANGenerator, build_ctsgan, generator_meta, synthesize
from ..models.ctsgan_cond import N_CONDITION, CondCTSGANGenerator, build_ctsgan_cond
from ..models.ctsgan_fast import FastOptions, synthesize_fast
from ..models.gan3d import Generator3D, build_gan3d, upsample_volume
from ..utils.checkpoint import load_checkpoint, load_state_strict

def volume_seed(seed: int, index: int) -> int:
    """The seed of volume ``index`` in a run seeded with ``seed`` (a 63-bit int from numpy's SeedSequence).

    Independent of batch and shard, so any process can regenerate volume ``index`` on its own.
    """
    if index < 0:
        raise ValueError(f"volume index must be >= 0, got {index}")
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & 0x7FFFFFFFFFFFFFFF


def load_generator(ckpt_path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load the generator of a CT-SGAN (``kind="ctsgan"``), conditional CT-SGAN (``"ctsgan_cond"``) or 3D GAN
    (``kind="gan3d"``) checkpoint, in eval mode.

    The returned module carries ``.meta`` (``kind``, ``spacing_mm``, ``hu_min``, ``hu_max``, ``chunk``, ``size``,
    ``step``, ``checkpoint``).

    Raises
    ------
    CheckpointError
        Unreadable, unsafe, or not a generator checkpoint, or one that does not match its stored config.
    """
    ck = load_checkpoint(ckpt_path, map_location="cpu")
    cfg = ck["config"]
    size = int(cfg["data"]["size"])
    extra = ck.get("extra", {})
    meta = {"kind": ck["kind"], "spacing_mm": tuple(extra.get("spacing_mm", DEFAULT_META["spacing_mm"])),
            "hu_min": float(cfg["data"]["hu_min"]), "hu_max": float(cfg["data"]["hu_max"]), "size": size,
            "step": int(ck["step"]), "checkpoint": str(ckpt_path), "profile": str(cfg.get("profile") or "")}
    if ck["kind"] in ("ctsgan", "ctsgan_cond"):
        gen = (build_ctsgan if ck["kind"] == "ctsgan" else build_ctsgan_cond)(size, cfg["ctsgan"])["generator"]
        for part in ("rv", "gslice") + (("gcond",) if ck["kind"] == "ctsgan_cond" else ()):
            if part not in ck["models"]:
                raise CTSGANError(f"{ckpt_path}: checkpoint has no network {part!r}")
            load_state_strict(getattr(gen, part), ck["models"][part], f"{ckpt_path} [{part}]")
        meta["chunk"] = int(cfg["ctsgan"].get("chunk", DEFAULT_META["chunk"]))
        meta["bf16"] = bool(cfg["ctsgan"].get("bf16", True))
    elif ck["kind"] == "gan3d":
        gen = build_gan3d(cfg["gan3d"])["generator"]
        load_state_strict(gen, ck["models"]["generator"], f"{ckpt_path} [generator]")
    else:
        raise CTSGANError(f"{ckpt_path}: a {ck['kind']!r} checkpoint is not a volume generator (ctsgan, ctsgan_cond "
                          f"or gan3d)")
    gen.meta = meta
    gen = gen.to(device).eval()
    return inference_layout(gen) if isinstance(gen, CTSGANGenerator) else gen


def inference_layout(gen: CTSGANGenerator) -> CTSGANGenerator:
    """Put Gslice in channels-last memory format for generation.

    oneDNN (CPU) and cuDNN (GPU) run transposed convolutions in a blocked/NHWC layout; with NCHW weights torch copies
    layouts on every call (9 % of Gslice's time on CPU). Channels-last removes those copies: one 224³ volume went from
    9.5 s to 6.0 s on 2 CPU cores (``docs/performance.md``). Outputs equal the NCHW ones to float rounding, and every
    run through :func:`load_generator` uses the same layout, so volume ``i`` stays identical across runs and shards.
    """
    gen.gslice.to(memory_format=torch.channels_last)
    return gen


def _as_generator(generator_or_ckpt, device, kind: type) -> torch.nn.Module:
    if isinstance(generator_or_ckpt, (str, Path)):
        gen = load_generator(generator_or_ckpt, device)
    else:
        gen = generator_or_ckpt.to(device)
    if not isinstance(gen, kind):
        raise CTSGANError(f"expected a {kind.__name__}, got {type(gen).__name__} "
                          f"({getattr(gen, 'meta', {}).get('checkpoint', 'in memory')})")
    return gen


def volume_noise(generator: CTSGANGenerator, seed: int, index: int, n_positions: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``patient_noise`` (patient_dim,) and ``slice_noise`` (L, slice_noise_dim) of one volume, drawn on the CPU."""
    g = torch.Generator().manual_seed(volume_seed(seed, index))
    patient = torch.randn(generator.patient_dim, generator=g)
    slices = torch.randn(n_positions, generator.slice_noise_dim, generator=g)
    return patient, slices


def generate_volumes(generator_or_ckpt, n: int, seed: int, batch: int = 1, device: str | torch.device = "cpu",
                     depth: int | None = None, chunk: int | None = None, start: int = 0,
                     fast: FastOptions | None = None, conditions: torch.Tensor | None = None
                     ) -> Iterator[tuple[np.ndarray, tuple[float, float, float]]]:
    """Yield ``n`` CT-SGAN volumes as ``(hu, spacing_mm)``.

    Parameters
    ----------
    generator_or_ckpt : CTSGANGenerator or path
        A generator (from :func:`load_generator`) or a checkpoint path.
    n : int
        Number of volumes; they are volumes ``start .. start + n − 1`` of the run seeded with ``seed``.
    seed : int
    batch : int
        Volumes per Gslice call (the last group is padded so every call has the same shape).
    device : str
    depth : int, optional
        Slices per volume (default S); may exceed S (the BiLSTM simply runs for more positions).
    chunk : int, optional
        Positions per Gslice call.
    start : int
        Index of the first volume (for shards).
    fast : FastOptions, optional
        Use the opt-in fast path (:func:`~ctsgan_lib.models.ctsgan_fast.synthesize_fast`: BatchNorm folded, flat
        slice batches, optional bf16 / ``torch.compile``); ``chunk`` is then ignored. Default None: the
        bit-reproducible default path. Same noise per volume either way.
    conditions : Tensor (n, N_CONDITION) or (n, depth − 2, N_CONDITION + 1), optional
        A conditional generator's condition of each volume (:func:`~ctsgan_lib.models.ctsgan_cond.condition_vector`,
        or per position :func:`~ctsgan_lib.models.ctsgan_cond.condition_with_z` for a ``cond_z`` model); required for
        one, refused otherwise. Volume ``index`` depends on ``(seed, index, its condition)`` only.

    Yields
    ------
    hu : ndarray float32 (depth, S, S), axis order (z, y, x)
    spacing_mm : tuple (dz, dy, dx)
    """
    gen = _as_generator(generator_or_ckpt, device, CTSGANGenerator)
    was_training = gen.training
    gen.eval()
    meta = generator_meta(gen)
    depth = int(depth or gen.size)
    if depth < 3:
        raise CTSGANError(f"depth must be >= 3 slices, got {depth}")
    batch = max(1, int(batch))
    conditional = isinstance(gen, CondCTSGANGenerator)
    if conditional != (conditions is not None):
        raise CTSGANError(f"{meta.get('checkpoint', 'generator')}: "
                          + ("a conditional CT-SGAN needs the volumes' conditions" if conditional else
                             "conditions were given but this CT-SGAN is not conditional (kind ctsgan_cond)"))
    want = ((n, depth - 2, N_CONDITION + 1) if gen.cond_z else (n, N_CONDITION)) if conditional else None
    if conditional and tuple(conditions.shape) != want:
        raise CTSGANError(f"conditions must be {want}, got {tuple(conditions.shape)}")
    if conditional and fast is not None:
        raise CTSGANError(f"{meta.get('checkpoint', 'generator')}: the fast generation path (--fast) does not take "
                          "a conditional CT-SGAN yet; generate it without --fast")
    try:
        for g0 in range(start, start + n, batch):
            idx = list(range(g0, min(g0 + batch, start + n)))
            padded = idx + [start + n + j for j in range(batch - len(idx))]   # same shape for every call
            noise = [volume_noise(gen, seed, i, depth - 2) for i in padded]
            pn = torch.stack([a for a, _ in noise])
            sn = torch.stack([b for _, b in noise])
            cond = None
            if conditional:   # padding volumes get the no-nodule condition (they are dropped)
                cond = torch.zeros(len(padded), *want[1:])
                cond[:len(idx)] = conditions[g0 - start:g0 - start + len(idx)].float()
            if fast is None:
                vols = synthesize(gen, pn, sn, chunk, to_cpu=False, cond=cond)[:len(idx)]
            else:
                vols = synthesize_fast(gen, pn, sn, fast, to_cpu=False)[:len(idx)]
            # HU on the generator's device, then one host copy per call (same float32 arithmetic as numpy's)
            hu_all = model_to_hu(vols, meta["hu_min"], meta["hu_max"]).cpu().numpy()
            for hu in hu_all:
                yield hu, tuple(float(x) for x in meta["spacing_mm"])
    finally:
        gen.train(was_training)


def generate_volume_at(generator, seed: int, index: int, device: str | torch.device = "cpu",
                       depth: int | None = None, chunk: int | None = None
                       ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Volume ``index`` of the run seeded with ``seed`` (same as the ``index``-th item of :func:`generate_volumes`
    with ``batch=1``)."""
    return next(generate_volumes(generator, 1, seed, batch=1, device=device, depth=depth, chunk=chunk, start=index))


def gan3d_noise(generator: Generator3D, seed: int, index: int) -> torch.Tensor:
    """Latent z (z_dim,) of 3D GAN volume ``index``."""
    return torch.randn(generator.z_dim, generator=torch.Generator().manual_seed(volume_seed(seed, index)))


@torch.no_grad()
def generate_gan3d_volumes(generator_or_ckpt, n: int, seed: int, batch: int = 1, device: str | torch.device = "cpu",
                           size: int | None = None, start: int = 0
                           ) -> Iterator[tuple[np.ndarray, tuple[float, float, float]]]:
    """Yield ``n`` 3D GAN baseline volumes ``(hu, spacing_mm)``, upsampled trilinearly to ``size``³ (default the
    profile's S, as in Table 1: 128³ → 224³). Seeding as in :func:`generate_volumes`."""
    gen = _as_generator(generator_or_ckpt, device, Generator3D)
    was_training = gen.training
    gen.eval()
    meta = generator_meta(gen)
    size = int(size or meta.get("size", gen.size))
    dev = next(gen.parameters()).device
    batch = max(1, int(batch))
    try:
        for g0 in range(start, start + n, batch):
            idx = list(range(g0, min(g0 + batch, start + n)))
            padded = idx + [start + n + j for j in range(batch - len(idx))]
            z = torch.stack([gan3d_noise(gen, seed, i) for i in padded]).to(dev)
            vols = gen(z).float()
            for j in range(len(idx)):
                v = upsample_volume(vols[j:j + 1], size)[0, 0].cpu().numpy()
                yield model_to_hu(v, meta["hu_min"], meta["hu_max"]).astype(np.float32), \
                    tuple(float(x) for x in meta["spacing_mm"])
    finally:
        gen.train(was_training)


def slice_consistency_hu(hu: np.ndarray) -> dict[str, float]:
    """Mean absolute HU step between neighbouring voxels along z (across generated slices) and along y, x (in-plane).

    A slice-wise generator with inconsistent slices shows a z step much larger than the in-plane steps; for real CT
    on an isotropic grid the three are similar. Returns ``{"dz_hu": ..., "dy_hu": ..., "dx_hu": ..., "z_over_xy": ...}``.
    """
    hu = np.asarray(hu, dtype=np.float32)
    dz, dy, dx = (float(np.abs(np.diff(hu, axis=a)).mean()) for a in range(3))
    return {"dz_hu": dz, "dy_hu": dy, "dx_hu": dx, "z_over_xy": dz / max(1e-6, (dy + dx) / 2)}


__all__ = ["slice_consistency_hu", "volume_seed", "load_generator", "inference_layout", "volume_noise", "generate_volumes",
           "generate_volume_at", "gan3d_noise", "generate_gan3d_volumes"]
