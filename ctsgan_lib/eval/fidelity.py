"""Slice-wise FID and Inception Score with torch-fidelity (paper §4.2, Table 1), plus 2.5D and pooled variants.

Protocol (paper §4.2): "we randomly selected two different scans in the data source (real or synthetic) and computed
the FID slice by slice in order". One FID = the set of axial slices of one scan against the set of axial slices of
the other; repeated over ``fidelity.n_pairs`` random pairs, reported as mean ± std. Real-vs-real pairs are always two
different patients. IS is computed per volume over its slices, mean ± std over volumes.

Beyond the paper:

* **2.5D**: the same pair FID on axial, coronal and sagittal slices, per view (cf. MAISI's 2.5D FID).
* **pooled**: all slices of many volumes per side, which has far less small-sample bias than ~S slices per set.

Cost control: each volume's features are extracted once per view through torch-fidelity's own extractor and cached
under ``runs/<P>/fidelity/features/`` with a key made from the volume checksum, the view, the slice selection and the
weights' SHA-256. Every pairwise statistic is computed from the cache. The FID of two small sets (n < 2048) is
computed exactly in the n-dimensional span of the centred features (trace of the matrix square root from the singular
values of ``A1 A2ᵀ``), which equals torch-fidelity's ``fid_statistics_to_metric`` (a test checks it against a direct
``torch_fidelity.calculate_metrics`` call) and is ~1000× faster than its 2048×2048 eigen-decomposition.

This module computes and returns metric records (:func:`run_fidelity`); the tables, captions and box plots made from
them are in :mod:`ctsgan_lib.reporting.fidelity`.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.cohort import Cohort, volume_checksum
from ..data.intensity import hu_to_uint8
from ..data.views import VIEW_AXIS, VIEWS
from ..errors import CTSGANError
from ..utils.atomic import atomic_path
from ..utils.hardware import hardware_label
from ..utils.logs import append_jsonl, read_jsonl
from . import domain as DM
from .distances import fid_from_features, is_from_logits, kid_from_features, msssim_3d  # noqa: F401 (re-exported)
from .inception import FEATURES, Extractor, hub_weights_path, resolve_extractor

FID_LAYER, IS_LAYER = FEATURES  # the Inception layers; an Extractor names its own (``fid_layer``, ``is_layer``)

#: Paper Table 1 (mean ± std), set beside ours. The labels leave out sizes: the paper's rows were 224³ (CT-SGAN) and
#: 128³ → 224³ (3D GAN); ours are the profile's (``data.size``, ``gan3d.size``), which the table's caption states.
PAPER_TABLE1 = {
    "real": {"label": "Real Data", "is": (2.21, 0.21), "fid": (130.72, 31.05)},
    "gan3d": {"label": "3D GAN Synthetic Data (resized)", "is": (2.16, 0.26), "fid": (206.34, 59.12)},
    "ctsgan": {"label": "CT-SGAN Synthetic Data", "is": (2.37, 0.19), "fid": (145.18, 25.97)},
}


# --------------------------------------------------------------------------------------------------------------------
# slices
# --------------------------------------------------------------------------------------------------------------------
def slice_indices(n: int, max_slices: int = 0) -> np.ndarray:
    """Indices of the slices used, in order: all of them, or ``max_slices`` evenly spaced ones."""
    if max_slices <= 0 or max_slices >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_slices)).astype(int))


def volume_slices(hu: np.ndarray, view: str = "axial", max_slices: int = 0, hu_min: float = -1000.0,
                  hu_max: float = 400.0) -> np.ndarray:
    """Slices of a HU volume as torch-fidelity wants them: uint8, shape (N, 3, H, W).

    Parameters
    ----------
    hu : np.ndarray
        Volume in HU, axis order (z, y, x).
    view : str
        ``axial`` (slices along z), ``coronal`` (along y) or ``sagittal`` (along x).
    max_slices : int
        0 = every slice; otherwise that many evenly spaced slices, kept in order.
    hu_min, hu_max : float
        Window mapped to [0, 255] (via :func:`ctsgan_lib.data.intensity.hu_to_uint8`).

    Returns
    -------
    np.ndarray
        uint8 (N, 3, H, W): the grey slice repeated to three channels.
    """
    if view not in VIEW_AXIS:
        raise CTSGANError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise CTSGANError(f"expected a 3-D (z, y, x) volume, got shape {hu.shape}")
    axis = VIEW_AXIS[view]
    idx = slice_indices(hu.shape[axis], max_slices)
    sl = np.moveaxis(np.take(hu, idx, axis=axis), axis, 0)
    u8 = hu_to_uint8(sl, hu_min, hu_max)
    return np.ascontiguousarray(np.repeat(u8[:, None], 3, axis=1))


class SliceStack(torch.utils.data.Dataset):
    """A uint8 (N, 3, H, W) array as the ``Dataset`` torch-fidelity consumes (one 3×H×W uint8 tensor per item)."""

    def __init__(self, slices_u8: np.ndarray):
        slices_u8 = np.asarray(slices_u8)
        if slices_u8.dtype != np.uint8 or slices_u8.ndim != 4 or slices_u8.shape[1] != 3:
            raise CTSGANError(f"slices must be uint8 (N, 3, H, W), got {slices_u8.dtype} {slices_u8.shape}")
        self.x = torch.from_numpy(np.ascontiguousarray(slices_u8))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


# --------------------------------------------------------------------------------------------------------------------
# features (torch-fidelity's extractor) and their cache
# --------------------------------------------------------------------------------------------------------------------
class FeatureRunner:
    """A torch-fidelity feature extractor (``inception-v3-compat`` or the registered ``ctsgan-domain2d``), created
    once, run on slice stacks (on the GPU when there is one).

    Uses ``torch_fidelity.utils.create_feature_extractor`` and ``get_featuresdict_from_dataset``: the same code
    ``calculate_metrics`` runs, so cached features are exactly what torch-fidelity would compute.
    """

    def __init__(self, extractor: Extractor, batch: int = 32, device: str | None = None):
        self.extractor = extractor
        self.batch = int(batch)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._net = None
        self.slices_done = 0

    @property
    def net(self):
        if self._net is None:
            from torch_fidelity.utils import create_feature_extractor  # torch-fidelity: 1.6 s to import (torchvision)

            if self.extractor.name == DM.DOMAIN2D_NAME:
                DM.register()
            layers = [self.extractor.fid_layer, self.extractor.is_layer]
            self._net = create_feature_extractor(self.extractor.name, layers, cuda=self.device == "cuda",
                                                 feature_extractor_weights_path=self.extractor.weights_path,
                                                 verbose=False)
        return self._net

    def __call__(self, slices_u8: np.ndarray) -> dict[str, np.ndarray]:
        """Features of a uint8 (N, 3, H, W) stack, keyed by layer (e.g. ``{"2048": (N, 2048), "logits_unbiased": (N,
        1008)}`` for Inception, ``{"feat": (N, 128), "logits_unbiased": (N, regions)}`` for the domain CNN)."""
        from torch_fidelity.utils import get_featuresdict_from_dataset  # torch-fidelity: 1.6 s to import (torchvision)

        out = get_featuresdict_from_dataset(SliceStack(slices_u8), self.net, self.batch, self.device == "cuda",
                                            save_cpu_ram=True, verbose=False)
        self.slices_done += len(slices_u8)
        return {k: v.numpy().astype(np.float32, copy=False) for k, v in out.items()}


class FeatureCache:
    """Per-volume, per-view features on disk: ``<folder>/<checksum>-<view>-<settings>-<weights>.npz``.

    Parameters
    ----------
    folder : Path
        ``runs/<P>/fidelity/features``.
    runner : FeatureRunner
    max_slices : int
        Slice selection per volume and view (part of the key).
    hu_min, hu_max : float
        Window (part of the key).
    """

    def __init__(self, folder: str | Path, runner: FeatureRunner, max_slices: int = 0, hu_min: float = -1000.0,
                 hu_max: float = 400.0):
        self.folder = Path(folder)
        self.runner = runner
        self.max_slices = int(max_slices)
        self.hu_min, self.hu_max = float(hu_min), float(hu_max)
        self.hits = 0
        self.misses = 0
        self._mem: dict[str, dict[str, np.ndarray]] = {}

    def key(self, checksum: str, view: str) -> str:
        settings = f"s{self.max_slices}_w{self.hu_min:g}_{self.hu_max:g}"
        return f"{checksum[:24]}-{view}-{settings}-{self.runner.extractor.sha256[:16]}"

    def get(self, cohort, vid: str, view: str = "axial") -> dict[str, np.ndarray]:
        """Features of one volume and view (``"2048"``, ``"logits_unbiased"``, ``"shape"``), extracted on a miss."""
        key = self.key(volume_checksum(cohort, vid), view)
        if key in self._mem:
            self.hits += 1
            return self._mem[key]
        path = self.folder / f"{key}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    feats = {k: z[k] for k in z.files}
                self.hits += 1
                self._mem[key] = feats
                return feats
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # torn or foreign file: recompute
        hu, _ = cohort.read(vid)
        hu = np.asarray(hu)
        feats = self.runner(volume_slices(hu, view, self.max_slices, self.hu_min, self.hu_max))
        feats["shape"] = np.asarray(hu.shape, dtype=np.int64)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **feats)
        self.misses += 1
        self._mem[key] = feats
        return feats


# --------------------------------------------------------------------------------------------------------------------
# protocol
# --------------------------------------------------------------------------------------------------------------------
def row_label(key: str) -> str:
    """The Table 1 label of a row key (the paper's wording for its three rows, else the key)."""
    return PAPER_TABLE1[key]["label"] if key in PAPER_TABLE1 else key


def cohort_ids(cohort, split: str | None = None, name: str = "cohort") -> list[str]:
    """Ids of a cohort (optionally one split), refusing an empty one with a clear error."""
    ids = list(cohort.ids(split=split)) if split else list(cohort.ids())
    if not ids:
        where = getattr(cohort, "root", name)
        raise CTSGANError(f"{where}: cohort is empty{f' (split {split!r})' if split else ''}; nothing to compare")
    return sorted(ids)


def select_pool(ids: Sequence[str], k: int, seed: int) -> list[str]:
    """``k`` ids drawn without replacement (all when ``k`` is 0 or larger than the cohort), in sorted order."""
    ids = sorted(ids)
    if k <= 0 or k >= len(ids):
        return ids
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=k, replace=False).tolist())


