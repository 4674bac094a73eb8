"""``ctsgan bench memory|throughput``: the performance benchmarks of notebook 08.

Examples
--------
``ctsgan bench memory --sizes 32 64``: peak memory of one training step per model and size (each in a subprocess),
a table, and JSON lines in ``runs/<P>/bench/memory.jsonl``.

``ctsgan bench throughput --size 32``: training steps/s, generation volumes/s, FID-extractor slices/s, JSON lines in
``runs/<P>/bench/throughput.jsonl``.
"""
from __future__ import annotations

import argparse

from ..errors import CTSGANError
from .common import add_device_arg, add_profile_args, add_progress_arg, config_from_args


def _device(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in ("cpu", "cuda"):
        raise CTSGANError(f"--device {value}: choose cpu or cuda")
    if value == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CTSGANError("--device cuda: no CUDA device is visible")
    return value


def _check_sizes(sizes) -> None:
    for s in sizes:
        if s < 16 or s % 2:
            raise CTSGANError(f"size {s}: volume sides must be even and >= 16")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="memory and throughput benchmarks (CT-SGAN vs the 3D GAN)",
                       description="Performance benchmarks of notebook 08. Results are appended as JSON lines "
                                   "under runs/<profile>/bench/.")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")

    m = bsub.add_parser("memory", help="peak memory of one training step, per model and volume size",
                        description="Peak memory of one training step (D + G update) of CT-SGAN and the 3D GAN at "
                                    "each volume size, each configuration in its own process, under a memory cap. "
                                    "One JSON line per configuration, with hardware and load.")
    add_profile_args(m)
    m.add_argument("--sizes", type=int, nargs="+", default=None, help="volume sides S (default: bench.sizes)")
    m.add_argument("--models", nargs="+", default=["ctsgan", "gan3d"], help="models (default: ctsgan gan3d)")
    m.add_argument("--batch", type=int, default=None, help="volumes per step, same for every model "
                   "(default: bench.batch)")
    add_device_arg(m)
    add_progress_arg(m)
    m.add_argument("--max-gib", type=float, default=None, help="CPU memory cap per worker in GiB "
                   "(default: bench.max_gib, or 80%% of available memory)")
    m.add_argument("--timeout-s", type=float, default=None, help="per-configuration limit (default: bench.timeout_s)")
    m.add_argument("--jobs", type=int, default=1, help="CPU workers run at once (memory is per process; default 1)")
    m.add_argument("--no-configured", action="store_true", help="skip the 3D GAN row at its configured gan3d.size")
    m.add_argument("--out", default=None, help="JSON-lines file (default: runs/<P>/bench/memory.jsonl)")
    m.set_defaults(func=_memory)

    t = bsub.add_parser("throughput", help="training steps/s, generation volumes/s, FID-extractor slices/s",
                        description="Training steps/s, generation volumes/s (with the time for the paper's 10,000 "
                                    "volumes) and FID-extractor slices/s on this machine. One JSON line per "
                                    "measurement, with hardware and load.")
    add_profile_args(t)
    t.add_argument("--size", type=int, default=None, help="training-step volume side (default: data.size)")
    t.add_argument("--gen-sizes", type=int, nargs="+", default=None,
                   help="generation volume sides (default: bench.gen_sizes)")
    t.add_argument("--models", nargs="+", default=["ctsgan", "gan3d"], help="models (default: ctsgan gan3d)")
    t.add_argument("--batch", type=int, default=None, help="training batch (default: bench.batch)")
    add_device_arg(t)
    add_progress_arg(t)
    t.add_argument("--repeats", type=int, default=None, help="timed repetitions (default: bench.repeats)")
    t.add_argument("--gen-volumes", type=int, default=None, help="volumes per timed generation call")
    t.add_argument("--fid-slices", type=int, default=None, help="slices per timed extractor call")
    t.add_argument("--skip", nargs="+", default=[], choices=["train", "generate", "fid"],
                   help="measurements to leave out")
    t.add_argument("--channels-last", action="store_true",
                   help="also time generation with Gslice in channels-last memory format")
    t.add_argument("--out", default=None, help="JSON-lines file (default: runs/<P>/bench/throughput.jsonl)")
    t.set_defaults(func=_throughput)
    p.set_defaults(func=lambda a: (p.print_help(), 1)[1])


def _memory(args: argparse.Namespace) -> int:
    from ..bench.memory import format_memory_table, run_memory_bench

    cfg = config_from_args(args)
    sizes = args.sizes or cfg.bench.sizes
    _check_sizes(sizes)
    for model in args.models:
        if model not in ("ctsgan", "gan3d") and ":" not in model:
            raise CTSGANError(f"--models {model}: choose ctsgan, gan3d (or module:callable)")
    if args.batch is not None and args.batch < 1:
        raise CTSGANError("--batch must be >= 1")
    recs = run_memory_bench(cfg, sizes, models=args.models, batch=args.batch, device=_device(args.device),
                            max_gib=args.max_gib, timeout_s=args.timeout_s, out=args.out,
                            include_configured=not args.no_configured, jobs_parallel=args.jobs,
                            progress=not args.no_progress)
    print()
    print(format_memory_table(recs))
    print(f"\nJSON lines appended to {args.out or cfg.runs_dir / 'bench' / 'memory.jsonl'}")
    return 0


def _throughput(args: argparse.Namespace) -> int:
    from ..bench.throughput import format_throughput_tables, run_throughput_bench

    cfg = config_from_args(args)
    size = args.size or cfg.data.size
    _check_sizes([size, *(args.gen_sizes or [])])
    recs = run_throughput_bench(cfg, size, gen_sizes=args.gen_sizes, models=args.models, batch=args.batch,
                                device=_device(args.device), repeats=args.repeats, gen_volumes=args.gen_volumes,
                                fid_slices=args.fid_slices, out=args.out, skip=args.skip,
                                channels_last=args.channels_last, progress=not args.no_progress)
    print()
    print(format_throughput_tables(recs))
    print(f"\nJSON lines appended to {args.out or cfg.runs_dir / 'bench' / 'throughput.jsonl'}")
    return 0
