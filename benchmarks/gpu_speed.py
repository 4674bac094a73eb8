"""Issue 25 ([gpu-speed]): before/after timings of CT-SGAN generation and training on one device, as JSON lines.

Before = the default code paths (what every run uses unless asked otherwise); after = the opt-in fast paths
(``ctsgan_lib.models.ctsgan_fast`` for generation; ``ctsgan.fused_adam / lazy_losses / async_copies / gp_fp32`` for
training). Untrained networks at the profile's widths (speed does not depend on the weights), ``--size``³ volumes.

Records (one JSON line each, ``bench`` field):

- ``gpu_speed_generate``: seconds per volume for each variant, *device* (volumes left on the device, HU included,
  synchronised) and *host* (``generate_volumes``: float32 HU arrays on the host, as ``ctsgan generate`` gets them);
  analytic FLOPs per volume (``ctsgan_lib.bench.flops``) and the fraction of the device's peak (bf16 tensor-core peak
  for bf16 variants, FP32 otherwise); the largest difference from the default float32 volumes (same seeds).
- ``gpu_speed_profile``: ``torch.profiler`` top operators (self device time, or self CPU time on a CPU) of one
  generation call, before and after.
- ``gpu_speed_train``: seconds per full CT-SGAN training step (``ctsgan_step``: ``d_steps`` critic updates + one
  generator update), before/after, with an estimated FLOP rate (3 × the counted forward FLOPs of a step: backward ≈
  2 × forward; the penalty's double backward is not counted, so the fraction of peak is a lower bound).

On the GPU machine (a few minutes on one H200): ``bash benchmarks/gpu_speed.sh``. Dry run of every path on a CPU at
a tiny size (numbers meaningless, never committed): see ``benchmarks/gpu_speed.sh``.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the path set-up, as the other benchmark scripts)

from ctsgan_lib.bench import build_workload, new_run_id, record_meta  # noqa: E402
from ctsgan_lib.bench.flops import count_macs, device_peak_flops  # noqa: E402
from ctsgan_lib.bench.throughput import gslice_flops_per_volume  # noqa: E402
from ctsgan_lib.config import load_profile  # noqa: E402
from ctsgan_lib.data.intensity import model_to_hu  # noqa: E402
from ctsgan_lib.models.ctsgan import synthesize  # noqa: E402
from ctsgan_lib.models.ctsgan_fast import FastOptions, synthesize_fast  # noqa: E402
from ctsgan_lib.synthesis import generate_volumes, inference_layout, volume_noise  # noqa: E402
from ctsgan_lib.utils.logs import append_jsonl  # noqa: E402

TRAIN_FAST = {"ctsgan.fused_adam": True, "ctsgan.lazy_losses": True, "ctsgan.async_copies": True,
              "ctsgan.gp_fp32": True}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_s(fn, repeats: int, device: str) -> tuple[float, list[float]]:
    """Median seconds of ``repeats`` calls after one untimed warm-up call (compilation, cuDNN plans, allocator)."""
    fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), [round(t, 5) for t in times]


def _noise(gen, seed: int, start: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-volume seeded noise of volumes ``start .. start + batch − 1``, as ``generate_volumes`` draws it."""
    pairs = [volume_noise(gen, seed, i, gen.size - 2) for i in range(start, start + batch)]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def _device_volumes(gen, n: int, batch: int, fast: FastOptions | None, chunk: int, bf16: bool, seed: int):
    """HU volumes left on the device (the generator's compute and the HU map, no host copy)."""
    meta = gen.meta
    out = None
    for g0 in range(0, n, batch):
        pn, sn = _noise(gen, seed, g0, batch)
        if fast is None:
            vols = synthesize(gen, pn, sn, chunk, to_cpu=False)
        else:
            vols = synthesize_fast(gen, pn, sn, fast, to_cpu=False)
        out = model_to_hu(vols, meta["hu_min"], meta["hu_max"])
    return out


def generation_variants(bf16_ok: bool, slice_batches: list[int], compile_too: bool) -> list[dict]:
    """(name, stage, fast options, default-path bf16) of every generation variant timed."""
    rows = [{"variant": "before_fp32", "stage": "before", "fast": None, "bf16": False}]
    if bf16_ok:
        rows.append({"variant": "before_bf16", "stage": "before", "fast": None, "bf16": True})
    for k, sb in enumerate(slice_batches):
        rows.append({"variant": f"after_fp32_sb{sb}", "stage": "after", "fast": FastOptions(slice_batch=sb),
                     "bf16": False})
        if bf16_ok:
            rows.append({"variant": f"after_bf16_sb{sb}", "stage": "after",
                         "fast": FastOptions(slice_batch=sb, bf16=True), "bf16": True})
            if compile_too and k == 0:   # one compiled shape: compiling costs ~1 min of the lease
                rows.append({"variant": f"after_bf16_sb{sb}_compiled", "stage": "after",
                             "fast": FastOptions(slice_batch=sb, bf16=True, compile=True), "bf16": True})
    return rows