def draw_pairs(ref_ids: Sequence[str], other_ids: Sequence[str], n_pairs: int, seed: int,
               same_source: bool) -> list[tuple[str, str]]:
    """Random scan pairs (paper §4.2), as ``(other_id, ref_id)``.

    With ``same_source`` (real vs real) both come from ``ref_ids`` and are always two different patients.

    Raises
    ------
    CTSGANError
        ``same_source`` with fewer than two patients, an empty side, or ``n_pairs < 1``.
    """
    if n_pairs < 1:
        raise CTSGANError(f"fidelity.n_pairs must be >= 1, got {n_pairs}")
    if not ref_ids or not other_ids:
        raise CTSGANError("cannot draw pairs from an empty cohort")
    rng = np.random.default_rng(seed)
    pairs = []
    if same_source:
        if len(ref_ids) < 2:
            raise CTSGANError(f"real-vs-real FID needs two different patients, but the cohort has only one "
                              f"({ref_ids[0]})")
        for _ in range(n_pairs):
            i, j = rng.choice(len(ref_ids), size=2, replace=False)
            pairs.append((ref_ids[int(i)], ref_ids[int(j)]))
    else:
        for _ in range(n_pairs):
            o = other_ids[int(rng.integers(len(other_ids)))]
            pairs.append((o, ref_ids[int(rng.integers(len(ref_ids)))]))
    return pairs


