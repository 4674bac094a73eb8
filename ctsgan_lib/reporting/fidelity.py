"""Tables, captions and plots of the fidelity study (paper Table 1, 2.5D and pooled FID), from its metric records.

The records are the JSON lines of :func:`ctsgan_lib.eval.fidelity.run_fidelity`; :func:`run_table1` is notebook 05 in
one call (compute the records, then write the tables).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..eval.fidelity import PAPER_TABLE1, VIEWS, mean_std, row_label, run_fidelity, table1_sources
from ..train.gan3d_loop import critic_steps
from ..utils.atomic import atomic_write_text
from ..viz.saving import figure_caption


def _row_keys(records: list[dict[str, Any]]) -> list[str]:
    """Table rows in the paper's order, then any other rows in order of appearance."""
    seen = list(dict.fromkeys(r["row"] for r in records))
    return [k for k in PAPER_TABLE1 if k in seen] + [k for k in seen if k not in PAPER_TABLE1]


def _fmt(ms: tuple[float, float]) -> str:
    m, s = ms
    return "n/a" if not np.isfinite(m) else f"{m:.2f} ± {s:.2f}"


#: the paper's own relative FD: each row's FID over its real–real FID (130.72)
PAPER_RELATIVE_FD = {k: v["fid"][0] / PAPER_TABLE1["real"]["fid"][0] for k, v in PAPER_TABLE1.items()}


def _values(rec, metric: str, protocol: str = "pair", view: str | None = "axial") -> list[float]:
    return [r["value"] for r in rec if r["metric"] == metric and r["protocol"] == protocol
            and (view is None or r["view"] == view)]


