"""Checkpoints: plain state dicts + config, written atomically, loaded with ``weights_only=True``.

A checkpoint is a dict::

    {"kind": "ctsgan", "format": 1, "step": int, "config": {...plain dict...},
     "models": {name: state_dict}, "optimizers": {name: state_dict}, "rng": rng_state(), "extra": {...}}

Resuming restores optimizers, step and RNG states (STYLE.md: stylegan2-ada issue #81 forgot counters; we do not).
"""
from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from .atomic import atomic_path

FORMAT = 1


def rng_state() -> dict[str, Any]:
    """Capture Python, numpy (legacy global) and torch RNG states in a ``weights_only``-loadable form."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, kind: str, step: int, config: dict[str, Any],
                    models: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    extra: dict[str, Any] | None = None, with_rng: bool = True) -> Path:
    """Write a checkpoint atomically (temp file + rename) and return its path.

    DDP-wrapped models are unwrapped so a checkpoint loads on any number of devices.
    """
    def _sd(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        m = getattr(m, "module", m)
        return {k: v.detach().cpu() for k, v in m.state_dict().items()}

    payload = {
        "kind": kind, "format": FORMAT, "step": int(step), "config": config,
        "models": {k: _sd(m) for k, m in models.items()},
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "rng": rng_state() if with_rng else None,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely.

    Parameters
    ----------
    path : str or Path
    kind : str, optional
        Expected ``kind`` (e.g. ``"ctsgan"``); a checkpoint of another model family is refused.
    map_location : str or torch.device

    Raises
    ------
    CheckpointError
        Missing file, not a torch checkpoint, a pickle that carries code (refused by ``weights_only=True``),
        or the wrong kind.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused to load: the file holds objects other than tensors and plain "
                              f"containers (possibly code); only weights_only checkpoints are accepted ({first[:160]})"
                              ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError) as exc:  # a text file or other bytes trip the unpickler in many ways
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if (not isinstance(ck, dict) or not isinstance(ck.get("models"), dict) or not isinstance(ck.get("kind"), str)
            or not isinstance(ck.get("config"), dict) or not isinstance(ck.get("step", 0), int)):
        raise CheckpointError(f"{path}: not a ctsgan_lib checkpoint (needs 'kind', 'step', 'config' and 'models')")
    if kind is not None and ck["kind"] != kind:
        raise CheckpointError(f"{path}: checkpoint is a {ck['kind']!r} model, expected {kind!r}")
    return ck


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` with a one-line error naming the mismatch (other architecture or config)."""
    module = getattr(module, "module", module)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)} vs model "
                         f"{tuple(own[k].shape)})")
        raise CheckpointError(f"{where}: checkpoint does not match this architecture/config: " + "; ".join(parts))
    module.load_state_dict(state)


def latest_checkpoint(folder: str | Path, pattern: str = "ckpt_*.pt") -> Path | None:
    """Newest checkpoint in ``folder`` by step number in its name (``ckpt_000120.pt``), or None."""
    folder = Path(folder)
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None