def volume_shape(cohort, vid: str) -> tuple[int, ...]:
    """Shape of a volume from its manifest row (read from the file only when the row has none)."""
    try:
        shape = cohort.row(vid).get("shape")
    except (KeyError, TypeError, AttributeError):
        shape = None
    if shape is None or (isinstance(shape, str) and not shape):
        shape = np.asarray(cohort.read(vid)[0]).shape
    elif isinstance(shape, str):
        shape = json.loads(shape)
    return tuple(int(v) for v in shape)


def precheck(real: "Source", others: Sequence["Source"], pool_size: int, seed: int, max_slices: int = 0,
             isc_splits: int = 1) -> None:
    """Refuse bad input before any feature is extracted: empty cohorts, a one-patient cohort for real vs real,
    volumes of different sizes (checked on the volumes that will actually be compared), too few slices for IS."""
    real_ids = select_pool(cohort_ids(real.cohort, real.split, real.name), pool_size, seed)
    ref_shape = volume_shape(real.cohort, real_ids[0])
    n_slices = len(slice_indices(ref_shape[0], max_slices))
    if n_slices < 2 or n_slices < isc_splits:
        raise CTSGANError(f"{n_slices} axial slices per volume: FID needs >= 2 and IS needs >= fidelity.isc_splits "
                          f"({isc_splits}); raise fidelity.max_slices or lower fidelity.isc_splits")
    for src in others:
        if src.key == "real":
            if len(real_ids) < 2:
                raise CTSGANError(f"{getattr(real.cohort, 'root', real.name)}: real-vs-real FID needs two different "
                                  f"patients, but the cohort has only one ({real_ids[0]})")
            ids, cohort = real_ids, real.cohort
        else:
            ids = select_pool(cohort_ids(src.cohort, src.split, src.name), pool_size, seed + 1)
            cohort = src.cohort
        for vid in ids:
            shape = volume_shape(cohort, vid)
            if shape != ref_shape:
                raise CTSGANError(f"size mismatch: {src.name} volume {vid} has shape {shape} but {real.name} volume "
                                  f"{real_ids[0]} has {ref_shape}; compare volumes of the same S³ (the paper resized "
                                  "the 3D GAN's 128³ output to 224³ first)")
        for vid in real_ids:
            if volume_shape(real.cohort, vid) != ref_shape:
                raise CTSGANError(f"size mismatch inside {real.name}: {vid} has shape "
                                  f"{volume_shape(real.cohort, vid)}, {real_ids[0]} has {ref_shape}")


