"""Performance benchmarks (notebook 08, ``ctsgan bench``): memory and throughput of CT-SGAN vs the 3D GAN.

This package module holds what both benches share: the *workloads* (one full training step of a model at a given
volume size, built from the real model classes and training-step functions) and the record metadata (hardware, load,
commit) every JSON line carries. The benches themselves are :mod:`ctsgan_lib.bench.memory`,
:mod:`ctsgan_lib.bench.throughput` and :mod:`ctsgan_lib.bench.flops`.

A workload is named ``"ctsgan"``, ``"gan3d"`` or ``"module:callable"``; the last form lets a test or a user benchmark
any other model with the same harness (the callable has the signature of :func:`build_workload` minus ``name``).
"""
from __future__ import annotations

import importlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..train import distributed as D
from ..train.ctsgan_loop import ctsgan_step
from ..train.gan3d_loop import gan3d_step
from ..train.gan_common import build_gan
from ..train.volumes import VolumeDataset
from ..utils.hardware import git_commit, hardware_info

#: Model names the benches know.
MODELS = ("ctsgan", "gan3d")


@dataclass
class Workload:
    """One model, ready to run full training steps on an in-memory batch.

    Attributes
    ----------
    name : str
        ``"ctsgan"`` or ``"gan3d"`` (or a custom spec).
    size : int
        Volume side S in voxels (the step trains on S³ volumes).
    native_size : int
        Resolution the generator produces before any resize (the 3D GAN's ``gan3d.size``; S for CT-SGAN).
    batch : int
        Volumes per training step.
    modules : dict
        Every network the step trains, by name (generator parts and discriminators).
    step : callable
        ``step() -> dict`` runs one full training step (D step then G step) and returns its losses.
    generator : torch.nn.Module or None
        What inference runs (used by the throughput bench).
    widths : dict
        The width settings the networks were built with (recorded with every number).
    """

    name: str
    size: int
    native_size: int
    batch: int
    modules: dict
    step: Callable[[], dict]
    generator: Any = None
    widths: dict = field(default_factory=dict)

    def param_count(self) -> int:
        """Parameters of all networks in the step."""
        return sum(p.numel() for m in self.modules.values() for p in m.parameters())

    def param_bytes(self) -> int:
        """Bytes held by the parameters of all networks (their own dtype)."""
        return sum(p.numel() * p.element_size() for m in self.modules.values() for p in m.parameters())


def bench_config(cfg, model: str, size: int, native_size: int | None = None):
    """The config a benchmark at volume size ``size`` uses: the profile's widths with ``data.size = size``.

    For the 3D GAN the native resolution is ``size`` too (the memory claim is about producing S³ directly) unless
    ``native_size`` is given (the "configured baseline" row uses ``cfg.gan3d.size``, upsampled to S).
    CT-SGAN's ``slab_len``/``n_slices`` are clipped to fit a small S (they must be <= S - 2).
    """
    over: dict[str, Any] = {"data.size": size}
    if model == "gan3d":
        over["gan3d.size"] = native_size or size
    if cfg.ctsgan.slab_len > size - 2:
        over["ctsgan.slab_len"] = size - 2
        over["ctsgan.n_slices"] = min(cfg.ctsgan.n_slices, size - 2)
    return cfg.replace(**over)


