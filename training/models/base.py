"""What PSPNet and PSANet share: the dilated ResNet trunk, the classifier and aux heads, the input-size
rule and the zoom to the output size.

Both models of the semseg release have the same outer shape (Zhao et al., PSPNet, CVPR 2017,
https://arxiv.org/abs/1612.01105; PSANet, ECCV 2018): ``layer0`` .. ``layer4`` of a dilated ResNet,
a context module on layer4 (``ppm`` or ``psa``) that doubles its channels, ``cls`` (3x3 conv 512 +
BN + ReLU + Dropout2d + 1x1 conv) and, for training, ``aux`` on layer3 (3x3 conv 256 + BN + ReLU +
Dropout2d + 1x1 conv). Subclasses register their context module between the trunk and the heads, so
the state dict keys come in the original order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.resnet import ResNet

__all__ = ["ZOOM_FACTORS", "SegmentationNet", "check_input_size", "classifier_head"]

ZOOM_FACTORS = (1, 2, 4, 8)


def classifier_head(in_channels: int, mid_channels: int, classes: int, dropout: float) -> nn.Sequential:
    """3x3 conv + BN + ReLU + Dropout2d + 1x1 conv; the indices 0, 1 and 4 are the original's key names."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(mid_channels, classes, kernel_size=1),
    )


def _nearest_valid_sides(side: int) -> tuple[int, int]:
    below = (side - 1) // 8 * 8 + 1
    return max(below, 9), below + 8


def check_input_size(x: torch.Tensor) -> tuple[int, int]:
    """Check an (N, 3, H, W) batch against the 8k+1 rule; return (H, W).

    The models align feature and image pixels at their corners (align_corners=True), which only holds
    when every side is a multiple of 8 plus one (465, 473, 713, ...). Raises ValueError naming the size.
    """
    if x.dim() != 4:
        raise ValueError(
            f"expected an image batch of shape (N, 3, H, W), got a {x.dim()}-D tensor {tuple(x.shape)}"
        )
    height, width = int(x.shape[2]), int(x.shape[3])
    for name, side in (("height", height), ("width", width)):
        if (side - 1) % 8 != 0 or side < 9:
            lower, upper = _nearest_valid_sides(side)
            raise ValueError(
                f"input size {height}x{width} is not supported: {name} {side} must be 8k+1 "
                f"(for example {lower} or {upper}), because features are aligned to image corners at stride 8"
            )
    return height, width


class SegmentationNet(nn.Module):
    """Dilated ResNet trunk + context module + classifier, with an optional aux head on layer3.

    Args:
        layers: ResNet depth, 18, 34, 50, 101 or 152.
        classes: number of output classes (> 1).
        zoom_factor: 1, 2, 4 or 8; logits come out at ``(H-1)/8*zoom_factor+1`` per side, so 8 gives
            the input size.
        deep_stem: the original three-3x3 stem (True) or torchvision's 7x7 stem (False).
        output_stride: 8 (original) or 16 (cheaper; layer4 dilated only).
        aux: build the aux head (needed for training; optional for inference).
        dropout: Dropout2d probability in the heads.

    Subclasses call ``super().__init__``, register their context module, then ``_build_heads`` with the
    context module's output channels, and implement ``forward_context(layer4_features)``.
    """

    def __init__(
        self,
        *,
        layers: int = 50,
        classes: int = 2,
        zoom_factor: int = 8,
        deep_stem: bool = True,
        output_stride: int = 8,
        aux: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if int(classes) < 2:
            raise ValueError(f"classes must be at least 2, got {classes}")
        if zoom_factor not in ZOOM_FACTORS:
            raise ValueError(f"zoom_factor must be one of {ZOOM_FACTORS}, got {zoom_factor}")
        trunk = ResNet(layers, deep_stem=deep_stem, output_stride=output_stride)
        # The stages are attributes of the model itself so that keys read layer0.*, .., layer4.* as in
        # the original checkpoints.
        self.layer0, self.layer1, self.layer2 = trunk.layer0, trunk.layer1, trunk.layer2
        self.layer3, self.layer4 = trunk.layer3, trunk.layer4
        self.layers = layers
        self.classes = int(classes)
        self.zoom_factor = zoom_factor
        self.deep_stem = deep_stem
        self.output_stride = output_stride
        self.dropout = dropout
        self.trunk_channels = trunk.out_channels
        self.layer3_channels = trunk.layer3_channels
        self._with_aux = aux

    def _build_heads(self, context_channels: int) -> None:
        self.cls = classifier_head(context_channels, 512, self.classes, self.dropout)
        self.aux = (
            classifier_head(self.layer3_channels, 256, self.classes, self.dropout) if self._with_aux else None
        )

    @property
    def has_aux(self) -> bool:
        """True when the model carries the aux head (training-time deep supervision on layer3)."""
        return self.aux is not None

    def forward_context(self, features: torch.Tensor) -> torch.Tensor:
        """Map layer4 features (N, C, h, w) to context features (N, C', h, w)."""
        raise NotImplementedError

    def backbone_modules(self) -> list[nn.Module]:
        """The pretrained trunk (layer0..layer4): trained at the base learning rate."""
        return [self.layer0, self.layer1, self.layer2, self.layer3, self.layer4]

    def head_modules(self) -> list[nn.Module]:
        """The newly initialised layers (context module, cls, aux): trained at 10x the base rate."""
        backbone = {id(m) for m in self.backbone_modules()}
        return [m for m in self.children() if id(m) not in backbone]

    def forward(self, x: torch.Tensor):
        """Segment a batch.

        Args:
            x: float tensor (N, 3, H, W), normalised images; H and W must be 8k+1.

        Returns:
            In eval mode (or without aux head): logits (N, classes, h, w) with
            h = (H-1)/8*zoom_factor+1 (the input size for zoom_factor 8).
            In train mode with the aux head: ``(main_logits, aux_logits)``, both of that shape.
            The loss is the caller's business.
        """
        height, width = check_input_size(x)
        out_h = (height - 1) // 8 * self.zoom_factor + 1
        out_w = (width - 1) // 8 * self.zoom_factor + 1
        x = self.layer2(self.layer1(self.layer0(x)))
        c3 = self.layer3(x)
        c4 = self.layer4(c3)
        main = self.cls(self.forward_context(c4))
        if self.zoom_factor != 1:
            main = F.interpolate(main, size=(out_h, out_w), mode="bilinear", align_corners=True)
        if self.training and self.aux is not None:
            aux = self.aux(c3)
            if self.zoom_factor != 1:
                aux = F.interpolate(aux, size=(out_h, out_w), mode="bilinear", align_corners=True)
            return main, aux
        return main
