"""The CIFAR model zoo of the distillation literature, as bodies (stem and stages) for ``models.StagedNet``.

These are the networks RepDistiller published with CRD (Tian et al., "Contrastive Representation Distillation",
ICLR 2020) and mdistiller reuses for its CIFAR-100 tables: CIFAR ResNets (He et al. 2016; ``x4`` = 4x wider),
wide ResNets (Zagoruyko & Komodakis 2016), VGG with BatchNorm and one linear layer, MobileNetV2 at width 0.5
("mobile_half"), and the CIFAR variants of ShuffleNet V1 and V2. Each entry of ``ZOO`` maps ``in_channels`` to a
``Body``; ``kd_utils.models`` registers ``StagedNet(*body, num_classes)``, whose head (global average pooling,
then one linear layer) is the reference head, so parameter counts equal the reference's for 3 input channels.

Stage maps against the reference's feature list ``feats`` (``forward(x, is_feat=True)`` there):

- the stem's output (``feats[0]``) is not a stage, as for ``resnet18`` here, so stage ``i`` is ``feats[i + 1]``;
  VGG's first block (one or two full-resolution convs) is its stem;
- the last map is always the one the head pools. WRN is pre-activation, so its final BN-ReLU ends the last
  stage (the reference's ``feats[3]`` is the map before it). MobileNetV2 and ShuffleNetV2 apply a 1x1 conv
  (to 1280 / 1024 channels) after their last block; that map is one more stage, as ``TimmNet`` does for
  EfficientNet.

Changes that keep every parameter: global average pooling where the reference pools a fixed 8x8 / 4x4 window,
so 28x28 (Fashion-MNIST) and smaller inputs work (identical at 32x32; VGG needs 8x8 and says so below that);
VGG's extra max-pool for 64x64 inputs is left out; the head's linear layer keeps PyTorch's default init (the
reference draws VGG's and MobileNetV2's from N(0, 0.01)). Convolutions are initialised as in the reference.

``fuse_batchnorm`` folds every BatchNorm that follows a conv; WRN's pre-activation BatchNorms follow residual
sums, so they stay (the outputs are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn


class Body(NamedTuple):
    """What ``StagedNet`` needs besides ``num_classes``."""

    stem: nn.Module
    stages: list[nn.Module]
    feature_channels: list[int]  # output channels of each stage


def conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True, bias: bool = False
) -> nn.Sequential:
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(c_out),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def init_convs(*modules: nn.Module) -> None:
    """The reference's conv init: N(0, 2 / (k * k * C_out)), i.e. He init over fan-out; biases zero."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def repeat(block: Callable[[int, int, int], nn.Module], c_in: int, c_out: int, n: int, stride: int) -> list[nn.Module]:
    """``n`` blocks ``block(c_in, c_out, stride)``; only the first changes the channels and the resolution."""
    return [block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(n)]


# --- ResNet (post-activation basic blocks) and wide ResNet (pre-activation) ---


class BasicBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, plus the input (1x1 conv-BN where the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, 3, stride), conv_bn(c_out, c_out, 3, relu=False))
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_bn(c_in, c_out, 1, stride, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def cifar_resnet(in_channels: int, depth: int, widths: tuple[int, int, int, int]) -> Body:
    """ResNet-``depth`` for CIFAR: a 3x3 stem of ``widths[0]`` channels, then 3 stages of (depth - 2) / 6 blocks."""
    blocks = (depth - 2) // 6
    stem, stages, c_in = conv_bn(in_channels, widths[0], 3), [], widths[0]
    for i, width in enumerate(widths[1:]):
        stride = 1 if i == 0 else 2
        stages.append(nn.Sequential(*repeat(BasicBlock, c_in, width, blocks, stride)))
        c_in = width
    init_convs(stem, *stages)
    return Body(stem, stages, list(widths[1:]))


class PreActBlock(nn.Module):
    """Wide-ResNet block: BN-ReLU, conv, BN-ReLU, conv; the shortcut is the input, or a 1x1 conv of its activation."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True))
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        )
        self.projection = None
        if stride != 1 or c_in != c_out:
            self.projection = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.pre(x)
        return self.body(act) + (x if self.projection is None else self.projection(act))


def wide_resnet(in_channels: int, depth: int, widen: int) -> Body:
    """WRN-``depth``-``widen``: a 16-channel 3x3 conv, 3 stages of (depth - 4) / 6 blocks, then BN-ReLU."""
    blocks, widths = (depth - 4) // 6, [16 * widen, 32 * widen, 64 * widen]
    stem, stages, c_in = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), [], 16
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        stages.append(nn.Sequential(*repeat(PreActBlock, c_in, width, blocks, stride)))
        c_in = width
    stages[-1].extend([nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)])  # the head's input is the activated map
    init_convs(stem, *stages)
    return Body(stem, stages, widths)


# --- VGG ---


class MinInputSize(nn.Module):
    """Fails with the model's name where its pooling would shrink an input to nothing."""

    def __init__(self, model: str, pixels: int):
        super().__init__()
        self.model, self.pixels = model, pixels

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < self.pixels:
            raise ValueError(
                f"{self.model} takes inputs of at least {self.pixels}x{self.pixels} pixels, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        return x


VGG_WIDTHS = {  # convs per block; a 2x2 max-pool precedes blocks 1-3, block 4 runs at block 3's resolution
    "vgg8": [[64], [128], [256], [512], [512]],  # the reference's configuration "S"
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],  # configuration "B"
}


def vgg(in_channels: int, name: str) -> Body:
    """VGG with BatchNorm after every 3x3 conv (the convs keep their biases, as in the reference)."""
    blocks, c_in = [], in_channels
    for widths in VGG_WIDTHS[name]:
        blocks.append([conv_bn(c_in if i == 0 else w, w, 3, bias=True) for i, w in enumerate(widths)])
        c_in = widths[-1]
    # three 2x2 pools: 8x8 becomes 1x1 at block 3, 7x7 would become 0x0
    stem = nn.Sequential(MinInputSize(name, 8), *blocks[0])
    stages = [nn.Sequential(nn.MaxPool2d(2), *b) for b in blocks[1:4]] + [nn.Sequential(*blocks[4])]
    init_convs(stem, *stages)
    return Body(stem, stages, [w[-1] for w in VGG_WIDTHS[name][1:]])


# --- MobileNetV2 ---


class InvertedResidual(nn.Module):
    """1x1 expansion (kept at ratio 1 too, as in the reference), 3x3 depthwise, linear 1x1; plus the input if
    the shape is unchanged."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 6):
        super().__init__()
        hidden = c_in * expand
        self.body = nn.Sequential(
            conv_bn(c_in, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, c_out, 1, relu=False),
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.residual else self.body(x)


MOBILENETV2_BLOCKS = [  # (expansion, channels at width 1, blocks, first stride) per group of blocks
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]  # fmt: skip
MOBILENETV2_STAGES = [[0, 1], [2], [3, 4], [5, 6]]  # block groups per stage


def mobilenetv2(in_channels: int, width: float = 0.5, head_channels: int = 1280) -> Body:
    """MobileNetV2 for CIFAR (from "Knowledge Distillation via Route Constrained Optimization"): stride-2 stem."""
    c_in = int(32 * width)
    stem, groups, group_channels = conv_bn(in_channels, c_in, 3, 2), [], []
    for expand, channels, n, stride in MOBILENETV2_BLOCKS:
        c_out = int(channels * width)
        groups.append(repeat(partial(InvertedResidual, expand=expand), c_in, c_out, n, stride))
        group_channels.append(c_out)
        c_in = c_out
    stages = [nn.Sequential(*[b for g in stage for b in groups[g]]) for stage in MOBILENETV2_STAGES]
    stages.append(conv_bn(c_in, head_channels, 1))  # the head's 1x1 conv: its map is the one pooled
    init_convs(stem, *stages)
    channels = [group_channels[stage[-1]] for stage in MOBILENETV2_STAGES]
    return Body(stem, stages, [*channels, head_channels])


# --- ShuffleNet V1 and V2 (CIFAR variants: a 1x1 stem, no stem stride or max-pool) ---


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1; added to the input, or at stride 2 concatenated with
    its 3x3 average pool (so the branch makes ``c_out - c_in`` channels); then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, group_first: bool = True):
        super().__init__()
        branch_out = c_out - c_in if stride == 2 else c_out
        mid, first = branch_out // 4, groups if group_first else 1
        self.branch = nn.Sequential(
            conv_bn(c_in, mid, 1, groups=first),
            ChannelShuffle(first),
            conv_bn(mid, mid, 3, stride, groups=mid),
            conv_bn(mid, branch_out, 1, groups=groups, relu=False),
        )
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        return torch.relu(out + x if self.pool is None else torch.cat([out, self.pool(x)], 1))


def shufflenet_v1(
    in_channels: int, widths: tuple[int, ...] = (240, 480, 960), blocks: tuple[int, ...] = (4, 8, 4), groups: int = 3
) -> Body:
    """ShuffleNet V1 (g = 3) for CIFAR; each stage starts at stride 2."""
    stem, stages, c_in = conv_bn(in_channels, 24, 1), [], 24
    for width, n in zip(widths, blocks):
        # the reference leaves the first 1x1 conv after the 24-channel stem ungrouped
        units = [ShuffleV1Unit(c_in, width, 2, groups, group_first=bool(stages))]
        stages.append(nn.Sequential(*units, *[ShuffleV1Unit(width, width, 1, groups) for _ in range(n - 1)]))
        c_in = width
    return Body(stem, stages, list(widths))


class ShuffleV2Unit(nn.Module):
    """Half the channels pass; the other half go through 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU; then shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, relu=False), conv_bn(half, half, 1)
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        kept, rest = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([kept, self.branch(rest)], 1))


