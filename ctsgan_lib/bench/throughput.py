"""Throughput bench: training steps/s (CT-SGAN and 3D GAN), generation volumes/s, FID-extractor slices/s.

Everything runs on the current device, after one untimed warm-up, as the median of ``cfg.bench.repeats`` timed
repetitions. Every JSON line records the hardware (``hardware_info``) and the machine load (``os.getloadavg``): on a
shared CPU the numbers are only as good as the load next to them.

Generation is timed through :func:`ctsgan_lib.synthesis.generate_volumes` (the same batching and slice chunking as
``ctsgan generate``) with freshly initialised networks: speed does not depend on the weights. Its analytic FLOP count
(Rv + Gslice per volume, :mod:`ctsgan_lib.bench.flops`) turns volumes/s into a fraction of the device's peak, and on
every device the time for the paper's 10,000 volumes is extrapolated (only the GPU figure is the paper-scale claim).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ..eval.inception import seeded_inception
from ..synthesis import generate_volumes
from ..utils.hardware import default_device
from ..utils.logs import append_jsonl, read_jsonl
from . import MODELS, build_workload, latest_run, new_run_id, record_meta
from .flops import count_macs, device_peak_flops

PAPER_N_VOLUMES = 10_000


def _sync(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def _time_repeats(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] | None) -> list[float]:
    """Seconds per call for ``repeats`` calls after one warm-up call."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def train_throughput(model: str, cfg, size: int, batch: int, device: str, repeats: int) -> dict:
    """Training steps/s of one model at ``size``³ (full step: D then G).

    Returns
    -------
    dict
        ``steps_per_s`` (median), ``step_s`` (all timed repetitions), ``volumes_per_s`` = steps/s × batch.
    """
    wl = build_workload(model, cfg, size, batch, device, cfg.seed)
    times = _time_repeats(wl.step, repeats, _sync(device))
    med = statistics.median(times)
    return {"bench": "train", "model": model, "size": size, "native_size": wl.native_size, "batch": batch,
            "param_count": wl.param_count(), "widths": wl.widths, "step_s": [round(t, 4) for t in times],
            "steps_per_s": round(1.0 / med, 4), "volumes_per_s": round(batch / med, 4)}


def gslice_flops_per_volume(generator, size: int) -> dict:
    """Analytic FLOPs to generate one S³ CT-SGAN volume: Rv over the S−2 positions plus Gslice once per position.

    Counted from the module shapes with forward hooks on a single position (Gslice's cost is the same at every
    position), so it costs one slice of compute, not a volume.
    """
    dev = next(generator.parameters()).device
    n_pos = size - 2
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        pn, sn = generator.sample_noise(1, n_positions=n_pos, device=dev)
        with count_macs(generator.rv) as rv:
            generator.rv(sn)
        with count_macs(generator.gslice) as gs:
            generator.gslice(torch.zeros(1, generator.gslice.code_dim, device=dev))
    generator.train(was_training)
    return {"rv_flops": rv.flops, "gslice_flops_per_slice": gs.flops,
            "flops_per_volume": rv.flops + n_pos * gs.flops, "flops_by_kind_per_slice": gs.by_kind}


