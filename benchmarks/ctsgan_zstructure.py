"""Which CT-SGAN settings give anatomy along z, and after how many iterations? (issue [ctsgan])

Evaluates trained CT-SGAN checkpoints against the real training volumes with the statistics of
:mod:`ctsgan_lib.eval.zstructure` (voxel std along z, std across patients, the craniocaudal intensity profile and its
correlation with the real one) and draws the middle coronal and sagittal slice of a few volumes per checkpoint beside
real ones. One JSON line per checkpoint.

The runs it was written for (32³, smoke widths, 18 training phantoms, one torch thread each, ``d_steps`` 3 unless
stated), trained with::

    ctsgan prepare --profile smoke --out /tmp/zexp/data/smoke/cohort           # 24 phantoms, seed 0
    ctsgan train ctsgan --profile smoke --cohort /tmp/zexp/data/smoke/cohort --out /tmp/zexp/RUN --fresh \
        --set ctsgan.iterations=4000 --set ctsgan.d_steps=3 --set ctsgan.ckpt_every=1000 [OPTIONS]

    RUN  OPTIONS
    A4   --set ctsgan.dslice_position=table                      (the position table used before 2026-11-26)
    E4   --set ctsgan.dslice_position=fourier
    G4   --set ctsgan.dslice_position=fourier --set ctsgan.dslab_position=true
    G1   as G4 with --set ctsgan.d_steps=1 --set ctsgan.iterations=6000

The demo comparison (64³, ``data/demo/nodule_free``): the checkpoints of the demo run committed before 2026-11-26
(1000 iterations, table embedding, paper Dslab; kept outside the repository) against the current demo run
(1500 iterations, fourier embedding, position-aware Dslab), labelled with ``--labels``.

Then::

    .venv/bin/python benchmarks/ctsgan_zstructure.py --profile smoke --cohort /tmp/zexp/data/smoke/cohort \
        --checkpoints /tmp/zexp/A4/ckpt_002000.pt ... --out benchmarks/results/cpu/ctsgan_zstructure.jsonl \
        --figure docs/img/ctsgan_zstructure_32.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ctsgan_lib.config import load_profile  # noqa: E402
from ctsgan_lib.data.cohort import Cohort  # noqa: E402
from ctsgan_lib.data.intensity import hu_to_model  # noqa: E402
from ctsgan_lib.eval.zstructure import z_structure  # noqa: E402
from ctsgan_lib.models.ctsgan import synthesize  # noqa: E402
from ctsgan_lib.synthesis import load_generator  # noqa: E402
from ctsgan_lib.utils.checkpoint import load_checkpoint  # noqa: E402
from ctsgan_lib.utils.hardware import hardware_label  # noqa: E402
from ctsgan_lib.utils.logs import append_jsonl  # noqa: E402


def _generate(ckpt: Path, n: int, seed: int) -> np.ndarray:
    gen = load_generator(ckpt).eval()
    g = torch.Generator().manual_seed(seed)
    pn = torch.randn(n, gen.patient_dim, generator=g)
    sn = torch.randn(n, gen.n_positions, gen.slice_noise_dim, generator=g)
    with torch.no_grad():
        return synthesize(gen, pn, sn).float().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--cohort", required=True, help="the cohort the checkpoints were trained on")
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--labels", nargs="+", default=None, help="one per checkpoint (default: its run folder's name)")
    ap.add_argument("--n", type=int, default=16, help="volumes per checkpoint (and real training volumes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=3, help="volumes drawn per row")
    ap.add_argument("--out", default="benchmarks/results/cpu/ctsgan_zstructure.jsonl")
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    cfg = load_profile(args.profile)
    cohort = Cohort(args.cohort)
    ids = cohort.ids(split="train")[:args.n]
    real = np.stack([hu_to_model(np.asarray(cohort.read(i)[0], np.float32), cfg.data.hu_min, cfg.data.hu_max)
                     for i in ids])
    rows = [("real", real, z_structure(real, real))]
    append_jsonl(args.out, {"bench": "ctsgan_zstructure", "run": "real", "profile": args.profile,
                            "cohort": str(args.cohort),
                            "n": len(ids), **rows[0][2], "hardware": hardware_label()})
    labels = args.labels or [Path(c).parent.name for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        ap.error(f"{len(labels)} labels for {len(args.checkpoints)} checkpoints")
    for ck, name in zip(map(Path, args.checkpoints), labels):
        meta = load_checkpoint(ck, map_location="cpu")
        ct = (meta.get("config") or {}).get("ctsgan", {})
        vols = _generate(ck, args.n, args.seed)
        stats = z_structure(vols, real)
        label = f"{name} step {meta['step']}"
        rows.append((label, vols, stats))
        append_jsonl(args.out, {"bench": "ctsgan_zstructure", "run": name, "checkpoint": str(ck),
                                "step": int(meta["step"]), "n": args.n, "seed": args.seed,
                                "options": {k: ct.get(k) for k in ("dslice_position", "dslab_position", "d_steps",
                                                                   "position_input")},
                                **stats, "hardware": hardware_label()})
        print(label, {k: round(v, 3) for k, v in stats.items()})
    if args.figure:
        k = args.show
        fig, ax = plt.subplots(len(rows), 2 * k, figsize=(2 * k * 1.3, len(rows) * 1.45))
        for r, (label, vols, stats) in enumerate(rows):
            for j in range(k):
                v = vols[j]
                s = v.shape[1] // 2
                ax[r, 2 * j].imshow(v[::-1, s, :], cmap="gray", vmin=-1, vmax=1)      # coronal, head up
                ax[r, 2 * j + 1].imshow(v[::-1, :, s], cmap="gray", vmin=-1, vmax=1)  # sagittal
            corr = stats.get("profile_corr", float("nan"))
            ax[r, 0].set_ylabel(f"{label}\nz-std {stats['z_std']:.2f}\nprofile r {corr:.2f}", fontsize=6)
        for a in ax.flat:
            a.set_xticks([])
            a.set_yticks([])
        fig.suptitle(f"CT-SGAN z-structure, profile={args.profile}, coronal | sagittal pairs, seed {args.seed}, "
                     f"{hardware_label()}", fontsize=7)
        fig.tight_layout()
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=110)
        print("figure", args.figure)


if __name__ == "__main__":
    main()