def bench_generation(cfg, args, run_id: str) -> None:
    device, size = args.device, args.size
    torch.manual_seed(cfg.seed)
    gen = build_workload("ctsgan", cfg, size, 1, device, cfg.seed).generator.eval()
    inference_layout(gen)                                    # what load_generator gives `ctsgan generate`
    chunk = cfg.ctsgan.chunk
    gen.meta = {"hu_min": cfg.data.hu_min, "hu_max": cfg.data.hu_max, "chunk": chunk, "spacing_mm": (1.0,) * 3}
    fl = gslice_flops_per_volume(gen, size)
    n, batch = args.gen_volumes, min(args.gen_volumes, args.gen_batch)
    # reference volumes: the default float32 path on the same seeds (for "unchanged results")
    gen.meta["bf16"] = False
    ref = _device_volumes(gen, batch, batch, None, chunk, False, cfg.seed).float()
    variants = generation_variants(device.startswith("cuda") or args.cpu_bf16, args.slice_batches, args.compile)
    for v in variants:
        gen.meta["bf16"] = v["bf16"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check = _device_volumes(gen, batch, batch, v["fast"], chunk, v["bf16"], cfg.seed).float()
            dev_s, dev_times = _median_s(lambda: _device_volumes(gen, n, batch, v["fast"], chunk, v["bf16"],
                                                                 cfg.seed), args.repeats, device)
            host_s, host_times = _median_s(lambda: sum(1 for _ in generate_volumes(
                gen, n, cfg.seed, batch=batch, device=device, chunk=chunk, fast=v["fast"])), args.repeats, device)
        peak = device_peak_flops(device, bf16=v["bf16"])
        per_vol_dev, per_vol_host = dev_s / n, host_s / n
        achieved = fl["flops_per_volume"] / per_vol_dev
        rec = {"bench": "gpu_speed_generate", "variant": v["variant"], "stage": v["stage"], "size": size,
               "n_volumes": n, "batch": batch, "chunk": chunk, "bf16": v["bf16"],
               "fast_options": None if v["fast"] is None else v["fast"].__dict__,
               "s_per_volume_device": round(per_vol_dev, 6), "s_per_volume_host": round(per_vol_host, 6),
               "call_s_device": dev_times, "call_s_host": host_times,
               "time_10k_volumes_device_s": round(1e4 * per_vol_dev, 1),
               "time_10k_volumes_host_s": round(1e4 * per_vol_host, 1),
               "flops_per_volume": fl["flops_per_volume"], "achieved_flops_per_s_device": achieved, **peak,
               "peak_fraction_device": round(achieved / peak["peak_flops"], 5) if peak["peak_flops"] else None,
               "max_abs_diff_hu_vs_before_fp32": round(float((check - ref).abs().max()), 4),
               "mean_abs_diff_hu_vs_before_fp32": round(float((check - ref).abs().mean()), 5),
               "warnings": [str(w.message) for w in caught][:3],
               "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if device.startswith("cuda") else None,
               "device": device, **record_meta(cfg, device, run_id)}
        append_jsonl(args.out, rec)
        print(f"generate {v['variant']:28} device {per_vol_dev * 1e3:8.2f} ms/vol  host {per_vol_host * 1e3:8.2f}"
              f" ms/vol  peak {rec['peak_fraction_device']}  max|Δ| {rec['max_abs_diff_hu_vs_before_fp32']} HU",
              flush=True)
    if args.profile_ops:
        profile_generation(gen, cfg, args, run_id, variants)


def profile_generation(gen, cfg, args, run_id: str, variants: list[dict]) -> None:
    """Top operators of one device-only generation call, for the default and the best-guess fast variant."""
    from torch.profiler import ProfilerActivity, profile   # only here: the profiler is a heavy import

    device = args.device
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    batch = min(args.gen_volumes, args.gen_batch)
    picks = [variants[0]] + [v for v in variants if v["stage"] == "after" and not v["fast"].compile][-1:]
    for v in picks:
        gen.meta["bf16"] = v["bf16"]
        run = lambda v=v: _device_volumes(gen, batch, batch, v["fast"], cfg.ctsgan.chunk, v["bf16"], cfg.seed)  # noqa: E731
        run()
        _sync(device)
        with profile(activities=acts) as prof:
            run()
            _sync(device)
        events = prof.key_averages()
        key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        total = sum(getattr(e, key, 0.0) for e in events) or 1.0
        top = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)[:args.profile_ops]
        ops = [{"op": e.key, "self_ms": round(getattr(e, key, 0.0) / 1e3, 3),
                "share": round(getattr(e, key, 0.0) / total, 4), "calls": e.count} for e in top]
        rec = {"bench": "gpu_speed_profile", "variant": v["variant"], "stage": v["stage"], "size": args.size,
               "batch": batch, "time_kind": key, "total_ms": round(total / 1e3, 3), "top_ops": ops,
               "device": device, **record_meta(cfg, device, run_id)}
        append_jsonl(args.out, rec)
        print(f"profile {v['variant']}: " + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in ops[:5]),
              flush=True)


