"""Tables and plots of the nodule realism check (:mod:`ctsgan_lib.nodules.realism`): ``nodule_realism.{csv,md}`` and
Fig B.4 (native and injected nodules of each size side by side, three views each, and their measurement
distributions)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..utils.atomic import atomic_path, atomic_write_text
from ..viz import save_figure

SOURCES_ORDER = ("native", "learned", "learned_jin", "learned_local", "sphere", "none")
FEATURES = {"measured_vox": "equivalent diameter (vox)", "mean_hu": "mean HU", "sd_hu": "HU spread (SD)",
            "sphericity": "sphericity (voxel faces)", "ggo_share": "ground-glass share"}


def _sources(record: dict) -> list[str]:
    found = list(dict.fromkeys(record["rows"]["source"]))
    return [s for s in SOURCES_ORDER if s in found] + [s for s in found if s not in SOURCES_ORDER]


def auc_table(record: dict) -> pd.DataFrame:
    """One row per injector: realism AUC (native vs injected, held-out) with its bootstrap interval."""
    rows = []
    for name, a in record["auc"].items():
        rows.append({"injector": name, "auc": round(a["auc"], 3), "ci_low": round(a["ci_low"], 3),
                     "ci_high": round(a["ci_high"], 3), "n_native": a["n_pos"], "n_injected": a["n_neg"],
                     "folds": a["folds"], "cnn_steps": a["steps"],
                     "injector_step": record.get("injector_steps", {}).get(name, ""),
                     "paste_back": (_paste_words(record["paste"][name]) if name in record.get("paste", {}) else "")})
    return pd.DataFrame(rows)


def size_table(record: dict) -> pd.DataFrame:
    """Mean absolute diameter error (voxels) per requested size (rows) and source (columns), with counts."""
    se = record["size_errors"]
    mae = se.pivot(index="size_vox", columns="source", values="mae_vox")
    n = se.pivot(index="size_vox", columns="source", values="n")
    cols = [c for c in _sources(record) if c in mae.columns]
    out = pd.DataFrame({"size_vox": mae.index})
    out["n_sites"] = n[cols[0]].to_numpy().astype(int)
    for c in cols:
        out[f"mae_vox_{c}"] = mae[c].round(2).to_numpy()
    return out.reset_index(drop=True)


def experiment_size_table(record: dict) -> pd.DataFrame | None:
    """MAE |measured - requested| (voxels) at the detection study's sizes, per source (None when not measured)."""
    es = record.get("experiment_sizes")
    if es is None or not len(es):
        return None
    g = es.assign(abs_err_vox=(es["measured_vox"] - es["requested_vox"]).abs())
    t = g.groupby(["requested_vox", "source"])["abs_err_vox"].mean().unstack("source").round(2)
    t.columns = [f"mae_vox_{c}" for c in t.columns]
    n = g.groupby("requested_vox").size() // max(1, g["source"].nunique())
    return t.reset_index().rename(columns={"requested_vox": "size_vox"}).assign(n_per_source=n.to_numpy())


def distribution_table(record: dict) -> pd.DataFrame:
    """Per source: how many nodules stand out at half maximum, median size, mean HU, HU spread, sphericity and the
    part-solid share."""
    r = record["rows"]
    rows = []
    for s in _sources(record):
        g = r[r["source"] == s]
        rows.append({"source": s, "n": len(g), "detected_share": round(float((g["measured_vox"] > 0).mean()), 3),
                     "median_diameter_vox": round(float(g["measured_vox"].median()), 2),
                     "mean_hu": round(float(g["mean_hu"].mean()), 1), "sd_hu": round(float(g["sd_hu"].mean()), 1),
                     "sphericity": round(float(g["sphericity"].median()), 3),
                     "part_solid_share": round(float(g["part_solid"].astype(bool).mean()), 3)})
    return pd.DataFrame(rows)


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


_PASTE_WORDS = {"centre": "Jin et al.'s centre paste-back", "ctgan": "CT-GAN's density-gated paste-back",
                "local": "the local paste-back"}


def _paste_words(paste: dict) -> str:
    """``nodules.paste`` and the noise touch-up in words (``{}``: a record from before they were recorded)."""
    words = _PASTE_WORDS.get(paste.get("paste", "centre"), str(paste.get("paste")))
    sigma = paste.get("touchup_sigma_vox")
    return words + (f", noise touch-up σ {sigma:g} voxel" if sigma else "")


def _verdict(a: dict, b: dict) -> str:
    """How AUC ``a`` stands against the sphere injector's ``b``, intervals included."""
    nums = (f"{a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] against the sphere's {b['auc']:.3f} "
            f"[{b['ci_low']:.3f}, {b['ci_high']:.3f}]")
    if a["ci_high"] < b["ci_low"]:
        return f"below the sphere injector, the intervals apart: {nums}"
    if a["auc"] < b["auc"]:
        return f"level with the sphere injector (lower, but the intervals overlap): {nums}"
    return f"NOT below the sphere injector: {nums}"


