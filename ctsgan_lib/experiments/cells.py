"""Cell data of the nodule-detection study (stage 06): nodule-free base volumes and the paired datasets of a cell.

How a cell's data are made (paper §3, §4.2; the study as a whole is described in :mod:`ctsgan_lib.experiments`):
each nodule-free base volume appears twice, once as it is (label 0) and once with nodules of the cell's size injected
(label 1), so every split is exactly balanced and nothing but the nodule separates the classes. The number of nodules
in a positive volume is drawn from the LIDC per-scan distribution (capped at ``max_nodules``); the seed sets it, the
nodule locations and the classifier's initialisation.
"""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..config import Config
from ..data.cohort import SPLITS, Cohort
from ..data.intensity import hu_to_unit
from ..data.lidc import sample_nodule_count
from ..errors import CTSGANError, InputFileError, MissingInputError
from ..eval.classification import balanced_indices, check_classes
from ..nodules.geometry import lung_of
from ..nodules.inference import NoduleInjector
from ..train.classifier_loop import ClassifierDataset
from ..utils.atomic import file_sha256
from ..utils.checkpoint import latest_checkpoint


@dataclass
class BaseVolume:
    """A nodule-free volume that a cell injects into (or keeps clean)."""

    id: str
    hu: np.ndarray                      # int16 HU (z, y, x): half the memory of float32, exact for HU
    domain: str = ""
    split: str = ""
    source: str = ""
    lung: np.ndarray | None = None      # bool lung mask, or None (the injector then computes one)
    lung_fallback: bool = False         # True when no usable lung mask was found (central box used instead)


@dataclass
class BaseSet:
    """Nodule-free base volumes of one data source, with where they came from."""

    volumes: list[BaseVolume]
    origin: str                         # folder (or description) they were read from
    sources: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[BaseVolume]:
        return [v for v in self.volumes if v.split == name]


MIN_LUNG_VOXELS = 64  # below this a lung mask cannot host even a few small nodules