def _check_shapes(fa: dict, fb: dict, what: str) -> None:
    sa, sb = tuple(int(v) for v in fa["shape"]), tuple(int(v) for v in fb["shape"])
    if sa != sb:
        raise CTSGANError(f"size mismatch in {what}: volumes of shape {sa} vs {sb}; compare volumes of the same S³ "
                          "(the paper resized the 3D GAN's 128³ output to 224³ first)")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value, NaN for none)."""
    v = np.asarray(list(values), dtype=np.float64)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0) if len(v) else (float("nan"), float("nan"))


@dataclass
class Source:
    """One Table 1 row's data: ``key`` in PAPER_TABLE1 (``real``, ``gan3d``, ``ctsgan``), cohort, name for tables."""

    key: str
    cohort: Any
    name: str
    split: str | None = None


def evaluate_source(cache: FeatureCache, real: Source, other: Source, *, n_pairs: int, pool_size: int,
                    pooled_volumes: int, views: Sequence[str], isc_splits: int, seed: int,
                    base: dict[str, Any] | None = None, kid_subsets: int = 50, encoder3d=None,
                    hu_window: tuple[float, float] = (-1000.0, 400.0)) -> list[dict[str, Any]]:
    """All metrics of one Table 1 row as JSON-ready records.

    ``other`` is compared against ``real``; when ``other.key == "real"`` the pairs are two different real patients
    and the pooled sets are two disjoint halves of the real pool.

    Returns
    -------
    list of dict
        ``metric`` (``fid``, ``kid``, ``is``; with ``encoder3d`` also ``fid3d``, ``mmd3d`` per pair and ``msssim``
        per within-source pair), ``protocol`` (``pair``, ``pooled``, ``volume``, ``within``), ``view``, ``value``
        and ids. ``encoder3d(hu) -> (n_slabs, d)`` gives the 3D encoder's slab features of a volume.
    """
    base = dict(base or {})
    same = other.key == "real"
    real_ids = select_pool(cohort_ids(real.cohort, real.split, real.name), pool_size, seed)
    other_ids = real_ids if same else select_pool(cohort_ids(other.cohort, other.split, other.name), pool_size,
                                                  seed + 1)
    pairs = draw_pairs(real_ids, other_ids, n_pairs, seed, same)
    row = {**base, "row": other.key, "row_label": row_label(other.key), "source": other.name,
           "reference": real.name}
    fl, il = cache.runner.extractor.fid_layer, cache.runner.extractor.is_layer
    records: list[dict[str, Any]] = []
    for view in views:
        for k, (a, b) in enumerate(pairs):
            fa = cache.get(other.cohort, a, view)
            fb = cache.get(real.cohort, b, view)
            _check_shapes(fa, fb, f"{other.name} {a} vs {real.name} {b}")
            pair = {**row, "protocol": "pair", "view": view, "pair": k, "a": a, "b": b,
                    "n_slices": [int(len(fa[fl])), int(len(fb[fl]))]}
            records.append({**pair, "metric": "fid", "value": fid_from_features(fa[fl], fb[fl])})
            records.append({**pair, "metric": "kid", "kid_subsets": kid_subsets,
                            "value": kid_from_features(fa[fl], fb[fl], kid_subsets, seed + k)})
        # pooled: all slices of many volumes per side (disjoint patients for real vs real)
        if same:
            half = len(real_ids) // 2  # draw_pairs above already refused a one-patient cohort
            side_a, side_b = real_ids[:half][:pooled_volumes or None], real_ids[half:][:pooled_volumes or None]
        else:
            side_a, side_b = other_ids[:pooled_volumes or None], real_ids[:pooled_volumes or None]
        fa = [cache.get(other.cohort, v, view) for v in side_a]
        fb = [cache.get(real.cohort, v, view) for v in side_b]
        for f in fa[1:] + fb:
            _check_shapes(fa[0], f, f"pooled {other.name} vs {real.name}")
        pa = np.concatenate([f[fl] for f in fa])
        pb = np.concatenate([f[fl] for f in fb])
        records.append({**row, "metric": "fid", "protocol": "pooled", "view": view, "a": side_a, "b": side_b,
                        "n_slices": [int(len(pa)), int(len(pb))], "value": fid_from_features(pa, pb)})
    # IS per volume over its axial slices (paper: "IS was also computed slice-by-slice")
    for vid in other_ids:
        f = cache.get(other.cohort, vid, "axial")
        records.append({**row, "metric": "is", "protocol": "volume", "view": "axial", "a": vid,
                        "n_slices": [int(len(f[il]))], "isc_splits": isc_splits,
                        "value": is_from_logits(f[il], isc_splits, seed)})
    if encoder3d is not None:
        records += _records_3d(encoder3d, real, other, pairs, other_ids, row, seed, kid_subsets, hu_window)
    return records