def _forward_flops_of_step(wl) -> int:
    """Forward FLOPs of one training step, counted with hooks on every network the step runs."""
    with contextlib.ExitStack() as stack:
        counters = [stack.enter_context(count_macs(m)) for m in wl.modules.values()]
        wl.step()
    return sum(c.flops for c in counters)


def bench_training(args, run_id: str) -> None:
    device, size = args.device, args.size
    settings = [("before_fp32", "before", {}), ("after_fp32", "after", TRAIN_FAST)]
    if device.startswith("cuda") or args.cpu_bf16:
        settings += [("before_bf16", "before", {"ctsgan.bf16": True}),
                     ("after_bf16", "after", {**TRAIN_FAST, "ctsgan.bf16": True})]
    for name, stage, over in settings:
        cfg = load_profile(args.widths, **{"data.size": size, **over})
        batch = args.train_batch or cfg.ctsgan.batch
        wl = build_workload("ctsgan", cfg, size, batch, device, cfg.seed)
        fwd = _forward_flops_of_step(wl)
        step_s, times = _median_s(wl.step, args.train_steps, device)
        peak = device_peak_flops(device, bf16=bool(cfg.ctsgan.bf16 and device.startswith("cuda")))
        est = 3 * fwd / step_s
        rec = {"bench": "gpu_speed_train", "variant": name, "stage": stage, "size": size, "batch": batch,
               "options": over, "d_steps": cfg.ctsgan.d_steps, "slab_len": cfg.ctsgan.slab_len,
               "n_slices": cfg.ctsgan.n_slices, "step_s": round(step_s, 5), "step_times_s": times,
               "hours_100k_steps": round(1e5 * step_s / 3600, 2), "forward_flops_per_step": fwd,
               "est_flops_per_s": est, "flops_note": "3 x counted forward FLOPs (double backward not counted)",
               **peak, "peak_fraction_est": round(est / peak["peak_flops"], 5) if peak["peak_flops"] else None,
               "device": device, **record_meta(cfg, device, run_id)}
        append_jsonl(args.out, rec)
        print(f"train    {name:12} {step_s:.4f} s/step  ({rec['hours_100k_steps']} h per 100k steps, "
              f"≥ {rec['peak_fraction_est']} of peak)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--widths", default="paper", help="profile whose widths are used (paper; smoke for a dry run)")
    ap.add_argument("--gen-volumes", type=int, default=64, help="volumes per timed generation call")
    ap.add_argument("--gen-batch", type=int, default=16, help="volumes per generator call (paper generate.batch)")
    ap.add_argument("--slice-batches", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the torch.compile'd fast path (bf16 only)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=0, help="0: the profile's ctsgan.batch")
    ap.add_argument("--profile-ops", type=int, default=12, help="top operators recorded by torch.profiler (0: skip)")
    ap.add_argument("--cpu-bf16", action="store_true", help="CPU dry run: also exercise the bf16 variants")
    ap.add_argument("--skip", nargs="*", default=[], choices=["generate", "train"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA GPU here (dry run: --device cpu, see benchmarks/gpu_speed.sh)")
    run_id = new_run_id()
    cfg = load_profile(args.widths, **{"data.size": args.size})
    if "generate" not in args.skip:
        bench_generation(cfg, args, run_id)
    if "train" not in args.skip:
        bench_training(args, run_id)


if __name__ == "__main__":
    main()
