"""Benchmark: slices per second through torch-fidelity's InceptionV3 extractor, and the extrapolated wall time of
Table 1 at a profile's scale.

Usage::

    python benchmarks/fid_extractor.py --profile paper --slices 64 --batch 32 [--device cuda]
    python benchmarks/fid_extractor.py --extractor domain --profile paper --slices 512 --batch 64   # issue 21

Speed does not depend on the weights' values, so when the official weights are absent an offline fallback file
(calibrated on random slices, never used for metrics) is built in a temporary folder. One JSON line with the result,
the hardware and the extrapolation is appended to ``runs/<profile>/bench/fid_extractor.jsonl``.

Extrapolation: with the feature cache every volume is extracted once per view. Table 1 draws its pairs from a pool
of ``fidelity.volumes_per_source`` volumes per source (real, 3D GAN, CT-SGAN; the real pool is shared), so the slices
to extract are ``3 × pool × slices_per_volume × views``; the naive alternative (re-extracting both volumes of every
pair) is shown beside it. IS reuses the cached axial features.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctsgan_lib.config import load_profile  # noqa: E402
from ctsgan_lib.eval import domain as DM  # noqa: E402
from ctsgan_lib.eval import inception as I  # noqa: E402
from ctsgan_lib.eval.fidelity import FeatureRunner  # noqa: E402
from ctsgan_lib.utils.hardware import hardware_info, hardware_label  # noqa: E402
from ctsgan_lib.utils.logs import append_jsonl  # noqa: E402


def _extractor(cfg, scratch: Path) -> I.Extractor:
    try:
        return I.resolve_extractor("paper", cfg.fidelity.weights_path, cfg.fidelity.weights_sha256)
    except Exception:  # no official weights here: speed is the same with any weights of this architecture
        rng = np.random.default_rng(0)
        cal = rng.integers(0, 256, (4, 3, 64, 64), dtype=np.uint8)
        return I.build_fallback_weights(cal, 0, scratch / "bench_fallback.pth", "benchmark only: random slices")


def _domain_extractor(scratch: Path) -> I.Extractor:
    """An untrained-but-standardised domain CNN file: the speed does not depend on its weights."""
    net = DM.DomainNet(2, 24)
    return DM.save_domain_extractor(net, scratch / "bench_domain.pt", {"config": {"dims": 2}}).as_extractor()


def table1_slices(cfg) -> dict[str, int]:
    """Slices Table 1 needs at this profile (cached protocol and naive per-pair re-extraction)."""
    f = cfg.fidelity
    size = cfg.data.size
    per_vol = size if f.max_slices <= 0 else min(size, f.max_slices)
    pool = f.volumes_per_source if f.volumes_per_source > 0 else max(cfg.data.n_patients, cfg.generate.n_volumes)
    distinct = 3 * pool
    return {"slices_per_volume": per_vol, "pool_per_source": pool, "views": len(f.views),
            "cached_axial": distinct * per_vol, "cached_all_views": distinct * per_vol * len(f.views),
            "naive_axial": 3 * f.n_pairs * 2 * per_vol}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper", help="profile whose Table 1 scale is extrapolated (default paper)")
    ap.add_argument("--slices", type=int, default=64, help="slices to time (after one warm-up batch)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=None, help="input slice side (default: the profile's data.size; "
                    "torch-fidelity resizes to 299 anyway)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--extractor", choices=("inception", "domain"), default="inception",
                    help="torch-fidelity InceptionV3 (ImageNet or fallback weights) or the CT domain CNN")
    ap.add_argument("--out", default=None, help="JSON-lines file (default runs/<profile>/bench/fid_extractor.jsonl)")
    args = ap.parse_args(argv)
    cfg = load_profile(args.profile)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or cfg.data.size
    with tempfile.TemporaryDirectory() as tmp:
        ex = _domain_extractor(Path(tmp)) if args.extractor == "domain" else _extractor(cfg, Path(tmp))
        runner = FeatureRunner(ex, args.batch, device)
        x = np.random.default_rng(1).integers(0, 256, (args.slices, 3, size, size), dtype=np.uint8)
        runner(x[: min(args.batch, args.slices)])  # warm-up (model build, allocator, cudnn autotune)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        runner(x)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    rate = args.slices / wall
    need = table1_slices(cfg)
    rec = {"bench": "fid_extractor", "profile": args.profile, "device": device, "hardware": hardware_label(device),
           "hardware_info": hardware_info(device), "torch_threads": torch.get_num_threads(), "batch": args.batch,
           "input_size": size, "slices_timed": args.slices, "wall_s": round(wall, 3),
           "slices_per_s": round(rate, 3), "weights_kind": ex.kind, "extractor": ex.name, **need,
           "loadavg": list(os.getloadavg()),
           "table1_cached_axial_h": round(need["cached_axial"] / rate / 3600, 3),
           "table1_cached_all_views_h": round(need["cached_all_views"] / rate / 3600, 3),
           "table1_naive_axial_h": round(need["naive_axial"] / rate / 3600, 3)}
    out = Path(args.out) if args.out else cfg.runs_dir / "bench" / "fid_extractor.jsonl"
    append_jsonl(out, rec)
    print(json.dumps({k: v for k, v in rec.items() if k != "hardware_info"}, indent=2))
    print(f"{rate:.2f} slices/s on {rec['hardware']} ({torch.get_num_threads()} threads, batch {args.batch}); "
          f"Table 1 at {args.profile} scale: {need['cached_axial']:,} axial slices ≈ {rec['table1_cached_axial_h']} h, "
          f"with 2.5D {need['cached_all_views']:,} ≈ {rec['table1_cached_all_views_h']} h (cached); naive per-pair "
          f"re-extraction of the axial protocol ≈ {rec['table1_naive_axial_h']} h. Written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
