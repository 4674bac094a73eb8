"""The vanilla 3D GAN baseline: shapes, training on the shared machinery, trilinear upsampling to S³."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from ctsgan_lib.config import load_profile
from ctsgan_lib.synthesis import generate_gan3d_volumes, load_generator
from ctsgan_lib.models.gan3d import Discriminator3D, Generator3D, upsample_volume
from ctsgan_lib.utils.checkpoint import load_checkpoint
from ctsgan_lib.train.gan3d_loop import train_gan3d



@pytest.mark.parametrize("size,n_up", [(16, 2), (32, 3), (128, 5)])
def test_gan3d_shapes(size, n_up):
    g, d = Generator3D(size, 8, ngf=2), Discriminator3D(size, ndf=2)
    assert sum(isinstance(m, torch.nn.ConvTranspose3d) for m in g.modules()) == n_up + 1
    with torch.no_grad():
        x = g(torch.randn(1, 8))
        assert x.shape == (1, 1, size, size, size) and x.abs().max() <= 1
        assert d(x).shape == (1,)


def test_upsample_is_trilinear_and_keeps_range():
    x = torch.linspace(-1, 1, 8).view(1, 1, 8, 1, 1).expand(1, 1, 8, 8, 8).contiguous()
    y = upsample_volume(x, 16)
    assert y.shape == (1, 1, 16, 16, 16)
    assert y.min() >= -1 and y.max() <= 1
    prof = y[0, 0, :, 3, 3]
    assert torch.all(prof[1:] >= prof[:-1])            # a linear ramp stays monotone


def test_gan3d_trains_resumes_and_generates_at_profile_size(tmp_root):
    cfg = load_profile("smoke", **{"gan3d.iterations": 4, "gan3d.ckpt_every": 2, "gan3d.ngf": 8, "gan3d.ndf": 8})
    rng = np.random.default_rng(0)
    vols = rng.normal(-600, 200, (4, 32, 32, 32)).astype(np.float32)
    res = train_gan3d(cfg, volumes_hu=vols, progress=False, spacing_mm=(2.0, 2.0, 2.0))
    out = tmp_root / "runs" / "smoke" / "gan3d"
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert len({r["loss_d"] for r in rows}) == 4 and all(np.isfinite(float(r["loss_g"])) for r in rows)
    ck = load_checkpoint(res["checkpoint"], kind="gan3d")
    assert ck["extra"]["native_size"] == 16 and set(ck["models"]) == {"generator", "d3d"}
    # extending the run resumes from step 4 (log rows 1..4 kept, 5..6 appended)
    cfg6 = load_profile("smoke", **{"gan3d.iterations": 6, "gan3d.ckpt_every": 2, "gan3d.ngf": 8, "gan3d.ndf": 8})
    train_gan3d(cfg6, volumes_hu=vols, progress=False, spacing_mm=(2.0, 2.0, 2.0))
    with open(out / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    gen = load_generator(out / "ckpt_000006.pt")
    vols_out = list(generate_gan3d_volumes(gen, 3, seed=4, batch=2))
    hu, spacing = vols_out[0]
    assert hu.shape == (32, 32, 32) and hu.dtype == np.float32 and spacing == (2.0, 2.0, 2.0)
    assert -1000 <= hu.min() and hu.max() <= 400
    again = list(generate_gan3d_volumes(gen, 1, seed=4, batch=2, start=2))[0][0]
    np.testing.assert_array_equal(again, vols_out[2][0])
