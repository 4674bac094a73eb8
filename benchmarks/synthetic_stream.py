"""Synthetic bases from the generator vs from a stored cohort: seconds per base volume (issue 22).

An untrained CT-SGAN at the paper's widths (speed does not depend on the weights) and ``--size``³ writes a cohort of
``--n`` nodule-free volumes (``generate_cohort``, ``.nii.gz`` and ``.nii``); then each path makes every base the way
a streamed classifier item starts (``ctsgan_lib.experiments.streamed``): read the stored volume, or generate it with
:class:`~ctsgan_lib.synthesis.GeneratorSource`, then the lung mask. Reported per base: seconds for the volume alone
and with the lung mask. Injection costs the same on both paths and is left out.

    .venv/bin/python benchmarks/synthetic_stream.py --size 64 --n 8 --out benchmarks/results/cpu/synthetic_stream.jsonl
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.experiments.streamed import lung_or_box
from ctsgan_lib.models.ctsgan import build_ctsgan
from ctsgan_lib.synthesis import GeneratorSource, generate_cohort, volume_id
from ctsgan_lib.utils.checkpoint import save_checkpoint
from ctsgan_lib.utils.hardware import hardware_info, hardware_label
from ctsgan_lib.utils.logs import append_jsonl


def timed(read, ids) -> tuple[float, float]:
    """(s per volume to make it, s per volume to make it and its lung mask)."""
    t0 = time.perf_counter()
    vols = [read(rid) for rid in ids]
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    for hu in vols:
        lung_or_box(hu, None)
    t_lung = time.perf_counter() - t0
    return t_read / len(ids), (t_read + t_lung) / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/cpu/synthetic_stream.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_profile("paper", **{"data.size": args.size})
    torch.manual_seed(0)
    gen = build_ctsgan(args.size, cfg.ctsgan)["generator"]
    ids = [volume_id(i) for i in range(args.n)]
    rec = {"bench": "synthetic_stream", "size": args.size, "n": args.n, "widths": "paper", "batch": 1,
           "device": args.device, "torch_threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "ckpt_000001.pt"
        save_checkpoint(ck, kind="ctsgan", step=1, config=cfg.to_dict(), models={"rv": gen.rv, "gslice": gen.gslice},
                        extra={"spacing_mm": (1.6, 1.6, 1.6)})
        for compress, name in ((True, "nii_gz"), (False, "nii")):
            out = generate_cohort(ck, args.n, 0, Path(tmp) / name, inject_fraction=0.0, batch=1, device=args.device,
                                  compress=compress, progress=False)
            c = Cohort(out)
            rec[f"s_per_volume_{name}"], rec[f"s_per_volume_{name}_with_lung"] = timed(lambda r: c.read(r)[0], ids)
            rec[f"mb_per_volume_{name}"] = round(sum(c.path(r).stat().st_size for r in ids) / args.n / 1e6, 2)
        src = GeneratorSource(ck, args.n, 0, 1, 0.0, args.device)
        rec["s_per_volume_generator"], rec["s_per_volume_generator_with_lung"] = timed(lambda r: src.read(r)[0], ids)
    rec = {k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}
    rec.update(hardware=hardware_info(args.device), hardware_label=hardware_label(args.device),
               note="shared, loaded machine (other jobs running): ratios are indicative, seconds are not clean")
    print({k: v for k, v in rec.items() if k != "hardware"})
    append_jsonl(args.out, rec)


if __name__ == "__main__":
    main()
