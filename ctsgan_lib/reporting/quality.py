"""Plots and tables of a cohort's quality statistics (notebook 01): HU histograms per tissue label and domain."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_tissue_hu(samples: dict[str, dict[str, np.ndarray]], hu_min: float, hu_max: float, title: str = ""):
    """One histogram panel per tissue, one line per domain (from :func:`ctsgan_lib.data.quality.tissue_hu_samples`).

    Returns
    -------
    matplotlib Figure
    """
    tissues = sorted(samples)
    ncols = min(5, len(tissues))
    nrows = -(-len(tissues) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 2.4 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(tissues):]:
        ax.set_visible(False)
    for ax, tissue in zip(axes.flat, tissues):
        for domain, vals in sorted(samples[tissue].items()):
            ax.hist(vals, bins=60, range=(hu_min, hu_max), histtype="step", density=True, label=domain)
        ax.set_title(f"{tissue} (median {np.median(np.concatenate(list(samples[tissue].values()))):.0f})", fontsize=9)
        ax.set_xlabel("HU")
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


def tissue_hu_table(samples: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Median ± std HU per tissue (rows) and domain (columns)."""
    return pd.DataFrame({t: {d: f"{np.median(v):.0f} ± {v.std():.0f}" for d, v in s.items()}
                         for t, s in samples.items()}).T