def _records_3d(encoder3d, real: Source, other: Source, pairs, other_ids, row, seed: int, kid_subsets: int,
                hu_window: tuple[float, float]) -> list[dict[str, Any]]:
    """3D FID and 3D MMD per scan pair (slab features of the 3D encoder) and MS-SSIM between pairs of volumes of
    ``other`` itself (diversity; for the real row, pairs of two different patients)."""
    feats: dict[tuple[str, str], np.ndarray] = {}

    def f3(src: Source, vid: str) -> np.ndarray:
        key = (src.name, vid)
        if key not in feats:
            feats[key] = encoder3d(np.asarray(src.cohort.read(vid)[0], dtype=np.float32))
        return feats[key]

    out = []
    for k, (a, b) in enumerate(pairs):
        fa, fb = f3(other, a), f3(real, b)
        pair = {**row, "protocol": "pair", "view": "3d", "pair": k, "a": a, "b": b, "n_slabs": [len(fa), len(fb)]}
        out.append({**pair, "metric": "fid3d", "value": fid_from_features(fa, fb)})
        out.append({**pair, "metric": "mmd3d", "value": kid_from_features(fa, fb, kid_subsets, seed + k)})
    if len(other_ids) >= 2:
        # distinct unordered pairs of two different volumes (a repeated pair would only repeat a number)
        combos = list(itertools.combinations(sorted(other_ids), 2))
        order = np.random.default_rng(seed + 7).permutation(len(combos))[:len(pairs)]
        for k, (a, b) in enumerate(combos[i] for i in order):
            va, vb = other.cohort.read(a)[0], other.cohort.read(b)[0]
            out.append({**row, "metric": "msssim", "protocol": "within", "view": "3d", "pair": k, "a": a, "b": b,
                        "value": msssim_3d(va, vb, *hu_window)})
    return out


