"""``ctsgan train ctsgan|gan3d``: train CT-SGAN or the 3D GAN baseline (notebook 03's step, from the shell).

Under ``torchrun --nproc_per_node K -m ctsgan_lib.cli train ...`` the batch is split over K processes.
"""
from __future__ import annotations

import argparse

from .common import add_device_arg, add_profile_args, add_progress_arg, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train CT-SGAN or the 3D GAN baseline",
                       description="Train a model on the nodule-free training cohort. Checkpoints, log.csv and sample "
                                   "grids go to runs/<profile>/<model>/. A rerun resumes from the newest checkpoint "
                                   "there (the same as `ctsgan nodules train`); --fresh starts over.")
    p.add_argument("model", choices=("ctsgan", "gan3d", "ctsgan_cond"),
                   help="which model to train (ctsgan_cond: the conditional CT-SGAN, not in the paper; it trains on "
                        "every train scan of data/<profile>/cohort, with its native nodules, unless --cohort says)")
    add_profile_args(p)
    p.add_argument("--cohort", default=None, help="training cohort folder (default: data/<profile>/nodule_free if "
                                                  "present, else data/<profile>/cohort)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<profile>/<model>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue from the newest checkpoint (the default; accepted for symmetry with --fresh)")
    mode.add_argument("--fresh", action="store_true", help="start over, deleting the run folder's old checkpoints")
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = args.out or cfg.runs_dir / args.model
    if args.model == "ctsgan":
        from ..train.ctsgan_loop import train_ctsgan as train
    elif args.model == "ctsgan_cond":
        from ..train.ctsgan_loop import train_ctsgan_cond as train
    else:
        from ..train.gan3d_loop import train_gan3d as train
    result = train(cfg, cohort_dir=args.cohort, out_dir=out, resume=not args.fresh, device=args.device,
                   progress=not args.no_progress)
    print(f"{args.model}: step {result['step']}, checkpoint {result['checkpoint']}, log {result['log']}")
    return 0
