"""Which paste-back makes the learned injector's nodules hardest to tell from native ones? (issue 19 [injector])

Loads a trained learned injector (default ``runs/<P>/nodules/injector``, e.g. the one notebook 02 trained) and runs
the realism check of :mod:`ctsgan_lib.nodules.realism` once, on the same held-out sites and realism-CNN seeds, for
each paste-back variant named on the command line as ``PASTE:SIGMA`` (``nodules.paste`` and the noise touch-up's
σ in voxels, 0 = off). The sphere injector (``runs/<P>/nodules/injector_sphere``) and the power baseline (no
nodule at all) run beside them unless ``--no-controls``. Nothing is retrained: only how the generated VOI goes back
into the scan changes. One JSON line with every variant's AUC, interval and diameter error, hardware and commit goes
to ``--out``.

    CTSGAN_ROOT=/path/to/demo/root .venv/bin/python benchmarks/paste_back.py --profile demo \\
        centre:0 centre:1 ctgan:0 ctgan:1 local:0 local:1
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from ctsgan_lib.config import checkout_root, load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.nodules import NoduleInjector, phantom_truth
from ctsgan_lib.nodules.realism import NoInjection, run_realism
from ctsgan_lib.utils.hardware import git_commit, hardware_info, hardware_label
from ctsgan_lib.utils.logs import append_jsonl
from ctsgan_lib.utils.paths import shareable_path


def _variant(spec: str) -> tuple[str, float]:
    paste, _, sigma = spec.partition(":")
    try:
        return paste, float(sigma or 0)
    except ValueError:
        raise SystemExit(f"variant {spec!r}: expected PASTE:SIGMA, e.g. centre:1") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="PASTE:SIGMA, e.g. centre:0 centre:1 ctgan:1 local:0")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--injector", default=None, help="checkpoint file or folder (default runs/<P>/nodules/injector)")
    ap.add_argument("--no-controls", action="store_true", help="skip the sphere injector and the power baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/cpu/paste_back.jsonl")
    args = ap.parse_args()
    cfg = load_profile(args.profile)
    torch.set_num_threads(args.threads)
    run_dir = cfg.runs_dir / "nodules"
    ck = Path(args.injector) if args.injector else run_dir / "injector"
    try:
        injectors = {f"learned_{p}_{s:g}": NoduleInjector.from_checkpoint(ck, paste=p, touchup_sigma_vox=s)
                     for p, s in map(_variant, args.variants)}
        if not args.no_controls:
            injectors["sphere"] = NoduleInjector.from_checkpoint(run_dir / "injector_sphere")
            injectors["none"] = NoInjection(cfg.nodules.voi_size, cfg.nodules.mask_size)
        for inj in injectors.values():     # a typo in PASTE fails here, before the minutes of the check
            if getattr(inj, "kind", "") == "learned":
                inj.paste_weight(2.0)
    except CTSGANError as e:
        raise SystemExit(f"error: {e}") from None
    cohort = Cohort(cfg.data_dir / "cohort")
    held_out = [r for s in ("val", "test") for r in cohort.ids(split=s, has_nodule=1)]
    truths = {r: phantom_truth(cfg, cohort.row(r)) for r in held_out}
    t0 = time.perf_counter()
    res = run_realism(cfg, injectors, cohort, truth_fn=lambda row: truths[row["id"]])
    se = res["size_errors"]
    rec = {"bench": "paste_back", "profile": cfg.profile,
           "injector_checkpoint": shareable_path(next(iter(injectors.values())).source),
           "injector_step": next(iter(injectors.values())).step, "n_sites": res["n_sites"],
           "auc": res["auc"], "paste": res["paste"],
           "measured_mean_vox": {s: {int(k): round(float(v), 3) for k, v in
                                     se[se.source == s].set_index("size_vox")["measured_mean_vox"].items()}
                                 for s in sorted(set(se.source))},
           "check_seconds": round(time.perf_counter() - t0, 1),
           "settings": {k: getattr(cfg.nodules, k) for k in ("voi_size", "mask_size", "realism_steps",
                                                              "realism_folds", "realism_bootstrap")},
           "hardware": hardware_info("cpu"), "hardware_label": hardware_label("cpu"),
           "loadavg": list(os.getloadavg()), "git_commit": git_commit(checkout_root())}
    append_jsonl(args.out, rec)
    for name, a in res["auc"].items():
        print(f"{name:22s} AUC {a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]")


if __name__ == "__main__":
    main()
