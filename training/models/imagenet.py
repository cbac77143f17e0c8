"""Which ImageNet weights initialise the backbone: the original's rule, and its clear failure.

The original always built its ResNet trunk from `./initmodel/resnet{50,101,152}_v2.pth`, relative to
the working directory, and its configs have no key for it. So `pretrained_backbone` defaults to the
template `ORIGINAL_BACKBONE_WEIGHTS` ({layers} filled from the config), an explicit path replaces it,
and `None` (`pretrained_backbone none` on the command line) trains from scratch on purpose. A file
that is not there stops training with the two ways out instead of silently starting from random
weights, and so does a depth the original had no file for (18, 34).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.config import Config, as_config
from training.config.schema import ORIGINAL_BACKBONE_WEIGHTS

__all__ = ["ORIGINAL_BACKBONE_DEPTHS", "ORIGINAL_BACKBONE_WEIGHTS", "BackboneWeightsError", "backbone_weights_path",
           "model_config"]

ORIGINAL_BACKBONE_DEPTHS = (50, 101, 152)  # the depths of the original's initmodel/ files
_WAYS_OUT = ("name a weights file with `pretrained_backbone PATH`, or train from scratch on purpose with "
             "`pretrained_backbone none`")


class BackboneWeightsError(ValueError):
    """The ImageNet weights the config asks for are not there (the message says what to do)."""


def model_config(config: Any) -> Config:
    """The Config a model is built from (`training.config.as_config`, partial).

    A Config or a YAML path is taken as loaded; its `pretrained_backbone` defaults to the
    original's initmodel/ file. A bare mapping or attribute object describes a network: its
    missing keys take the schema's defaults, except that it names ImageNet weights only when it
    says so. A missing required key (arch, layers, classes) is a MissingKeyError when read.
    """
    if isinstance(config, (Config, str, os.PathLike)):
        return as_config(config)
    values = dict(config) if isinstance(config, Mapping) else dict(getattr(config, "__dict__", {}))
    return as_config({"pretrained_backbone": None, **values}, partial=True)


def backbone_weights_path(config: Any) -> str | None:
    """The ImageNet weights file a config initialises its backbone from, or None for none.

    `pretrained_backbone` may be a path, the template with `{layers}` (the default: the original's
    `initmodel/resnet{layers}_v2.pth`), or None / "none" (from scratch). Relative paths are taken
    from the working directory, as the original did.

    Raises:
        BackboneWeightsError: the file does not exist, or the template is used with a depth the
            original shipped no file for; the message names the file and both ways out.
    """
    config = model_config(config)
    value = config.pretrained_backbone
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    layers = config.layers
    text = str(value)
    if "{layers}" in text:
        if text == ORIGINAL_BACKBONE_WEIGHTS and layers not in ORIGINAL_BACKBONE_DEPTHS:
            raise BackboneWeightsError(
                f"the original initialised ResNet-{layers} from no ImageNet file (it shipped "
                f"{', '.join(ORIGINAL_BACKBONE_WEIGHTS.format(layers=d) for d in ORIGINAL_BACKBONE_DEPTHS)}): "
                f"{_WAYS_OUT}")
        text = text.format(layers=layers)
    path = Path(text)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (in {Path.cwd()})"
        default = " the original's default," if str(value) == ORIGINAL_BACKBONE_WEIGHTS else ""
        raise BackboneWeightsError(
            f"ImageNet backbone weights {text}{where},{default} not found: put the file there, or {_WAYS_OUT}")
    return text
