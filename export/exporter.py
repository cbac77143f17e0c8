"""`export_checkpoint`: a checkpoint and its config in, a verified, published model version out.

Order of work, chosen so that a failure at any step leaves nothing behind:
1. check the request (formats, version, names, repository path) before any heavy work;
2. load the config and the checkpoint, build the model without its aux head;
3. in a private temporary directory, export each format, run onnx.checker, verify parity with
   eager PyTorch (refusing to go on when it fails), and try onnxslim;
4. publish through `ModelRepository.publish_version`: the files are copied into a staging
   directory inside the model directory and renamed into place under the publish lock.
Only step 4 touches the repository.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from export.errors import ExportError, VerificationError
from export.graph import LOGITS_CHOICES, export_module
from export.onnx_file import OrtRunner, check_onnx, try_onnxslim, write_onnx
from export.quantize import QuantizationOptions
from export.torchscript_file import TorchScriptRunner, write_torchscript
from export.triton_config import DEFAULT_FILENAMES, PLATFORMS, TritonModelConfig, tensor_names
from export.verify import (
    FP16_MIN_ARGMAX_AGREEMENT,
    compare_logits,
    measure_parity,
    probe_inputs,
    require_parity,
)
from serving.repository import (
    COLORS_FILE,
    CONFIG_FILE,
    LABELS_FILE,
    LOCK_FILE,
    ModelMetadata,
    ModelRepository,
    RepositoryError,
    colors_text,
    discard_lock_file,
    labels_text,
    validate_model_name,
)

FORMATS = ("onnx", "torchscript")
# Logits zoomed to the crop inside the graph (the original's zoom_factor 8): ONNX Runtime's Resize
# is about 10x faster than the pipeline's numpy zoom of 150-class logits. "feature" (stride 8)
# suits Triton over a network, where it cuts the response 64x. docs/export.md has the figures.
DEFAULT_LOGITS = "crop"

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


@dataclass(frozen=True)
class ExportOptions:
    """The knobs of one export (see export_checkpoint for their meaning)."""

    formats: tuple[str, ...] = ("onnx",)
    fp16: bool = False
    max_batch_size: int = 8
    opset: int = 17
    logits: str = DEFAULT_LOGITS
    simplify: bool = True
    num_versions: int = 2
    instance_kind: str = "KIND_AUTO"
    seed: int = 0
    int8: QuantizationOptions | None = None  # None: no quantization

    @property
    def precision(self) -> str:
        return "int8" if self.int8 is not None else "fp16" if self.fp16 else "fp32"


# --- step 1: the request -----------------------------------------------------------------------
def _check_options(options: ExportOptions) -> None:
    unknown = [f for f in options.formats if f not in FORMATS]
    if unknown or not options.formats:
        raise ExportError(f"unknown export format(s) {unknown or '(none)'}; choose from {', '.join(FORMATS)}")
    if len(set(options.formats)) != len(options.formats):
        raise ExportError(f"format listed twice: {list(options.formats)}")
    if options.max_batch_size < 1:
        raise ExportError(f"max batch size must be >= 1, got {options.max_batch_size}")
    if not 13 <= options.opset <= 21:
        raise ExportError(f"ONNX opset must be between 13 and 21, got {options.opset}")
    if options.logits not in LOGITS_CHOICES:
        raise ExportError(f"logits must be one of {', '.join(LOGITS_CHOICES)}, got {options.logits!r}")
    if options.int8 is not None:
        if options.fp16:
            raise ExportError("choose one precision: int8 or fp16")
        if tuple(options.formats) != ("onnx",):
            raise ExportError(f"int8 is exported as ONNX only (ONNX Runtime's QDQ format), not {list(options.formats)}")
        options.int8.check()


def _parse_version(version: int | str) -> int | str:
    if version == "auto":
        return version
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise ExportError(f"version must be a positive integer or 'auto', got {version!r}") from None
    if number < 1:
        raise ExportError(f"version must be >= 1, got {number}")
    return number


def _check_precision(repository: ModelRepository, name: str, precision: str) -> None:
    """Refuse early (before any heavy work) a precision other than the model's published one.

    Precision is part of a model's tensor contract (serving.repository.TENSOR_CONTRACT): an
    int8 model lives under a name of its own (default `<name>_int8`), beside its fp32 source,
    so that a rollback or a new version never silently changes a model's accuracy.
    """
    try:
        versions = repository.list_versions(name) if repository.root.is_dir() else []
        newest = repository.read_metadata(name, versions[-1]) if versions else None
    except RepositoryError:
        return  # publish_version judges unreadable versions
    if newest is not None and newest.precision != precision:
        raise ExportError(
            f"model {name!r} serves {newest.precision} versions; precision is part of a model's tensor contract, "
            f"so {precision} goes under a name of its own (e.g. --name {name}_{precision})")


def _check_repository(repository: ModelRepository, name: str, version: int | str) -> None:
    for parent in (repository.root, *repository.root.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"model repository {repository.root}: {parent} is a file, not a directory")
            break
    if version != "auto" and repository.version_dir(name, int(version)).exists():
        raise ExportError(
            f"model {name!r} version {version} already exists in {repository.root}; versions are never overwritten"
        )


# --- step 2: config, dataset metadata, checkpoint ----------------------------------------------
def _load_config(cfg: Any):
    from training.config import ConfigError, config_from_mapping, load_config

    try:
        if isinstance(cfg, (str, os.PathLike)):
            path = Path(cfg)
            if not path.is_file():
                raise ExportError(f"config {path}: no such file")
            return load_config(path)
        if hasattr(cfg, "to_dict"):
            return cfg
        if isinstance(cfg, Mapping):
            return config_from_mapping(cfg)
    except ConfigError as exc:
        raise ExportError(f"config: {exc}") from None
    raise ExportError(f"config must be a YAML path or a mapping, got {type(cfg).__name__}")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_model(config, checkpoint: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    from training.models import CheckpointError, build_model, load_checkpoint

    # The checkpoint replaces every weight: the ImageNet backbone file a training config names
    # (initmodel/resnet50_v2.pth in the original configs) is neither needed nor read.
    if hasattr(config, "merged"):
        config = config.merged({"pretrained_backbone": None})
    else:
        config = {**config, "pretrained_backbone": None}
    try:
        model = build_model(config, aux=False)
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


def _dataset(config):
    from training.datasets import DatasetError, dataset_info_for_config

    try:
        return dataset_info_for_config(config)
    except DatasetError as exc:
        raise ExportError(f"dataset metadata: {exc}") from None


def _mean_std(config) -> tuple[list[float], list[float]]:
    from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = config.get("mean") if hasattr(config, "get") else None
    std = config.get("std") if hasattr(config, "get") else None
    return [float(v) for v in (mean or IMAGENET_MEAN)], [float(v) for v in (std or IMAGENET_STD)]


def default_model_name(config, dataset_name: str) -> str:
    """`<dataset>_<arch><layers>`, e.g. ade20k_pspnet50 or voc2012_psanet101."""
    arch = {"psp": "pspnet", "psa": "psanet"}.get(config["arch"], str(config["arch"]))
    return f"{dataset_name}_{arch}{int(config['layers'])}"


# --- step 3: export and verify ------------------------------------------------------------------
class _EagerReference:
    """Eager fp32 PyTorch: the original module (adaptive pooling untouched) with the chosen zoom."""

    def __init__(self, model: torch.nn.Module, logits: str):
        self.module = copy.deepcopy(model).float().eval()
        self.module.zoom_factor = 8 if logits == "crop" else 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()


def _pipeline_upsample_parity(reference: _EagerReference, runner, inputs: Mapping[str, np.ndarray],
                              crop: tuple[int, int], dtype) -> dict[str, Any]:
    """Stride-8 export: the pipeline's numpy zoom of the exported logits vs PyTorch's in-graph zoom."""
    from serving.pipeline import resize_bilinear

    cases = {}
    for input_name, batch in inputs.items():
        feature = torch.from_numpy(reference(batch))
        expected = F.interpolate(feature, size=crop, mode="bilinear", align_corners=True).numpy()
        got = np.asarray(runner(batch.astype(dtype)), dtype=np.float32)
        got = resize_bilinear(got.transpose(2, 3, 0, 1), crop, align_corners=True).transpose(2, 3, 0, 1)
        cases[input_name] = compare_logits(expected, np.ascontiguousarray(got))
    return {
        "max_abs_delta": max(c["max_abs_delta"] for c in cases.values()),
        "tolerance_used": max(c["tolerance_used"] for c in cases.values()),
        "argmax_agreement": min(c["argmax_agreement"] for c in cases.values()),
        "decisive_agreement": min(c["decisive_agreement"] for c in cases.values()),
        "cases": cases,
    }


def _require_upsample_parity(upsample: Mapping[str, Any], fp16: bool) -> None:
    """The same gate as the graph's: the gateway's masks of a stride-8 export must be PyTorch's."""
    if fp16:
        passed = upsample["argmax_agreement"] >= FP16_MIN_ARGMAX_AGREEMENT
    else:
        passed = upsample["tolerance_used"] <= 1.0 and upsample["decisive_agreement"] == 1.0
    if not passed:
        raise VerificationError(
            f"verification failed ({'fp16' if fp16 else 'fp32'}): the serving pipeline's zoom of the stride-8 "
            f"logits differs from PyTorch's in-graph zoom: max |delta| {upsample['max_abs_delta']:.3g}, argmax "
            f"agreement {100 * upsample['argmax_agreement']:.3f}%; nothing was published")


