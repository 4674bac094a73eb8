"""How many optimisation steps does the demo classifier need to leave chance? (issue [classifier])

The demo grid gives each training 3 epochs of 120 real (or 240 synthetic) volumes at Adam lr 1e-4: 45–90 steps of
batch 8, what 2 CPU cores allow for 54 trainings in about 40 minutes. This script takes one cell of that grid (the
real-only regime, one size, one seed) on the same data the grid uses (``data/demo/debiased``, the trained injector
under ``runs/demo/nodules/injector``) and trains it with a larger step budget, recording test accuracy and AUC. It
answers whether the grid's chance-level result is the budget or the pipeline.

Needs the demo data and injector (``ctsgan reproduce --profile demo --only 01 02``). The cell is built in the profile's
``classifier.design`` (the paper design by default: the Fig 3a cohort with native and injected positives;
``--design paired`` for the earlier one). Each line records the per-epoch history (where learning starts), the design
counts, and the load average while it ran: on a shared machine a wall time is a measurement under contention.

    .venv/bin/python benchmarks/classifier_budget.py --size 6 8 --epochs 12 --lr 1e-4 \
        --out benchmarks/results/cpu/classifier_budget.jsonl
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.experiments import build_cell_data, load_bases, load_injector
from ctsgan_lib.experiments import make_model  # the grid's own model factory (seeded init, profile's stem stride)
from ctsgan_lib.experiments.grid import score_test_split   # test metrics overall and per kind of positive
from ctsgan_lib.train.classifier_loop import train_classifier
from ctsgan_lib.nodules.inference import NoduleInjector
from ctsgan_lib.utils.checkpoint import latest_checkpoint
from ctsgan_lib.utils.hardware import hardware_info, hardware_label
from ctsgan_lib.utils.logs import append_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--size", type=float, nargs="+", default=[8.0],
                    help="nodule diameter(s) in voxels (the grid's sizes; the larger ones first learn)")
    ap.add_argument("--design", choices=("paper", "paired"), default=None, help="default: the profile's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-4, 1e-3])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--injector", choices=("learned", "sphere"), default="learned",
                    help="which trained injector of notebook 02 paints the injected positives (runs/<P>/nodules/"
                         "injector or injector_sphere); the grid uses the learned one")
    ap.add_argument("--batch", type=int, default=None, help="default: the profile's classifier.batch")
    ap.add_argument("--out", default="benchmarks/results/cpu/classifier_budget.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    over = {"classifier.design": args.design} if args.design else {}
    base = load_profile(args.profile, **over)
    real, _ = load_bases(base, None, None, need_syn=False, progress=False)   # by classifier.design
    injector = load_injector(base)
    if args.injector == "sphere":   # notebook 02's sphere compositor, trained beside the learned injector
        ck = latest_checkpoint(base.runs_dir / "nodules" / "injector_sphere")
        if ck is None:
            raise SystemExit(f"error: no sphere injector under runs/{args.profile}/nodules/injector_sphere: run notebook 02")
        injector = NoduleInjector.from_checkpoint(ck)
    for size, lr in [(d, lr) for d in args.size for lr in args.lr]:
        extra = {"classifier.batch": args.batch} if args.batch else {}
        cfg = load_profile(args.profile, **over, **extra, **{"classifier.lr": lr, "classifier.patience": args.epochs})
        data = build_cell_data(real, None, size, args.seed, injector, cfg)
        model = make_model(cfg, args.seed)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            summary = train_classifier(model, data.train, data.val, cfg, tmp, args.seed, args.epochs,
                                       progress=False, desc=f"lr={lr:g}")
        wall = time.perf_counter() - t0
        metrics, _ = score_test_split(model, data, "cpu", cfg.classifier.batch)
        steps = args.epochs * -(-len(data.train) // cfg.classifier.batch)
        rec = {"bench": "classifier_budget", "profile": args.profile, "design": cfg.classifier.design,
               "counts": data.counts(), "regime": "real", "size_vox": size,
               "seed": args.seed, "injector": args.injector, "batch": cfg.classifier.batch, "lr": lr, "epochs": args.epochs, "steps": steps, "n_train": len(data.train),
               "n_test": len(data.test), "stem_stride": cfg.classifier.stem_stride,
               "best_epoch": summary.get("best_epoch"),
               "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()}
                           for h in summary.get("history", [])],
               "test": {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
               "wall_s": round(wall, 1), "s_per_volume_pass": round(wall / (args.epochs * len(data.train)), 4),
               "threads": args.threads, "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
               "hardware": hardware_label(), "hardware_info": hardware_info()}
        append_jsonl(args.out, rec)
        print(f"size {size:g}, lr {lr:g}: {steps} steps, test accuracy {metrics['accuracy']:.3f}, AUC {metrics['auc']:.3f}, "
              f"train loss {[h['train_loss'] for h in summary['history']]} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