def generation_throughput(cfg, size: int, n_volumes: int, batch: int, device: str, repeats: int,
                          chunk: int | None = None, channels_last: bool = False) -> dict:
    """CT-SGAN volumes/s at ``size``³ through ``generate_volumes`` (batching and chunking as ``ctsgan generate``).

    ``channels_last=True`` converts Gslice to the channels-last memory format first (an optimisation candidate:
    oneDNN's transposed convolutions avoid a layout copy per layer); the record says which variant it is.

    Returns
    -------
    dict
        ``volumes_per_s``, FLOPs per volume, achieved FLOP/s, device peak and its assumption, ``peak_fraction``, and
        ``time_10k_volumes_s`` (extrapolated time for the paper's 10,000 volumes on this device).
    """
    chunk = chunk or cfg.ctsgan.chunk
    wl = build_workload("ctsgan", cfg, size, 1, device, cfg.seed)
    gen = wl.generator.eval()
    if channels_last:
        gen.gslice.to(memory_format=torch.channels_last)
    bf16 = bool(cfg.ctsgan.bf16 and device.startswith("cuda"))
    # what load_generator gives `ctsgan generate`: the profile's autocast setting and chunk travel in .meta
    gen.meta = {**getattr(gen, "meta", {}), "bf16": bool(cfg.ctsgan.bf16), "chunk": chunk}

    def run():
        # generate_volumes is lazy: consume it (this includes the HU conversion, as ``ctsgan generate`` does)
        count = sum(1 for _ in generate_volumes(gen, n_volumes, seed=cfg.seed, batch=batch, device=device,
                                                chunk=chunk))
        assert count == n_volumes

    times = _time_repeats(run, repeats, _sync(device))
    med = statistics.median(times)
    vps = n_volumes / med
    fl = gslice_flops_per_volume(gen, size)
    peak = device_peak_flops(device, bf16=bf16)
    achieved = vps * fl["flops_per_volume"]
    return {"bench": "generate", "model": "ctsgan", "size": size, "n_volumes": n_volumes, "batch": batch,
            "chunk": chunk, "bf16": bf16, "channels_last": channels_last, "widths": wl.widths, "call_s": [round(t, 4) for t in times],
            "volumes_per_s": round(vps, 5), "s_per_volume": round(1 / vps, 4), **fl,
            "achieved_flops_per_s": achieved, **peak,
            "peak_fraction": (round(achieved / peak["peak_flops"], 4) if peak["peak_flops"] else None),
            "time_10k_volumes_s": round(PAPER_N_VOLUMES / vps, 1)}


def fid_extractor_throughput(cfg, size: int, n_slices: int, device: str, repeats: int) -> dict:
    """Slices/s through the FID feature extractor (torch-fidelity's InceptionV3, 299×299 after its resize).

    The network's speed does not depend on its weights, so a seeded random InceptionV3 of torch-fidelity's own
    architecture is timed (:mod:`ctsgan_lib.eval.inception`); the real pipeline loads the ImageNet or fallback weights
    into the same module. Inputs are uint8 (B, 3, S, S) slices, as the fidelity stage feeds them.
    """
    with tempfile.TemporaryDirectory() as tmp:
        net = seeded_inception(cfg.seed, Path(tmp))
    net = net.to(device).eval()
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randint(0, 256, (n_slices, 3, size, size), generator=g, dtype=torch.uint8).to(device)

    def run():
        with torch.no_grad():
            return net(x)

    times = _time_repeats(run, repeats, _sync(device))
    med = statistics.median(times)
    return {"bench": "fid_extractor", "model": "inception-v3-compat", "size": size, "n_slices": n_slices,
            "call_s": [round(t, 4) for t in times], "slices_per_s": round(n_slices / med, 3),
            "note": "torch-fidelity InceptionV3 forward (resize to 299 inside); seeded random weights, same compute "
                    "as the ImageNet weights"}


