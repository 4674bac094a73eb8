"""``ctsgan phantoms``: write embedded chest-CT phantoms (native grid, HU) as NIfTI files plus a manifest."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..config import MAX_PHANTOM_SIZE
from ..errors import CTSGANError
from ..utils.lock import folder_lock
from ..utils.paths import claim_output_folder, undo_new_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantoms", help="write procedural chest-CT phantoms (NIfTI in HU + labels + manifest)",
                       description="Render N phantom patients on their native grid (no preprocessing) and write "
                                   "<id>.nii.gz (int16 HU), <id>_label.nii.gz (uint8 tissue labels, same geometry) "
                                   "and manifest.csv into OUT.")
    p.add_argument("--n", type=int, default=4, help="number of patients (default 4)")
    p.add_argument("--size", type=int, default=64, help="voxels per side (default 64)")
    p.add_argument("--spacing", type=float, default=None,
                   help="voxel size in mm (default: 352 mm field of view / size)")
    p.add_argument("--domain", default="lidc-like", help="nlst-like | lidc-like (default lidc-like)")
    p.add_argument("--seed", type=int, default=0, help="base seed; patient i uses seed+i (default 0)")
    p.add_argument("--no-nodules", action="store_true", help="render lidc-like patients without nodules")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--allow-foreign", action="store_true",
                   help="write into an --out folder that holds other files (they are never deleted)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import phantom

    if args.domain not in phantom.DOMAINS:
        raise CTSGANError(f"--domain: unknown domain {args.domain!r}; choose one of {', '.join(phantom.DOMAINS)}")
    if args.n < 1 or args.size < 16:
        raise CTSGANError(f"--n must be >= 1 and --size >= 16 (got {args.n}, {args.size})")
    if args.size > MAX_PHANTOM_SIZE:
        raise CTSGANError(f"--size: must be <= {MAX_PHANTOM_SIZE} voxels per side (got {args.size}; a {args.size}³ "
                          f"phantom needs at least {_render_gib(args.size):.0f} GiB of memory)")
    if args.seed < 0 or args.workers < 1:
        raise CTSGANError(f"--seed must be >= 0 and --workers >= 1 (got {args.seed}, {args.workers})")
    spacing = args.spacing if args.spacing is not None else round(352.0 / args.size, 4)
    if not math.isfinite(spacing) or spacing <= 0:
        raise CTSGANError(f"--spacing: must be a positive number of mm (got {spacing})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CTSGANError(f"{out}: exists and is not a folder")
    with undo_new_folder(out):
        claim_output_folder(out, "phantoms", allow_foreign=args.allow_foreign)
        with folder_lock(out, "phantoms"):  # a second `phantoms` on the same folder is refused
            return _write(args, out, spacing)


def _render_gib(size: int) -> float:
    """Lower bound of one phantom render's memory: one float32 array of size³ (it holds several)."""
    return 4 * size ** 3 / 2 ** 30


def _write(args: argparse.Namespace, out: Path, spacing: float) -> int:
    from ..data import phantom
    from ..data.io import with_center_mm, write_nifti
    from ..utils.atomic import atomic_write_text

    rows = []
    seeds = [args.seed + i for i in range(args.n)]
    params = [phantom.sample_params(s, args.domain, args.size, spacing,
                                    nodules=False if args.no_nodules else None) for s in seeds]
    for s, ph in zip(seeds, _render_all(params, args.workers)):
        rid = f"phantom-{args.domain.split('-')[0]}-{s:06d}"
        write_nifti(out / f"{rid}.nii.gz", ph.hu, ph.spacing_mm)
        write_nifti(out / f"{rid}_label.nii.gz", ph.labels, ph.spacing_mm, dtype="uint8")
        rows.append({"id": rid, "source": "phantom", "domain": args.domain, "seed": s,
                     "has_nodule": int(len(ph.nodules) > 0),
                     "nodules": json.dumps([with_center_mm(n, ph.hu.shape, ph.spacing_mm) for n in ph.nodules]),
                     "spacing_mm": json.dumps(list(ph.spacing_mm)), "shape": json.dumps(list(ph.hu.shape)),
                     "path": f"{rid}.nii.gz", "label_path": f"{rid}_label.nii.gz"})
    import pandas as pd

    atomic_write_text(out / "manifest.csv", pd.DataFrame(rows).to_csv(index=False))
    print(f"wrote {len(rows)} phantoms ({args.size}³ at {spacing} mm, {args.domain}) to {out}")
    return 0


def _render_all(params, workers: int):
    from ..data import phantom

    if workers <= 1:
        for p in params:
            yield phantom.render_phantom(p)
        return
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=phantom._worker_init) as ex:
        yield from ex.map(phantom.render_phantom, params)
