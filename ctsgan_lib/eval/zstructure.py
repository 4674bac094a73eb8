"""Does a generator give anatomy along z? Cheap statistics beside the coronal/sagittal views (issue [ctsgan]).

A slice-wise generator can produce good axial slices while repeating the same slice along z ("vertical bars" in
coronal and sagittal views). FID on axial slices does not see that. These numbers, computed on volumes in the model
range [-1, 1] (or any common window), do:

* ``z_std``: voxel standard deviation along z, averaged over voxels and volumes. Near 0 for a repeated slice; above
  the real value for slice-to-slice flicker.
* ``patient_std``: standard deviation across volumes at each voxel, averaged. Near 0 when every patient looks alike.
* ``profile_std``: standard deviation along z of each volume's per-slice mean (the craniocaudal intensity profile:
  lungs darken the chest, the liver dome brightens the base), averaged over volumes.
* ``profile_corr``: Pearson correlation between the mean profile of the volumes and that of a reference set (real
  volumes): whether the anatomy sits at the right z, not only whether it changes.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.intensity import hu_to_model
from ..errors import CTSGANError


def _as_batch(volumes, what: str) -> np.ndarray:
    v = np.asarray(volumes, dtype=np.float64)
    if v.ndim != 4 or v.shape[0] < 2 or v.shape[1] < 2:
        raise CTSGANError(f"{what}: expected at least 2 volumes of shape (z, y, x) with z >= 2, got {v.shape}")
    return v


def mean_profile(volumes) -> np.ndarray:
    """Mean over volumes of the per-slice mean: (Z,)."""
    return _as_batch(volumes, "volumes").mean(axis=(2, 3)).mean(axis=0)


def z_structure(volumes, reference=None) -> dict[str, float]:
    """The statistics above for a batch of volumes (N, Z, Y, X); ``profile_corr`` only with a ``reference`` batch
    of the same depth.

    Returns
    -------
    dict
        ``z_std``, ``patient_std``, ``profile_std`` and, with a reference, ``profile_corr``.
    """
    v = _as_batch(volumes, "volumes")
    prof = v.mean(axis=(2, 3))                                          # (N, Z)
    out = {"z_std": float(v.std(axis=1).mean()), "patient_std": float(v.std(axis=0).mean()),
           "profile_std": float(prof.std(axis=1).mean())}
    if reference is not None:
        ref = mean_profile(reference)
        if ref.shape[0] != v.shape[1]:
            raise CTSGANError(f"reference depth {ref.shape[0]} differs from the volumes' depth {v.shape[1]}")
        a, b = prof.mean(axis=0), ref
        denom = a.std() * b.std()
        out["profile_corr"] = float(((a - a.mean()) * (b - b.mean())).mean() / denom) if denom > 0 else float("nan")
    return out


def z_structure_table(sources_hu: Mapping[str, Sequence[np.ndarray]], reference_hu: Sequence[np.ndarray],
                      hu_min: float, hu_max: float) -> pd.DataFrame:
    """:func:`z_structure` of several sources of HU volumes, in the model range of ``[hu_min, hu_max]``, each against
    ``reference_hu`` (the real volumes): one row per source."""
    def model_range(vols):
        return np.stack([hu_to_model(np.asarray(v, np.float32), hu_min, hu_max) for v in vols])

    ref = model_range(reference_hu)
    return pd.DataFrame({name: z_structure(model_range(vols), ref) for name, vols in sources_hu.items()}).T


__all__ = ["z_structure", "mean_profile", "z_structure_table"]