def run_throughput_bench(cfg, size: int | None = None, *, gen_sizes: Iterable[int] | None = None,
                         models: Iterable[str] = MODELS, batch: int | None = None, device: str | None = None,
                         repeats: int | None = None, gen_volumes: int | None = None, fid_slices: int | None = None,
                         out: str | Path | None = None, skip: Iterable[str] = (), channels_last: bool = False,
                         progress: bool = True) -> list[dict]:
    """Run the throughput benches and append their JSON lines to ``out``.

    Parameters
    ----------
    cfg : Config
        Profile (widths, seed, ``bench`` section).
    size : int, optional
        Training-step volume side (default ``cfg.data.size``); also the FID-extractor slice size.
    gen_sizes : iterable of int, optional
        Generation sides (default ``cfg.bench.gen_sizes``; paper: 64 and 224).
    models : iterable of str
        Training-step models.
    batch : int, optional
        Training batch (default ``cfg.bench.batch``).
    device : str, optional
        Default: CUDA when available.
    repeats, gen_volumes, fid_slices : int, optional
        Defaults from ``cfg.bench``.
    out : path, optional
        Default ``runs/<P>/bench/throughput.jsonl``.
    skip : iterable of str
        Any of ``"train"``, ``"generate"``, ``"fid"``.
    channels_last : bool
        Also time generation with Gslice in channels-last memory format (one extra record per size).
    progress : bool
        Print one line per result.

    Returns
    -------
    list of dict
    """
    device = device or default_device()
    size = size or cfg.data.size
    gen_sizes = list(gen_sizes or cfg.bench.gen_sizes)
    batch = batch or cfg.bench.batch
    repeats = repeats or cfg.bench.repeats
    gen_volumes = gen_volumes or cfg.bench.gen_volumes
    fid_slices = fid_slices or cfg.bench.fid_slices
    out = Path(out) if out else cfg.runs_dir / "bench" / "throughput.jsonl"
    run_id = new_run_id()
    skip = set(skip)
    jobs: list[Callable[[], dict]] = []
    if "train" not in skip:
        jobs += [lambda m=m: train_throughput(m, cfg, size, batch, device, repeats) for m in models]
    if "generate" not in skip:
        variants = (False, True) if channels_last else (False,)
        jobs += [lambda s=s, cl=cl: generation_throughput(cfg, s, gen_volumes, min(gen_volumes, cfg.generate.batch),
                                                          device, repeats, channels_last=cl)
                 for s in gen_sizes for cl in variants]
    if "fid" not in skip:
        jobs.append(lambda: fid_extractor_throughput(cfg, size, fid_slices, device, repeats))
    records = []
    for job in jobs:
        rec = job()
        rec.update(device=device, repeats=repeats, **record_meta(cfg, device, run_id))
        append_jsonl(out, rec)
        records.append(rec)
        if progress:
            print(_one_line(rec), flush=True)
    return records


def _one_line(r: dict) -> str:
    if r["bench"] == "train":
        return f"train    {r['model']:>6} {r['size']}³ batch {r['batch']}: {r['steps_per_s']:.3f} steps/s"
    if r["bench"] == "generate":
        pf = f", {100 * r['peak_fraction']:.1f}% of peak" if r.get("peak_fraction") is not None else ""
        return (f"generate ctsgan {r['size']}³{' channels-last' if r.get('channels_last') else ''}: "
                f"{r['volumes_per_s']:.4f} volumes/s ({r['s_per_volume']:.2f} s/volume, "
                f"{r['flops_per_volume'] / 1e9:.1f} GFLOP/volume{pf}); 10,000 volumes ≈ "
                f"{r['time_10k_volumes_s'] / 3600:.2f} h")
    return f"fid      inception {r['size']}²→299²: {r['slices_per_s']:.2f} slices/s"


def format_throughput_tables(records: list[dict]) -> str:
    """Markdown tables of one throughput run (training, generation, FID extractor), with hardware and load."""
    if not records:
        return "(no throughput records)"
    meta = records[0]
    hw = meta.get("hardware", {})
    dev = hw.get("gpu") or f"{hw.get('cpu', '?')}, {hw.get('torch_threads', '?')} torch threads"
    loads = [r["loadavg"][0] for r in records if r.get("loadavg")]
    head = (f"Profile `{meta['profile']}` widths, device {meta['device']} ({dev}), seed {meta['seed']}, "
            f"run {meta['run_id']}, 1-min load {min(loads):.1f}–{max(loads):.1f} on {hw.get('cpu_cores')} cores "
            "(shared machine: timings are noisy). Untrained networks; speed does not depend on weights.")
    lines = [head]
    tr = [r for r in records if r["bench"] == "train"]
    if tr:
        lines += ["", "| model | S³ | batch | params (M) | steps/s | s/step |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['size']} | {r['batch']} | {r['param_count'] / 1e6:.2f} | "
                  f"{r['steps_per_s']:.3f} | {1 / r['steps_per_s']:.3f} |" for r in tr]
    ge = [r for r in records if r["bench"] == "generate"]
    if ge:
        lines += ["", "| CT-SGAN generation S³ | Gslice layout | volumes/s | s/volume | GFLOP/volume | achieved GFLOP/s | % of peak | "
                  "10,000 volumes |", "|---|---|---|---|---|---|---|---|"]
        for r in ge:
            pf = f"{100 * r['peak_fraction']:.1f}" if r.get("peak_fraction") is not None else "unknown"
            lay = "channels-last" if r.get("channels_last") else "default"
            lines.append(f"| {r['size']} | {lay} | {r['volumes_per_s']:.4f} | {r['s_per_volume']:.2f} | "
                         f"{r['flops_per_volume'] / 1e9:.1f} | {r['achieved_flops_per_s'] / 1e9:.1f} | {pf} | "
                         f"{r['time_10k_volumes_s'] / 3600:.2f} h |")
        lines.append(f"\nPeak: {ge[0]['peak_assumption']}.")
    fi = [r for r in records if r["bench"] == "fid_extractor"]
    if fi:
        lines += ["", "| FID extractor | input | slices/s |", "|---|---|---|"]
        lines += [f"| {r['model']} | {r['size']}² uint8 → 299² | {r['slices_per_s']:.2f} |" for r in fi]
    return "\n".join(lines)


