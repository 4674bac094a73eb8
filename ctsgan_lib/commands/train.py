"""``ctsgan train ctsgan|gan3d``: train CT-SGAN or the 3D GAN baseline (notebook 03's step, from the shell).

Under ``torchrun --nproc_per_node K -m ctsgan_lib.cli train ...`` the batch is split over K processes.
"""
from __future__ import annotations

import argparse

from ..errors import CTSGANError
from .common import add_profile_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train CT-SGAN or the 3D GAN baseline",
                       description="Train a model on the nodule-free training cohort. Checkpoints, log.csv and sample "
                                   "grids go to runs/<profile>/<model>/.")
    p.add_argument("model", choices=("ctsgan", "gan3d"), help="which model to train")
    add_profile_args(p)
    p.add_argument("--cohort", default=None, help="training cohort folder (default: data/<profile>/nodule_free if "
                                                  "present, else data/<profile>/cohort)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<profile>/<model>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    mode.add_argument("--fresh", action="store_true", help="start over, deleting the run folder's old checkpoints")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..utils.checkpoint import latest_checkpoint

    cfg = config_from_args(args)
    out = args.out or cfg.runs_dir / args.model
    if not (args.resume or args.fresh) and latest_checkpoint(out) is not None:
        raise CTSGANError(f"{out}: holds checkpoints of an earlier run; pass --resume to continue it or --fresh to "
                          f"start over (which deletes them)")
    if args.model == "ctsgan":
        from ..train.ctsgan_loop import train_ctsgan as train
    else:
        from ..train.gan3d_loop import train_gan3d as train
    result = train(cfg, cohort_dir=args.cohort, out_dir=out, resume=args.resume, device=args.device,
                   progress=not args.no_progress)
    print(f"{args.model}: step {result['step']}, checkpoint {result['checkpoint']}, log {result['log']}")
    return 0
