"""How many injector iterations until the nodule realism AUC levels off? (issue 19 [injector])

Trains the sphere injector (``nodules.injector: sphere``) for the profile's iterations, then the learned injector in
segments, and after each segment runs the realism check of :mod:`ctsgan_lib.nodules.realism` on the held-out scans
(same sites, same realism-CNN seed every time). One JSON line per checkpoint goes to ``--out`` (iterations, training
seconds so far, AUC with bootstrap interval for the learned and the sphere injector, diameter MAE, hardware, load
average, commit). The last checkpoint's full result is saved as the stage's record
(``runs/<P>/nodules/realism/``) and, with ``--figures``, rendered into ``figures/<P>/`` (``nodule_realism.{csv,md}``,
``figB4_nodule_realism.{png,pdf}``).

Needs the prepared cohort (``ctsgan prepare --profile demo``). The committed demo run:

    CTSGAN_ROOT=/tmp/demo .venv/bin/python benchmarks/nodule_realism_budget.py --profile demo \
        --checkpoints 100 200 300 --figures --out benchmarks/results/cpu/nodule_realism_budget.jsonl
"""
from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch

from ctsgan_lib.config import checkout_root, load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.nodules import NoduleInjector, phantom_truth, train_nodule_gan
from ctsgan_lib.nodules.realism import (NoInjection, experiment_size_check, load_realism, run_realism, save_realism,
                                        size_errors)
from ctsgan_lib.reporting.nodules import save_realism_figure, write_realism_report
from ctsgan_lib.utils.hardware import git_commit, hardware_info, hardware_label
from ctsgan_lib.utils.logs import append_jsonl
from ctsgan_lib.viz import figure_caption


def _learned(checkpoint) -> dict:
    """The learned injector as the profile pastes it back (``nodules.paste``, recorded in the checkpoint) and, when
    that is not Jin et al.'s centre paste-back, also with it (``learned_jin``): same weights, same sites."""
    inj = NoduleInjector.from_checkpoint(checkpoint)
    out = {"learned": inj}
    if inj.paste != "centre":
        out["learned_jin"] = NoduleInjector.from_checkpoint(checkpoint, paste="centre")
    return out


