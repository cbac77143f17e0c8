"""`export_checkpoint`: a checkpoint and its config in, a verified, published model version out.

The export runs in stages, each in its own module, chosen so that a failure at any stage
leaves nothing behind:
0. check the request (`ExportOptions.check`, version, name, repository path) before heavy work;
1. load (export.loading): the config, the dataset's metadata, the checkpoint's model;
2. build the graph (export.building): each format into a private temporary directory;
3. verify (export.verifying): parity with eager PyTorch, refusing to go on when it fails;
   then onnxslim, and for int8 the quantization and its accuracy gate (export.quantize);
4. describe (export.describing): the version's metadata, config.pbtxt, class names, palette;
5. publish (export.publishing): `ModelRepository.publish_version` copies the files into a
   staging directory inside the model directory and renames it into place under the lock.
Only stage 5 touches the repository.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.building import build_graph, slim
from export.describing import describe, model_files
from export.errors import ExportError
from export.loading import (
    check_checkpoint_file,
    dataset_info,
    default_model_name,
    load_config,
    load_model,
)
from export.options import DEFAULT_LOGITS, FORMATS, ExportOptions, parse_version
from export.publishing import check_precision, check_repository, publish
from export.triton_config import tensor_names
from export.verifying import verify_graph
from sceneparse.digest import file_sha256
from serving.repository import ModelMetadata, ModelRepository, RepositoryError, validate_model_name
from training.config import Config

__all__ = ["DEFAULT_LOGITS", "FORMATS", "ExportOptions", "ExportResult", "export_checkpoint"]

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        name, version: the published model version.
        path: its directory (`<repository>/<name>/<version>`).
        files: format -> file name inside `path`.
        metadata: the ModelMetadata written as sceneparse.json.
        parity: the verification figures (also in metadata.parity).
        seconds: wall time per stage.
    """

    name: str
    version: int
    path: Path
    files: dict[str, str]
    metadata: ModelMetadata
    parity: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def export_checkpoint(
    config: Config | Mapping[str, Any] | str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    repository: str | os.PathLike[str] | ModelRepository,
    options: ExportOptions = ExportOptions(),
    *,
    name: str | None = None,
    version: int | str = "auto",
    metrics: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a checkpoint to ONNX and/or TorchScript, verify it and publish it as a new version.

    Args:
        config: the model's config: a YAML path (original format), a Config or a flat mapping.
        checkpoint: weights file: an original release (`{"state_dict": {"module.*": ...}}`), a
            plain state dict or a sceneparse checkpoint.
        repository: model repository root (created if missing) or a ModelRepository.
        options: how to export (formats, precision, batch size, logits, ...; see ExportOptions).
            With `options.int8` the version's precision is "int8", the default name
            `<dataset>_<arch><layers>_int8`, and the gate's figures go to parity["int8"] (and
            its int8 mIoU to metrics, unless `metrics` is given).
        name: model name in the repository; default `<dataset>_<arch><layers>`.
        version: "auto" (next free number) or an explicit number that must not exist yet.
        metrics: evaluation figures to store in the metadata (default: the checkpoint's own).
        progress: called with the name of each stage as it starts.
    Returns:
        ExportResult. Raises ExportError (VerificationError when parity fails) with one clear
        message; on any failure the repository is left as it was.
    """
    progress = progress or (lambda stage: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    options.check()
    version = parse_version(version)
    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)

    progress("load")
    tick = time.perf_counter()
    cfg = load_config(config)
    info = dataset_info(cfg)
    try:
        suffix = "_int8" if options.int8 is not None else ""
        name = validate_model_name(name or default_model_name(cfg, info.name) + suffix)
    except RepositoryError as exc:
        raise ExportError(str(exc)) from None
    check_repository(repo, name, version)
    check_precision(repo, name, options.precision)
    int8_data = None
    if options.int8 is not None:
        from export.quantize import gate_data

        int8_data = gate_data(cfg, options.int8, list(info.classes))  # lists are checked before heavy work
    checkpoint = check_checkpoint_file(checkpoint)
    model, checkpoint_meta = load_model(cfg, checkpoint)
    sha256 = file_sha256(checkpoint)
    timings["load"] = time.perf_counter() - tick

    crop = (cfg.test_h, cfg.test_w)
    names = tensor_names(options.formats[0])
    mean_std = _mean_std()
    with tempfile.TemporaryDirectory(prefix="sceneparse-export-") as tmp:
        built = build_graph(model, Path(tmp), crop, options, names, progress)
        timings.update(built.seconds)

        progress("verify")
        tick = time.perf_counter()
        parity, inputs = verify_graph(model, built, crop, options, mean_std)
        timings["verify"] = time.perf_counter() - tick
        if options.simplify and options.int8 is None and "onnx" in built.files:
            progress("onnxslim")
            tick = time.perf_counter()
            parity["onnxslim"] = slim(built, options, next(iter(inputs.values())))
            timings["onnxslim"] = time.perf_counter() - tick
        if options.int8 is not None:
            tick = time.perf_counter()
            progress("int8")
            built.files["onnx"], parity["int8"] = _quantize(built.files["onnx"], Path(tmp), cfg, int8_data, crop,
                                                            mean_std, options, names[0], progress)
            if metrics is None and parity["int8"].get("int8_metrics"):
                metrics = parity["int8"]["int8_metrics"]  # the int8 graph's own figures, through the pipeline
            parity["int8"].pop("int8_metrics", None)
            parity["onnxslim"] = {"kept": False, "reason": "not tried for int8"}
            timings["int8"] = time.perf_counter() - tick
        parity["options"] = {"logits": options.logits, "opset": options.opset, "formats": list(options.formats),
                             "seed": options.seed}

        meta = describe(name=name, config=cfg, dataset=info, options=options, files=built.files, names=names,
                        crop=crop, output_hw=built.output_hw, mean_std=mean_std, checkpoint=checkpoint,
                        checkpoint_sha256=sha256, parity=parity,
                        metrics=metrics if metrics is not None else checkpoint_meta.get("metrics") or {})
        files = model_files(meta, options)

        progress("publish")
        tick = time.perf_counter()
        number, path = publish(repo, name, built.files, meta, files, version)
        timings["publish"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    return ExportResult(name=name, version=number, path=path, files=dict(meta.files), metadata=meta,
                        parity=meta.parity, seconds=timings)


def _mean_std() -> tuple[list[float], list[float]]:
    """The normalisation every sceneparse model is trained with (ImageNet's, as the original's)."""
    from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return [float(v) for v in IMAGENET_MEAN], [float(v) for v in IMAGENET_STD]


def _quantize(fp32_path: Path, work: Path, config: Config, data, crop: tuple[int, int],
              mean_std: tuple[list[float], list[float]], options: ExportOptions, input_name: str,
              progress: Progress) -> tuple[Path, dict[str, Any]]:
    """The int8 graph of the verified fp32 one, with the int8 gate's figures (export.quantize)."""
    from export.quantize import build_int8
    from serving.pipeline import InferenceOptions, PipelineSpec

    spec = PipelineSpec(crop[0], crop[1], config.classes, tuple(mean_std[0]), tuple(mean_std[1]), config.base_size)
    inference = InferenceOptions(scales=tuple(config.scales), flip=config.flip)
    int8_dir = work / "int8"
    int8_dir.mkdir()
    return build_int8(fp32_path, int8_dir / fp32_path.name, work, data, spec, inference, options.int8, input_name,
                      options.max_batch_size, progress)