def load_throughput_results(path: str | Path) -> list[dict]:
    """The records of the latest throughput run in ``path``."""
    return latest_run(read_jsonl(path))


def targets_report(memory_records: list[dict], throughput_records: list[dict]) -> str:
    """The issue's targets against what a run measured (markdown bullets); a target not measured says so.

    Targets: CT-SGAN step memory at 224³ <= 1/8 of the 3D GAN's and within a 16 GB GPU; one 224³ volume on a 2-core
    CPU in < 10 s; 10,000 × 224³ volumes on an H100 in < 30 min.
    """
    out = []
    ratio = next((r for r in memory_records if r.get("bench") == "memory_ratio" and r["size"] == 224), None)
    if ratio and ratio["ratio"] is not None:
        bound = "at most " if ratio["ratio_is_bound"] else ""
        verdict = "met" if ratio["ratio"] <= 1 / 8 else "missed"
        out.append(f"- Memory at 224³: CT-SGAN / 3D GAN = {bound}{ratio['ratio']:.3f} (target <= 0.125): **{verdict}**"
                   + (" (the 3D GAN did not fit under the cap; the ratio is a bound)" if bound else "") + ".")
    else:
        out.append("- Memory ratio at 224³: not measured in this run.")
    c224 = max((r for r in memory_records if r.get("bench") == "memory" and r["model"] == "ctsgan"
                and r["size"] == 224 and r["status"] == "ok"), key=lambda r: r["batch"], default=None)
    if c224:
        gib = c224["step_peak_mib"] / 1024
        how = "CUDA allocator peak" if c224["device"].startswith("cuda") else "CPU RSS peak (a proxy for GPU memory)"
        out.append(f"- CT-SGAN step at 224³, batch {c224['batch']}: {gib:.2f} GiB ({how}); 16 GB GPU target: "
                   f"**{'met' if gib < 14.9 else 'missed'}**.")
    gen224 = [r for r in throughput_records if r.get("bench") == "generate" and r["size"] == 224]
    for r in gen224:   # records written by other scripts (benchmarks/gpu_autotune.py) name the device in hardware
        r.setdefault("device", r.get("hardware", {}).get("device", "cpu"))
    cpu = min((r for r in gen224 if r["device"] == "cpu"), key=lambda r: r["s_per_volume"], default=None)
    if cpu:
        threads = cpu["hardware"].get("torch_threads")
        lay = ", channels-last Gslice" if cpu.get("channels_last") else ""
        out.append(f"- One 224³ volume on CPU ({threads} torch threads{lay}, load {cpu['loadavg'][0]}): "
                   f"{cpu['s_per_volume']:.1f} s (target < 10 s on 2 cores): "
                   f"**{'met' if cpu['s_per_volume'] < 10 else 'missed'}**.")
    else:
        out.append("- One 224³ volume on a 2-core CPU: not measured in this run.")
    gpu = min((r for r in gen224 if r["device"].startswith("cuda")), key=lambda r: r["s_per_volume"], default=None)
    if gpu:
        name = gpu["hardware"].get("gpu", "GPU")
        mins = gpu["time_10k_volumes_s"] / 60
        h100 = "H100" in name or "H200" in name
        out.append(f"- 10,000 × 224³ on {name}: {mins:.1f} min (target < 30 min on an H100): "
                   f"**{('met' if mins < 30 else 'missed') if h100 else 'not an H100-class GPU'}**.")
    else:
        out.append("- 10,000 × 224³ on an H100: not measured (no GPU in this run).")
    return "\n".join(out)
