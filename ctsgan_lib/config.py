"""Typed configuration: one object flows from a profile YAML through every function.

Profiles live in ``ctsgan_lib/configs/{smoke,demo,study,paper}.yaml``. Each YAML has one mapping per section below;
every key must name a dataclass field (unknown keys are an error, so a typo never silently falls back to a default).

Example
-------
>>> cfg = load_profile("smoke", **{"ctsgan.iterations": 5})
>>> cfg.data.size
32
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("smoke", "demo", "study", "paper")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Environment variable holding overrides for every profile load (see :func:`env_overrides`).
OVERRIDES_ENV = "CTSGAN_OVERRIDES"


class ConfigError(ValueError):
    """A profile file or an override is invalid."""


@dataclass
class DataConfig:
    """Cohort preparation (notebook 01)."""

    size: int = 32                      # S: volumes are S×S×S voxels after preprocessing
    n_patients: int = 24                # phantom cohort size (half nlst-like, half lidc-like)
    lidc_fraction: float = 0.5          # share of lidc-like (nodule-bearing) patients
    hu_min: float = -1000.0             # model window: HU clipped to [hu_min, hu_max] and mapped to [-1, 1]
    hu_max: float = 400.0
    split_fractions: tuple[float, float, float] = (0.75, 0.125, 0.125)
    phantom_size: int = 64              # native phantom grid before resize to S (voxels per side)
    phantom_spacing_mm: float = 5.5     # native phantom spacing (field of view = phantom_size * spacing)
    compress: bool = True               # .nii.gz (small, to share) vs .nii (fast to read)
    workers: int = 2                    # processes for phantom generation
    n_lidc: int = 0                     # prepare --source lidc-nlst: LIDC scans drawn among those with a nodule >=
                                        # lidc_min_nodule_mm (paper: 600; 0 = all eligible); see data.sources
    n_nlst: int = 0                     # ... NLST scans drawn at random (paper: 600; 0 = all)
    lidc_min_nodule_mm: float = 3.0     # LIDC eligibility: at least one nodule (mean reader diameter) this large


@dataclass
class NoduleConfig:
    """Nodule injector / eraser cGANs (notebook 02)."""

    voi_size: int = 16                  # VOI side in voxels (paper: 64)
    mask_size: int = 8                  # masked centre side in voxels (paper: 32)
    base_channels: int = 8
    batch: int = 4
    iterations: int = 40
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    l1_inside: float = 100.0            # Jin et al. multi-mask L1: weight inside the mask
    l1_outside: float = 10.0            # ... and outside it
    ckpt_every: int = 20
    keep_checkpoints: int = 3           # the newest checkpoints kept (0 = all); 20 × 2 × 195 MiB = 7.6 GiB at paper
    diameters_vox: list[float] = field(default_factory=lambda: [3.0, 5.0])  # experiment sizes (paper: 6..16 at 224³)
    nodule_hu: float = 40.0             # solid-nodule density the injector's nodule map starts from (HU)
    eraser_pairs_per_scan: int = 4      # injected nodules per nodule-free training scan for the eraser's pairs
    injector: str = "learned"           # "learned" (Jin et al.: the GAN paints shape and density) or "sphere"
    feather_vox: float = 0.0            # width of the paste-back blend across the mask border; 0 = mask_size / 4
    paste: str = "centre"               # learned injector paste-back: "centre" (Jin et al.), "ctgan" (Mirsky et al.'s
                                        # density gate) or "local" (ours); docs/nodules.md
    touchup_sigma_vox: float = 1.0      # noise touch-up: keep the scan's own detail finer than this Gaussian σ under
                                        # the pasted centre (after CT-GAN's touch-ups; docs/nodules.md); 0 = off
    realism_steps: int = 150            # realism CNN: training steps per fold (docs/nodules.md)
    realism_folds: int = 4              # ... folds, grouped by scan (held-out scores for every VOI)
    realism_bootstrap: int = 1000       # ... bootstrap resamples for the AUC interval


@dataclass
class CTSGANConfig:
    """CT-SGAN (notebook 03). Names follow the paper: Rv, Gslice, Dslice, Dslab."""

    patient_dim: int = 32               # patient/scanner-specific noise, constant over a volume
    slice_noise_dim: int = 8            # ε_i fed to the BiLSTM at every position
    slice_code_dim: int = 16            # BiLSTM output size per slice (both directions together)
    ngf: int = 16
    ndf: int = 16
    slab_len: int = 8                   # T: slices judged by Dslab
    n_slices: int = 4                   # N: slices per slab judged by Dslice
    batch: int = 2
    iterations: int = 30
    loss: str = "wgan-gp"               # "wgan-gp" (paper's preference) or "js"
    gp_weight: float = 10.0
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ckpt_every: int = 10
    sample_every: int = 10
    log_every: int = 1
    chunk: int = 32                     # slices generated per chunk at inference
    bf16: bool = False                  # CUDA autocast: less memory, 14 % slower than TF32 on an H200 (performance.md)
    d_steps: int = 1                    # Dslice+Dslab updates per Gslice+Rv update (WGAN-GP's n_critic)
    position_input: bool = False        # feed Rv the normalised z position beside ε_i (not in the paper; docs/ctsgan.md)
    dslice_position: str = "fourier"    # Dslice's position embedding: fourier (smooth) | table (one row per position,
                                        # what checkpoints from before 2026-11-26 used; docs/ctsgan.md)
    dslab_position: bool = False        # tell Dslab where its slab starts (not in the paper; docs/ctsgan.md)
    rv_init: str = "random"             # Rv's (h0, c0): random per volume (MoCoGAN; paper "random inputs (εi and h0)")
                                        # or "learned" constants (checkpoints from before issue 21)
    # training fast path (issue 25; ours, all off = the default, bit-reproducible step; docs/performance.md)
    fused_adam: bool = False            # fused Adam kernels where torch has them for the device, else foreach
    lazy_losses: bool = False           # losses stay on the device; read + NaN-checked at log/ckpt/sample steps
    gp_fp32: bool = False               # with bf16: the WGAN-GP penalty (double backward) outside autocast, in float32
    async_copies: bool = False          # CUDA: real slabs and noise go up through pinned memory, non-blocking
    cond_dim: int = 8                   # conditional CT-SGAN only (`ctsgan train ctsgan_cond`, issue 26): size of the
                                        # condition embedding e(c) in the generator's codes
    cond_z: bool = False                # conditional CT-SGAN only: also condition on the nodules' z positions (a
                                        # per-slice nodule profile; docs/ctsgan.md)


@dataclass
class GAN3DConfig:
    """Vanilla 3D DCGAN baseline (notebook 03)."""

    size: int = 16                      # native resolution; upsampled trilinearly to data.size (paper: 128 → 224)
    z_dim: int = 32
    ngf: int = 16
    ndf: int = 16
    batch: int = 2
    iterations: int = 30
    loss: str = "wgan-gp"
    gp_weight: float = 10.0
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ckpt_every: int = 10
    sample_every: int = 10
    bf16: bool = False                  # CUDA autocast: less memory, 20 % slower than TF32 on an H200 (performance.md)
    d_steps: int = 0                    # critic updates per generator update; 0 = ctsgan.d_steps (same schedule)


@dataclass
class GenerateConfig:
    """Synthetic cohort (notebook 04)."""

    n_volumes: int = 12
    batch: int = 4
    inject_fraction: float = 0.5
    seed: int = 1234
    dicom: bool = False


@dataclass
class FidelityConfig:
    """FID / IS (notebook 05, paper §4.2 Table 1) and the memorization check."""

    n_pairs: int = 3                    # random scan pairs per Table 1 row (paper: mean ± std over random pairs)
    volumes_per_source: int = 3         # volumes per source whose features are extracted and paired (0 = all)
    max_slices: int = 6                 # slices per volume and view, evenly spaced, in order (0 = all, as the paper)
    views: list[str] = field(default_factory=lambda: ["axial", "coronal", "sagittal"])  # 2.5D variant; axial = paper
    pooled_volumes: int = 3             # volumes per side in the pooled variant (0 = the whole pool)
    isc_splits: int = 2                 # Inception Score splits per volume (torch-fidelity default: 10)
    seed: int = 7
    weights_path: str = ""             # InceptionV3 torch-fidelity weights; empty = hub cache, then offline fallback
    weights_sha256: str = ""            # recorded SHA-256 of those weights (else a sidecar <file>.sha256 is required)
    calibration_slices: int = 32        # BN recalibration batch for the offline fallback extractor
    offline_extractor: str = "domain"   # no ImageNet weights (smoke/demo): "domain" (CT CNN trained on the real train
                                        # split; chosen from the sensitivity suite, docs/fidelity.md) or "inception-fallback"
    domain_steps: int = 200             # domain extractor training steps (2D and 3D; batch 32; under a minute on a CPU)
    domain_regions: int = 8             # craniocaudal regions of the lung field (the IS classes)
    domain_max_volumes: int = 64        # real train volumes the domain extractors see (seeded draw; 0 = all)
    metrics_3d: bool = True             # 3D FID / MMD (3D domain encoder) and MS-SSIM diversity per Table 1 row
    kid_subsets: int = 50               # KID: subsets per pair (subset size = the smaller slice count, <= 1000)
    batch: int = 32
    privacy_size: int = 16              # memorization check: volumes downsampled to this side before correlating
    privacy_percentile: float = 95.0    # copy threshold: this percentile of real-val→nearest-train correlation


@dataclass
class ClassifierConfig:
    """3D-SqueezeNet nodule detection (notebook 06)."""

    sizes: list[float] = field(default_factory=lambda: [3.0, 5.0])   # nodule diameters in voxels at S³
    seeds: list[int] = field(default_factory=lambda: [0])
    regimes: list[str] = field(default_factory=lambda: ["real", "synthetic", "pretrain_finetune"])
    epochs: int = 2
    finetune_epochs: int = 2
    batch: int = 4
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    patience: int = 3
    n_synthetic: int = 12               # synthetic training volumes (half injected: n_synthetic // 2 bases, paired)
    max_nodules: int = 3                # cap on the LIDC-drawn nodule count per positive volume (small S³ crowd)
    in_channels: int = 1                # CT is one channel (the reference's 3 only matters for its param count)
    dropout: float = 0.5                # 3D-SqueezeNet head dropout (reference: 0.5)
    head_init: str = "small"            # final conv init: "small" N(0, 0.01) or "kaiming" (reference; dead logits at 2 classes)
    stem_stride: list[int] = field(default_factory=lambda: [1, 2, 2])   # first conv (z, y, x); reference (1, 2, 2)
    n_real_train: int = 0               # cap on real nodule-free training bases (first N by id); 0 = all
    workers: int = 1                    # grid cells run in this many processes (CPU; torch threads split between them)
    stream_threshold_gib: float = 8.0   # a base set whose in-memory cell data would exceed this is streamed from disk
                                        # (items made on demand; 0 = always stream); the results are the same
    loader_workers: int = 0             # DataLoader worker processes that make streamed items (0 = in the trainer)
    design: str = "paper"               # paper: Fig 3a cohort (native + injected positives, erased + clean negatives) and
                                        # the generated cohort's injected half; paired: ours (each nodule-free base
                                        # clean and injected; docs/classifier.md)
    real_fractions: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])   # Fig 3c (beyond the paper)
    scarcity_size: float = 0.0          # Fig 3c nodule size (voxels); 0 = the largest of ``sizes``
    synthetic_source: str = "disk"      # synthetic bases from the stored cohort (disk) or made by the CT-SGAN on demand
                                        # (generator: nothing stored; not in the paper; docs/scale.md)


@dataclass
class BenchConfig:
    """Benchmarks (notebook 08)."""

    sizes: list[int] = field(default_factory=lambda: [32, 64])   # memory bench volume sides S
    batch: int = 1                      # volumes per training step, the same for both models
    repeats: int = 2                    # timed repetitions (training steps, generation batches) after one warm-up
    gen_sizes: list[int] = field(default_factory=lambda: [32])   # generation throughput sides (paper: 64, 224)
    gen_volumes: int = 2                # volumes generated per timed repetition
    fid_slices: int = 8                 # slices pushed through the FID extractor per timed repetition
    timeout_s: int = 900                # per memory-bench worker; past it the row reads "timeout"
    max_gib: float = 0.0                # CPU memory cap per worker (GiB above its post-import size); 0 = 80% of free


@dataclass
class Config:
    """Everything one run needs; built by :func:`load_profile`."""

    profile: str = "smoke"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    nodules: NoduleConfig = field(default_factory=NoduleConfig)
    ctsgan: CTSGANConfig = field(default_factory=CTSGANConfig)
    gan3d: GAN3DConfig = field(default_factory=GAN3DConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    # --- paths -------------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """Project root (env ``CTSGAN_ROOT`` wins; else the folder holding this checkout's pyproject)."""
        return project_root()

    @property
    def data_dir(self) -> Path:
        """``data/<profile>/``: cohorts (NIfTI + manifest)."""
        return self.root / "data" / self.profile

    @property
    def runs_dir(self) -> Path:
        """``runs/<profile>/``: checkpoints, logs, executed notebooks, metrics."""
        return self.root / "runs" / self.profile

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-safe dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    def replace(self, **overrides: Any) -> "Config":
        """A validated copy with dotted-key overrides applied, as :func:`load_profile` applies them.

        Example: ``cfg.replace(**{"data.size": 64})``. ``self`` is left unchanged; nothing is read from disk.
        """
        new = copy.deepcopy(self)
        for key, value in overrides.items():
            *sections, name = key.split(".")
            target: Any = new
            for p in sections:
                if not hasattr(target, p) or not dataclasses.is_dataclass(getattr(target, p)):
                    raise ConfigError(f"override {key!r}: unknown section {p!r}")
                target = getattr(target, p)
            _apply(target, {name: value}, f"override {key}")
        validate(new)
        return new


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def project_root() -> Path:
    """Where ``data/`` and ``runs/`` live.

    ``CTSGAN_ROOT`` overrides (tests use it for isolation). Otherwise walk up from the current directory to the first
    folder with a ``pyproject.toml`` naming ``ctsgan_lib`` (notebooks run with cwd ``notebooks/``), then fall back to
    the checkout this package was imported from, then to the current directory.
    """
    env = os.environ.get("CTSGAN_ROOT")
    if env:
        return Path(env).resolve()
    return checkout_root()


def checkout_root() -> Path:
    """The source checkout (holds ``notebooks/``), whatever ``CTSGAN_ROOT`` says."""
    for base in (Path.cwd(), *Path.cwd().parents):
        pp = base / "pyproject.toml"
        if pp.is_file() and 'name = "ctsgan_lib"' in pp.read_text(errors="ignore"):
            return base
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").is_file():
        return here
    return Path.cwd()


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Coerce a YAML/override value to the type of the default it replaces."""
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(current, int) and not isinstance(current, bool):
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if isinstance(current, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(current, (list, tuple)):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
            except (yaml.YAMLError, RecursionError):
                raise ConfigError(f"{where}: expected a list like [1, 2], got {value[:40]!r}") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if current:
            value = [_coerce(v, current[0], where) for v in value]
        return tuple(value) if isinstance(current, tuple) else list(value)
    if isinstance(current, str):
        return str(value)
    return value


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping")
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(section, key, _coerce(value, current, f"{where}.{key}"))


def load_profile(name: str = "smoke", path: str | Path | None = None, **overrides: Any) -> Config:
    """Load a profile and apply overrides.

    Parameters
    ----------
    name : str
        ``smoke``, ``demo``, ``study`` (one GPU) or ``paper``.
    path : str or Path, optional
        A YAML file to read instead of the bundled profile (same schema).
    **overrides
        Dotted keys, e.g. ``**{"ctsgan.iterations": 100, "seed": 3}``; values may be strings (as from the command
        line) and are coerced to the field's type.

    Returns
    -------
    Config
    """
    if path is None:
        if name not in PROFILES:
            raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
        path = CONFIG_DIR / f"{name}.yaml"
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: profile file not found") from None
    except yaml.YAMLError as exc:
        first = str(exc).replace("\n", " ")[:160]
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    except (UnicodeDecodeError, OSError, RecursionError) as exc:
        raise ConfigError(f"{path}: cannot read the profile ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    cfg = Config(profile=name)
    _apply(cfg, raw, str(path))
    overrides = {**env_overrides(), **overrides}
    for key, value in overrides.items():
        parts = key.split(".")
        target: Any = cfg
        for p in parts[:-1]:
            if not hasattr(target, p) or not dataclasses.is_dataclass(getattr(target, p)):
                raise ConfigError(f"override {key!r}: unknown section {p!r}")
            target = getattr(target, p)
        _apply(target, {parts[-1]: value}, f"override {key}")
    validate(cfg)
    return cfg


def env_overrides() -> dict[str, Any]:
    """Overrides every :func:`load_profile` of this process applies first: ``CTSGAN_OVERRIDES``, a JSON object.

    ``ctsgan reproduce --set KEY=VALUE`` sets it for the notebook kernels (as it sets ``CTSGAN_ROOT``), so that every
    notebook of a run sees the same overridden profile; the run manifest records it. Explicit overrides win.
    """
    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"${OVERRIDES_ENV}: not a JSON object ({exc.msg})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"${OVERRIDES_ENV}: must be a JSON object of dotted keys, e.g. {{\"ctsgan.iterations\": 5}}")
    return value


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """Turn ``["ctsgan.iterations=5", "seed=1"]`` (command line ``--set``) into a dict."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


#: Fields that may be 0 (every other integer field must be >= 1); the comment in the dataclass says what 0 means.
_ZERO_OK = {"seed", "generate.seed", "fidelity.volumes_per_source", "fidelity.max_slices", "fidelity.pooled_volumes",
            "fidelity.seed", "classifier.n_real_train", "classifier.patience", "classifier.finetune_epochs",
            "nodules.eraser_pairs_per_scan", "classifier.seeds", "gan3d.d_steps", "fidelity.domain_max_volumes",
            "classifier.loader_workers", "data.n_lidc", "data.n_nlst", "nodules.keep_checkpoints"}
#: Largest phantom grid we render (voxels per side): 512³ float32 is 0.5 GiB per array, and a render holds several.
MAX_PHANTOM_SIZE = 512
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CHOICES = {
    "ctsgan.loss": ("wgan-gp", "js"), "gan3d.loss": ("wgan-gp", "js"), "ctsgan.dslice_position": ("table", "fourier"),
    "classifier.head_init": ("small", "kaiming"), "fidelity.views": ("axial", "coronal", "sagittal"),
    "classifier.regimes": ("real", "synthetic", "pretrain_finetune", "cond_pretrain_finetune"),
    "ctsgan.rv_init": ("random", "learned"),
    "fidelity.offline_extractor": ("domain", "inception-fallback"), "nodules.injector": ("learned", "sphere"),
    "nodules.paste": ("centre", "local", "ctgan"), "classifier.synthetic_source": ("disk", "generator"),
    "classifier.design": ("paper", "paired"),
}
#: (low, high, low_inclusive, high_inclusive) for float fields (and every element of float lists).
_FLOAT_RANGES = {
    "data.lidc_fraction": (0.0, 1.0, True, True), "data.split_fractions": (0.0, 1.0, True, True),
    "data.phantom_spacing_mm": (0.0, math.inf, False, False), "generate.inject_fraction": (0.0, 1.0, True, True),
    "fidelity.privacy_percentile": (0.0, 100.0, False, True), "classifier.dropout": (0.0, 1.0, True, False),
    "bench.max_gib": (0.0, math.inf, True, False), "data.lidc_min_nodule_mm": (0.0, math.inf, True, False),
    "classifier.stream_threshold_gib": (0.0, math.inf, True, False),
    "classifier.real_fractions": (0.0, 1.0, False, True), "classifier.scarcity_size": (0.0, math.inf, True, False),
}
_POSITIVE_FLOATS = ("lr", "lr_g", "lr_d", "diameters_vox", "sizes")
_NONNEG_FLOATS = ("l1_inside", "l1_outside", "gp_weight", "feather_vox", "touchup_sigma_vox")


def _interval(lo: float, hi: float, lo_inc: bool, hi_inc: bool) -> str:
    if hi == math.inf:
        return f"a number {'>=' if lo_inc else '>'} {lo:g}"
    return f"a number in {'[' if lo_inc else '('}{lo:g}, {hi:g}{']' if hi_inc else ')'}"


def _check_field(key: str, name: str, value: Any) -> None:
    """Type and range of one field (``key`` is its dotted name)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if key in _CHOICES:
        allowed = _CHOICES[key]
        bad = [v for v in items if v not in allowed]
        if bad or (isinstance(value, (list, tuple)) and not value):
            raise ConfigError(f"{key}: must be {'one or more of' if isinstance(value, (list, tuple)) else 'one of'} "
                              f"{', '.join(allowed)} (got {value!r})")
        return
    for v in items:
        if isinstance(v, bool) or isinstance(v, str):
            continue
        if isinstance(v, int):
            low = 0 if key in _ZERO_OK else 1
            if v < low:
                raise ConfigError(f"{key}: must be an integer >= {low} (got {value!r})")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ConfigError(f"{key}: must be a finite number (got {value!r})")
            rng = _FLOAT_RANGES.get(key)
            if rng is None and name in _POSITIVE_FLOATS:
                rng = (0.0, math.inf, False, False)
            if rng is None and name in _NONNEG_FLOATS:
                rng = (0.0, math.inf, True, False)
            if rng is not None:
                lo, hi, lo_inc, hi_inc = rng
                if not ((v > lo or (lo_inc and v == lo)) and (v < hi or (hi_inc and v == hi))):
                    raise ConfigError(f"{key}: must be {_interval(*rng)} (got {value!r})")


def _walk(section: Any, prefix: str) -> None:
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _walk(value, key + ".")
        else:
            _check_field(key, f.name, value)


def validate(cfg: Config) -> None:
    """Type, range and cross-field checks of every field, before anything is read or written.

    Raises
    ------
    ConfigError
        ``<key>: <what is allowed> (got <value>)``; the CLI prints it as one line and exits 2.
    """
    if not isinstance(cfg.profile, str) or not _NAME_RE.match(cfg.profile):
        # the profile names the folders data/<profile> and runs/<profile>: a path here would write elsewhere
        raise ConfigError(f"profile: must be a plain name (letters, digits, '_', '-'), not a path (got {cfg.profile!r})")
    _walk(cfg, "")
    d = cfg.data
    if d.size < 16 or d.size % 2:
        raise ConfigError(f"data.size: must be an even number >= 16 (got {d.size})")
    if not 16 <= d.phantom_size <= MAX_PHANTOM_SIZE:
        raise ConfigError(f"data.phantom_size: must be an integer in [16, {MAX_PHANTOM_SIZE}] (got {d.phantom_size})")
    if len(d.split_fractions) != 3 or abs(sum(d.split_fractions) - 1.0) > 1e-6 or d.split_fractions[0] <= 0:
        raise ConfigError(f"data.split_fractions: must be three numbers (train, val, test) in [0, 1] summing to 1, "
                          f"train > 0 (got {list(d.split_fractions)})")
    if not (math.isfinite(d.hu_min) and math.isfinite(d.hu_max)) or not d.hu_min < d.hu_max:
        raise ConfigError(f"data.hu_min: must be below data.hu_max (got {d.hu_min:g} and {d.hu_max:g})")
    if cfg.ctsgan.slab_len > d.size - 2:
        raise ConfigError(f"ctsgan.slab_len: must be <= data.size - 2 ({d.size - 2}) (got {cfg.ctsgan.slab_len})")
    if cfg.ctsgan.n_slices > cfg.ctsgan.slab_len:
        raise ConfigError(f"ctsgan.n_slices: must be <= ctsgan.slab_len ({cfg.ctsgan.slab_len}) "
                          f"(got {cfg.ctsgan.n_slices})")
    if cfg.nodules.mask_size >= cfg.nodules.voi_size:
        raise ConfigError(f"nodules.mask_size: must be smaller than nodules.voi_size ({cfg.nodules.voi_size}) "
                          f"(got {cfg.nodules.mask_size})")
    for key, betas in (("nodules.betas", cfg.nodules.betas), ("ctsgan.betas", cfg.ctsgan.betas),
                       ("gan3d.betas", cfg.gan3d.betas), ("classifier.betas", cfg.classifier.betas)):
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"{key}: must be two numbers in [0, 1) (got {list(betas)})")
    if len(cfg.classifier.stem_stride) != 3:
        raise ConfigError(f"classifier.stem_stride: must be three integers >= 1 (got {cfg.classifier.stem_stride})")
    sha = cfg.fidelity.weights_sha256
    if sha and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise ConfigError(f"fidelity.weights_sha256: must be empty or 64 hex digits (got {sha[:20]!r})")
