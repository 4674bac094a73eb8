"""Seconds per training step and peak memory: CT-SGAN vs the 3D GAN, at paper widths, on this machine.

Each (model, size) runs in a fresh child process so its peak RSS (``ru_maxrss``) is its own. The child builds the
paper profile's networks (``ngf = ndf = 64``, batch 4; CT-SGAN slab T = 16 and N = 8) at side ``size``, trains on
random in-memory volumes (timing and memory do not depend on the data), does one warm-up step and ``--steps`` timed
steps, reporting wall and CPU seconds per step. A memory cap (``RLIMIT_DATA``, default 12 GiB) turns "does not fit" into a reported result instead of
swapping a shared machine to death.

Usage::

    python benchmarks/ctsgan_step.py                      # 64³ and 224³, both models
    python benchmarks/ctsgan_step.py --sizes 64 --steps 3 --out runs/paper/bench/ctsgan_step.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench_step(model: str, size: int, steps: int, threads: int) -> dict:
    """Run in the child: time ``steps`` training steps of ``model`` at ``size``³ (after one warm-up step)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from ctsgan_lib.config import load_profile
    from ctsgan_lib.models.ctsgan import build_ctsgan
    from ctsgan_lib.models.dcgan import init_weights
    from ctsgan_lib.models.gan3d import build_gan3d
    from ctsgan_lib.train.ctsgan_loop import ctsgan_step
    from ctsgan_lib.train.distributed import DistContext
    from ctsgan_lib.train.gan3d_loop import gan3d_step
    from ctsgan_lib.train.volumes import VolumeDataset

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_profile("paper", **{"data.size": size, "gan3d.size": size, "ctsgan.d_steps": 1})  # one D + one G update
    vols = np.random.default_rng(0).uniform(-1000, 400, (2, size, size, size)).astype(np.float32)
    data = VolumeDataset(vols, size=size)
    del vols
    ctx = DistContext()
    if model == "ctsgan":
        sec = cfg.ctsgan
        nets = build_ctsgan(size, sec)
        params_g = nets["generator"].parameters()
        params_d = list(nets["dslice"].parameters()) + list(nets["dslab"].parameters())
        step = lambda: ctsgan_step(nets, opts, data, sec, sec.batch, "cpu", ctx)  # noqa: E731
    else:
        sec = cfg.gan3d
        nets = build_gan3d(sec)
        params_g, params_d = nets["generator"].parameters(), nets["d3d"].parameters()
        step = lambda: gan3d_step(nets, opts, data, sec, sec.batch, "cpu", ctx)  # noqa: E731
    for m in nets.values():
        init_weights(m)
    opts = {"g": torch.optim.Adam(params_g, lr=1e-4), "d": torch.optim.Adam(params_d, lr=1e-4)}
    n_params = sum(p.numel() for m in nets.values() for p in m.parameters())
    step()                                                    # warm-up (allocator, oneDNN kernels)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        losses = step()
    dt = (time.perf_counter() - t0) / steps
    cpu = (time.process_time() - c0) / steps     # CPU seconds: less sensitive than wall time to a busy machine
    return {"model": model, "size": size, "batch": sec.batch, "sec_per_step": round(dt, 3),
            "cpu_sec_per_step": round(cpu, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "params_m": round(n_params / 1e6, 2), "finite": all(np.isfinite(v) for v in losses.values()),
            "slab_len": getattr(sec, "slab_len", None), "n_slices": getattr(sec, "n_slices", None),
            "ngf": sec.ngf, "ndf": sec.ndf}


def run_child(model: str, size: int, steps: int, threads: int, mem_limit_gib: float, timeout_s: int) -> dict:
    """Run :func:`bench_step` in a fresh process under a memory cap; failures become result rows."""
    cmd = [sys.executable, __file__, "--child", model, str(size), "--steps", str(steps), "--threads", str(threads),
           "--mem-limit-gib", str(mem_limit_gib)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"model": model, "size": size, "status": f"timeout after {timeout_s} s"}
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[7:]), "status": "ok", "wall_s": round(time.perf_counter() - t0, 1)}
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1][:200]
    oom = "alloc" in p.stderr.lower() or "memory" in p.stderr.lower() or p.returncode in (-9, 137)
    status = f"does not fit under the {mem_limit_gib:g} GiB cap" if oom else f"failed (exit {p.returncode})"
    return {"model": model, "size": size, "status": status, "error": tail, "peak_rss_gib_before_fail": round(peak, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--models", nargs="+", default=["ctsgan", "gan3d"], choices=["ctsgan", "gan3d"])
    ap.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--mem-limit-gib", type=float, default=12.0)
    ap.add_argument("--timeout-s", type=int, default=1800)
    ap.add_argument("--out", default=None, help="append results as JSON lines here")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        cap = int(args.mem_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        res = bench_step(args.child[0], int(args.child[1]), args.steps, args.threads)
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    sys.path.insert(0, str(REPO))
    from ctsgan_lib.utils.hardware import git_commit, hardware_label
    from ctsgan_lib.utils.logs import append_jsonl

    hw = hardware_label("cpu")
    rows = []
    for size in args.sizes:
        for model in args.models:
            r = run_child(model, size, args.steps, args.threads, args.mem_limit_gib, args.timeout_s)
            r.update(hardware=hw, threads=args.threads, commit=git_commit(REPO), profile="paper widths",
                     data="random volumes (timing/memory only)", mem_limit_gib=args.mem_limit_gib)
            rows.append(r)
            print(json.dumps(r), flush=True)
            if args.out:
                append_jsonl(args.out, r)
    print(f"\n{hw}; torch threads {args.threads}; paper widths (ngf=ndf=64, batch 4; CT-SGAN T=16, N=8)")
    print(f"{'model':8} {'size':>5} {'s/step':>8} {'CPU s/step':>10} {'peak RSS GiB':>13}  status")
    for r in rows:
        print(f"{r['model']:8} {r['size']:>5} {r.get('sec_per_step', '-'):>8} {r.get('cpu_sec_per_step', '-'):>10} "
              f"{r.get('peak_rss_gib', '-'):>13}  {r['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
