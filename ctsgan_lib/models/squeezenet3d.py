"""3D-SqueezeNet v1.1, the nodule-detection classifier of paper §4.2.

Kopuklu et al., "Resource efficient 3D convolutional neural networks" (2019); reference code okankop/Efficient-3DCNNs,
``models/squeezenet.py`` (version 1.1). Written from the layer description in ``REFERENCES.md``; the layer list, the
bypass placement, the ReLU before average pooling and the initialisation follow the reference. Three deliberate
differences, none of which changes the parameter count:

- ``in_channels`` is configurable (CT volumes are one channel; the reference hard-codes 3 video channels);
- the final convolution's initialisation defaults to N(0, 0.01) (``head_init="small"``, see the class docstring);
  ``head_init="kaiming"`` gives the reference's;
- the head's average pooling is adaptive (``AdaptiveAvgPool3d(1)``) instead of a fixed
  ``AvgPool3d((ceil(duration/16), ceil(size/32), ceil(size/32)))``, so any input size S works. For the sizes the
  reference supports both give the same output.

Inputs are ``(B, C, z, y, x)``. The stem's stride is ``(1, 2, 2)`` as in the reference (there the first axis is time):
for CT the z axis is therefore downsampled one step later than y and x. ``stem_stride=(2, 2, 2)`` treats the three
axes alike, as suits isotropic CT; it halves the compute (every later layer sees half the depth) and leaves the
parameter count unchanged. The demo profile uses it to fit its classifier grid on a 2-core CPU.
"""
from __future__ import annotations

import torch
from torch import nn


class Fire(nn.Module):
    """Fire module: squeeze 1×1×1, then parallel expand 1×1×1 and 3×3×3, concatenated.

    Parameters
    ----------
    inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes : int
        Channel counts (reference names).
    use_bypass : bool
        Residual bypass added before the final ReLU (input and output channel counts must match).
    """

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int,
                 use_bypass: bool = False):
        super().__init__()
        if use_bypass and inplanes != expand1x1_planes + expand3x3_planes:
            raise ValueError("bypass needs inplanes == expand1x1_planes + expand3x3_planes")
        self.use_bypass = use_bypass
        self.relu = nn.ReLU(inplace=True)
        self.squeeze = nn.Conv3d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_bn = nn.BatchNorm3d(squeeze_planes)
        self.expand1x1 = nn.Conv3d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_bn = nn.BatchNorm3d(expand1x1_planes)
        self.expand3x3 = nn.Conv3d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_bn = nn.BatchNorm3d(expand3x3_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.squeeze_bn(self.squeeze(x)))
        out = torch.cat([self.expand1x1_bn(self.expand1x1(s)), self.expand3x3_bn(self.expand3x3(s))], 1)
        if self.use_bypass:
            out = out + x  # not in-place: x may be needed by autograd
        return self.relu(out)


class SqueezeNet3D(nn.Module):
    """3D-SqueezeNet v1.1.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for a CT volume; 3 reproduces the reference's parameter count).
    num_classes : int
        Output logits (2 for nodule present / absent).
    dropout : float
        Dropout before the final 1×1×1 convolution (reference: 0.5).
    head_init : {"small", "kaiming"}
        Initialisation of the final convolution. ``"kaiming"`` is what the reference code does (Kaiming fan_out for
        every conv). With 2 classes fan_out is 2, so the weights get std 1 and the initial logits are in the tens;
        behind the head's ReLU this gives cross-entropy losses of 5–10 and dead (all-zero) logits in our smoke runs.
        ``"small"`` (default) is N(0, 0.01) with zero bias, what torchvision's SqueezeNet does and what the
        reference's own comment ("Final convolution is initialized differently from the rest") announces.
        Neither changes the architecture or the parameter count.
    stem_stride : tuple of 3 ints
        Stride of the first convolution over (z, y, x). Reference: ``(1, 2, 2)``.

    Examples
    --------
    >>> net = SqueezeNet3D(in_channels=1, num_classes=2)
    >>> net(torch.zeros(2, 1, 32, 32, 32)).shape
    torch.Size([2, 2])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, dropout: float = 0.5, head_init: str = "small",
                 stem_stride: tuple[int, int, int] = (1, 2, 2)):
        super().__init__()
        stem_stride = tuple(int(v) for v in stem_stride)
        if len(stem_stride) != 3 or min(stem_stride) < 1:
            raise ValueError(f"stem_stride must be three positive ints (z, y, x), got {stem_stride!r}")
        if head_init not in ("small", "kaiming"):
            raise ValueError(f"head_init must be 'small' or 'kaiming', got {head_init!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        pool = lambda: nn.MaxPool3d(kernel_size=3, stride=2, padding=1)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv3d(in_channels, 64, kernel_size=3, stride=stem_stride, padding=1),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
            pool(),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64, use_bypass=True),
            pool(),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128, use_bypass=True),
            pool(),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192, use_bypass=True),
            pool(),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256, use_bypass=True),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Conv3d(512, num_classes, kernel_size=1),
            nn.ReLU(inplace=True),        # as in the reference: logits are non-negative
            nn.AdaptiveAvgPool3d(1),      # reference: AvgPool3d over the remaining (fixed) grid
        )
        # Reference init: Kaiming normal (fan_out) for every conv, BN weight 1 / bias 0 (conv biases keep defaults).
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if head_init == "small":
            final = self.classifier[1]
            nn.init.normal_(final.weight, mean=0.0, std=0.01)
            nn.init.zeros_(final.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, z, y, x)`` → logits ``(B, num_classes)``."""
        return self.classifier(self.features(x)).flatten(1)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; BatchNorm running statistics are buffers and not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
