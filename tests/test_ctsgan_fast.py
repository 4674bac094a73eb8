"""The opt-in fast generation path (issue 25) gives the default path's volumes within a stated tolerance.

Tolerances, in model units (volumes in [-1, 1]; 1 HU = 2 / 1400 ≈ 1.4e-3 on the default window):

- float32 fast path: |Δ| ≤ 1e-5 everywhere (≈ 0.007 HU). Folding BatchNorm and batching slices differently only
  reorders float32 sums (unit roundoff 6e-8) over a few thousand terms per layer and five layers; 1e-5 is ~170 ulps
  of headroom, and 140× below one HU.
- bf16 fast path: "bf16 rounding" is measured, not guessed: the default code run under bf16 autocast is as far from
  the float32 volume as bf16 makes it; the fast bf16 path must be no further than 1.5× that (mean and max).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ctsgan_lib.cli import main as cli_main
from ctsgan_lib.config import load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.models.ctsgan import CTSGANGenerator, build_ctsgan, synthesize
from ctsgan_lib.models.ctsgan_fast import FastOptions, fast_gslice, fold_batchnorm, synthesize_fast
from ctsgan_lib.models.dcgan import init_weights
from ctsgan_lib.synthesis import generate_volumes
from ctsgan_lib.utils.checkpoint import save_checkpoint

SMALL = {"patient_dim": 16, "slice_noise_dim": 8, "slice_code_dim": 16, "ngf": 8, "ndf": 8, "slab_len": 4,
         "rv_init": "random"}
FP32_ATOL = 1e-5


def _trained_like(size: int = 32, seed: int = 0) -> CTSGANGenerator:
    """A generator whose BatchNorm statistics are not the identity and whose output spans [-1, 1], as a trained one:
    a few train-mode forwards fill the running statistics, and the last layer is scaled up out of tanh's linear
    range (an untrained one outputs ~1e-3, where any path would look equal)."""
    torch.manual_seed(seed)
    gen = build_ctsgan(size, SMALL)["generator"]
    init_weights(gen)
    gen.train()
    with torch.no_grad():
        for _ in range(3):
            gen(*gen.sample_noise(4))
        last = [m for m in gen.gslice.net if isinstance(m, torch.nn.ConvTranspose2d)][-1]
        last.weight.mul_(1500.0)
    return gen.eval()


def test_fold_batchnorm_matches_eval_stack_and_removes_the_norms():
    gen = _trained_like()
    folded = fold_batchnorm(gen.gslice.net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in gen.gslice.net)   # the original is untouched
    x = torch.randn(5, gen.gslice.code_dim, 1, 1)
    with torch.no_grad():
        ref, out = gen.gslice.net(x), folded(x)
    assert ref.abs().max() > 0.5                                              # a real signal, not ~0
    torch.testing.assert_close(out, ref, rtol=0, atol=FP32_ATOL)


@pytest.mark.parametrize("slice_batch", [7, 30, 90, 4096])    # < L, = L, across volumes, all at once (padded)
def test_fp32_fast_path_equals_default_volumes(slice_batch):
    gen = _trained_like()
    pn, sn = gen.sample_noise(3, generator=torch.Generator().manual_seed(1))
    ref = synthesize(gen, pn, sn, chunk=8)
    fast = synthesize_fast(gen, pn, sn, FastOptions(slice_batch=slice_batch))
    assert fast.shape == ref.shape == (3, 32, 32, 32)
    assert ref.abs().max() > 0.9
    torch.testing.assert_close(fast, ref, rtol=0, atol=FP32_ATOL)
    # end slices come from the outer channels: a wrong channel would differ by O(1), far above the tolerance
    assert (fast[:, 0] - ref[:, 1]).abs().max() > 100 * FP32_ATOL


def test_bf16_fast_path_is_within_bf16_rounding_of_float32():
    gen = _trained_like()
    pn, sn = gen.sample_noise(2, generator=torch.Generator().manual_seed(2))
    ref = synthesize(gen, pn, sn, chunk=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):       # the default code's own bf16 rounding, as the yardstick
        ref_bf16 = synthesize(gen, pn, sn, chunk=8)
    fast = synthesize_fast(gen, pn, sn, FastOptions(slice_batch=16, bf16=True))
    bf16_err = (ref_bf16 - ref).abs()
    err = (fast - ref).abs()
    assert bf16_err.max() > FP32_ATOL                        # bf16 really ran (else the comparison says nothing)
    assert err.mean() <= 1.5 * bf16_err.mean() and err.max() <= 1.5 * bf16_err.max() + 1e-3


def test_generate_volumes_fast_gives_the_same_hu_volumes_at_any_batch():
    gen = _trained_like()
    gen.meta = {"hu_min": -1000.0, "hu_max": 400.0, "chunk": 8, "spacing_mm": (1.0, 1.0, 1.0)}
    ref = [hu for hu, _ in generate_volumes(gen, 3, seed=5, batch=2)]
    for batch in (1, 3):
        fast = [hu for hu, _ in generate_volumes(gen, 3, seed=5, batch=batch, fast=FastOptions(slice_batch=20))]
        for a, b in zip(fast, ref):
            np.testing.assert_allclose(a, b, rtol=0, atol=FP32_ATOL * 700)   # model units → HU (window / 2)


def test_fast_gslice_is_cached_and_rebuilt_when_the_weights_change():
    gen = _trained_like()
    opts = FastOptions()
    a = fast_gslice(gen, opts)
    assert fast_gslice(gen, opts) is a
    with torch.no_grad():
        gen.gslice.net[0].weight.mul_(0.5)
    assert fast_gslice(gen, opts) is not a


def test_fast_path_refuses_train_mode():
    gen = _trained_like().train()
    with pytest.raises(ValueError, match="eval"):
        synthesize_fast(gen, *gen.sample_noise(1))


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    gen = _trained_like()
    pn, sn = gen.sample_noise(1, generator=torch.Generator().manual_seed(3))
    ref = synthesize_fast(gen, pn, sn, FastOptions(slice_batch=16))

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = synthesize_fast(gen, pn, sn, FastOptions(slice_batch=16, compile=True))
    assert any("torch.compile failed" in str(w.message) for w in caught)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    """An untrained smoke-profile CT-SGAN checkpoint as the training loop writes it."""
    torch.manual_seed(0)
    cfg = load_profile("smoke")
    gen = build_ctsgan(cfg.data.size, cfg.ctsgan)["generator"]
    init_weights(gen)
    path = tmp_path_factory.mktemp("ck") / "ckpt_000001.pt"
    save_checkpoint(path, kind="ctsgan", step=1, config=cfg.to_dict(), models={"rv": gen.rv, "gslice": gen.gslice},
                    extra={"spacing_mm": (6.0, 6.0, 6.0)})
    return path


def test_cli_fast_cohort_matches_the_default_cohort(smoke_ckpt, tmp_path):
    """``ctsgan generate --fast`` writes the default run's volumes (HU, within float32 rounding + the writer's own
    rounding) and records the fast settings; the fast-only flags are refused without ``--fast`` (exit 2)."""
    base = ["generate", "--checkpoint", str(smoke_ckpt), "--n", "3", "--seed", "4", "--batch", "2",
            "--inject-fraction", "0", "--device", "cpu", "--no-progress"]
    assert cli_main([*base, "--out", str(tmp_path / "default")]) == 0
    assert cli_main([*base, "--out", str(tmp_path / "fast"), "--fast", "--slice-batch", "40"]) == 0
    a, b = Cohort(tmp_path / "default"), Cohort(tmp_path / "fast")
    assert a.ids() == b.ids()
    for rid in a.ids():
        np.testing.assert_allclose(b.read(rid)[0], a.read(rid)[0], rtol=0, atol=1.0)
    assert '"fast"' in (tmp_path / "fast" / "cohort.json").read_text()
    assert '"fast"' not in (tmp_path / "default" / "cohort.json").read_text()
    assert cli_main([*base, "--out", str(tmp_path / "bad"), "--compile"]) == 2
    assert not (tmp_path / "bad").exists()
