"""``ctsgan nodules``: train the nodule injector/eraser cGANs and build the debiased / nodule-free cohorts."""
from __future__ import annotations

import argparse

from .common import add_device_arg, add_profile_args, add_progress_arg, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nodules", help="nodule injector/eraser cGANs (train) and the debiased cohorts (debias)",
                       description="Paper §3.1 / Appendix B. `train injector` learns to paint nodules into masked "
                                   "VOIs of the nodule-bearing training scans; `train eraser` learns to remove "
                                   "them (needs the injector); `debias` writes data/<P>/debiased (Fig 3a) and "
                                   "data/<P>/nodule_free (the CT-SGAN training set).")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    t = verbs.add_parser("train", help="train (or resume) the injector or the eraser",
                         description="Train the nodule injector or eraser cGAN (paper Appendix B) on VOIs of the "
                                     "cohort's nodule-bearing training scans. A rerun resumes from the newest "
                                     "checkpoint in runs/<P>/nodules/<role>/ (the same as `ctsgan train`); --fresh "
                                     "starts over. The eraser needs a trained injector.")
    t.add_argument("role", choices=["injector", "eraser"], help="which cGAN to train")
    add_profile_args(t)
    t.add_argument("--cohort", default=None, help="cohort folder (default data/<P>/cohort)")
    t.add_argument("--out", default=None, help="run folder (default runs/<P>/nodules/<role>)")
    t.add_argument("--injector", choices=["learned", "sphere"], default=None,
                   help="injector kind (default the profile's nodules.injector); another kind than the profile's "
                        "trains into runs/<P>/nodules/injector_<kind> (e.g. the sphere control of the realism check)")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue from the newest checkpoint (the default; accepted for symmetry with --fresh)")
    mode.add_argument("--fresh", action="store_true",
                      help="start over, deleting the run folder's old checkpoints, instead of resuming")
    add_device_arg(t)
    add_progress_arg(t)
    t.set_defaults(func=run_train)
    d = verbs.add_parser("debias", help="build the debiased cohort (Fig 3a) and the nodule-free training set",
                         description="With the trained injector and eraser, write data/<P>/debiased (paper Fig 3a: "
                                     "nodules erased from half of the lidc-like scans and injected into half of "
                                     "the nlst-like scans, so that the scanner domain no longer predicts nodules) "
                                     "and data/<P>/nodule_free (the training split with every nodule erased, "
                                     "CT-SGAN's training set). A rerun with the same models and seed skips "
                                     "finished volumes.")
    add_profile_args(d)
    d.add_argument("--cohort", default=None, help="source cohort (default data/<P>/cohort)")
    d.add_argument("--diameter-vox", type=float, default=None,
                   help="inject nodules of this one size (default: sizes of the cohort's own nodules)")
    add_device_arg(d, default="cpu")
    add_progress_arg(d)
    d.set_defaults(func=run_debias)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def run_train(args: argparse.Namespace) -> int:
    from ..nodules import train_nodule_gan

    cfg = config_from_args(args)
    out = args.out
    kind = getattr(args, "injector", None)
    if kind and kind != cfg.nodules.injector:
        if args.role == "injector" and out is None:
            out = cfg.runs_dir / "nodules" / f"injector_{kind}"
        cfg = cfg.replace(**{"nodules.injector": kind})
    res = train_nodule_gan(cfg, args.role, cohort_dir=args.cohort, out_dir=out, resume=not args.fresh,
                           device=args.device, progress=not args.no_progress)
    print(f"{args.role}: step {res['step']}, {res['n_train']} training VOIs, checkpoint {res['checkpoint']}")
    return 0


def run_debias(args: argparse.Namespace) -> int:
    from ..nodules import (NoduleEraser, NoduleInjector, build_debiased_cohort, build_nodule_free_cohort,
                           domain_leakage)

    cfg = config_from_args(args)
    inj = NoduleInjector.from_checkpoint(cfg.runs_dir / "nodules" / "injector", device=args.device)
    era = NoduleEraser.from_checkpoint(cfg.runs_dir / "nodules" / "eraser", device=args.device)
    deb = build_debiased_cohort(cfg, inj, era, cohort_dir=args.cohort, diameter_vox=args.diameter_vox,
                                progress=not args.no_progress)
    free = build_nodule_free_cohort(cfg, era, cohort_dir=args.cohort, progress=not args.no_progress)
    leak = domain_leakage(deb)
    print(f"debiased cohort: {deb} (domain vs nodule phi = {leak['phi']:+.2f}, p = {leak['p_value']:.2g})")
    print(f"nodule-free training set: {free}")
    return 0
