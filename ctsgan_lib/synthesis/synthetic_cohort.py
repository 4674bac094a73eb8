"""Synthetic cohorts at scale (paper §3.1, last paragraph; notebook 04, ``ctsgan generate``).

N volumes from a CT-SGAN (or 3D GAN baseline) checkpoint, each with a classical lung mask and a sanity check, nodules
injected into a fraction of them with the nodule injector (count per volume from the LIDC per-scan distribution,
diameter from the LIDC diameter distribution or fixed), written as a cohort in the [data] format.

Determinism and sharding
------------------------
Everything about volume ``i`` is a function of ``(seed, i)`` alone: its noise (``sampling.volume_seed``), whether it
gets nodules (a seeded permutation of all N indices), how many, their sizes and places. Volumes are generated in blocks
of ``batch`` consecutive indices and blocks are dealt round-robin to shards, so every Gslice call sees exactly the
same batch in a sharded run as in a single run: the union of K shards is bit-identical to one run.

Conditional CT-SGAN checkpoints (kind ``ctsgan_cond``, issue 26) need no injector: a volume the plan gives nodules is
generated under the condition "K nodules of diameter D" (:func:`volume_condition`), the others under "no nodules",
and the manifest records each volume's condition (``condition_nodules``, ``condition_diameter_vox``; ``has_nodule``
follows it). A ``ctsgan.cond_z`` model is also told where along z to put them (``nodule_z_frac``, or drawn per volume
by :func:`volume_z_vox`), recorded as ``condition_z_vox``. Lung masks and sanity flags are computed as for
unconditional volumes.

Shard ``i`` of ``K`` writes a complete cohort under ``<out>/shards/shard-<i>-of-<K>/``; :func:`merge_shards` writes
``<out>/manifest.csv`` pointing into them. Under ``torchrun`` each rank takes shard ``RANK`` of ``WORLD_SIZE`` on GPU
``LOCAL_RANK`` and rank 0 merges when every shard has finished.

Where the cohort work runs (ours, ``--cohort-device``)
-----------------------------------------------------
By default lung masks and injection run in numpy on the CPU (the reference). With ``cohort_device`` a torch device,
each generated block's lung masks are computed there in one batch (:mod:`ctsgan_lib.data.lung_mask_torch`; the
trachea step stays on the CPU) and nodules are cut and pasted on that device (:mod:`ctsgan_lib.nodules.voi_torch`);
placement stays numpy with the same rng stream. Masks equal the reference up to voxels within float32 rounding of
the threshold (tolerance in ``tests/test_lung_mask_torch.py``); the path is recorded in ``cohort.json``
(``cohort_path: torch``), so a rerun that switches it rebuilds the cohort instead of mixing the two.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.cohort import MANIFEST_COLUMNS, SPLITS, CohortWriter, read_manifest
from ..data.cohort import encode_row
from ..data.io import write_dicom_series
from ..data.lung_mask_torch import lung_mask_batch
from ..data.lidc import sample_diameter_mm, sample_nodule_count
from ..data.preprocess import lung_mask, lung_mask_flags
from ..errors import CTSGANError
from ..models.ctsgan_cond import condition_vector, condition_with_z
from ..models.ctsgan_fast import FastOptions
from ..nodules.inference import NoduleInjector
from ..utils.atomic import atomic_write_text, file_sha256
from ..utils.hardware import hardware_label
from .sampling import generate_gan3d_volumes, generate_volumes, load_generator


#: voxels per torch lung-mask call (``cohort_device``): one 224³ volume, 64 volumes of 64³. Its device memory is,
#: counting its tensors (not measured), about 50 bytes a voxel (int64 labels and their copies, the float64 smoothing):
#: ≈ 0.8 GiB a call, so 16 shard processes sharing one GPU stay far below its memory whatever ``batch`` is.
MASK_VOXELS_PER_CALL = 2 ** 24


@dataclass
class VolumePlan:
    """What volume ``index`` of a run will be: drawn from ``(seed, index)`` only."""

    index: int
    inject: bool
    diameters_vox: list[float] = field(default_factory=list)
    split: str = "train"


def _lidc_count(rng: np.random.Generator) -> int:
    return sample_nodule_count(rng, at_least_one=True)


def _lidc_diameters_mm(rng: np.random.Generator, k: int) -> np.ndarray:
    return np.atleast_1d(sample_diameter_mm(rng, size=k))


def plan_volumes(n: int, seed: int, inject_fraction: float = 0.5, diameters_vox: Sequence[float] | None = None,
                 spacing_mm: float = 1.0, max_diameter_vox: float | None = None, min_diameter_vox: float = 1.0,
                 split_fractions: Sequence[float] = (0.75, 0.125, 0.125)) -> list[VolumePlan]:
    """Decide, for every volume of a run, whether it gets nodules, their diameters and its split.

    Parameters
    ----------
    n : int
        Volumes in the run.
    seed : int
    inject_fraction : float
        Share of volumes that get nodules (the paper: half). Exactly ``round(n * inject_fraction)`` volumes.
    diameters_vox : sequence of float, optional
        Fixed experiment sizes (voxels); a nodule's diameter is drawn uniformly from them. Default: the LIDC diameter
        distribution in mm converted with ``spacing_mm``.
    spacing_mm : float
        Voxel size used to convert LIDC diameters to voxels.
    max_diameter_vox, min_diameter_vox : float
        LIDC diameters are clipped into this range (the injector's mask size bounds what it can paint).
    split_fractions : (train, val, test)

    Returns
    -------
    list of VolumePlan
    """
    if n < 1:
        raise CTSGANError(f"--n must be >= 1, got {n}")
    if not 0.0 <= inject_fraction <= 1.0:
        raise CTSGANError(f"--inject-fraction must be in [0, 1], got {inject_fraction}")
    perm = np.random.default_rng([int(seed), 0x1A7E]).permutation(n)
    injected = set(perm[: int(round(n * inject_fraction))].tolist())
    n_split = np.floor(np.asarray(split_fractions) * n).astype(int)
    n_split[0] = n - n_split[1:].sum()
    split_of = np.empty(n, dtype=object)
    order = np.random.default_rng([int(seed), 0x5B11]).permutation(n)
    split_of[order] = np.repeat(SPLITS, n_split)
    plans = []
    for i in range(n):
        plan = VolumePlan(index=i, inject=i in injected, split=str(split_of[i]))
        if plan.inject:
            rng = np.random.default_rng([int(seed), i, 0xD1A])
            k = _lidc_count(rng)
            if diameters_vox:
                d = rng.choice(np.asarray(diameters_vox, dtype=float), size=k)
            else:
                d = _lidc_diameters_mm(rng, k) / float(spacing_mm)
                d = np.clip(d, min_diameter_vox, max_diameter_vox if max_diameter_vox else np.inf)
            plan.diameters_vox = [round(float(x), 3) for x in d]
        plans.append(plan)
    return plans


def volume_condition(plan: VolumePlan, nodules: int | None = None) -> tuple[int, float]:
    """The condition (count, diameter_vox) a conditional CT-SGAN generates volume ``plan.index`` under.

    A volume the plan gives nodules gets ``nodules`` of them (default: the plan's LIDC-drawn count) with one target
    diameter, the plan's first drawn diameter (a uniform pick from ``--nodule-diameters``, or LIDC-distributed);
    every other volume, and every volume when ``nodules`` is 0, gets (0, 0.0).
    """
    if not plan.inject or nodules == 0:
        return 0, 0.0
    return (len(plan.diameters_vox) if nodules is None else int(nodules)), float(plan.diameters_vox[0])


def volume_z_vox(seed: int, index: int, n_nodules: int, depth: int, z_frac: float | None = None) -> list[float]:
    """z (voxels) of each nodule of volume ``index`` for a ``cond_z`` model: ``z_frac`` of the depth for all, or
    drawn from ``(seed, index)`` uniformly in the middle 30–70 % of the depth (where the lungs are)."""
    if n_nodules == 0:
        return []
    if z_frac is not None:
        return [round(float(z_frac) * (depth - 1), 2)] * int(n_nodules)
    rng = np.random.default_rng([int(seed), int(index), 0x2C])
    return [round(float(z), 2) for z in rng.uniform(0.3, 0.7, size=int(n_nodules)) * (depth - 1)]


def shard_indices(n: int, batch: int, shard: int = 0, n_shards: int = 1) -> list[int]:
    """Indices of shard ``shard`` of ``n_shards``: blocks of ``batch`` consecutive indices dealt round-robin."""
    if not 0 <= shard < n_shards:
        raise CTSGANError(f"--shard {shard}/{n_shards}: shard must be in 0..{n_shards - 1}")
    out = []
    for b, start in enumerate(range(0, n, batch)):
        if b % n_shards == shard:
            out.extend(range(start, min(start + batch, n)))
    return out


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"1/4"`` → ``(1, 4)``; None → ``(0, 1)``."""
    if not text:
        return 0, 1
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise CTSGANError(f"--shard {text!r}: expected i/K, e.g. 0/4") from None
    if k < 1 or not 0 <= i < k:
        raise CTSGANError(f"--shard {text!r}: need 0 <= i < K")
    return i, k


def volume_id(index: int) -> str:
    """Synthetic ids carry no source patient id: ``syn-000042``."""
    return f"syn-{index:06d}"


def shard_dir(out: Path, shard: int, n_shards: int) -> Path:
    return out if n_shards == 1 else out / "shards" / f"shard-{shard:03d}-of-{n_shards:03d}"


def _blocks(indices: list[int], batch: int) -> list[list[int]]:
    """Group sorted indices into the generation blocks they belong to (aligned to multiples of ``batch``)."""
    blocks: dict[int, list[int]] = {}
    for i in indices:
        blocks.setdefault(i // batch, []).append(i)
    return [blocks[k] for k in sorted(blocks)]


def _lung_check(hu: np.ndarray, spacing_mm: Sequence[float], lung: np.ndarray | None = None
                ) -> tuple[np.ndarray, float, list[str]]:
    if lung is None:
        lung = lung_mask(hu, spacing_mm)
    ml = float(lung.sum() * float(np.prod(spacing_mm)) / 1000.0)
    return lung, ml, list(lung_mask_flags(lung))


def generate_cohort(checkpoint: str | Path, n: int, seed: int, out: str | Path, *,
                    inject_fraction: float | None = None, nodule_diameters_vox: Sequence[float] | None = None,
                    injector: str | Path | None = None,
                    shard: tuple[int, int] = (0, 1), batch: int = 4, device: str = "cpu", dicom: bool = False,
                    compress: bool = True, split_fractions: Sequence[float] = (0.75, 0.125, 0.125),
                    profile: str = "", progress: bool = True, fast: FastOptions | None = None,
                    nodules: int | None = None, nodule_z_frac: float | None = None,
                    cohort_device: str | None = None) -> Path:
    """Generate (or resume) a synthetic cohort.

    Parameters
    ----------
    checkpoint : path
        A CT-SGAN (``kind="ctsgan"``), conditional CT-SGAN (``"ctsgan_cond"``) or 3D GAN (``kind="gan3d"``)
        checkpoint; the source column says which.
    n : int
        Total volumes in the run (all shards together).
    seed : int
    out : path
        Cohort folder.
    inject_fraction : float or None
        Share of volumes with injected nodules (paper: 0.5), or, for a conditional checkpoint, generated under a
        nodule condition. None: 0.5, or 1.0 for a conditional checkpoint given ``nodules``.
    nodule_diameters_vox : sequence of float, optional
        Fixed sizes (voxels); default LIDC-distributed diameters.
    injector : path, optional
        Injector checkpoint file or folder; required when ``inject_fraction > 0``.
    shard : (i, K)
        Write shard ``i`` of ``K`` (see the module docstring).
    batch : int
        Volumes per generator call.
    device : str
    dicom : bool
        Also export each volume as a DICOM series under ``<cohort>/dicom/<id>/`` (derived, no identifying tags).
    compress : bool
        ``.nii.gz`` or ``.nii``.
    profile : str
        Recorded in ``cohort.json`` and the DICOM SeriesDescription; default: the profile the checkpoint was trained
        with.
    fast : FastOptions, optional
        CT-SGAN only: the opt-in fast generation path (:mod:`ctsgan_lib.models.ctsgan_fast`; same volumes to
        float32 / bf16 rounding, not bit for bit). Recorded in the cohort settings, so a rerun that switches it
        rebuilds the cohort instead of mixing the two paths.
    nodules : int, optional
        Conditional checkpoints only: the number of nodules of the volumes conditioned on nodules (0: none of the
        volumes has nodules); default the LIDC-drawn count of :func:`plan_volumes`.
    nodule_z_frac : float, optional
        ``ctsgan.cond_z`` checkpoints only: every nodule's z as a fraction of the depth (default: drawn per volume,
        :func:`volume_z_vox`).
    cohort_device : str, optional
        A torch device for the lung masks and the nodules' cut and paste (module docstring, "Where the cohort work
        runs"); None (default): the numpy reference path on the CPU.

    Returns
    -------
    Path
        The folder that was written (the shard's folder when ``K > 1``).
    """

    out = Path(out)
    i_shard, n_shards = shard
    ckpt_sha = file_sha256(checkpoint) if Path(checkpoint).is_file() else None
    if ckpt_sha is None:
        raise CTSGANError(f"{checkpoint}: checkpoint not found")
    gen = load_generator(checkpoint, device)
    kind = gen.meta["kind"]
    conditional = kind == "ctsgan_cond"
    profile = profile or gen.meta.get("profile") or "unrecorded"   # checkpoints record the profile they ran under
    spacing = tuple(float(s) for s in gen.meta["spacing_mm"])
    if nodules is not None and not conditional:
        raise CTSGANError(f"{checkpoint}: --nodules needs a conditional CT-SGAN checkpoint (kind ctsgan_cond, "
                          f"`ctsgan train ctsgan_cond`); this one is {kind!r}")
    cond_z = bool(getattr(gen, "cond_z", False))
    if nodule_z_frac is not None and not cond_z:
        raise CTSGANError(f"{checkpoint}: --nodule-z needs a conditional CT-SGAN trained with ctsgan.cond_z")
    if conditional and injector is not None:
        raise CTSGANError(f"{checkpoint}: a conditional CT-SGAN makes its own nodules; drop --injector")
    if inject_fraction is None:
        inject_fraction = 1.0 if conditional and nodules is not None else 0.5
    inj = None
    if inject_fraction > 0 and not conditional:
        if injector is None:
            raise CTSGANError("nodule injection needs --injector (a checkpoint or runs/<P>/nodules/injector); "
                              "use --inject-fraction 0 for nodule-free volumes")
        inj = NoduleInjector.from_checkpoint(injector, device)
    plans = plan_volumes(n, seed, inject_fraction, nodule_diameters_vox, float(np.prod(spacing) ** (1 / 3)),
                         max_diameter_vox=inj.mask_size if inj else None, split_fractions=split_fractions)
    settings = {"kind": kind, "checkpoint_sha256": ckpt_sha, "seed": int(seed), "n": int(n),
                "inject_fraction": float(inject_fraction),
                "nodule_diameters_vox": [float(d) for d in nodule_diameters_vox] if nodule_diameters_vox else "lidc",
                "injector_step": inj.step if inj else None, "batch": int(batch), "shard": [i_shard, n_shards],
                "profile": profile}
    if inj is not None:   # another injector (retrained, other paste-back) must not resume an old cohort's nodules
        settings["injector_sha256"] = file_sha256(inj.source) if inj.source and Path(inj.source).is_file() else None
        settings["injector_paste"] = {"paste": inj.paste, "touchup_sigma_vox": inj.touchup_sigma_vox}
    if fast is not None:   # only then: default-path cohorts keep their settings (and resume) unchanged
        settings["fast"] = dataclasses.asdict(fast)
    if cohort_device is not None:   # likewise: the numpy path's settings stay as they were
        settings["cohort_path"] = "torch"
    conditions = None
    if conditional:
        settings["condition_nodules"] = "lidc" if nodules is None else int(nodules)
        conditions = [volume_condition(p, nodules) for p in plans]
        if cond_z:   # (count, diameter, z of each nodule)
            conditions = [(k, d, volume_z_vox(seed, p.index, k, gen.size, nodule_z_frac))
                          for p, (k, d) in zip(plans, conditions)]
    folder = shard_dir(out, i_shard, n_shards)
    writer = CohortWriter(folder, compress=compress, settings=settings,
                          source_defaults={"source": kind, "domain": "synthetic"})
    todo = [i for i in shard_indices(n, batch, i_shard, n_shards) if not writer.done(volume_id(i))]
    bar = tqdm(total=len(todo), desc=f"generate {kind} shard {i_shard}/{n_shards}", unit="vol", disable=not progress)
    t0 = time.perf_counter()
    gen_fn = generate_volumes if kind in ("ctsgan", "ctsgan_cond") else generate_gan3d_volumes
    # a conditional checkpoint with --fast is refused by generate_volumes (one-line error), not silently ignored
    fast_kw = {"fast": fast} if fast is not None and kind in ("ctsgan", "ctsgan_cond") else {}
    try:
        for block in _blocks(todo, batch):
            start = (block[0] // batch) * batch
            stop = min(start + batch, n)
            cond_kw = {"conditions": torch.stack([condition_with_z(*c, gen.size - 2) if cond_z else condition_vector(*c)
                                                  for c in conditions[start:stop]])} if conditional else {}
            # Generate the whole aligned block (same batch as a single run), keep the ones still to do.
            with torch.inference_mode():
                vols = list(gen_fn(gen, stop - start, seed, batch=batch, device=device, start=start, **fast_kw,
                                   **cond_kw))
            lungs = {}
            if cohort_device is not None:   # the block's masks in batches on the device (one voxel size per run)
                todo_here = [o for o in range(len(vols)) if start + o in block]
                per_call = max(1, MASK_VOXELS_PER_CALL // int(np.prod(vols[todo_here[0]][0].shape)))
                for k in range(0, len(todo_here), per_call):
                    part = todo_here[k:k + per_call]
                    masks = lung_mask_batch(np.stack([vols[o][0] for o in part]), vols[part[0]][1],
                                            device=cohort_device)
                    lungs.update(zip(part, masks))
            for offset, (hu, sp) in enumerate(vols):
                idx = start + offset
                if idx not in block:
                    continue
                _write_one(writer, plans[idx], hu, sp, inj, seed, ckpt_sha, kind, dicom, profile,
                           conditions[idx] if conditional else None, lung=lungs.get(offset), device=cohort_device)
                bar.update(1)
                bar.set_postfix(vol_per_s=f"{bar.n / max(time.perf_counter() - t0, 1e-9):.2f}")
    finally:
        bar.close()
        writer.close()
    (folder / "DONE").write_text(json.dumps({"n": len(writer), "hardware": hardware_label(device)}))
    return folder


def finish_volume(plan: VolumePlan, hu: np.ndarray, spacing_mm: Sequence[float], injector, seed: int,
                  lung: np.ndarray | None = None, device: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Lung mask + sanity check, then (if planned and the lungs are plausible) nodule injection.

    Returns the final volume and the manifest fields that describe it. A volume whose lungs are implausible is never
    injected and carries its flags (``lung_flags``), so it is reported rather than silently used. ``lung``: a mask
    already computed (the torch path); ``device``: inject with the volume on that torch device (same placements).
    """
    lung, lung_ml, flags = _lung_check(hu, spacing_mm, lung)
    nodules: list[dict] = []
    if plan.inject and not flags:
        rng = np.random.default_rng([int(seed), plan.index, 0x9A7])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # a shortfall is recorded in the manifest instead
            if device is None:
                hu, nodules = injector.inject(hu, plan.diameters_vox, rng, lung=lung, spacing_mm=spacing_mm)
            else:
                hu_t, nodules = injector.inject(torch.from_numpy(np.asarray(hu, dtype=np.float32)).to(device),
                                                plan.diameters_vox, rng, lung=lung, spacing_mm=spacing_mm)
                hu = hu_t.cpu().numpy()
    elif plan.inject:
        flags = flags + ["not_injected"]
    fields = {"split": plan.split, "nodules": nodules, "has_nodule": int(bool(nodules)), "seed": int(seed),
              "index": plan.index, "lung_volume_ml": round(lung_ml, 2), "lung_flags": ";".join(flags),
              "planned_nodules": len(plan.diameters_vox),
              "nodule_shortfall": len(plan.diameters_vox) - len(nodules) if plan.inject and not flags else 0}
    return hu, fields


def conditional_fields(plan: VolumePlan, hu: np.ndarray, spacing_mm: Sequence[float], condition: tuple,
                       seed: int, lung: np.ndarray | None = None) -> dict[str, Any]:
    """Manifest fields of a conditional CT-SGAN volume: the lung check of :func:`finish_volume` (nothing injected)
    and the condition it was generated under, ``(count, diameter_vox)`` or ``(count, diameter_vox, z_vox list)``.
    ``has_nodule`` follows the condition; ``nodules`` stays empty (the generator does not say where in-plane it put
    them)."""
    k, d = condition[:2]
    _, fields = finish_volume(VolumePlan(plan.index, False, [], plan.split), hu, spacing_mm, None, seed, lung)
    fields = {**fields, "has_nodule": int(k > 0), "planned_nodules": int(k), "condition_nodules": int(k),
              "condition_diameter_vox": round(float(d), 3)}
    if len(condition) > 2:
        fields["condition_z_vox"] = ";".join(f"{z:g}" for z in condition[2])
    return fields


def _write_one(writer: CohortWriter, plan: VolumePlan, hu: np.ndarray, spacing_mm: Sequence[float], inj, seed: int,
               ckpt_sha: str, kind: str, dicom: bool, profile: str,
               condition: tuple | None = None, lung: np.ndarray | None = None, device: str | None = None) -> None:
    if condition is None:
        hu, fields = finish_volume(plan, hu, spacing_mm, inj, seed, lung, device)
    else:
        fields = conditional_fields(plan, hu, spacing_mm, condition, seed, lung)
    rid = volume_id(plan.index)
    writer.write(rid, hu, spacing_mm, checkpoint_sha256=ckpt_sha, **fields)
    if dicom:
        write_dicom_series(writer.root / "dicom" / rid, hu, spacing_mm, patient_id=rid, overwrite=True,
                           series_description=f"{kind.upper()} synthetic CT ({profile} profile)",
                           derived=True)


def merge_shards(out: str | Path, n_shards: int) -> Path:
    """Write ``<out>/manifest.csv`` joining the K shard cohorts (paths point into ``shards/``)."""
    out = Path(out)
    frames = []
    for i in range(n_shards):
        folder = shard_dir(out, i, n_shards)
        if not (folder / "DONE").is_file():
            raise CTSGANError(f"{folder}: shard {i}/{n_shards} has not finished; run it (or rerun it) first")
        df = read_manifest(folder / "manifest.csv")
        rel = folder.relative_to(out).as_posix()
        df["path"] = rel + "/" + df["path"].astype(str)
        df["label_path"] = [f"{rel}/{p}" if isinstance(p, str) and p else "" for p in df["label_path"]]
        frames.append(df)
    merged = pd.concat(frames, ignore_index=True).sort_values("id")
    if merged["id"].duplicated().any():
        raise CTSGANError(f"{out}: shards overlap (duplicated ids); were they run with the same --n and --batch?")
    cols = MANIFEST_COLUMNS + [c for c in merged.columns if c not in MANIFEST_COLUMNS]
    rows = [encode_row(r) for r in merged.to_dict(orient="records")]
    text = pd.DataFrame(rows, columns=cols).to_csv(index=False)
    atomic_write_text(out / "manifest.csv", text)
    return out / "manifest.csv"


def distributed_shard() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` under torchrun, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    return None


def wait_for_shards(out: str | Path, n_shards: int, timeout_s: float = 24 * 3600, poll_s: float = 2.0) -> None:
    """Block until every shard folder has its ``DONE`` marker (rank 0 under torchrun)."""
    out = Path(out)
    t0 = time.monotonic()
    while not all((shard_dir(out, i, n_shards) / "DONE").is_file() for i in range(n_shards)):
        if time.monotonic() - t0 > timeout_s:
            raise CTSGANError(f"{out}: timed out waiting for all {n_shards} shards")
        time.sleep(poll_s)


def summarize_cohort(root: str | Path) -> dict[str, Any]:
    """Counts a reader wants: volumes, with nodules, flagged, nodules per volume, diameters."""
    df = read_manifest(Path(root) / "manifest.csv")
    flagged = df["lung_flags"].fillna("").astype(str).str.len() > 0 if "lung_flags" in df else pd.Series(False)
    counts = df["nodules"].map(len)
    diam = [n["diameter_vox"] for lst in df["nodules"] for n in lst]
    return {"volumes": int(len(df)), "with_nodules": int(df["has_nodule"].astype(int).sum()),
            "flagged": int(flagged.sum()), "flagged_share": float(flagged.mean()) if len(df) else 0.0,
            "nodules_per_injected_volume": float(counts[counts > 0].mean()) if (counts > 0).any() else 0.0,
            "diameters_vox": diam}
