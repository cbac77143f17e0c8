"""Export stage 1, load: the config, the dataset's metadata and the checkpoint's model.

Everything the later stages need from the training side comes through here: a validated
`Config` (one conversion, `training.config.as_config`), the dataset's classes and palette, and
the model in eval mode without its aux head, with the checkpoint's weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from export.errors import ExportError
from training.config import Config, ConfigError, as_config
from training.datasets import DatasetError, DatasetInfo, dataset_info_for_config
from training.models import CheckpointError, build_model, load_checkpoint, model_name


def load_config(value: Config | Mapping[str, Any] | str | os.PathLike[str]) -> Config:
    """The export's config: a YAML path, a flat mapping or a Config; ExportError when invalid."""
    if isinstance(value, (str, os.PathLike)) and not Path(value).is_file():
        raise ExportError(f"config {Path(value)}: no such file")
    try:
        return as_config(value)
    except ConfigError as exc:
        raise ExportError(f"config: {exc}") from None


def dataset_info(config: Config) -> DatasetInfo:
    """Class names and palette of the config's dataset; ExportError when they cannot be read."""
    try:
        return dataset_info_for_config(config)
    except DatasetError as exc:
        raise ExportError(f"dataset metadata: {exc}") from None


def default_model_name(config: Config, dataset_name: str) -> str:
    """`<dataset>_<arch><layers>`, e.g. ade20k_pspnet50 or voc2012_psanet101 (training.models' names)."""
    try:
        return f"{dataset_name}_{model_name(config.arch, config.layers)}"
    except ValueError as exc:
        raise ExportError(f"cannot build the model from the config: {exc}") from None


def check_checkpoint_file(checkpoint: str | os.PathLike[str]) -> Path:
    """The checkpoint's path, once it is known to be a regular file."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ExportError(f"checkpoint {checkpoint}: no such file")
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint {checkpoint}: not a regular file")
    return checkpoint


def load_model(config: Config, checkpoint: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model in eval mode, without aux head, with the checkpoint's weights; and the checkpoint's meta."""
    # The checkpoint replaces every weight: the ImageNet backbone file a training config names
    # (initmodel/resnet50_v2.pth in the original configs) is neither needed nor read.
    try:
        model = build_model(config.merged({"pretrained_backbone": None}), aux=False)
    except (ValueError, KeyError) as exc:
        raise ExportError(f"cannot build the model from the config: {exc}") from None
    try:
        loaded = load_checkpoint(model, checkpoint)
    except CheckpointError as exc:
        # One line: the CLI prints it as is. Every key at fault is still named (up to a limit).
        problems = list(getattr(exc, "problems", []))
        summary = str(exc).splitlines()[0]
        if problems:
            shown = "; ".join(problems[:12]) + (f"; ... and {len(problems) - 12} more" if len(problems) > 12 else "")
            summary = f"{summary}: {shown}"
        raise ExportError(f"checkpoint {summary}") from None
    return model.eval(), dict(getattr(loaded, "meta", None) or {})
