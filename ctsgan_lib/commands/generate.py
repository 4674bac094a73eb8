"""``ctsgan generate``: a synthetic cohort from a CT-SGAN (or 3D GAN) checkpoint.

Examples::

    ctsgan generate --checkpoint runs/smoke/ctsgan/ckpt_000030.pt --n 12 --seed 1 --out data/smoke/synthetic/ctsgan \\
        --injector runs/smoke/nodules/injector --inject-fraction 0.5
    ctsgan generate ... --shard 0/4          # one of 4 disjoint shards; then `ctsgan generate ... --merge 4`
    torchrun --nproc_per_node 8 -m ctsgan_lib.cli generate --n-volumes 10000 ...   # one shard per GPU, rank 0 merges
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a synthetic cohort (lung masks, nodule injection, NIfTI/DICOM)",
                       description="Generate N volumes (volume i depends only on (seed, i), so reruns and shards "
                                   "agree), check their lung masks, inject nodules into a fraction, and write a "
                                   "cohort (manifest.csv + NIfTI). Reruns skip volumes already written and verified.")
    p.add_argument("--checkpoint", required=True, help="a ctsgan or gan3d checkpoint (ckpt_<step>.pt)")
    p.add_argument("--n", "--n-volumes", dest="n", type=int, required=True,
                   help="number of volumes in the whole run (under torchrun write --n-volumes: torchrun's own "
                        "parser rejects the abbreviation --n)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    p.add_argument("--out", required=True, help="output cohort folder")
    p.add_argument("--inject-fraction", type=float, default=0.5,
                   help="share of volumes that get nodules (default 0.5, as in the paper)")
    p.add_argument("--nodule-diameters", type=float, nargs="+", metavar="D",
                   help="fixed nodule diameters in voxels (default: drawn from the LIDC distribution)")
    p.add_argument("--injector", help="injector checkpoint or folder (needed when --inject-fraction > 0)")
    p.add_argument("--shard", metavar="i/K", help="write shard i of K (disjoint; union = single run)")
    p.add_argument("--merge", type=int, metavar="K", help="only merge K finished shards into OUT/manifest.csv")
    p.add_argument("--dicom", action="store_true", help="also write a DICOM series per volume (derived, anonymous)")
    p.add_argument("--batch", type=int, default=4, help="volumes per generator call (default 4)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--no-compress", action="store_true", help="write .nii (fast to read) instead of .nii.gz")
    p.add_argument("--profile", default="", help="profile name recorded in the cohort settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synthesis import (distributed_shard, generate_cohort, merge_shards, parse_shard, wait_for_shards)
    from ..utils.hardware import default_device

    out = Path(args.out)
    if args.merge:
        print(f"merged: {merge_shards(out, args.merge)}")
        return 0
    device = args.device or default_device()
    shard = parse_shard(args.shard)
    dist = distributed_shard()
    if dist is not None and args.shard is None:   # torchrun: one shard per process/GPU
        rank, world, local = dist
        shard = (rank, world)
        if device == "cuda":   # one GPU per process; processes beyond the GPU count share them
            from ..train.distributed import cuda_device_for
            device = cuda_device_for(local)
    folder = generate_cohort(args.checkpoint, args.n, args.seed, out, inject_fraction=args.inject_fraction,
                             nodule_diameters_vox=args.nodule_diameters, injector=args.injector, shard=shard,
                             batch=args.batch, device=device, dicom=args.dicom, compress=not args.no_compress,
                             profile=args.profile)
    if dist is not None and args.shard is None:
        if shard[0] == 0:
            wait_for_shards(out, shard[1])
            merge_shards(out, shard[1])
            print(f"merged {shard[1]} shards into {out / 'manifest.csv'}")
    else:
        print(f"wrote {folder}")
    return 0