def relative_fd_interval(row_values: Sequence[float], real_values: Sequence[float], n_boot: int = 2000,
                         seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Relative FD (mean pair FID of a row over the real–real mean) with a percentile bootstrap interval.

    The row's pairs and the real–real pairs are resampled independently (they are different scan pairs), and the ratio
    of the two resampled means is taken each time.

    Returns
    -------
    (estimate, low, high); NaNs when either side is empty or the real–real mean is not positive.
    """
    a, b = np.asarray(row_values, dtype=float), np.asarray(real_values, dtype=float)
    if not len(a) or not len(b) or not b.mean() > 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ia, ib = rng.integers(0, len(a), (n_boot, len(a))), rng.integers(0, len(b), (n_boot, len(b)))
    ratio = a[ia].mean(axis=1) / np.maximum(b[ib].mean(axis=1), 1e-12)
    lo, hi = np.percentile(ratio, [50 * (1 - level), 50 * (1 + level)])
    return float(a.mean() / b.mean()), float(lo), float(hi)


def relative_fd_difference(a_values: Sequence[float], b_values: Sequence[float], real_values: Sequence[float],
                           n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Relative FD of row a minus that of row b, with a percentile bootstrap interval.

    The three sets of pairs (row a, row b, real–real) are resampled independently; both ratios of one resample share
    its real–real mean, as the two rows of one table do. An interval that excludes 0 orders the two rows.
    """
    a, b, r = (np.asarray(v, dtype=float) for v in (a_values, b_values, real_values))
    if not len(a) or not len(b) or not len(r) or not r.mean() > 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ia, ib, ir = (rng.integers(0, len(x), (n_boot, len(x))) for x in (a, b, r))
    diff = (a[ia].mean(axis=1) - b[ib].mean(axis=1)) / np.maximum(r[ir].mean(axis=1), 1e-12)
    lo, hi = np.percentile(diff, [50 * (1 - level), 50 * (1 + level)])
    return float((a.mean() - b.mean()) / r.mean()), float(lo), float(hi)


def ordering_lines(records: list[dict[str, Any]]) -> list[str]:
    """CT-SGAN minus 3D GAN relative FD, slice-wise and 3D, with intervals and the paper's difference (Table 1's
    claim: CT-SGAN closer to real than the 3D GAN)."""
    rows = {k: [r for r in records if r["row"] == k] for k in ("real", "ctsgan", "gan3d")}
    if not all(rows.values()):
        return []
    out = []
    for what, metric, view in (("slice-wise axial FID", "fid", "axial"), ("3D FID", "fid3d", "3d")):
        est = relative_fd_difference(*(_values(rows[k], metric, view=view) for k in ("ctsgan", "gan3d", "real")))
        if not np.isfinite(est[0]):
            continue
        verdict = ("CT-SGAN closer to real" if est[2] < 0 else "3D GAN closer to real" if est[1] > 0
                   else "no ordering shown")
        paper = (f"; paper (slice-wise): {PAPER_RELATIVE_FD['ctsgan'] - PAPER_RELATIVE_FD['gan3d']:+.2f}"
                 if metric == "fid" else "")
        out.append(f"CT-SGAN − 3D GAN relative FD ({what}): {est[0]:+.2f} [{est[1]:+.2f}, {est[2]:+.2f}] "
                   f"(95 % bootstrap over pairs) → {verdict}{paper}")
    return out


def _rel_text(est: tuple[float, ...]) -> str:
    if not np.isfinite(est[0]):
        return "n/a"
    return f"{est[0]:.2f} (reference)" if len(est) == 1 else f"{est[0]:.2f} [{est[1]:.2f}, {est[2]:.2f}]"


def summarise(records: list[dict[str, Any]], budgets: dict[str, str] | None = None):
    """Table 1, the 2.5D table and the pooled table as pandas DataFrames (mean ± std strings plus raw numbers).

    Table 1 columns: the paper's FID and ours, relative FD (ours: the row's mean pair FID over the real–real mean of
    the same run, with a 95 % bootstrap interval over pairs, :func:`relative_fd_interval`; the paper's:
    145.18 / 130.72 = 1.11 and 206.34 / 130.72 = 1.58), KID, the 3D metrics (3D FID and
    MMD of the 3D encoder's slab features, MS-SSIM between pairs of the row's own volumes), IS, the extractor, and the
    training budget of the GAN rows (``budgets``: row key → text).
    """
    rows, rows25, rowsp = [], [], []
    budgets = budgets or {}
    real_rec = [r for r in records if r["row"] == "real"]
    real_fids, real_fids3d = _values(real_rec, "fid"), _values(real_rec, "fid3d", view="3d")
    for key in _row_keys(records):
        rec = [r for r in records if r["row"] == key]
        nan = (float("nan"), float("nan"))
        paper = PAPER_TABLE1.get(key, {"label": key, "is": nan, "fid": nan})
        fid = _values(rec, "fid")
        isv = _values(rec, "is", "volume")
        fm, fs = mean_std(fid)
        im, is_ = mean_std(isv)
        km, ks = mean_std(_values(rec, "kid"))
        f3 = mean_std(_values(rec, "fid3d", view="3d"))
        m3 = mean_std(_values(rec, "mmd3d", view="3d"))
        ms = mean_std(_values(rec, "msssim", "within", view="3d"))
        rel_ci, rel3_ci = relative_fd_interval(fid, real_fids), relative_fd_interval(_values(rec, "fid3d", view="3d"),
                                                                                     real_fids3d)
        if key == "real":   # the reference itself: 1 by definition, no interval
            rel_ci, rel3_ci = ((1.0 if np.isfinite(v[0]) else float("nan"),) for v in (rel_ci, rel3_ci))
        rel, rel3 = rel_ci[0], rel3_ci[0]
        ex = rec[0]
        rows.append({"Data Source": paper["label"],
                     "FID (↓) paper": _fmt(paper["fid"]), "FID (↓) ours": _fmt((fm, fs)),
                     "relative FD paper": f"{PAPER_RELATIVE_FD[key]:.2f}" if key in PAPER_RELATIVE_FD else "n/a",
                     "relative FD ours [95 % CI]": _rel_text(rel_ci),
                     "KID (↓) ours": "n/a" if not np.isfinite(km) else f"{km:.4f} ± {ks:.4f}",
                     "3D FID (↓) ours": _fmt(f3), "3D relative FD [95 % CI]": _rel_text(rel3_ci),
                     "3D MMD (↓) ours": "n/a" if not np.isfinite(m3[0]) else f"{m3[0]:.4f} ± {m3[1]:.4f}",
                     "MS-SSIM within row (↓ = more diverse)": "n/a" if not np.isfinite(ms[0]) else
                     f"{ms[0]:.3f} ± {ms[1]:.3f}",
                     "IS (↑) paper": _fmt(paper["is"]), "IS (↑) ours": _fmt((im, is_)),
                     "extractor": f"{ex.get('extractor')} [{ex.get('weights_kind')}, "
                                  f"{str(ex.get('weights_sha256'))[:12]}]"
                                  + (f" + {ex['extractor_3d']} [{str(ex.get('weights_3d_sha256'))[:12]}]"
                                     if ex.get("extractor_3d") else ""),
                     "training budget": budgets.get(key, "–"),
                     "fid_mean": fm, "fid_std": fs, "is_mean": im, "is_std": is_, "relative_fd": rel,
                     "kid_mean": km, "fid3d_mean": f3[0], "mmd3d_mean": m3[0], "msssim_mean": ms[0],
                     "n_pairs": len(fid), "n_volumes_is": len(isv)})
        r25 = {"Data Source": paper["label"]}
        rp = {"Data Source": paper["label"]}
        for view in VIEWS:
            v = _values(rec, "fid", view=view)
            if v:
                r25[f"FID {view}"] = _fmt(mean_std(v))
            p = [r for r in rec if r["metric"] == "fid" and r["protocol"] == "pooled" and r["view"] == view]
            if p:
                rp[f"pooled FID {view}"] = f"{p[0]['value']:.2f}"
                rp[f"slices per side ({view})"] = "/".join(str(n) for n in p[0]["n_slices"])
        rows25.append(r25)
        rowsp.append(rp)
    return pd.DataFrame(rows), pd.DataFrame(rows25), pd.DataFrame(rowsp)


def budget_text(log: Path, iterations: int, n_d: int) -> str:
    """One GAN run's training budget: generator steps × critic updates per step, and the wall-clock seconds of its
    ``log.csv`` when it can be read (else the configured budget only)."""
    text = f"{iterations} G steps × {n_d} critic updates (configured)"
    if log.is_file():
        try:
            df = pd.read_csv(log)
            if len(df) and "seconds" in df and "step" in df:
                text = (f"{int(df['step'].iloc[-1])} G steps × {n_d} critic updates, "
                        f"{float(df['seconds'].sum()):.0f} s wall-clock (log.csv)")
        except (OSError, ValueError, pd.errors.ParserError):
            pass
    return text


def training_budgets(cfg) -> dict[str, str]:
    """The GAN rows' training budgets for Table 1 (:func:`budget_text` of ``runs/<P>/{ctsgan,gan3d}/log.csv``)."""
    return {key: budget_text(cfg.runs_dir / key / "log.csv", sec.iterations, n_d)
            for key, sec, n_d in (("ctsgan", cfg.ctsgan, int(cfg.ctsgan.d_steps)),
                                  ("gan3d", cfg.gan3d, critic_steps(cfg)))}


def provenance(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings every table states (taken from the records so tables cannot drift from the metrics)."""
    r = records[0]
    return {k: r.get(k) for k in ("profile", "data_source", "extractor", "weights_kind", "weights_sha256", "seed",
                                  "hardware", "comparable_to_paper", "extractor_note", "max_slices", "n_pairs_cfg",
                                  "extractor_3d", "weights_3d_sha256")}


def table_markdown(df, prov: dict[str, Any], title: str) -> str:
    """A markdown table with its provenance block and, when it applies, the not-comparable warning in it."""
    raw = ("fid_mean", "fid_std", "is_mean", "is_std", "relative_fd", "kid_mean", "fid3d_mean", "mmd3d_mean",
           "msssim_mean", "n_pairs", "n_volumes_is")
    cols = [c for c in df.columns if c not in raw]
    lines = [f"**{title}**", ""]
    if not prov.get("comparable_to_paper"):
        lines += [f"> **NOT COMPARABLE TO THE PAPER**: {prov.get('extractor_note')}. Compare the relative FD "
                  "columns (each row's FID over the real–real FID of the same extractor), not the raw FIDs.", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    ex3d = (f" · 3D encoder: {prov['extractor_3d']} (weights SHA-256 {prov['weights_3d_sha256']})"
            if prov.get("extractor_3d") else "")
    lines += ["", f"profile: {prov['profile']} · data: {prov['data_source']} · extractor: {prov['extractor']} "
              f"({prov['weights_kind']}, weights SHA-256 {prov['weights_sha256']}){ex3d} · seed: {prov['seed']} · "
              f"slices per volume: {prov['max_slices'] or 'all'} · hardware: {prov['hardware']}"]
    return "\n".join(lines) + "\n"


def write_tables(records: list[dict[str, Any]], out_dir: str | Path,
                 budgets: dict[str, str] | None = None) -> dict[str, Any]:
    """Write ``table1.csv``/``table1.md`` (+ ``table_2p5d.*`` and ``table_pooled.*``) atomically; return the frames."""
    out_dir = Path(out_dir)
    t1, t25, tp = summarise(records, budgets)
    prov = provenance(records)
    frames = {"table1": t1, "table_2p5d": t25, "table_pooled": tp}
    titles = {"table1": "Table 1: slice-wise FID, relative FD, KID and IS (axial, random scan pairs, mean ± std), "
                        "3D FID / MMD and MS-SSIM diversity (beyond the paper); the paper's rows: CT-SGAN at 224³, "
                        "3D GAN at 128³ resized to 224³; ours at this profile's sizes",
              "table_2p5d": "2.5D pair FID per view (mean ± std; beyond the paper)",
              "table_pooled": "Pooled FID: all slices of many volumes per side (beyond the paper)"}
    for name, df in frames.items():
        full = df.copy()
        for k, v in prov.items():
            full[k] = v  # the table itself carries profile, data, extractor + hash, seed, hardware, comparability
        atomic_write_text(out_dir / f"{name}.csv", full.to_csv(index=False))
        md = table_markdown(df, prov, titles[name])
        if name == "table1" and ordering_lines(records):
            md += "\n" + "\n".join(f"- {line}" for line in ordering_lines(records)) + "\n"
        atomic_write_text(out_dir / f"{name}.md", md)
    return {**frames, "provenance": prov}


def fidelity_caption(prov: dict[str, Any]) -> str:
    """Provenance line for saved figures (``viz.save_figure``): profile, data, seed, extractor + hash, hardware."""
    extra = f"{prov['extractor']} [{prov['weights_kind']}] weights sha256 {str(prov['weights_sha256'])[:12]}"
    if not prov.get("comparable_to_paper"):
        extra += " · NOT ImageNet features: not comparable to the paper"
    return figure_caption(prov["profile"], prov["data_source"], prov["seed"], extra=extra, hardware=prov["hardware"])


def plot_fid_boxplots(records: list[dict[str, Any]], ax=None, view: str = "axial"):
    """Box plots of the per-pair FID distributions, one box per Table 1 row, with the paper's mean ± std marked."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    keys = _row_keys(records)
    data = [[r["value"] for r in records if r["row"] == k and r["metric"] == "fid" and r["protocol"] == "pair"
             and r["view"] == view] for k in keys]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(keys) + 1), [row_label(k).split(" (")[0] for k in keys], fontsize=8)
    for i, k in enumerate(keys, start=1):
        if k not in PAPER_TABLE1 or view != "axial":  # the paper reports axial FID only
            continue
        m, s = PAPER_TABLE1[k]["fid"]
        ax.errorbar(i + 0.3, m, yerr=s, fmt="s", color="tab:red", capsize=3,
                    label="paper mean ± std" if i == 1 else None)
    prov = provenance(records)
    ax.set_ylabel(f"per-pair FID ({view})")
    note = "" if prov["comparable_to_paper"] else "\nNOT ImageNet features: not comparable to the paper"
    ax.set_title(f"FID over random scan pairs · profile {prov['profile']} · {prov['extractor']} "
                 f"{str(prov['weights_sha256'])[:12]} · seed {prov['seed']}{note}", fontsize=8)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)
    return ax


