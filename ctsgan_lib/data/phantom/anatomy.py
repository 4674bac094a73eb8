"""Phantom anatomy as implicit functions of patient mm coordinates, and its branching trees (vessels, airways,
ribs, mediastinum) grown per generation."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.spatial import cKDTree
from .params import PhantomParams


# ------------------------------------------------------------------------------------------------------------------
# Anatomy as implicit functions of patient mm coordinates (work on grids and on point lists alike)
# ------------------------------------------------------------------------------------------------------------------
class Anatomy:
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


def _patient_point(anat: Anatomy, z, y, x):
    vy, vx = anat.to_volume(np.asarray(y, float), np.asarray(x, float))
    return np.stack([np.broadcast_to(z, np.shape(vy)), vy, vx], -1).astype(float)


def _lung_inside_fn(anat: Anatomy, side: int):
    def f(pts):
        return anat.lung_side(pts[:, 0], pts[:, 1], pts[:, 2]) == side
    return f


_VESSEL_CACHE: dict = {}


def vessel_segments(p: PhantomParams, anat: Anatomy) -> dict:
    """Pulmonary arteries (from the hila) and veins (toward the left atrium), both lungs, in volume mm.

    Cached per anatomy (sampling places nodules against vessels and rendering draws them: grow the trees once).
    """
    key = repr({k: v for k, v in dataclasses.asdict(p).items() if k not in ("scanner", "nodules", "domain")})
    if key not in _VESSEL_CACHE:
        if len(_VESSEL_CACHE) >= 4:
            _VESSEL_CACHE.pop(next(iter(_VESSEL_CACHE)))
        _VESSEL_CACHE[key] = _grow_vessels(p, anat)
    return _VESSEL_CACHE[key]


def _grow_vessels(p: PhantomParams, anat: Anatomy) -> dict:
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


def airway_segments(p: PhantomParams, anat: Anatomy) -> dict:
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


def mediastinal_segments(p: PhantomParams, anat: Anatomy) -> dict:
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


def rib_segments(p: PhantomParams, anat: Anatomy) -> dict:
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
