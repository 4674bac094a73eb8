"""The command line's help and flags are consistent across subcommands (issue 17)."""
from __future__ import annotations

import argparse

import pytest

from ctsgan_lib import __version__
from ctsgan_lib.cli import build_parser, main
from ctsgan_lib.commands.common import DEVICE_HELP, NO_PROGRESS_HELP

# subcommands whose work shows a progress bar (tqdm) or per-configuration progress lines (bench)
SHOWS_PROGRESS = {"reproduce", "prepare", "lidc-stats", "nodules train", "nodules debias", "train", "generate", "fid",
                  "classify", "bench memory", "bench throughput"}


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
        return
    for name, p in subs[0].choices.items():
        yield from _leaf_parsers(p, f"{prefix} {name}")


LEAVES = dict(_leaf_parsers(build_parser()))


def _option(p: argparse.ArgumentParser, flag: str):
    return next((a for a in p._actions if flag in a.option_strings), None)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"ctsgan {__version__}"


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_every_subcommand_has_a_description_and_consistent_flags(name):
    p = LEAVES[name]
    assert p.description and len(p.description) > 40, f"`ctsgan {name} --help` has no description"
    for a in p._actions:
        if a.option_strings and a.dest != "help":
            assert a.help, f"ctsgan {name} {a.option_strings[0]}: no help text"
    dev = _option(p, "--device")
    if dev is not None:
        assert dev.help == DEVICE_HELP or (dev.default and dev.help == f"cpu | cuda (default: {dev.default})"), name
    if name in SHOWS_PROGRESS:
        assert _option(p, "--no-progress") is not None, f"ctsgan {name}: shows progress but has no --no-progress"


def test_the_progress_list_is_complete():
    assert SHOWS_PROGRESS <= set(LEAVES)
    assert NO_PROGRESS_HELP
