"""Checks and figure data of the nodule cGANs on whole volumes (notebook 02, Fig B.1/B.2).

:func:`injection_check` measures injected nodules; :func:`erasure_check` compares erased scans with the known
nodule-free truth (:func:`phantom_truth`); :func:`injector_examples` / :func:`eraser_examples` give the VOI panels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..data import phantom
from ..data.sources import prepare_volume
from ..errors import CTSGANError
from .geometry import NODULE_LABEL, ball, extract_voi, lung_of, measure_nodule, nodule_blend_weight, paste_voi
from .inference import NoduleEraser, NoduleInjector


# ------------------------------------------------------------------------------------------------ quality checks
def injection_check(injector: NoduleInjector, cohort, diameters_vox: Sequence[float], n_scans: int = 6,
                    seed: int = 0) -> pd.DataFrame:
    """Inject ``diameters_vox`` into nodule-free test/val/train scans and measure each nodule.

    Returns
    -------
    DataFrame: one row per injected nodule with ``requested_vox``, ``measured_vox`` (half-maximum equivalent
    sphere), ``core_hu``, ``in_lung`` and ``changed_outside_voi`` (voxels changed farther than the VOI: must be 0).
    """
    rows = []
    ids = [i for s in ("test", "val", "train") for i in cohort.ids(split=s, has_nodule=0)][:n_scans]
    for k, rid in enumerate(ids):
        hu, _ = cohort.read(rid)
        lung = lung_of(hu, cohort.read_label(rid))
        out, nods = injector.inject(hu, list(diameters_vox), np.random.default_rng([seed, k]), lung=lung)
        near = np.zeros(hu.shape, bool)
        half = injector.voi_size // 2
        for n in nods:
            near[tuple(slice(max(c - half, 0), c + half) for c in n["center_vox"])] = True
        changed = int((out[~near] != hu[~near]).sum())
        for n in nods:
            m = measure_nodule(out, n["center_vox"], n["diameter_vox"] / 2 + 1)
            rows.append({"scan": rid, "requested_vox": n["diameter_vox"], "measured_vox": m["diameter_vox"],
                         "core_hu": m["core_hu"], "in_lung": bool(lung[tuple(n["center_vox"])]),
                         "changed_outside_voi": changed})
    return pd.DataFrame(rows)


def phantom_truth(cfg, row: dict) -> np.ndarray:
    """Nodule-free truth of a phantom cohort row: the same patient rendered without its nodules (same noise) and
    preprocessed like the cohort (``ctsgan_lib.data.phantom.render_phantom(..., with_nodules=False)``)."""
    if str(row.get("source")) != "phantom" or row.get("seed") in (None, ""):
        raise CTSGANError(f"volume {row.get('id')!r} is not a phantom with a recorded seed: no nodule-free truth")
    p = phantom.sample_params(int(row["seed"]), row["domain"], cfg.data.phantom_size, cfg.data.phantom_spacing_mm)
    ph = phantom.render_phantom(p, with_nodules=False)
    hu, _, _, _ = prepare_volume(cfg, ph.hu, ph.spacing_mm)
    return hu


def erasure_check(eraser: NoduleEraser, cohort, truth_fn, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Erase the nodules of nodule-bearing scans and compare with the known nodule-free truth.

    ``truth_fn(row) -> hu`` gives the truth (e.g. ``lambda r: phantom_truth(cfg, r)``). The error is measured on
    the nodule voxels (label 7 when the cohort has labels, else the sphere of the recorded diameter, at least the
    centre voxel) and on the whole erase support (weight > 0).

    Returns
    -------
    DataFrame: one row per scan with ``mae_nodule_before`` / ``mae_nodule_after`` and ``mae_support_before`` /
    ``mae_support_after`` (HU), and ``n_nodules``.
    """
    rows = []
    for rid in (ids if ids is not None else cohort.ids(has_nodule=1)):
        row = cohort.row(rid)
        nods = [n for n in (row["nodules"] or []) if n.get("action", "original") != "erased"]
        if not nods:
            continue
        hu, _ = cohort.read(rid)
        label = cohort.read_label(rid)
        truth = truth_fn(row)
        out = eraser.erase(hu, nods)
        nod_mask = np.zeros(hu.shape, bool) if label is None else label == NODULE_LABEL
        support = np.zeros(hu.shape, bool)
        for n in nods:
            c = [int(round(float(v))) for v in n["center_vox"]]
            nod_mask[tuple(c)] = True
            w = nodule_blend_weight(eraser.voi_size, min(float(n["diameter_vox"]), eraser.mask_size))
            support |= paste_voi(np.zeros(hu.shape, np.float32), np.ones_like(w), c, w) > 0
            if label is None:
                nod_mask |= paste_voi(np.zeros(hu.shape, np.float32), np.ones_like(w), c,
                                      (ball(eraser.voi_size, float(n["diameter_vox"])) >= 0.5).astype(np.float32)) > 0
        rows.append({"scan": rid, "n_nodules": len(nods),
                     "mae_nodule_before": float(np.abs(hu - truth)[nod_mask].mean()),
                     "mae_nodule_after": float(np.abs(out - truth)[nod_mask].mean()),
                     "mae_support_before": float(np.abs(hu - truth)[support].mean()),
                     "mae_support_after": float(np.abs(out - truth)[support].mean())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ figure data
def injector_examples(injector: NoduleInjector, cohort, diameters_vox: Sequence[float], seed: int = 0) -> list[dict]:
    """Fig B.1 panels: for each diameter, one nodule-free scan's VOI → masked input → injected VOI (HU arrays, the
    centre slice is ``[voi_size // 2]``)."""
    ids = [i for s in ("test", "val", "train") for i in cohort.ids(split=s, has_nodule=0)]
    out = []
    for k, d in enumerate(diameters_vox):
        rid = ids[k % len(ids)]
        hu, _ = cohort.read(rid)
        new, nods = injector.inject(hu, [float(d)], np.random.default_rng([seed, k]),
                                    lung=lung_of(hu, cohort.read_label(rid)))
        if not nods:
            continue
        c = nods[0]["center_vox"]
        voi = extract_voi(hu, c, injector.voi_size)
        out.append({"scan": rid, "diameter_vox": float(d), "voi": voi,
                    "masked": np.where(injector._mask > 0, np.nan, voi),
                    "injected": extract_voi(new, c, injector.voi_size), "volume_before": hu, "volume_after": new,
                    "center_vox": c})
    return out


def eraser_examples(eraser: NoduleEraser, cohort, n: int = 3, truth_fn=None) -> list[dict]:
    """Fig B.2 panels: VOIs around real nodules → erased (and the nodule-free truth when ``truth_fn`` is given)."""
    ids = [i for s in ("test", "val", "train") for i in cohort.ids(split=s, has_nodule=1)]
    out = []
    for rid in ids:
        row = cohort.row(rid)
        nods = row["nodules"] or []
        if not nods:
            continue
        nod = max(nods, key=lambda x: float(x["diameter_vox"]))       # the most visible one
        hu, _ = cohort.read(rid)
        new = eraser.erase(hu, nods)
        c = [int(round(float(v))) for v in nod["center_vox"]]
        ex = {"scan": rid, "diameter_vox": float(nod["diameter_vox"]), "voi": extract_voi(hu, c, eraser.voi_size),
              "erased": extract_voi(new, c, eraser.voi_size), "center_vox": c}
        if truth_fn is not None:
            ex["truth"] = extract_voi(truth_fn(row), c, eraser.voi_size)
        out.append(ex)
        if len(out) >= n:
            break
    return out
