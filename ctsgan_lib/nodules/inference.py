"""Nodule injection and erasure on whole volumes: the inference side of the nodule cGANs (paper §3.1, Fig B.1/B.2).

:class:`NoduleInjector` / :class:`NoduleEraser` load a trained generator and paint / remove nodules, using the VOI
geometry of :mod:`ctsgan_lib.nodules.geometry`. The injector is one of two kinds (``nodules.injector``, recorded
in the checkpoint):

- ``learned`` (default, Jin et al.): the generator paints the whole masked centre from the context, a size scalar,
  a soft size hint and noise; the generated centre is pasted back with a feathered weight across the mask border
  (:func:`~ctsgan_lib.nodules.geometry.centre_feather_weight`), with the scan's own fine detail kept under it (the
  noise touch-up, ``nodules.touchup_sigma_vox``; after CT-GAN's touch-ups); ``nodules.paste`` chooses CT-GAN's
  density-gated paste-back or a local one instead. Everything outside that weight's support, and so everything
  outside the VOI, is bit-identical.
- ``sphere`` (the previous default): a partial-volume sphere of the requested diameter at a fixed density plus
  learned texture, composited into the real tissue with the sphere's occupancy.

:meth:`NoduleInjector.inject` also takes the volume as a torch tensor (ours, ``ctsgan generate --cohort-device``):
the volume then stays on its device and only the VOIs travel to the network (:mod:`ctsgan_lib.nodules.voi_torch`);
placement stays numpy on the CPU mask with the same rng stream, so the nodules land where the numpy path puts them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..data.intensity import hu_to_model, model_to_hu
from ..data.preprocess import lung_mask
from ..errors import CTSGANError
from ..utils.checkpoint import latest_checkpoint, load_checkpoint, load_state_strict
from .geometry import (PlacementError, ball, centre_feather_weight, centre_mask, extract_voi, nodule_blend_weight,
                       noise_touch_up, paste_voi, place_nodules_indexed, voi_blend_weight)
from .networks import INJECTORS, LEARNED_CHANNELS, SPHERE_CHANNELS, NoduleGenerator, learned_condition
from .voi_torch import extract_voi_tensor, paste_voi_tensor


# ------------------------------------------------------------------------------------------------ models
@dataclass
class _Loaded:
    generator: NoduleGenerator
    role: str
    voi_size: int
    mask_size: int
    hu_min: float
    hu_max: float
    step: int
    path: str
    kind: str
    feather_vox: float
    paste: str
    touchup_sigma_vox: float
    max_train_vox: float


def injector_kind(extra: dict, role: str) -> str:
    """``learned`` / ``sphere`` for an injector checkpoint's ``extra`` (checkpoints older than the learned injector
    carry no ``injector`` key and are sphere injectors), ``eraser`` for the eraser."""
    if role == "eraser":
        return "eraser"
    kind = str(extra.get("injector", "sphere"))
    if kind not in INJECTORS:
        raise CTSGANError(f"unknown injector kind {kind!r} in checkpoint; expected one of {INJECTORS}")
    return kind


def build_generator(kind: str, voi_size: int, base_channels: int, prior_model) -> NoduleGenerator:
    """The generator of a ``learned`` / ``sphere`` injector or of the ``eraser`` (channels: networks docstring)."""
    if kind == "learned":
        return NoduleGenerator(voi_size, base_channels, tuple(prior_model), LEARNED_CHANNELS, 1)
    return NoduleGenerator(voi_size, base_channels, tuple(prior_model), SPHERE_CHANNELS,
                           2 if kind == "sphere" else 1)


def _load_generator(path: str | Path, role: str, device: str | torch.device) -> _Loaded:
    path = Path(path)
    if not path.exists():
        raise CTSGANError(f"{path}: no {role} checkpoint; run `ctsgan nodules train {role}` (or notebook 02) first")
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CTSGANError(f"{path}: no {role} checkpoint (ckpt_*.pt); run `ctsgan nodules train {role}` first")
        path = found
    ck = load_checkpoint(path, kind=f"nodule_{role}", map_location="cpu")
    ex = ck["extra"]
    kind = injector_kind(ex, role)
    g = build_generator(kind, int(ex["voi_size"]), int(ex["base_channels"]), ex["prior_model"])
    load_state_strict(g, ck["models"]["generator"], str(path))
    g.eval().to(device)
    return _Loaded(g, role, int(ex["voi_size"]), int(ex["mask_size"]), float(ex["hu_min"]), float(ex["hu_max"]),
                   int(ck["step"]), str(path), kind, float(ex.get("feather_vox", 0.0)), str(ex.get("paste", "centre")),
                   # a checkpoint older than the touch-up was made and used without it: 0 keeps its behaviour
                   float(ex.get("touchup_sigma_vox", 0.0)),
                   float(np.percentile(ex["train_diameters_vox"], 90)) if ex.get("train_diameters_vox")
                   else float("inf"))


class _NoduleModel:
    role = ""
    max_train_vox = float("inf")   # learned injector: 90th percentile of its training nodules' diameters

    def __init__(self, generator: NoduleGenerator, voi_size: int, mask_size: int, hu_min: float = -1000.0,
                 hu_max: float = 400.0, device: str | torch.device = "cpu", step: int = 0, source: str = "",
                 kind: str | None = None, feather_vox: float = 0.0, paste: str | None = None,
                 touchup_sigma_vox: float = 0.0):
        self.generator = generator.to(device).eval()
        if kind is None:
            kind = "eraser" if self.role == "eraser" else ("learned" if generator.in_channels == LEARNED_CHANNELS
                                                            else "sphere")
        self.kind, self.feather_vox = kind, float(feather_vox)
        self.touchup_sigma_vox = float(touchup_sigma_vox)
        if paste is not None:
            self.paste = paste
        self.voi_size, self.mask_size = int(voi_size), int(mask_size)
        self.hu_min, self.hu_max = float(hu_min), float(hu_max)
        self.device = torch.device(device)
        self.step, self.source = step, source
        self._mask = centre_mask(self.voi_size, self.mask_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", paste: str | None = None,
                        touchup_sigma_vox: float | None = None):
        """Load the generator from a checkpoint file, or the newest ``ckpt_*.pt`` in a folder.

        ``paste`` (learned injector): ``"centre"`` / ``"ctgan"`` / ``"local"``; default the checkpoint's
        ``nodules.paste``.
        ``touchup_sigma_vox`` (learned injector): the noise touch-up's σ, 0 = off; default the checkpoint's
        ``nodules.touchup_sigma_vox`` (0 for checkpoints made before the touch-up existed).
        """
        ld = _load_generator(path, cls.role, device)
        model = cls(ld.generator, ld.voi_size, ld.mask_size, ld.hu_min, ld.hu_max, device, ld.step, ld.path, ld.kind,
                    ld.feather_vox, paste if paste is not None else ld.paste,
                    ld.touchup_sigma_vox if touchup_sigma_vox is None else touchup_sigma_vox)
        model.max_train_vox = ld.max_train_vox
        return model

    def _check_diameter(self, d: float) -> None:
        if not 0 < d <= self.mask_size:
            raise CTSGANError(f"nodule diameter {d} vox must be in (0, {self.mask_size}] (the {self.role}'s "
                              f"mask_size; use a model trained with a larger VOI for bigger nodules)")

    @torch.no_grad()
    def run_voi(self, voi_hu: np.ndarray, shape: np.ndarray, nodule_hu: float | None = None,
                parts: bool = False):
        """Run the sphere injector or the eraser on one VOI (HU) with a shape map; returns the composed VOI in HU.

        (The learned injector takes a size, not a shape: :meth:`NoduleInjector.generate_voi`.)

        Parameters
        ----------
        nodule_hu : float, optional
            Injector: mean density of the painted nodule; default the checkpoint's ``nodule_hu``.
        parts : bool
            Also return the generated background and the painted nodule map (HU): ``(composed, background,
            painted)``.
        """
        if self.kind == "learned":
            raise CTSGANError("the learned injector takes a diameter, not a shape map: use generate_voi / inject_at")
        level = None if nodule_hu is None else float(hu_to_model(np.float32(nodule_hu), self.hu_min, self.hu_max))
        x = hu_to_model(voi_hu.astype(np.float32), self.hu_min, self.hu_max)
        if self.role == "injector":
            x = x * (1.0 - self._mask)   # Jin et al.: the centre is blanked, the model sees only the context
        cond = torch.from_numpy(np.stack([x, self._mask, shape]).astype(np.float32))[None].to(self.device)
        raw = self.generator(cond)
        out = self.generator.compose(raw, cond, level)

        def hu(t):
            return model_to_hu(t[0, 0].float().cpu().numpy(), self.hu_min, self.hu_max).astype(np.float32)

        if not parts:
            return hu(out)
        if self.role != "injector":
            return hu(out), hu(out), hu(out)
        painted = self.generator.paint(raw[:, 1:2], cond[:, 2:3], level)
        return hu(out), hu(raw[:, :1]), hu(painted)


class NoduleInjector(_NoduleModel):
    """Paint nodules of chosen diameters into a volume (Fig B.1).

    Examples
    --------
    >>> inj = NoduleInjector.from_checkpoint("runs/smoke/nodules/injector")      # doctest: +SKIP
    >>> hu2, nodules = inj.inject(hu, [3.0, 5.0], np.random.default_rng(0))     # doctest: +SKIP
    """

    role = "injector"

    @torch.no_grad()
    def generate_voi(self, voi_hu: np.ndarray, diameter_vox: float, rng: np.random.Generator | None = None
                     ) -> np.ndarray:
        """Learned injector: the generator's whole VOI (HU) for a masked ``voi_hu`` and a requested diameter.

        ``rng`` draws the noise channel (default ``default_rng(0)``): the same VOI and size with other noise gives
        another nodule.
        """
        if self.kind != "learned":
            raise CTSGANError(f"generate_voi needs a learned injector; this one is {self.kind!r}")
        rng = np.random.default_rng(0) if rng is None else rng
        noise = rng.standard_normal((self.voi_size,) * 3).astype(np.float32)
        x = hu_to_model(voi_hu.astype(np.float32), self.hu_min, self.hu_max)
        cond = learned_condition(x, self._mask, float(diameter_vox), self.mask_size, noise)
        out = self.generator(torch.from_numpy(cond)[None].to(self.device))
        return model_to_hu(out[0, 0].float().cpu().numpy(), self.hu_min, self.hu_max).astype(np.float32)

    #: learned injector's paste-back: ``"centre"`` (Jin et al.: the whole generated centre cube, feathered at the
    #: mask border), ``"ctgan"`` (Mirsky et al. 2019: that weight gated by the generated density, and the result
    #: never below the scan, so only what the generator makes dense is written) or ``"local"`` (ours: only a ball
    #: of diameter + 2 voxels around the nodule, feathered over 2)
    paste = "centre"

    def paste_weight(self, diameter_vox: float | None = None) -> np.ndarray:
        """The learned injector's paste-back weight (zero on the VOI faces); see :attr:`paste`."""
        if self.paste == "local":
            d = float(diameter_vox if diameter_vox is not None else self.mask_size / 2)
            return nodule_blend_weight(self.voi_size, min(d + 2.0, float(self.mask_size)), 2.0)
        if self.paste not in ("centre", "ctgan"):
            raise CTSGANError(f"paste must be 'centre', 'ctgan' or 'local', got {self.paste!r}")
        return centre_feather_weight(self.voi_size, self.mask_size, self.feather_vox)

    def inject_voi(self, voi_hu: np.ndarray, diameter_vox: float, rng: np.random.Generator | None = None
                   ) -> np.ndarray:
        """One VOI (HU) with a nodule injected at its centre voxel, blended as :meth:`inject_at` does."""
        c = [self.voi_size // 2] * 3
        return self.inject_at(voi_hu, c, diameter_vox, rng=rng)

    def inject_at(self, hu: np.ndarray, center: Sequence[int], diameter_vox: float, blend: str = "nodule",
                  shape: np.ndarray | None = None, nodule_hu: float | None = None,
                  rng: np.random.Generator | None = None) -> np.ndarray:
        """Inject one nodule centred at ``center``.

        Parameters
        ----------
        blend : {"nodule", "voi"}
            Sphere injector only. ``"nodule"`` (default) keeps the real tissue and composites the sphere (mean
            density + learned texture) with its partial-volume occupancy ``s``: ``(1 - s) hu + s nodule``.
            ``"voi"`` pastes the generator's whole centre cube with a raised-cosine taper to the VOI faces. The
            learned injector always pastes its generated centre with :meth:`paste_weight`, plus the scan's own
            fine detail when :attr:`touchup_sigma_vox` > 0 (:func:`~ctsgan_lib.nodules.geometry.noise_touch_up`).
        shape : ndarray, optional
            Sphere injector: a custom ``voi_size``³ shape map in [0, 1]; default a ball of ``diameter_vox``.
        nodule_hu : float, optional
            Sphere injector: mean density of the nodule (default: the checkpoint's ``cfg.nodules.nodule_hu``).
        rng : numpy Generator, optional
            Learned injector: the noise channel (default ``default_rng(0)``).
        """
        self._check_diameter(diameter_vox)
        if isinstance(hu, torch.Tensor):   # a volume on its device: cut and paste there (module docstring)
            voi = extract_voi_tensor(hu, center, self.voi_size).cpu().numpy()
            paste = _paste_on_device
        else:
            voi = extract_voi(hu, center, self.voi_size)
            paste = paste_voi
        if self.kind == "learned":
            # the noise touch-up: the scan's own fine detail under a (smoother) generated centre
            generated = self.generate_voi(voi, diameter_vox, rng)
            painted = noise_touch_up(generated, voi, self._mask, self.touchup_sigma_vox)
            w = self.paste_weight(diameter_vox)
            if self.paste == "ctgan":
                painted, w = ctgan_composite(painted, generated, voi, w)
            return paste(hu, painted, center, w)
        s = ball(self.voi_size, diameter_vox) if shape is None else np.asarray(shape, dtype=np.float32)
        composed, _, painted = self.run_voi(voi, s, nodule_hu, parts=True)
        if blend == "nodule":
            # keep the real tissue; composite the generated nodule with its partial-volume occupancy
            return paste(hu, painted, center, s)
        if blend == "voi":
            return paste(hu, composed, center, np.maximum(voi_blend_weight(self.voi_size, self.mask_size), s))
        raise CTSGANError(f"blend must be 'nodule' or 'voi', got {blend!r}")

    def inject(self, hu: np.ndarray, diameters_vox: Sequence[float], rng: np.random.Generator,
               lung: np.ndarray | None = None, existing: Iterable[dict] = (), spacing_mm: Sequence[float] | None = None,
               strict: bool = False, blend: str = "nodule",
               nodule_hu: float | None = None) -> tuple[np.ndarray, list[dict]]:
        """Place and paint ``len(diameters_vox)`` nodules.

        Parameters
        ----------
        hu : ndarray or torch.Tensor (z, y, x), HU
            A tensor stays on its device and a tensor is returned (module docstring).
        diameters_vox : sequence of float
        rng : numpy Generator (placement, then the learned injector's noise)
        lung : ndarray of bool, optional
            Lung mask; default :func:`ctsgan_lib.data.preprocess.lung_mask`.
        existing : nodules already in the volume (not overlapped).
        spacing_mm : (dz, dy, dx), optional
            Used only to report ``diameter_mm`` (geometric mean spacing).
        strict : bool
            Raise :class:`PlacementError` when not all nodules fit; otherwise warn and return fewer.

        Returns
        -------
        (hu_new, nodules) : the new volume and one dict per injected nodule (cohort manifest format).
        """
        for d in diameters_vox:
            self._check_diameter(float(d))
        if self.kind == "learned" and max(map(float, diameters_vox), default=0.0) > self.max_train_vox:
            # the learned injector paints what it saw: beyond its training sizes it may paint nothing (demo: 3-8 vox)
            warnings.warn(f"learned injector asked for {max(map(float, diameters_vox)):g} vox nodules but 90 % of its "
                          f"training nodules are below {self.max_train_vox:.2f} vox: size control is not trained there "
                          f"(docs/nodules.md); the sphere injector (nodules.injector: sphere) paints any size",
                          stacklevel=2)
        on_tensor = isinstance(hu, torch.Tensor)
        if lung is None:
            lung = lung_mask(hu.cpu().numpy() if on_tensor else hu)
        placed = place_nodules_indexed(lung, diameters_vox, rng, existing)
        centers = [placed[k] for k in sorted(placed)]
        placed_d = [float(diameters_vox[k]) for k in sorted(placed)]
        shortfall = len(diameters_vox) - len(centers)
        if shortfall:
            msg = (f"only {len(centers)} of {len(diameters_vox)} nodules fit in the lung mask "
                   f"({int(np.asarray(lung).sum())} lung voxels); shortfall {shortfall}")
            if strict:
                raise PlacementError(msg)
            warnings.warn(msg, stacklevel=2)
        out = hu.to(torch.float32).clone() if on_tensor else hu.astype(np.float32, copy=True)
        sp = float(np.prod(spacing_mm) ** (1 / 3)) if spacing_mm is not None else None
        nodules = []
        for c, d in zip(centers, placed_d):
            out = self.inject_at(out, c, float(d), blend=blend, nodule_hu=nodule_hu, rng=rng)
            # the learned injector decides solid vs part-solid itself: the manifest records what made it
            nodules.append({"center_vox": [int(v) for v in c], "diameter_vox": float(d),
                            "diameter_mm": None if sp is None else float(d) * sp,
                            "kind": "solid" if self.kind == "sphere" else "generated", "action": "injected",
                            "injector": self.kind})
        self.last_shortfall = shortfall
        return out, nodules


#: CT-GAN's density gate (Mirsky et al. 2019, ``attack_pipeline._touch_up_scan``): sigmoid((HU + 700) / 70)
CTGAN_GATE_HU, CTGAN_GATE_WIDTH_HU = -700.0, 70.0


def ctgan_composite(painted: np.ndarray, generated: np.ndarray, voi: np.ndarray, weight: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """CT-GAN's injection paste-back: the generated VOI is used where it is dense, the scan everywhere else.

    ``f = weight · sigmoid((generated + 700) / 70)`` (about 0 in lung-density output, 1 in soft-tissue density), and
    the result ``max(f · painted + (1 − f) · voi, voi)``: injection only adds density, as in CT-GAN. Returns the
    composed VOI and a paste weight that is 1 where ``weight`` > 0 (so :func:`paste_voi` writes the composed VOI
    there and leaves the rest bit-identical).
    """
    f = weight / (1.0 + np.exp(-(generated.astype(np.float64) - CTGAN_GATE_HU) / CTGAN_GATE_WIDTH_HU))
    composed = np.maximum(f * painted + (1.0 - f) * voi, voi).astype(np.float32)
    return composed, (weight > 0).astype(np.float32)


def _paste_on_device(volume: torch.Tensor, voi: np.ndarray, center, weight: np.ndarray) -> torch.Tensor:
    """:func:`paste_voi` for a volume tensor and a numpy VOI / weight (the network's output comes back as numpy)."""
    return paste_voi_tensor(volume, torch.from_numpy(np.ascontiguousarray(voi)), center,
                            torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)))


class NoduleEraser(_NoduleModel):
    """Replace nodules with healthy tissue (Fig B.2)."""

    role = "eraser"

    def erase(self, hu: np.ndarray, nodules: Iterable[dict], margin_vox: float | None = None) -> np.ndarray:
        """Erase each nodule (dicts with ``center_vox`` and ``diameter_vox``); returns the new volume in HU.

        The generated healthy VOI is pasted with a raised-cosine weight that is 1 over the nodule and falls to 0
        over ``margin_vox`` around it, so tissue away from the nodule stays as it was.
        """
        out = hu.astype(np.float32, copy=True)
        for nod in nodules:
            d = min(float(nod["diameter_vox"]), float(self.mask_size))
            c = [int(round(float(v))) for v in nod["center_vox"]]
            w = nodule_blend_weight(self.voi_size, d, margin_vox)
            gen = self.run_voi(extract_voi(out, c, self.voi_size), w)
            out = paste_voi(out, gen, c, w)
        return out
