"""Tables, captions and plots of the nodule-detection study (Fig 3b grid, Fig 3c data scarcity, shortcut control).

The records are the JSON lines that :func:`ctsgan_lib.experiments.run_grid`, :func:`~ctsgan_lib.experiments.run_scarcity`
and :func:`~ctsgan_lib.experiments.run_shortcut_control` write; nothing here trains or predicts. The intervals of
:func:`effect_table` are computed from the per-scan test predictions each record carries
(:func:`ctsgan_lib.eval.classification.paired_bootstrap_difference`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..eval.classification import BOOTSTRAP_METHOD, paired_bootstrap_difference
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
    cols = ["regime", "size_vox", "n_seeds", "seeds", "accuracy_mean", "accuracy_std", "auc_mean", "auc_std",
            "balanced_accuracy_mean", "sensitivity_mean", "specificity_mean", "n_test"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    g = df.groupby(["regime", "size_vox"], sort=False)
    out = g.agg(n_seeds=("seed", "nunique"), seeds=("seed", lambda s: ",".join(str(int(v)) for v in sorted(s))),
                accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", lambda s: float(np.std(s, ddof=0))),
                auc_mean=("auc", "mean"), auc_std=("auc", lambda s: float(np.std(s, ddof=0))),
                balanced_accuracy_mean=("balanced_accuracy", "mean"),
                sensitivity_mean=("sensitivity", "mean"), specificity_mean=("specificity", "mean"),
                n_test=("n_test", "first")).reset_index()
    order = {r: i for i, r in enumerate(REGIMES)}
    out = out.sort_values(["regime", "size_vox"], key=lambda c: c.map(order) if c.name == "regime" else c)
    return out.reset_index(drop=True)[cols]


#: The comparisons of :func:`effect_table`: (model b, model a), the difference is b − a.
COMPARISONS = (("pretrain_finetune", "real"), ("synthetic", "real"),
               # the fourth regime (issue 26, opt-in): against real only and against the injector-based pretraining
               ("cond_pretrain_finetune", "real"), ("cond_pretrain_finetune", "pretrain_finetune"))


def _paired_groups(records: Sequence[dict], regime_b: str, regime_a: str, size: float) -> list[tuple]:
    """Per seed, (y, p_a, p_b) on the scans both regimes were tested on (matched by id)."""
    by = {(r["regime"], int(r["seed"])): r for r in records
          if r.get("kind") == "grid" and float(r["size_vox"]) == float(size) and "test_predictions" in r}
    groups = []
    for seed in sorted({s for (_, s) in by}):
        a, b = by.get((regime_a, seed)), by.get((regime_b, seed))
        if a is None or b is None:
            continue
        pa = dict(zip(a["test_predictions"]["ids"], a["test_predictions"]["p"]))
        pb = dict(zip(b["test_predictions"]["ids"], b["test_predictions"]["p"]))
        ys = dict(zip(a["test_predictions"]["ids"], a["test_predictions"]["y"]))
        ids = [i for i in a["test_predictions"]["ids"] if i in pb]
        groups.append((np.asarray([ys[i] for i in ids]), np.asarray([pa[i] for i in ids]),
                       np.asarray([pb[i] for i in ids])))
    return groups


def effect_table(records: Iterable[dict], comparisons: Sequence[tuple[str, str]] = COMPARISONS,
                 n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Per size and comparison (b − a, e.g. pretrain + fine-tune − real only), the difference in test accuracy and
    AUC with a paired bootstrap interval over seeds and test scans (the ``interval`` column names the method).

    ``supported`` says what the accuracy interval supports: ``b > a`` (interval above 0), ``b < a`` (below 0) or
    ``no difference shown`` (it contains 0); ``auc_supported`` the same for AUC.
    """
    records = [r for r in records if r.get("kind") == "grid"]
    rows = []
    for size in sorted({float(r["size_vox"]) for r in records}):
        for b, a in comparisons:
            groups = _paired_groups(records, b, a, size)
            if not groups:
                continue
            row = {"comparison": f"{b} − {a}", "size_vox": size, "n_seeds": len(groups),
                   "n_test_scans": int(len(groups[0][0]))}
            for metric in ("accuracy", "auc"):
                r = paired_bootstrap_difference(groups, metric, n_boot, level, seed)
                row.update({f"{metric}_diff": r["estimate"], f"{metric}_low": r["low"], f"{metric}_high": r["high"]})
            for metric, col in (("accuracy", "supported"), ("auc", "auc_supported")):
                lo, hi = row[f"{metric}_low"], row[f"{metric}_high"]
                row[col] = f"{b} > {a}" if lo > 0 else f"{b} < {a}" if hi < 0 else "no difference shown"
            row["interval"] = f"{level:.0%} {BOOTSTRAP_METHOD}, {n_boot} resamples"
            rows.append(row)
    cols = ["comparison", "size_vox", "accuracy_diff", "accuracy_low", "accuracy_high", "auc_diff", "auc_low",
            "auc_high", "supported", "auc_supported", "n_seeds", "n_test_scans", "interval"]
    return pd.DataFrame(rows, columns=cols)