def _record(cfg, iterations, train_s, check_s, result, hw, commit, overrides) -> dict:
    se = result["size_errors"]
    mae = {s: round(float((se.loc[se.source == s, "mae_vox"] * se.loc[se.source == s, "n"]).sum()
                          / se.loc[se.source == s, "n"].sum()), 3) for s in sorted(set(se.source))}
    return {"bench": "nodule_realism_budget", "profile": cfg.profile, "iterations": int(iterations),
            "train_seconds": round(train_s, 1), "check_seconds": round(check_s, 1), "auc": result["auc"],
            "paste": result.get("paste", {}),
            "diameter_mae_vox": mae, "n_sites": result["n_sites"],
            "settings": {k: getattr(cfg.nodules, k) for k in ("voi_size", "mask_size", "base_channels", "batch",
                                                              "realism_steps", "realism_folds")},
            "hardware": hw, "hardware_label": hardware_label("cpu"), "loadavg": list(os.getloadavg()),
            "contention": "shared 2-core CPU, other agents running: timings are under contention",
            "git_commit": commit, "overrides": overrides}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[100, 200, 300],
                    help="learned-injector iterations at which the realism check runs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides (dotted keys)")
    ap.add_argument("--max-sites", type=int, default=None, help="cap on held-out nodule sites (quick trials)")
    ap.add_argument("--sphere-external", action="store_true",
                    help="wait for runs/<P>/nodules/injector_sphere to be trained by another process")
    ap.add_argument("--record-at", type=int, default=None,
                    help="checkpoint whose result becomes runs/<P>/nodules/realism (default nodules.iterations)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on the shared 2-core CPU, 2 threads ran 2x slower per step)")
    ap.add_argument("--recheck", action="store_true",
                    help="checks only, on the learned checkpoints (waited for) another process trains; the sphere "
                         "injector and the power baseline with the first one")
    ap.add_argument("--none-only", action="store_true",
                    help="only the power baseline (no injection) into runs/<P>/nodules/realism_none (parallel run)")
    ap.add_argument("--finish-only", action="store_true",
                    help="skip training and checks: add the study-size check to the saved record and render it")
    ap.add_argument("--figures", action="store_true", help="write figures/<P>/nodule_realism.* and figB4")
    ap.add_argument("--out", default="benchmarks/results/cpu/nodule_realism_budget.jsonl")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: (float(v) if v.replace(".", "", 1).isdigit() and "." in v else
                     int(v) if v.isdigit() else v) for k, v in overrides.items()}
    cfg = load_profile(args.profile, **overrides)
    torch.set_num_threads(args.threads)
    record_at = args.record_at or cfg.nodules.iterations
    if record_at not in args.checkpoints:
        raise SystemExit(f"--record-at {record_at} is not one of --checkpoints {args.checkpoints}")
    cohort = Cohort(cfg.data_dir / "cohort")
    run_dir = cfg.runs_dir / "nodules"
    hw, commit = hardware_info("cpu"), git_commit(checkout_root())

    if args.finish_only:
        return _finish(cfg, args.figures)
    if args.none_only:
        return _none_baseline(cfg)
    if args.recheck:
        return _recheck(cfg, args, hw, commit, overrides, record_at)

    t0 = time.perf_counter()
    held_out = [r for s in ("val", "test") for r in cohort.ids(split=s, has_nodule=1)]
    truths = {r: phantom_truth(cfg, cohort.row(r)) for r in held_out}   # rendered once, reused by every check
    truth_s = time.perf_counter() - t0
    print(f"{len(truths)} nodule-free truths rendered in {truth_s:.0f} s")

    learned_cfg = cfg.replace(**{"nodules.injector": "learned"})
    train_s, result, kept = 0.0, None, None
    for it in sorted(args.checkpoints):
        t0 = time.perf_counter()
        res = train_nodule_gan(learned_cfg, "injector", out_dir=run_dir / "injector", device="cpu", iterations=it,
                               progress=False)
        train_s += time.perf_counter() - t0
        injectors = _learned(res["checkpoint"])
        t0 = time.perf_counter()
        result = run_realism(learned_cfg, injectors, cohort, truth_fn=lambda row: truths[row["id"]],
                             max_sites=args.max_sites)
        rec = _record(cfg, it, train_s, time.perf_counter() - t0, result, hw, commit, overrides)
        append_jsonl(args.out, rec)
        if it == record_at:
            kept, kept_s = result, train_s
        print(f"iterations {it}: AUC {rec['auc']}; train {train_s:.0f} s, MAE {rec['diameter_mae_vox']}")

    # the sphere injector: trained here, or (--sphere-external) by a parallel process into the same folder
    sphere_cfg = cfg.replace(**{"nodules.injector": "sphere"})
    sphere_dir = run_dir / "injector_sphere"
    if args.sphere_external:
        while not (sphere_dir / f"ckpt_{cfg.nodules.iterations:06d}.pt").is_file():
            time.sleep(10)
    else:
        train_nodule_gan(sphere_cfg, "injector", out_dir=sphere_dir, device="cpu", progress=False)
    sphere = NoduleInjector.from_checkpoint(sphere_dir)
    sphere_s = float(pd.read_csv(sphere_dir / "log.csv")["seconds"].sum())
    t0 = time.perf_counter()
    sph = run_realism(sphere_cfg, {"sphere": sphere}, cohort, truth_fn=lambda row: truths[row["id"]],
                      max_sites=args.max_sites)
    rec = _record(cfg, sphere.step, sphere_s, time.perf_counter() - t0, sph, hw, commit, overrides)
    append_jsonl(args.out, rec)
    print(f"sphere injector, {sphere.step} iterations: AUC {rec['auc']}; train {sphere_s:.0f} s")

    # the stage's record: the learned injector at --record-at, with the sphere injector (same sites and seeds)
    result, train_s = kept, kept_s
    result["auc"]["sphere"] = sph["auc"]["sphere"]
    result["rows"] = pd.concat([result["rows"], sph["rows"][sph["rows"]["source"] == "sphere"]], ignore_index=True)
    result["size_errors"] = size_errors(result["rows"])
    result["examples"]["sphere"] = sph["examples"]["sphere"]
    result["injector_steps"]["sphere"] = int(sphere.step)
    note = (f"benchmarks/nodule_realism_budget.py --profile {cfg.profile} --checkpoints "
            f"{' '.join(map(str, args.checkpoints))} at commit {commit}, {hardware_label('cpu')} (shared, under "
            f"contention); learned injector {record_at} iterations ({train_s:.0f} s), sphere injector "
            f"{sphere.step} iterations ({sphere_s:.0f} s)" + (f"; overrides {overrides}" if overrides else ""))
    save_realism(result, run_dir / "realism", note)
    _finish(cfg, args.figures)


def _wait(path) -> None:
    while not path.is_file():
        time.sleep(10)
    time.sleep(2)   # the checkpoint is written atomically; give the writer a moment to finish its log line


