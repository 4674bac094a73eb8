"""3D-SqueezeNet v1.1: parameter count against an independent hand-written layer table, shapes, pooling, init."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctsgan_lib.models.squeezenet3d import Fire, SqueezeNet3D, count_parameters

# The reference (okankop/Efficient-3DCNNs models/squeezenet.py, version=1.1, 3 input channels), written out by hand as
# (in, out, kernel) convs, all with bias, each followed by a BatchNorm3d(out) (weight + bias) except the final conv.
STEM = [(3, 64, 3)]
FIRES = [  # (inplanes, squeeze, expand1x1, expand3x3)
    (64, 16, 64, 64), (128, 16, 64, 64),
    (128, 32, 128, 128), (256, 32, 128, 128),
    (256, 48, 192, 192), (384, 48, 192, 192),
    (384, 64, 256, 256), (512, 64, 256, 256),
]


def reference_table(num_classes: int = 2) -> list[tuple[str, int, int, int, bool]]:
    """(kind, in, out, kernel, followed_by_bn) for every conv of the reference v1.1."""
    rows = [("conv", i, o, k, True) for i, o, k in STEM]
    for inp, s, e1, e3 in FIRES:
        rows += [("squeeze", inp, s, 1, True), ("expand1x1", s, e1, 1, True), ("expand3x3", s, e3, 3, True)]
    rows.append(("final", 512, num_classes, 1, False))
    return rows


def reference_param_count(num_classes: int = 2) -> int:
    total = 0
    for _, cin, cout, k, bn in reference_table(num_classes):
        total += cin * cout * k ** 3 + cout          # Conv3d weight + bias
        total += 2 * cout if bn else 0               # BatchNorm3d weight + bias
    return total


def test_reference_count_by_hand_is_what_we_think():
    # A second, fully expanded computation of the stem and first fire module, so the table itself is checked.
    stem = 3 * 64 * 27 + 64 + 2 * 64
    fire1 = (64 * 16 + 16 + 32) + (16 * 64 + 64 + 128) + (16 * 64 * 27 + 64 + 128)
    head = 512 * 2 + 2
    table = reference_table(2)
    first = sum(ci * co * k ** 3 + co + (2 * co if bn else 0) for _, ci, co, k, bn in table[:4])
    assert first == stem + fire1
    assert table[-1][1:4] == (512, 2, 1) and 512 * 2 + 2 == head


def test_param_count_equals_reference():
    net = SqueezeNet3D(in_channels=3, num_classes=2)
    expected = reference_param_count(2)
    assert count_parameters(net) == expected
    assert expected == 1_838_786  # the number the table gives, pinned so a table edit is noticed


def test_param_count_other_channels_and_classes():
    # one input channel removes 2*64*27 stem weights; 600 classes (the reference default) changes only the head
    assert count_parameters(SqueezeNet3D(1, 2)) == reference_param_count(2) - 2 * 64 * 27
    assert count_parameters(SqueezeNet3D(3, 600)) == reference_param_count(600)


def test_layer_list_matches_reference_order():
    net = SqueezeNet3D(3, 2)
    fires = [m for m in net.features if isinstance(m, Fire)]
    assert [(f.squeeze.in_channels, f.squeeze.out_channels, f.expand1x1.out_channels, f.expand3x3.out_channels)
            for f in fires] == FIRES
    assert [f.use_bypass for f in fires] == [False, True] * 4
    pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool3d)]
    assert pools == [3, 6, 9, 12]
    stem = net.features[0]
    assert stem.stride == (1, 2, 2) and stem.kernel_size == (3, 3, 3) and stem.padding == (1, 1, 1)
    assert isinstance(net.classifier[0], nn.Dropout) and net.classifier[0].p == 0.5
    assert isinstance(net.classifier[2], nn.ReLU)


@pytest.mark.parametrize("size", [16, 32, 40])
def test_any_size_works(size):
    net = SqueezeNet3D(1, 2).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, size, size, size))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_adaptive_head_equals_reference_fixed_pool():
    # The reference pools with AvgPool3d((ceil(D/16), ceil(S/32), ceil(S/32))); for D=16, S=112 that is (1, 4, 4).
    torch.manual_seed(0)
    net = SqueezeNet3D(3, 5).eval()
    x = torch.rand(1, 3, 16, 112, 112)
    with torch.no_grad():
        feats = net.features(x)
        assert feats.shape[2:] == (math.ceil(16 / 16), math.ceil(112 / 32), math.ceil(112 / 32))
        ref = nn.AvgPool3d((1, 4, 4), stride=1)(torch.relu(net.classifier[1](feats))).flatten(1)
        assert torch.allclose(net(x), ref, atol=1e-6)


def test_init_follows_reference():
    torch.manual_seed(0)
    net = SqueezeNet3D(1, 2)
    net_ref = SqueezeNet3D(1, 2, head_init="kaiming")
    for m in list(net.modules()) + list(net_ref.modules()):
        if isinstance(m, nn.BatchNorm3d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = net.features[-1].expand3x3          # 64 -> 256, k3: fan_out = 256 * 27
    std = conv.weight.std().item()
    assert abs(std - math.sqrt(2.0 / (256 * 27))) / math.sqrt(2.0 / (256 * 27)) < 0.05


def test_head_init_options():
    torch.manual_seed(0)
    small = SqueezeNet3D(1, 2).classifier[1]
    assert small.weight.std().item() < 0.02 and torch.all(small.bias == 0)
    ref = SqueezeNet3D(1, 2, head_init="kaiming").classifier[1]   # reference: Kaiming fan_out = 2 -> std 1
    assert 0.8 < ref.weight.std().item() < 1.2
    with pytest.raises(ValueError, match="head_init"):
        SqueezeNet3D(1, 2, head_init="zeros")


def test_bypass_needs_matching_channels():
    with pytest.raises(ValueError, match="bypass"):
        Fire(64, 16, 64, 64, use_bypass=True)


def test_isotropic_stem_stride_keeps_parameters_and_halves_depth():
    ref, iso = SqueezeNet3D(1, 2), SqueezeNet3D(1, 2, stem_stride=(2, 2, 2))
    assert count_parameters(iso) == count_parameters(ref)
    assert iso.features[0].stride == (2, 2, 2)
    x = torch.zeros(1, 1, 32, 32, 32)
    assert iso.features[0](x).shape[2:] == (16, 16, 16) and ref.features[0](x).shape[2:] == (32, 16, 16)
    assert iso.eval()(x).shape == (1, 2)
    with pytest.raises(ValueError, match="stem_stride"):
        SqueezeNet3D(1, 2, stem_stride=(0, 2, 2))