def flatten_config(cfg) -> dict[str, Any]:
    """The config as dotted-key overrides (``{"ctsgan.ngf": 32, ...}``, without ``profile``): how a bench passes
    its config to a worker process, which rebuilds it with ``load_profile(profile, **flat)``."""
    def walk(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(walk(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    flat = walk(cfg.to_dict())
    flat.pop("profile", None)
    return flat


def build_workload(name: str, cfg, size: int, batch: int, device: str, seed: int = 0,
                   native_size: int | None = None) -> Workload:
    """Build a model's training-step workload at volume size ``size``.

    Parameters
    ----------
    name : str
        ``"ctsgan"``, ``"gan3d"`` or ``"module:callable"``.
    cfg : Config
        Profile config; its width settings are used, ``data.size`` is set to ``size``.
    size : int
        Volume side S in voxels.
    batch : int
        Volumes per step.
    device : str
        ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds weights and the in-memory batch.
    native_size : int, optional
        3D GAN only: generator resolution (default ``size``).

    Returns
    -------
    Workload
    """
    torch.manual_seed(seed)
    if ":" in name:
        mod, fn = name.split(":", 1)
        return getattr(importlib.import_module(mod), fn)(cfg, size, batch, device, seed)
    if name == "ctsgan":
        return _ctsgan_workload(bench_config(cfg, "ctsgan", size), size, batch, device, seed)
    if name == "gan3d":
        return _gan3d_workload(bench_config(cfg, "gan3d", size, native_size), size, batch, device, seed)
    raise ValueError(f"unknown benchmark model {name!r} (choose from {', '.join(MODELS)} or module:callable)")


# ------------------------------------------------------------------------------------------------------------------
# Record metadata


def machine_load() -> list[float] | None:
    """1/5/15-minute load averages (other users share the CPU: timings are noisy when these exceed the cores)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def record_meta(cfg, device: str, run_id: str) -> dict:
    """What every JSON line carries: profile, seed, run id, time, commit, hardware and machine load."""
    return {
        "profile": cfg.profile,
        "seed": cfg.seed,
        "run_id": run_id,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(Path(__file__).resolve().parents[2]),
        "hardware": hardware_info(device),
        "loadavg": machine_load(),
    }


def new_run_id() -> str:
    """Groups the records of one bench invocation (the headline ratios compare rows of the same run)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def latest_run(records: list[dict], bench: str | None = None) -> list[dict]:
    """The records of the most recent run in a JSON-lines file (optionally only one ``bench`` kind)."""
    if bench is not None:
        records = [r for r in records if r.get("bench") == bench]
    if not records:
        return []
    last = records[-1].get("run_id")
    return [r for r in records if r.get("run_id") == last]


def timed(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> tuple[Any, float]:
    """Run ``fn`` and return ``(result, seconds)`` (calling ``sync`` before reading the clock, for CUDA)."""
    t0 = time.perf_counter()
    out = fn()
    if sync:
        sync()
    return out, time.perf_counter() - t0


def dumps(record: dict) -> str:
    return json.dumps(record, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------------------------------
# The two workloads: the real networks (ctsgan_lib.models), built by the loops' own setup (train.gan_common.build_gan),
# and the loops' own step functions (ctsgan_loop.ctsgan_step, gan3d_loop.gan3d_step), in one process (no torchrun),
# on an in-memory cohort of random HU volumes: memory and speed do not depend on the voxel values.


def _random_cohort(cfg, size: int, n: int, seed: int):
    """``n`` random HU volumes of ``size``³ as the loops' in-memory training set."""
    rng = np.random.default_rng(seed)
    vols = rng.uniform(cfg.data.hu_min, cfg.data.hu_max, size=(n, size, size, size)).astype(np.float32)
    return VolumeDataset(vols, hu_min=cfg.data.hu_min, hu_max=cfg.data.hu_max, size=size)


def _ctsgan_workload(cfg, size: int, batch: int, device: str, seed: int) -> Workload:
    ct = cfg.ctsgan
    data = _random_cohort(cfg, size, batch, seed)
    ctx = D.DistContext()
    nets, opts = build_gan("ctsgan", size, ct, device, ctx)   # the weights were seeded by build_workload

    def step() -> dict:
        return ctsgan_step(nets, opts, data, ct, batch, device, ctx)

    widths = {k: getattr(ct, k) for k in ("patient_dim", "slice_noise_dim", "slice_code_dim", "ngf", "ndf",
                                           "slab_len", "n_slices", "loss", "bf16")}
    return Workload("ctsgan", size, size, batch, nets, step, generator=nets["generator"], widths=widths)


def _gan3d_workload(cfg, size: int, batch: int, device: str, seed: int) -> Workload:
    g3 = cfg.gan3d
    data = _random_cohort(cfg, size, batch, seed)
    if g3.size != size:
        data = data.resized(g3.size)      # as train_gan3d: the cohort is resized once to the native size
    ctx = D.DistContext()
    nets, opts = build_gan("gan3d", size, g3, device, ctx)    # the weights were seeded by build_workload

    def step() -> dict:
        return gan3d_step(nets, opts, data, g3, batch, device, ctx)

    widths = {k: getattr(g3, k) for k in ("size", "z_dim", "ngf", "ndf", "loss", "bf16")}
    return Workload("gan3d", size, g3.size, batch, nets, step, generator=nets["generator"], widths=widths)
