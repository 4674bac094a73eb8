"""Arguments shared by several subcommands."""
from __future__ import annotations

import argparse

from ..config import Config, load_profile, parse_overrides


def add_profile_args(p: argparse.ArgumentParser) -> None:
    """``--profile`` and repeated ``--set KEY=VALUE`` overrides (e.g. ``--set ctsgan.iterations=5``)."""
    p.add_argument("--profile", default="smoke", help="smoke | demo | study | paper (default: smoke)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set ctsgan.iterations=100 (repeatable)")


DEVICE_HELP = "cpu | cuda (default: cuda when available)"
NO_PROGRESS_HELP = "hide progress bars"


def add_device_arg(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device``, worded the same on every subcommand."""
    p.add_argument("--device", default=default,
                   help=DEVICE_HELP if default is None else f"cpu | cuda (default: {default})")


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    """``--no-progress``, on every subcommand that shows progress."""
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the config from ``--profile`` and ``--set``."""
    return load_profile(args.profile, **parse_overrides(args.overrides))
