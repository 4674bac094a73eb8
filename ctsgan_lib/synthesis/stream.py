"""Synthetic volumes straight from the generator, nothing stored (beyond the paper; issue 22).

:class:`GeneratorSource` gives volume ``syn-<index>`` of a run exactly as :func:`~.synthetic_cohort.generate_cohort`
would have stored it (generated in the same aligned block of ``batch`` volumes, rounded and clipped to int16 as the
cohort writer does), so a classifier fed from it sees the stored cohort's nodule-free volumes without 225 GB of disk.
Which volumes are nodule-free comes from the same plan (:func:`~.synthetic_cohort.plan_volumes`): the volumes the
plan does not inject. (A stored cohort also leaves a planned volume nodule-free when its lungs fail the sanity check;
the stream does not know that without generating every volume, so the two agree exactly when ``inject_fraction`` is 0
or no planned volume was flagged.)

Each item is a pure function of (checkpoint, seed, index, batch, device); the same block of volumes is generated
again whenever one of its volumes is asked for, and the last block is kept per process, so ``generate.batch`` 1 is
the cheapest setting for streaming.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .sampling import generate_gan3d_volumes, generate_volumes, load_generator
from .synthetic_cohort import plan_volumes, volume_id


class GeneratorSource:
    """Volumes of a generator run, made on demand (picklable: the generator is loaded lazily in each process).

    Parameters
    ----------
    checkpoint : path
        CT-SGAN (or 3D GAN) checkpoint.
    n, seed, batch, inject_fraction : as in :func:`~.synthetic_cohort.generate_cohort` (``generate.*`` of the profile).
    device : str
        Where the generator runs ("cpu" in DataLoader workers; CUDA only in the trainer's process).
    """

    def __init__(self, checkpoint: str | Path, n: int, seed: int, batch: int, inject_fraction: float,
                 device: str = "cpu"):
        self.checkpoint, self.n, self.seed = str(checkpoint), int(n), int(seed)
        self.batch, self.inject_fraction, self.device = int(batch), float(inject_fraction), str(device)
        self._gen = None
        self._block: tuple[int, list[np.ndarray]] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_gen": None, "_block": None}

    @property
    def origin(self) -> str:
        return f"generator:{self.checkpoint}#seed={self.seed},n={self.n},batch={self.batch}"

    def nodule_free_ids(self) -> list[str]:
        """Ids the plan leaves without nodules, in index order (= the stored cohort's ``has_nodule == 0`` order)."""
        plans = plan_volumes(self.n, self.seed, self.inject_fraction)
        return [volume_id(p.index) for p in plans if not p.inject]

    def _generator(self):
        if self._gen is None:
            self._gen = load_generator(self.checkpoint, self.device)
        return self._gen

    def read(self, rid: str) -> tuple[np.ndarray, None]:
        """(hu float32 (z, y, x) as the cohort stores and reads it back, no label) of volume ``rid``."""
        index = int(rid.rsplit("-", 1)[1])
        start = (index // self.batch) * self.batch
        if self._block is None or self._block[0] != start:
            gen = self._generator()
            fn = generate_volumes if gen.meta["kind"] == "ctsgan" else generate_gan3d_volumes
            stop = min(start + self.batch, self.n)
            with torch.inference_mode():   # the whole aligned block: the same Gslice batches as the stored run
                vols = [hu for hu, _ in fn(gen, stop - start, self.seed, batch=self.batch, device=self.device,
                                           start=start)]
            self._block = (start, vols)
        hu = self._block[1][index - start]
        info = np.iinfo(np.int16)   # what write_nifti stores
        return np.clip(np.rint(hu), info.min, info.max).astype(np.int16).astype(np.float32), None
