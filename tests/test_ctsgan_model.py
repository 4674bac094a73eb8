"""CT-SGAN networks, volume assembly, noise layout and the generation API."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ctsgan_lib.models.ctsgan import (CTSGANGenerator, PositionEncoding, SlabDiscriminator, SliceDiscriminator,
                                      assemble_volume, build_ctsgan, synthesize)
from ctsgan_lib.models.dcgan import init_weights, start_size
from ctsgan_lib.synthesis import generate_volume_at, generate_volumes, volume_noise, volume_seed

TINY = {"patient_dim": 8, "slice_noise_dim": 4, "slice_code_dim": 6, "ngf": 4, "ndf": 4, "slab_len": 4}



def _gen(size: int, seed: int = 0) -> CTSGANGenerator:
    torch.manual_seed(seed)
    nets = build_ctsgan(size, TINY)
    for m in nets.values():
        init_weights(m)
    return nets["generator"].eval()


@pytest.mark.parametrize("size,start,n_stages", [(32, 4, 3), (64, 4, 4), (224, 7, 5)])
def test_shapes_and_depth_scaling(size, start, n_stages):
    assert start_size(size) == start
    nets = build_ctsgan(size, TINY)
    gen, dslice, dslab = nets["generator"], nets["dslice"], nets["dslab"]
    n_up = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in gen.gslice.modules())
    assert n_up == n_stages + 1           # the 1×1 → start projection plus the upsampling stages
    pn, sn = gen.sample_noise(1)
    assert pn.shape == (1, 8) and sn.shape == (1, size - 2, 4)
    pos = torch.tensor([[0, size - 3]])
    with torch.no_grad():
        out = gen(pn, sn, pos)
        assert out.shape == (1, 2, 3, size, size)
        assert out.abs().max() <= 1.0
        assert dslice(out[0], pos[0]).shape == (2,)
        assert dslab(torch.zeros(1, 1, 4, size, size)).shape == (1,)


def test_assemble_volume_uses_centre_and_outer_channels():
    l, s = 5, 3
    sl = torch.zeros(1, l, 3, s, s)
    for j in range(l):
        for c in range(3):
            sl[0, j, c] = 100 * j + c        # channel c of 3D slice j stands for volume slice j + c
    vol = assemble_volume(sl)
    assert vol.shape == (1, l + 2, s, s)
    assert vol[0, 0, 0, 0] == 0                        # first 3D slice, channel 0
    assert [vol[0, k, 0, 0].item() for k in range(1, l + 1)] == [100 * j + 1 for j in range(l)]
    assert vol[0, l + 1, 0, 0] == 100 * (l - 1) + 2    # last 3D slice, channel 2
    # a 224-slice volume comes from 222 3D slices
    assert assemble_volume(torch.zeros(222, 3, 2, 2)).shape == (224, 2, 2)


def test_patient_noise_constant_and_slice_codes_vary_along_z():
    gen = _gen(32)
    pn, sn = volume_noise(gen, seed=3, index=0, n_positions=30)
    pn2, sn2 = volume_noise(gen, seed=3, index=0, n_positions=30)
    assert torch.equal(pn, pn2) and torch.equal(sn, sn2)                 # fixed seed → same noise
    assert not torch.equal(volume_noise(gen, 3, 1, 30)[0], pn)          # another volume → other patient noise
    with torch.no_grad():
        codes = gen.codes(pn[None], sn[None])[0]                         # (L, patient + slice code)
    patient_part, slice_part = codes[:, :8], codes[:, 8:]
    assert torch.equal(patient_part, pn.expand(30, -1))                  # constant over z
    assert (slice_part[1:] - slice_part[:-1]).abs().sum(1).min() > 0     # varies along z
    assert sn.std(0).min() > 0


def test_streaming_matches_whole_volume_and_depth_can_exceed_size():
    gen = _gen(32)
    pn, sn = gen.sample_noise(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = assemble_volume(gen(pn, sn))
    for chunk in (4, 7, 30):
        torch.testing.assert_close(synthesize(gen, pn, sn, chunk=chunk), whole, rtol=1e-5, atol=1e-5)
    hu, spacing = generate_volume_at(gen, seed=0, index=0, depth=50, chunk=8)
    assert hu.shape == (50, 32, 32) and hu.dtype == np.float32 and spacing == (1.0, 1.0, 1.0)


@pytest.mark.portable
def test_same_seed_same_volume_alone_batched_or_sharded():
    gen = _gen(32)
    vols = [v for v, _ in generate_volumes(gen, 5, seed=11, batch=2, chunk=8)]
    assert len(vols) == 5 and vols[0].shape == (32, 32, 32)
    assert -1000.0 <= vols[0].min() and vols[0].max() <= 400.0           # HU within the model window
    shard = [v for v, _ in generate_volumes(gen, 3, seed=11, batch=2, chunk=8, start=2)]
    for a, b in zip(vols[2:], shard):
        np.testing.assert_array_equal(a, b)                              # same batch/chunk: bit-identical
    alone, _ = generate_volume_at(gen, 11, 3, chunk=8)
    np.testing.assert_allclose(alone, vols[3], atol=1e-2)                # batch 1 vs 2: equal up to float rounding
    again = next(generate_volumes(gen, 1, seed=11, chunk=8))[0]
    np.testing.assert_array_equal(again, next(generate_volumes(gen, 1, seed=11, chunk=8))[0])
    assert not np.array_equal(vols[0], vols[1])
    assert volume_seed(11, 3) == volume_seed(11, 3) != volume_seed(11, 4) != volume_seed(12, 3)


def test_discriminators_are_position_conditioned_and_per_sample():
    torch.manual_seed(0)
    d = SliceDiscriminator(32, 30, ndf=4)
    init_weights(d)
    with torch.no_grad():
        d.position.embed.weight.normal_()
        x = torch.randn(2, 3, 32, 32)
        a = d(x, torch.tensor([0, 0]))
        b = d(x, torch.tensor([5, 29]))
        assert not torch.allclose(a, b)                     # position changes the verdict
        # no batch statistics: a sample's output does not depend on its batch-mates
        torch.testing.assert_close(d(x[:1], torch.tensor([0])), a[:1])
    slab = SlabDiscriminator(32, 8, ndf=4)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in [*d.modules(), *slab.modules()])


def test_position_input_tells_rv_the_slice_position_and_streams_identically():
    gen = CTSGANGenerator(32, 8, 4, 8, 8, position_input=True).eval()
    assert gen.rv.lstm.input_size == 5
    pn = torch.zeros(1, 8)
    sn = torch.zeros(1, gen.n_positions, 4)            # no slice noise at all: only the position can vary the codes
    with torch.no_grad():
        codes = gen.codes(pn, sn)[0, :, 8:]
        whole = assemble_volume(gen(pn, sn))
    assert (codes[1:] - codes[:-1]).abs().sum(1).min() > 0
    torch.testing.assert_close(synthesize(gen, pn, sn, chunk=7), whole, rtol=1e-5, atol=1e-5)
    # checkpoints written before the option existed (config dict without the key) build the paper's Rv
    nets = build_ctsgan(32, {"patient_dim": 8, "slice_noise_dim": 4, "slice_code_dim": 8, "ngf": 8, "ndf": 8,
                             "slab_len": 8})
    assert nets["generator"].rv.lstm.input_size == 4 and not nets["generator"].position_input


def test_fourier_position_encoding_is_smooth_and_dslab_can_be_told_its_start():
    torch.manual_seed(0)
    e = PositionEncoding("fourier", 62, 16)(torch.arange(62))
    step = (e[1:] - e[:-1]).norm(dim=1).mean()
    far = (e[:31] - e[31:]).norm(dim=1).mean()
    assert step < far / 4                                  # neighbours share, distant positions differ
    with pytest.raises(ValueError, match="position encoding"):
        PositionEncoding("sinus", 8, 4)
    x = torch.randn(2, 3, 32, 32)
    d = SliceDiscriminator(32, 30, ndf=4, position_encoding="fourier")
    with torch.no_grad():
        assert not torch.allclose(d(x, torch.tensor([0, 0])), d(x, torch.tensor([0, 29])))
    slab, s = SlabDiscriminator(32, 8, ndf=4, n_positions=30), torch.randn(2, 1, 8, 32, 32)
    with pytest.raises(ValueError, match="slab start"):
        slab(s)
    with torch.no_grad():
        a, b = slab(s, torch.tensor([0, 0])), slab(s, torch.tensor([0, 22]))
    assert a[0] == b[0] and a[1] != b[1]
    assert SlabDiscriminator(32, 8, ndf=4).position is None    # the paper's Dslab: no position
    nets = build_ctsgan(32, {**TINY, "dslice_position": "fourier", "dslab_position": True})
    assert nets["dslice"].position.kind == "fourier" and nets["dslab"].position is not None
    assert build_ctsgan(32, TINY)["dslice"].position.kind == "table"


def test_dslice_checkpoints_from_before_the_position_module_still_load():
    torch.manual_seed(0)
    d = SliceDiscriminator(32, 30, ndf=4)
    old = {("embed.weight" if k == "position.embed.weight" else k): v for k, v in d.state_dict().items()}
    d2 = SliceDiscriminator(32, 30, ndf=4)
    d2.load_state_dict(old)
    assert torch.equal(d2.position.embed.weight, d.position.embed.weight)