class ShuffleV2Down(nn.Module):
    """Stride 2: both branches see the whole input, each makes half the output channels; then shuffle."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        half = c_out // 2
        self.left = nn.Sequential(conv_bn(c_in, c_in, 3, 2, groups=c_in, relu=False), conv_bn(c_in, half, 1))
        self.right = nn.Sequential(
            conv_bn(c_in, half, 1), conv_bn(half, half, 3, 2, groups=half, relu=False), conv_bn(half, half, 1)
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


def shufflenet_v2(
    in_channels: int,
    widths: tuple[int, ...] = (116, 232, 464),
    blocks: tuple[int, ...] = (3, 7, 3),
    head_channels: int = 1024,
) -> Body:
    """ShuffleNet V2 1x for CIFAR: per stage one stride-2 unit and ``blocks`` plain ones, then a 1x1 conv."""
    stem, stages, c_in = conv_bn(in_channels, 24, 1), [], 24
    for width, n in zip(widths, blocks):
        stages.append(nn.Sequential(ShuffleV2Down(c_in, width), *[ShuffleV2Unit(width) for _ in range(n)]))
        c_in = width
    stages.append(conv_bn(c_in, head_channels, 1))  # the head's 1x1 conv: its map is the one pooled
    return Body(stem, stages, [*widths, head_channels])


ZOO: dict[str, Callable[[int], Body]] = {  # name -> body(in_channels); parameters at 100 classes in comments
    "resnet8": partial(cifar_resnet, depth=8, widths=(16, 16, 32, 64)),  # 0.08M
    "resnet20": partial(cifar_resnet, depth=20, widths=(16, 16, 32, 64)),  # 0.28M
    "resnet32": partial(cifar_resnet, depth=32, widths=(16, 16, 32, 64)),  # 0.47M
    "resnet56": partial(cifar_resnet, depth=56, widths=(16, 16, 32, 64)),  # 0.86M
    "resnet110": partial(cifar_resnet, depth=110, widths=(16, 16, 32, 64)),  # 1.74M
    "resnet8x4": partial(cifar_resnet, depth=8, widths=(32, 64, 128, 256)),  # 1.23M
    "resnet32x4": partial(cifar_resnet, depth=32, widths=(32, 64, 128, 256)),  # 7.43M
    "wrn_16_1": partial(wide_resnet, depth=16, widen=1),  # 0.18M
    "wrn_16_2": partial(wide_resnet, depth=16, widen=2),  # 0.70M
    "wrn_40_1": partial(wide_resnet, depth=40, widen=1),  # 0.57M
    "wrn_40_2": partial(wide_resnet, depth=40, widen=2),  # 2.26M
    "vgg8": partial(vgg, name="vgg8"),  # 3.97M
    "vgg13": partial(vgg, name="vgg13"),  # 9.46M
    "mobilenetv2": mobilenetv2,  # 0.81M, width 0.5 ("mobile_half")
    "shufflev1": shufflenet_v1,  # 0.95M
    "shufflev2": shufflenet_v2,  # 1.36M
}
