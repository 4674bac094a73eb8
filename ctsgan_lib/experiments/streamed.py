"""One item of a cell's data, made on demand: base volumes, nodule injection, and the streamed cell dataset.

Everything random about an item (the nodule count, the places, the injector's draws) comes from
:func:`cell_rng` ``(seed, id, size)`` alone, so an item is the same whether it is made once and held in memory
(:func:`ctsgan_lib.experiments.cells.paired_dataset` with loaded bases) or made again every time a DataLoader worker
asks for it (:class:`StreamedPairedDataset`, bases that are only references to a cohort on disk). Which of the two a
grid uses is decided in one place, :func:`should_stream`, by the estimated size of the in-memory data
(``classifier.stream_threshold_gib``). The streamed path keeps the peak memory of a cell flat in the number of
volumes (``benchmarks/classifier_rss.py``); the in-memory path is faster for small profiles.
"""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Config
from ..data.cohort import Cohort
from ..data.intensity import hu_to_unit
from ..data.lidc import sample_nodule_count
from ..errors import CTSGANError, InputFileError
from ..nodules.geometry import lung_of

MIN_LUNG_VOXELS = 64  # below this a lung mask cannot host even a few small nodules
#: Roles of a base in the paper design (Fig 3a): a real nodule kept (positive, never injected), a nodule-free volume
#: that gets injected nodules of the cell's size (positive), a volume whose nodules were erased (negative), a volume
#: that never had nodules (negative). The paired design leaves ``role`` empty (every base clean and injected).
NATIVE, INJECTED, ERASED, CLEAN = "native", "injected", "erased", "clean"
POSITIVE_ROLES, NEGATIVE_ROLES = (NATIVE, INJECTED), (ERASED, CLEAN)
#: bytes per voxel and base that the in-memory path holds: int16 base + bool lung mask + two float16 items (clean and
#: injected twin)
IN_MEMORY_BYTES_PER_VOXEL = 2 + 1 + 2 * 2


@dataclass
class BaseVolume:
    """A volume of a cell: nodule-free and used clean and injected (paired design), or one of the four ``role`` s of
    the paper design (a native positive carries its own real nodules and is never injected).

    ``hu is None`` marks a *streamed* base: only a reference to ``root`` (its cohort folder); the volume and its lung
    mask are read when an item needs them (:func:`materialize`).
    """

    id: str
    hu: np.ndarray | None               # int16 HU (z, y, x): half the memory of float32, exact for HU
    domain: str = ""
    split: str = ""
    source: str = ""
    lung: np.ndarray | None = None      # bool lung mask, or None (the injector then computes one)
    lung_fallback: bool = False         # True when no usable lung mask was found (central box used instead)
    root: str = ""                      # cohort folder of a streamed base (empty for loaded ones)
    maker: Any = None                   # or what makes it: ``maker.read(id) -> (hu, label)`` (synthesis.GeneratorSource)
    role: str = ""                      # paper design: NATIVE / INJECTED / ERASED / CLEAN; paired design: ""
    native_mm: float = 0.0              # a native positive: diameter (mm) of its largest own nodule (size bins)

    @property
    def streamed(self) -> bool:
        return self.hu is None


