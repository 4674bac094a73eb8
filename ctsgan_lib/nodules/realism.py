"""How real do injected nodules look? Matched native/injected VOIs, a realism CNN's held-out AUC, nodule measurements.

The protocol (docs/nodules.md, "Realism"):

- **Matched VOIs** (:func:`realism_vois`): for every real nodule of the *held-out* nodule-bearing scans (splits
  ``val`` and ``test``; the injector never saw them), a *native* VOI is cut around it, and an *injected* VOI is cut
  at the same place from the same patient's nodule-free truth (the phantom renders each patient without its nodules,
  same noise) after the injector painted a nodule of the same recorded diameter there. So the two sets match in
  size, position, patient, scanner and context; only the nodule differs. Every injector compared gets the same
  sites. Without a truth (real scans), injected VOIs come from held-out nodule-free scans at random lung positions.
- **Realism AUC** (:func:`realism_auc`): a small 3D CNN (:class:`RealismCNN`) learns native (1) against injected
  (0) in grouped K-fold cross-validation (a patient's VOIs stay in one fold), so every VOI gets a held-out score; the
  ROC AUC of those scores, with a stratified bootstrap interval. 0.5: the CNN cannot tell them apart.
- **Measurements** (:func:`nodule_features`): equivalent diameter (half-maximum, as
  :func:`~ctsgan_lib.nodules.geometry.measure_nodule`), mean HU and HU spread of the nodule (voxels above
  :data:`NODULE_FLOOR_HU` connected to the centre), sphericity and the part-solid flag.

Everything here returns records (dicts, arrays, DataFrames); tables and figures live in
:mod:`ctsgan_lib.reporting.nodules`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from ..data.intensity import hu_to_model
from ..errors import CTSGANError, MissingInputError
from ..utils.atomic import atomic_path, atomic_write_text
from .checks import injection_check
from .geometry import ball, extract_voi, lung_of, measure_nodule, place_nodules_indexed

NODULE_FLOOR_HU = -650.0      # nodule region for the measurements: ground glass (about -550 HU) and brighter
GROUND_GLASS_HU = (-650.0, -300.0)   # a voxel in this band counts as ground glass
PART_SOLID_SHARE = 0.3        # part-solid: at least this share of the nodule is ground glass, and a solid core


def crop_size(mask_size: int) -> int:
    """Side of the VOIs the realism CNN sees: the masked centre plus 2 voxels each side (the paste-back feather)."""
    return int(mask_size) + 4


# ------------------------------------------------------------------------------------------------ measurements
def nodule_features(voi_hu: np.ndarray, diameter_vox: float) -> dict:
    """Measurements of the nodule at the centre voxel of ``voi_hu``.

    Returns
    -------
    dict
        ``measured_vox`` (half-maximum equivalent diameter, 0 when nothing stands out), ``mean_hu`` and ``sd_hu``
        (nodule region: voxels above :data:`NODULE_FLOOR_HU` connected to the centre within ``diameter / 2 + 2``),
        ``sphericity`` (``pi^(1/3) (6 V)^(2/3) / A`` with ``A`` the exposed voxel-face area: 1 for a ball in the
        continuum, about 0.66 for a voxelised ball; lower is rougher), ``ggo_share`` (share of the region in
        :data:`GROUND_GLASS_HU`) and ``part_solid`` (``ggo_share >= PART_SOLID_SHARE`` and a voxel above -300 HU).
    """
    c = voi_hu.shape[0] // 2
    size_m = measure_nodule(voi_hu, [c, c, c], diameter_vox / 2.0 + 1.0)
    radius = diameter_vox / 2.0 + 2.0
    box = int(2 * np.ceil(radius) + 3)
    sub = extract_voi(voi_hu, [c, c, c], box)
    k = box // 2
    sel = (sub > NODULE_FLOOR_HU) & (ball(box, 2 * radius) >= 0.5)
    lab, _ = ndi.label(sel)
    if lab[k, k, k] == 0:   # the centre voxel is not nodule: take the brightest voxel of the central 3³
        near = sub[k - 1:k + 2, k - 1:k + 2, k - 1:k + 2]
        z, y, x = np.unravel_index(int(np.argmax(near)), near.shape)
        lab_c = lab[k - 1 + z, k - 1 + y, k - 1 + x]
    else:
        lab_c = lab[k, k, k]
    if lab_c == 0:
        return {"measured_vox": float(size_m["diameter_vox"]), "mean_hu": float("nan"), "sd_hu": float("nan"),
                "sphericity": float("nan"), "ggo_share": float("nan"), "part_solid": False}
    comp = lab == lab_c
    vals = sub[comp]
    n = float(comp.sum())
    faces = sum(float(np.abs(np.diff(np.pad(comp, 1).astype(np.int8), axis=a)).sum()) for a in range(3))
    ggo = float(((vals > GROUND_GLASS_HU[0]) & (vals <= GROUND_GLASS_HU[1])).mean())
    return {"measured_vox": float(size_m["diameter_vox"]), "mean_hu": float(vals.mean()),
            "sd_hu": float(vals.std()), "sphericity": float(np.pi ** (1 / 3) * (6 * n) ** (2 / 3) / faces),
            "ggo_share": ggo, "part_solid": bool(ggo >= PART_SOLID_SHARE and (vals > GROUND_GLASS_HU[1]).any())}


# ------------------------------------------------------------------------------------------------ matched VOIs
@dataclass
class RealismSet:
    """Matched VOIs (HU, side :func:`crop_size`): ``native`` and one array per injector name in ``injected``.

    ``rows`` has one row per (site, source) with ``site``, ``scan``, ``source`` (``native`` or the injector name),
    ``requested_vox`` (the recorded diameter), the :func:`nodule_features` and ``kind`` (the phantom's kind for
    native nodules).
    """

    native: np.ndarray
    injected: dict[str, np.ndarray]
    scans: np.ndarray
    diameters_vox: np.ndarray
    rows: pd.DataFrame
    protocol: str
    full_vois: dict[str, np.ndarray] = field(default_factory=dict)


def realism_vois(cohort, injectors: Mapping[str, object], mask_size: int,
                 truth_fn: Callable[[dict], np.ndarray] | None = None, splits: Sequence[str] = ("val", "test"),
                 seed: int = 0, max_sites: int | None = None, keep_full: int = 0) -> RealismSet:
    """Matched native / injected VOIs of the held-out scans (module docstring).

    Parameters
    ----------
    cohort : Cohort
    injectors : {name: NoduleInjector}
        Every injector paints a nodule at every site (same sites, same requested diameters).
    mask_size : int
        Injectors' masked centre; nodules larger than it are skipped; the crop is :func:`crop_size`.
    truth_fn : callable, optional
        ``truth_fn(row) -> hu``: the scan without its nodules (e.g. ``lambda r: phantom_truth(cfg, r)``). Without
        it, sites come from held-out nodule-free scans (random lung positions).
    splits : held-out splits.
    seed : int
        Injection noise and (without truth) placement.
    max_sites : int, optional
        Stop after this many sites.
    keep_full : int
        Keep the full injector VOIs (side ``voi_size``) of the first ``keep_full`` sites for figures.
    """
    crop = crop_size(mask_size)
    sites = []
    for split in splits:
        for rid in cohort.ids(split=split, has_nodule=1):
            for k, nod in enumerate(cohort.row(rid)["nodules"] or []):
                d = float(nod["diameter_vox"])
                if nod.get("action", "original") == "original" and 0 < d <= mask_size:
                    sites.append((rid, k, [int(round(float(v))) for v in nod["center_vox"]], d,
                                  str(nod.get("kind", ""))))
    if max_sites is not None:
        sites = sites[:max_sites]
    if not sites:
        raise CTSGANError(f"{cohort.root}: no nodules of diameter <= {mask_size} vox in splits {list(splits)}")
    free = [i for s in splits for i in cohort.ids(split=s, has_nodule=0)]
    if truth_fn is None and not free:
        raise CTSGANError(f"{cohort.root}: no nodule-free scans in splits {list(splits)} to inject into")
    native, injected = [], {name: [] for name in injectors}
    full = {name: [] for name in ["native", *injectors]}
    rows, scans, diams = [], [], []
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for j, (rid, k, c, d, kind) in enumerate(sites):
        if rid not in cache:
            cache.clear()   # one scan at a time (sites are grouped by scan)
            hu, _ = cohort.read(rid)
            cache[rid] = (hu, truth_fn(cohort.row(rid)) if truth_fn is not None else None)
        hu, truth = cache[rid]
        rng = np.random.default_rng([seed, j])
        if truth is not None:
            base, bc = truth, c
        else:   # no truth: a random lung position of a held-out nodule-free scan
            fid = free[j % len(free)]
            base, _ = cohort.read(fid)
            placed = place_nodules_indexed(lung_of(base, cohort.read_label(fid)), [d], rng)
            if not placed:
                continue
            bc = placed[0]
        nv = extract_voi(hu, c, crop)
        native.append(nv)
        rows.append({"site": j, "scan": rid, "source": "native", "requested_vox": d, "kind": kind,
                     **nodule_features(nv, d)})
        if j < keep_full:
            full["native"].append(extract_voi(hu, c, next(iter(injectors.values())).voi_size))
        for name, inj in injectors.items():
            out = inj.inject_at(base, bc, d, rng=np.random.default_rng([seed, j, 1]))
            iv = extract_voi(out, bc, crop)
            injected[name].append(iv)
            rows.append({"site": j, "scan": rid, "source": name, "requested_vox": d, "kind": "",
                         **nodule_features(iv, d)})
            if j < keep_full:
                full[name].append(extract_voi(out, bc, inj.voi_size))
        scans.append(rid)
        diams.append(d)
    protocol = ("same site in the phantom's nodule-free rendering of the same patient" if truth_fn is not None
                else "random lung site of a held-out nodule-free scan")
    return RealismSet(np.stack(native), {k: np.stack(v) for k, v in injected.items()}, np.asarray(scans),
                      np.asarray(diams), pd.DataFrame(rows), protocol,
                      {k: np.stack(v) for k, v in full.items() if v})


class NoInjection:
    """The power baseline of the realism check: "injects" nothing (returns the nodule-free base unchanged).

    Its AUC says whether the realism CNN can find the native nodules at all: near 0.5 means the nodules of this
    cohort are too faint or small for the check to rank any injector (a low injector AUC then means nothing).
    """

    kind, step = "none", 0

    def __init__(self, voi_size: int, mask_size: int):
        self.voi_size, self.mask_size = int(voi_size), int(mask_size)

    def inject_at(self, hu: np.ndarray, center, diameter_vox: float, **_) -> np.ndarray:
        return hu.copy()


# ------------------------------------------------------------------------------------------------ realism CNN
class RealismCNN(nn.Module):
    """Small 3D CNN: three 3³ conv blocks (8, 16, 32 channels, two 2× poolings), then one logit.

    ``pooling="flatten"`` (default) keeps where things are: the nodule sits at the VOI's centre, and a global mean
    would have to tell a centre nodule from the vessels around it by counting bright blobs (on the demo cohort the
    global-mean CNN could not find native nodules at all: AUC 0.50 against no nodule). ``"mean"``: global mean.
    """

    def __init__(self, side: int, width: int = 8, pooling: str = "flatten"):
        super().__init__()
        w = width
        if pooling not in ("flatten", "mean"):
            raise ValueError(f"pooling must be 'flatten' or 'mean', got {pooling!r}")
        head = ([nn.Flatten(), nn.Linear(4 * w * (side // 4) ** 3, 1)] if pooling == "flatten" else
                [nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4 * w, 1)])
        self.net = nn.Sequential(
            nn.Conv3d(1, w, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool3d(2),
            nn.Conv3d(w, 2 * w, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool3d(2),
            nn.Conv3d(2 * w, 4 * w, 3, padding=1), nn.LeakyReLU(0.1), *head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and axis order per VOI (the volumes are isotropic, so both keep a VOI plausible)."""
    out = np.empty_like(x)
    for i in range(len(x)):
        v = np.transpose(x[i], rng.permutation(3))
        for a in range(3):
            if rng.random() < 0.5:
                v = np.flip(v, a)
        out[i] = v
    return out


