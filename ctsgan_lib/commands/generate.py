"""``ctsgan generate``: write a synthetic cohort from a CT-SGAN (or 3D GAN) checkpoint.

Minimal form (the [generate] stage extends it with nodule injection, sharding and DICOM export)::

    ctsgan generate --checkpoint runs/smoke/ctsgan/ckpt_000030.pt --n 4 --seed 1 --out data/smoke/synthetic/ctsgan
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate synthetic volumes from a checkpoint into a cohort folder",
                       description="Generate N volumes (volume i uses volume_seed(seed, i), so reruns and shards "
                                   "agree) and write them as a cohort (manifest.csv + NIfTI).")
    p.add_argument("--checkpoint", required=True, help="a ctsgan or gan3d checkpoint (ckpt_<step>.pt)")
    p.add_argument("--n", type=int, required=True, help="number of volumes")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    p.add_argument("--out", required=True, help="output cohort folder")
    p.add_argument("--batch", type=int, default=1, help="volumes per generator call (default 1)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--no-compress", action="store_true", help="write .nii instead of .nii.gz")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.cohort import CohortWriter
    from ..errors import CTSGANError
    from ..generation import generate_gan3d_volumes, generate_volumes, load_generator
    from ..utils.hardware import default_device

    if args.n < 1:
        raise CTSGANError(f"--n must be >= 1, got {args.n}")
    device = args.device or default_device()
    gen = load_generator(args.checkpoint, device)
    kind = gen.meta["kind"]
    stream = (generate_volumes if kind == "ctsgan" else generate_gan3d_volumes)(gen, args.n, args.seed,
                                                                                 batch=args.batch, device=device)
    writer = CohortWriter(Path(args.out), compress=not args.no_compress,
                          source_defaults={"source": kind, "domain": "synthetic", "split": "train", "has_nodule": 0,
                                           "nodules": []},
                          settings={"checkpoint": str(args.checkpoint), "kind": kind, "seed": args.seed,
                                    "step": gen.meta["step"]})
    try:
        for i, (hu, spacing_mm) in enumerate(tqdm(stream, total=args.n, desc=f"generate {kind}")):
            writer.write(f"{kind}_{args.seed}_{i:06d}", hu, spacing_mm, volume_index=i, seed=args.seed)
    finally:
        writer.close()
    print(f"wrote {args.n} {kind} volumes to {args.out}")
    return 0
