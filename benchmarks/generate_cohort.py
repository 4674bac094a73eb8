"""Synthetic-cohort throughput on this machine: generation alone, and the per-volume cost of the lung mask, its
sanity check and nodule injection (issue [generate]).

Generation uses an untrained CT-SGAN at the profile's widths (throughput does not depend on the weights). Injection
is timed on phantom volumes of the same size, because an untrained generator has no lungs to inject into; the
injector is an untrained nodule cGAN at the profile's VOI size, painting LIDC-distributed counts of nodules.

    .venv/bin/python benchmarks/generate_cohort.py --sizes 64 224 --out benchmarks/results/cpu/generate_cohort.jsonl
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.phantom import make_patient
from ctsgan_lib.synthesis import finish_volume, generate_volumes, inference_layout, plan_volumes
from ctsgan_lib.models.ctsgan import build_ctsgan
from ctsgan_lib.nodules import NoduleGenerator, NoduleInjector
from ctsgan_lib.utils.hardware import hardware_info, hardware_label
from ctsgan_lib.utils.logs import append_jsonl

PROFILE_FOR = {32: "smoke", 64: "demo", 224: "paper"}


def bench(size: int, n: int, batch: int, device: str) -> dict:
    cfg = load_profile(PROFILE_FOR.get(size, "paper"), **{"data.size": size})
    torch.manual_seed(0)
    gen = inference_layout(build_ctsgan(size, cfg.ctsgan)["generator"].to(device).eval())   # as load_generator
    gen.meta = {"spacing_mm": (1.6, 1.6, 1.6), "hu_min": -1000.0, "hu_max": 400.0, "chunk": cfg.ctsgan.chunk}
    list(generate_volumes(gen, 1, 0, batch=1, device=device))        # warm-up
    t0 = time.perf_counter()
    vols = list(generate_volumes(gen, n, 1, batch=batch, device=device))
    t_gen = (time.perf_counter() - t0) / n

    nc = cfg.nodules
    inj = NoduleInjector(NoduleGenerator(nc.voi_size, nc.base_channels), nc.voi_size, nc.mask_size, device=device)
    phantoms = [make_patient(i, "nlst-like", size=size, spacing_mm=352.0 / size) for i in range(n)]
    plans = plan_volumes(n, seed=0, inject_fraction=1.0, spacing_mm=352.0 / size, max_diameter_vox=nc.mask_size)
    t_mask_only, t_full, n_nod = [], [], 0
    for ph, plan in zip(phantoms, plans):
        t0 = time.perf_counter()
        finish_volume(plan.__class__(plan.index, False, [], plan.split), ph.hu, ph.spacing_mm, inj, 0)
        t_mask_only.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, fields = finish_volume(plan, ph.hu, ph.spacing_mm, inj, 0)
        t_full.append(time.perf_counter() - t0)
        n_nod += len(fields["nodules"])
    return {"bench": "generate_cohort", "gslice_layout": "channels_last", "size": size, "profile_widths": cfg.profile, "ngf": cfg.ctsgan.ngf,
            "batch": batch, "volumes": n, "device": device, "s_per_volume_generate": round(t_gen, 3),
            "s_per_volume_lung_mask": round(float(np.mean(t_mask_only)), 3),
            "s_per_volume_mask_and_injection": round(float(np.mean(t_full)), 3),
            "nodules_per_volume": n_nod / n,
            "volumes_per_s_without_injection": round(1.0 / (t_gen + np.mean(t_mask_only)), 4),
            "volumes_per_s_with_injection": round(1.0 / (t_gen + np.mean(t_full)), 4),
            "hardware": hardware_info(device), "hardware_label": hardware_label(device),
            "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--n", type=int, default=3, help="volumes timed per size")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/cpu/generate_cohort.jsonl")
    args = ap.parse_args()
    for s in args.sizes:
        rec = bench(s, args.n, args.batch, args.device)
        append_jsonl(args.out, rec)
        print({k: v for k, v in rec.items() if k not in ("hardware",)})


if __name__ == "__main__":
    main()