def regime_ordering(effects) -> str:
    """What the intervals of :func:`effect_table` support, per comparison: the sizes where b is better than a, worse,
    or not shown to differ (accuracy, 95 % interval). Means alone are never ranked."""
    if effects is None or len(effects) == 0 or "supported" not in getattr(effects, "columns", []):
        return "no intervals: no ordering is claimed"
    parts = []
    for comp, t in effects.groupby("comparison", sort=False):
        b, a = (x.strip() for x in comp.split("−"))
        sizes = lambda what: ", ".join(f"{v:g}" for v in t.loc[t["supported"] == what, "size_vox"])
        said = [f"{b} > {a} at size {sizes(f'{b} > {a}')}" if sizes(f"{b} > {a}") else "",
                f"{b} < {a} at size {sizes(f'{b} < {a}')}" if sizes(f"{b} < {a}") else "",
                f"no difference shown at size {sizes('no difference shown')}" if sizes("no difference shown") else ""]
        parts.append(f"{comp}: " + "; ".join(x for x in said if x))
    return " | ".join(parts)


def by_kind_table(records: Iterable[dict]):
    """Per (regime, size): test accuracy, AUC and detection rate of native positives and of injected positives, each
    against all test negatives (mean over seeds). Native nodules keep their own size; only injected ones have the
    cell's."""
    rows = []
    for r in records:
        bk = r.get("metrics", {}).get("by_kind") if r.get("kind") == "grid" else None
        if not bk:
            continue
        row = {"regime": r["regime"], "size_vox": r["size_vox"], "seed": r["seed"]}
        for kind in ("native", "injected"):
            m = bk.get(kind) or {}
            for k in ("accuracy", "auc", "detected", "n_positive"):
                row[f"{kind}_{k}"] = m.get(k, np.nan)
        rows.append(row)
    cols = ["regime", "size_vox", "n_seeds"] + [f"{kind}_{k}" for kind in ("native", "injected")
                                               for k in ("accuracy_mean", "accuracy_std", "auc_mean", "detected_mean",
                                                         "n_positive")]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    agg = {"n_seeds": ("seed", "nunique")}
    for kind in ("native", "injected"):
        agg.update({f"{kind}_accuracy_mean": (f"{kind}_accuracy", "mean"),
                    f"{kind}_accuracy_std": (f"{kind}_accuracy", lambda s: float(np.std(s, ddof=0))),
                    f"{kind}_auc_mean": (f"{kind}_auc", "mean"), f"{kind}_detected_mean": (f"{kind}_detected", "mean"),
                    f"{kind}_n_positive": (f"{kind}_n_positive", "first")})
    out = df.groupby(["regime", "size_vox"], sort=False).agg(**agg).reset_index()
    order = {r: i for i, r in enumerate(REGIMES)}
    out = out.sort_values(["regime", "size_vox"], key=lambda c: c.map(order) if c.name == "regime" else c)
    return out.reset_index(drop=True)[cols]


#: Bins (mm, lower edges) of the native nodules' diameters: below the LIDC median (7.8 mm) and above, up to 30 mm.
NATIVE_BINS_MM = (0.0, 5.0, 10.0, 20.0, 30.0)


