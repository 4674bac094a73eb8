"""Training volumes held in memory in model space ([-1, 1]), plus slab sampling (paper §2: "sampling from the slab
regions").

The whole training cohort is read once (900 × 224³ at paper scale is 20 GiB as float16; 32³/64³ cohorts are tiny).
Volumes are kept as float16 model-space arrays: 1400 HU over 2 units gives a resolution below 1 HU, far finer than the
data needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.intensity import hu_to_model
from ..errors import CTSGANError, InputFileError, MissingInputError


def training_cohort_dir(cfg) -> Path:
    """The CT-SGAN training set: ``data/<P>/nodule_free`` (notebook 02) if present, else ``data/<P>/cohort``."""
    nf = cfg.data_dir / "nodule_free"
    if (nf / "manifest.csv").is_file():
        return nf
    return cfg.data_dir / "cohort"


class VolumeDataset:
    """Volumes (N, S, S, S) in model space, in memory, with their spacing.

    Parameters
    ----------
    volumes_hu : array (N, S, S, S) float HU, optional
        In-memory volumes (tests, synthetic data). Exactly one of ``volumes_hu`` / ``cohort_dir`` is given.
    cohort_dir : path, optional
        A cohort folder (``ctsgan_lib.data.cohort`` format). Read with ``split="train"``; for the full cohort only
        nodule-free scans (``has_nodule == 0``) are used, since CT-SGAN generates nodule-free volumes (paper §3.1).
    hu_min, hu_max : float
        Model window (``cfg.data``).
    spacing_mm : sequence of 3 floats
        Spacing for in-memory volumes (default 1 mm).
    size : int, optional
        Expected side S; volumes of another shape are refused with a message naming the file.
    progress : bool
        Progress bar while reading.
    with_nodules : bool
        Read every training scan of ``cohort_dir``, with and without nodules, and keep each one's manifest
        ``nodules`` list in ``.nodules`` (the conditional CT-SGAN's training set; issue 26).
    """

    def __init__(self, volumes_hu: np.ndarray | None = None, cohort_dir: str | Path | None = None, *,
                 hu_min: float = -1000.0, hu_max: float = 400.0, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
                 size: int | None = None, progress: bool = False, with_nodules: bool = False):
        if (volumes_hu is None) == (cohort_dir is None):
            raise ValueError("give exactly one of volumes_hu or cohort_dir")
        self.hu_min, self.hu_max = float(hu_min), float(hu_max)
        if volumes_hu is not None:
            arr = np.asarray(volumes_hu, dtype=np.float32)
            if arr.ndim != 4 or not (arr.shape[1] == arr.shape[2] == arr.shape[3]):
                raise CTSGANError(f"in-memory volumes must be (N, S, S, S), got {arr.shape}")
            if not np.isfinite(arr).all():
                raise CTSGANError("in-memory volumes contain NaN or Inf")
            self.data = torch.from_numpy(hu_to_model(arr, self.hu_min, self.hu_max).astype(np.float16))
            self.spacings_mm = np.tile(np.asarray(spacing_mm, dtype=np.float64), (len(arr), 1))
            self.ids = [f"mem{i:04d}" for i in range(len(arr))]
            self.source = "in-memory"
            self.nodules: list[list[dict]] | None = None
        else:
            self._read_cohort(Path(cohort_dir), size, progress, with_nodules)
        if size is not None and self.size != size:
            raise CTSGANError(f"{self.source}: volumes are {self.size}³ but the profile expects {size}³")
        if len(self) == 0:
            raise CTSGANError(f"{self.source}: no training volumes")

    def _read_cohort(self, root: Path, size: int | None, progress: bool, with_nodules: bool = False) -> None:
        if not (root / "manifest.csv").is_file():
            raise MissingInputError(f"missing input {root}: run 01_data_preparation.ipynb (or `ctsgan prepare`) "
                                    f"first")
        # not at the top: data.cohort loads pandas, +30 MiB in the memory bench worker's measured baseline RSS
        from ..data.cohort import Cohort

        cohort = Cohort(root)
        if with_nodules:
            ids = cohort.ids(split="train")
        else:
            ids = cohort.ids(split="train") if root.name == "nodule_free" else cohort.ids(split="train", has_nodule=0)
        if not ids:
            raise CTSGANError(f"{root}: no {'' if with_nodules else 'nodule-free '}training scans in the manifest")
        arrays, spacings = [], []
        for vid in tqdm(ids, desc=f"reading {root.name}", disable=not progress, leave=False):
            hu, spacing = cohort.read(vid)
            hu = np.asarray(hu, dtype=np.float32)
            if hu.ndim != 3 or len(set(hu.shape)) != 1 or (size is not None and hu.shape[0] != size):
                raise InputFileError(root / "volumes" / vid, f"volume shape {hu.shape}, expected "
                                     f"{(size,) * 3 if size else 'a cube'}")
            if not np.isfinite(hu).all():
                raise InputFileError(root / "volumes" / vid, "volume contains NaN or Inf")
            arrays.append(hu_to_model(hu, self.hu_min, self.hu_max).astype(np.float16))
            spacings.append(np.asarray(spacing, dtype=np.float64))
        self.data = torch.from_numpy(np.stack(arrays))
        self.spacings_mm = np.stack(spacings)
        self.ids = list(ids)
        self.source = str(root)
        self.nodules = [list(cohort.row(vid)["nodules"]) for vid in ids] if with_nodules else None

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def size(self) -> int:
        """S."""
        return int(self.data.shape[1])

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Median spacing over the cohort (carried into checkpoints and generated volumes)."""
        return tuple(float(v) for v in np.median(self.spacings_mm, axis=0))

    def slab_windows(self, index: torch.Tensor, start: torch.Tensor, slab_len: int) -> torch.Tensor:
        """Real slices ``start .. start + slab_len + 1`` of each chosen volume: (B, T + 2, S, S) float32.

        A slab of T 3D slices starting at position j covers volume slices j .. j + T + 1 (each 3D slice j + k is
        slices j + k .. j + k + 2; its centre is slice j + k + 1).
        """
        rows = [self.data[int(i), int(s):int(s) + slab_len + 2] for i, s in zip(index, start)]
        return torch.stack(rows).float()

    def volumes(self, index: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Whole volumes (B, 1, S, S, S) float32, optionally resized trilinearly to ``size`` (3D GAN baseline)."""
        x = self.data[index.long()].float()[:, None]
        if size is not None and size != self.size:
            x = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)
        return x

    def resized(self, size: int) -> "VolumeDataset":
        """A copy resized once to ``size``³ (so the 3D GAN does not interpolate every step)."""
        out = object.__new__(VolumeDataset)
        out.__dict__.update(self.__dict__)
        chunks = [self.volumes(torch.arange(i, min(i + 8, len(self))), size)[:, 0].half()
                  for i in range(0, len(self), 8)]
        out.data = torch.cat(chunks)
        scale = self.size / size
        out.spacings_mm = self.spacings_mm * scale
        return out


def training_dataset(cfg, cohort_dir: str | Path | None = None, volumes_hu: np.ndarray | None = None,
                     spacing_mm: Sequence[float] = (1.0, 1.0, 1.0), progress: bool = False,
                     with_nodules: bool = False) -> VolumeDataset:
    """The GAN training set of a run: ``volumes_hu`` in memory when given, else the cohort ``cohort_dir``
    (default :func:`training_cohort_dir`), in ``cfg.data``'s HU window and size; ``with_nodules`` as in
    :class:`VolumeDataset`."""
    if volumes_hu is not None:
        return VolumeDataset(volumes_hu, hu_min=cfg.data.hu_min, hu_max=cfg.data.hu_max, spacing_mm=spacing_mm,
                             size=cfg.data.size)
    return VolumeDataset(cohort_dir=cohort_dir or training_cohort_dir(cfg), hu_min=cfg.data.hu_min,
                         hu_max=cfg.data.hu_max, size=cfg.data.size, progress=progress, with_nodules=with_nodules)


def sample_slab_batch(n_volumes: int, batch: int, size: int, slab_len: int, n_slices: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw (from the global torch RNG) volume indices, slab starts and N slice offsets inside each slab.

    Returns
    -------
    index : (B,) long
        Volume index per sample.
    start : (B,) long
        First 3D-slice position of the slab, in [0, S − 2 − T].
    offsets : (B, N) long
        N distinct offsets in [0, T) of the slices judged by Dslice.
    """
    index = torch.randint(0, n_volumes, (batch,))
    start = torch.randint(0, size - 2 - slab_len + 1, (batch,))
    offsets = torch.rand(batch, slab_len).argsort(dim=1)[:, :n_slices]
    return index, start, offsets


__all__ = ["VolumeDataset", "training_cohort_dir", "training_dataset", "sample_slab_batch"]