# --------------------------------------------------------------------------------------------------------------------
# runs: the records of notebook 05 and `ctsgan fid` (tables: ctsgan_lib.reporting.fidelity)
# --------------------------------------------------------------------------------------------------------------------
def calibration_slices(cohort, n_slices: int, seed: int, views: Sequence[str], hu_min: float, hu_max: float,
                       split: str | None = "train") -> tuple[np.ndarray, str]:
    """A fixed calibration batch of real slices for the fallback extractor, and its description.

    Slices are taken evenly spaced from up to 8 seeded-random volumes of ``split`` (all volumes when that split is
    empty), cycling through ``views``. The description names the cohort, split, volume checksums and seed.
    """
    try:
        ids = cohort_ids(cohort, split) if split else cohort_ids(cohort)
    except CTSGANError:
        ids, split = cohort_ids(cohort), None
    chosen = select_pool(ids, min(8, len(ids)), seed)
    per_vol = max(1, math.ceil(n_slices / len(chosen)))
    parts = []
    for i, vid in enumerate(chosen):
        hu, _ = cohort.read(vid)
        view = views[i % len(views)]
        parts.append(volume_slices(np.asarray(hu), view, per_vol, hu_min, hu_max))
    shapes = {p.shape[2:] for p in parts}
    if len(shapes) > 1:
        side = max(max(s) for s in shapes)
        parts = [torch.nn.functional.interpolate(torch.from_numpy(p).float(), size=(side, side), mode="bilinear")
                 .round().clamp(0, 255).to(torch.uint8).numpy() for p in parts]
    slices = np.concatenate(parts)[:n_slices]
    digest = hashlib.sha256("".join(volume_checksum(cohort, v) for v in chosen).encode()).hexdigest()[:16]
    where = "/".join(Path(str(getattr(cohort, "root", "cohort"))).parts[-2:])  # no absolute path: root may move
    desc = (f"{len(slices)} slices ({'/'.join(views)}, window {hu_min:g}..{hu_max:g} HU) from {len(chosen)} volumes "
            f"of {where} split={split or 'all'} (checksums digest {digest}), seed {seed}")
    return slices, desc


def resolve_for_config(cfg, real_cohort) -> Extractor:
    """The slice feature extractor of ``cfg``: ImageNet InceptionV3 when its weights are configured or in the hub
    cache (and always at paper), else ``fidelity.offline_extractor``: the domain CNN (default) or the recalibrated
    random InceptionV3 fallback (:func:`~ctsgan_lib.eval.inception.resolve_extractor`)."""
    f = cfg.fidelity
    if f.offline_extractor not in ("domain", "inception-fallback"):
        raise CTSGANError(f"fidelity.offline_extractor must be 'domain' or 'inception-fallback', "
                          f"got {f.offline_extractor!r}")
    imagenet = bool(f.weights_path) or hub_weights_path().is_file() or cfg.profile == "paper"
    if not imagenet and f.offline_extractor == "domain":
        return DM.domain_for_config(cfg, real_cohort, dims=2).as_extractor()
    fallback = cfg.runs_dir / "fidelity" / "extractor" / f"fallback-inception-seed{f.seed}-cal{f.calibration_slices}.pth"
    return resolve_extractor(
        cfg.profile, f.weights_path, f.weights_sha256, fallback, f.seed,
        lambda: calibration_slices(real_cohort, f.calibration_slices, f.seed, list(f.views), cfg.data.hu_min,
                                   cfg.data.hu_max),
        batch=f.batch)