def native_size_table(records: Iterable[dict], bins_mm: Sequence[float] = NATIVE_BINS_MM):
    """Detection of native positives by the size of their largest own nodule (mm): per (regime, size, bin) the share
    of native test positives called positive, pooled over seeds. Native sizes come from the cohort's nodule records;
    the cell's size does not apply to them."""
    rows = []
    edges = list(bins_mm) + [np.inf]
    for r in records:
        tp = r.get("test_predictions") if r.get("kind") == "grid" else None
        if not tp or "native_mm" not in tp:
            continue
        for k, d, p in zip(tp["kinds"], tp["native_mm"], tp["p"]):
            if k != "native":
                continue
            i = int(np.searchsorted(edges, d, side="right")) - 1
            lo, hi = edges[max(i, 0)], edges[max(i, 0) + 1]
            rows.append({"regime": r["regime"], "size_vox": r["size_vox"], "seed": r["seed"],
                         "native_diameter_mm": f"{lo:g}–{hi:g}" if np.isfinite(hi) else f"≥ {lo:g}",
                         "bin": i, "detected": float(p >= 0.5)})
    cols = ["regime", "size_vox", "native_diameter_mm", "n_native_scans", "n_seeds", "detected"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    out = df.groupby(["regime", "size_vox", "bin", "native_diameter_mm"], sort=True).agg(
        n_native_scans=("detected", "size"), n_seeds=("seed", "nunique"), detected=("detected", "mean")).reset_index()
    order = {r: i for i, r in enumerate(REGIMES)}
    out = out.sort_values(["regime", "size_vox", "bin"], key=lambda c: c.map(order) if c.name == "regime" else c)
    return out.reset_index(drop=True)[cols]


def design_table(records: Iterable[dict]):
    """What each split held, from the result lines: per size and split (and the synthetic set) the counts of native
    and injected positives and erased and clean negatives, with whether every seed had the same counts."""
    seen: dict[tuple, list[dict]] = {}
    for r in records:
        counts = r.get("data", {}).get("counts") if r.get("kind") == "grid" else None
        if not counts:
            continue
        for split, c in counts.items():
            seen.setdefault((float(r["size_vox"]), split), []).append(c)
    rows = []
    order = {s: i for i, s in enumerate(("train", "val", "test", "synthetic"))}
    for (size, split), cs in sorted(seen.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))):
        c = cs[0]
        rows.append({"size_vox": size, "split": split, **{k: c.get(k, 0) for k in ("native", "injected", "erased",
                                                                                   "clean")},
                     "positives": c.get("native", 0) + c.get("injected", 0),
                     "negatives": c.get("erased", 0) + c.get("clean", 0),
                     "same_in_every_line": all(x == c for x in cs)})
    return pd.DataFrame(rows, columns=["size_vox", "split", "native", "injected", "erased", "clean", "positives",
                                       "negatives", "same_in_every_line"])


