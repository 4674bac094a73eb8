"""Memory bench: peak memory of one full training step (D step + G step), CT-SGAN vs the 3D GAN, per volume size.

Every (model, size) configuration runs in its own subprocess (``python -m ctsgan_lib.bench.memory --worker ...``),
so one configuration's allocations, allocator caches and a possible out-of-memory kill cannot touch another's numbers.
The worker prints one JSON line (prefixed ``BENCH_JSON``) on stdout.

What is measured
----------------
CPU
    *baseline* = resident set size (RSS) after imports and a tiny warm-up (torch's lazy one-off costs: the optimizer
    import, the first conv/LSTM forward and backward), before any benchmarked model is built. *model memory* = RSS after building
    the networks and the in-memory batch, minus the baseline. *step peak* = the kernel's RSS high-water mark
    (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the step) minus the baseline, so it includes the
    parameters, gradients, optimizer state and activations of the step. ``--max-gib`` caps the address space the
    worker may add above its post-import size (``RLIMIT_AS``); an allocation past it fails and the row reads
    "out of memory".
CUDA
    ``torch.cuda.max_memory_allocated`` over the step (reset before it; the baseline is 0 as nothing is allocated
    before the models). The caching allocator's reserved memory is reported beside it.

A configuration that does not fit reports ``status: "out of memory"`` (``torch.OutOfMemoryError``, ``MemoryError``,
an allocator failure, or a worker killed by signal 9, which is what the kernel's OOM killer sends); one that runs past
``timeout_s`` reports ``status: "timeout"``. Neither stops the bench.

The 3D GAN at size S is built with native resolution S (``gan3d.size = S``): the paper's claim is about producing S³
volumes directly. The configured baseline (``gan3d.size`` of the profile, resized to ``data.size``) is reported as an
extra row with ``variant: "configured"`` when ``data.size`` is among the sizes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..config import load_profile
from ..utils.hardware import default_device
from ..utils.logs import append_jsonl, read_jsonl
from . import MODELS, build_workload, dumps, flatten_config, latest_run, new_run_id, record_meta

MARKER = "BENCH_JSON "
MIB = 2 ** 20


# ------------------------------------------------------------------------------------------------------------------
# Worker (runs in its own process)


def _proc_status() -> dict[str, int]:
    """VmRSS / VmHWM / VmSize of this process in bytes (Linux)."""
    out = {}
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return out
    for key in ("VmRSS", "VmHWM", "VmSize"):
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
        if m:
            out[key] = int(m.group(1)) * 1024
    return out


def _reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(s in msg for s in (
        "can't allocate memory", "cannot allocate memory", "out of memory", "not enough memory",
        "failed to allocate"))


def _warm_up_torch(device: str) -> None:
    """Pay torch's one-off lazy costs before the baseline: the optimizer import (which pulls in torch._dynamo,
    ~150 MiB) and the first conv/LSTM forward and backward. Without this the "model memory" of a tiny model would be
    mostly torch's own start-up."""
    nets = nn.ModuleList([nn.Conv2d(3, 2, 3), nn.ConvTranspose2d(2, 3, 4, 2, 1), nn.Conv3d(1, 2, 3),
                          nn.ConvTranspose3d(2, 1, 4, 2, 1), nn.LSTM(2, 2, batch_first=True, bidirectional=True),
                          nn.InstanceNorm3d(2, affine=True), nn.BatchNorm2d(2)]).to(device)
    opt = torch.optim.Adam(nets.parameters())
    x2 = torch.zeros(1, 3, 8, 8, device=device, requires_grad=True)
    x3 = torch.zeros(1, 1, 8, 8, 8, device=device)
    y = nets[1](nets[6](nets[0](x2))).sum() + nets[3](nets[5](nets[2](x3))).sum() \
        + nets[4](torch.zeros(1, 3, 2, device=device))[0].sum()
    (g,) = torch.autograd.grad(y, x2, create_graph=True)
    (y + g.square().sum()).backward()
    opt.step()
    del nets, opt, x2, x3, y, g
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_step_memory(model: str, cfg, size: int, batch: int, device: str, seed: int = 0,
                        native_size: int | None = None, max_gib: float | None = None) -> dict[str, Any]:
    """Measure one training step's peak memory in *this* process (call it in a fresh process).

    Parameters
    ----------
    model : str
        ``"ctsgan"``, ``"gan3d"`` or ``"module:callable"`` (see :func:`ctsgan_lib.bench.build_workload`).
    cfg : Config
        Profile whose network widths are used.
    size : int
        Volume side S in voxels.
    batch : int
        Volumes per step.
    device : str
        ``"cpu"`` or ``"cuda"``.
    seed : int
        Weights and batch seed.
    native_size : int, optional
        3D GAN generator resolution (default S).
    max_gib : float, optional
        CPU only: address space (GiB) the worker may add above its post-import size.

    Returns
    -------
    dict
        ``status`` (``"ok"`` or ``"out of memory"``) and the memory figures in MiB (see the module docstring).
    """
    cuda = device.startswith("cuda")
    _warm_up_torch(device)
    rec: dict[str, Any] = {"bench": "memory", "model": model, "size": size, "batch": batch, "device": device,
                           "native_size": native_size or size, "max_gib": max_gib}
    st = _proc_status()
    baseline = st.get("VmRSS", 0)
    rec["baseline_rss_mib"] = round(baseline / MIB, 1)
    if not cuda and max_gib:
        # Cap what the worker may add on top of its current address space; the allocation past it fails cleanly.
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = st.get("VmSize", 0) + int(max_gib * 2 ** 30)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))   # soft limit only: it can be lifted again
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    try:
        wl = build_workload(model, cfg, size, batch, device, seed, native_size=native_size)
        rec.update(native_size=wl.native_size, param_count=wl.param_count(),
                   param_mib=round(wl.param_bytes() / MIB, 2), widths=wl.widths)
        if cuda:
            torch.cuda.synchronize()
            rec["model_mib"] = round((torch.cuda.memory_allocated() - base_alloc) / MIB, 1)
            torch.cuda.reset_peak_memory_stats()
        else:
            rec["model_mib"] = round((_proc_status().get("VmRSS", 0) - baseline) / MIB, 1)
            rec["peak_method"] = "VmHWM reset via clear_refs" if _reset_peak_rss() else "ru_maxrss since start"
        t0 = time.perf_counter()
        losses = wl.step()
        if cuda:
            torch.cuda.synchronize()
        rec["step_s"] = round(time.perf_counter() - t0, 3)
        if cuda:
            rec["step_peak_mib"] = round((torch.cuda.max_memory_allocated() - base_alloc) / MIB, 1)
            rec["reserved_peak_mib"] = round(torch.cuda.max_memory_reserved() / MIB, 1)
            rec["measure"] = "torch.cuda.max_memory_allocated over one step"
        else:
            hwm = _proc_status().get("VmHWM") if rec["peak_method"].startswith("VmHWM") else \
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            rec["step_peak_mib"] = round((hwm - baseline) / MIB, 1)
            rec["measure"] = "peak RSS over one step minus RSS after imports"
        rec["losses"] = {k: float(v) for k, v in (losses or {}).items()}
        rec["finite"] = all(math.isfinite(v) for v in rec["losses"].values())
        rec["status"] = "ok"
    except BaseException as exc:  # noqa: BLE001 - classify, report, never crash the bench
        if isinstance(exc, KeyboardInterrupt):
            raise
        if _is_oom(exc):
            rec["status"] = "out of memory"
            rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        else:
            rec["status"] = "error"
            rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        if not cuda and max_gib:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return rec


