"""Tables and figures of the conditional CT-SGAN (ours, issue 26; notebook 09).

- :func:`conditioning_table`: one row per requested size: conditioning AUC with its interval, measured nodule size.
- :func:`write_conditioning`: the records as ``runs/<P>/ctsgan_cond/conditioning.json`` (paths kept shareable).
- :func:`figC1_conditional_views`: one noise draw generated under "no nodules" and under each requested size.
- :func:`figC2_conditioning_auc`: AUC per requested size (with interval) and measured vs requested size.
- :func:`run_tableC1`: the fidelity of the conditional volumes (Table C1): Table 1's metrics and protocol
  (:func:`~ctsgan_lib.eval.fidelity.run_fidelity`) for the conditional cohort split by condition (with nodules,
  without), beside the unconditional CT-SGAN cohort and the real-vs-real reference row.
Figures and Table C1 go to ``figures/<P>/`` with their provenance.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..data.cohort import Cohort
from ..errors import CTSGANError
from ..eval.fidelity import Source, row_label, run_fidelity
from ..pipeline import require_inputs
from ..utils.atomic import atomic_write_text
from ..utils.paths import shareable_path
from ..viz import figure_caption, save_figure, show_three_views
from .fidelity import budget_text, provenance, summarise, table_markdown
from .figures import figures_dir


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


# --------------------------------------------------------------------------------------------------------------------
# Table C1: fidelity of the conditional volumes against the unconditional ones
# --------------------------------------------------------------------------------------------------------------------
#: Table C1 row keys of the two halves of the conditional cohort (the real and unconditional rows keep Table 1's keys)
COND_WITH, COND_WITHOUT = "ctsgan_cond_nodules", "ctsgan_cond_clean"


class ConditionSubset:
    """The volumes of a conditional cohort generated under one condition (with nodules, or without), read through
    the same interface as a :class:`~ctsgan_lib.data.cohort.Cohort` (``ids``, ``row``, ``read``, ``root``), so
    that :func:`~ctsgan_lib.eval.fidelity.run_fidelity` treats them as one source.

    Parameters
    ----------
    cohort : Cohort
        A cohort written by ``ctsgan generate --nodules`` (its manifest has ``condition_nodules``).
    with_nodules : bool
        Keep the volumes whose condition asked for at least one nodule (True) or for none (False).

    Raises
    ------
    CTSGANError
        The manifest has no ``condition_nodules`` column (not a conditional cohort).
    """

    def __init__(self, cohort: Cohort, with_nodules: bool):
        m = cohort.manifest
        if "condition_nodules" not in m:
            raise CTSGANError(f"{cohort.root / 'manifest.csv'}: no 'condition_nodules' column; not a conditional "
                              "cohort (make one with `ctsgan generate --checkpoint runs/<P>/ctsgan_cond/... "
                              "--nodules K`)")
        k = pd.to_numeric(m["condition_nodules"], errors="coerce")
        if k.isna().any():
            bad = m["id"][k.isna()].iloc[0]
            raise CTSGANError(f"{cohort.root / 'manifest.csv'}: row {bad!r}: condition_nodules is not a number")
        keep = (k > 0) if with_nodules else (k == 0)
        self.cohort, self.root, self.with_nodules = cohort, cohort.root, bool(with_nodules)
        self._ids = set(m["id"][keep.to_numpy()])
        d = pd.to_numeric(m.get("condition_diameter_vox", pd.Series(dtype=float))[keep.to_numpy()], errors="coerce")
        self.diameters_vox = sorted({float(x) for x in d.dropna()}) if with_nodules else []
        self.counts = sorted({int(x) for x in k[keep.to_numpy()]})

    def ids(self, split: str | None = None, **filters: Any) -> list[str]:
        """Ids of this condition's volumes matching the filters of :meth:`Cohort.ids`."""
        return [i for i in self.cohort.ids(split=split, **filters) if i in self._ids]

    def row(self, rid: str) -> dict:
        """The manifest row of ``rid`` (refused when ``rid`` was generated under the other condition)."""
        if rid not in self._ids:
            raise CTSGANError(f"{self.root / 'manifest.csv'}: {rid!r} is not in this condition's volumes")
        return self.cohort.row(rid)

    def read(self, rid: str):
        """(hu, spacing_mm) of ``rid``, as :meth:`Cohort.read`."""
        self.row(rid)  # refuses an id of the other condition
        return self.cohort.read(rid)

    def describe(self) -> str:
        """The condition in words, from the manifest (e.g. ``with nodules (1 × 3, 5 vox)``)."""
        if not self.with_nodules or not self.counts:
            return "with nodules" if self.with_nodules else "without nodules"
        return (f"with nodules ({'/'.join(map(str, self.counts))} × "
                f"{', '.join(f'{d:g}' for d in self.diameters_vox)} vox)")


