"""Peak memory of one classifier grid cell against the number of volumes: in memory vs streamed (issue 22).

For each count N of nodule-free training bases (val and test fixed at ``--eval-bases`` each), a cohort of crude
chests (body, two lungs with phantom lung labels, noise) of ``--size``³ is written to a temporary folder, and one grid
cell (regime ``real``, one size, one seed, ``--epochs`` epochs) is run in a fresh process twice: with the cell data
held in memory (``classifier.stream_threshold_gib`` large) and streamed (threshold 0, ``--loader-workers`` DataLoader
processes). The child reports

- ``main_peak_mib``: peak RSS of the process that trains (``ru_maxrss``);
- ``workers_peak_mib``: the largest peak RSS of any of its DataLoader worker processes (``RUSAGE_CHILDREN``);
- ``tree_anon_peak_mib``: the peak, sampled every 0.1 s, of the anonymous resident memory (``RssAnon`` in
  ``/proc/<pid>/status``: heaps and arrays, no shared libraries) summed over the trainer and its live workers, with
  ``max_live_workers``. Pages a worker shares copy-on-write with the trainer are counted twice, so this is an upper
  bound; it moves with the number of workers alive at once (an epoch's workers can overlap the next loader's).

The children run with ``MALLOC_MMAP_THRESHOLD_=131072`` (``--default-malloc`` to leave glibc alone): glibc's dynamic
mmap threshold otherwise keeps freed volume-sized blocks in the heap, so the peak RSS creeps with the number of
allocations a run makes (more volumes, more items made), not with the data it holds; the first run below (default
malloc, 96³) shows that creep on both paths.

The nodules are painted by a sphere-painting stand-in for the injector (numpy): the injector's network is a fixed-size
model whose memory does not depend on N, and this keeps the benchmark free of a trained checkpoint. Timings on a
shared machine are not clean numbers; memory is.

    .venv/bin/python benchmarks/classifier_rss.py --counts 8 32 --size 96 \
        --out benchmarks/results/cpu/classifier_rss.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import CohortWriter
from ctsgan_lib.data.phantom import LABELS
from ctsgan_lib.experiments import run_grid
from ctsgan_lib.utils.hardware import hardware_info, hardware_label
from ctsgan_lib.utils.logs import append_jsonl, read_jsonl


class SphereInjector:
    """Stand-in for the nodule injector: solid spheres (+40 HU) at seeded lung positions."""

    def inject(self, hu, diameters_vox, rng, lung=None):
        out = np.array(hu, dtype=np.float32, copy=True)
        cand = np.argwhere(lung)
        nods = []
        for d in diameters_vox:
            c = cand[rng.integers(len(cand))]
            r = int(np.ceil(d / 2))
            sl = tuple(slice(max(0, c[k] - r), min(out.shape[k], c[k] + r + 1)) for k in range(3))
            z, y, x = np.ogrid[sl]
            ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= (d / 2) ** 2
            out[sl][ball] = 40.0
            nods.append({"center_vox": [int(v) for v in c], "diameter_vox": float(d), "action": "injected"})
        return out, nods


def chest(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(hu, labels) of a crude chest: body at 20 HU, two lungs at -800 HU, Gaussian noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size]
    body = ((y - size / 2) / (0.45 * size)) ** 2 + ((x - size / 2) / (0.48 * size)) ** 2 <= 1
    lung = body & (((y - size / 2) / (0.35 * size)) ** 2 + ((np.abs(x - size / 2) - 0.24 * size) / (0.2 * size)) ** 2
                   <= 1) & (np.abs(x - size / 2) > 1.5)
    hu = np.where(body, 20.0, -1000.0)
    hu[lung] = -800.0
    labels = np.where(lung, LABELS["lung"], np.where(body, LABELS["body"], 0)).astype(np.uint8)
    return (hu + rng.normal(0, 40.0, hu.shape)).astype(np.float32), labels


def write_cohort(root: Path, n_train: int, n_eval: int, size: int) -> None:
    with CohortWriter(root, compress=False) as w:
        k = 0
        for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
            for _ in range(n):
                hu, lab = chest(size, k)
                w.write(f"b{k:05d}", hu, (1.5, 1.5, 1.5), label=lab, source="phantom", domain="nlst-like",
                        split=split, nodules=[], has_nodule=0)
                k += 1


def _anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                for c in (t / "children").read_text().split()]
    except OSError:
        return []


def child(args: argparse.Namespace) -> None:
    """One cell in this process; prints one JSON line of memory figures."""
    torch.set_num_threads(args.threads)
    peak = {"anon": 0, "workers": 0}
    stop = threading.Event()

    def sample() -> None:
        me = os.getpid()
        while not stop.is_set():
            kids = _children(me)
            peak["anon"] = max(peak["anon"], _anon_kib(me) + sum(_anon_kib(c) for c in kids))
            peak["workers"] = max(peak["workers"], len(kids))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stream = args.mode == "streamed"
    cfg = load_profile("smoke", **{"data.size": args.size, "classifier.epochs": args.epochs,
                                   "classifier.finetune_epochs": 1, "classifier.batch": 4,
                                   "classifier.stream_threshold_gib": 0.0 if stream else 1000.0,
                                   "classifier.loader_workers": args.loader_workers if stream else 0})
    t0 = time.perf_counter()
    path = run_grid(cfg, Path(args.work) / f"runs_{args.mode}", progress=False, injector=SphereInjector(),
                    device="cpu", sizes=[6.0], seeds=[0], regimes=["real"])
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    rec = read_jsonl(path)[-1]
    print(json.dumps({"main_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "workers_peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                      "tree_anon_peak_mib": round(peak["anon"] / 1024, 1), "max_live_workers": peak["workers"],
                      "wall_s": round(wall, 1),
                      "n_train_items": rec["data"]["n_train"], "n_val_items": rec["data"]["n_val"],
                      "n_test_items": rec["data"]["n_test"], "test_accuracy": rec["metrics"]["accuracy"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[8, 32], help="nodule-free training bases per run")
    ap.add_argument("--eval-bases", type=int, default=2, help="val and test bases each (fixed)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["memory", "streamed"])
    ap.add_argument("--default-malloc", action="store_true", help="do not set MALLOC_MMAP_THRESHOLD_ in the children")
    ap.add_argument("--out", default="benchmarks/results/cpu/classifier_rss.jsonl")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    for n in args.counts:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["CTSGAN_ROOT"] = tmp                      # the cell's runs stay in the temporary folder
            cfg = load_profile("smoke", **{"data.size": args.size})
            write_cohort(cfg.data_dir / "debiased", n, args.eval_bases, args.size)
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", "--mode", mode, "--work", tmp, "--size", str(args.size),
                       "--epochs", str(args.epochs), "--loader-workers", str(args.loader_workers),
                       "--threads", str(args.threads)]
                env = os.environ.copy()
                if not args.default_malloc:
                    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    sys.exit(f"child {mode} N={n} failed:\n{res.stderr[-2000:]}")
                rec = {"bench": "classifier_rss", "mode": mode, "n_train_bases": n, "n_eval_bases": args.eval_bases,
                       "size": args.size, "epochs": args.epochs,
                       "loader_workers": args.loader_workers if mode == "streamed" else 0,
                       "malloc_mmap_threshold": "default" if args.default_malloc else 131072,
                       "in_memory_estimate_mib": round((n + 2 * args.eval_bases) * args.size ** 3 * 7 / 2 ** 20, 1),
                       **json.loads(res.stdout.strip().splitlines()[-1]),
                       "hardware": hardware_info("cpu"), "hardware_label": hardware_label("cpu"),
                       "note": "shared 2-core machine: memory is meaningful, wall_s is not a clean timing"}
                print(json.dumps({k: v for k, v in rec.items() if k != "hardware"}))
                append_jsonl(args.out, rec)


if __name__ == "__main__":
    main()
