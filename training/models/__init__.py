"""PSPNet and PSANet on dilated ResNets, weight-compatible with the original semseg release.

Entry points:
    build_model(config, aux=True)      the model a parsed config (or a YAML path) describes
    load_checkpoint(model, path)       original release / plain state dict / sceneparse checkpoint
    load_backbone_weights(model, path) ImageNet ResNet weights (deep-stem or torchvision format)
    list_models(), get_model_builder(name), register_model(name)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from training.models.checkpoint import CheckpointError, load_backbone_weights, load_checkpoint
from training.models.imagenet import BackboneWeightsError, backbone_weights_path, model_config
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
        config: a ``training.config.Config``, a flat mapping or an object with those attributes
            (validated with ``training.config.as_config``; defaults are the schema's), or the path
            of a YAML config file. Keys used: ``arch`` (psp|psa), ``layers``, ``classes``,
            ``zoom_factor``, ``deep_stem``, ``output_stride``, ``bins``; for psa ``psa_type``,
            ``compact``, ``shrink_factor``, ``mask_h``/``mask_w`` (None: the original rule from
            ``train_h``/``train_w``), ``normalization_factor``, ``psa_softmax``;
            ``pretrained_backbone`` (path of ImageNet weights, possibly with ``{layers}``, or None;
            a loaded ``Config`` defaults to the original's ``initmodel/resnet{layers}_v2.pth``, a bare
            mapping to None).
        aux: build the aux head (True for training; False for inference and export).
        backbone_weights: load ``pretrained_backbone`` when the config names one (see
            ``backbone_weights_path``); pass False when a whole-model checkpoint will be loaded anyway
            (evaluation, export), so the ImageNet file need not exist.

    Returns:
        the model in training mode (call ``.eval()`` for inference), on the CPU (or on the current
        default device).

    Raises:
        ValueError (ConfigError): unknown arch or depth, missing keys, bad values; BackboneWeightsError for a missing backbone
        file; CheckpointError for a bad one.
    """
    config = model_config(config)
    name = model_name(config.arch, config.layers)
    kwargs: dict[str, Any] = {
        "classes": config.classes,
        "zoom_factor": config.zoom_factor,
        "deep_stem": config.deep_stem,
        "output_stride": config.output_stride,
        "aux": aux,
    }
    if config.arch == "psp":
        kwargs["bins"] = tuple(config.bins)
    else:
        kwargs.update(
            psa_type=config.psa_type,
            compact=bool(config.compact),
            shrink_factor=config.shrink_factor,
            mask_h=config.mask_h,
            mask_w=config.mask_w,
            normalization_factor=config.normalization_factor,
            psa_softmax=bool(config.psa_softmax),
            train_h=config.train_h,
            train_w=config.train_w,
        )
    model = get_model_builder(name)(**kwargs)
    if backbone_weights:
        backbone_path = backbone_weights_path(config)
        if backbone_path:
            load_backbone_weights(model, backbone_path)
    return model