def ordering_statement(table1) -> str:
    """The FID ordering of the Table 1 rows as found (never assumed), beside the paper's."""
    names = {"Real Data": "real-real", PAPER_TABLE1["gan3d"]["label"]: "3D GAN", PAPER_TABLE1["ctsgan"]["label"]:
             "CT-SGAN"}  # (relative FD keeps this order: it divides every row by the same real–real mean)
    rows = sorted(((r["fid_mean"], names.get(r["Data Source"], r["Data Source"])) for _, r in table1.iterrows()),
                  key=lambda t: t[0])
    ours = " < ".join(f"{n} ({m:.1f})" for m, n in rows)
    paper = " < ".join(f"{n} ({PAPER_TABLE1[k]['fid'][0]:.1f})" for k, n in
                       (("real", "real-real"), ("ctsgan", "CT-SGAN"), ("gan3d", "3D GAN")))
    return f"FID ordering found: {ours}. Paper: {paper}."


def run_table1(cfg, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Notebook 05 in one call: every metric of Table 1 (+ 2.5D and pooled, computed by
    :func:`ctsgan_lib.eval.fidelity.run_fidelity`) and the tables on disk.

    Writes ``runs/<P>/fidelity/metrics.jsonl`` (replaced atomically, so a rerun does not duplicate lines),
    ``table1.csv``/``table1.md``, ``table_2p5d.*`` and ``table_pooled.*``.

    Returns
    -------
    dict
        ``records``, ``table1``, ``table_2p5d``, ``table_pooled`` (DataFrames) and ``provenance``.
    """
    real, rows = table1_sources(cfg)
    out_dir = cfg.runs_dir / "fidelity"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "metrics.jsonl.new"
    tmp.unlink(missing_ok=True)
    records = run_fidelity(cfg, real, rows, out=tmp, device=device, progress=progress)
    tmp.replace(out_dir / "metrics.jsonl")
    return {"records": records, **write_tables(records, out_dir, training_budgets(cfg))}


def records_as_jsonl(records: list[dict[str, Any]]) -> str:
    """Records as JSON lines text (for display)."""
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