def _worker_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctsgan_lib.bench.memory")
    p.add_argument("--worker", action="store_true", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--native-size", type=int, default=None)
    p.add_argument("--max-gib", type=float, default=None)
    p.add_argument("--profile", default="smoke")
    p.add_argument("--config-json", default="{}", help="flattened config overrides (dotted keys)")
    p.add_argument("--run-id", default="")
    a = p.parse_args(argv)
    cfg = load_profile(a.profile, **json.loads(a.config_json))
    rec = measure_step_memory(a.model, cfg, a.size, a.batch, a.device, a.seed, a.native_size, a.max_gib)
    rec.update(record_meta(cfg, a.device, a.run_id))
    print(MARKER + dumps(rec), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------------------------
# Orchestrator (runs every configuration in a subprocess)


def default_max_gib(fraction: float = 0.8) -> float | None:
    """A CPU memory cap: ``fraction`` of the currently available memory (so the bench never takes the machine down)."""
    try:
        m = re.search(r"^MemAvailable:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text(), re.M)
        return round(int(m.group(1)) * 1024 * fraction / 2 ** 30, 1) if m else None
    except OSError:
        return None


def run_worker(model: str, cfg, size: int, batch: int, device: str, *, native_size: int | None = None,
               max_gib: float | None = None, timeout_s: float | None = None, run_id: str = "",
               extra_env: dict | None = None) -> dict[str, Any]:
    """Run one configuration in a subprocess and return its record (never raises for OOM/kill/timeout)."""
    cmd = [sys.executable, "-m", "ctsgan_lib.bench.memory", "--worker", "--model", model, "--size", str(size),
           "--batch", str(batch), "--device", device, "--seed", str(cfg.seed), "--profile", cfg.profile,
           "--config-json", json.dumps(flatten_config(cfg)), "--run-id", run_id]
    if native_size:
        cmd += ["--native-size", str(native_size)]
    if max_gib:
        cmd += ["--max-gib", str(max_gib)]
    env = dict(os.environ, **(extra_env or {}))
    # The worker must import this checkout's package even when the caller's cwd is elsewhere (notebooks/).
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    base = {"bench": "memory", "model": model, "size": size, "batch": batch, "device": device,
            "native_size": native_size or size, "max_gib": max_gib, "run_id": run_id}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "error": f"worker ran past {timeout_s} s", "profile": cfg.profile}
    wall = round(time.perf_counter() - t0, 2)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            rec = json.loads(line[len(MARKER):])
            rec["worker_wall_s"] = wall
            return rec
    rec = {**base, "profile": cfg.profile, "worker_wall_s": wall, "returncode": proc.returncode}
    if proc.returncode < 0:
        sig = -proc.returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        rec["status"] = "out of memory" if sig == signal.SIGKILL else "error"
        rec["error"] = f"worker killed by {name}" + (" (the OOM killer sends SIGKILL)" if sig == signal.SIGKILL else "")
    else:
        rec["status"] = "out of memory" if "memory" in proc.stderr.lower() and "error" in proc.stderr.lower() \
            else "error"
        rec["error"] = proc.stderr.strip().splitlines()[-1][:500] if proc.stderr.strip() else "no output"
    return rec


def memory_ratios(records: Iterable[dict]) -> list[dict]:
    """Headline: CT-SGAN / 3D GAN step-peak ratio per size (rows of one run; the 3D GAN at native size S).

    When the 3D GAN did not fit, the ratio is an upper bound ``ctsgan / max_gib`` (``ratio_is_bound: true``).
    """
    recs = list(records)
    out = []
    for size in sorted({r["size"] for r in recs}):
        c = next((r for r in recs if r["model"] == "ctsgan" and r["size"] == size), None)
        g = next((r for r in recs if r["model"] == "gan3d" and r["size"] == size
                  and r.get("variant", "native") == "native"), None)
        if not c or not g:
            continue
        row = {"bench": "memory_ratio", "size": size, "run_id": c.get("run_id"), "profile": c.get("profile"),
               "ctsgan_status": c["status"], "gan3d_status": g["status"],
               "ctsgan_peak_mib": c.get("step_peak_mib"), "gan3d_peak_mib": g.get("step_peak_mib"),
               "ratio": None, "ratio_is_bound": False}
        if c["status"] == "ok" and g["status"] == "ok" and g["step_peak_mib"] > 0:
            row["ratio"] = round(c["step_peak_mib"] / g["step_peak_mib"], 4)
        elif c["status"] == "ok" and g["status"] == "out of memory" and g.get("max_gib"):
            row["ratio"] = round(c["step_peak_mib"] / (g["max_gib"] * 1024), 4)
            row["ratio_is_bound"] = True
        out.append(row)
    return out


def run_memory_bench(cfg, sizes: Iterable[int], *, models: Iterable[str] = MODELS, batch: int | None = None,
                     device: str | None = None, max_gib: float | None = None, timeout_s: float | None = None,
                     out: str | Path | None = None, include_configured: bool = True,
                     jobs_parallel: int = 1, progress: bool = True) -> list[dict]:
    """Measure every (model, size) in its own subprocess and append the records to ``out``.

    Parameters
    ----------
    cfg : Config
        Profile (network widths, seed).
    sizes : iterable of int
        Volume sides S.
    models : iterable of str
        Default ``("ctsgan", "gan3d")``.
    batch : int, optional
        Volumes per step, the same for every model (default ``cfg.bench.batch``).
    device : str, optional
        ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
    max_gib : float, optional
        CPU memory cap per worker (default ``cfg.bench.max_gib``, or 80% of available memory when that is 0).
    timeout_s : float, optional
        Per-worker wall-clock limit (default ``cfg.bench.timeout_s``).
    out : path, optional
        JSON-lines file to append to (default ``runs/<P>/bench/memory.jsonl``).
    include_configured : bool
        Add the 3D GAN at its configured native size (``gan3d.size``) when ``data.size`` is among ``sizes``.
    jobs_parallel : int
        Workers run at once on CPU (memory figures are per process, so they are unaffected; default 1).
    progress : bool
        Print one line per configuration as it finishes.

    Returns
    -------
    list of dict
        The configuration records followed by the ``memory_ratio`` records, all with the same ``run_id``.
    """
    device = device or default_device()
    batch = batch or cfg.bench.batch
    timeout_s = timeout_s if timeout_s is not None else (cfg.bench.timeout_s or None)
    n_par = 1 if device.startswith("cuda") else max(1, int(jobs_parallel or 1))
    if max_gib is None and not device.startswith("cuda"):
        max_gib = cfg.bench.max_gib or default_max_gib(0.8 / n_par)
    out = Path(out) if out else cfg.runs_dir / "bench" / "memory.jsonl"
    run_id = new_run_id()
    jobs: list[tuple[str, int, int | None, str]] = []
    for s in sorted(set(int(x) for x in sizes)):
        for m in models:
            jobs.append((m, s, None, "native"))
        if include_configured and "gan3d" in models and s == cfg.data.size and cfg.gan3d.size != s:
            jobs.append(("gan3d", s, cfg.gan3d.size, "configured"))
    def one(job):
        model, size, native, variant = job
        rec = run_worker(model, cfg, size, batch, device, native_size=native, max_gib=max_gib,
                         timeout_s=timeout_s, run_id=run_id)
        rec["variant"] = variant
        rec["run_id"] = run_id
        with lock:   # append as each finishes: a long run that is interrupted keeps its rows
            append_jsonl(out, rec)
            if progress:
                print(_one_line(rec), flush=True)
        return rec

    # Workers are separate processes and each measures only itself, so running two at once changes no memory figure
    # (only step_s, which this bench does not headline). On CUDA they would share the GPU: keep them serial there.
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=n_par) as pool:
        records = list(pool.map(one, jobs))
    ratios = memory_ratios(records)
    for r in ratios:
        append_jsonl(out, r)
    return records + ratios


def _one_line(r: dict) -> str:
    what = f"{r['model']:>6} {r['size']:>4}³ (native {r.get('native_size')}³, batch {r['batch']})"
    if r["status"] == "ok":
        return f"{what}: step peak {r['step_peak_mib']:.1f} MiB, model {r.get('model_mib')} MiB, {r['step_s']} s"
    return f"{what}: {r['status']} ({r.get('error', '')})"


def format_memory_table(records: list[dict]) -> str:
    """A markdown table of one run: per configuration, then the CT-SGAN / 3D GAN ratio per size."""
    rows = [r for r in records if r.get("bench") == "memory"]
    ratios = [r for r in records if r.get("bench") == "memory_ratio"]
    if not rows:
        return "(no memory records)"
    meta = rows[0]
    hw = meta.get("hardware") or {}
    hw_s = f"{hw.get('gpu') or hw.get('cpu', '?')} ({hw.get('device', meta['device'])})" if hw else meta["device"]
    batches = "/".join(str(b) for b in sorted({r["batch"] for r in rows}))
    lines = [f"Memory of one training step (D + G). Profile `{meta.get('profile')}` widths, batch {batches}, "
             f"device {hw_s}, seed {meta.get('seed')}, run {meta.get('run_id')}. Untrained networks on random "
             "in-memory batches (memory does not depend on the data).", "",
             "| model | variant | S³ | native | batch | params (M) | model MiB | step peak MiB | step s | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = r["status"] == "ok"
        pc = f"{r['param_count'] / 1e6:.2f}" if r.get("param_count") else "–"
        lines.append(f"| {r['model']} | {r.get('variant', 'native')} | {r['size']} | {r.get('native_size')} | "
                     f"{r['batch']} | {pc} | "
                     f"{r.get('model_mib', '–') if ok else '–'} | {r.get('step_peak_mib') if ok else '–'} | "
                     f"{r.get('step_s') if ok else '–'} | {r['status']} |")
    if ratios:
        lines += ["", "| S³ | CT-SGAN MiB | 3D GAN MiB | CT-SGAN / 3D GAN |", "|---|---|---|---|"]
        for q in ratios:
            g = q["gan3d_peak_mib"] if q["gan3d_status"] == "ok" else q["gan3d_status"]
            c = q["ctsgan_peak_mib"] if q["ctsgan_status"] == "ok" else q["ctsgan_status"]
            ratio = "–" if q["ratio"] is None else (f"< {q['ratio']:.3f} (3D GAN did not fit)" if q["ratio_is_bound"]
                                                     else f"{q['ratio']:.3f}")
            lines.append(f"| {q['size']} | {c} | {g} | {ratio} |")
    return "\n".join(lines)


def load_memory_results(path: str | Path) -> list[dict]:
    """The records of the latest memory run in ``path``."""
    recs = read_jsonl(path)
    return latest_run([r for r in recs if r.get("bench") in ("memory", "memory_ratio")])


def plot_memory_vs_size(records: list[dict], ax=None, title: str | None = None):
    """Step-peak memory vs volume side for both models, log-log, with "out of memory" marked at the cap.

    Parameters
    ----------
    records : list of dict
        One memory run (:func:`load_memory_results`).
    ax : matplotlib Axes, optional
    title : str, optional
        Default: profile, batch, device and run id.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt  # not at the top: it would add to the worker's measured baseline RSS

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    native = [r for r in records if r.get("bench") == "memory" and r.get("variant", "native") == "native"]
    # lines for the first run's batch; rows measured at another batch (e.g. the paper batch at 224³) are markers
    rows = [r for r in native if r["batch"] == native[0]["batch"]] if native else []
    other = [r for r in native if r not in rows and r["status"] == "ok"]
    styles = {"ctsgan": ("CT-SGAN (slice-wise)", "o-", "C0"), "gan3d": ("3D GAN (native S³)", "s-", "C3")}
    for model in sorted({r["model"] for r in rows}):
        label, fmt, color = styles.get(model, (model, "^-", "C2"))
        ok = sorted((r["size"], r["step_peak_mib"]) for r in rows if r["model"] == model and r["status"] == "ok")
        if ok:
            ax.plot([s for s, _ in ok], [m for _, m in ok], fmt, color=color, label=label)
        for r in rows:
            if r["model"] == model and r["status"] != "ok":
                cap = (r.get("max_gib") or 0) * 1024 or (max((m for _, m in ok), default=1.0) * 4)
                ax.plot([r["size"]], [cap], "x", color=color, markersize=10)
                ax.annotate(f"{r['status']}", (r["size"], cap), textcoords="offset points", xytext=(-30, 6),
                            color=color, fontsize=8)
    for r in other:
        ax.plot([r["size"]], [r["step_peak_mib"]], "*", markersize=12,
                color=styles.get(r["model"], ("", "", "C2"))[2], label=f"{r['model']} batch {r['batch']}")
    for r in records:
        if r.get("bench") == "memory" and r.get("variant") == "configured" and r["status"] == "ok":
            ax.plot([r["size"]], [r["step_peak_mib"]], "D", color="C1",
                    label=f"3D GAN configured ({r['native_size']}³ → {r['size']}³)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter  # as pyplot above
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    sizes = sorted({r["size"] for r in rows})
    ax.set_xticks(sizes, [f"{s}³" for s in sizes])
    ax.set_xlabel("volume size")
    ax.set_ylabel("peak memory of one training step (MiB)")
    if rows:
        m = rows[0]
        hw = m.get("hardware") or {}
        ax.set_title(title or f"profile {m.get('profile')} widths, batch {m['batch']}, "
                     f"{hw.get('gpu') or hw.get('cpu', m['device'])}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


if __name__ == "__main__":
    sys.exit(_worker_main())
