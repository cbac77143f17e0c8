"""Export stage 4, describe: what the model repository stores beside the model files.

`describe` writes down everything serving needs to run a version (the contract of
serving.repository.ModelMetadata: classes, palette, crop, normalisation, test protocol, tensor
names, precision) and where it came from (checkpoint hash, tools, parity figures, metrics);
`model_files` gives the model-level files: config.pbtxt, class names and palette.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.errors import ExportError
from export.options import ExportOptions
from export.triton_config import PLATFORMS, TritonModelConfig
from serving.repository import COLORS_FILE, CONFIG_FILE, LABELS_FILE, ModelMetadata, colors_text, labels_text
from training.config import Config
from training.datasets import DatasetInfo


def describe(*, name: str, config: Config, dataset: DatasetInfo, options: ExportOptions, files: Mapping[str, Path],
             names: tuple[str, str], crop: tuple[int, int], output_hw: tuple[int, int],
             mean_std: tuple[list[float], list[float]], checkpoint: Path, checkpoint_sha256: str,
             parity: Mapping[str, Any], metrics: Mapping[str, Any]) -> ModelMetadata:
    """The version's sceneparse.json (its number is set by publish_version)."""
    meta = ModelMetadata(
        name=name,
        version=0,  # set by publish_version
        arch=config.arch,
        layers=config.layers,
        dataset=dataset.name,
        classes=list(dataset.classes),
        palette=[[int(v) for v in row] for row in np.asarray(dataset.palette)],
        crop_h=crop[0],
        crop_w=crop[1],
        mean=list(mean_std[0]),
        std=list(mean_std[1]),
        ignore_label=config.ignore_label,
        base_size=config.base_size,
        test_scales=list(config.scales),
        flip=config.flip,
        input_name=names[0],
        output_name=names[1],
        output_hw=None if tuple(output_hw) == tuple(crop) else list(output_hw),
        max_batch_size=options.max_batch_size,
        precision=options.precision,
        platform=PLATFORMS[options.formats[0]],
        files={fmt: path.name for fmt, path in files.items()},
        checkpoint_sha256=checkpoint_sha256,
        checkpoint_name=checkpoint.name,
        checkpoint_path=str(checkpoint.resolve()),
        tools=tool_versions(),
        parity=json_safe(parity),
        metrics=json_safe(dict(metrics)),
        config=json_safe(config.to_dict()),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if meta.num_classes != config.classes:
        raise ExportError(f"dataset {dataset.name!r} has {meta.num_classes} classes, the model {config.classes}")
    return meta


def model_files(meta: ModelMetadata, options: ExportOptions) -> dict[str, str]:
    """The model directory's files: config.pbtxt (Triton's), class names and palette."""
    crop = (meta.crop_h, meta.crop_w)
    output_hw = tuple(meta.output_hw) if meta.output_hw else crop
    triton = TritonModelConfig(
        name=meta.name, fmt=options.formats[0], input_dims=(3, *crop), output_dims=(meta.num_classes, *output_hw),
        # An int8 (QDQ) graph takes and returns float32: quantization is inside it.
        precision="fp32" if meta.precision == "int8" else meta.precision, max_batch_size=options.max_batch_size,
        num_versions=options.num_versions, instance_kind=options.instance_kind,
        max_queue_size=options.triton_max_queue_size,
    )
    try:
        return {CONFIG_FILE: triton.to_text(), LABELS_FILE: labels_text(meta.classes),
                COLORS_FILE: colors_text(meta.palette)}
    except ValueError as exc:
        raise ExportError(f"Triton config: {exc}") from None


def tool_versions() -> dict[str, str]:
    """Versions of the tools that produced an export (recorded in the metadata)."""
    import onnx
    import onnxruntime

    from sceneparse import __version__

    versions = {"sceneparse": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}
    with contextlib.suppress(ImportError):
        import onnxslim

        versions["onnxslim"] = getattr(onnxslim, "__version__", "")
    return versions


def json_safe(value: Any) -> Any:
    """`value` as plain JSON types (numpy scalars and arrays as lists, anything else as its str)."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
