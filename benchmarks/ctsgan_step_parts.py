"""Where a CT-SGAN training step's time goes, part by part, at the demo profile's widths (64³, batch 4, T = 16, N = 6).

Times each part of ``ctsgan_step`` on its own (forward + backward where training does both), median of ``--repeats``
after a warm-up, then the whole step, and two candidate rewrites measured the same way: one critic call on real and
fake together instead of two calls. Random in-memory volumes; speed does not depend on the data.

    .venv/bin/python benchmarks/ctsgan_step_parts.py --threads 2 --out benchmarks/results/cpu/ctsgan_step_parts.jsonl
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch

    from ctsgan_lib.config import load_profile
    from ctsgan_lib.models.ctsgan import build_ctsgan
    from ctsgan_lib.models.dcgan import init_weights
    from ctsgan_lib.train import ctsgan_loop as L
    from ctsgan_lib.train import losses
    from ctsgan_lib.train.distributed import DistContext
    from ctsgan_lib.train.volumes import VolumeDataset
    from ctsgan_lib.utils.hardware import hardware_info, hardware_label
    from ctsgan_lib.utils.logs import append_jsonl

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_profile(args.profile)
    ct, size = cfg.ctsgan, cfg.data.size
    data = VolumeDataset(np.random.default_rng(0).uniform(-1000, 400, (8, size, size, size)).astype(np.float32),
                         size=size)
    nets = build_ctsgan(size, ct)
    for m in nets.values():
        m.apply(init_weights)
    gen, dslice, dslab = nets["generator"], nets["dslice"], nets["dslab"]
    opts = {"g": torch.optim.Adam(gen.parameters(), lr=ct.lr_g, betas=ct.betas),
            "d": torch.optim.Adam(list(dslice.parameters()) + list(dslab.parameters()), lr=ct.lr_d, betas=ct.betas)}
    b = ct.batch
    none = contextlib.nullcontext()
    rs, rsl, pos, fs, fsl, start = L.slab_batch(gen, data, ct, b, "cpu", none, False)
    cond = (start,) if L.dslab_is_conditioned(dslab) else ()

    def gen_grad():
        L.slab_batch(gen, data, ct, b, "cpu", none, True)[4].sum().backward()

    def dslab_joint():
        o = dslab(torch.cat([rsl, fsl]), *[torch.cat([c, c]) for c in cond])
        (o[b:].mean() - o[:b].mean()).backward()

    def dslice_joint():
        o = dslice(torch.cat([rs, fs]), torch.cat([pos, pos]))
        (o[len(rs):].mean() - o[:len(rs)].mean()).backward()

    parts = {
        "generator slab, no grad (each critic update)": lambda: L.slab_batch(gen, data, ct, b, "cpu", none, False),
        "generator slab, forward + backward": gen_grad,
        "Dslice real + fake, forward + backward": lambda: losses.d_loss(
            "wgan-gp", dslice(rs, pos), dslice(fs, pos)).backward(),
        "Dslab real + fake, forward + backward": lambda: losses.d_loss(
            "wgan-gp", dslab(rsl, *cond), dslab(fsl, *cond)).backward(),
        "Dslice gradient penalty": lambda: losses.gradient_penalty(dslice, rs, fs, pos).backward(),
        "Dslab gradient penalty": lambda: losses.gradient_penalty(dslab, rsl, fsl, *cond).backward(),
        "candidate: Dslice on real and fake in one call": dslice_joint,
        "candidate: Dslab on real and fake in one call": dslab_joint,
        "whole step (ctsgan_step)": lambda: L.ctsgan_step(nets, opts, data, ct, b, "cpu", DistContext()),
    }
    for name, fn in parts.items():
        fn()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{name:50s} {med * 1000:8.1f} ms", flush=True)
        if args.out:
            append_jsonl(args.out, {"bench": "ctsgan_step_parts", "part": name, "median_s": round(med, 4),
                                    "times_s": [round(t, 4) for t in times], "profile": args.profile, "size": size,
                                    "batch": b, "slab_len": ct.slab_len, "n_slices": ct.n_slices,
                                    "d_steps": ct.d_steps, "threads": args.threads,
                                    "hardware": hardware_info("cpu"), "hardware_label": hardware_label("cpu")})


if __name__ == "__main__":
    main()
