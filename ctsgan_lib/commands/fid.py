"""``ctsgan fid REAL_COHORT OTHER_COHORT``: slice-wise FID/IS (paper §4.2) between two cohorts, as JSON lines."""
from __future__ import annotations

import argparse

ROWS = ("real", "ctsgan", "gan3d")


def register(sub: argparse._SubParsersAction) -> None:
    from .common import add_device_arg, add_profile_args, add_progress_arg

    p = sub.add_parser(
        "fid", help="FID / Inception Score between two cohorts (Table 1 protocol), written as JSON lines",
        description="Paper §4.2: FID between the axial slice sets of two random scans (one from each cohort; two "
                    "different patients when both are the same cohort), repeated over fidelity.n_pairs pairs; IS "
                    "per volume of OTHER_COHORT; plus the 2.5D (per view) and pooled variants. Every JSON line "
                    "carries the protocol, extractor, weights SHA-256 and seed. Features are cached in "
                    "runs/<profile>/fidelity/features/.")
    p.add_argument("real", metavar="REAL_COHORT", help="reference cohort folder (holding manifest.csv)")
    p.add_argument("other", metavar="OTHER_COHORT", help="cohort to compare (the same folder = real vs real)")
    add_profile_args(p)
    p.add_argument("--out", default=None, help="JSON-lines file to append to "
                   "(default: runs/<profile>/fidelity/metrics.jsonl)")
    p.add_argument("--row", choices=ROWS, default=None,
                   help="Table 1 row OTHER_COHORT stands for (default: 'real' when both folders are the same, "
                        "else the manifest's source column when it is ctsgan/gan3d, else 'ctsgan')")
    p.add_argument("--pairs", type=int, default=None, help="override fidelity.n_pairs")
    p.add_argument("--views", nargs="+", default=None, choices=("axial", "coronal", "sagittal"),
                   help="override fidelity.views (axial is the paper's)")
    p.add_argument("--weights", default=None, help="InceptionV3 weights file (override fidelity.weights_path)")
    p.add_argument("--tables", action="store_true", help="also write table1.csv/.md (and 2.5D, pooled) next to --out")
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def _infer_row(real_path, other_path, other) -> str:
    from pathlib import Path

    if Path(real_path).resolve() == Path(other_path).resolve():
        return "real"
    sources = set(other.manifest["source"]) if hasattr(other, "manifest") else set()
    if len(sources) == 1 and next(iter(sources)) in ROWS:
        return next(iter(sources))
    return "ctsgan"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import load_profile, parse_overrides
    from ..data.cohort import Cohort
    from ..errors import CTSGANError
    from ..eval.fidelity import Source, mean_std, run_fidelity
    from ..reporting.fidelity import write_tables

    overrides = parse_overrides(args.overrides)
    if args.pairs is not None:
        overrides["fidelity.n_pairs"] = args.pairs
    if args.views:
        overrides["fidelity.views"] = ",".join(args.views)
    if args.weights:
        overrides["fidelity.weights_path"] = args.weights
    cfg = load_profile(args.profile, **overrides)
    real = Cohort(args.real)
    other = Cohort(args.other)
    row = args.row or _infer_row(args.real, args.other, other)
    if row == "real" and Path(args.real).resolve() != Path(args.other).resolve():
        raise CTSGANError("--row real compares two different patients of ONE cohort: pass the same folder twice")
    out = Path(args.out) if args.out else cfg.runs_dir / "fidelity" / "metrics.jsonl"
    records = run_fidelity(cfg, Source("real", real, str(args.real)), [Source(row, other, str(args.other))],
                           out=out, device=args.device,
                           progress=not args.no_progress)
    ex = records[0]
    print(f"extractor: {ex['extractor']} ({ex['weights_kind']}, sha256 {ex['weights_sha256'][:16]}…)"
          + ("" if ex["comparable_to_paper"] else " — NOT ImageNet features: not comparable to the paper"))
    for view in cfg.fidelity.views:
        m, s = mean_std(r["value"] for r in records if r["metric"] == "fid" and r["protocol"] == "pair"
                        and r["view"] == view)
        pooled = [r["value"] for r in records if r["protocol"] == "pooled" and r["view"] == view]
        print(f"FID {view:9s} {m:10.2f} ± {s:.2f} over {cfg.fidelity.n_pairs} pairs; pooled {pooled[0]:.2f}")
    m, s = mean_std(r["value"] for r in records if r["metric"] == "is")
    print(f"IS  (per volume) {m:.3f} ± {s:.3f}")
    if args.tables:
        write_tables(records, out.parent)
        print(f"tables: {out.parent / 'table1.md'}")
    print(f"{len(records)} JSON lines appended to {out}")
    return 0
