"""Tables and figures of the conditional CT-SGAN (ours, issue 26; notebook 09).

- :func:`conditioning_table`: one row per requested size: conditioning AUC with its interval, measured nodule size.
- :func:`write_conditioning`: the records as ``runs/<P>/ctsgan_cond/conditioning.json`` (paths kept shareable).
- :func:`figC1_conditional_views`: one noise draw generated under "no nodules" and under each requested size.
- :func:`figC2_conditioning_auc`: AUC per requested size (with interval) and measured vs requested size.
Both figures go to ``figures/<P>/`` with a provenance caption.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..utils.atomic import atomic_write_text
from ..utils.paths import shareable_path
from ..viz import figure_caption, save_figure, show_three_views


def conditioning_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Records of :func:`~ctsgan_lib.synthesis.conditional.measure_conditioning` → one row per requested size."""
    rows = [{"requested diameter (vox)": r["diameter_vox"], "nodules": r["n_nodules"], "AUC": r["auc"],
             "95% CI": f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
             "n with / without": f"{r['n_with']} / {r['n_without']}",
             "measured diameter (vox, median)": r["size"]["measured_median_vox"],
             "|measured − requested| (median)": r["size"]["median_abs_error_vox"],
             "without nodules: largest blob (median)": r["size"]["baseline_median_vox"]} for r in records]
    return pd.DataFrame(rows)


def write_conditioning(records: Sequence[dict[str, Any]], path: str | Path, **provenance: Any) -> Path:
    """Write the records and their provenance (checkpoint, detectors, seed, ...) as JSON, atomically."""
    atomic_write_text(Path(path), json.dumps({"provenance": _shareable(provenance), "records": list(records)},
                                             indent=1, default=str))
    return Path(path)


def _shareable(v: Any) -> Any:
    """Paths anywhere in ``v`` (dicts and lists included) as :func:`~ctsgan_lib.utils.paths.shareable_path` text."""
    if isinstance(v, Path):
        return shareable_path(v)
    if isinstance(v, dict):
        return {str(k): _shareable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_shareable(x) for x in v]
    return v


def figC1_conditional_views(volumes: dict[str, np.ndarray], out: Path, profile: str, data_source: str, seed: int,
                            spacing_mm=None, extra: str | None = None) -> list[Path]:
    """Fig C1: three views of one noise draw under each condition (row names say which), lung window.

    The planes pass through the centre of the volume; a nodule elsewhere shows in some rows' planes only.
    """
    fig = show_three_views(volumes, spacing_mm=spacing_mm, window="lung",
                           title="Fig C1 · conditional CT-SGAN: one noise draw, several conditions")
    paths = save_figure(fig, Path(out) / "figC1_conditional_views", figure_caption(profile, data_source, seed, extra))
    plt.close(fig)
    return paths


def figC2_conditioning_auc(records: Sequence[dict[str, Any]], out: Path, profile: str, data_source: str, seed: int,
                           extra: str | None = None) -> list[Path]:
    """Fig C2: left, conditioning AUC per requested size with its bootstrap interval (0.5 = condition ignored);
    right, measured vs requested nodule diameter (median and quartiles; the dashed line is the vessel baseline of
    the volumes generated without nodules)."""
    d = np.array([r["diameter_vox"] for r in records])
    auc = np.array([r["auc"] for r in records])
    lo, hi = np.array([r["ci_low"] for r in records]), np.array([r["ci_high"] for r in records])
    fig, ax = plt.subplots(1, 2, figsize=(9.5, 3.4))
    ax[0].errorbar(d, auc, yerr=[auc - lo, hi - auc], fmt="o-", capsize=4, label="detector AUC, 95% bootstrap CI")
    ax[0].axhline(0.5, color="0.5", ls=":", label="condition ignored")
    ax[0].set(xlabel="requested diameter (voxels)", ylabel="AUC (with vs without nodules)", ylim=(0, 1.05))
    ax[0].legend(fontsize=7)
    med = np.array([r["size"]["measured_median_vox"] for r in records])
    q = np.array([r["size"]["measured_iqr_vox"] for r in records]).reshape(len(records), 2)
    ax[1].errorbar(d, med, yerr=[med - q[:, 0], q[:, 1] - med], fmt="s-", capsize=4, label="measured (median, IQR)")
    top = float(max(d.max(), np.nanmax(q)) * 1.15) if len(d) else 1.0
    ax[1].plot([0, top], [0, top], color="0.5", ls=":", label="measured = requested")
    base = [r["size"]["baseline_median_vox"] for r in records]
    if base and np.isfinite(base[0]):
        ax[1].axhline(base[0], color="C3", ls="--", label="without nodules (largest vessel blob)")
    ax[1].set(xlabel="requested diameter (voxels)", ylabel="largest dense blob in the lungs (voxels)")
    ax[1].legend(fontsize=7)
    fig.suptitle("Fig C2 · does the condition take? (detector trained on real data only)", fontsize=10)
    fig.tight_layout()
    paths = save_figure(fig, Path(out) / "figC2_conditioning_auc", figure_caption(profile, data_source, seed, extra))
    plt.close(fig)
    return paths


__all__ = ["conditioning_table", "write_conditioning", "figC1_conditional_views", "figC2_conditioning_auc"]
