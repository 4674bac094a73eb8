"""Rendering a phantom from its parameters: segments and fields on the voxel grid, nodules, the painter
(:func:`render_clean`), the scanner applied (:func:`render_phantom`), and patients in bulk (:func:`generate_many`)."""
from __future__ import annotations

import math
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from .anatomy import Anatomy, airway_segments, mediastinal_segments, rib_segments, vessel_segments
from .params import (DOMAINS, HU_AIR, HU_BLOOD, HU_CANCELLOUS, HU_CORTICAL, HU_CSF, HU_DISC, HU_FAT, HU_LIVER,
                     HU_MUSCLE, HU_STOMACH, HU_TABLE_FOAM, HU_TABLE_SHELL, LABELS, NODULE_HU, Phantom, PhantomParams)
from .sampling import sample_params
from .scanner import apply_scanner

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
# Renderer
# ------------------------------------------------------------------------------------------------------------------
def _paint(hu, lab, mask, value, label):
    hu[mask] = value
    lab[mask] = label


def render_clean(params: PhantomParams) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free, unblurred anatomy (no nodules): ``(hu float32, labels uint8)``."""
    p = params
    N, sp = p.size, p.spacing_mm
    anat = Anatomy(p)
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
    ms = mediastinal_segments(p, anat)
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
    vs = vessel_segments(p, anat)
    f = _render_segments(shape, _mm_to_vox(vs["a"], N, sp), _mm_to_vox(vs["b"], N, sp), vs["ra"] / sp, vs["rb"] / sp)
    f *= cavity
    vm = f > 0
    hu[vm] += f[vm] * (HU_BLOOD - hu[vm])
    lab[(f > 0.5)] = LABELS["vessel"]
    del f

    # airways: soft-tissue wall then air lumen
    aw = airway_segments(p, anat)
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
    rb = rib_segments(p, anat)
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
            # count before yielding: a consumer that stops after the last patient (zip) never resumes us, and the bar
            # would end at 23/24 although all 24 were written (issue 17)
            for j in jobs:
                ph = _make_one(j)
                bar.update()
                yield ph
        else:
            # threads per worker: 1 (the pool is the parallelism); "spawn" avoids forking a process holding torch
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker_init) as ex:
                for ph in ex.map(_make_one, jobs, chunksize=1):
                    bar.update()
                    yield ph
    finally:
        bar.close()


def worker_init() -> None:
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
