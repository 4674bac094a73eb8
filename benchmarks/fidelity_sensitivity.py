"""Sensitivity suite of the offline FID feature spaces (issue 21): domain CNN (2D, 2.5D, 3D) vs the recalibrated
random InceptionV3 fallback, on held-out (val + test) real volumes of a prepared cohort, under several extractor seeds.

    CTSGAN_ROOT=/tmp/demo ctsgan prepare --profile demo --set data.n_patients=40
    CTSGAN_ROOT=/tmp/demo python benchmarks/fidelity_sensitivity.py --profile demo --seeds 0 1 2 \
        --out benchmarks/results/cpu/fidelity_sensitivity.jsonl

Appends one JSON line per (extractor, seed, variant, corruption) summary (``kind="suite_summary"``) and one per
(extractor kind, variant, corruption) across seeds (``kind="seed_stability"``), each with run_id, hardware, loadavg
and timings; writes a markdown summary beside the JSON lines (``--summary``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.eval import domain as DM
from ctsgan_lib.eval import sensitivity as S
from ctsgan_lib.eval.fidelity import resolve_for_config
from ctsgan_lib.utils.hardware import hardware_info
from ctsgan_lib.utils.logs import append_jsonl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--extractors", nargs="+", default=["domain", "inception-fallback"])
    ap.add_argument("--n-corrupted", type=int, default=3, help="held-out volumes corrupted (paired with all others)")
    ap.add_argument("--max-slices", type=int, default=16, help="slices per volume and view (both extractors)")
    ap.add_argument("--views", nargs="+", default=["axial", "coronal"], help="views of the domain extractor")
    ap.add_argument("--fallback-views", nargs="+", default=["axial"],
                    help="views of the Inception fallback (InceptionV3 at 299² is ~100× the domain CNN's cost)")
    ap.add_argument("--out", default="benchmarks/results/cpu/fidelity_sensitivity.jsonl")
    ap.add_argument("--summary", default=None, help="markdown summary (default: <out>.md beside it)")
    ap.add_argument("--set", nargs="*", default=[], help="profile overrides key=value")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    run_id = uuid.uuid4().hex[:12]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    common = {"run_id": run_id, "profile": args.profile, "hardware": hardware_info("cpu"), "git_commit": commit,
              "torch_threads": torch.get_num_threads(), "max_slices": args.max_slices,
              "n_corrupted": args.n_corrupted}
    cfg0 = load_profile(args.profile, **overrides)
    real = Cohort(cfg0.data_dir / "cohort")
    held = sorted(real.ids(split="val")) + sorted(real.ids(split="test"))
    vols = [np.asarray(real.read(v)[0], dtype=np.float32) for v in held]
    spacing = real.read(held[0])[1]
    common.update({"held_out": len(held), "cohort_volumes": len(real.ids()), "volume_shape": list(vols[0].shape),
                   "severities": S.SEVERITIES})
    rows = []
    for kind in args.extractors:
        for seed in args.seeds:
            t0 = time.time()
            cfg = load_profile(args.profile, **{**overrides, "fidelity.seed": seed, "fidelity.offline_extractor": kind})
            spaces = []
            if kind == "domain":
                d2 = DM.domain_for_config(cfg, real, 2, seed)
                d3 = DM.domain_for_config(cfg, real, 3, seed)
                spaces = [S.slice_space(d2.as_extractor(), args.views, args.max_slices, cfg.data.hu_min,
                                        cfg.data.hu_max, "cpu"),
                          S.volume_space(d3, cfg.data.hu_min, cfg.data.hu_max, "cpu")]
            else:
                ex = resolve_for_config(cfg, real)
                spaces = [S.slice_space(ex, args.fallback_views, args.max_slices, cfg.data.hu_min, cfg.data.hu_max,
                                        "cpu")]
            t_build = time.time() - t0
            for space in spaces:
                t1 = time.time()
                rec = S.run_suite(space, vols, spacing, args.n_corrupted, seed=seed)
                t_suite = time.time() - t1
                runner = space.meta.get("runner")
                for r in S.summarise_suite(rec):
                    row = {**r, "kind": kind, "seed": seed, "extractor": space.meta["extractor"],
                           "sha256": space.meta["sha256"], "build_s": round(t_build, 1),
                           "suite_s": round(t_suite, 1), "slices": getattr(runner, "slices_done", None),
                           "loadavg": list(os.getloadavg())}
                    rows.append(row)
                    append_jsonl(args.out, {"kind_line": "suite_summary", **common, **row})
                print(f"{kind} seed {seed} {space.name}: {t_suite:.0f} s", flush=True)
    stab = S.seed_stability(rows)
    for r in stab:
        append_jsonl(args.out, {"kind_line": "seed_stability", **common, **r})
    write_summary(Path(args.summary or Path(args.out).with_suffix(".md")), rows, stab, common)
    return 0


def write_summary(path: Path, rows, stab, common) -> None:
    """Markdown summary: per extractor and variant, corruption monotonicity, Spearman, relative FD, spreads."""
    hw = common["hardware"]
    lines = [f"# Fidelity sensitivity suite (run {common['run_id']}, commit {common['git_commit']})", "",
             f"profile {common['profile']} · cohort of {common['cohort_volumes']} volumes "
             f"{common['volume_shape']} · {common['held_out']} held-out (val+test) volumes, "
             f"{common['n_corrupted']} corrupted, paired with every other held-out volume · "
             f"{common['max_slices']} slices per volume and view · hardware {json.dumps(hw)} · "
             f"torch threads {common['torch_threads']}", "",
             "Relative FD = mean pair FID / mean real–real pair FID of the same extractor and seed. "
             "`spread` = (max − min) / mean over seeds of the relative FD at the strongest level. "
             "Real–real CV = std / mean of the clean pair FIDs.", "",
             "| extractor | variant | corruption | monotone (all seeds) | Spearman ρ (mean) | rel. FD at levels "
             "1/2/3 (seed 1st) | rel. FD top, spread over seeds | real–real CV (mean) | real–real FID by seed "
             "(max/min) | same ranking |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in stab:
        first = next(x for x in rows if x["kind"] == r["kind"] and x["variant"] == r["variant"]
                     and x["corruption"] == r["corruption"] and x["seed"] == r["seeds"][0])
        lv = "/".join(f"{v:.2f}" for v in first["relative_fd"][1:])  # one value for one-level corruptions
        lines.append(f"| {r['kind']} | {r['variant']} | {r['corruption']} | {'yes' if r['monotone_all_seeds'] else 'NO'}"
                     f" | {r['spearman_mean']:.2f} | {lv} | {np.mean(r['relative_fd_top']):.2f}, "
                     f"{100 * r['relative_fd_top_spread']:.0f} % | {r['real_real_cv_mean']:.2f} | "
                     f"{', '.join(f'{v:.3g}' for v in r['real_real_fid_by_seed'])} "
                     f"({r['real_real_fid_seed_ratio']:.1f}×) | {'yes' if r['same_corruption_ranking'] else 'no'} |")
    t = {}
    for x in rows:
        t.setdefault((x["kind"], x["seed"]), set()).add((x["extractor"], x["build_s"], x["suite_s"]))
    lines += ["", "Timings (s; shared machine, load average in the JSON lines): " + "; ".join(
        f"{k} seed {s}: " + ", ".join(f"{e} build {b} suite {u}" for e, b, u in sorted(v)) for (k, s), v in t.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