def _recheck(cfg, args, hw, commit, overrides, record_at) -> None:
    """The checks of the main mode, on checkpoints trained by another process (to use both cores)."""
    cohort = Cohort(cfg.data_dir / "cohort")
    run_dir = cfg.runs_dir / "nodules"
    held_out = [r for s in ("val", "test") for r in cohort.ids(split=s, has_nodule=1)]
    truths = {r: phantom_truth(cfg, cohort.row(r)) for r in held_out}
    sphere_dir = run_dir / "injector_sphere"
    _wait(sphere_dir / f"ckpt_{cfg.nodules.iterations:06d}.pt")
    sphere = NoduleInjector.from_checkpoint(sphere_dir)
    kept = None
    for k, it in enumerate(sorted(args.checkpoints)):
        ck = run_dir / "injector" / f"ckpt_{it:06d}.pt"
        _wait(ck)
        injectors = _learned(ck)
        if k == 0:
            injectors.update({"sphere": sphere, "none": NoInjection(cfg.nodules.voi_size, cfg.nodules.mask_size)})
        t0 = time.perf_counter()
        res = run_realism(cfg, injectors, cohort, truth_fn=lambda row: truths[row["id"]], max_sites=args.max_sites)
        log = pd.read_csv(run_dir / "injector" / "log.csv")
        train_s = float(log.loc[log["step"] <= it, "seconds"].sum())
        rec = _record(cfg, it, train_s, time.perf_counter() - t0, res, hw, commit, overrides)
        rec["cnn_pooling"] = "flatten"
        append_jsonl(args.out, rec)
        print(f"iterations {it}: AUC { {n: round(a['auc'], 3) for n, a in res['auc'].items()} }", flush=True)
        if k == 0:
            first = res
        if it == record_at:
            kept, kept_s = res, train_s
    # the record: the learned injector at record_at, with the sphere and the power baseline of the first check
    for name in ("sphere", "none"):
        if name not in kept["auc"]:
            kept["auc"][name] = first["auc"][name]
            kept["rows"] = pd.concat([kept["rows"], first["rows"][first["rows"]["source"] == name]],
                                     ignore_index=True)
    kept["size_errors"] = size_errors(kept["rows"])
    kept["examples"]["sphere"] = first["examples"]["sphere"]
    kept["injector_steps"]["sphere"] = int(sphere.step)
    sphere_s = float(pd.read_csv(sphere_dir / "log.csv")["seconds"].sum())
    note = (f"benchmarks/nodule_realism_budget.py --profile {cfg.profile} --recheck --checkpoints "
            f"{' '.join(map(str, args.checkpoints))} at commit {commit}, {hardware_label('cpu')} (shared, under "
            f"contention); learned injector {record_at} iterations ({kept_s:.0f} s of steps), sphere injector "
            f"{sphere.step} iterations ({sphere_s:.0f} s); sites, seeds and realism-CNN seeds identical for all"
            + (f"; overrides {overrides}" if overrides else ""))
    save_realism(kept, run_dir / "realism", note)
    _finish(cfg, args.figures)


def _none_baseline(cfg) -> None:
    """The realism check's power baseline: native nodules against the same sites of the truth, nothing injected."""
    cohort = Cohort(cfg.data_dir / "cohort")
    none = run_realism(cfg, {"none": NoInjection(cfg.nodules.voi_size, cfg.nodules.mask_size)}, cohort,
                       truth_fn=lambda row: phantom_truth(cfg, row))
    save_realism(none, cfg.runs_dir / "nodules" / "realism_none", "power baseline (no injection)")
    print(f"power baseline: AUC {none['auc']['none']}")


def _finish(cfg, figures: bool) -> None:
    """Add the size check at the study's sizes (``nodules.diameters_vox``) to the saved record; render it."""
    run_dir = cfg.runs_dir / "nodules"
    rec = load_realism(run_dir / "realism")
    injectors = {"learned": NoduleInjector.from_checkpoint(run_dir / "injector"),
                 "sphere": NoduleInjector.from_checkpoint(run_dir / "injector_sphere")}
    cohort = Cohort(cfg.data_dir / "cohort")
    rec["experiment_sizes"] = experiment_size_check(injectors, cohort, cfg.nodules.diameters_vox, n_scans=6,
                                                    seed=cfg.seed)
    if "none" not in rec["auc"]:   # the power baseline: native nodules against no nodule at all
        if not (run_dir / "realism_none" / "realism.json").is_file():
            _none_baseline(cfg)
        none = load_realism(run_dir / "realism_none")
        rec["auc"]["none"] = none["auc"]["none"]
        rec["rows"] = pd.concat([rec["rows"], none["rows"][none["rows"]["source"] == "none"]], ignore_index=True)
        rec["size_errors"] = size_errors(rec["rows"])
    save_realism(rec, run_dir / "realism", rec.get("note", ""))
    if figures:
        rec = load_realism(run_dir / "realism")
        out = cfg.root / "figures" / cfg.profile
        cap = figure_caption(cfg.profile, "phantom cohort", cfg.seed)
        paths = write_realism_report(rec, out, cap) + save_realism_figure(rec, out, cap)
        print("wrote", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
