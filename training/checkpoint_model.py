"""A checkpoint run as if it were deployed: `sceneparse predict --config CFG --checkpoint CKPT`.

Users try an original release (or their own training run) on their photos before exporting
anything. The config gives what export would store in the model repository (classes, palette,
crop, mean/std, base size, test scales, flip), the network runs in eager PyTorch
(`training.runners.TorchRunner`), and everything else is the one pipeline of `sceneparse
predict`, so the files equal those of the same checkpoint exported and served, within the
export gate (the same argmax outside numerical ties; tests/serving/test_predict_checkpoint.py).

Imported only on that path (it imports torch: the `train` extra); `serving` stays torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from serving.repository import ModelMetadata

# Windows per forward pass; any number gives the same masks (eval-mode BatchNorm).
DEFAULT_MAX_BATCH_SIZE = 4


class CheckpointModelError(ValueError):
    """A config or checkpoint that cannot be used; the message names the file and the fault."""


def read_config(config: str | os.PathLike[str]):
    """The config at `config`: a YAML file in the original format or the name of a shipped one."""
    from training.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        raise CheckpointModelError(f"--config {config}: {exc}") from None
    except OSError as exc:
        raise CheckpointModelError(f"--config {config}: cannot read it: {exc.strerror or exc}") from None


def checkpoint_metadata(config, checkpoint: str | os.PathLike[str] = "") -> ModelMetadata:
    """What export would publish for this config, as the pipeline reads it (version 0: unpublished).

    The name is export's default, `<dataset>_<arch><layers>`.
    """
    from training.config import ConfigError, as_config
    from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from training.datasets import DatasetError, dataset_info_for_config
    from training.models import model_name

    try:
        config = as_config(config)
        name = model_name(config.arch, config.layers)
        info = dataset_info_for_config(config)
    except (ConfigError, ValueError) as exc:
        kind = "dataset metadata" if isinstance(exc, DatasetError) else "the config"
        raise CheckpointModelError(f"{kind}: {exc}") from None
    if config.classes != len(info.classes):
        raise CheckpointModelError(f"dataset {info.name!r} has {len(info.classes)} classes, "
                                   f"the config's model {config.classes}")
    meta = ModelMetadata(
        name=f"{info.name}_{name}",
        version=0,
        arch=config.arch,
        layers=config.layers,
        dataset=info.name,
        classes=list(info.classes),
        palette=[[int(v) for v in row] for row in np.asarray(info.palette)],
        crop_h=config.test_h,
        crop_w=config.test_w,
        mean=[float(v) for v in IMAGENET_MEAN],
        std=[float(v) for v in IMAGENET_STD],
        ignore_label=config.ignore_label,
        base_size=config.base_size,
        test_scales=list(config.scales),
        flip=config.flip,
        max_batch_size=DEFAULT_MAX_BATCH_SIZE,
        platform="pytorch_eager",
        files={},
        checkpoint_name=Path(checkpoint).name,
        checkpoint_path=str(Path(checkpoint).resolve()) if checkpoint else "",
    )
    meta.validate(f"config {config.path or ''}".strip())
    return meta


def default_device(device: str) -> str:
    """"auto": the first CUDA device when there is one, else the CPU; otherwise as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def open_checkpoint(config, checkpoint: str | os.PathLike[str], device: str = "auto", threads: int = 0,
                    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE):
    """(metadata, runner) of `checkpoint` under `config` (a Config or a path; see `read_config`).

    The network is built without its aux head and every weight comes from the checkpoint (read
    with weights_only=True; the ImageNet backbone file a training config names is not read).
    Raises CheckpointModelError for a missing file or weights that do not fit the model.
    """
    import torch

    from training.models import CheckpointError, build_model, load_checkpoint
    from training.runners import TorchRunner

    if isinstance(config, (str, os.PathLike)):
        config = read_config(config)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointModelError(f"--checkpoint {checkpoint}: no such file")
    meta = checkpoint_metadata(config, checkpoint)
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        model = build_model(config.merged({"pretrained_backbone": None}), aux=False)
    except (ValueError, KeyError) as exc:
        raise CheckpointModelError(f"cannot build the model of the config: {exc}") from None
    try:
        load_checkpoint(model, checkpoint)
    except CheckpointError as exc:
        raise CheckpointModelError(f"--checkpoint {str(exc).splitlines()[0]}"
                                   + (f": {'; '.join(exc.problems[:6])}" if exc.problems else "")) from None
    runner = TorchRunner(model, default_device(device), max_batch_size=max_batch_size)
    return meta, runner