def _build_files(model, work: Path, crop: tuple[int, int], options: ExportOptions, names: tuple[str, str],
                 mean_std: tuple[list[float], list[float]], timings: dict[str, float], progress: Progress) -> tuple[dict[str, Path], dict[str, Any], tuple[int, int]]:
    """Export each requested format into `work`, verify, slim. Returns (files, parity, output_hw).

    An int8 export gets its fp32 graph verified here; export.quantize turns it into int8 after.
    """
    crop_h, crop_w = crop
    dtype = torch.float16 if options.fp16 else torch.float32
    # Batch 2 when allowed, so that nothing batch-1 specific (squeezes) is baked into the graph.
    example = torch.zeros(min(2, options.max_batch_size), 3, crop_h, crop_w, dtype=dtype)
    try:
        module = export_module(model, crop_h, crop_w, logits=options.logits, fp16=options.fp16)
        with torch.no_grad():
            out_hw = tuple(int(s) for s in module(example).shape[2:])
    except (ValueError, RuntimeError) as exc:
        # e.g. a compact PSANet whose attention map was sized for another crop (train_h vs test_h)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the model does not run at the export crop {crop_h}x{crop_w} (test_h x test_w): {first}") from None
    files: dict[str, Path] = {}
    graphs: dict[str, Any] = {}
    for fmt in options.formats:
        progress(f"export {fmt}")
        tick = time.perf_counter()
        path = work / DEFAULT_FILENAMES[fmt]
        try:
            if fmt == "onnx":
                write_onnx(module, example, path, opset=options.opset, input_name=names[0], output_name=names[1])
                graphs["onnx"] = check_onnx(path)
            else:
                graphs["torchscript"] = write_torchscript(module, example, path)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"{fmt} export failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from exc
        files[fmt] = path
        timings[f"export_{fmt}"] = time.perf_counter() - tick

    progress("verify")
    tick = time.perf_counter()
    reference = _EagerReference(model, options.logits)
    inputs = probe_inputs(crop_h, crop_w, options.max_batch_size, *mean_std, seed=options.seed)
    runners = {}
    if "onnx" in files:
        runners["onnxruntime"] = OrtRunner(files["onnx"])
    if "torchscript" in files:
        runners["torchscript"] = TorchScriptRunner(files["torchscript"])
    precision = "fp16" if options.fp16 else "fp32"
    parity = measure_parity(reference, runners, inputs, precision=precision)
    require_parity(parity)
    if options.logits == "feature":
        first = next(iter(runners.values()))
        parity["pipeline_upsample"] = _pipeline_upsample_parity(
            reference, first, inputs, crop, np.float16 if options.fp16 else np.float32)
        _require_upsample_parity(parity["pipeline_upsample"], options.fp16)
    parity["graph"] = graphs
    timings["verify"] = time.perf_counter() - tick
    del runners

    if "onnx" in files and options.simplify and options.int8 is None:
        progress("onnxslim")
        tick = time.perf_counter()
        probe = next(iter(inputs.values())).astype(np.float16 if options.fp16 else np.float32)
        parity["onnxslim"] = try_onnxslim(files["onnx"], probe)
        if parity["onnxslim"].get("kept"):
            parity["graph"]["onnx"] = check_onnx(files["onnx"])
        timings["onnxslim"] = time.perf_counter() - tick
    return files, parity, out_hw


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


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# --- the whole export --------------------------------------------------------------------------
def export_checkpoint(
    cfg: Any,
    checkpoint: str | os.PathLike[str],
    repository: str | os.PathLike[str] | ModelRepository,
    name: str | None = None,
    formats: Sequence[str] = ("onnx",),
    version: int | str = "auto",
    fp16: bool = False,
    max_batch_size: int = 8,
    opset: int = 17,
    logits: str = DEFAULT_LOGITS,
    simplify: bool = True,
    num_versions: int = 2,
    instance_kind: str = "KIND_AUTO",
    metrics: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    int8: QuantizationOptions | None = None,
) -> ExportResult:
    """Export a checkpoint to ONNX and/or TorchScript, verify it and publish it as a new version.

    Args:
        cfg: the model's config: a YAML path (original format), a Config or a flat mapping.
        checkpoint: weights file: an original release (`{"state_dict": {"module.*": ...}}`), a
            plain state dict or a sceneparse checkpoint.
        repository: model repository root (created if missing) or a ModelRepository.
        name: model name in the repository; default `<dataset>_<arch><layers>`.
        formats: any of "onnx", "torchscript"; the first decides config.pbtxt's platform.
        version: "auto" (next free number) or an explicit number that must not exist yet.
        fp16: export in half precision (float16 input and output tensors).
        max_batch_size: Triton's max_batch_size and the largest verified batch.
        opset: ONNX opset.
        logits: "crop" (the zoom to the crop inside the graph) or "feature" (stride-8 logits;
            the serving pipeline zooms them, corners aligned, to the same result).
        simplify: try onnxslim and keep it when it is measurably faster with equal outputs.
        num_versions: Triton's version_policy latest { num_versions }.
        instance_kind: Triton instance_group kind (KIND_AUTO, KIND_GPU, KIND_CPU).
        metrics: evaluation figures to store in the metadata (default: the checkpoint's own).
        seed: seed of the random verification inputs.
        progress: called with the name of each stage as it starts.
        int8: quantize the verified fp32 ONNX graph to int8 (export.quantize), calibrated and
            gated as these options say; the version's precision is then "int8", the default
            name `<dataset>_<arch><layers>_int8`, and the gate's figures go to parity["int8"]
            (and its int8 mIoU to metrics, unless `metrics` is given).
    Returns:
        ExportResult. Raises ExportError (VerificationError when parity fails) with one clear
        message; on any failure the repository is left as it was.
    """
    progress = progress or (lambda stage: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    options = ExportOptions(tuple(formats), bool(fp16), int(max_batch_size), int(opset), logits, bool(simplify),
                            int(num_versions), instance_kind, int(seed), int8)
    _check_options(options)
    version = _parse_version(version)
    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)

    progress("load")
    tick = time.perf_counter()
    config = _load_config(cfg)
    info = _dataset(config)
    try:
        suffix = "_int8" if options.int8 is not None else ""
        name = validate_model_name(name or default_model_name(config, info.name) + suffix)
    except RepositoryError as exc:
        raise ExportError(str(exc)) from None
    _check_repository(repo, name, version)
    _check_precision(repo, name, options.precision)
    int8_data = None
    if options.int8 is not None:
        from export.quantize import gate_data

        int8_data = gate_data(config, options.int8, list(info.classes))  # lists are checked before heavy work
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ExportError(f"checkpoint {checkpoint}: no such file")
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint {checkpoint}: not a regular file")
    model, checkpoint_meta = _load_model(config, checkpoint)
    sha256 = file_sha256(checkpoint)
    timings["load"] = time.perf_counter() - tick

    crop = (int(config["test_h"]), int(config["test_w"]))
    primary = options.formats[0]
    names = tensor_names(primary)
    precision = options.precision
    mean, std = _mean_std(config)
    with tempfile.TemporaryDirectory(prefix="sceneparse-export-") as tmp:
        files, parity, out_hw = _build_files(model, Path(tmp), crop, options, names, (mean, std), timings, progress)
        if options.int8 is not None:
            tick = time.perf_counter()
            progress("int8")
            files["onnx"], parity["int8"] = _quantize(files["onnx"], Path(tmp), config, int8_data, crop,
                                                      (mean, std), options, names[0], progress)
            if metrics is None and parity["int8"].get("int8_metrics"):
                metrics = parity["int8"]["int8_metrics"]  # the int8 graph's own figures, through the pipeline
            parity["int8"].pop("int8_metrics", None)
            parity["onnxslim"] = {"kept": False, "reason": "not tried for int8"}
            timings["int8"] = time.perf_counter() - tick
        parity["options"] = {"logits": options.logits, "opset": options.opset, "formats": list(options.formats),
                             "seed": options.seed}
        meta = ModelMetadata(
            name=name,
            version=0,  # set by publish_version
            arch=str(config["arch"]),
            layers=int(config["layers"]),
            dataset=info.name,
            classes=list(info.classes),
            palette=[[int(v) for v in row] for row in np.asarray(info.palette)],
            crop_h=crop[0],
            crop_w=crop[1],
            mean=mean,
            std=std,
            ignore_label=int(config.get("ignore_label", 255)),
            base_size=int(config["base_size"]),
            test_scales=[float(s) for s in config["scales"]],
            flip=bool(config.get("flip", True)),
            input_name=names[0],
            output_name=names[1],
            output_hw=None if out_hw == crop else list(out_hw),
            max_batch_size=options.max_batch_size,
            precision=precision,
            platform=PLATFORMS[primary],
            files={fmt: path.name for fmt, path in files.items()},
            checkpoint_sha256=sha256,
            checkpoint_name=checkpoint.name,
            checkpoint_path=str(checkpoint.resolve()),
            tools=tool_versions(),
            parity=_json_safe(parity),
            metrics=_json_safe(dict(metrics if metrics is not None else checkpoint_meta.get("metrics") or {})),
            config=_json_safe(config.to_dict() if hasattr(config, "to_dict") else dict(config)),
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        if meta.num_classes != (out_channels := int(config["classes"])):
            raise ExportError(f"dataset {info.name!r} has {meta.num_classes} classes, the model {out_channels}")
        triton = TritonModelConfig(
            name=name, fmt=primary, input_dims=(3, *crop), output_dims=(meta.num_classes, *out_hw),
            # An int8 (QDQ) graph takes and returns float32: quantization is inside it.
            precision="fp32" if precision == "int8" else precision, max_batch_size=options.max_batch_size, num_versions=options.num_versions,
            instance_kind=options.instance_kind,
        )
        try:
            model_files = {CONFIG_FILE: triton.to_text(), LABELS_FILE: labels_text(meta.classes),
                           COLORS_FILE: colors_text(meta.palette)}
        except ValueError as exc:
            raise ExportError(f"Triton config: {exc}") from None

        progress("publish")
        tick = time.perf_counter()

        def populate(staging: Path) -> ModelMetadata:
            for path in files.values():
                copy_into(path, staging / path.name)
            return meta

        number, path = publish(repo, name, populate, model_files, version)
        timings["publish"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    return ExportResult(name=name, version=number, path=path, files=dict(meta.files), metadata=meta,
                        parity=meta.parity, seconds=timings)


def _quantize(fp32_path: Path, work: Path, config, data, crop: tuple[int, int],
              mean_std: tuple[list[float], list[float]], options: ExportOptions, input_name: str,
              progress: Progress) -> tuple[Path, dict[str, Any]]:
    """The int8 graph of the verified fp32 one, with the int8 gate's figures (export.quantize)."""
    from export.quantize import build_int8
    from serving.pipeline import InferenceOptions, PipelineSpec

    spec = PipelineSpec(crop[0], crop[1], int(config["classes"]), tuple(mean_std[0]), tuple(mean_std[1]),
                        int(config["base_size"]))
    inference = InferenceOptions(scales=tuple(float(s) for s in config["scales"]), flip=bool(config.get("flip", True)))
    int8_dir = work / "int8"
    int8_dir.mkdir()
    return build_int8(fp32_path, int8_dir / fp32_path.name, work, data, spec, inference, options.int8, input_name,
                      options.max_batch_size, progress)


def copy_into(source: Path, target: Path) -> None:
    """Copy one exported file into the staging directory (a separate function so tests can interrupt it)."""
    shutil.copyfile(source, target)


def publish(repo: ModelRepository, name: str, populate, model_files: dict[str, str],
            version: int | str) -> tuple[int, Path]:
    """publish_version, turning its errors into ExportError and removing directories it created for nothing."""
    model_dir = repo.root / name
    created = [p for p in (*reversed(repo.root.parents), repo.root, model_dir) if not p.exists()]
    try:
        return repo.publish_version(name, populate, model_files=model_files, version=version)
    except BaseException as exc:
        # A model directory this call created and that holds no version is removed again, with the
        # model-level files publish_version may have written into it; rmdir leaves anything else.
        if model_dir in created and model_dir.is_dir() and not any(c.name.isdigit() for c in model_dir.iterdir()):
            for file_name in model_files:
                with contextlib.suppress(OSError):
                    (model_dir / file_name).unlink()
            discard_lock_file(model_dir / LOCK_FILE)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        if isinstance(exc, RepositoryError):
            raise ExportError(str(exc)) from None
        if isinstance(exc, OSError):
            raise ExportError(f"cannot write to the model repository {repo.root}: {exc}") from None
        raise
