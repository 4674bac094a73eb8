"""``ctsgan classify``: the Fig 3b nodule-detection grid, the Fig 3c data-scarcity curve and the device-shortcut control
(notebook 06)."""
from __future__ import annotations

import argparse

from .common import add_device_arg, add_profile_args, add_progress_arg, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="3D-SqueezeNet nodule detection grid (Fig 3b) and shortcut control",
                       description="Train 3D-SqueezeNet in three regimes (real, synthetic, pretrain_finetune) for "
                                   "every nodule size and seed of the profile, then the data-scarcity curve (Fig 3c, "
                                   "beyond the paper) and the device-shortcut control. "
                                   "Resumable: finished cells in runs/<profile>/classifier/*.jsonl are skipped.")
    add_profile_args(p)
    p.add_argument("--no-grid", action="store_true", help="skip the Fig 3b grid")
    p.add_argument("--no-scarcity", action="store_true", help="skip the data-scarcity curve (Fig 3c)")
    p.add_argument("--no-shortcut", action="store_true", help="skip the device-shortcut control")
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.distributed import init_from_env, shutdown
    from ..utils.hardware import default_device

    cfg = config_from_args(args)
    ctx = init_from_env(args.device or default_device())  # `torchrun --nproc_per_node N -m ctsgan_lib.cli classify`
    try:
        return _run(args, cfg, progress=not args.no_progress and ctx.is_main, main=ctx.is_main)
    finally:
        shutdown(ctx)


def _run(args: argparse.Namespace, cfg, progress: bool, main: bool) -> int:
    from ..experiments import current_records, run_grid, run_scarcity, run_shortcut_control
    from ..reporting.classifier import (classifier_caption as caption, effect_table, grid_table, regime_ordering,
                                        scarcity_table, shortcut_table)

    fmt = lambda v: f"{v:.3f}"

    if not args.no_grid:
        path = run_grid(cfg, progress=progress, device=args.device)
        if main:  # only rank 0 reports under torchrun
            recs = current_records(cfg, path, "grid")
            table = grid_table(recs)
            print(caption(recs, "Fig 3b"))
            print(table.to_string(index=False, float_format=fmt))
            effects = effect_table(recs)
            print(effects.drop(columns="interval").to_string(index=False, float_format=fmt))
            if len(effects):
                print(f"intervals: {effects['interval'].iloc[0]}")
            print(f"what the intervals support (accuracy): {regime_ordering(effects)}")
            print(f"results: {path}")
    # the optional stages: (skip flag, runner, record kind, caption title, table)
    for skip, runner, kind, title, make_table in (
            (args.no_scarcity, run_scarcity, "scarcity", "Fig 3c (beyond the paper)", scarcity_table),
            (args.no_shortcut, run_shortcut_control, "shortcut", "shortcut control", shortcut_table)):
        if skip:
            continue
        path = runner(cfg, progress=progress, device=args.device)
        if main:
            recs = current_records(cfg, path, kind)
            print(caption(recs, title))
            print(make_table(recs).to_string(index=False, float_format=fmt))
            print(f"results: {path}")
    return 0
