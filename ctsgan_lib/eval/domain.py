"""A CT domain feature extractor for FID / KID / IS when ImageNet weights are absent (issue 21), 2D and 3D.

Why: offline, the only other feature space is a random InceptionV3 with recalibrated BatchNorm, whose numbers move by
orders of magnitude with its seed (docs/fidelity.md). This module trains a small CNN on the **real training split
only** (never on synthetic data), with targets that exist for any CT, real or phantom:

* **craniocaudal region**: the slice's (2D) or slab's (3D) position within the lung field, cut into
  ``n_regions`` classes. The lung field is found from the HU values alone (:func:`lung_field_extent`), so no label
  a real scan lacks is needed. The class head gives a distribution over regions: the Inception Score computed from
  it measures how fully and how confidently a volume's slices cover the anatomy;
* **invariance**: two randomly perturbed views of each sample (small intensity offset and gain, a shift of a few
  pixels) must give the same normalised features and the same region.

The 2D extractor is a torch-fidelity feature extractor (:func:`register`), so FID, KID and IS come from
``torch_fidelity.calculate_metrics`` and the same ``create_feature_extractor`` path the Inception features use. The
3D encoder embeds overlapping slabs of a volume; its features give a 3D FID and an MMD per volume pair.

Weights are versioned: ``runs/<P>/fidelity/extractor/domain{2d,3d}-seed<s>-<digest>.pt`` with sidecars ``.sha256``
and ``.json`` (SHA-256, digest of the training volumes' checksums, the training config, torch version, final
losses); they are loaded with ``torch.load(weights_only=True)`` after the SHA-256 is checked.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.cohort import volume_checksum
from ..data.intensity import hu_to_uint8
from ..errors import CTSGANError, InputFileError
from ..utils.atomic import atomic_write_bytes, atomic_write_text, file_sha256
from .inception import Extractor

DOMAIN2D_NAME = "ctsgan-domain2d"
DOMAIN3D_NAME = "ctsgan-domain3d"
#: Feature layers: ``feat`` (FID, KID; 128 learned + 32 texture dims, standardised) and ``logits_unbiased`` (IS;
#: torch-fidelity's name for pre-softmax logits).
DOMAIN_FEATURES = ("feat", "logits_unbiased")
DOMAIN_NOTE = ("features of a small CNN trained on this run's real training split (craniocaudal region + "
               "invariance), NOT ImageNet features: not comparable to the paper; compare relative FD")
FEAT_DIM = 128
IN_SIDE_2D = 64          # slices are resized to 64×64 (area) before the 2D CNN
IN_SIDE_3D = 32          # volumes are resized to 32³ before slabs are cut
SLAB_DEPTH = 8           # slices per 3D slab (at 32³)
SLAB_STRIDE = 4


@dataclass
class DomainTrainConfig:
    """How a domain extractor is trained (recorded in its ``.json``; part of its cache key)."""

    dims: int = 2
    seed: int = 0
    n_regions: int = 8
    steps: int = 200
    batch: int = 32
    lr: float = 2e-3
    aug_offset: float = 0.005     # intensity offset, in units of the window ([0, 1]): ±0.005 ≈ ±7 HU at 1400 HU
    aug_gain: float = 0.01        # contrast gain 1 ± 0.01 (both well below the HU shifts the metric must see)
    aug_shift_px: int = 2         # in-plane shift, pixels at the network's input size
    invariance_weight: float = 1.0


# --------------------------------------------------------------------------------------------------------------------
# targets: the craniocaudal position within the lung field, from HU alone
# --------------------------------------------------------------------------------------------------------------------
def lung_field_extent(hu: np.ndarray, lung_hu: tuple[float, float] = (-950.0, -500.0),
                      frac_of_max: float = 0.2, axis: int = 0) -> tuple[int, int]:
    """First and last slice along ``axis`` (0 = z: axial slices) of the lung field: slices whose lung-range voxel
    share is >= ``frac_of_max`` of the largest share. Works on any CT (real, phantom, synthetic); falls back to the
    whole range."""
    hu = np.asarray(hu)
    other = tuple(a for a in range(3) if a != axis)
    share = ((hu >= lung_hu[0]) & (hu <= lung_hu[1])).mean(axis=other)
    if share.max() <= 0:
        return 0, hu.shape[axis] - 1
    idx = np.flatnonzero(share >= frac_of_max * share.max())
    return int(idx[0]), int(idx[-1])


def region_targets(n_z: int, extent: tuple[int, int], n_regions: int) -> np.ndarray:
    """Region class (0 = caudal end of the lung field … n_regions-1 = cranial end) of each of ``n_z`` positions."""
    z0, z1 = extent
    pos = (np.arange(n_z) - z0) / max(1, z1 - z0)
    return np.clip(np.floor(pos * n_regions), 0, n_regions - 1).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------------------------------
INTENSITY_Q = (0.10, 0.25, 0.50, 0.75, 0.90)
GRADIENT_Q = (0.25, 0.50, 0.75, 0.90)


def intensity_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per sample: quantiles of intensity and of gradient magnitude (forward differences along every spatial axis)."""
    flat = x.flatten(1)
    qi = torch.quantile(flat, torch.tensor(INTENSITY_Q, dtype=x.dtype, device=x.device), dim=1).T
    sq = 0.0
    for ax in range(2, x.dim()):
        d = torch.diff(x, dim=ax)
        sl = [slice(None)] * x.dim()
        for other in range(2, x.dim()):
            if other != ax:
                sl[other] = slice(0, x.shape[other] - 1)
        sq = sq + d[tuple(sl)] ** 2
    g = torch.sqrt(sq).flatten(1)
    qg = torch.quantile(g, torch.tensor(GRADIENT_Q, dtype=x.dtype, device=x.device), dim=1).T
    return torch.cat([qi, qg], 1)