def conditional_fidelity_sources(cfg, cond_dir: str | Path | None = None) -> tuple[Source, list[Source]]:
    """The reference and the rows of Table C1 from the standard paths of ``cfg``.

    The reference and the real-vs-real and CT-SGAN rows are Table 1's (those of
    :func:`~ctsgan_lib.eval.fidelity.table1_sources`); the conditional cohort (default
    ``data/<P>/synthetic/ctsgan_cond``) gives two rows, its volumes generated with nodules and those generated
    without.

    Raises
    ------
    MissingInputError
        A cohort is missing; the message names the notebook that makes it.
    CTSGANError
        The conditional cohort is not one, or has no volumes under one of the two conditions.
    """
    cond_dir = Path(cond_dir) if cond_dir is not None else cfg.data_dir / "synthetic" / "ctsgan_cond"
    require_inputs(cfg.data_dir / "cohort" / "manifest.csv", made_by="01_data_preparation.ipynb (or `ctsgan prepare`)")
    require_inputs(cfg.data_dir / "synthetic" / "ctsgan" / "manifest.csv",
                   made_by="04_synthetic_cohort.ipynb (or `ctsgan generate`)")
    require_inputs(cond_dir / "manifest.csv", made_by="09_conditional_ctsgan.ipynb's cohort cell (or `ctsgan generate "
                                                      "--checkpoint runs/<P>/ctsgan_cond/... --nodules K`)")
    # Table 1's sources (eval.fidelity.table1_sources), less the 3D GAN, which Table C1 does not need
    real = Source("real", Cohort(cfg.data_dir / "cohort"), "cohort")
    ctsgan = Source("ctsgan", Cohort(cfg.data_dir / "synthetic" / "ctsgan"), "synthetic/ctsgan")
    cond = Cohort(cond_dir)
    name = "/".join(cond_dir.parts[-2:])  # as Table 1 names its sources: relative, no machine path
    with_, without = ConditionSubset(cond, True), ConditionSubset(cond, False)
    for part in (with_, without):
        if not part.ids():
            raise CTSGANError(f"{cond_dir / 'manifest.csv'}: no volume generated {part.describe()}; Table C1 compares "
                              "both conditions (generate with --inject-fraction between 0 and 1, as notebook 09 does)")
    return real, [real, ctsgan,
        Source(COND_WITH, with_, f"{name} {with_.describe()}"),
        Source(COND_WITHOUT, without, f"{name} {without.describe()}")]


#: Table C1's row labels (the real and CT-SGAN rows keep Table 1's wording)
TABLEC1_LABELS = {"real": "Real Data (real vs real: the reference)", "ctsgan": "CT-SGAN Synthetic Data (unconditional)",
                  COND_WITH: "Conditional CT-SGAN, generated with nodules",
                  COND_WITHOUT: "Conditional CT-SGAN, generated without nodules"}

TABLEC1_TITLE = ("Table C1 (ours, beyond the paper: the paper has no conditional model): fidelity of the conditional "
                 "CT-SGAN's volumes, split by their condition, beside the unconditional CT-SGAN, with Table 1's "
                 "metrics, protocol, extractor, sample sizes and seed; relative FD = the row's mean pair FID over the "
                 "real–real mean of this run")


