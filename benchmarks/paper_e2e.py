"""Every stage of the ``paper`` profile at 224³, in one go, through the real CLI (issue 22, item 6).

A handful of phantom patients, tiny iteration counts, paper widths and sizes, classifier data streamed from disk
(``classifier.stream_threshold_gib=0``). Each stage is its own ``ctsgan`` process reading what the previous ones wrote
under one ``CTSGAN_ROOT``; the run stops at the first stage that exits non-zero or leaves an expected output missing.

Per stage it records: wall seconds; the peak RSS of the largest single process (``wait4``'s ``ru_maxrss``, which
covers the stage's reaped child processes too) and the peak summed RSS of the live process tree (``/proc``, polled
every 0.2 s); the GPU memory in use on the device above the stage's starting level (``nvidia-smi``, polled; null
without one); and the bytes the stage added under ``data/`` and ``runs/``.

FID at paper needs InceptionV3 weights. Offline, pass none and a seeded random-init torch-fidelity InceptionV3 is
written into the work root and passed as ``fidelity.weights_path``: the same network and cost, so the resources are
the paper's, but the FID values are meaningless (the extractor is labelled ``custom`` in the results). Pass
``--inception-weights`` for the official file.

    python benchmarks/paper_e2e.py --out benchmarks/results/cpu/paper_e2e.jsonl     # ~10-20 min on 2 CPU cores
    python benchmarks/paper_e2e.py --device cuda --out benchmarks/results/gpu/paper_e2e.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ctsgan_lib.utils.hardware import hardware_info, hardware_label  # noqa: E402

PROFILE = "paper"
MIB = 2 ** 20


@dataclass
class Stage:
    """One CLI stage: ``args(root)`` builds its ``ctsgan`` arguments (some depend on files earlier stages wrote);
    ``outputs`` are paths under the root it must leave behind (a glob pattern matches at least one file)."""

    name: str
    args: Callable[[Path], list[str]]
    outputs: list[str] = field(default_factory=list)


def _latest(root: Path, pattern: str) -> str:
    """The newest file matching ``pattern`` under ``root`` (by step number in the name); fails if there is none."""
    found = sorted(root.glob(pattern), key=lambda p: (len(p.name), p.name))
    if not found:
        raise FileNotFoundError(f"no {pattern} under {root}: the stage that writes it did not")
    return str(found[-1])


def inception_weights(root: Path) -> str:
    """Write a seeded random-init torch-fidelity InceptionV3 (resources as the real one, values meaningless) with its
    ``.sha256`` sidecar; returns its path."""
    import torch

    from ctsgan_lib.eval.inception import seeded_inception

    path = root / "inception_random.pth"
    torch.save(seeded_inception(0, root).state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(str(path) + ".sha256").write_text(sha + "\n")
    return str(path)


def paper_stages(n_patients: int = 24, n_volumes: int = 4, weights: str = "", device: str = "cpu",
                 shortcut: bool = True) -> list[Stage]:
    """The ``paper`` profile's stages at 224³ with tiny counts, in pipeline order (notebooks 01-06)."""
    d, r = f"data/{PROFILE}", f"runs/{PROFILE}"
    prof = ["--profile", PROFILE]

    def s(*kv: str) -> list[str]:
        return [a for item in kv for a in ("--set", item)]

    nod = s("nodules.iterations=2", "nodules.ckpt_every=1")
    dev = ["--device", device]
    fid_set = s("fidelity.volumes_per_source=2", "fidelity.max_slices=16", "fidelity.pooled_volumes=2",
                "fidelity.domain_steps=2", "fidelity.domain_max_volumes=4", "fidelity.batch=16",
                f"fidelity.weights_path={weights}")
    cls_set = s("classifier.sizes=[8.0]", "classifier.seeds=[0]", "classifier.epochs=1",
                "classifier.finetune_epochs=1", f"classifier.n_synthetic={n_volumes}", "classifier.patience=1",
                "classifier.stream_threshold_gib=0", "classifier.batch=2")
    return [
        Stage("prepare", lambda root: ["prepare", "--source", "phantom", *prof, "--no-progress",
                                       *s(f"data.n_patients={n_patients}", "data.workers=2")],
              [f"{d}/cohort/manifest.csv"]),
        Stage("nodules_injector", lambda root: ["nodules", "train", "injector", *prof, *nod, *dev, "--no-progress"],
              [f"{r}/nodules/injector/ckpt_*.pt"]),
        Stage("nodules_eraser", lambda root: ["nodules", "train", "eraser", *prof, *nod, *dev, "--no-progress"],
              [f"{r}/nodules/eraser/ckpt_*.pt"]),
        Stage("debias", lambda root: ["nodules", "debias", *prof, *dev, "--no-progress"],
              [f"{d}/debiased/manifest.csv", f"{d}/nodule_free/manifest.csv"]),
        Stage("train_ctsgan", lambda root: ["train", "ctsgan", *prof, *dev, "--no-progress",
                                            *s("ctsgan.iterations=1", "ctsgan.ckpt_every=1", "ctsgan.sample_every=1")],
              [f"{r}/ctsgan/ckpt_*.pt"]),
        Stage("train_gan3d", lambda root: ["train", "gan3d", *prof, *dev, "--no-progress",
                                           *s("gan3d.iterations=1", "gan3d.ckpt_every=1", "gan3d.sample_every=1")],
              [f"{r}/gan3d/ckpt_*.pt"]),
        Stage("generate", lambda root: ["generate", "--checkpoint", _latest(root, f"{r}/ctsgan/ckpt_*.pt"),
                                        "--n", str(n_volumes), "--out", f"{d}/synthetic/ctsgan", "--batch", "2",
                                        "--injector", f"{r}/nodules/injector", "--profile", PROFILE,
                                        *dev, "--no-progress"],
              [f"{d}/synthetic/ctsgan/manifest.csv"]),
        Stage("fid", lambda root: ["fid", f"{d}/cohort", f"{d}/synthetic/ctsgan", *prof, "--pairs", "2",
                                   "--out", f"{r}/fidelity/table1.jsonl", *fid_set, *dev, "--no-progress"],
              [f"{r}/fidelity/table1.jsonl"]),
        Stage("classify", lambda root: ["classify", *prof, *cls_set, *dev, "--no-progress",
                                        *([] if shortcut else ["--no-shortcut"])],
              [f"{r}/classifier/*.jsonl"]),
    ]


