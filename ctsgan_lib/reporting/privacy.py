"""Figure of the memorisation check (notebook 05): the closest synthetic/training pairs, side by side."""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ..eval.privacy import MemorizationReport


def plot_closest_pairs(report: MemorizationReport, real, synthetic: dict[str, Any], k: int = 3,
                       hu_min: float = -1000.0, hu_max: float = 400.0):
    """Mid axial slices of the ``k`` closest synthetic/training pairs, side by side, with their correlation."""
    pairs = report.closest_pairs(k)
    fig, axes = plt.subplots(2, max(len(pairs), 1), figsize=(2.4 * max(len(pairs), 1), 5), squeeze=False)
    for j, row in pairs.iterrows():
        syn, _ = synthetic[row["source"]].read(row["synthetic id"])
        tr, _ = real.read(row["nearest train id"])
        for i, (vol, title) in enumerate(((syn, f"{row['source']} {row['synthetic id']}"),
                                          (tr, f"train {row['nearest train id']}"))):
            ax = axes[i, j]
            ax.imshow(np.asarray(vol)[len(vol) // 2], cmap="gray", vmin=hu_min, vmax=hu_max)
            ax.set_title(title if i else f"{title}\ncorr {row['corr']:.3f}"
                         + (" COPY" if row["flagged copy"] else ""), fontsize=7)
            ax.axis("off")
    fig.suptitle(f"closest synthetic/training pairs (copy threshold {report.threshold:.3f} = "
                 f"{report.percentile:g}th pct of real val→train)", fontsize=8)
    fig.tight_layout()
    return fig
