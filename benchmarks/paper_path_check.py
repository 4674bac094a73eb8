"""The paper-scale path end to end through the real CLI, on files: cohort → data-parallel training → resume → sharded
generation. Meant for a GPU machine (one command, a few minutes); also runs on the CPU at a small ``--size``.

1. Writes ``--patients`` phantom patients at ``--size``³ into a cohort (NIfTI + manifest, ``CohortWriter``).
2. ``torchrun --nproc_per_node K -m ctsgan_lib.cli train ctsgan --profile P`` for ``--iterations`` steps (each rank
   takes batch / K volumes, gradients all-reduced; bf16 autocast on CUDA as the profile says), then ``--resume`` for
   two more steps. With one GPU and K > 1 the ranks share it through the gloo backend
   (``CTSGAN_DIST_BACKEND=gloo``; NCCL needs one GPU per rank): the collectives and replica checks are the real ones,
   the speed is not that of K GPUs.
3. ``ctsgan generate`` from the last checkpoint: ``--gen-volumes`` volumes in ``--gen-shards`` shard processes at once
   (they share the GPU; the CPU does the lung masks and NIfTI writing), then ``--merge``.

One JSON line per phase goes to ``--out`` (seconds, per-step times from ``log.csv``, world size, GPU peak memory is not
visible from here: see ``ctsgan bench memory``). The work folder is deleted unless ``--keep``.

    python benchmarks/paper_path_check.py --out benchmarks/results/gpu/paper_path.jsonl            # on a GPU
    python benchmarks/paper_path_check.py --size 32 --profile smoke --device cpu --out /tmp/pp.jsonl   # dry run
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ctsgan_lib.utils.hardware import hardware_info, hardware_label  # noqa: E402
from ctsgan_lib.utils.logs import append_jsonl  # noqa: E402


def _run(cmd: list[str], env: dict, log: Path, timeout_s: float) -> float:
    """Run ``cmd``, its output appended to ``log``; returns wall seconds, raises with the log's tail on failure."""
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s, cwd=env["CTSGAN_ROOT"])
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-4000:]}")
    return time.perf_counter() - t0


