"""``ctsgan pretrained``: export a finished run's generators into ``pretrained/<P>/`` and verify a shipped folder."""
from __future__ import annotations

import argparse

from .common import add_profile_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrained", help="export a finished run's models as shipped pretrained weights; verify them",
                       description="Shipped models let notebooks 02 and 03 (and `ctsgan reproduce --pretrained`) "
                                   "skip training. `export` copies the newest CT-SGAN, 3D GAN, injector and eraser "
                                   "generators of runs/<P>/ into pretrained/<P>/ with SHA256SUMS, provenance.json "
                                   "and README.md; `verify` checks a folder against its SHA256SUMS.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    e = verbs.add_parser("export", help="write pretrained/<P>/ from this profile's finished run",
                         description="Export the newest checkpoint of each model of runs/<P>/ (notebooks 02 and 03 "
                                     "must have run) as generator-only checkpoints, with their training logs, "
                                     "provenance (commit, data, date, hardware) and a SHA-256 manifest.")
    add_profile_args(e)
    e.add_argument("--out", default=None, help="folder to write (default: pretrained/<P>/ in the checkout)")
    e.add_argument("--force", action="store_true", help="replace an existing export")
    e.set_defaults(func=run_export)
    v = verbs.add_parser("verify", help="check a pretrained folder against its SHA256SUMS and load every model",
                         description="Check every file of pretrained/<P>/ (or --dir) against SHA256SUMS and load "
                                     "each model with torch.load(weights_only=True). Exit 2 naming the first bad "
                                     "file.")
    v.add_argument("--profile", default="smoke", help="smoke | demo | study | paper (default: smoke)")
    v.add_argument("--dir", default=None, help="folder to check (default: pretrained/<P>/ in the checkout)")
    v.set_defaults(func=run_verify)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def run_export(args: argparse.Namespace) -> int:
    from ..utils.paths import shareable_path
    from ..utils.pretrained import export_pretrained

    out = export_pretrained(config_from_args(args), out=args.out, force=args.force)
    print(f"exported {args.profile} models to {shareable_path(out)} (see its README.md and SHA256SUMS)")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..utils.paths import shareable_path
    from ..utils.pretrained import MODELS, load_pretrained, pretrained_dir, verify_pretrained

    folder = Path(args.dir) if args.dir else pretrained_dir(args.profile)
    verified = verify_pretrained(folder)
    for name in MODELS:
        if f"{name}.pt" in verified:
            ck = load_pretrained(folder, name, verified)
            print(f"ok  {name}.pt  {ck['kind']} step {ck['step']}")
    print(f"{len(verified)} files match {shareable_path(folder / 'SHA256SUMS')}")
    return 0
