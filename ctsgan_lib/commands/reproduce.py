"""``ctsgan reproduce``: run the numbered notebooks with papermill."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the numbered notebooks in order with papermill",
                       description="Run notebooks/01_… to 09_… headless; executed copies and a run manifest go to "
                                   "runs/<profile>/notebooks/.")
    p.add_argument("--profile", default="smoke", help="smoke | demo | paper (default: smoke)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks, e.g. --only 01 03")
    p.add_argument("--from", dest="start", metavar="NN", help="start at this notebook and run to the end")
    p.add_argument("--kernel", default="ctsgan", help="Jupyter kernel name (default: ctsgan, set up by make setup)")
    p.add_argument("--no-progress", action="store_true", help="hide papermill's progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import reproduce

    manifest = reproduce(args.profile, only=args.only, start=args.start, kernel=args.kernel,
                         progress=not args.no_progress)
    print(f"run manifest: {manifest}")
    return 0