def scarcity_table(records: Iterable[dict]):
    """Fig 3c numbers: per (regime, real fraction) test accuracy and AUC, mean ± std over seeds, and the real
    training volumes used."""
    rows = [{"regime": r["regime"], "real_fraction": float(r["real_fraction"]), "seed": r["seed"],
             "size_vox": r["size_vox"], "accuracy": r["metrics"]["accuracy"], "auc": r["metrics"]["auc"],
             "n_real_train": sum((r["data"].get("counts") or {}).get("train", {}).values()) or r["data"]["n_train"]}
            for r in records if r.get("kind") == "scarcity"]
    cols = ["regime", "real_fraction", "size_vox", "n_seeds", "n_real_train", "accuracy_mean", "accuracy_std",
            "auc_mean", "auc_std"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    out = df.groupby(["regime", "real_fraction"], sort=True).agg(
        size_vox=("size_vox", "first"), n_seeds=("seed", "nunique"), n_real_train=("n_real_train", "first"),
        accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", lambda s: float(np.std(s, ddof=0))),
        auc_mean=("auc", "mean"), auc_std=("auc", lambda s: float(np.std(s, ddof=0)))).reset_index()
    return out[cols]


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


def voxel_mm(records: Iterable[dict]) -> float | None:
    """The real cohort's voxel size (mm) the result lines record, when they all agree."""
    vals = {r.get("data", {}).get("voxel_mm") for r in records}
    return vals.pop() if len(vals) == 1 and None not in vals else None


def plot_fig3b(table, path_base: str | Path, title: str = "", note: str = "", voxel_mm: float | None = None):
    """Accuracy vs nodule size, one line per regime, mean ± std over seeds; saved as ``<base>.png`` and ``.pdf``.

    ``voxel_mm`` (the cohort's voxel size) puts the mm conversion into the axis label (Fig B.3 is in mm).

    Returns ``(figure, [png, pdf])``; the figure stays open so a notebook shows it (close it elsewhere).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = {"real": "real only", "synthetic": "synthetic only",
              "pretrain_finetune": "synthetic pretrain + real fine-tune",
              "cond_pretrain_finetune": "conditional CT-SGAN pretrain + real fine-tune (ours)"}
    sizes = sorted(set(table["size_vox"]))
    dodge = 0.02 * ((sizes[-1] - sizes[0]) or 1.0)  # small x offsets so equal lines stay visible
    for i, regime in enumerate([r for r in REGIMES if r in set(table["regime"])]):
        t = table[table["regime"] == regime].sort_values("size_vox")
        ax.errorbar(t["size_vox"] + (i - 1) * dodge, t["accuracy_mean"], yerr=t["accuracy_std"], marker="o", capsize=3,
                    label=labels.get(regime, regime))
    ax.set_xticks(sizes)
    mm = (f"; 1 voxel ≈ {voxel_mm:.1f} mm, Fig B.3 radius = d·{voxel_mm:.1f}/2 mm" if voxel_mm else "")
    ax.set_xlabel(f"injected nodule diameter d (voxels at the profile's S³{mm})\nnative nodules keep their own size; "
                  f"lines offset slightly", fontsize=8)
    ax.set_ylabel("test accuracy (balanced test set)")
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Fig 3b: nodule detection accuracy vs nodule size", fontsize=10)
    return fig, _save(fig, path_base, note, bottom=0.22)


def plot_fig3c(table, path_base: str | Path, title: str = "", note: str = ""):
    """Fig 3c (beyond the paper): test accuracy and AUC vs the share of real training volumes, real only vs
    synthetic pretrain + real fine-tune, mean ± std over seeds; saved as ``<base>.png`` and ``.pdf``.

    Returns ``(figure, [png, pdf])``; the figure stays open.
    """
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8))
    labels = {"real": "real only", "pretrain_finetune": "synthetic pretrain + real fine-tune"}
    for ax, metric in zip(axes, ("accuracy", "auc")):
        for i, regime in enumerate([r for r in ("real", "pretrain_finetune") if r in set(table["regime"])]):
            t = table[table["regime"] == regime].sort_values("real_fraction")
            dodge = 1.0 + 0.03 * (i - 0.5)   # small x offsets (log axis) so equal lines stay visible
            ax.errorbar(100 * t["real_fraction"] * dodge, t[f"{metric}_mean"], yerr=t[f"{metric}_std"], marker="o",
                        capsize=3, label=labels[regime])
        ax.set_xscale("log")
        fr = sorted(set(100 * table["real_fraction"]))
        ax.set_xticks(fr)
        ax.set_xticklabels([f"{f:g}" for f in fr])
        ax.set_xlabel("real training volumes used (%; lines offset slightly)")
        ax.set_ylabel(f"test {'accuracy (balanced test set)' if metric == 'accuracy' else 'AUC'}")
        ax.set_ylim(-0.02, 1.02)
        ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    axes[0].legend(loc="lower right", fontsize=7)
    size = table["size_vox"].iloc[0] if len(table) else float("nan")
    fig.suptitle(title or f"Fig 3c: data scarcity at injected nodule size {size:g} voxels", fontsize=10)
    return fig, _save(fig, path_base, note)


def _save(fig, path_base: str | Path, note: str, bottom: float = 0.26) -> list[Path]:
    """Write ``<base>.png`` and ``.pdf`` atomically, the footer ``note`` drawn and stored in the file metadata (as
    viz.save_figure does), so it can be read and checked as text."""
    if note:
        fig.text(0.01, 0.005, note, fontsize=6, ha="left", va="bottom", wrap=True)
        fig.subplots_adjust(bottom=bottom)
    path_base = Path(path_base)
    paths = []
    meta = {"png": {"Software": "ctsgan_lib.reporting", "Description": note},
            "pdf": {"Creator": "ctsgan_lib.reporting", "Subject": note, "CreationDate": None}}
    for ext in ("png", "pdf"):
        p = path_base.with_suffix(f".{ext}")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=150, format=ext, metadata=meta[ext])
        paths.append(p)
    return paths
