"""PSANet: Point-wise Spatial Attention Network for scene parsing.

Zhao, Zhang, Liu, Shi, Loy, Lin, Jia, ECCV 2018, https://hszhao.github.io/papers/eccv18_psanet.pdf.
Each position of the (optionally shrunk) layer4 feature map predicts how much it collects from, or
distributes to, every other position through a mask_h x mask_w window; the attended features are
projected back and concatenated to the trunk features, then classified. Parameter names follow the
original semseg release: ``psa.reduce``, ``psa.attention`` (collect), ``psa.reduce_p``,
``psa.attention_p`` (distribute, bi-direction only), ``psa.proj``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import SegmentationNet
from training.models.psamask import COLLECT, DISTRIBUTE, psa_mask
from training.models.registry import register_model

__all__ = [
    "PSA",
    "PSANet",
    "PSA_TYPES",
    "default_mask_size",
    "psanet18",
    "psanet34",
    "psanet50",
    "psanet101",
    "psanet152",
]

# psa_type -> name
PSA_TYPES = {0: "collect", 1: "distribute", 2: "bi-direction"}


def shrunk_feature_side(crop_side: int, shrink_factor: int) -> int:
    """Side of the attention grid for a crop side: stride-8 features shrunk by ``shrink_factor``."""
    return (crop_side - 1) // (8 * shrink_factor) + 1


def default_mask_size(crop_side: int, shrink_factor: int = 2, compact: bool = False) -> int:
    """The original rule for mask_h/mask_w from the training crop side.

    Compact: the attention grid side itself. Otherwise the window that covers the whole grid from any
    position: ``2 * ((crop - 1) // (8 * shrink) + 1) - 1`` (59 for 465 crops with shrink 2).
    """
    side = shrunk_feature_side(crop_side, shrink_factor)
    return side if compact else 2 * side - 1


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _attention_branch(mid_channels: int, mask_channels: int) -> nn.Sequential:
    # Index 3 is a bias-free 1x1 conv to one channel per window cell, as in the original.
    return nn.Sequential(
        *_conv_bn_relu(mid_channels, mid_channels),
        nn.Conv2d(mid_channels, mask_channels, kernel_size=1, bias=False),
    )


class PSA(nn.Module):
    """Point-wise spatial attention: (N, C, h, w) -> (N, 2C, h, w) (input concatenated with context).

    Args:
        in_channels: trunk channels C.
        mid_channels: channels of the reduced features that are attended.
        psa_type: 0 collect, 1 distribute, 2 both (two branches, concatenated before ``proj``).
        compact: predict the dense (h*w) x (h*w) map directly (window = attention grid); the input
            size is then fixed to the training crop.
        shrink_factor: the attention grid is the feature map shrunk by this factor.
        mask_h, mask_w: window size (odd unless compact).
        normalization_factor: the attended features are divided by it; None means mask_h*mask_w.
        psa_softmax: softmax over the attending positions.
    """

    def __init__(
        self,
        in_channels: int = 2048,
        mid_channels: int = 512,
        *,
        psa_type: int = 2,
        compact: bool = False,
        shrink_factor: int = 2,
        mask_h: int = 59,
        mask_w: int = 59,
        normalization_factor: float | None = 1.0,
        psa_softmax: bool = True,
    ) -> None:
        super().__init__()
        if psa_type not in PSA_TYPES:
            raise ValueError(f"psa_type must be one of {PSA_TYPES} , got {psa_type}")
        if int(shrink_factor) < 1:
            raise ValueError(f"shrink_factor must be a positive integer, got {shrink_factor}")
        self.psa_type = psa_type
        self.compact = bool(compact)
        self.shrink_factor = int(shrink_factor)
        self.mask_h = int(mask_h)
        self.mask_w = int(mask_w)
        self.psa_softmax = bool(psa_softmax)
        self.normalization_factor = float(
            mask_h * mask_w if normalization_factor is None else normalization_factor
        )
        mask_channels = self.mask_h * self.mask_w
        self.reduce = nn.Sequential(*_conv_bn_relu(in_channels, mid_channels))
        self.attention = _attention_branch(mid_channels, mask_channels)
        if psa_type == 2:
            self.reduce_p = nn.Sequential(*_conv_bn_relu(in_channels, mid_channels))
            self.attention_p = _attention_branch(mid_channels, mask_channels)
        self.proj = nn.Sequential(*_conv_bn_relu(mid_channels * (2 if psa_type == 2 else 1), in_channels))

    def _attention_map(self, logits: torch.Tensor, direction: int) -> torch.Tensor:
        """Window logits (N, mask_h*mask_w, h, w) -> dense map (N, h*w, h*w): [n, source q, target p]."""
        n, _, h, w = logits.shape
        if self.compact:
            if self.mask_h * self.mask_w != h * w:
                raise ValueError(
                    f"compact PSA was built for a {self.mask_h}x{self.mask_w} attention grid, "
                    f"got {h}x{w}: feed the training crop size"
                )
            dense = logits.reshape(n, h * w, h * w)
            if direction == DISTRIBUTE:
                dense = dense.transpose(1, 2)
        else:
            dense = psa_mask(logits, direction, self.mask_h, self.mask_w).reshape(n, h * w, h * w)
        if self.psa_softmax:
            dense = F.softmax(dense, dim=1)
        return dense

    def _attend(self, features: torch.Tensor, attention: nn.Module, direction: int) -> torch.Tensor:
        n, c, h, w = features.shape
        dense = self._attention_map(attention(features), direction)
        attended = torch.bmm(features.reshape(n, c, h * w), dense)
        return attended.reshape(n, c, h, w) * (1.0 / self.normalization_factor)

    def _shrink(self, x: torch.Tensor) -> torch.Tensor:
        if self.shrink_factor == 1:
            return x
        h = (int(x.shape[2]) - 1) // self.shrink_factor + 1
        w = (int(x.shape[3]) - 1) // self.shrink_factor + 1
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        if self.psa_type == 2:
            collected = self._attend(self._shrink(self.reduce(x)), self.attention, COLLECT)
            distributed = self._attend(self._shrink(self.reduce_p(x)), self.attention_p, DISTRIBUTE)
            context = torch.cat([collected, distributed], 1)
        else:
            context = self._attend(self._shrink(self.reduce(x)), self.attention, self.psa_type)
        context = self.proj(context)
        if self.shrink_factor != 1:
            # Back onto the feature grid: (h' - 1) * shrink + 1 equals it for 8k+1 crops.
            h = (int(context.shape[2]) - 1) * self.shrink_factor + 1
            w = (int(context.shape[3]) - 1) * self.shrink_factor + 1
            if (h, w) != (int(identity.shape[2]), int(identity.shape[3])):
                # Sizes the shrink does not divide: land exactly on the trunk grid so the concat works.
                h, w = int(identity.shape[2]), int(identity.shape[3])
            context = F.interpolate(context, size=(h, w), mode="bilinear", align_corners=True)
        return torch.cat([identity, context], 1)


class PSANet(SegmentationNet):
    """PSANet on a dilated ResNet.

    Args:
        layers: ResNet depth, 18, 34, 50, 101 or 152.
        classes: number of output classes.
        zoom_factor: 1, 2, 4 or 8 (8: logits at input size).
        psa_type: 0 collect, 1 distribute, 2 bi-direction.
        compact: dense attention map predicted directly (input fixed to the training crop).
        shrink_factor: attention runs on the layer4 grid shrunk by this factor.
        mask_h, mask_w: attention window; None derives it from train_h/train_w by the original rule
            (:func:`default_mask_size`). Must be odd and at least 3 unless compact.
        normalization_factor: divisor of the attended features (None: mask_h*mask_w).
        psa_softmax: softmax over attending positions.
        train_h, train_w: training crop (465 for VOC2012/ADE20K, 709 for Cityscapes) for the mask rule.
        deep_stem: original three-3x3 stem (True) or torchvision 7x7 stem (False).
        output_stride: 8 or 16.
        aux: build the aux head on layer3.
        dropout: Dropout2d probability before each classifier's 1x1 conv.

    The attention module gets ``trunk_channels // 4`` middle channels: 512 for ResNet-50+ as in the
    original, 128 for the 512-channel ResNet-18/34 trunks. See :meth:`SegmentationNet.forward`.
    """

    def __init__(
        self,
        *,
        layers: int = 50,
        classes: int = 2,
        zoom_factor: int = 8,
        psa_type: int = 2,
        compact: bool = False,
        shrink_factor: int = 2,
        mask_h: int | None = None,
        mask_w: int | None = None,
        normalization_factor: float | None = 1.0,
        psa_softmax: bool = True,
        train_h: int = 465,
        train_w: int = 465,
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
        if (mask_h is None) != (mask_w is None):
            raise ValueError(f"give both mask_h and mask_w or neither, got mask_h={mask_h}, mask_w={mask_w}")
        if mask_h is None:
            mask_h = default_mask_size(train_h, shrink_factor, compact)
            mask_w = default_mask_size(train_w, shrink_factor, compact)
        elif not compact:
            for name, size in (("mask_h", mask_h), ("mask_w", mask_w)):
                if size % 2 != 1 or size < 3:
                    raise ValueError(
                        f"{name} must be odd and at least 3 (a window centred on each position), got {size}"
                    )
        self.psa_type = psa_type
        self.compact = compact
        self.mask_h, self.mask_w = int(mask_h), int(mask_w)
        self.psa = PSA(
            self.trunk_channels,
            self.trunk_channels // 4,
            psa_type=psa_type,
            compact=compact,
            shrink_factor=shrink_factor,
            mask_h=self.mask_h,
            mask_w=self.mask_w,
            normalization_factor=normalization_factor,
            psa_softmax=psa_softmax,
        )
        self._build_heads(2 * self.trunk_channels)

    def forward_context(self, features: torch.Tensor) -> torch.Tensor:
        return self.psa(features)


def _psanet(layers: int, **kwargs) -> PSANet:
    return PSANet(layers=layers, **kwargs)


@register_model("psanet18")
def psanet18(**kwargs) -> PSANet:
    """PSANet on ResNet-18 (light variant, 512-channel trunk); kwargs go to :class:`PSANet`."""
    return _psanet(18, **kwargs)


@register_model("psanet34")
def psanet34(**kwargs) -> PSANet:
    """PSANet on ResNet-34 (light variant, 512-channel trunk); kwargs go to :class:`PSANet`."""
    return _psanet(34, **kwargs)


@register_model("psanet50")
def psanet50(**kwargs) -> PSANet:
    """PSANet on ResNet-50, the original release's main model; kwargs go to :class:`PSANet`."""
    return _psanet(50, **kwargs)


@register_model("psanet101")
def psanet101(**kwargs) -> PSANet:
    """PSANet on ResNet-101; kwargs go to :class:`PSANet`."""
    return _psanet(101, **kwargs)


@register_model("psanet152")
def psanet152(**kwargs) -> PSANet:
    """PSANet on ResNet-152; kwargs go to :class:`PSANet`."""
    return _psanet(152, **kwargs)