def run_fidelity(cfg, real: Source, others: Sequence[Source], out: str | Path | None = None,
                 extractor: Extractor | None = None, device: str | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Compute every metric for ``others`` against ``real`` and append them to ``out`` as JSON lines.

    Parameters
    ----------
    cfg : Config
        Uses ``cfg.fidelity`` (n_pairs, volumes_per_source, max_slices, views, pooled_volumes, isc_splits, seed,
        weights) and ``cfg.data`` (HU window).
    real : Source
        The reference cohort (``key="real"``).
    others : sequence of Source
        Rows to compute; a Source with ``key="real"`` gives the real-vs-real row.
    out : path, optional
        ``metrics.jsonl`` to append to (default ``runs/<P>/fidelity/metrics.jsonl``).

    Returns
    -------
    list of dict
        The records written.
    """
    f = cfg.fidelity
    for v in f.views:
        if v not in VIEWS:
            raise CTSGANError(f"fidelity.views: unknown view {v!r}; choose from {', '.join(VIEWS)}")
    if "axial" not in f.views:
        raise CTSGANError("fidelity.views must include 'axial' (the paper's protocol)")
    precheck(real, others, f.volumes_per_source, f.seed, f.max_slices, f.isc_splits)  # fail before costly work
    extractor = extractor or resolve_for_config(cfg, real.cohort)
    encoder3d, ex3d = None, {}
    if f.metrics_3d:
        d3 = DM.domain_for_config(cfg, real.cohort, dims=3)
        r3 = DM.Domain3DRunner(d3, device)
        encoder3d = lambda hu: r3(hu, cfg.data.hu_min, cfg.data.hu_max)  # noqa: E731
        ex3d = {"extractor_3d": d3.name, "weights_3d_sha256": d3.sha256}
    runner = FeatureRunner(extractor, f.batch, device)
    cache = FeatureCache(cfg.runs_dir / "fidelity" / "features", runner, f.max_slices, cfg.data.hu_min,
                         cfg.data.hu_max)
    base = {"profile": cfg.profile, "seed": f.seed, "hardware": hardware_label(runner.device),
            "data_source": f"real={real.name}", "max_slices": f.max_slices, "n_pairs_cfg": f.n_pairs,
            "protocol_desc": "paper §4.2: FID between the slice sets of two random scans, mean ± std over pairs; "
                             "real-vs-real pairs are two different patients; IS per volume over its slices",
            **extractor.as_record(), **ex3d}
    records: list[dict[str, Any]] = []
    for src in tqdm(list(others), desc="Table 1 rows", disable=not progress):
        records += evaluate_source(cache, real, src, n_pairs=f.n_pairs, pool_size=f.volumes_per_source,
                                   pooled_volumes=f.pooled_volumes, views=list(f.views), isc_splits=f.isc_splits,
                                   seed=f.seed, base=base, kid_subsets=f.kid_subsets, encoder3d=encoder3d,
                                   hu_window=(cfg.data.hu_min, cfg.data.hu_max))
    sources = ", ".join(f"{s.key}={s.name}" for s in others)
    for r in records:
        r["data_source"] = f"real={real.name}; rows: {sources}"
    out = Path(out) if out else cfg.runs_dir / "fidelity" / "metrics.jsonl"
    for r in records:
        append_jsonl(out, r)
    return records


def table1_sources(cfg) -> tuple[Source, list[Source]]:
    """The real cohort and the three Table 1 rows from the standard paths of ``cfg`` (docs/architecture.md)."""
    real = Source("real", Cohort(cfg.data_dir / "cohort"), "cohort")
    rows = [real,
            Source("gan3d", Cohort(cfg.data_dir / "synthetic" / "gan3d"), "synthetic/gan3d"),
            Source("ctsgan", Cohort(cfg.data_dir / "synthetic" / "ctsgan"), "synthetic/ctsgan")]
    return real, rows


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Metric records from a ``metrics.jsonl``."""
    return read_jsonl(path)
