"""The ``ctsgan`` command line.

Each subcommand lives in its own module under ``ctsgan_lib/commands/`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed args and
returning an exit code). Errors caused by user input (:class:`~ctsgan_lib.errors.CTSGANError`,
:class:`~ctsgan_lib.config.ConfigError`) are printed as one line, ``error: <file>: <problem>``, with exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import importlib.util
import sys

from . import __version__
from .config import ConfigError
from .errors import CTSGANError

# Order = order in `ctsgan --help`. A module that is not present in this checkout is simply not offered.
COMMANDS = (
    "reproduce", "phantoms", "convert", "prepare", "lidc_stats", "nodules", "train", "generate", "fid",
    "classify", "bench", "pretrained",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsgan", description="CT-SGAN companion: data, training, generation, "
                                     "evaluation and figures. See README.md.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        modname = f"{__package__}.commands.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(sub)
    return parser


#: OS errors that come from the user's disk or folders, not from a bug: one line, exit 2.
_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                   errno.ENAMETOOLONG, errno.EEXIST}


def _readable_streams() -> None:
    """Never crash on printing: a C/POSIX locale (``LC_ALL=C PYTHONUTF8=0``) cannot encode ``³`` or a non-ASCII path."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _readable_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (CTSGANError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _USER_OS_ERRORS:
            raise
        where = exc.filename or "writing the output"  # e.g. a full disk raised by a write or fsync
        print(f"error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