def write_realism_report(record: dict, out: str | Path, caption: str = "") -> list[Path]:
    """``nodule_realism.csv`` (the three tables stacked, a ``table`` column naming each) and ``nodule_realism.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    auc, size, dist = auc_table(record), size_table(record), distribution_table(record)
    exp = experiment_size_table(record)
    parts = [auc.assign(table="realism_auc"), size.assign(table="diameter_mae_vox"),
             dist.assign(table="distributions")]
    if exp is not None:
        parts.append(exp.assign(table="diameter_mae_vox_study_sizes"))
    csv = pd.concat(parts, ignore_index=True)
    csv = csv[["table"] + [c for c in csv.columns if c != "table"]]
    with atomic_path(out / "nodule_realism.csv") as tmp:
        csv.to_csv(tmp, index=False)
    better = ""
    if {"learned", "sphere"} <= set(record["auc"]):
        sphere = record["auc"]["sphere"]
        better = (f"The learned injector ({_paste_words(record.get('paste', {}).get('learned', {}))}) is "
                  f"{_verdict(record['auc']['learned'], sphere)}; closer to 0.5 is more realistic.")
        for name, words in (("learned_jin", "Jin et al.'s centre paste-back"),
                            ("learned_local", "the local paste-back (`nodules.paste: local`)")):
            if name in record["auc"]:
                better += f" With {words} it is {_verdict(record['auc'][name], sphere)}."
        better += "\n\n"
    if "none" in record["auc"]:
        nb = record["auc"]["none"]
        better += (f"Power baseline `none` (native nodules against the same sites with no nodule at all): AUC "
                   f"{nb['auc']:.3f} [{nb['ci_low']:.3f}, {nb['ci_high']:.3f}]. "
                   + ("Its interval includes 0.5: the CNN cannot even find these nodules, so the injector AUCs above "
                      "cannot rank the injectors on this cohort.\n\n" if nb["ci_low"] <= 0.5 else
                      "The CNN finds the native nodules, so the check has power.\n\n"))
    md = ["# Nodule realism: native against injected nodules", "",
          f"Run: {record.get('note') or 'not recorded'}", "",
          f"Protocol: held-out scans (val + test), {record['n_sites']} native nodules; each injector paints a nodule "
          f"of the recorded diameter at the {record['protocol']}. A small 3D CNN (grouped, stratified K-fold by "
          "scan) scores every VOI held out; ROC AUC of native (1) vs injected (0), 95 % stratified bootstrap "
          "interval. 0.5: the CNN cannot tell them apart.", "",
          "## Realism AUC", "", _md(auc), "", better,
          "## Diameter error per requested size", "",
          "Mean absolute error (voxels) of the half-maximum equivalent diameter against the requested (= the native "
          "nodule's recorded) diameter. The `native` column is the same measurement on the real nodules: the floor "
          "this measurement allows.", "", _md(size), "",
          *(["## Diameter error at the detection study's sizes", "",
             "Each injector paints every size of `nodules.diameters_vox` (Fig 3b) into held-out nodule-free scans. "
             "Sizes beyond the training nodules' are extrapolation for the learned injector.", "", _md(exp), ""]
            if exp is not None else []),
          "## Distributions", "", _md(dist), "",
          "Columns: share of nodules that stand out at half maximum; their median equivalent diameter; mean HU and HU "
          "SD over the nodule (voxels above -650 HU connected to the centre); median sphericity (voxel faces; lower = "
          "rougher); share flagged part-solid (>= 30 % ground glass with a solid core).", ""]
    if caption:
        md += [f"_{caption}_", ""]
    atomic_write_text(out / "nodule_realism.md", "\n".join(md))
    return [out / "nodule_realism.csv", out / "nodule_realism.md"]


def realism_figure(record: dict, title: str = "Fig B.4 · native and injected nodules") -> Figure:
    """Fig B.4: per requested size (rows) the centre axial, coronal and sagittal slices of a native nodule and of
    each injector's nodule at the same site (lung window), then the distributions of the measurements."""
    ex = record["examples"]
    srcs = [s for s in _sources(record) if s in ex]
    n = len(ex["size_vox"])
    fig = Figure(figsize=(1.25 * 3 * len(srcs) + 0.5, 1.3 * n + 2.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.3 * n, 2.4])
    axes = top.subplots(n, 3 * len(srcs), squeeze=False)
    for i in range(n):
        for j, s in enumerate(srcs):
            v = ex[s][i]
            c = v.shape[0] // 2
            for k, (img, view) in enumerate(((v[c], "ax"), (v[:, c], "cor"), (v[:, :, c], "sag"))):
                ax = axes[i, 3 * j + k]
                ax.imshow(img, cmap="gray", vmin=-1000, vmax=200, origin="upper" if view == "ax" else "lower")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{s} · {view}", fontsize=7)
            axes[i, 0].set_ylabel(f"{float(ex['requested_vox'][i]):.1f} vox", fontsize=7)
    top.suptitle(title, fontsize=9)
    r = record["rows"]
    hax = bottom.subplots(1, len(FEATURES))
    for ax, (col, label) in zip(hax, FEATURES.items()):
        vals = [r.loc[r["source"] == s, col].dropna().to_numpy(float) for s in _sources(record)]
        allv = np.concatenate([v for v in vals if len(v)]) if any(len(v) for v in vals) else np.zeros(1)
        bins = np.linspace(np.nanmin(allv), np.nanmax(allv) + 1e-6, 16)
        for s, v in zip(_sources(record), vals):
            ax.hist(v, bins=bins, histtype="step", label=s, density=True)
        ax.set_xlabel(label, fontsize=7)
        ax.tick_params(labelsize=6)
    hax[0].legend(fontsize=6)
    aucs = ", ".join(f"{k} AUC {a['auc']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}]"
                     for k, a in record["auc"].items())
    bottom.suptitle(f"measurements, native vs injected (held-out sites); realism CNN: {aucs}", fontsize=8)
    return fig


def save_realism_figure(record: dict, out: str | Path, caption: str = "") -> list[Path]:
    """Draw :func:`realism_figure` and save ``figB4_nodule_realism.{png,pdf}`` in ``out``."""
    return save_figure(realism_figure(record), Path(out) / "figB4_nodule_realism", caption)
