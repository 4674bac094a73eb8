"""InceptionV3 weights for FID/IS: lookup, SHA-256 verification, and the offline fallback extractor.

torch-fidelity 0.4.0 (``feature_extractor='inception-v3-compat'``) downloads its ImageNet weights from GitHub on first
use, which is impossible offline, and it unpickles a weights file with ``torch.load(..., weights_only=False)``. So:

1. **Lookup** (:func:`resolve_extractor`): ``fidelity.weights_path`` from the config, then the torch hub cache
   (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``).
2. **Verification** (:func:`verify_weights`): the file's SHA-256 must equal a *recorded* hash (``fidelity.weights_sha256``
   or a sidecar ``<file>.sha256``), and the file must load with ``weights_only=True`` as a plain state dict with exactly
   torch-fidelity's InceptionV3 keys and shapes. Only then is the path handed to torch-fidelity. torch-fidelity's
   source records only the 8-hex prefix in the file name (``6726825d``), not the full SHA-256, so the full hash has to
   be recorded by whoever fetched the file.
3. **Missing weights**: the paper profile stops with a message naming the file, URL and destination. Smoke and demo
   build an *offline fallback* (:func:`build_fallback_weights`): torch-fidelity's own InceptionV3 module with seeded
   random init whose BatchNorm running statistics are recalibrated on a fixed batch of real slices, saved as a weights
   file and passed to the very same torch-fidelity code path. A bare random InceptionV3 gives degenerate features
   (activations vanish, every FID ≈ 0); after BN recalibration the same network separates distributions. Its features
   are **not ImageNet features**: numbers made with it are not comparable to the paper, and every output says so.
"""
from __future__ import annotations

import io
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import CTSGANError, InputFileError, MissingInputError
from ..utils.atomic import atomic_write_bytes, atomic_write_text, file_sha256

EXTRACTOR_NAME = "inception-v3-compat"
OFFICIAL_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
OFFICIAL_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{OFFICIAL_WEIGHTS_NAME}"
#: torch hub's convention (``torch.hub.HASH_REGEX = r"-([a-f0-9]*)\."`` and ``download_url_to_file(hash_prefix=...)``,
#: which checks ``sha256(file).hexdigest()[:len(prefix)] == prefix``): the hex suffix of the file name is the first
#: hex digits of the file's SHA-256. Only a file whose SHA-256 starts with it is labelled ``imagenet`` / comparable.
OFFICIAL_SHA256_PREFIX = OFFICIAL_WEIGHTS_NAME.rsplit("-", 1)[1].split(".")[0]
CUSTOM_NOTE = ("user-supplied InceptionV3-shaped weights whose SHA-256 does not start with torch hub's recorded "
               f"prefix {OFFICIAL_SHA256_PREFIX}: NOT the official ImageNet weights, not comparable to the paper")
#: Feature layers we ask torch-fidelity for: FID uses the 2048-d pool features, IS the unbiased logits.
FEATURES = ("2048", "logits_unbiased")
FALLBACK_NOTE = ("features from a seeded random InceptionV3 with BatchNorm recalibrated on real slices, NOT ImageNet "
                 "features: not comparable to the paper")


@dataclass
class Extractor:
    """Which weights the FID/IS numbers were made with.

    Attributes
    ----------
    weights_path : str
        File passed to torch-fidelity as ``feature_extractor_weights_path``.
    sha256 : str
        Verified SHA-256 of that file.
    kind : str
        ``"imagenet"`` (the official torch-fidelity weights) or ``"fallback"`` (offline, BN-recalibrated random).
    comparable_to_paper : bool
        True only for the ImageNet weights.
    note : str
        Short human-readable description that goes into every table and JSON line.
    meta : dict
        For the fallback: seed, calibration data description, torch version.
    """

    weights_path: str
    sha256: str
    kind: str
    comparable_to_paper: bool
    note: str
    name: str = EXTRACTOR_NAME
    meta: dict[str, Any] = field(default_factory=dict)
    fid_layer: str = FEATURES[0]       # torch-fidelity feature layer for FID / KID
    is_layer: str = FEATURES[1]        # ... and for IS

    @property
    def label(self) -> str:
        """E.g. ``"inception-v3-compat [fallback, sha256 1a2b3c4d5e6f]"`` (the name every table shows)."""
        return f"{self.name} [{self.kind}, sha256 {self.sha256[:12]}]"

    def as_record(self) -> dict[str, Any]:
        """The fields every metrics JSON line carries."""
        return {"extractor": self.name, "weights_kind": self.kind, "weights_sha256": self.sha256,
                "weights_file": Path(self.weights_path).name, "comparable_to_paper": self.comparable_to_paper,
                "extractor_note": self.note}


def is_official_sha256(sha256: str) -> bool:
    """Whether a SHA-256 matches torch hub's prefix for the official weights (the only ``imagenet`` label)."""
    return sha256.lower().startswith(OFFICIAL_SHA256_PREFIX)


