"""The one place where HU and model intensities are converted (DESIGN.md: "the conversion lives in one place").

In memory volumes are float32 HU, axis order (z, y, x). Model inputs are HU clipped to [hu_min, hu_max] and mapped
linearly to [-1, 1].
"""
from __future__ import annotations

import numpy as np

DEFAULT_HU_MIN = -1000.0
DEFAULT_HU_MAX = 400.0


def hu_to_model(hu, hu_min: float = DEFAULT_HU_MIN, hu_max: float = DEFAULT_HU_MAX):
    """Clip HU to ``[hu_min, hu_max]`` and map to ``[-1, 1]``.

    Works on numpy arrays and torch tensors alike.

    Examples
    --------
    >>> float(hu_to_model(np.float32(-1000.0)))
    -1.0
    >>> float(hu_to_model(np.float32(400.0)))
    1.0
    """
    scale = 2.0 / (hu_max - hu_min)
    if isinstance(hu, np.ndarray) or np.isscalar(hu):
        return (np.clip(hu, hu_min, hu_max) - hu_min) * scale - 1.0
    return (hu.clamp(hu_min, hu_max) - hu_min) * scale - 1.0


def model_to_hu(x, hu_min: float = DEFAULT_HU_MIN, hu_max: float = DEFAULT_HU_MAX):
    """Inverse of :func:`hu_to_model` on ``[-1, 1]`` (values outside are clipped first).

    Examples
    --------
    >>> float(model_to_hu(np.float32(0.0)))
    -300.0
    """
    if isinstance(x, np.ndarray) or np.isscalar(x):
        x = np.clip(x, -1.0, 1.0)
    else:
        x = x.clamp(-1.0, 1.0)
    return (x + 1.0) * (hu_max - hu_min) / 2.0 + hu_min


def hu_to_unit(hu, hu_min: float = DEFAULT_HU_MIN, hu_max: float = DEFAULT_HU_MAX):
    """Clip HU and map to ``[0, 1]`` (the classifier's input normalisation, paper §4.2)."""
    return (hu_to_model(hu, hu_min, hu_max) + 1.0) / 2.0


def hu_to_uint8(hu, window_min: float = DEFAULT_HU_MIN, window_max: float = DEFAULT_HU_MAX) -> np.ndarray:
    """Window HU to uint8 [0, 255] (for FID/IS inputs and figures)."""
    unit = hu_to_unit(np.asarray(hu, dtype=np.float32), window_min, window_max)
    return np.round(unit * 255.0).astype(np.uint8)