def _train_fold(x: np.ndarray, y: np.ndarray, steps: int, batch: int, seed: int, lr: float,
                pooling: str = "flatten") -> RealismCNN:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = RealismCNN(x.shape[1], pooling=pooling)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(steps):
        idx = np.concatenate([rng.choice(pos, batch // 2), rng.choice(neg, batch // 2)])   # balanced batches
        xb = torch.from_numpy(_augment(x[idx], rng)[:, None])
        loss = loss_fn(model(xb), torch.from_numpy(y[idx].astype(np.float32)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def bootstrap_auc(y: np.ndarray, score: np.ndarray, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the ROC AUC over stratified bootstrap resamples (positives and negatives resampled
    separately, so every resample has both)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        aucs[b] = roc_auc_score(y[idx], score[idx])
    a = (1 - level) / 2
    return float(np.quantile(aucs, a)), float(np.quantile(aucs, 1 - a))


def realism_auc(positive: np.ndarray, negative: np.ndarray, groups_pos: Sequence | None = None,
                groups_neg: Sequence | None = None, folds: int = 4, steps: int = 150, batch: int = 32,
                seed: int = 0, n_boot: int = 1000, lr: float = 2e-3, hu_window: tuple[float, float] = (-1000, 400),
                pooling: str = "flatten") -> dict:
    """Held-out ROC AUC of :class:`RealismCNN` telling ``positive`` (native, label 1) from ``negative`` VOIs (HU).

    Stratified grouped K-fold: VOIs sharing a group (a patient; matched pairs share one) never sit on both sides of
    a split.
    Each fold trains a fresh CNN for ``steps`` balanced batches and scores the held-out VOIs.

    Returns
    -------
    dict
        ``auc``, ``ci_low``, ``ci_high`` (bootstrap, ``n_boot`` resamples), ``n_pos``, ``n_neg``, ``folds``,
        ``steps``, ``scores`` and ``labels`` (held-out, one per VOI: positives first).
    """
    x = np.concatenate([positive, negative]).astype(np.float32)
    x = hu_to_model(x, *hu_window).astype(np.float32)
    y = np.concatenate([np.ones(len(positive), int), np.zeros(len(negative), int)])
    gp = np.arange(len(positive)) if groups_pos is None else np.asarray(groups_pos)
    gn = np.arange(len(positive), len(x)) if groups_neg is None else np.asarray(groups_neg)
    groups = np.concatenate([gp.astype(str), gn.astype(str)])
    k = min(folds, len(np.unique(groups)))
    if k < 2 or len(positive) < 2 or len(negative) < 2:
        raise CTSGANError(f"realism AUC needs >= 2 VOIs per class and >= 2 groups (got {len(positive)} native, "
                          f"{len(negative)} injected, {len(np.unique(groups))} groups)")
    scores = np.zeros(len(x), np.float64)
    folds_of = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)   # classes balanced per fold
    for f, (tr, te) in enumerate(folds_of.split(x, y, groups)):
        if len(np.unique(y[tr])) < 2:
            raise CTSGANError("a realism-CNN training fold holds only one class; use fewer folds")
        model = _train_fold(x[tr], y[tr], steps, batch, seed * 1000 + f, lr, pooling)
        with torch.no_grad():
            scores[te] = torch.cat([model(torch.from_numpy(x[te][i:i + 256, None]))
                                    for i in range(0, len(te), 256)]).numpy()
    auc = float(roc_auc_score(y, scores))
    lo, hi = bootstrap_auc(y, scores, n_boot, seed)
    return {"auc": auc, "ci_low": lo, "ci_high": hi, "n_pos": int(len(positive)), "n_neg": int(len(negative)),
            "folds": int(k), "steps": int(steps), "pooling": pooling, "scores": scores, "labels": y}


def compare_injectors(data: RealismSet, folds: int = 4, steps: int = 150, seed: int = 0, n_boot: int = 1000
                      ) -> dict[str, dict]:
    """:func:`realism_auc` of native against each injector's VOIs of the same sites (groups: the scan)."""
    return {name: realism_auc(data.native, inj, data.scans, data.scans, folds=folds, steps=steps, seed=seed,
                              n_boot=n_boot)
            for name, inj in data.injected.items()}


def size_errors(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean absolute error |measured - requested| (voxels) per source and requested size (rounded to 1 voxel).

    Native rows measure how far the half-maximum diameter of a *real* nodule is from its recorded diameter: the
    floor any injector can be held to with this measurement.
    """
    r = rows.assign(size_vox=rows["requested_vox"].round().clip(lower=1).astype(int),
                    abs_err_vox=(rows["measured_vox"] - rows["requested_vox"]).abs())
    return (r.groupby(["source", "size_vox"]).agg(n=("abs_err_vox", "size"), mae_vox=("abs_err_vox", "mean"),
                                                  measured_mean_vox=("measured_vox", "mean"))
            .reset_index())


# ------------------------------------------------------------------------------------------------ the stage's run
def examples_per_size(data: RealismSet, per_size: int = 1) -> dict[str, np.ndarray]:
    """Figure data: the first ``per_size`` sites of each requested size (rounded to 1 voxel), their VOIs per source.

    Returns ``{"size_vox": (n,), "native": (n, c, c, c), <injector>: (n, c, c, c), ...}``.
    """
    sizes = np.clip(np.round(data.diameters_vox), 1, None).astype(int)
    pick = [i for s in np.unique(sizes) for i in np.flatnonzero(sizes == s)[:per_size]]
    out = {"size_vox": sizes[pick], "requested_vox": data.diameters_vox[pick], "native": data.native[pick]}
    out.update({name: v[pick] for name, v in data.injected.items()})
    return out


def run_realism(cfg, injectors: Mapping[str, object], cohort, truth_fn=None, seed: int | None = None,
                max_sites: int | None = None, splits: Sequence[str] = ("val", "test")) -> dict:
    """The realism check of the nodule stage: matched VOIs, realism AUC per injector, measurements, size errors.

    Parameters
    ----------
    cfg : Config
        ``cfg.nodules.realism_folds`` / ``realism_steps`` / ``realism_bootstrap``, ``mask_size``, ``seed``.
    injectors : {name: NoduleInjector}, e.g. ``{"learned": ..., "sphere": ...}``
    cohort : the prepared cohort.
    splits : the held-out splits (default ``val`` and ``test``).
    truth_fn : ``row -> hu`` nodule-free truth (phantom), optional.

    Returns
    -------
    dict
        ``auc`` ({name: {auc, ci_low, ci_high, n_pos, n_neg, folds, steps}}), ``rows`` (DataFrame of measurements),
        ``size_errors`` (DataFrame), ``examples`` (figure VOIs), ``protocol``, ``n_sites``, ``injector_steps``,
        ``paste`` (each learned injector's paste-back and noise touch-up σ).
    """
    nc = cfg.nodules
    seed = cfg.seed if seed is None else int(seed)
    data = realism_vois(cohort, injectors, nc.mask_size, truth_fn, splits=splits, seed=seed, max_sites=max_sites)
    aucs = compare_injectors(data, folds=nc.realism_folds, steps=nc.realism_steps, seed=seed,
                             n_boot=nc.realism_bootstrap)
    return {"auc": {k: {kk: vv for kk, vv in v.items() if kk not in ("scores", "labels")} for k, v in aucs.items()},
            "rows": data.rows, "size_errors": size_errors(data.rows), "examples": examples_per_size(data),
            "protocol": data.protocol, "n_sites": int(len(data.native)),
            "injector_steps": {k: int(getattr(v, "step", 0)) for k, v in injectors.items()},
            "paste": {k: {"paste": v.paste, "touchup_sigma_vox": float(getattr(v, "touchup_sigma_vox", 0.0))}
                      for k, v in injectors.items() if getattr(v, "kind", "") == "learned"}}


def experiment_size_check(injectors: Mapping[str, object], cohort, diameters_vox: Sequence[float], n_scans: int = 6,
                          seed: int = 0) -> pd.DataFrame:
    """Size control at the detection study's sizes (``nodules.diameters_vox``, Fig 3b): each injector paints every
    size into ``n_scans`` nodule-free scans (test, val, then train); one row per nodule with ``source``,
    ``requested_vox`` and ``measured_vox`` (half maximum). Sizes above the training nodules' are extrapolation for
    the learned injector."""
    frames = []
    for name, inj in injectors.items():
        sizes = [float(d) for d in diameters_vox if float(d) <= inj.mask_size]
        df = injection_check(inj, cohort, sizes, n_scans=n_scans, seed=seed)
        frames.append(df.assign(source=name)[["source", "scan", "requested_vox", "measured_vox", "core_hu"]])
    return pd.concat(frames, ignore_index=True)


def save_realism(result: dict, folder: str | Path, note: str = "") -> Path:
    """Write a :func:`run_realism` result to ``folder``: ``realism.json`` (AUCs, protocol, ``note`` saying which run
    made it), ``rows.csv`` (measurements), ``size_errors.csv`` and ``examples.npz`` (figure VOIs). Atomic per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables = [("rows.csv", result["rows"]), ("size_errors.csv", result["size_errors"])]
    if result.get("experiment_sizes") is not None:
        tables.append(("experiment_sizes.csv", result["experiment_sizes"]))
    for name, df in tables:
        with atomic_path(folder / name) as tmp:
            df.to_csv(tmp, index=False)
    with atomic_path(folder / "examples.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **result["examples"])
    meta = {k: result[k] for k in ("auc", "protocol", "n_sites", "injector_steps")}
    meta.update({k: result[k] for k in ("settings", "hardware", "seconds", "paste") if k in result})
    meta["note"] = note
    atomic_write_text(folder / "realism.json", json.dumps(meta, indent=1) + "\n")
    return folder


def load_realism(folder: str | Path) -> dict:
    """Read what :func:`save_realism` wrote (``rows`` and ``size_errors`` as DataFrames, ``examples`` as arrays)."""
    folder = Path(folder)
    if not (folder / "realism.json").is_file():
        raise MissingInputError(f"missing input {folder / 'realism.json'}: run 02_nodule_gans.ipynb (or "
                                "benchmarks/nodule_realism_budget.py) first")
    out = json.loads((folder / "realism.json").read_text())
    out["rows"] = pd.read_csv(folder / "rows.csv", keep_default_na=True)
    out["size_errors"] = pd.read_csv(folder / "size_errors.csv")
    if (folder / "experiment_sizes.csv").is_file():
        out["experiment_sizes"] = pd.read_csv(folder / "experiment_sizes.csv")
    with np.load(folder / "examples.npz") as z:
        out["examples"] = {k: z[k] for k in z.files}
    return out