def _parallel(cmds: list[list[str]], env: dict, log: Path, timeout_s: float) -> float:
    """Run ``cmds`` at once (one process each); returns wall seconds."""
    t0 = time.perf_counter()
    logs = [open(f"{log}.{i}", "w") for i in range(len(cmds))]
    procs = [subprocess.Popen(c, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=env["CTSGAN_ROOT"])
             for c, fh in zip(cmds, logs)]
    codes = [p.wait(timeout=timeout_s) for p in procs]
    for fh in logs:
        fh.close()
    if any(codes):
        tails = "\n".join(Path(f"{log}.{i}").read_text()[-1500:] for i, c in enumerate(codes) if c)
        raise SystemExit(f"a shard failed {codes}:\n{tails}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--nproc", type=int, default=2, help="training processes (torchrun --nproc_per_node)")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--gen-volumes", type=int, default=16)
    ap.add_argument("--gen-shards", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    import torch

    from ctsgan_lib.config import load_profile
    from ctsgan_lib.data.cohort import CohortWriter
    from ctsgan_lib.data.phantom import make_patient

    out = Path(args.out).resolve()
    work = Path(tempfile.mkdtemp(prefix="ctsgan-paper-path-"))
    log = work / "log.txt"
    py = sys.executable
    env = {**os.environ, "CTSGAN_ROOT": str(work), "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if args.device.startswith("cuda") and args.nproc > torch.cuda.device_count():
        env["CTSGAN_DIST_BACKEND"] = "gloo"   # ranks share a GPU: NCCL refuses that
    base = {"profile": args.profile, "size": args.size, "device": args.device,
            "hardware": hardware_info(args.device), "hardware_label": hardware_label(args.device),
            "torch": torch.__version__}
    sets = [f"data.size={args.size}", *args.set]
    cfg = load_profile(args.profile, **dict(s.split("=", 1) for s in sets))
    set_args = [a for s in sets for a in ("--set", s)]
    try:
        # 1. a cohort on disk
        t0 = time.perf_counter()
        cohort = work / "data" / args.profile / "cohort"
        w = CohortWriter(cohort, compress=True)
        spacing = 352.0 / args.size
        for i in range(args.patients):
            domain = ("nlst-like", "lidc-like")[i % 2]
            ph = make_patient(i, domain, size=args.size, spacing_mm=spacing)
            w.write(f"p{i:03d}", ph.hu, ph.spacing_mm, split="train", source="phantom", domain=domain)
        w.close()
        append_jsonl(out, {**base, "phase": "cohort", "patients": args.patients,
                           "seconds": round(time.perf_counter() - t0, 2)})

        # 2. data-parallel training, then resume
        run_dir = work / "runs" / args.profile / "ctsgan"
        train = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
                 "-m", "ctsgan_lib.cli", "train", "ctsgan", "--profile", args.profile, "--no-progress",
                 "--device", args.device, "--cohort", str(cohort), *set_args]
        it1 = max(2, args.iterations - 2)
        s_train = _run(train + ["--set", f"ctsgan.iterations={it1}", "--set", f"ctsgan.ckpt_every={it1}",
                                "--set", f"ctsgan.sample_every={it1}"], env, log, args.timeout_s)
        s_resume = _run(train + ["--resume", "--set", f"ctsgan.iterations={it1 + 2}",
                                 "--set", f"ctsgan.ckpt_every={it1 + 2}", "--set", f"ctsgan.sample_every={it1 + 2}"],
                        env, log, args.timeout_s)
        with open(run_dir / "log.csv") as fh:
            rows = list(csv.DictReader(fh))
        step_s = [float(r["seconds"]) for r in rows]
        append_jsonl(out, {**base, "phase": "train", "nproc": args.nproc,
                           "backend": env.get("CTSGAN_DIST_BACKEND", "nccl" if args.device.startswith("cuda")
                                              else "gloo"),
                           "world_size": sorted({int(r["world_size"]) for r in rows}),
                           "steps": [int(r["step"]) for r in rows], "step_s": step_s,
                           "median_step_s_after_first": round(sorted(step_s[1:])[len(step_s[1:]) // 2], 4)
                           if len(step_s) > 1 else None,
                           "loss_d": [round(float(r["loss_d"]), 4) for r in rows],
                           "batch": cfg.ctsgan.batch, "d_steps": cfg.ctsgan.d_steps, "bf16": cfg.ctsgan.bf16,
                           "slab_len": cfg.ctsgan.slab_len, "n_slices": cfg.ctsgan.n_slices,
                           "wall_s_first": round(s_train, 2), "wall_s_resume": round(s_resume, 2)})

        # 3. sharded generation from the checkpoint, then merge
        ckpt = sorted(run_dir.glob("ckpt_*.pt"))[-1]
        syn = work / "synthetic"
        gen = [py, "-m", "ctsgan_lib.cli", "generate", "--checkpoint", str(ckpt), "--n-volumes",
               str(args.gen_volumes), "--seed", "1", "--out", str(syn), "--inject-fraction", "0",
               "--device", args.device, "--batch", "4", "--profile", args.profile]
        k = args.gen_shards
        s_gen = _parallel([gen + ["--shard", f"{i}/{k}"] for i in range(k)], env, work / "gen.log", args.timeout_s)
        s_merge = _run(gen + ["--merge", str(k)], env, log, args.timeout_s)
        from ctsgan_lib.data.cohort import Cohort

        c = Cohort(syn)
        hu, _ = c.read(c.ids()[0])
        append_jsonl(out, {**base, "phase": "generate", "volumes": len(c), "shards": k, "wall_s": round(s_gen, 2),
                           "s_per_volume": round(s_gen / max(len(c), 1), 3), "merge_s": round(s_merge, 2),
                           "volume_shape": list(hu.shape), "compress": True})
        print(f"ok: {out}")
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
