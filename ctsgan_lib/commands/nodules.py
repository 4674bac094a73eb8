"""``ctsgan nodules``: train the nodule injector/eraser cGANs and build the debiased / nodule-free cohorts."""
from __future__ import annotations

import argparse

from .common import add_profile_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nodules", help="nodule injector/eraser cGANs (train) and the debiased cohorts (debias)",
                       description="Paper §3.1 / Appendix B. `train injector` learns to paint nodules into masked "
                                   "VOIs of the nodule-bearing training scans; `train eraser` learns to remove "
                                   "them (needs the injector); `debias` writes data/<P>/debiased (Fig 3a) and "
                                   "data/<P>/nodule_free (the CT-SGAN training set).")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    t = verbs.add_parser("train", help="train (or resume) the injector or the eraser")
    t.add_argument("role", choices=["injector", "eraser"])
    add_profile_args(t)
    t.add_argument("--cohort", default=None, help="cohort folder (default data/<P>/cohort)")
    t.add_argument("--out", default=None, help="run folder (default runs/<P>/nodules/<role>)")
    t.add_argument("--injector", choices=["learned", "sphere"], default=None,
                   help="injector kind (default the profile's nodules.injector); another kind than the profile's "
                        "trains into runs/<P>/nodules/injector_<kind> (e.g. the sphere control of the realism check)")
    t.add_argument("--fresh", action="store_true", help="start over instead of resuming from the newest checkpoint")
    t.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    t.set_defaults(func=run_train)
    d = verbs.add_parser("debias", help="build the debiased cohort (Fig 3a) and the nodule-free training set")
    add_profile_args(d)
    d.add_argument("--cohort", default=None, help="source cohort (default data/<P>/cohort)")
    d.add_argument("--diameter-vox", type=float, default=None,
                   help="inject nodules of this one size (default: sizes of the cohort's own nodules)")
    d.add_argument("--device", default="cpu")
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
                           device=args.device)
    print(f"{args.role}: step {res['step']}, {res['n_train']} training VOIs, checkpoint {res['checkpoint']}")
    return 0


def run_debias(args: argparse.Namespace) -> int:
    from ..nodules import (NoduleEraser, NoduleInjector, build_debiased_cohort, build_nodule_free_cohort,
                           domain_leakage)

    cfg = config_from_args(args)
    inj = NoduleInjector.from_checkpoint(cfg.runs_dir / "nodules" / "injector", device=args.device)
    era = NoduleEraser.from_checkpoint(cfg.runs_dir / "nodules" / "eraser", device=args.device)
    deb = build_debiased_cohort(cfg, inj, era, cohort_dir=args.cohort, diameter_vox=args.diameter_vox)
    free = build_nodule_free_cohort(cfg, era, cohort_dir=args.cohort)
    leak = domain_leakage(deb)
    print(f"debiased cohort: {deb} (domain vs nodule phi = {leak['phi']:+.2f}, p = {leak['p_value']:.2g})")
    print(f"nodule-free training set: {free}")
    return 0
