"""The phantom's scanner model: Gaussian point-spread function and correlated noise with a CT-like noise power
spectrum, per domain (``nlst-like`` sharp and noisy, ``lidc-like`` soft and quiet)."""
from __future__ import annotations

import math

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi
from .params import ScannerParams


# ------------------------------------------------------------------------------------------------------------------
# Scanner
# ------------------------------------------------------------------------------------------------------------------
def correlated_noise(shape, sc: ScannerParams) -> np.ndarray:
    """Stationary CT-like noise: white noise shaped by a ramp × Gaussian in-plane NPS and the slice profile.

    NPS(f) ∝ (f_r + 0.02) · exp(-(f_r / f0)²) · exp(-(2π σ_z f_z)²) with f0 = √2 · peak, so the in-plane NPS peaks at
    ``nps_peak_cyc`` cycles/voxel. The result is scaled to ``noise_sigma_hu``.
    """
    rng = np.random.default_rng([sc.noise_seed, 3])
    w = rng.standard_normal(shape, dtype=np.float32)
    F = sfft.rfftn(w, workers=1)
    fz = sfft.fftfreq(shape[0])[:, None, None]
    fy = sfft.fftfreq(shape[1])[None, :, None]
    fx = sfft.rfftfreq(shape[2])[None, None, :]
    fr = np.sqrt(fy ** 2 + fx ** 2)
    f0 = math.sqrt(2) * sc.nps_peak_cyc
    amp_r = np.sqrt((fr + 0.02) * np.exp(-(fr / f0) ** 2)).astype(np.float32)
    amp_z = np.exp(-0.5 * (2 * math.pi * max(sc.psf_z_sigma_vox, 0.3) * fz) ** 2).astype(np.float32)
    F *= amp_r
    F *= amp_z
    n = sfft.irfftn(F, s=shape, workers=1).astype(np.float32)
    n *= sc.noise_sigma_hu / (n.std() + 1e-9)
    return n


def apply_scanner(clean_hu: np.ndarray, sc: ScannerParams) -> np.ndarray:
    """PSF blur of the clean volume plus correlated noise (content-independent, so it is the same with and without
    nodules)."""
    blurred = ndi.gaussian_filter(clean_hu, (sc.psf_z_sigma_vox, sc.psf_sigma_vox, sc.psf_sigma_vox),
                                  mode="nearest", truncate=3.0)
    blurred += correlated_noise(clean_hu.shape, sc)
    return np.clip(blurred, -1024, 3071).astype(np.float32)
