"""Cell data of the nodule-detection study (stage 06): the base volumes and the datasets of a (size, seed) cell.

Two designs (``classifier.design``; the study as a whole is described in :mod:`ctsgan_lib.experiments`):

- ``paper`` (default; paper §3.1, Fig 3a, §4.2): the real splits are the debiased cohort as it stands, each volume
  once, in one of four roles: *native* positives (the lidc-like scans that keep their own nodules), *injected*
  positives (the nlst-like half that the debiasing injects into; here injected again, from their clean source scans,
  with nodules of the cell's size), *erased* negatives (lidc-like scans whose nodules were erased) and *clean*
  negatives (the other nlst-like half). The synthetic training set is the generated cohort: the half that
  ``ctsgan generate`` injected gets nodules of the cell's size (from the clean generated anatomy), the other half
  stays clean. Only injected nodules have the cell's size; native nodules keep their own.
- ``paired`` (ours, the earlier design): each nodule-free base volume appears twice, once as it is (label 0) and once
  with nodules of the cell's size injected (label 1), so nothing but the injected nodule separates the classes.

In both, the number of injected nodules in a positive volume is drawn from the LIDC per-scan distribution (capped at
``max_nodules``); the seed sets it, the nodule locations and the classifier's initialisation, never which volumes are
negatives.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..config import Config
from ..data.cohort import SPLITS, Cohort
from ..errors import CTSGANError, InputFileError, MissingInputError
from ..eval.classification import balanced_indices, check_classes
from ..nodules.inference import NoduleInjector
from ..train.classifier_loop import ClassifierDataset
from ..utils.atomic import file_sha256
from ..utils.checkpoint import latest_checkpoint
from ..synthesis.stream import GeneratorSource
from ..utils.hardware import default_device
from ..synthesis.synthetic_cohort import plan_volumes, volume_id
from .streamed import (CLEAN, ERASED, INJECTED, MIN_LUNG_VOXELS, NATIVE, NEGATIVE_ROLES, POSITIVE_ROLES, BaseVolume,
                       ItemRecipe, StreamedPairedDataset, central_mask, cell_rng, inject_volume, make_base,
                       nodule_count_fn, read_base, scan_bases, should_stream, streamed_paired_dataset)

DESIGNS = ("paper", "paired")
KINDS = (NATIVE, INJECTED, ERASED, CLEAN)


@dataclass
class BaseSet:
    """Nodule-free base volumes of one data source, with where they came from."""

    volumes: list[BaseVolume]
    origin: str                         # folder (or description) they were read from
    sources: list[str] = field(default_factory=list)
    voxel_mm: float | None = None       # the cohort's voxel size (geometric mean of the spacing), when known
    notes: dict = field(default_factory=dict)   # what the result lines should say about how the set was read

    def split(self, name: str) -> list[BaseVolume]:
        return [v for v in self.volumes if v.split == name]


def _read_bases(cfg: Config, root: Path, ids: Sequence[str], progress: bool, desc: str,
                stream: bool | None) -> list[BaseVolume]:
    """Bases held in memory, or (streamed: by :func:`~.streamed.should_stream` unless ``stream`` says) checked
    references that are read again when an item needs them."""
    keep = not (should_stream(cfg, len(ids)) if stream is None else stream)
    bar = lambda it: tqdm(it, desc=desc + ("" if keep else " (streamed)"), disable=not progress, leave=False)
    return scan_bases(root, ids, cfg.data.size, keep, bar)


def real_base_root(cfg: Config) -> Path:
    """The debiased cohort when it exists, else the prepared cohort."""
    for name in ("debiased", "cohort"):
        if (cfg.data_dir / name / "manifest.csv").is_file():
            return cfg.data_dir / name
    raise MissingInputError(f"missing input {cfg.data_dir / 'debiased'} (and {cfg.data_dir / 'cohort'}): run "
                            f"02_nodule_gans.ipynb (or `ctsgan nodules`) first")


def load_real_base(cfg: Config, root: str | Path | None = None, progress: bool = True,
                   stream: bool | None = None) -> BaseSet:
    """Nodule-free volumes of the real (debiased) cohort, all splits.

    ``stream`` None: held in memory or streamed by size (:func:`~.streamed.should_stream`); True/False forces it.
    """
    root = Path(root) if root is not None else real_base_root(cfg)
    c = Cohort(root)
    ids = c.ids(has_nodule=0)
    if not ids:
        raise InputFileError(root / "manifest.csv", "no nodule-free volumes (has_nodule=0): nothing to inject into")
    vols = _read_bases(cfg, root, ids, progress, "real base", stream)
    return BaseSet(vols, str(root), sorted({v.source for v in vols}))


def load_synthetic_base(cfg: Config, root: str | Path | None = None, progress: bool = True,
                        stream: bool | None = None) -> BaseSet:
    """Nodule-free volumes of the CT-SGAN synthetic cohort (first ``n_synthetic // 2`` by id); ``stream`` as in
    :func:`load_real_base`.

    With ``classifier.synthetic_source: generator`` nothing is read from disk: the same volumes (the run
    ``generate.n_volumes``, ``generate.seed``, ``generate.batch``, ``generate.inject_fraction`` of the newest
    checkpoint under ``runs/<P>/ctsgan``) are made by the generator when an item needs them
    (:class:`~ctsgan_lib.synthesis.GeneratorSource`); they are always streamed.
    """
    if cfg.classifier.synthetic_source == "generator":
        return _generator_base(cfg, progress)
    root = Path(root) if root is not None else cfg.data_dir / "synthetic" / "ctsgan"
    if not (root / "manifest.csv").is_file():
        raise MissingInputError(f"missing input {root}: run 04_synthetic_cohort.ipynb (or `ctsgan generate`) first")
    c = Cohort(root)
    ids = c.ids(has_nodule=0)[: max(1, cfg.classifier.n_synthetic // 2)]
    if not ids:
        raise InputFileError(root / "manifest.csv", "no nodule-free synthetic volumes (has_nodule=0)")
    vols = _read_bases(cfg, root, ids, progress, "synthetic base", stream)
    for v in vols:
        v.split = "train"  # synthetic volumes only ever train (validation and test stay real)
    return BaseSet(vols, str(root), sorted({v.source for v in vols}))


def _generator_base(cfg: Config, progress: bool) -> BaseSet:
    folder = cfg.runs_dir / "ctsgan"
    ck = latest_checkpoint(folder)
    if ck is None:
        raise MissingInputError(f"missing input {folder}/ckpt_*.pt: run 03_ctsgan_training.ipynb (or `ctsgan train "
                                f"ctsgan`) first (classifier.synthetic_source: generator)")
    g = cfg.generate
    # CUDA cannot be used in forked DataLoader workers: the generator runs there on the CPU, else on the default device
    device = "cpu" if cfg.classifier.loader_workers > 0 else default_device()
    src = GeneratorSource(ck, g.n_volumes, g.seed, g.batch, g.inject_fraction, device)
    ids = src.nodule_free_ids()[: max(1, cfg.classifier.n_synthetic // 2)]
    vols = []
    for rid in tqdm(ids, desc="synthetic base (generator)", disable=not progress, leave=False):
        hu, label = src.read(rid)   # generated once here to check the shape and find lungs; again per item later
        vols.append(make_base(rid, hu, label, cfg.data.size, src.origin, "synthetic", "train", "ctsgan", keep=False,
                              maker=src))
    return BaseSet(vols, src.origin, ["ctsgan"])


def debias_role(row: dict) -> str:
    """Role of a debiased-cohort row in the paper design, from its ``debias_action`` and ``has_nodule``."""
    action = str(row.get("debias_action") or "none")
    if action == "injected":
        return INJECTED
    if action == "erased":
        return ERASED
    return NATIVE if int(row["has_nodule"]) else CLEAN


def load_real_cohort(cfg: Config, root: str | Path | None = None, source_root: str | Path | None = None,
                     progress: bool = True, stream: bool | None = None) -> BaseSet:
    """The debiased cohort (paper Fig 3a) for the paper design: every volume once, each with its role.

    Native, erased and clean volumes are read from the debiased cohort as they are. An *injected* one is read from
    its clean source scan (``source_id`` in the prepared cohort ``source_root``, default ``data/<P>/cohort``): the
    cell injects nodules of its own size into it, so the size of a cell applies to injected nodules only.
    ``stream`` as in :func:`load_real_base`.

    Raises
    ------
    MissingInputError
        No debiased cohort, or the source cohort of its injected half is missing.
    InputFileError
        The manifest has no ``debias_action`` column (not a debiased cohort), or a source scan is missing.
    """
    root = Path(root) if root is not None else cfg.data_dir / "debiased"
    if not (root / "manifest.csv").is_file():
        raise MissingInputError(f"missing input {root}: the paper design (classifier.design: paper) needs the "
                                f"debiased cohort of Fig 3a: run 02_nodule_gans.ipynb (or `ctsgan nodules`) first")
    c = Cohort(root)
    if "debias_action" not in c.manifest.columns:
        raise InputFileError(root / "manifest.csv", "no debias_action column: not a debiased cohort (Fig 3a)")
    ids = c.ids()
    roles = {rid: debias_role(c.row(rid)) for rid in ids}
    keep = not (should_stream(cfg, len(ids)) if stream is None else stream)
    src = None
    if any(r == INJECTED for r in roles.values()):
        src_root = Path(source_root) if source_root is not None else cfg.data_dir / "cohort"
        if not (src_root / "manifest.csv").is_file():
            raise MissingInputError(f"missing input {src_root}: the clean source scans of the debiased cohort's "
                                    f"injected half (run 01_data_preparation.ipynb or `ctsgan data` first)")
        src = Cohort(src_root)
    vols = []
    for rid in tqdm(ids, desc="real cohort" + ("" if keep else " (streamed)"), disable=not progress, leave=False):
        if roles[rid] == INJECTED:
            row = c.row(rid)
            sid = str(row.get("source_id") or rid)
            if sid not in src:
                raise InputFileError(src.root / "manifest.csv", f"no volume {sid!r}, the source of injected "
                                                                f"volume {rid!r} of {root}")
            v = read_base(src, sid, cfg.data.size, keep=keep)
            v.split, v.domain = str(row["split"]), str(row["domain"])  # the debiased cohort's split is the one used
        else:
            v = read_base(c, rid, cfg.data.size, keep=keep)
        v.role = roles[rid]
        if v.role == NATIVE:
            v.native_mm = _largest_nodule_mm(c.row(rid))
        vols.append(v)
    spacing = [float(np.prod(sp)) ** (1 / 3) for sp in c.manifest["spacing_mm"]]
    return BaseSet(vols, str(root), sorted({v.source for v in vols}), float(np.median(spacing)) if spacing else None)


def _largest_nodule_mm(row: dict) -> float:
    """Diameter (mm) of the largest nodule a scan keeps (``diameter_mm``, else ``diameter_vox`` × its spacing)."""
    vox = float(np.prod(row["spacing_mm"])) ** (1 / 3)
    ds = [float(n.get("diameter_mm") or float(n.get("diameter_vox", 0)) * vox) for n in (row.get("nodules") or [])
          if n.get("action", "original") != "erased"]
    return max(ds, default=0.0)


def _stored_cohort_settings(root: Path) -> dict:
    """``cohort.json`` of a generated cohort (of its first shard when it was written in shards)."""
    for p in [root / "cohort.json", *sorted((root / "shards").glob("*/cohort.json"))]:
        if p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except ValueError:
                raise InputFileError(p, "not valid JSON") from None
    raise InputFileError(root / "cohort.json", "missing: cannot tell which generator run made this cohort")


def _checkpoint_with_sha(folder: Path, sha: str) -> Path | None:
    for p in sorted(folder.glob("*.pt"), reverse=True):
        if file_sha256(p) == sha:
            return p
    return None


def load_synthetic_cohort(cfg: Config, root: str | Path | None = None, progress: bool = True,
                          stream: bool | None = None) -> BaseSet:
    """The synthetic training set of the paper design: ``n_synthetic // 2`` volumes of the half that ``ctsgan
    generate`` planned to inject (role *injected*) and as many of the untouched half (role *clean*), first by id.

    The cell injects nodules of its own size (LIDC count, seeded places) into the injected half, so it needs that
    half's generated anatomy *before* injection: it is made again by the CT-SGAN checkpoint the cohort records
    (``checkpoint_sha256`` in ``cohort.json``, looked up under ``runs/<P>/ctsgan``;
    :class:`~ctsgan_lib.synthesis.GeneratorSource`). The untouched half is read from disk. With
    ``classifier.synthetic_source: generator`` both halves are made by the generator (always streamed). ``stream`` as
    in :func:`load_real_base`: streamed, the injected half is generated again whenever an item needs it.
    """
    n_half = max(1, cfg.classifier.n_synthetic // 2)
    g = cfg.generate
    folder = cfg.runs_dir / "ctsgan"
    c = clean_root = None
    if cfg.classifier.synthetic_source == "generator":
        ck = latest_checkpoint(folder)
        if ck is None:
            raise MissingInputError(f"missing input {folder}/ckpt_*.pt: run 03_ctsgan_training.ipynb (or `ctsgan "
                                    f"train ctsgan`) first (classifier.synthetic_source: generator)")
        n, seed, batch, frac = g.n_volumes, g.seed, g.batch, g.inject_fraction
        keep_clean = False
    else:
        root = Path(root) if root is not None else cfg.data_dir / "synthetic" / "ctsgan"
        if not (root / "manifest.csv").is_file():
            raise MissingInputError(f"missing input {root}: run 04_synthetic_cohort.ipynb (or `ctsgan generate`) "
                                    f"first")
        c, clean_root = Cohort(root), root
        st = _stored_cohort_settings(root)
        ck = _checkpoint_with_sha(folder, str(st.get("checkpoint_sha256", "")))
        if ck is None:
            raise MissingInputError(f"missing input {folder}: no checkpoint with the SHA-256 that {root} records "
                                    f"(its injected half is regenerated nodule-free to take the cell's nodule size)")
        n, seed, batch, frac = int(st["n"]), int(st["seed"]), int(st["batch"]), float(st["inject_fraction"])
        keep_clean = not (should_stream(cfg, 2 * n_half) if stream is None else stream)
    # CUDA cannot be used in forked DataLoader workers: the generator runs there on the CPU, else on the default device
    src = GeneratorSource(ck, n, seed, batch, frac, "cpu" if cfg.classifier.loader_workers > 0 else default_device())
    plans = plan_volumes(n, seed, frac)
    # the halves of the generate plan: a planned volume whose lungs failed generate's sanity check was stored without
    # nodules, but it belongs to the injected half (here it gets nodules, in the central box if it has no lungs, and
    # is counted in ``notes`` and in the lung fallback of the result line)
    injected = [volume_id(p.index) for p in plans if p.inject]
    clean_ids = [volume_id(p.index) for p in plans if not p.inject]
    notes = {}
    if c is not None:
        injected = [rid for rid in injected if rid in c][:n_half]
        clean_ids = [rid for rid in clean_ids if rid in c][:n_half]
        notes["stored_without_nodules"] = sum(1 for rid in injected if not int(c.row(rid)["has_nodule"]))
    else:
        injected, clean_ids = injected[:n_half], clean_ids[:n_half]
    if not injected or not clean_ids:
        raise InputFileError(clean_root or src.origin, f"the synthetic cohort needs both halves: {len(injected)} "
                                                       f"injected and {len(clean_ids)} untouched volumes")
    keep_gen = keep_clean   # regenerated volumes are held like stored ones (streamed: made again per item)
    bar = lambda it, d: tqdm(it, desc=d, disable=not progress, leave=False)
    vols = []
    for rid in bar(injected, "synthetic (injected half, regenerated)"):
        hu, label = src.read(rid)   # generated once here to check the shape and find lungs; again per item later
        v = make_base(rid, hu, label, cfg.data.size, src.origin, "synthetic", "train", "ctsgan", keep=keep_gen,
                      maker=None if keep_gen else src)
        v.role = INJECTED
        vols.append(v)
    if clean_root is not None:
        clean = scan_bases(clean_root, clean_ids, cfg.data.size, keep_clean, lambda it: bar(it, "synthetic (clean)"))
    else:
        clean = []
        for rid in bar(clean_ids, "synthetic (clean, generator)"):
            hu, label = src.read(rid)
            clean.append(make_base(rid, hu, label, cfg.data.size, src.origin, "synthetic", "train", "ctsgan",
                                   keep=False, maker=src))
    for v in clean:
        v.role, v.split = CLEAN, "train"
    return BaseSet(vols + clean, str(clean_root) if clean_root is not None else src.origin, ["ctsgan"], notes=notes)


def load_injector(cfg: Config, device: str = "cpu"):
    """The newest nodule injector checkpoint under ``runs/<P>/nodules/injector``."""
    folder = cfg.runs_dir / "nodules" / "injector"
    ck = latest_checkpoint(folder)
    if ck is None:
        raise MissingInputError(f"missing input {folder}/ckpt_*.pt: run 02_nodule_gans.ipynb (or `ctsgan nodules`) "
                                f"first")
    return NoduleInjector.from_checkpoint(ck, device=device)


def injector_tag(injector) -> dict[str, Any]:
    """What injected the nodules (checkpoint file, step and SHA-256, or the class name of a test double)."""
    src = getattr(injector, "source", "")
    if src and Path(src).is_file():
        return {"checkpoint": str(src), "step": int(getattr(injector, "step", 0)), "sha256": file_sha256(src)}
    return {"checkpoint": "", "model": type(injector).__name__}


def paired_dataset(bases: Sequence[BaseVolume], diameter_vox: float, seed: int, injector, cfg: Config,
                   count_fn: Callable | None = None, positive: Callable[[BaseVolume], bool] | None = None,
                   negative: Callable[[BaseVolume], bool] | None = None
                   ) -> ClassifierDataset | StreamedPairedDataset:
    """Float16 [0, 1] dataset from bases: each base clean (label 0) and/or injected (label 1).

    ``positive``/``negative`` choose which bases appear in each role (default: every base in both, the paired design).
    Streamed bases (``hu is None``) give a :class:`~.streamed.StreamedPairedDataset` with the same items instead.
    """
    count_fn = count_fn or nodule_count_fn()
    positive = positive or (lambda b: True)
    negative = negative or (lambda b: True)
    recipe = ItemRecipe(float(diameter_vox), int(seed), injector, cfg.classifier.max_nodules, count_fn,
                        cfg.data.size, cfg.data.hu_min, cfg.data.hu_max)
    if any(b.streamed for b in bases):
        return streamed_paired_dataset(bases, recipe, cfg.classifier.loader_workers, positive, negative)
    units, labels, ids, dropped = [], [], [], []
    for b in bases:
        pos = None
        if positive(b):
            try:
                pos = recipe.unit(b, 1)
            except CTSGANError:
                # A lung too small for this size cannot give a positive; drop its clean twin too, so the paired
                # design stays balanced. The count is reported with the cell's results.
                dropped.append(b.id)
                continue
        if negative(b):
            units.append(recipe.unit(b, 0))
            labels.append(0)
            ids.append(b.id)
        if pos is not None:
            units.append(pos)
            labels.append(1)
            ids.append(f"{b.id}+nod")
    ds = ClassifierDataset(units, labels, ids)
    ds.dropped_ids = dropped
    return ds


def item_kinds(ds, roles: dict[str, str]) -> list[str]:
    """The kind of every item of ``ds`` (one of :data:`KINDS`): native or injected positive, erased or clean negative.

    ``roles`` maps base ids to roles; a base without one (paired design) is *injected* as a positive, *clean* as a
    negative.
    """
    out = []
    for rid, y in zip(ds.ids, ds.labels):
        role = roles.get(rid[:-4] if rid.endswith("+nod") else rid, "")
        out.append((NATIVE if role == NATIVE else INJECTED) if int(y) else (ERASED if role == ERASED else CLEAN))
    return out


def kind_counts(ds, roles: dict[str, str]) -> dict[str, int]:
    """How many items of each kind ``ds`` holds (the design check recorded in every result line)."""
    kinds = item_kinds(ds, roles)
    return {k: kinds.count(k) for k in KINDS}


def scarce_subset(bases: Sequence[BaseVolume], fraction: float) -> list[BaseVolume]:
    """``fraction`` of the training bases, per role (so the four kinds keep their shares), at least one per role.

    The subset is fixed (not drawn by the cell's seed) and nested: a smaller fraction is a subset of a larger one.
    """
    if fraction >= 1.0:
        return list(bases)
    keep = set()
    for role in sorted({b.role for b in bases}):
        group = sorted((b for b in bases if b.role == role), key=lambda b: b.id)
        order = cell_rng("scarcity", role).permutation(len(group))
        keep |= {group[i].id for i in order[: max(1, int(round(fraction * len(group))))]}
    return [b for b in bases if b.id in keep]


@dataclass
class CellData:
    """The datasets of one (size, seed) cell, shared by its three regimes."""

    train: ClassifierDataset | StreamedPairedDataset
    val: ClassifierDataset | StreamedPairedDataset
    test: ClassifierDataset | StreamedPairedDataset
    synthetic: ClassifierDataset | StreamedPairedDataset | None
    dropped: dict[str, int] = field(default_factory=dict)   # bases whose lung cannot hold a nodule of this size
    roles: dict[str, str] = field(default_factory=dict)     # base id -> role (paper design; empty when paired)
    native_mm: dict[str, float] = field(default_factory=dict)   # native positive id -> its largest nodule (mm)
    design: str = "paired"
    nodule_count: str = "lidc"                              # where injected counts came from (never a silent fallback)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split (and the synthetic set) the number of native / injected positives and erased / clean
        negatives."""
        sets = {"train": self.train, "val": self.val, "test": self.test, "synthetic": self.synthetic}
        return {k: kind_counts(v, self.roles) for k, v in sets.items() if v is not None}


def build_cell_data(real: BaseSet, synthetic: BaseSet | None, diameter_vox: float, seed: int, injector,
                    cfg: Config, real_fraction: float = 1.0) -> CellData:
    """The datasets of cell (``diameter_vox``, ``seed``) in the design ``cfg.classifier.design``, classes checked.

    ``paper``: every real volume once in its role (``real`` from :func:`load_real_cohort`), positives = native +
    injected, negatives = erased + clean; the test split is balanced by dropping majority-class items with a fixed
    draw (the seed never changes which negatives are used). ``paired``: see :func:`paired_dataset`. Validation and
    test are always real. ``real_fraction`` < 1 keeps that share of the real training volumes
    (:func:`scarce_subset`; the data-scarcity curve).

    Raises
    ------
    CTSGANError
        A split with an empty class, a test set that cannot be balanced, or paper-design bases without roles.
    """
    design = cfg.classifier.design
    count_fn = nodule_count_fn()
    if design == "paper":
        missing = [v.id for v in real.volumes if v.role not in KINDS]
        if missing:
            raise CTSGANError(f"{real.origin}: classifier.design 'paper' needs the debiased cohort's roles "
                              f"(load_real_cohort); {len(missing)} volume(s) have none, e.g. {missing[0]!r}")
        pos, neg = (lambda b: b.role in POSITIVE_ROLES), (lambda b: b.role in NEGATIVE_ROLES)
        what = "volumes"
    else:
        pos = neg = None
        what = "nodule-free bases"
    sets = {}
    for split in SPLITS:
        bases = real.split(split)
        if split == "train" and cfg.classifier.n_real_train > 0:
            if design == "paper":   # stratified by kind: the first N in cohort order could be a single domain
                bases = scarce_subset(bases, min(1.0, cfg.classifier.n_real_train / max(1, len(bases))))
            else:
                bases = bases[: cfg.classifier.n_real_train]  # paired: first N bases in cohort order, every cell alike
        if split == "train":
            bases = scarce_subset(bases, real_fraction)
        sets[split] = paired_dataset(bases, diameter_vox, seed, injector, cfg, count_fn, pos, neg)
        check_classes(sets[split].labels, f"{real.origin}: split {split!r} ({what}: {len(real.split(split))})")
    # paper design: a fixed draw, so the seed changes placements and counts but never the test negatives
    balance_rng = cell_rng(0, "balance") if design == "paper" else cell_rng(seed, "balance")
    keep = balanced_indices(sets["test"].labels, balance_rng, f"{real.origin}: split 'test'")
    test = sets["test"].subset(keep)
    syn = None
    if synthetic is not None:
        if design == "paper" and any(v.role not in (INJECTED, CLEAN) for v in synthetic.volumes):
            raise CTSGANError(f"{synthetic.origin}: classifier.design 'paper' needs the synthetic cohort's injected "
                              f"and untouched halves (load_synthetic_cohort)")
        syn = paired_dataset(synthetic.volumes, diameter_vox, seed, injector, cfg, count_fn, pos, neg)
        check_classes(syn.labels, f"{synthetic.origin}: synthetic training set")
    dropped = {k: len(v.dropped_ids) for k, v in {**sets, "synthetic": syn}.items() if v is not None}
    roles = {v.id: v.role for v in real.volumes + (synthetic.volumes if synthetic is not None else []) if v.role}
    native_mm = {v.id: v.native_mm for v in real.volumes if v.role == NATIVE}
    return CellData(sets["train"], sets["val"], test, syn, dropped, roles, native_mm, design,
                    getattr(count_fn, "source", type(count_fn).__name__))
