"""Does running the Fig 3b grid's cells in parallel processes speed it up on a small CPU? (issue [figures])

The demo grid is the largest stage of ``ctsgan reproduce --profile demo`` (46 % of 103 min on 2 cores). Its
(size, seed) cells are independent. This script runs the same cells of the demo grid (all three regimes) twice, on
the data the grid uses (``data/demo/debiased`` and ``data/demo/synthetic/ctsgan``, the trained injector):
once in one process with all torch threads (``classifier.workers = 1``), once in ``--workers`` processes with the
threads split between them, each into a fresh temporary folder, and records the wall times and whether the test
metrics agree.

Needs the demo data, synthetic cohort and injector (``ctsgan reproduce --profile demo --only 01 02 03 04``).

    .venv/bin/python benchmarks/grid_workers.py --sizes 8 --seeds 0 1 --workers 2 \
        --out benchmarks/results/cpu/grid_workers.jsonl
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.experiments import load_bases, load_injector, run_grid
from ctsgan_lib.utils.hardware import hardware_info, hardware_label
from ctsgan_lib.utils.logs import append_jsonl, read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--sizes", type=float, nargs="+", default=[8.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the parent (split between workers)")
    ap.add_argument("--out", default="benchmarks/results/cpu/grid_workers.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base = load_profile(args.profile)
    real, synthetic = load_bases(base, None, None, need_syn=True, progress=False)   # by classifier.design
    injector = load_injector(base)
    metrics = {}
    for workers in (1, args.workers):
        cfg = load_profile(args.profile, **{"classifier.workers": workers})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = run_grid(cfg, Path(tmp), progress=False, real=real, synthetic=synthetic, injector=injector,
                            device="cpu", sizes=args.sizes, seeds=args.seeds)
            wall = time.perf_counter() - t0
            recs = read_jsonl(path)
        metrics[workers] = {(r["regime"], r["size_vox"], r["seed"]): r["metrics"]["accuracy"] for r in recs}
        rec = {"bench": "grid_workers", "profile": args.profile, "sizes": args.sizes, "seeds": args.seeds,
               "cells": len(args.sizes) * len(args.seeds), "trainings": len(recs), "workers": workers,
               "threads_total": args.threads, "threads_per_worker": max(1, args.threads // workers),
               "wall_s": round(wall, 1), "s_per_cell": round(wall / (len(args.sizes) * len(args.seeds)), 1),
               "hardware": hardware_label(), "hardware_info": hardware_info()}
        if workers == 1:
            wall_1 = wall
        else:  # thread counts differ between the runs, so float results may differ in the last bits
            a, b = metrics[1], metrics[workers]
            rec["speedup"] = round(wall_1 / wall, 2)
            rec["accuracy_max_abs_diff"] = max(abs(a[k] - b[k]) for k in a) if set(a) == set(b) else None
        append_jsonl(args.out, rec)
        print(f"workers {workers}: {len(recs)} trainings in {wall:.0f} s"
              + (f", speedup {rec['speedup']}x, accuracy max |diff| {rec['accuracy_max_abs_diff']}"
                 if workers != 1 else ""))


if __name__ == "__main__":
    main()