def hub_weights_path() -> Path:
    """Where torch hub (and so torch-fidelity) keeps the official weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / OFFICIAL_WEIGHTS_NAME


def fetch_instructions(dest: Path | None = None) -> str:
    """The exact fetch-and-place instructions for the official weights."""
    dest = dest or hub_weights_path()
    return (f"fetch {OFFICIAL_WEIGHTS_URL} and put it at {dest} (or set fidelity.weights_path), then record its "
            f"SHA-256 from a trusted copy: `sha256sum {dest.name} > {dest}.sha256` (or set fidelity.weights_sha256)")


def recorded_sha256(path: Path, configured: str = "") -> str | None:
    """The hash a weights file must have: the configured one, else the sidecar ``<file>.sha256``, else None."""
    if configured:
        return configured.strip().lower()
    side = Path(str(path) + ".sha256")
    if side.is_file():
        words = side.read_text().split()
        if words:
            return words[0].strip().lower()
    return None


def _reference_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of torch-fidelity's InceptionV3 state dict (built once, no weights loaded)."""
    global _REF_SHAPES
    if _REF_SHAPES is None:
        with tempfile.TemporaryDirectory() as tmp:
            net = seeded_inception(0, Path(tmp))
        _REF_SHAPES = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    return _REF_SHAPES


_REF_SHAPES: dict[str, tuple[int, ...]] | None = None


def verify_weights(path: str | Path, expected_sha256: str | None) -> str:
    """Check a weights file before torch-fidelity unpickles it (it uses ``weights_only=False``).

    Parameters
    ----------
    path : str or Path
        The weights file.
    expected_sha256 : str or None
        The recorded hash. None (nothing recorded) is refused.

    Returns
    -------
    str
        The file's SHA-256.

    Raises
    ------
    InputFileError
        Missing file, no recorded hash, checksum mismatch, not a plain tensor state dict (would need unsafe
        unpickling), or keys/shapes other than torch-fidelity's InceptionV3.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "Inception weights file not found")
    if not expected_sha256:
        raise InputFileError(path, "no recorded SHA-256 for these weights (torch-fidelity unpickles them unsafely, so "
                             f"they must be verified): write it to {path}.sha256 or set fidelity.weights_sha256")
    actual = file_sha256(path)
    if actual != expected_sha256.lower():
        raise InputFileError(path, f"checksum mismatch: SHA-256 {actual} but {expected_sha256} was recorded; the file "
                             "is corrupted or not the expected weights, refusing to load it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, zipfile errors
        raise InputFileError(path, f"not a plain tensor state dict (safe load failed: {str(exc).splitlines()[0]})") \
            from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputFileError(path, "not a state dict of tensors")
    ref = _reference_shapes()
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != ref:
        missing = sorted(set(ref) - set(got))[:3]
        extra = sorted(set(got) - set(ref))[:3]
        bad = [k for k in ref if k in got and got[k] != ref[k]][:3]
        raise InputFileError(path, f"not torch-fidelity InceptionV3 weights (missing {missing}, unexpected {extra}, "
                             f"wrong shapes {bad})")
    return actual


def seeded_inception(seed: int, scratch: Path) -> torch.nn.Module:
    """torch-fidelity's own ``FeatureExtractorInceptionV3``, with deterministic random init instead of a download.

    Its constructor always loads a weights file; we hand it an empty one and skip that one load, so the module is the
    library's exact architecture with PyTorch's default initialisation drawn from ``torch.manual_seed(seed)``.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # torch-fidelity: 1.6 s to import (torchvision)

    class _SeededInceptionV3(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: D401 - torch signature
            if not state_dict:  # the empty bootstrap file: keep the seeded init
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    empty = scratch / "empty_state.pth"
    torch.save({}, empty)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _SeededInceptionV3(EXTRACTOR_NAME, list(FEATURES), feature_extractor_weights_path=str(empty))
    return net


def build_fallback_weights(calibration: np.ndarray, seed: int, out_path: str | Path, description: str,
                           batch: int = 32) -> Extractor:
    """Make the offline fallback weights file (smoke/demo only).

    Seeded random InceptionV3 (torch-fidelity's module), BatchNorm layers put in train mode with ``momentum=None``
    (cumulative average), one pass over a fixed calibration batch of real slices, back to eval, state dict saved.

    Parameters
    ----------
    calibration : np.ndarray
        uint8 slices, shape (N, 3, H, W) (any H, W: torch-fidelity resizes to 299 internally).
    seed : int
        Initialisation seed.
    out_path : str or Path
        Weights file to write (atomically). A sidecar ``.sha256`` and a ``.json`` with seed and calibration
        description are written beside it.
    description : str
        Which slices were used (cohort, ids, split), recorded in the ``.json``.
    batch : int
        Slices per forward pass.

    Returns
    -------
    Extractor
    """
    calibration = np.asarray(calibration)
    if calibration.dtype != np.uint8 or calibration.ndim != 4 or calibration.shape[1] != 3:
        raise CTSGANError(f"calibration slices must be uint8 (N, 3, H, W), got {calibration.dtype} "
                          f"{calibration.shape}")
    if len(calibration) < 2:
        raise CTSGANError("the fallback extractor needs at least 2 calibration slices")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        net = seeded_inception(seed, Path(tmp))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every calibration batch weighs the same
        bn.train()
    x = torch.from_numpy(calibration)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reduction order depends on the thread count: one thread makes the file reproducible
    try:
        with torch.no_grad():
            for i in tqdm(range(0, len(x), batch), desc="calibrating fallback InceptionV3 BN", leave=False):
                net(x[i:i + batch])
    finally:
        torch.set_num_threads(threads)
    net.eval()
    for bn in bns:
        bn.momentum = 0.001  # torch-fidelity's BasicConv2d default; irrelevant in eval, keeps the module standard
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    # serialise to memory first: torch.save names the zip archive after the target file, and the atomic temp name is
    # random, so saving to it directly would give a different SHA-256 for identical weights on every run
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out_path, buf.getvalue())
    sha = file_sha256(out_path)
    meta = {"kind": "fallback", "seed": int(seed), "calibration": description,
            "calibration_slices": int(len(calibration)), "calibration_shape": list(calibration.shape[1:]),
            "torch": torch.__version__, "sha256": sha, "note": FALLBACK_NOTE}
    atomic_write_text(Path(str(out_path) + ".json"), json.dumps(meta, indent=2))
    atomic_write_text(Path(str(out_path) + ".sha256"), f"{sha}  {out_path.name}\n")
    return Extractor(str(out_path), sha, "fallback", False, FALLBACK_NOTE, meta=meta)


