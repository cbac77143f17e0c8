"""Dilated ResNet backbones for scene parsing.

Deep Residual Learning for Image Recognition (He et al., CVPR 2016, https://arxiv.org/abs/1512.03385),
with the "deep stem" of the PSPNet release (three 3x3 convolutions, 64-64-128, in place of one 7x7)
and the dilation scheme of Pyramid Scene Parsing Network (Zhao et al., CVPR 2017,
https://arxiv.org/abs/1612.01105): at output stride 8 layer3 and layer4 keep their resolution and
use dilation 2 and 4 instead; at output stride 16 only layer4 does (dilation 2).

Parameter names match the original semseg release exactly: the stem is one ``nn.Sequential`` named
``layer0`` (conv 0, bn 1, relu 2, conv 3, bn 4, relu 5, conv 6, bn 7, relu 8, maxpool 9 for the
deep stem; conv 0, bn 1, relu 2, maxpool 3 for the 7x7 stem), then ``layer1`` .. ``layer4`` with
torchvision's block names (``conv1``, ``bn1``, ..., ``downsample.0``, ``downsample.1``).
The stride of a Bottleneck sits on its 3x3 convolution, as in torchvision and the original.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "RESNET_DEPTHS",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution whose padding keeps the size (before striding) at any dilation."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        bias=False,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Unlike torchvision, dilation > 1 is allowed: both convolutions use it, as the dilated layers need.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided/dilated), 1x1 expand by 4, with a residual connection (ResNet-50+)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# depth -> (block type, blocks per stage)
RESNET_DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}

# output stride -> (stride, dilation) of layer3 and layer4
_STAGE_SCHEDULE: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {
    8: ((1, 2), (1, 4)),
    16: ((2, 1), (1, 2)),
    32: ((2, 1), (2, 1)),
}


def _deep_stem() -> nn.Sequential:
    # Indices 0/1, 3/4, 6/7 are the conv/bn pairs the original checkpoints name layer0.N.
    return nn.Sequential(
        _conv3x3(3, 64, stride=2),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        _conv3x3(64, 64),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        _conv3x3(64, 128),
        nn.BatchNorm2d(128),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def _torchvision_stem() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


class ResNet(nn.Module):
    """A dilated ResNet feature extractor (no classifier).

    Args:
        depth: 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck).
        deep_stem: True for the original three-3x3 stem (128 channels into layer1); False for
            torchvision's 7x7 stem (64 channels), so torchvision ImageNet weights fit.
        output_stride: 8 (layer3 dilation 2, layer4 dilation 4, no striding after layer2),
            16 (layer4 dilation 2) or 32 (plain ResNet).

    ``forward(x)`` takes a float tensor (N, 3, H, W) and returns ``(layer3_features, layer4_features)``;
    at output stride 8 both are (N, C, (H-1)//8+1, (W-1)//8+1) with C given by ``layer3_channels``
    and ``out_channels``.
    """

    def __init__(self, depth: int = 50, *, deep_stem: bool = True, output_stride: int = 8) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"unknown ResNet depth {depth}; choose one of {sorted(RESNET_DEPTHS)}")
        if output_stride not in _STAGE_SCHEDULE:
            raise ValueError(
                f"unknown output_stride {output_stride}; choose one of {sorted(_STAGE_SCHEDULE)}"
            )
        block, blocks = RESNET_DEPTHS[depth]
        self.depth = depth
        self.deep_stem = deep_stem
        self.output_stride = output_stride
        self.layer0 = _deep_stem() if deep_stem else _torchvision_stem()
        self._in_channels = 128 if deep_stem else 64
        (stride3, dilation3), (stride4, dilation4) = _STAGE_SCHEDULE[output_stride]
        self.layer1 = self._make_stage(block, 64, blocks[0])
        self.layer2 = self._make_stage(block, 128, blocks[1], stride=2)
        self.layer3 = self._make_stage(block, 256, blocks[2], stride=stride3, dilation=dilation3)
        self.layer4 = self._make_stage(block, 512, blocks[3], stride=stride4, dilation=dilation4)
        self.layer3_channels = 256 * block.expansion
        self.out_channels = 512 * block.expansion
        self._init_weights()

    def _make_stage(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1, dilation: int = 1
    ) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # Every block of a dilated stage uses the stage's dilation, first one included, as the original.
        layers = [block(self._in_channels, planes, stride, dilation, downsample)]
        self._in_channels = out_channels
        layers += [block(out_channels, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.layer0(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 backbone (BasicBlock, 512 channels out); kwargs go to :class:`ResNet`."""
    return ResNet(18, **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34 backbone (BasicBlock, 512 channels out); kwargs go to :class:`ResNet`."""
    return ResNet(34, **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 backbone (Bottleneck, 2048 channels out); kwargs go to :class:`ResNet`."""
    return ResNet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101 backbone (Bottleneck, 2048 channels out); kwargs go to :class:`ResNet`."""
    return ResNet(101, **kwargs)


def resnet152(**kwargs) -> ResNet:
    """ResNet-152 backbone (Bottleneck, 2048 channels out); kwargs go to :class:`ResNet`."""
    return ResNet(152, **kwargs)
