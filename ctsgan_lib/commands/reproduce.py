"""``ctsgan reproduce``: run the numbered notebooks with papermill."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the numbered notebooks in order with papermill",
                       description="Run notebooks/01_… to 09_… headless; executed copies and a run manifest go to "
                                   "runs/<profile>/notebooks/.")
    p.add_argument("--profile", default="smoke", help="smoke | demo | study | paper (default: smoke)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks, e.g. --only 01 03")
    p.add_argument("--from", dest="start", metavar="NN", help="start at this notebook and run to the end")
    p.add_argument("--kernel", default="ctsgan", help="Jupyter kernel name (default: ctsgan, set up by make setup)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every notebook, e.g. --set ctsgan.iterations=100 (repeatable; "
                        "recorded in the run manifest)")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="papermill parameter for the selected notebooks, e.g. --param device=cuda (value read as "
                        "YAML: 5, true, [1, 2], cuda); a notebook without that parameter ignores it")
    p.add_argument("--pretrained", action="store_true",
                   help="notebooks 02 and 03 use the shipped models of pretrained/<P>/ (SHA-256 verified) instead "
                        "of training (default: train, as the paper)")
    p.add_argument("--no-progress", action="store_true", help="hide papermill's progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..config import ConfigError, parse_overrides
    from ..pipeline import reproduce

    params = {}
    for name, value in parse_overrides(args.params).items():
        try:
            params[name] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--param {name}={value}: not a YAML value") from None
    manifest = reproduce(args.profile, only=args.only, start=args.start, kernel=args.kernel,
                         progress=not args.no_progress, pretrained=args.pretrained,
                         overrides=parse_overrides(args.overrides), parameters=params)
    print(f"run manifest: {manifest}")
    return 0