def tableC1(records: Sequence[dict[str, Any]], budgets: dict[str, str] | None = None) -> pd.DataFrame:
    """Records of :func:`run_tableC1` → Table C1: Table 1's columns of ours (the paper has no such rows, so no paper
    columns), each row's condition in words and the number of its volumes that were compared."""
    t = summarise(list(records), budgets)[0]
    keys = list(dict.fromkeys(r["row"] for r in records))
    order = [k for k in TABLEC1_LABELS if k in keys] + [k for k in keys if k not in TABLEC1_LABELS]
    t = t.set_index(t["Data Source"].map({row_label(k): k for k in keys})).loc[order].reset_index(drop=True)
    source = {r["row"]: r["source"] for r in records}
    t["Data Source"] = [TABLEC1_LABELS.get(k, k) for k in order]
    t = t.drop(columns=["FID (↓) paper", "relative FD paper", "IS (↑) paper"])
    t.insert(1, "volumes (condition)", [source[k] for k in order])
    t.insert(2, "volumes compared", t["n_volumes_is"].astype(int))
    return t


def run_tableC1(cfg, sources: tuple[Source, list[Source]] | None = None, out_dir: str | Path | None = None,
                extractor=None, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Table C1 in one call: the fidelity of conditional CT-SGAN volumes against unconditional ones.

    Every metric of Table 1 (slice-wise pair FID, relative FD, KID, IS, 2.5D; 3D FID / MMD and MS-SSIM when
    ``fidelity.metrics_3d``), computed by :func:`~ctsgan_lib.eval.fidelity.run_fidelity` with Table 1's settings
    (``cfg.fidelity``: pairs, volumes per source, slices, seed) and its extractor
    (:func:`~ctsgan_lib.eval.fidelity.resolve_for_config`, cached features shared with notebook 05), for the rows of
    :func:`conditional_fidelity_sources`. The real-vs-real and CT-SGAN rows use the same seeded pools and pairs as
    Table 1, so they repeat its numbers; relative FD divides by this run's real–real mean, as Table 1 does.

    Parameters
    ----------
    cfg : Config
    sources : (Source, list of Source), optional
        Reference and rows (default :func:`conditional_fidelity_sources`).
    out_dir : path, optional
        Where ``tableC1_conditional_fidelity.{csv,md}`` go (default ``figures/<P>/``).
    extractor, device, progress
        As :func:`~ctsgan_lib.eval.fidelity.run_fidelity`.

    Returns
    -------
    dict
        ``records``, ``table`` (DataFrame), ``provenance``, ``paths`` (the two files written). The records are also
        in ``runs/<P>/ctsgan_cond/fidelity_metrics.jsonl`` (replaced atomically: a rerun does not duplicate lines).
    """
    real, rows = sources if sources is not None else conditional_fidelity_sources(cfg)
    runs = cfg.runs_dir / "ctsgan_cond"
    runs.mkdir(parents=True, exist_ok=True)
    tmp = runs / "fidelity_metrics.jsonl.new"
    tmp.unlink(missing_ok=True)
    records = run_fidelity(cfg, real, rows, out=tmp, extractor=extractor, device=device, progress=progress)
    tmp.replace(runs / "fidelity_metrics.jsonl")
    n_d = int(cfg.ctsgan.d_steps)
    cond_budget = budget_text(runs / "log.csv", cfg.ctsgan.iterations, n_d)
    budgets = {"ctsgan": budget_text(cfg.runs_dir / "ctsgan" / "log.csv", cfg.ctsgan.iterations, n_d),
               COND_WITH: cond_budget, COND_WITHOUT: cond_budget}
    table = tableC1(records, budgets)
    prov = provenance(records)
    out = Path(out_dir) if out_dir is not None else figures_dir(cfg)
    full = table.copy()
    for k, v in prov.items():
        full[k] = v  # the table itself carries profile, data, extractor + hash, seed, hardware, comparability
    md = table_markdown(table, prov, TABLEC1_TITLE)
    md += ("\nNOT comparable to the paper in any case: the paper has no conditional CT-SGAN. Read relative FD "
           "(1 = as far from the real scans as two real patients are from each other) across the rows of this "
           "table; the real and unconditional rows repeat Table 1's (same pairs, same extractor).\n")
    paths = [out / "tableC1_conditional_fidelity.csv", out / "tableC1_conditional_fidelity.md"]
    atomic_write_text(paths[0], full.to_csv(index=False))
    atomic_write_text(paths[1], md)
    return {"records": records, "table": table, "provenance": prov, "paths": paths}


__all__ = ["conditioning_table", "write_conditioning", "figC1_conditional_views", "figC2_conditioning_auc",
           "COND_WITH", "COND_WITHOUT", "ConditionSubset", "conditional_fidelity_sources", "tableC1", "run_tableC1"]
