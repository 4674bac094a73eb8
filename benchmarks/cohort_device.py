"""Cohort work per volume on the numpy path and on the torch path (issue 22 item 3, ``ctsgan generate --cohort-device``).

Per size: ``--n`` phantom patients (an untrained generator has no lungs); the numpy reference (``lung_mask`` +
``finish_volume``) and the torch path on ``--device`` (``lung_mask_batch`` over the whole batch, then
``finish_volume(..., lung=, device=)``), each timed as mask only and as mask + injection (LIDC-distributed counts,
an untrained nodule cGAN at the profile's VOI size; its network runs on ``--device`` in both paths, as in
``ctsgan generate``). Also recorded: how many mask voxels differ between the paths, the largest HU difference of the
injected volumes, the labelling's iteration count, and the time to write one ``.nii.gz`` (CPU, one process).

    # CPU (the shared 2-core machine: pass --contended, the numbers are then labelled as such)
    nice -n 19 .venv/bin/python benchmarks/cohort_device.py --sizes 64 128 --device cpu --contended
    # a GPU node (224³, the paper's size; written to benchmarks/results/gpu/)
    .venv/bin/python benchmarks/cohort_device.py --sizes 128 224 --n 8 --device cuda \\
        --out benchmarks/results/gpu/cohort_device.jsonl
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.io import write_nifti
from ctsgan_lib.data.lung_mask_torch import lung_mask_batch
from ctsgan_lib.data.phantom import make_patient
from ctsgan_lib.data.preprocess import lung_mask
from ctsgan_lib.nodules import NoduleGenerator, NoduleInjector
from ctsgan_lib.synthesis import finish_volume, plan_volumes
from ctsgan_lib.utils.hardware import hardware_info, hardware_label
from ctsgan_lib.utils.logs import append_jsonl

PROFILE_FOR = {32: "smoke", 64: "demo", 128: "demo", 224: "paper"}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench(size: int, n: int, device: str, contended: bool) -> dict:
    cfg = load_profile(PROFILE_FOR.get(size, "paper"), **{"data.size": size})
    nc = cfg.nodules
    torch.manual_seed(0)
    inj = NoduleInjector(NoduleGenerator(nc.voi_size, nc.base_channels), nc.voi_size, nc.mask_size, device=device)
    sp_mm = 352.0 / size                                   # a 35 cm field, as benchmarks/generate_cohort.py
    phantoms = [make_patient(i, ("nlst-like", "lidc-like")[i % 2], size=size, spacing_mm=sp_mm) for i in range(n)]
    plans = plan_volumes(n, seed=0, inject_fraction=1.0, spacing_mm=sp_mm, max_diameter_vox=nc.mask_size)
    hu = np.stack([ph.hu for ph in phantoms])
    sp = phantoms[0].spacing_mm
    lung_mask_batch(hu[:1], sp, device=device)            # warm-up (allocator, kernels)
    _sync(device)

    t0 = time.perf_counter()
    ref_masks = [lung_mask(v, sp) for v in hu]
    t_mask_np = (time.perf_counter() - t0) / n
    stats: dict = {}
    t0 = time.perf_counter()
    masks = lung_mask_batch(hu, sp, device=device, stats=stats)
    _sync(device)
    t_mask_t = (time.perf_counter() - t0) / n

    out_np, out_t, t_inj_np, t_inj_t, n_nod = [], [], [], [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                   # shortfalls are not what is timed here
        for v, plan, m_ref, m in zip(hu, plans, ref_masks, masks):
            t0 = time.perf_counter()
            a, f = finish_volume(plan, v, sp, inj, 0, lung=m_ref)
            t_inj_np.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b, _ = finish_volume(plan, v, sp, inj, 0, lung=m, device=device)
            _sync(device)
            t_inj_t.append(time.perf_counter() - t0)
            out_np.append(a)
            out_t.append(b)
            n_nod += len(f["nodules"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for k, v in enumerate(out_t):
            write_nifti(Path(tmp) / f"v{k}.nii.gz", v, sp)
        t_write = (time.perf_counter() - t0) / n
    diff = [int((a != b).sum()) for a, b in zip(ref_masks, masks)]
    return {"bench": "cohort_device", "size": size, "volumes": n, "device": device,
            "measured_under_contention": bool(contended),
            "s_per_volume_mask_numpy": round(t_mask_np, 4), "s_per_volume_mask_torch": round(t_mask_t, 4),
            "s_per_volume_injection_numpy": round(float(np.mean(t_inj_np)), 4),
            "s_per_volume_injection_torch": round(float(np.mean(t_inj_t)), 4),
            "s_per_volume_mask_and_injection_numpy": round(t_mask_np + float(np.mean(t_inj_np)), 4),
            "s_per_volume_mask_and_injection_torch": round(t_mask_t + float(np.mean(t_inj_t)), 4),
            "s_per_volume_write_niigz_one_process": round(t_write, 4),
            "nodules_per_volume": n_nod / n, "label_iterations_3d": stats.get("label_iterations"),
            "mask_voxels_differing": diff, "mask_voxels": [int(m.sum()) for m in ref_masks],
            "max_abs_hu_difference": float(max(np.abs(a - b).max() for a, b in zip(out_np, out_t))),
            "hardware": hardware_info(device), "hardware_label": hardware_label(device),
            "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--n", type=int, default=4, help="volumes per size (one batch on the torch path)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--contended", action="store_true",
                    help="the machine is shared with other work: the record says so (not a clean number)")
    ap.add_argument("--out", default="benchmarks/results/cpu/cohort_device.jsonl")
    args = ap.parse_args()
    for s in args.sizes:
        rec = bench(s, args.n, args.device, args.contended)
        append_jsonl(args.out, rec)
        print({k: v for k, v in rec.items() if k != "hardware"})


if __name__ == "__main__":
    main()
