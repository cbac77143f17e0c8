"""PSPNet: Pyramid Scene Parsing Network.

Zhao, Shi, Qi, Wang, Jia, CVPR 2017, https://arxiv.org/abs/1612.01105. A dilated ResNet whose
layer4 features are pooled at several grid sizes (bins), reduced, upsampled and concatenated back,
then classified. Parameter names follow the original semseg release (``ppm.features.<i>.1`` is the
1x1 conv, ``.2`` its BN; index 0 is the parameter-free adaptive pooling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import SegmentationNet
from training.models.registry import register_model

__all__ = ["PPM", "PSPNet", "pspnet18", "pspnet34", "pspnet50", "pspnet101", "pspnet152"]


class PPM(nn.Module):
    """Pyramid pooling module: input (N, C, h, w) -> (N, C + len(bins)*reduction, h, w).

    Each branch average-pools to a ``bin x bin`` grid, reduces channels with a 1x1 conv + BN + ReLU,
    and is upsampled back bilinearly with corners aligned.

    Note for export: the legacy ONNX exporter handles adaptive pooling only when every bin divides
    the feature size (60 for 473 crops and 90 for 713 crops do, for bins 1, 2, 3, 6).
    """

    def __init__(self, in_channels: int, reduction_channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(int(b)),
                nn.Conv2d(in_channels, reduction_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction_channels),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[2]), int(x.shape[3]))
        out = [x]
        for branch in self.features:
            out.append(F.interpolate(branch(x), size=size, mode="bilinear", align_corners=True))
        return torch.cat(out, 1)


class PSPNet(SegmentationNet):
    """PSPNet on a dilated ResNet.

    Args:
        layers: ResNet depth, 18, 34, 50, 101 or 152.
        classes: number of output classes.
        bins: pyramid grid sizes; the trunk's channels must divide by ``len(bins)``.
        zoom_factor: 1, 2, 4 or 8 (8: logits at input size).
        deep_stem: original three-3x3 stem (True) or torchvision 7x7 stem (False).
        output_stride: 8 or 16.
        aux: build the aux head on layer3.
        dropout: Dropout2d probability before each classifier's 1x1 conv.

    See :meth:`SegmentationNet.forward` for inputs and outputs.
    """

    def __init__(
        self,
        *,
        layers: int = 50,
        classes: int = 2,
        bins: Sequence[int] = (1, 2, 3, 6),
        zoom_factor: int = 8,
        deep_stem: bool = True,
        output_stride: int = 8,
        aux: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(
            layers=layers,
            classes=classes,
            zoom_factor=zoom_factor,
            deep_stem=deep_stem,
            output_stride=output_stride,
            aux=aux,
            dropout=dropout,
        )
        bins = tuple(int(b) for b in bins)
        if not bins or any(b < 1 for b in bins):
            raise ValueError(f"bins must be positive grid sizes, got {list(bins)}")
        if self.trunk_channels % len(bins) != 0:
            raise ValueError(
                f"{self.trunk_channels} trunk channels do not divide into {len(bins)} bins {list(bins)}"
            )
        self.bins = bins
        self.ppm = PPM(self.trunk_channels, self.trunk_channels // len(bins), bins)
        self._build_heads(2 * self.trunk_channels)

    def forward_context(self, features: torch.Tensor) -> torch.Tensor:
        return self.ppm(features)


def _pspnet(layers: int, **kwargs) -> PSPNet:
    return PSPNet(layers=layers, **kwargs)


@register_model("pspnet18")
def pspnet18(**kwargs) -> PSPNet:
    """PSPNet on ResNet-18 (light variant, 512-channel trunk); kwargs go to :class:`PSPNet`."""
    return _pspnet(18, **kwargs)


@register_model("pspnet34")
def pspnet34(**kwargs) -> PSPNet:
    """PSPNet on ResNet-34 (light variant, 512-channel trunk); kwargs go to :class:`PSPNet`."""
    return _pspnet(34, **kwargs)


@register_model("pspnet50")
def pspnet50(**kwargs) -> PSPNet:
    """PSPNet on ResNet-50, the original release's main model; kwargs go to :class:`PSPNet`."""
    return _pspnet(50, **kwargs)


@register_model("pspnet101")
def pspnet101(**kwargs) -> PSPNet:
    """PSPNet on ResNet-101; kwargs go to :class:`PSPNet`."""
    return _pspnet(101, **kwargs)


@register_model("pspnet152")
def pspnet152(**kwargs) -> PSPNet:
    """PSPNet on ResNet-152; kwargs go to :class:`PSPNet`."""
    return _pspnet(152, **kwargs)
