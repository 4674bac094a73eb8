"""``ctsgan prepare``: build the cohort (NIfTI per patient + manifest.csv) from a source."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_profile_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from ..data.sources import SOURCES

    p = sub.add_parser("prepare", help="build the cohort data/<profile>/cohort from phantoms or real scans",
                       description="Preprocess a source into a cohort (HU clip, isotropic resample, crop, resize to "
                                   "S³; one NIfTI per patient, manifest.csv, stratified 75/12.5/12.5 splits). "
                                   "Idempotent: a rerun skips finished patients and rebuilds corrupted ones. "
                                   "Real-data scans that cannot be read are listed in failures.csv.")
    p.add_argument("--source", default="phantom", choices=SOURCES,
                   help="phantom (embedded, default) | dicom (folder of series folders) | nifti (folder of "
                        ".nii/.nii.gz) | lidc-nlst (DIR/LIDC-IDRI and DIR/NLST, see data/README.md)")
    p.add_argument("--in", dest="in_dir", metavar="DIR", help="input folder (real-data sources)")
    p.add_argument("--out", dest="out_dir", metavar="DIR", help="cohort folder (default data/<profile>/cohort)")
    p.add_argument("--allow-foreign", action="store_true",
                   help="write into an --out folder that holds other files (they are never deleted)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_profile_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.cohort import Cohort
    from ..data.sources import build_from_source

    cfg = config_from_args(args)  # validated before anything is written
    out = build_from_source(cfg, args.source, args.in_dir,
                            Path(args.out_dir) if args.out_dir else cfg.data_dir / "cohort",
                            progress=not args.no_progress, allow_foreign=args.allow_foreign,
                            report=lambda text: print(text, flush=True))
    cohort = Cohort(out)
    counts = cohort.manifest["split"].value_counts().to_dict()
    n_fail = 0
    if (out / "failures.csv").is_file():
        n_fail = sum(1 for _ in open(out / "failures.csv")) - 1
    print(f"cohort {out}: {len(cohort)} volumes ({', '.join(f'{k} {counts.get(k, 0)}' for k in ('train', 'val', 'test'))}), "
          f"{int(cohort.manifest['has_nodule'].sum())} with nodules"
          + (f"; {n_fail} scan(s) failed, see {out / 'failures.csv'}" if n_fail else ""))
    return 0
