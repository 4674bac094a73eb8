"""Cell data of the nodule-detection study (stage 06): nodule-free base volumes and the paired datasets of a cell.

How a cell's data are made (paper §3, §4.2; the study as a whole is described in :mod:`ctsgan_lib.experiments`):
each nodule-free base volume appears twice, once as it is (label 0) and once with nodules of the cell's size injected
(label 1), so every split is exactly balanced and nothing but the nodule separates the classes. The number of nodules
in a positive volume is drawn from the LIDC per-scan distribution (capped at ``max_nodules``); the seed sets it, the
nodule locations and the classifier's initialisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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
from .streamed import (MIN_LUNG_VOXELS, BaseVolume, ItemRecipe, StreamedPairedDataset, central_mask, cell_rng,
                       inject_volume, make_base, nodule_count_fn, scan_bases, should_stream, streamed_paired_dataset)


@dataclass
class BaseSet:
    """Nodule-free base volumes of one data source, with where they came from."""

    volumes: list[BaseVolume]
    origin: str                         # folder (or description) they were read from
    sources: list[str] = field(default_factory=list)

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


@dataclass
class CellData:
    """The datasets of one (size, seed) cell, shared by its three regimes."""

    train: ClassifierDataset | StreamedPairedDataset
    val: ClassifierDataset | StreamedPairedDataset
    test: ClassifierDataset | StreamedPairedDataset
    synthetic: ClassifierDataset | StreamedPairedDataset | None
    dropped: dict[str, int] = field(default_factory=dict)   # bases whose lung cannot hold a nodule of this size


def build_cell_data(real: BaseSet, synthetic: BaseSet | None, diameter_vox: float, seed: int, injector,
                    cfg: Config) -> CellData:
    """Inject nodules of ``diameter_vox`` into the bases of every split (and the synthetic bases), checking classes.

    Raises
    ------
    CTSGANError
        A split with an empty class, or a test set that cannot be balanced.
    """
    count_fn = nodule_count_fn()
    sets = {}
    for split in SPLITS:
        bases = real.split(split)
        if split == "train" and cfg.classifier.n_real_train > 0:
            bases = bases[: cfg.classifier.n_real_train]  # the scarce-real-data setting: first N in cohort order, every cell alike
        sets[split] = paired_dataset(bases, diameter_vox, seed, injector, cfg, count_fn)
        check_classes(sets[split].labels, f"{real.origin}: split {split!r} (nodule-free bases: "
                                          f"{len(real.split(split))})")
    keep = balanced_indices(sets["test"].labels, cell_rng(seed, "balance"), f"{real.origin}: split 'test'")
    test = sets["test"].subset(keep)
    syn = None
    if synthetic is not None:
        syn = paired_dataset(synthetic.volumes, diameter_vox, seed, injector, cfg, count_fn)
        check_classes(syn.labels, f"{synthetic.origin}: synthetic training set")
    dropped = {k: len(v.dropped_ids) for k, v in {**sets, "synthetic": syn}.items() if v is not None}
    return CellData(sets["train"], sets["val"], test, syn, dropped)
