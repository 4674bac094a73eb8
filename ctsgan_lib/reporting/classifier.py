"""Tables, captions and plots of the nodule-detection study (Fig 3b grid and shortcut control), from its records.

The records are the JSON lines that :func:`ctsgan_lib.experiments.run_grid` and
:func:`~ctsgan_lib.experiments.run_shortcut_control` write; nothing here computes a result.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..experiments.grid import REGIMES
from ..utils.atomic import atomic_path, atomic_write_text
from ..utils.paths import shareable_path


def comparability_note(records: Iterable[dict]) -> str:
    """``"comparable ..."`` only for paper-profile runs on real LIDC/NLST data; otherwise says why not."""
    records = list(records)
    if not records:
        return "no results"
    profiles = sorted({r["profile"] for r in records})
    sources = sorted({s for r in records for s in (r["data"].get("real_sources") or [])})
    size = records[0]["config"]["data_size"]
    if profiles == ["paper"] and sources and set(sources) <= {"lidc", "nlst"}:
        return f"paper profile on real {'/'.join(sources)} data at {size}³ (comparable in setting to Fig 3b)"
    return (f"NOT comparable to the paper: profile {'/'.join(profiles)}, {'/'.join(sources) or 'unknown'} data, "
            f"{size}³ volumes")


def grid_table(records: Iterable[dict]):
    """Fig 3b numbers: one row per (regime, size) with mean ± std over seeds of the test metrics."""
    rows = [{"regime": r["regime"], "size_vox": r["size_vox"], "seed": r["seed"], **{
        k: r["metrics"][k] for k in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")},
        "n_test": r["metrics"]["n"]} for r in records if r.get("kind") == "grid"]
    cols = ["regime", "size_vox", "n_seeds", "seeds", "accuracy_mean", "accuracy_std", "balanced_accuracy_mean",
            "auc_mean", "sensitivity_mean", "specificity_mean", "n_test"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    g = df.groupby(["regime", "size_vox"], sort=False)
    out = g.agg(n_seeds=("seed", "nunique"), seeds=("seed", lambda s: ",".join(str(int(v)) for v in sorted(s))),
                accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", lambda s: float(np.std(s, ddof=0))),
                balanced_accuracy_mean=("balanced_accuracy", "mean"), auc_mean=("auc", "mean"),
                sensitivity_mean=("sensitivity", "mean"), specificity_mean=("specificity", "mean"),
                n_test=("n_test", "first")).reset_index()
    order = {r: i for i, r in enumerate(REGIMES)}
    out = out.sort_values(["regime", "size_vox"], key=lambda c: c.map(order) if c.name == "regime" else c)
    return out.reset_index(drop=True)[cols]


def regime_ordering(table) -> str:
    """Regimes ranked by mean accuracy over all sizes, as found (e.g. ``"pretrain_finetune > real > synthetic"``)."""
    if len(table) == 0:
        return "no results"
    means = table.groupby("regime")["accuracy_mean"].mean().sort_values(ascending=False)
    parts = [f"{r} ({m:.3f})" for r, m in means.items()]
    out = parts[0]
    for (r_prev, m_prev), (r, m), p in zip(means.items(), list(means.items())[1:], parts[1:]):
        out += (" = " if math.isclose(m, m_prev, abs_tol=1e-9) else " > ") + p
    return out


def shortcut_table(records: Iterable[dict]):
    """Shortcut control: rows = training cohort, columns = test set accuracy (mean ± std over seeds)."""
    rows = []
    for r in records:
        if r.get("kind") != "shortcut":
            continue
        for t, m in r["metrics"].items():
            rows.append({"train_cohort": r["train_cohort"], "test_set": t, "seed": r["seed"],
                         "accuracy": m["accuracy"], "auc": m["auc"], "size_vox": r["size_vox"]})
    if not rows:
        return pd.DataFrame(columns=["train_cohort", "test_set", "accuracy_mean", "accuracy_std", "auc_mean",
                                     "n_seeds", "size_vox"])
    df = pd.DataFrame(rows)
    out = df.groupby(["train_cohort", "test_set"]).agg(
        accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", lambda s: float(np.std(s, ddof=0))),
        auc_mean=("auc", "mean"), n_seeds=("seed", "nunique"), size_vox=("size_vox", "first")).reset_index()
    return out


def classifier_caption(records: Sequence[dict], what: str) -> str:
    """One line: profile, data source, injector, seeds, hardware, comparability."""
    if not records:
        return f"{what}: no results"
    r0 = records[0]
    seeds = sorted({int(r["seed"]) for r in records})
    hw = sorted({r["hardware_label"] for r in records})
    inj = r0["data"]["injector"]
    inj_s = Path(inj["checkpoint"]).name if inj.get("checkpoint") else inj.get("model", "?")
    syn = r0["data"].get("synthetic_source")
    syn = shareable_path(syn) if syn else syn   # footers are shared: no machine paths (issue 17)
    return (f"{what} | profile {r0['profile']} | real data {shareable_path(r0['data']['real_source'])} "
            f"({'/'.join(r0['data'].get('real_sources') or [])})" + (f" | synthetic {syn}" if syn else "") +
            f" | injector {inj_s} | seeds {seeds} | hardware {'; '.join(hw)} | {comparability_note(records)}")


def annotate_table(table, records: Sequence[dict]):
    """Add provenance columns (profile, data, injector, hardware, comparability) so the table says it itself."""
    t = table.copy()
    if not records:
        return t
    r0 = records[0]
    inj = r0["data"]["injector"]
    t["profile"] = r0["profile"]
    t["real_data"] = "/".join(r0["data"].get("real_sources") or []) + f" ({Path(r0['data']['real_source']).name})"
    t["injector"] = Path(inj["checkpoint"]).name if inj.get("checkpoint") else inj.get("model", "?")
    t["hardware"] = "; ".join(sorted({r["hardware_label"] for r in records}))
    t["vs_paper"] = comparability_note(records)
    return t


def save_table(table, path_base: str | Path, title: str = "") -> list[Path]:
    """Write ``<base>.csv`` and ``<base>.md`` (with ``title`` as its first line) atomically."""
    path_base = Path(path_base)
    csv_p, md_p = path_base.with_suffix(".csv"), path_base.with_suffix(".md")
    atomic_write_text(csv_p, table.to_csv(index=False))
    body = table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else table.to_string(index=False)
    atomic_write_text(md_p, (f"{title}\n\n" if title else "") + body + "\n")
    return [csv_p, md_p]


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401  - optional dependency (pandas' to_markdown needs it), probed here
        return True
    except ImportError:
        return False


def plot_fig3b(table, path_base: str | Path, title: str = "", note: str = ""):
    """Accuracy vs nodule size, one line per regime, mean ± std over seeds; saved as ``<base>.png`` and ``.pdf``.

    Returns ``(figure, [png, pdf])``; the figure stays open so a notebook shows it (close it elsewhere).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = {"real": "real only", "synthetic": "synthetic only",
              "pretrain_finetune": "synthetic pretrain + real fine-tune"}
    sizes = sorted(set(table["size_vox"]))
    dodge = 0.02 * ((sizes[-1] - sizes[0]) or 1.0)  # small x offsets so equal lines stay visible
    for i, regime in enumerate([r for r in REGIMES if r in set(table["regime"])]):
        t = table[table["regime"] == regime].sort_values("size_vox")
        ax.errorbar(t["size_vox"] + (i - 1) * dodge, t["accuracy_mean"], yerr=t["accuracy_std"], marker="o", capsize=3,
                    label=labels.get(regime, regime))
    ax.set_xticks(sizes)
    ax.set_xlabel("injected nodule diameter (voxels; lines offset slightly for visibility)")
    ax.set_ylabel("test accuracy (balanced test set)")
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Fig 3b: nodule detection accuracy vs nodule size", fontsize=10)
    if note:
        fig.text(0.01, 0.005, note, fontsize=6, ha="left", va="bottom", wrap=True)
        fig.subplots_adjust(bottom=0.22)
    path_base = Path(path_base)
    paths = []
    # the footer also goes into the file's metadata, as viz.save_figure does, so it can be read (and checked) as text
    meta = {"png": {"Software": "ctsgan_lib.reporting", "Description": note},
            "pdf": {"Creator": "ctsgan_lib.reporting", "Subject": note, "CreationDate": None}}
    for ext in ("png", "pdf"):
        p = path_base.with_suffix(f".{ext}")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=150, format=ext, metadata=meta[ext])
        paths.append(p)
    return fig, paths