class DomainNet(nn.Module):
    """Small CNN (2D or 3D): 4 conv blocks (GroupNorm, no BatchNorm: eval is batch-independent), pooled to a 2×2 grid
    in-plane (keeps coarse layout), a learned 128-d layer and a region head.

    The feature vector for FID / KID is ``[learned 128-d | 9 fixed intensity statistics]``: quantiles (10, 25, 50,
    75, 90 %) of the input's intensity and quantiles (25, 50, 75, 90 %) of its gradient magnitude. They are not
    learned: the region task alone lets the learned layer discard noise level and HU calibration (we measured a
    metric blind to +100 HU correlated noise without them), which a fidelity metric must see. Every dimension is
    standardised with the training samples' mean and std (buffers set after training), so each has unit variance on
    real data and neither part dominates by scale.
    """

    def __init__(self, dims: int = 2, n_regions: int = 8, width: int = 16):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        chans = [1, width, 2 * width, 4 * width, 8 * width]
        self.conv1 = conv(1, width, 3, stride=2 if dims == 2 else (1, 2, 2), padding=1)
        layers: list[nn.Module] = [nn.GroupNorm(4, width), nn.SiLU()]
        for i in range(1, 4):
            # 3D (slab 8×32×32): keep the depth in the first and last blocks → 2×2×2 before pooling
            stride = 2 if dims == 2 else ((1, 2, 2) if i == 3 else 2)
            layers += [conv(chans[i], chans[i + 1], 3, stride=stride, padding=1), nn.GroupNorm(4, chans[i + 1]),
                       nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2) if dims == 2 else nn.AdaptiveAvgPool3d((1, 2, 2))
        self.feat = nn.Linear(chans[-1] * 4, FEAT_DIM)
        self.head = nn.Linear(FEAT_DIM, n_regions)
        n_out = FEAT_DIM + len(INTENSITY_Q) + len(GRADIENT_Q)
        self.register_buffer("feat_mu", torch.zeros(n_out))
        self.register_buffer("feat_sd", torch.ones(n_out))

    def embed(self, x: torch.Tensor, with_statistics: bool = True):
        """``x`` in [0, 1] → (learned features, intensity statistics or None, region logits), unstandardised."""
        h1 = self.conv1(x * 2.0 - 1.0)
        f = self.feat(self.pool(self.body(h1)).flatten(1))
        tex = intensity_statistics(x) if with_statistics else None
        return f, tex, self.head(F.silu(f))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` in [0, 1], (N, 1, H, W) or (N, 1, D, H, W) → (standardised features (N, 137), region logits
        (N, n_regions))."""
        f, tex, logits = self.embed(x)
        return (torch.cat([f, tex], 1) - self.feat_mu) / self.feat_sd, logits

    @torch.no_grad()
    def set_standardisation(self, x: torch.Tensor, batch: int = 256) -> None:
        """Per-dimension mean and std of the raw features over the (unperturbed) training samples."""
        out = []
        for i in range(0, len(x), batch):
            f, tex, _ = self.embed(x[i:i + batch])
            out.append(torch.cat([f, tex], 1))
        allf = torch.cat(out)
        self.feat_mu.copy_(allf.mean(0))
        # floor 0.01 (≈ 14 HU in window units, ~2.5 uint8 steps): a statistic that is constant on the training data
        # (e.g. the 10 % intensity quantile = clipped air) must not turn a small change into an enormous distance
        self.feat_sd.copy_(allf.std(0).clamp_min(0.01))


def _n_regions_of(state: dict[str, torch.Tensor]) -> int:
    return int(state["head.weight"].shape[0])


def load_domain_state(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a domain extractor's state dict safely (``weights_only=True``), after checking its SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "domain extractor weights not found")
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise InputFileError(path, "checksum mismatch: not the recorded domain extractor weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, zipfile errors
        raise InputFileError(path, f"not a plain tensor state dict ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or "head.weight" not in state:
        raise InputFileError(path, "not domain extractor weights (no head.weight)")
    return state


def slices_to_input(x: torch.Tensor) -> torch.Tensor:
    """torch-fidelity's uint8 (N, 3, H, W) → float (N, 1, 64, 64) in [0, 1] (first channel; area resize)."""
    x = x[:, :1].float() / 255.0
    if x.shape[-1] != IN_SIDE_2D or x.shape[-2] != IN_SIDE_2D:
        x = F.interpolate(x, size=(IN_SIDE_2D, IN_SIDE_2D), mode="area" if x.shape[-1] >= IN_SIDE_2D else "bilinear")
    return x


def _torch_fidelity_base():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase  # torch-fidelity: 1.6 s to import (torchvision)

    return FeatureExtractorBase


def _make_feature_extractor_class():
    """The torch-fidelity extractor class (built lazily: torch-fidelity is a slow import)."""
    base = _torch_fidelity_base()

    class DomainFeatureExtractor2D(base):
        """torch-fidelity feature extractor ``ctsgan-domain2d``: features ``feat`` (128-d) and ``logits_unbiased``."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise CTSGANError(f"{DOMAIN2D_NAME} needs feature_extractor_weights_path (train it first: "
                                  "ctsgan_lib.eval.domain.resolve_domain_extractor)")
            state = load_domain_state(feature_extractor_weights_path)
            self.net = DomainNet(2, _n_regions_of(state))
            self.net.load_state_dict(state)
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list():
            return DOMAIN_FEATURES

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits_unbiased", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, IN_SIDE_2D, IN_SIDE_2D, dtype=torch.uint8)

        def forward(self, x):
            f, logits = self.net(slices_to_input(x))
            out = {"feat": f, "logits_unbiased": logits}
            return tuple(out[k] for k in self.features_list)

    return DomainFeatureExtractor2D


def register() -> None:
    """Register ``ctsgan-domain2d`` with torch-fidelity (idempotent)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor  # torch-fidelity: 1.6 s to import (torchvision)

    if DOMAIN2D_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DOMAIN2D_NAME, _make_feature_extractor_class())


# --------------------------------------------------------------------------------------------------------------------
# training data (real training split only) and training
# --------------------------------------------------------------------------------------------------------------------
def volume_to_unit(hu: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """HU → [0, 1] over the window, the same rounding as the uint8 slices torch-fidelity sees."""
    return hu_to_uint8(hu, hu_min, hu_max).astype(np.float32) / 255.0


def slabs_of(vol_unit: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """A [0, 1] volume → its 3D encoder input: resized to 32³, overlapping slabs (n, 1, 8, 32, 32) and their centre
    z index (at 32³)."""
    v = torch.from_numpy(np.ascontiguousarray(vol_unit, dtype=np.float32))[None, None]
    v = F.interpolate(v, size=(IN_SIDE_3D,) * 3, mode="trilinear", align_corners=False)[0, 0]
    starts = list(range(0, IN_SIDE_3D - SLAB_DEPTH + 1, SLAB_STRIDE))
    slabs = torch.stack([v[s:s + SLAB_DEPTH] for s in starts])[:, None]
    return slabs, np.asarray([s + SLAB_DEPTH // 2 for s in starts])


#: 2D training views and their slicing axis in (z, y, x); the class of a slice is view_index · n_regions + region
VIEW_AXES = (("axial", 0), ("coronal", 1), ("sagittal", 2))


def training_samples(volumes_hu: Sequence[np.ndarray], dims: int, n_regions: int, hu_min: float,
                     hu_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets from real volumes. 2D: every slice of the three views (at 64×64), class = view ·
    n_regions + the slice's region along its normal within the lung field (craniocaudal for axial slices,
    anteroposterior for coronal, left-right for sagittal), so the 2.5D variant's views are learned too. 3D: every
    slab, class = its craniocaudal region."""
    xs, ys = [], []
    for hu in volumes_hu:
        hu = np.asarray(hu, dtype=np.float32)
        unit = volume_to_unit(hu, hu_min, hu_max)
        extent = lung_field_extent(hu)
        if dims == 2:
            for v, (_view, axis) in enumerate(VIEW_AXES):
                sl = np.ascontiguousarray(np.moveaxis(unit, axis, 0))
                x = slices_to_input(torch.from_numpy(sl)[:, None].mul(255.0).round().to(torch.uint8)
                                    .expand(-1, 3, -1, -1))
                xs.append(x)
                ext = lung_field_extent(hu, axis=axis)
                ys.append(torch.from_numpy(v * n_regions + region_targets(hu.shape[axis], ext, n_regions)))
        else:
            slabs, centres = slabs_of(unit)
            scale = hu.shape[0] / IN_SIDE_3D
            ext = (extent[0] / scale, extent[1] / scale)
            pos = (centres - ext[0]) / max(1e-6, ext[1] - ext[0])
            xs.append(slabs)
            ys.append(torch.from_numpy(np.clip(np.floor(pos * n_regions), 0, n_regions - 1).astype(np.int64)))
    return torch.cat(xs), torch.cat(ys)


def _augment(x: torch.Tensor, cfg: DomainTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Small intensity (offset, gain) and in-plane shift perturbations: what the features must be invariant to."""
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    off = (torch.rand(shape, generator=gen) * 2 - 1) * cfg.aug_offset
    gain = 1 + (torch.rand(shape, generator=gen) * 2 - 1) * cfg.aug_gain
    x = ((x - 0.5) * gain + 0.5 + off).clamp(0, 1)
    s = cfg.aug_shift_px
    if s:
        dy, dx = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    return x


def train_domain_net(x: torch.Tensor, y: torch.Tensor, cfg: DomainTrainConfig,
                     log: Callable[[str], None] | None = None) -> tuple[DomainNet, dict[str, float]]:
    """Train a :class:`DomainNet` on real samples: region cross-entropy on two perturbed views + feature invariance.

    Returns the network (eval mode) and its final losses (mean of the last 20 steps).
    """
    if len(x) < 2:
        raise CTSGANError("the domain extractor needs at least 2 training samples")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = DomainNet(cfg.dims, cfg.n_regions * (len(VIEW_AXES) if cfg.dims == 2 else 1))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    hist = []
    net.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x), (min(cfg.batch, len(x)),), generator=gen)
        xb, yb = x[idx], y[idx]
        f1, _, l1 = net.embed(_augment(xb, cfg, gen), with_statistics=False)
        f2, _, l2 = net.embed(_augment(xb, cfg, gen), with_statistics=False)
        ce = 0.5 * (F.cross_entropy(l1, yb) + F.cross_entropy(l2, yb))
        inv = F.mse_loss(F.normalize(f1, dim=1), F.normalize(f2, dim=1)) * f1.shape[1]
        loss = ce + cfg.invariance_weight * inv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = float((l1.argmax(1) == yb).float().mean())
        hist.append((float(ce.detach()), float(inv.detach()), acc))
        if log and (step % 100 == 0 or step == cfg.steps - 1):
            log(f"domain{cfg.dims}d step {step}: ce {ce:.3f} inv {inv:.4f} acc {acc:.2f}")
    net.eval()
    net.set_standardisation(x)
    tail = np.asarray(hist[-20:])
    return net, {"ce": float(tail[:, 0].mean()), "invariance": float(tail[:, 1].mean()),
                 "region_accuracy": float(tail[:, 2].mean())}


# --------------------------------------------------------------------------------------------------------------------
# versioned weights
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class DomainExtractor:
    """A trained, versioned domain extractor file and what it was made from."""

    weights_path: str
    sha256: str
    dims: int
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return DOMAIN2D_NAME if self.dims == 2 else DOMAIN3D_NAME

    def as_extractor(self) -> Extractor:
        """The record the fidelity run carries (``weights_kind="domain"``, never comparable to the paper)."""
        return Extractor(self.weights_path, self.sha256, "domain", False, DOMAIN_NOTE, name=self.name,
                         meta=self.meta, fid_layer="feat", is_layer="logits_unbiased")


def training_digest(checksums: Sequence[str], cfg: DomainTrainConfig, hu_min: float, hu_max: float) -> str:
    """Digest of the training volumes (their checksums) and the training config: the weights' cache key."""
    payload = json.dumps({"volumes": sorted(checksums), "config": asdict(cfg), "window": [hu_min, hu_max]},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def save_domain_extractor(net: DomainNet, path: Path, meta: dict[str, Any]) -> DomainExtractor:
    """Write weights (atomically, reproducible bytes) with ``.sha256`` and ``.json`` sidecars."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    buf = io.BytesIO()  # torch.save names the archive after the file: save to memory so the bytes do not depend on it
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    sha = file_sha256(path)
    meta = {**meta, "sha256": sha, "torch": torch.__version__, "note": DOMAIN_NOTE}
    atomic_write_text(Path(str(path) + ".json"), json.dumps(meta, indent=2, sort_keys=True))
    atomic_write_text(Path(str(path) + ".sha256"), f"{sha}  {path.name}\n")
    return DomainExtractor(str(path), sha, net.dims, meta)


def load_domain_extractor(path: Path) -> DomainExtractor | None:
    """A cached extractor whose ``.sha256`` sidecar matches the file, else None (then it is retrained)."""
    side, meta_path = Path(str(path) + ".sha256"), Path(str(path) + ".json")
    if not (path.is_file() and side.is_file() and meta_path.is_file()):
        return None
    sha = side.read_text().split()[0] if side.read_text().split() else ""
    if file_sha256(path) != sha:
        return None
    meta = json.loads(meta_path.read_text())
    load_domain_state(path, sha)  # must load safely
    return DomainExtractor(str(path), sha, int(meta["config"]["dims"]), meta)


def resolve_domain_extractor(folder: str | Path, volumes: Callable[[], tuple[list[np.ndarray], list[str], str]],
                             checksums: Sequence[str], cfg: DomainTrainConfig, hu_min: float, hu_max: float,
                             log: Callable[[str], None] | None = None) -> DomainExtractor:
    """The cached extractor for these training volumes and config, trained (seconds on a CPU) when missing.

    Parameters
    ----------
    folder : path
        ``runs/<P>/fidelity/extractor``.
    volumes : callable
        Returns ``(hu volumes, their ids, description)`` of the real training split; called only on a miss.
    checksums : sequence of str
        The training volumes' checksums (the cache key, with ``cfg`` and the window).
    """
    digest = training_digest(checksums, cfg, hu_min, hu_max)
    path = Path(folder) / f"domain{cfg.dims}d-seed{cfg.seed}-{digest[:16]}.pt"
    found = load_domain_extractor(path)
    if found is not None:
        return found
    vols, ids, desc = volumes()
    x, y = training_samples(vols, cfg.dims, cfg.n_regions, hu_min, hu_max)
    net, losses = train_domain_net(x, y, cfg, log)
    meta = {"kind": "domain", "name": DOMAIN2D_NAME if cfg.dims == 2 else DOMAIN3D_NAME, "config": asdict(cfg),
            "training_data_digest": digest, "training_data": desc, "n_training_volumes": len(vols),
            "n_training_samples": int(len(x)), "window_hu": [hu_min, hu_max], "final_losses": losses}
    return save_domain_extractor(net, path, meta)


class Domain3DRunner:
    """Slab features of whole volumes through the 3D encoder (the 3D FID / MMD feature space)."""

    def __init__(self, extractor: DomainExtractor, device: str | None = None, batch: int = 64):
        self.extractor = extractor
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        state = load_domain_state(extractor.weights_path, extractor.sha256)
        self.net = DomainNet(3, _n_regions_of(state)).to(self.device).eval()
        self.net.load_state_dict(state)
        self.batch = batch

    @torch.no_grad()
    def __call__(self, hu: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
        slabs, _ = slabs_of(volume_to_unit(np.asarray(hu, dtype=np.float32), hu_min, hu_max))
        out = [self.net(slabs[i:i + self.batch].to(self.device))[0].cpu() for i in range(0, len(slabs), self.batch)]
        return torch.cat(out).numpy().astype(np.float32)


def domain_for_config(cfg, real_cohort, dims: int = 2, seed: int | None = None,
                      log: Callable[[str], None] | None = None) -> DomainExtractor:
    """The domain extractor of a profile: trained on the real cohort's ``train`` split (all of it when that split is
    empty), at most ``fidelity.domain_max_volumes`` volumes drawn with the seed, cached under
    ``runs/<P>/fidelity/extractor/``."""
    f = cfg.fidelity
    seed = f.seed if seed is None else int(seed)
    ids = sorted(real_cohort.ids(split="train")) or sorted(real_cohort.ids())
    if len(ids) < 1:
        raise CTSGANError(f"{getattr(real_cohort, 'root', 'cohort')}: no real volumes to train the domain extractor")
    if 0 < f.domain_max_volumes < len(ids):
        ids = sorted(np.random.default_rng(seed).choice(ids, size=f.domain_max_volumes, replace=False).tolist())
    tcfg = DomainTrainConfig(dims=dims, seed=seed, n_regions=f.domain_regions, steps=f.domain_steps)
    where = "/".join(Path(str(getattr(real_cohort, "root", "cohort"))).parts[-2:])  # no absolute path

    def volumes():
        vols = [np.asarray(real_cohort.read(v)[0], dtype=np.float32) for v in ids]
        return vols, ids, f"{len(ids)} real volumes of {where} (split train), ids {ids[0]}..{ids[-1]}"

    return resolve_domain_extractor(cfg.runs_dir / "fidelity" / "extractor", volumes,
                                    [volume_checksum(real_cohort, v) for v in ids], tcfg, cfg.data.hu_min, cfg.data.hu_max,
                                    log)
