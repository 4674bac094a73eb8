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
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the real-vs-real pairs that relative FD divides by (computed by default)")
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
    rows = [Source(row, other, str(args.other))]
    if row != "real" and not args.no_baseline:
        rows.insert(0, Source("real", real, str(args.real)))  # the real–real baseline of relative FD
    records = run_fidelity(cfg, Source("real", real, str(args.real)), rows, out=out, device=args.device,
                           progress=not args.no_progress)
    ex = records[0]
    print(f"extractor: {ex['extractor']} ({ex['weights_kind']}, sha256 {ex['weights_sha256'][:16]}…)"
          + (f"; 3D encoder: {ex['extractor_3d']} (sha256 {ex['weights_3d_sha256'][:16]}…)"
             if ex.get("extractor_3d") else "")
          + ("" if ex["comparable_to_paper"] else " — NOT ImageNet features: not comparable to the paper; "
             "compare relative FD"))

    def ms(metric, key, view=None, protocol="pair"):
        return mean_std(r["value"] for r in records if r["metric"] == metric and r["row"] == key
                        and r["protocol"] == protocol and (view is None or r["view"] == view))

    keys = list(dict.fromkeys(r["row"] for r in records))
    for key in keys:
        print(f"[{key}]")
        for view in cfg.fidelity.views:
            m, s = ms("fid", key, view)
            rr = ms("fid", "real", view)[0] if "real" in keys else float("nan")
            pooled = [r["value"] for r in records if r["protocol"] == "pooled" and r["view"] == view
                      and r["row"] == key]
            print(f"  FID {view:9s} {m:10.2f} ± {s:.2f} over {cfg.fidelity.n_pairs} pairs; relative FD "
                  f"{m / rr:.2f}; pooled {pooled[0]:.2f}")
        km, ks = ms("kid", key, "axial")
        print(f"  KID axial       {km:.5f} ± {ks:.5f}")
        m, s = ms("is", key, protocol="volume")
        print(f"  IS  (per volume) {m:.3f} ± {s:.3f}")
        if any(r["metric"] == "fid3d" for r in records):
            f3, m3 = ms("fid3d", key, "3d"), ms("mmd3d", key, "3d")
            rr3 = ms("fid3d", "real", "3d")[0] if "real" in keys else float("nan")
            d = ms("msssim", key, "3d", "within")
            print(f"  3D FID {f3[0]:.2f} ± {f3[1]:.2f} (relative {f3[0] / rr3:.2f}); 3D MMD {m3[0]:.5f} ± "
                  f"{m3[1]:.5f}; MS-SSIM within {key} {d[0]:.3f} ± {d[1]:.3f}")
    if args.tables:
        write_tables(records, out.parent)
        print(f"tables: {out.parent / 'table1.md'}")
    print(f"{len(records)} JSON lines appended to {out}")
    return 0
