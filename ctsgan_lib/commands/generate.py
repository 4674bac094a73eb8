"""``ctsgan generate``: a synthetic cohort from a CT-SGAN (or 3D GAN) checkpoint.

Examples::

    ctsgan generate --checkpoint runs/smoke/ctsgan/ckpt_000030.pt --n 12 --seed 1 --out data/smoke/synthetic/ctsgan \\
        --injector runs/smoke/nodules/injector --inject-fraction 0.5
    ctsgan generate --checkpoint runs/smoke/ctsgan_cond/ckpt_000030.pt --n 12 --out data/smoke/synthetic/cond_k2_d5 \
        --nodules 2 --nodule-diameters 5       # conditional CT-SGAN: every volume conditioned on 2 nodules of 5 voxels
    ctsgan generate ... --shard 0/4          # one of 4 disjoint shards; then `ctsgan generate ... --merge 4`
    torchrun --nproc_per_node 8 -m ctsgan_lib.cli generate --n-volumes 10000 ...   # one shard per GPU, rank 0 merges
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_device_arg, add_progress_arg

#: ``--cohort-device`` choices (:func:`cohort_torch_device`)
COHORT_DEVICES = ("cpu", "auto", "cuda")


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
    p.add_argument("--inject-fraction", type=float, default=None,
                   help="share of volumes that get nodules (default 0.5, as in the paper; with a conditional "
                        "checkpoint and --nodules, default 1: every volume is conditioned on nodules)")
    p.add_argument("--nodule-diameters", type=float, nargs="+", metavar="D",
                   help="fixed nodule diameters in voxels (default: drawn from the LIDC distribution); a conditional "
                        "volume's one target diameter is drawn from them")
    p.add_argument("--nodules", type=int, metavar="K",
                   help="conditional CT-SGAN checkpoints (kind ctsgan_cond) only: generate the volumes with nodules "
                        "under the condition 'K nodules' (0: every volume without nodules); recorded in the manifest "
                        "(condition_nodules, condition_diameter_vox). Default: the LIDC-drawn count")
    p.add_argument("--nodule-z", type=float, metavar="F",
                   help="conditional checkpoints trained with ctsgan.cond_z only: put every nodule at this fraction "
                        "of the depth (0..1); default: drawn per volume in the middle 30-70 %% (condition_z_vox)")
    p.add_argument("--injector", help="injector checkpoint or folder (needed when --inject-fraction > 0)")
    p.add_argument("--shard", metavar="i/K", help="write shard i of K (disjoint; union = single run)")
    p.add_argument("--merge", type=int, metavar="K", help="only merge K finished shards into OUT/manifest.csv")
    p.add_argument("--dicom", action="store_true", help="also write a DICOM series per volume (derived, anonymous)")
    p.add_argument("--batch", type=int, default=4, help="volumes per generator call (default 4)")
    add_device_arg(p)
    add_progress_arg(p)
    p.add_argument("--cohort-device", choices=COHORT_DEVICES, default="cpu",
                   help="where lung masks and nodule cut/paste run (ours; docs/scale.md): cpu = the numpy reference "
                        "(default, unchanged); auto = the torch path on --device when that is a GPU, else cpu; "
                        "cuda = the torch path on the GPU (--device's if it is one)")
    p.add_argument("--no-compress", action="store_true", help="write .nii (fast to read) instead of .nii.gz")
    p.add_argument("--profile", default="", help="profile name recorded in cohort.json and the DICOM "
                   "SeriesDescription (default: the profile the checkpoint was trained with)")
    f = p.add_argument_group("fast generation path (ours, off by default; docs/performance.md)")
    f.add_argument("--fast", action="store_true",
                   help="CT-SGAN: BatchNorm folded into Gslice, flat slice batches, channels-last; same volumes to "
                        "float32 rounding (1e-5 model units), not bit for bit")
    f.add_argument("--slice-batch", type=int, default=1024,
                   help="with --fast: (volume, position) pairs per Gslice call (default 1024)")
    f.add_argument("--precision", choices=("checkpoint", "fp32", "bf16"), default="checkpoint",
                   help="with --fast: checkpoint = bf16 autocast on CUDA if the checkpoint trained with ctsgan.bf16 "
                        "(as the default path), else float32; bf16 = bf16 autocast (also on CPU, slow there)")
    f.add_argument("--compile", action="store_true",
                   help="with --fast: torch.compile the folded Gslice (falls back to eager with a warning)")
    p.add_argument("--allow-foreign", action="store_true",
                   help="write into an --out folder that holds other files (they are never deleted)")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """Every argument is checked before anything is loaded or written (one-line errors, exit 2)."""
    import math

    from ..errors import CTSGANError

    if args.merge is not None and args.merge < 1:
        raise CTSGANError(f"--merge: must be a shard count >= 1 (got {args.merge})")
    if args.n < 1:
        raise CTSGANError(f"--n: must be >= 1 (got {args.n})")
    if args.seed < 0:
        raise CTSGANError(f"--seed: must be >= 0 (got {args.seed})")
    if args.batch < 1:
        raise CTSGANError(f"--batch: must be >= 1 (got {args.batch})")
    if args.slice_batch < 1:
        raise CTSGANError(f"--slice-batch: must be >= 1 (got {args.slice_batch})")
    if not args.fast and (args.compile or args.precision != "checkpoint" or args.slice_batch != 1024):
        raise CTSGANError("--slice-batch, --precision and --compile only apply with --fast")
    if args.nodules is not None and args.nodules < 0:
        raise CTSGANError(f"--nodules: must be >= 0 (got {args.nodules})")
    if args.nodule_z is not None and not (math.isfinite(args.nodule_z) and 0.0 <= args.nodule_z <= 1.0):
        raise CTSGANError(f"--nodule-z: must be in [0, 1] (got {args.nodule_z})")
    if args.inject_fraction is not None and not (math.isfinite(args.inject_fraction)
                                                 and 0.0 <= args.inject_fraction <= 1.0):
        raise CTSGANError(f"--inject-fraction: must be in [0, 1] (got {args.inject_fraction})")
    if args.nodule_diameters and not all(math.isfinite(d) and d > 0 for d in args.nodule_diameters):
        raise CTSGANError(f"--nodule-diameters: must be positive numbers (got {args.nodule_diameters})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CTSGANError(f"--out {out}: exists and is not a folder")
    if args.device is not None:
        import torch

        if args.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise CTSGANError(f"--device: must be cpu or cuda[:N] (got {args.device!r})")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise CTSGANError(f"--device {args.device}: no CUDA GPU is available here (use --device cpu)")
    if getattr(args, "cohort_device", "cpu") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CTSGANError("--cohort-device cuda: no CUDA GPU is available here (use cpu or auto)")


def run(args: argparse.Namespace) -> int:
    from ..synthesis import (distributed_shard, generate_cohort, merge_shards, parse_shard, shard_dir,
                             wait_for_shards)
    from ..utils.hardware import default_device
    from ..utils.lock import folder_lock
    from ..utils.paths import claim_output_folder, undo_new_folder

    check_args(args)
    out = Path(args.out)
    if args.merge:
        claim_output_folder(out, "generate", allow_foreign=args.allow_foreign)
        with folder_lock(out, "generate"):
            print(f"merged: {merge_shards(out, args.merge)}")
        print(cohort_summary(out))
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
    # the folder must be new, empty or one `generate` wrote (never a real cohort); one writer per shard folder
    with undo_new_folder(out):
        claim_output_folder(out, "generate", allow_foreign=args.allow_foreign)
        with folder_lock(shard_dir(out, *shard), "generate"):
            folder = generate_cohort(args.checkpoint, args.n, args.seed, out,
                                     inject_fraction=args.inject_fraction, nodule_diameters_vox=args.nodule_diameters,
                                     injector=args.injector, shard=shard, batch=args.batch, device=device,
                                     dicom=args.dicom, compress=not args.no_compress, profile=args.profile,
                                     progress=not args.no_progress, fast=fast_options(args, device),
                                     nodules=args.nodules, nodule_z_frac=args.nodule_z,
                                     cohort_device=cohort_torch_device(args.cohort_device, device))
    if dist is not None and args.shard is None:
        if shard[0] == 0:
            wait_for_shards(out, shard[1])
            merge_shards(out, shard[1])
            print(f"merged {shard[1]} shards into {out / 'manifest.csv'}")
            print(cohort_summary(out))
    else:
        print(f"wrote {folder}")
        print(cohort_summary(folder))
    return 0


def cohort_torch_device(choice: str, device: str) -> str | None:
    """The torch device of the cohort work for ``--cohort-device choice`` and the generator's ``device``; None
    means the numpy reference path on the CPU.

    Examples
    --------
    >>> cohort_torch_device("auto", "cuda:1"), cohort_torch_device("auto", "cpu"), cohort_torch_device("cpu", "cuda")
    ('cuda:1', None, None)
    """
    dev = str(device)
    if choice == "cpu" or (choice == "auto" and not dev.startswith("cuda")):
        return None
    return dev if dev.startswith("cuda") else "cuda"


def fast_options(args: argparse.Namespace, device: str):
    """The :class:`~ctsgan_lib.models.ctsgan_fast.FastOptions` that ``--fast`` asks for, or None."""
    if not args.fast:
        return None
    from ..models.ctsgan_fast import FastOptions      # lazy, as every import here: keeps `ctsgan --help` fast
    from ..utils.checkpoint import load_checkpoint

    if args.precision == "checkpoint":   # as the default path: the checkpoint's ctsgan.bf16, on CUDA only
        cfg = load_checkpoint(args.checkpoint, map_location="cpu")["config"]
        bf16 = bool(cfg.get("ctsgan", {}).get("bf16", False)) and str(device).startswith("cuda")
    else:
        bf16 = args.precision == "bf16"
    return FastOptions(slice_batch=args.slice_batch, bf16=bf16, compile=args.compile)


def cohort_summary(folder: Path) -> str:
    """One line for the end of a run: volumes, how many the lung check flagged, nodules and the volumes holding them."""
    from ..data.cohort import Cohort

    m = Cohort(folder).manifest
    flagged = int((m["lung_flags"].astype(str) != "").sum()) if "lung_flags" in m else 0
    n_nodules = sum(len(n) for n in m["nodules"])
    with_nodules = int((m["nodules"].map(len) > 0).sum())
    if "condition_nodules" in m:   # conditional CT-SGAN: nodules by condition, places unknown
        k = m["condition_nodules"].astype(int)
        return (f"{len(m)} volumes, {flagged} flagged by the lung check, {int((k > 0).sum())} generated under a "
                f"nodule condition ({int(k.sum())} nodules requested)")
    return (f"{len(m)} volumes, {flagged} flagged by the lung check (never injected), {n_nodules} nodules in "
            f"{with_nodules} volumes")