def central_mask(shape: Sequence[int]) -> np.ndarray:
    """The central half-size box: where nodules go when a volume has no usable lung mask."""
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(n // 4, n - n // 4) for n in shape)] = True
    return m


def lung_or_box(hu: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Lung mask (phantom label when there is one, else the classical mask) and whether it fell back.

    A barely trained generator (smoke profile) can produce volumes without lungs; they get the central box so the
    grid still runs, and the number of such volumes is reported with every result.
    """
    lung = np.asarray(lung_of(hu, label), dtype=bool)
    if lung.sum() < MIN_LUNG_VOXELS:
        return central_mask(hu.shape), True
    return lung, False


def make_base(rid: str, hu: np.ndarray, label: np.ndarray | None, size: int, where: Any, domain: str, split: str,
              source: str, keep: bool = True, root: str = "", maker: Any = None, with_lung: bool = True
              ) -> BaseVolume:
    """A base from its HU volume (and phantom label): int16 volume and lung mask, or (``keep=False``) a streamed
    reference that keeps only the lung fallback flag. ``where`` names the volume in the shape error.
    ``with_lung=False`` skips the lung mask (a clean item needs only the volume)."""
    if hu.shape != (size, size, size):
        raise InputFileError(where, f"volume shape {hu.shape} is not the profile's {size}³ "
                                    f"(data.size={size}); rebuild the cohort for this profile")
    lung, fallback = lung_or_box(hu, label) if with_lung else (None, False)
    hu16 = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    if not keep:
        return BaseVolume(rid, None, domain, split, source, None, fallback, root, maker)
    return BaseVolume(rid, hu16, domain, split, source, lung, fallback)


def read_base(cohort: Cohort, rid: str, size: int, keep: bool = True) -> BaseVolume:
    """The base volume ``rid`` of ``cohort``, checked to be ``size``³; ``keep=False`` returns a streamed reference
    (volume and mask dropped, the lung fallback flag kept)."""
    row = cohort.row(rid)
    hu, _ = cohort.read(rid)
    return make_base(rid, hu, cohort.read_label(rid), size, cohort.path(rid), str(row["domain"]), str(row["split"]),
                     str(row["source"]), keep, "" if keep else str(cohort.root))


_COHORTS: dict[str, Cohort] = {}  # per process (each DataLoader worker): the manifest is parsed once, not per item


def materialize(base: BaseVolume, size: int, with_lung: bool = True) -> BaseVolume:
    """``base`` with its volume and (``with_lung``) lung mask in memory, read from its cohort or made by its maker
    when it is a streamed reference."""
    if not base.streamed:
        return base
    if base.maker is not None:
        hu, label = base.maker.read(base.id)
        where = base.maker.origin
    else:
        cohort = _COHORTS.get(base.root)
        if cohort is None:
            cohort = _COHORTS[base.root] = Cohort(base.root)
        hu, _ = cohort.read(base.id)
        label = cohort.read_label(base.id) if with_lung else None
        where = cohort.path(base.id)
    # the caller's split (synthetic bases only ever train) and role win
    out = make_base(base.id, hu, label, size, where, base.domain, base.split, base.source, with_lung=with_lung)
    out.role, out.native_mm = base.role, base.native_mm
    return out


def should_stream(cfg: Config, n_bases: int) -> bool:
    """True when ``n_bases`` base volumes held in memory (with their lung masks and both twins of every item) would
    exceed ``classifier.stream_threshold_gib``; 0 always streams. The one place the data path is chosen."""
    limit = float(cfg.classifier.stream_threshold_gib)
    need = int(n_bases) * cfg.data.size ** 3 * IN_MEMORY_BYTES_PER_VOXEL
    return limit == 0 or need > limit * 2 ** 30


def cell_rng(*keys: Any) -> np.random.Generator:
    """Seeded RNG from a tuple of keys (strings hashed): independent of order and of skipped items."""
    return np.random.default_rng([zlib.crc32(str(k).encode()) if not isinstance(k, int) else k for k in keys])


class LidcNoduleCount:
    """Nodules per positive volume drawn from the LIDC per-scan distribution (picklable, for DataLoader workers)."""

    source = "lidc"

    def __call__(self, rng: np.random.Generator) -> int:
        return int(sample_nodule_count(rng, at_least_one=True))


class OneNodule:
    """One nodule per positive volume (no LIDC statistics available); ``source`` says why, for the result line."""

    def __init__(self, why: str = "requested"):
        self.source = f"one nodule per volume ({why})"

    def __call__(self, rng: np.random.Generator) -> int:
        return 1


def nodule_count_fn() -> Callable[[np.random.Generator], int]:
    """The LIDC per-scan count (paper §3.1); one nodule per volume only when the LIDC table cannot be read.

    The fallback is never silent: its ``source`` (with the reason) goes into every result line
    (``data.nodule_count``).
    """
    try:
        sample_nodule_count(np.random.default_rng(0))
        return LidcNoduleCount()
    except (OSError, KeyError, ValueError) as e:   # a missing or unreadable LIDC table; anything else is a bug: raise
        return OneNodule(f"LIDC count table unavailable: {type(e).__name__}: {e}")


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


@dataclass
class ItemRecipe:
    """How to make items of one cell: everything but the base and the label. Picklable (sent to workers)."""

    diameter_vox: float
    seed: int
    injector: Any
    max_nodules: int
    count_fn: Callable[[np.random.Generator], int]
    size: int
    hu_min: float
    hu_max: float

    def injects(self, base: BaseVolume, label: int) -> bool:
        """Whether the item gets injected nodules: every positive but a native one (its own nodules, paper design)."""
        return bool(label) and base.role != NATIVE

    def unit(self, base: BaseVolume, label: int) -> np.ndarray:
        """Float16 [0, 1] volume of ``base`` as it is (label 0, or a native positive) or injected (label 1): the
        in-memory item exactly."""
        if self.injects(base, label):
            hu, _ = inject_volume(base, self.diameter_vox, self.seed, self.injector, self.max_nodules, self.count_fn)
        else:
            hu = base.hu.astype(np.float32)
        return hu_to_unit(hu, self.hu_min, self.hu_max).astype(np.float16)

    def fits(self, base: BaseVolume) -> bool:
        """Whether a nodule of this size fits in the base's lung (the injection is made and thrown away)."""
        try:
            inject_volume(base, self.diameter_vox, self.seed, self.injector, self.max_nodules, self.count_fn)
        except CTSGANError:
            return False
        return True


class StreamedPairedDataset(Dataset):
    """A cell's paired dataset whose items are read, lung-masked, injected and normalised when asked for.

    Holds only (base reference, label) pairs: memory does not grow with the number of volumes. Items equal those of
    the in-memory :class:`~ctsgan_lib.train.classifier_loop.ClassifierDataset` built from the same bases, bit for bit.
    ``loader_workers`` tells the training loop how many DataLoader worker processes to make the items in.
    """

    def __init__(self, items: Sequence[tuple[BaseVolume, int]], recipe: ItemRecipe, loader_workers: int = 0,
                 dropped_ids: Sequence[str] = ()):
        self.items = list(items)
        self.recipe = recipe
        self.labels = np.asarray([lab for _, lab in self.items], dtype=np.int64)
        self.ids = [b.id + ("+nod" if lab else "") for b, lab in self.items]
        self.loader_workers = int(loader_workers)
        self.dropped_ids = list(dropped_ids)

    def __len__(self) -> int:
        return len(self.items)

    def unit(self, i: int) -> np.ndarray:
        base, label = self.items[i]
        # an item that is not injected needs only the volume: no lung mask (about 1 s a 224³ volume on one core)
        return self.recipe.unit(materialize(base, self.recipe.size, with_lung=self.recipe.injects(base, label)),
                                label)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.unit(i).astype(np.float32))[None], int(self.labels[i])

    def subset(self, idx) -> "StreamedPairedDataset":
        return StreamedPairedDataset([self.items[int(i)] for i in idx], self.recipe, self.loader_workers)

    def concat(self, other: "StreamedPairedDataset") -> "StreamedPairedDataset":
        if other.recipe != self.recipe:
            raise ValueError("cannot concatenate streamed datasets of different cells")
        return StreamedPairedDataset(self.items + other.items, self.recipe, self.loader_workers)

    @property
    def nbytes(self) -> int:
        return 0  # nothing held: items are made on demand


class _FitProbe(Dataset):
    """Which positive bases can hold a nodule of the cell's size (run once per cell, in DataLoader workers)."""

    def __init__(self, bases: Sequence[BaseVolume], recipe: ItemRecipe):
        self.bases, self.recipe = list(bases), recipe

    def __len__(self) -> int:
        return len(self.bases)

    def __getitem__(self, i: int) -> bool:
        return self.recipe.fits(materialize(self.bases[i], self.recipe.size))


def probe_fits(bases: Sequence[BaseVolume], recipe: ItemRecipe, workers: int) -> list[bool]:
    """``recipe.fits`` of every base, in ``workers`` DataLoader processes (0: in this one), in order."""
    if not bases:
        return []
    loader = torch.utils.data.DataLoader(_FitProbe(bases, recipe), batch_size=None, num_workers=int(workers))
    return [bool(ok) for ok in loader]


def streamed_paired_dataset(bases: Sequence[BaseVolume], recipe: ItemRecipe, loader_workers: int,
                            positive: Callable[[BaseVolume], bool], negative: Callable[[BaseVolume], bool]
                            ) -> StreamedPairedDataset:
    """The streamed twin of :func:`~ctsgan_lib.experiments.cells.paired_dataset`: same items, same order, same drops.

    A base whose lung cannot hold a nodule of the cell's size is dropped with its clean twin, as in memory; finding
    them costs one injection per positive base, once per cell (about one epoch of item making).
    """
    pos_bases = [b for b in bases if positive(b) and recipe.injects(b, 1)]
    fits = dict(zip([b.id for b in pos_bases], probe_fits(pos_bases, recipe, loader_workers)))
    items, dropped = [], []
    for b in bases:
        pos = positive(b)
        if pos and not fits.get(b.id, True):
            dropped.append(b.id)
            continue
        if negative(b):
            items.append((b, 0))
        if pos:
            items.append((b, 1))
    return StreamedPairedDataset(items, recipe, loader_workers, dropped)


def scan_bases(root: Path, ids: Sequence[str], size: int, keep: bool, progress_iter: Callable = iter
               ) -> list[BaseVolume]:
    """Read the bases ``ids`` of the cohort at ``root`` (``keep=False``: check each and keep a reference only)."""
    c = Cohort(root)
    return [read_base(c, rid, size, keep=keep) for rid in progress_iter(ids)]