def central_mask(shape: Sequence[int]) -> np.ndarray:
    """The central half-size box: where nodules go when a volume has no usable lung mask."""
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(n // 4, n - n // 4) for n in shape)] = True
    return m


def _lung(hu: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Lung mask (phantom label when there is one, else the classical mask) and whether it fell back.

    A barely trained generator (smoke profile) can produce volumes without lungs; they get the central box so the
    grid still runs, and the number of such volumes is reported with every result.
    """
    lung = np.asarray(lung_of(hu, label), dtype=bool)
    if lung.sum() < MIN_LUNG_VOXELS:
        return central_mask(hu.shape), True
    return lung, False


def _read_bases(root: Path, ids: Sequence[str], size: int, progress: bool, desc: str) -> list[BaseVolume]:
    c = Cohort(root)
    out = []
    for rid in tqdm(ids, desc=desc, disable=not progress, leave=False):
        row = c.row(rid)
        hu, _ = c.read(rid)
        if hu.shape != (size, size, size):
            raise InputFileError(c.path(rid), f"volume shape {hu.shape} is not the profile's {size}³ "
                                              f"(data.size={size}); rebuild the cohort for this profile")
        lung, fallback = _lung(hu, c.read_label(rid))
        out.append(BaseVolume(rid, np.clip(np.rint(hu), -32768, 32767).astype(np.int16), str(row["domain"]),
                              str(row["split"]), str(row["source"]), lung, fallback))
    return out


def real_base_root(cfg: Config) -> Path:
    """The debiased cohort when it exists, else the prepared cohort."""
    for name in ("debiased", "cohort"):
        if (cfg.data_dir / name / "manifest.csv").is_file():
            return cfg.data_dir / name
    raise MissingInputError(f"missing input {cfg.data_dir / 'debiased'} (and {cfg.data_dir / 'cohort'}): run "
                            f"02_nodule_gans.ipynb (or `ctsgan nodules`) first")


def load_real_base(cfg: Config, root: str | Path | None = None, progress: bool = True) -> BaseSet:
    """Nodule-free volumes of the real (debiased) cohort, all splits."""
    root = Path(root) if root is not None else real_base_root(cfg)
    c = Cohort(root)
    ids = c.ids(has_nodule=0)
    if not ids:
        raise InputFileError(root / "manifest.csv", "no nodule-free volumes (has_nodule=0): nothing to inject into")
    vols = _read_bases(root, ids, cfg.data.size, progress, "real base")
    return BaseSet(vols, str(root), sorted({v.source for v in vols}))


def load_synthetic_base(cfg: Config, root: str | Path | None = None, progress: bool = True) -> BaseSet:
    """Nodule-free volumes of the CT-SGAN synthetic cohort (first ``n_synthetic // 2`` by id)."""
    root = Path(root) if root is not None else cfg.data_dir / "synthetic" / "ctsgan"
    if not (root / "manifest.csv").is_file():
        raise MissingInputError(f"missing input {root}: run 04_synthetic_cohort.ipynb (or `ctsgan generate`) first")
    c = Cohort(root)
    ids = c.ids(has_nodule=0)[: max(1, cfg.classifier.n_synthetic // 2)]
    if not ids:
        raise InputFileError(root / "manifest.csv", "no nodule-free synthetic volumes (has_nodule=0)")
    vols = _read_bases(root, ids, cfg.data.size, progress, "synthetic base")
    for v in vols:
        v.split = "train"  # synthetic volumes only ever train (validation and test stay real)
    return BaseSet(vols, str(root), sorted({v.source for v in vols}))


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


def nodule_count_fn() -> Callable[[np.random.Generator], int]:
    try:
        sample_nodule_count(np.random.default_rng(0))  # the LIDC table may be missing: fall back below
        return lambda rng: int(sample_nodule_count(rng, at_least_one=True))
    except Exception:  # noqa: BLE001 - no LIDC statistics available: one nodule per positive volume
        return lambda rng: 1


def cell_rng(*keys: Any) -> np.random.Generator:
    """Seeded RNG from a tuple of keys (strings hashed): independent of order and of skipped items."""
    return np.random.default_rng([zlib.crc32(str(k).encode()) if not isinstance(k, int) else k for k in keys])


def inject_volume(base: BaseVolume, diameter_vox: float, seed: int, injector, max_nodules: int,
                  count_fn: Callable[[np.random.Generator], int]) -> tuple[np.ndarray, list[dict]]:
    """The base with nodules of ``diameter_vox`` injected; count and places depend on (seed, id, size) only."""
    rng = cell_rng(int(seed), base.id, f"{float(diameter_vox):g}")
    n = max(1, min(int(count_fn(rng)), int(max_nodules)))
    hu = base.hu.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a placement shortfall (fewer nodules than drawn) is fine: >= 1 is checked
        new, nods = injector.inject(hu, [float(diameter_vox)] * n, rng, lung=base.lung)
    if not nods:
        raise CTSGANError(f"{base.id}: no nodule of {diameter_vox:g} vox fits in its lung mask; the volume cannot "
                          f"serve as a positive")
    return new, nods


def paired_dataset(bases: Sequence[BaseVolume], diameter_vox: float, seed: int, injector, cfg: Config,
                   count_fn: Callable | None = None, positive: Callable[[BaseVolume], bool] | None = None,
                   negative: Callable[[BaseVolume], bool] | None = None) -> ClassifierDataset:
    """Float16 [0, 1] dataset from bases: each base clean (label 0) and/or injected (label 1).

    ``positive``/``negative`` choose which bases appear in each role (default: every base in both, the paired design).
    """
    count_fn = count_fn or nodule_count_fn()
    positive = positive or (lambda b: True)
    negative = negative or (lambda b: True)
    hu_min, hu_max = cfg.data.hu_min, cfg.data.hu_max
    units, labels, ids, dropped = [], [], [], []
    for b in bases:
        pos = None
        if positive(b):
            try:
                pos, _ = inject_volume(b, diameter_vox, seed, injector, cfg.classifier.max_nodules, count_fn)
            except CTSGANError:
                # A lung too small for this size cannot give a positive; drop its clean twin too, so the paired
                # design stays balanced. The count is reported with the cell's results.
                dropped.append(b.id)
                continue
        if negative(b):
            units.append(hu_to_unit(b.hu.astype(np.float32), hu_min, hu_max).astype(np.float16))
            labels.append(0)
            ids.append(b.id)
        if pos is not None:
            units.append(hu_to_unit(pos, hu_min, hu_max).astype(np.float16))
            labels.append(1)
            ids.append(f"{b.id}+nod")
    ds = ClassifierDataset(units, labels, ids)
    ds.dropped_ids = dropped
    return ds


@dataclass
class CellData:
    """The datasets of one (size, seed) cell, shared by its three regimes."""

    train: ClassifierDataset
    val: ClassifierDataset
    test: ClassifierDataset
    synthetic: ClassifierDataset | None
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
