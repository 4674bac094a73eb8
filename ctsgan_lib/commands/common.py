"""Arguments shared by several subcommands."""
from __future__ import annotations

import argparse

from ..config import Config, load_profile, parse_overrides


def add_profile_args(p: argparse.ArgumentParser) -> None:
    """``--profile`` and repeated ``--set KEY=VALUE`` overrides (e.g. ``--set ctsgan.iterations=5``)."""
    p.add_argument("--profile", default="smoke", help="smoke | demo | paper (default: smoke)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set ctsgan.iterations=100 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the config from ``--profile`` and ``--set``."""
    return load_profile(args.profile, **parse_overrides(args.overrides))
