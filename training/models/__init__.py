"""PSPNet and PSANet on dilated ResNets, weight-compatible with the original semseg release.

Entry points:
    build_model(config, aux=True)      the model a parsed config (or a YAML path) describes
    load_checkpoint(model, path)       original release / plain state dict / sceneparse checkpoint
    load_backbone_weights(model, path) ImageNet ResNet weights (deep-stem or torchvision format)
    list_models(), get_model_builder(name), register_model(name)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from training.models.checkpoint import CheckpointError, load_backbone_weights, load_checkpoint
from training.models.imagenet import BackboneWeightsError, backbone_weights_path
from training.models.psanet import PSANet
from training.models.pspnet import PSPNet
from training.models.registry import get_model_builder, list_models, register_model
from training.models.resnet import RESNET_DEPTHS

__all__ = [
    "ARCHS",
    "BackboneWeightsError",
    "CheckpointError",
    "PSANet",
    "PSPNet",
    "backbone_weights_path",
    "build_model",
    "get_model_builder",
    "list_models",
    "load_backbone_weights",
    "load_checkpoint",
    "model_name",
    "register_model",
]

# config `arch` -> registry name prefix
ARCHS = {"psp": "pspnet", "psa": "psanet"}

_MISSING = object()


def _lookup(config: Any, key: str, default: Any = _MISSING) -> Any:
    """Read ``key`` from a mapping or an attribute-style config; KeyError-free, ValueError when required."""
    if isinstance(config, Mapping):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    if value is _MISSING:
        raise ValueError(f"model config has no {key!r}")
    return value


def model_name(arch: str, layers: int) -> str:
    """Registry name for a config's ``arch`` and ``layers`` (``psp``, 50 -> ``pspnet50``).

    Raises ValueError listing the choices for an unknown arch or depth.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    try:
        depth = int(layers)
    except (TypeError, ValueError):
        raise ValueError(f"layers must be an integer depth, got {layers!r}") from None
    if depth not in RESNET_DEPTHS:
        raise ValueError(
            f"unknown layers {layers!r} for arch {arch!r}; choose one of {', '.join(map(str, sorted(RESNET_DEPTHS)))}"
        )
    return f"{ARCHS[arch]}{depth}"


def build_model(config: Any, *, aux: bool = True, backbone_weights: bool = True) -> nn.Module:
    """Build the PSPNet/PSANet that a config describes.

    Args:
        config: a mapping, an object with attribute access (``training.config.Config``), or the path
            of a YAML config file (read with ``training.config.load_config``). Keys used: ``arch``
            (psp|psa), ``layers``, ``classes``, ``zoom_factor`` (8), ``deep_stem`` (True),
            ``output_stride`` (8), ``bins`` ([1, 2, 3, 6]); for psa ``psa_type`` (2), ``compact``
            (False), ``shrink_factor`` (2), ``mask_h``/``mask_w`` (None: original rule from
            ``train_h``/``train_w``, 465), ``normalization_factor`` (1.0), ``psa_softmax`` (True);
            ``pretrained_backbone`` (path of ImageNet weights, possibly with ``{layers}``, or None;
            a loaded ``Config`` defaults to the original's ``initmodel/resnet{layers}_v2.pth``).
        aux: build the aux head (True for training; False for inference and export).
        backbone_weights: load ``pretrained_backbone`` when the config names one (see
            ``backbone_weights_path``); pass False when a whole-model checkpoint will be loaded anyway
            (evaluation, export), so the ImageNet file need not exist.

    Returns:
        the model in training mode (call ``.eval()`` for inference), on the CPU (or on the current
        default device).

    Raises:
        ValueError: unknown arch or depth, bad values; BackboneWeightsError for a missing backbone
        file; CheckpointError for a bad one.
    """
    if isinstance(config, (str, os.PathLike)):
        from training.config import load_config  # lazy: the config package stays optional here

        config = load_config(config)
    name = model_name(_lookup(config, "arch"), _lookup(config, "layers"))
    kwargs: dict[str, Any] = {
        "classes": int(_lookup(config, "classes")),
        "zoom_factor": int(_lookup(config, "zoom_factor", 8)),
        "deep_stem": bool(_lookup(config, "deep_stem", True)),
        "output_stride": int(_lookup(config, "output_stride", 8)),
        "aux": aux,
    }
    if _lookup(config, "arch") == "psp":
        bins = _lookup(config, "bins", None)
        if bins is not None:
            kwargs["bins"] = tuple(int(b) for b in bins)
    else:
        mask_h, mask_w = _lookup(config, "mask_h", None), _lookup(config, "mask_w", None)
        kwargs.update(
            psa_type=int(_lookup(config, "psa_type", 2)),
            compact=bool(_lookup(config, "compact", False)),
            shrink_factor=int(_lookup(config, "shrink_factor", 2)),
            mask_h=None if mask_h is None else int(mask_h),
            mask_w=None if mask_w is None else int(mask_w),
            normalization_factor=_lookup(config, "normalization_factor", 1.0),
            psa_softmax=bool(_lookup(config, "psa_softmax", True)),
            train_h=int(_lookup(config, "train_h", 465)),
            train_w=int(_lookup(config, "train_w", 465)),
        )
    model = get_model_builder(name)(**kwargs)
    if backbone_weights:
        backbone_path = backbone_weights_path(config)
        if backbone_path:
            load_backbone_weights(model, backbone_path)
    return model
