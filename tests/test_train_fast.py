"""The opt-in training fast path (issue 25): fused Adam, lazy losses, non-blocking copies, float32 penalty under bf16.

Tolerance for the loss curve: with the same seeds the fast options draw the same data and noise; only fused Adam
changes arithmetic (its update is the same formula evaluated in another order, ~1e-7 relative per step). Over a few
adversarial steps that grows, so losses must agree to 1e-5 absolute + 1e-5 relative (measured here: 7e-9); a real
change to the update (another learning rate, a skipped step, another penalty) moves them by 1e-2 or more.
"""
from __future__ import annotations

import contextlib
import csv

import numpy as np
import pytest
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.train import ctsgan_loop, losses
from ctsgan_lib.train.gan_common import TrainingDivergedError, build_gan, make_adam
from ctsgan_lib.train import distributed as D
from ctsgan_lib.utils.checkpoint import load_checkpoint
from test_ctsgan_train import make_g_loss_nan_from_step_3

TINY = {"ctsgan.ngf": 8, "ctsgan.ndf": 8, "ctsgan.patient_dim": 8, "ctsgan.slice_noise_dim": 4,
        "ctsgan.slice_code_dim": 8, "ctsgan.iterations": 6, "ctsgan.ckpt_every": 3, "ctsgan.sample_every": 6,
        "ctsgan.log_every": 2}
FAST = {"ctsgan.fused_adam": True, "ctsgan.lazy_losses": True, "ctsgan.async_copies": True, "ctsgan.gp_fp32": True}


def _volumes(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size] / size - 0.5
    body = (y / 0.4) ** 2 + (x / 0.45) ** 2 < 1
    base = np.where(body, 40.0, -1000.0)
    return np.stack([base + rng.normal(0, 30, base.shape) for _ in range(n)]).astype(np.float32)


def _log(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_fast_training_options_give_the_same_loss_curve(tmp_root):
    vols = _volumes()
    ref = ctsgan_loop.train_ctsgan(load_profile("smoke", **TINY), volumes_hu=vols, out_dir=tmp_root / "ref",
                                   progress=False)
    fast = ctsgan_loop.train_ctsgan(load_profile("smoke", **TINY, **FAST), volumes_hu=vols,
                                    out_dir=tmp_root / "fast", progress=False)
    a, b = _log(ref["log"]), _log(fast["log"])
    assert [int(r["step"]) for r in a] == [int(r["step"]) for r in b] == [2, 4, 6]
    moved = False
    for ra, rb in zip(a, b):
        for k in ctsgan_loop.LOSS_NAMES:
            x, y = float(ra[k]), float(rb[k])
            assert np.isfinite(y) and abs(x - y) <= 1e-5 + 1e-5 * abs(x), f"step {ra['step']} {k}: {x} vs {y}"
            moved |= float(a[0][k]) != float(ra[k])
    assert moved                                   # the curve is not flat, so agreeing along it says something
    wa, wb = (load_checkpoint(r["checkpoint"])["models"] for r in (ref, fast))
    for name in wa:
        for key, t in wa[name].items():
            if t.is_floating_point():
                torch.testing.assert_close(wb[name][key], t, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")


def test_fused_adam_is_used_when_asked_and_default_is_unchanged():
    cfg = load_profile("smoke", **TINY)
    _, opts = build_gan("ctsgan", 32, cfg.ctsgan, "cpu", D.DistContext(), seed=0)
    assert not opts["g"].defaults.get("fused") and not opts["d"].defaults.get("foreach")
    cfg = load_profile("smoke", **TINY, **{"ctsgan.fused_adam": True})
    _, opts = build_gan("ctsgan", 32, cfg.ctsgan, "cpu", D.DistContext(), seed=0)
    assert opts["g"].defaults["fused"] or opts["g"].defaults["foreach"]
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    assert make_adam([p], 1e-3, (0.5, 0.999), fused=True).param_groups[0]["params"] == [p]


def test_lazy_losses_still_stop_before_a_bad_checkpoint(tmp_root, monkeypatch):
    """Losses read only at log/checkpoint steps: a NaN at step 3 is found at the step-4 checkpoint, which is not
    written; the message names the steps in between."""
    cfg = load_profile("smoke", **{**TINY, "ctsgan.ckpt_every": 2, "ctsgan.log_every": 4, "ctsgan.lazy_losses": True})
    make_g_loss_nan_from_step_3(monkeypatch)
    out = tmp_root / "nan"
    with pytest.raises(TrainingDivergedError, match=r"between steps 3 and 4: non-finite loss.*ckpt_000002\.pt"):
        ctsgan_loop.train_ctsgan(cfg, volumes_hu=_volumes(), out_dir=out, progress=False)
    assert [p.name for p in out.glob("ckpt_*.pt")] == ["ckpt_000002.pt"]


def test_gp_fp32_runs_the_penalty_outside_bf16_autocast(tmp_root, monkeypatch):
    """With bf16 (CPU autocast switched on for the test: the library keeps CPU runs float32), the critics' loss
    terms run under autocast and, with ``ctsgan.gp_fp32``, the penalty's critic calls do not."""
    monkeypatch.setattr(ctsgan_loop, "autocast",
                        lambda device, bf16: torch.autocast("cpu", dtype=torch.bfloat16) if bf16
                        else contextlib.nullcontext())
    seen = []
    real_gp = losses.gradient_penalty

    def spy(critic, *args, **kw):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_gp(critic, *args, **kw)

    monkeypatch.setattr(losses, "gradient_penalty", spy)
    base = {**TINY, "ctsgan.iterations": 1, "ctsgan.bf16": True}
    ctsgan_loop.train_ctsgan(load_profile("smoke", **base), volumes_hu=_volumes(), out_dir=tmp_root / "a",
                             progress=False)
    assert seen and all(seen)                        # default: the penalty under bf16 autocast, as before
    seen.clear()
    res = ctsgan_loop.train_ctsgan(load_profile("smoke", **base, **{"ctsgan.gp_fp32": True}), volumes_hu=_volumes(),
                                   out_dir=tmp_root / "b", progress=False)
    assert seen and not any(seen)
    assert all(np.isfinite(v) for v in res["losses"].values())
