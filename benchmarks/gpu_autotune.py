"""Which CUDA settings make the paper-scale paths fastest: bf16 autocast vs float32 (TF32 convolutions, torch's
default) and cuDNN autotuning (``torch.backends.cudnn.benchmark``) on or off.

For each combination: training steps/s of CT-SGAN and the 3D GAN at ``--size``³ (paper widths, paper batch, the same
step functions as training) and CT-SGAN generation volumes/s (``generation.generate_volumes``), each after a warm-up,
median of ``--repeats``. One JSON line per (setting, measurement). Needs a GPU.

    python benchmarks/gpu_autotune.py --out benchmarks/results/gpu/autotune.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gen-volumes", type=int, default=16)
    ap.add_argument("--models", nargs="+", default=["ctsgan", "gan3d"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from ctsgan_lib.bench import new_run_id, record_meta
    from ctsgan_lib.bench.throughput import generation_throughput, train_throughput
    from ctsgan_lib.config import load_profile
    from ctsgan_lib.utils.logs import append_jsonl

    run_id = new_run_id()
    for bf16, autotune in itertools.product((True, False), (False, True)):
        torch.backends.cudnn.benchmark = autotune
        cfg = load_profile("paper", **{"data.size": args.size, "ctsgan.bf16": bf16, "gan3d.bf16": bf16})
        setting = {"bf16": bf16, "cudnn_benchmark": autotune,
                   "tf32_conv": bool(torch.backends.cudnn.allow_tf32),
                   "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
        rows = [train_throughput(m, cfg, args.size, cfg.ctsgan.batch, args.device, args.repeats)
                for m in args.models]
        for layout in (False, True):   # NCHW, and channels-last as `ctsgan generate` runs it (inference_layout)
            rows.append(generation_throughput(cfg, args.size, args.gen_volumes, cfg.generate.batch, args.device,
                                              max(2, args.repeats // 2), channels_last=layout))
        for r in rows:
            rec = {**r, **setting, "device": args.device, **record_meta(cfg, args.device, run_id)}
            append_jsonl(args.out, rec)
            what = r["model"] + (" channels-last" if r.get("channels_last") else "")
            rate = r.get("steps_per_s") or r.get("volumes_per_s")
            print(f"bf16={bf16!s:5} cudnn.benchmark={autotune!s:5} {r['bench']:8} {what:8} {rate}", flush=True)


if __name__ == "__main__":
    main()