def _tree_rss_bytes(pid: int) -> int:
    """Summed RSS of ``pid`` and its live descendants, from ``/proc`` (0 where it is not readable)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def _gpu_used_mib() -> float | None:
    """Memory in use on GPU 0 (MiB) from ``nvidia-smi``; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(out.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def _disk_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder``, each file once (a hard link to a file already counted, as the
    debiased cohort makes for unchanged scans, adds nothing); 0 when it does not exist."""
    if not folder.is_dir():
        return 0
    seen: dict[tuple[int, int], int] = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def run_stage(stage: Stage, root: Path, log: Path, timeout_s: float) -> dict:
    """Run one stage as its own process under ``root`` and measure it; ``ok`` is False when it exits non-zero or
    leaves an expected output missing."""
    env = {**os.environ, "CTSGAN_ROOT": str(root), "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    disk0 = {k: _disk_bytes(root / k) for k in ("data", "runs")}
    gpu0 = _gpu_used_mib()
    try:
        cmd = [sys.executable, "-m", "ctsgan_lib.cli", *stage.args(root)]
    except FileNotFoundError as exc:
        return {"stage": stage.name, "ok": False, "rc": None, "error": str(exc)}
    peaks = {"tree": 0, "gpu": gpu0}
    done = threading.Event()
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ ctsgan {' '.join(cmd[3:])}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=fh, stderr=subprocess.STDOUT)

        def poll() -> None:
            while not done.is_set():
                peaks["tree"] = max(peaks["tree"], _tree_rss_bytes(proc.pid))
                g = _gpu_used_mib()
                if g is not None and peaks["gpu"] is not None:
                    peaks["gpu"] = max(peaks["gpu"], g)
                done.wait(0.2)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        deadline = time.monotonic() + timeout_s
        while True:  # reap with wait4 ourselves: its rusage is the stage's peak RSS
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.2)
        rc = proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        watcher.join()
    wall_s = time.perf_counter() - t0
    maxrss_kib = usage.ru_maxrss
    missing = [o for o in stage.outputs if not any(root.glob(o))]
    disk1 = {k: _disk_bytes(root / k) for k in ("data", "runs")}
    return {
        "stage": stage.name, "ok": rc == 0 and not missing, "rc": rc, "missing_outputs": missing,
        "wall_s": round(wall_s, 2),
        "peak_rss_mib": round(maxrss_kib / 1024, 1) if maxrss_kib else None,
        "peak_tree_rss_mib": round(peaks["tree"] / MIB, 1),
        "gpu_peak_mib": round(peaks["gpu"] - gpu0, 1) if gpu0 is not None and peaks["gpu"] is not None else None,
        "disk_added_mib": round(sum(disk1[k] - disk0[k] for k in disk1) / MIB, 1),
        "disk_data_mib": round(disk1["data"] / MIB, 1), "disk_runs_mib": round(disk1["runs"] / MIB, 1),
        "command": "ctsgan " + " ".join(cmd[3:]).replace(str(root), "<root>"),
    }


def run_all(root: Path, stages: list[Stage], log: Path, timeout_s: float = 3600, on_result=None) -> list[dict]:
    """Run ``stages`` in order under ``root``; stops after the first that fails. Returns one record per stage run."""
    out = []
    for st in stages:
        rec = run_stage(st, root, log, timeout_s)
        out.append(rec)
        if on_result is not None:
            on_result(rec)
        if not rec["ok"]:
            break
    return out


def markdown_table(records: list[dict]) -> str:
    """The per-stage table (MiB, seconds) as Markdown."""
    lines = ["| stage | ok | wall s | peak RSS MiB (largest process) | peak RSS MiB (process tree) | GPU MiB | "
             "disk added MiB |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['stage']} | {'yes' if r['ok'] else 'NO'} | {r.get('wall_s', '')} | "
                     f"{r.get('peak_rss_mib', '')} | {r.get('peak_tree_rss_mib', '')} | "
                     f"{r.get('gpu_peak_mib') if r.get('gpu_peak_mib') is not None else 'n/a'} | "
                     f"{r.get('disk_added_mib', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/cpu/paper_e2e.jsonl", help="JSON lines (appended)")
    ap.add_argument("--root", default=None, help="work root (default: a temporary folder, deleted unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work root")
    ap.add_argument("--patients", type=int, default=24,
                    help="phantom patients at 224³ (default 24; 8 or 16 left a split without a nodule-free base)")
    ap.add_argument("--volumes", type=int, default=4, help="synthetic volumes generated (default 4)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    ap.add_argument("--inception-weights", default="", help="official InceptionV3 weights (default: seeded random)")
    ap.add_argument("--no-shortcut", action="store_true", help="skip classify's device-shortcut control")
    ap.add_argument("--from", dest="start", default=None,
                    help="start at this stage in an existing --root (the earlier stages' outputs must be there)")
    ap.add_argument("--only", nargs="+", default=None, metavar="STAGE",
                    help="run only these stages in an existing --root")
    ap.add_argument("--timeout-s", type=float, default=3600, help="per-stage limit (default 3600)")
    args = ap.parse_args(argv)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="ctsgan-paper-e2e-"))
    root.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = root / "paper_e2e.log"
    weights = args.inception_weights or (str(root / "inception_random.pth") if (root / "inception_random.pth").is_file()
                                         else inception_weights(root))
    run_id = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    head = {"run": run_id, "benchmark": "paper_e2e", "profile": PROFILE, "size": 224, "patients": args.patients,
            "volumes": args.volumes, "device": args.device, "hardware": hardware_label(args.device),
            "hardware_info": hardware_info(args.device),
            "inception": "official" if args.inception_weights else "seeded random (resources only)"}

    def write(rec: dict) -> None:
        print(json.dumps(rec), flush=True)
        with open(out, "a") as fh:
            fh.write(json.dumps({**head, **rec}) + "\n")

    try:
        stages = paper_stages(args.patients, args.volumes, weights, args.device, not args.no_shortcut)
        if args.start:
            names = [st.name for st in stages]
            if args.start not in names or not args.root:
                ap.error(f"--from needs --root and one of {', '.join(names)}")
            stages = stages[names.index(args.start):]
        if args.only:
            if not args.root or not set(args.only) <= {st.name for st in stages}:
                ap.error("--only needs --root and stage names")
            stages = [st for st in stages if st.name in args.only]
        recs = run_all(root, stages, log, args.timeout_s, on_result=write)
        out.with_suffix(".md").write_text(f"paper profile at 224³, {args.patients} phantom patients, {args.volumes} "
                                          f"synthetic volumes, {head['hardware']}, run {run_id}\n\n"
                                          + markdown_table(recs))
        print(markdown_table(recs))
        if not all(r["ok"] for r in recs):
            print(log.read_text()[-4000:], file=sys.stderr)
            return 1
        return 0
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