def load_fallback(out_path: str | Path, seed: int, description: str) -> Extractor | None:
    """Reuse a fallback weights file made earlier with the same seed and calibration data, after verifying it."""
    out_path = Path(out_path)
    meta_path = Path(str(out_path) + ".json")
    if not (out_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return None
    if meta.get("seed") != seed or meta.get("calibration") != description:
        return None
    sha = verify_weights(out_path, recorded_sha256(out_path))
    return Extractor(str(out_path), sha, "fallback", False, FALLBACK_NOTE, meta=meta)


def resolve_extractor(profile: str, weights_path: str = "", weights_sha256: str = "", fallback_path=None,
                      seed: int = 0, calibration_fn=None, batch: int = 32) -> Extractor:
    """Find and verify the weights, or build the offline fallback where the profile allows it.

    Parameters
    ----------
    profile : str
        ``paper`` never falls back: missing weights stop with fetch instructions.
    weights_path, weights_sha256 : str
        ``fidelity.weights_path`` / ``fidelity.weights_sha256`` from the config (empty = not set).
    fallback_path : Path
        Where the fallback weights file lives (``runs/<P>/fidelity/extractor/...``).
    seed : int
        Fallback initialisation seed.
    calibration_fn : callable
        Returns ``(slices_uint8 (N, 3, H, W), description)``; called only when a fallback has to be built.

    Returns
    -------
    Extractor

    Raises
    ------
    MissingInputError
        Paper profile without weights.
    InputFileError
        Weights present but unverifiable or corrupted (never silently replaced by the fallback).
    """
    if weights_path:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise InputFileError(p, f"fidelity.weights_path does not exist; {fetch_instructions(p)}")
        sha = verify_weights(p, recorded_sha256(p, weights_sha256))
        if not is_official_sha256(sha):
            return Extractor(str(p), sha, "custom", False, CUSTOM_NOTE)
        return Extractor(str(p), sha, "imagenet", True, "torch-fidelity ImageNet InceptionV3 (2015-12-05)")
    hub = hub_weights_path()
    if hub.is_file():
        sha = verify_weights(hub, recorded_sha256(hub, weights_sha256))
        if not is_official_sha256(sha):
            raise InputFileError(hub, f"not the official torch-fidelity weights: its SHA-256 {sha[:16]}… does not "
                                 f"start with {OFFICIAL_SHA256_PREFIX}, the prefix torch hub's file-name convention "
                                 "records; remove it, or pass it as fidelity.weights_path to use it unlabelled")
        return Extractor(str(hub), sha, "imagenet", True, "torch-fidelity ImageNet InceptionV3 (2015-12-05)")
    if profile == "paper":
        raise MissingInputError(f"Inception weights missing (the paper profile needs ImageNet features): "
                                f"{fetch_instructions(hub)}")
    if fallback_path is None or calibration_fn is None:
        raise MissingInputError(f"Inception weights missing and no fallback possible here: {fetch_instructions(hub)}")
    slices, description = calibration_fn()
    found = load_fallback(fallback_path, seed, description)
    if found is not None:
        return found
    return build_fallback_weights(slices, seed, fallback_path, description, batch=batch)


def extractor_summary(ex: Extractor) -> dict[str, Any]:
    """Plain dict for JSON (e.g. a notebook's display)."""
    return asdict(ex)
