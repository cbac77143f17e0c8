"""The original optimisation recipe: SGD with a 10x head learning rate and poly decay per iteration.

- backbone (`layer0` .. `layer4`) at base_lr, new layers (ppm / psa, cls, aux) at 10 x base_lr;
- SGD, momentum 0.9, weight decay 1e-4 (from the config);
- lr(it) = base_lr * (1 - it / max_iter) ** power, set before every step; step `it` (0-based)
  therefore runs at the same rate the original set after step `it` - 1.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BACKBONE_PREFIXES", "HEAD_LR_MULT", "build_optimizer", "poly_learning_rate", "set_learning_rate"]

# Top-level modules that come from the ImageNet backbone; everything else is a new layer.
BACKBONE_PREFIXES = ("layer0", "layer1", "layer2", "layer3", "layer4")
HEAD_LR_MULT = 10.0


def build_optimizer(
    model: nn.Module, base_lr: float, momentum: float = 0.9, weight_decay: float = 1e-4
) -> torch.optim.SGD:
    """SGD over the trainable parameters of `model` (not DDP-wrapped), in two groups.

    Group 0 is the backbone (lr_mult 1), group 1 the new layers (lr_mult 10). Frozen parameters
    (requires_grad False, e.g. frozen BN) are left out. Each group records its `lr_mult`, so
    `set_learning_rate` works after an optimizer state is loaded from a checkpoint.

    Raises:
        ValueError: the model has no trainable parameter in either group.
    """
    backbone, head = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (backbone if name.startswith(BACKBONE_PREFIXES) else head).append(param)
    if not backbone and not head:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": backbone, "lr": base_lr, "lr_mult": 1.0, "name": "backbone"},
        {"params": head, "lr": base_lr * HEAD_LR_MULT, "lr_mult": HEAD_LR_MULT, "name": "head"},
    ]
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum, weight_decay=weight_decay)


def poly_learning_rate(base_lr: float, iteration: int, max_iter: int, power: float = 0.9) -> float:
    """Poly decay: base_lr * (1 - iteration / max_iter) ** power, for 0 <= iteration <= max_iter."""
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    progress = min(max(iteration, 0), max_iter) / max_iter
    return base_lr * (1.0 - progress) ** power


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to lr x its `lr_mult`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
