"""Drawing every random choice of one phantom patient into a :class:`~.params.PhantomParams` (seeded)."""
from __future__ import annotations


import numpy as np

from .anatomy import Anatomy, vessel_segments
from .params import DOMAINS, default_nodule_distribution, NoduleDistribution, NoduleSpec, PhantomParams, ScannerParams

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
    anat = Anatomy(p)
    segs = vessel_segments(p, anat)
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
