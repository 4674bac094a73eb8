"""How visible are native nodules to a classifier at S³, against the injected ones? (issue [study], build item 4)

At 64³ one voxel of the demo cohort is about 5.5 mm, so the LIDC-like nodules the phantom draws (median about 8 mm)
are one or two voxels across, while the grid injects nodules of 4–8 voxels (22–44 mm). This script measures, per
native positive, how much signal its own nodules leave after the cohort's preprocessing at S³, and compares it with
the signal of the nodules the grid injects, so that the resolution the demo needs can be read off a number.

The measurement. The phantom renders each patient from parameters in millimetres, and can render the same patient
with the same noise realisation without its nodules (``render_phantom(..., with_nodules=False)``). Rendered at the
demo's phantom grid (96³, 3.7 mm) and at twice that (192³, 1.85 mm), then preprocessed by the cohort's own
``prepare_volume`` to S³, the difference of the two volumes is exactly what the nodules add at S³. Per patient:

- ``largest_vox``: the largest nodule's diameter in voxels at S³;
- ``peak_hu``: the largest |difference| (HU), i.e. the contrast the nodule keeps after partial volume;
- ``dprime``: sqrt(sum(difference²)) / σ, the detectability index of the ideal observer for a signal of known place in
  white noise of σ, with σ the HU standard deviation of the nodule-free volume inside its lung label. This is an upper
  bound for any classifier (real backgrounds are not white; a CNN is not ideal); it ranks signals, which is its use.

The injected side: the demo's trained injector (``runs/demo/nodules/injector``, the grid's default) injects one
nodule of each grid size into nodule-free (``nlst-like``) scans of the demo cohort at 64³; the same three numbers
are computed from (injected − original). Needs ``ctsgan reproduce --profile demo --only 01 02``.

    .venv/bin/python benchmarks/native_visibility.py --patients 20 \
        --out benchmarks/results/cpu/native_visibility.jsonl
"""
from __future__ import annotations

import argparse
import csv
import json
import time

import numpy as np

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.io import read_nifti, read_volume
from ctsgan_lib.data.phantom.params import LABELS
from ctsgan_lib.data.phantom.render import render_phantom
from ctsgan_lib.data.phantom.sampling import sample_params
from ctsgan_lib.data.sources import prepare_volume
from ctsgan_lib.experiments import load_injector
from ctsgan_lib.utils.hardware import hardware_info
from ctsgan_lib.utils.logs import append_jsonl


def signal_stats(diff_hu: np.ndarray, background_hu: np.ndarray, lung: np.ndarray) -> dict:
    """Peak contrast and ideal-observer d' of a nodule signal ``diff_hu`` against the lung's HU spread."""
    sigma = float(np.std(background_hu[lung])) if lung.any() else float(np.std(background_hu))
    return {"peak_hu": round(float(np.abs(diff_hu).max()), 1), "sigma_hu": round(sigma, 1),
            "dprime": round(float(np.sqrt(np.sum(diff_hu.astype(np.float64) ** 2)) / max(sigma, 1e-6)), 2)}


def native_rows(cfg, rows: list[dict], sizes: list[int], patients: int) -> list[dict]:
    """One record per (native patient, S): the signal its own nodules leave at S³."""
    out = []
    native = [r for r in rows if r["domain"] == "lidc-like" and r["has_nodule"] == "1"][:patients]
    base_n, base_sp = cfg.data.phantom_size, cfg.data.phantom_spacing_mm
    for r in native:
        seed = int(r["seed"])
        for s in sizes:
            k = max(1, int(np.ceil(s / cfg.data.size)))        # phantom grid refined with S, same mm anatomy
            params = sample_params(seed, "lidc-like", base_n * k, base_sp / k)
            ph1, ph0 = render_phantom(params, True), render_phantom(params, False)
            if not ph1.nodules:
                continue
            cs = load_profile(cfg.profile, **{"data.size": s})
            a, _, nods, _ = prepare_volume(cs, ph1.hu, ph1.spacing_mm, [dict(n) for n in ph1.nodules], ph1.labels)
            b, _, _, lab = prepare_volume(cs, ph0.hu, ph0.spacing_mm, None, ph0.labels)
            st = signal_stats(a.astype(np.float32) - b.astype(np.float32), b, lab == LABELS["lung"])
            largest = max((n.get("diameter_vox", 0.0) for n in nods), default=0.0)
            out.append({"kind": "native", "id": r["id"], "size": s, "phantom_grid": base_n * k,
                        "largest_mm": round(max(n["diameter_mm"] for n in ph1.nodules), 2),
                        "largest_vox": round(float(largest), 2), **st})
    return out


def injected_rows(cfg, rows: list[dict], diameters: list[float], patients: int) -> list[dict]:
    """One record per (nodule-free scan, injected size) at the cohort's own S³, with the grid's injector."""
    injector = load_injector(cfg)
    out = []
    clean = [r for r in rows if r["domain"] == "nlst-like" and r["has_nodule"] == "0"][:patients]
    root = cfg.data_dir / "cohort"
    for r in clean:
        hu = read_volume(root / r["path"])[0]
        hu = hu.astype(np.float32)
        lab = read_nifti(root / r["label_path"])[0]
        lung = lab == LABELS["lung"]
        for d in diameters:
            rng = np.random.default_rng([int(r["seed"]), int(d * 10)])
            new, nods = injector.inject(hu, [float(d)], rng, lung=lung)
            if not nods:
                continue
            st = signal_stats(new - hu, hu, lung)
            out.append({"kind": "injected", "id": r["id"], "size": cfg.data.size, "injected_vox": d,
                        "largest_vox": float(d), **st})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--out", default="benchmarks/results/cpu/native_visibility.jsonl")
    args = ap.parse_args()
    cfg = load_profile(args.profile)
    with open(cfg.data_dir / "cohort" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    t0 = time.perf_counter()
    recs = native_rows(cfg, rows, args.sizes, args.patients)
    recs += injected_rows(cfg, rows, [float(d) for d in cfg.classifier.sizes], args.patients)
    hw = hardware_info()
    for rec in recs:
        append_jsonl(args.out, {"bench": "native_visibility", "profile": args.profile, **rec, "hardware_info": hw})
    print(json.dumps(summarise(recs), indent=1))
    print(f"{len(recs)} records in {time.perf_counter() - t0:.0f} s -> {args.out}")


def summarise(recs: list[dict]) -> list[dict]:
    """Median (and quartiles) of each group: native at each S, injected at each size."""
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        key = (r["kind"], r["size"], r.get("injected_vox"))
        groups.setdefault(key, []).append(r)
    out = []
    for (kind, s, d), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        row = {"kind": kind, "S": s, "injected_vox": d, "n": len(g)}
        for k in ("largest_vox", "peak_hu", "dprime"):
            q = np.percentile([x[k] for x in g], [25, 50, 75])
            row[k] = f"{q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}]"
        out.append(row)
    return out


if __name__ == "__main__":
    main()
