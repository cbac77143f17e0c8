"""int8 export: ONNX Runtime static quantization (QDQ, per-channel weights) and its accuracy gate.

`build_int8` takes the verified fp32 ONNX graph of an export and
1. calibrates it on the pipeline windows of N images of a list (export.calibration: the same
   resize, normalisation, padding, windows and flips that serving uses), with ONNX Runtime's
   `quantize_static` (QDQ format, uint8 activations, int8 symmetric per-channel weights,
   MinMax ranges unless asked otherwise; `quant_pre_process` first, as ORT recommends);
2. keeps in fp32 the node groups named in `keep_fp32` ("classifier": the last convolution and
   what follows it up to the logits; "attention": PSANet's attention branch; docs/export.md
   has the measurements behind the default);
3. measures, against the fp32 graph it came from,
   - the argmax agreement on held-out crops: the pipeline windows of images that calibration
     never saw (the val list's, else the calibration list's remaining images), and
   - when the val list has labels, the mIoU of both graphs through the serving pipeline
     (`serving.pipeline.predict_label`, areas and averaging from `training.metrics`);
4. refuses the result (`Int8GateError`, nothing published) when the agreement is below
   `min_agreement` or the mIoU drops by more than `max_miou_drop`; the message gives both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.calibration import ListImage, WindowReader, evenly_spaced, read_list_images, read_rgb, windows_of
from export.errors import ExportError, VerificationError
from serving.pipeline import InferenceOptions, PipelineSpec, predict_label
from training.config import Config
from training.datasets import label_mapping

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
FP32_GROUPS = ("classifier", "attention")
DEFAULT_KEEP_FP32 = ("classifier",)
MIN_AGREEMENT = 0.99
MAX_MIOU_DROP = 0.005  # 0.5 mIoU points


class Int8GateError(VerificationError):
    """The int8 graph is not close enough to the fp32 one; `figures` holds what was measured."""

    def __init__(self, message: str, figures: dict[str, Any]):
        super().__init__(message)
        self.figures = figures


@dataclass(frozen=True)
class QuantizationOptions:
    """How an int8 export is calibrated and gated.

    calibration_list: list file of calibration images (None: the config's train_list).
    calibration_images: how many of its images (evenly spaced) to calibrate on.
    val_list: list of held-out images (None: the config's val_list); with labels it also feeds
        the mIoU gate.
    holdout_images: images whose windows measure the argmax agreement.
    gate_images: val images for the mIoU gate (0: the whole list).
    min_agreement: lowest argmax agreement with fp32 on the held-out crops, in [0, 1].
    max_miou_drop: largest mIoU drop from fp32 to int8 through the pipeline (0.005 = 0.5 points).
    keep_fp32: node groups left in fp32 (see FP32_GROUPS).
    method: calibration method, one of CALIBRATION_METHODS.
    per_channel: per-channel weight scales (per-tensor when False).
    reduce_range: 7-bit weights (ONNX Runtime's advice for x86 without VNNI, where u8 x s8 products
        are summed in saturating int16); None: decided by the exporting CPU (sceneparse.cpu.has_vnni).
    """

    calibration_list: str | None = None
    calibration_images: int = 32
    val_list: str | None = None
    holdout_images: int = 8
    gate_images: int = 0
    min_agreement: float = MIN_AGREEMENT
    max_miou_drop: float = MAX_MIOU_DROP
    keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32
    method: str = "minmax"
    per_channel: bool = True
    reduce_range: bool | None = None

    def resolved_reduce_range(self) -> bool:
        if self.reduce_range is not None:
            return self.reduce_range
        from sceneparse.cpu import has_vnni, is_x86

        return is_x86() and not has_vnni()

    def check(self) -> None:
        """Raise ExportError naming the first option out of range."""
        if self.calibration_images < 1:
            raise ExportError(f"--calibration-images must be >= 1, got {self.calibration_images}")
        if self.holdout_images < 1:
            raise ExportError(f"--holdout-images must be >= 1, got {self.holdout_images}")
        if self.gate_images < 0:
            raise ExportError(f"--gate-images must be >= 0 (0: the whole val list), got {self.gate_images}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ExportError(f"--min-agreement must lie within [0, 1], got {self.min_agreement}")
        if not 0.0 <= self.max_miou_drop <= 1.0:
            raise ExportError(f"--max-miou-drop must lie within [0, 1], got {self.max_miou_drop}")
        unknown = [g for g in self.keep_fp32 if g not in FP32_GROUPS]
        if unknown:
            raise ExportError(f"--keep-fp32: unknown group(s) {unknown}; choose from {', '.join(FP32_GROUPS)}")
        if self.method not in CALIBRATION_METHODS:
            raise ExportError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")


@dataclass(frozen=True)
class GateData:
    """Where the int8 step reads its images and how it scores them (from the export's config)."""

    calibration_list: str
    calibration: list[ListImage]
    held_out: list[ListImage]
    scored: list[ListImage]  # images with labels for the mIoU gate (empty: not measured)
    unscored_reason: str  # why `scored` is empty
    ignore_label: int = 255
    label_mapping: Any = None
    class_names: tuple[str, ...] = ()


# --- the images ------------------------------------------------------------------------------
def gate_data(config: Config, options: QuantizationOptions, class_names: Sequence[str]) -> GateData:
    """Pick calibration, held-out and scored images from the lists `options` and `config` name.

    Raises ExportError when there is no calibration list, it has no readable entries, or no
    image is left over for the agreement measurement.
    """
    data_root = config.data_root or "."
    calibration_list = options.calibration_list or config.train_list
    if not calibration_list:
        raise ExportError("int8 export needs calibration images: give --calibration LIST (the config has no train_list)")
    try:
        pool = read_list_images(calibration_list, data_root)
    except (ValueError, OSError) as exc:
        raise ExportError(f"calibration list: {exc}") from None
    if not pool:
        raise ExportError(f"calibration list {calibration_list} lists no images")
    calibration = evenly_spaced(pool, options.calibration_images)

    val_list = options.val_list or config.val_list
    val: list[ListImage] = []
    unscored = ""
    if val_list:
        try:
            val = read_list_images(val_list, data_root)
        except (ValueError, OSError) as exc:
            if options.val_list:
                raise ExportError(f"val list: {exc}") from None
            unscored = f"the config's val list cannot be used ({exc})"
    else:
        unscored = "no val list (give --val-list or set val_list in the config)"
    used = {item.image_path for item in calibration}
    unseen = [item for item in (val or pool) if item.image_path not in used]
    held_out = evenly_spaced(unseen, options.holdout_images)
    if not held_out:
        raise ExportError(
            f"no held-out images for the int8 agreement check: every image of {val_list if val else calibration_list} "
            "was used for calibration (give --val-list, or fewer --calibration-images)")
    labelled = [item for item in val if item.label_path is not None]
    if val and len(labelled) < len(val):
        unscored = f"the val list {val_list} has {len(val) - len(labelled)} image(s) without a label"
        labelled = []
    scored = labelled if options.gate_images == 0 else evenly_spaced(labelled, options.gate_images)

    mapping = label_mapping(config.dataset, config.ignore_label) if scored else None
    return GateData(str(calibration_list), calibration, held_out, scored, unscored, config.ignore_label, mapping,
                    tuple(class_names))


# --- quantization ----------------------------------------------------------------------------
def _producer_map(graph) -> dict[str, Any]:
    return {output: node for node in graph.node for output in node.output}


def fp32_node_names(model, groups: Sequence[str]) -> dict[str, list[str]]:
    """Node names of each group in an ONNX ModelProto (names from torch.onnx's module paths).

    classifier: walking back from the graph output, every node up to and including the first
        Conv (the 1x1 classifier, and the Resize that zooms its logits to the crop).
    attention: PSANet's attention branch (`/psa/` nodes but its reduce and projection convs).
    """
    graph = model.graph
    producers = _producer_map(graph)
    found: dict[str, list[str]] = {}
    for group in groups:
        names: list[str] = []
        if group == "classifier":
            frontier = [o.name for o in graph.output]
            seen: set[str] = set()
            while frontier:
                node = producers.get(frontier.pop())
                if node is None or node.name in seen:
                    continue
                seen.add(node.name)
                names.append(node.name)
                if node.op_type != "Conv":
                    frontier.extend(i for i in node.input if i in producers)
        elif group == "attention":
            names = [n.name for n in graph.node if n.name.startswith("/psa/")
                     and not n.name.startswith(("/psa/reduce", "/psa/proj"))]
        found[group] = names
    return found


def quantize_graph(fp32_path: Path, int8_path: Path, reader, options: QuantizationOptions,
                   work: Path) -> dict[str, Any]:
    """Calibrate and quantize `fp32_path` into `int8_path` (QDQ). Returns what was done.

    `reader` is an onnxruntime CalibrationDataReader (`get_next()` -> {input name: batch} or None),
    normally a WindowReader; its `windows` attribute, when present, is reported.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    prepared = work / "model.prepared.onnx"
    # ORT's own warnings about pre-processing and the like would otherwise flood the console.
    quant_log = logging.getLogger("root")
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared), load_external_data=False)
        excluded = fp32_node_names(model, options.keep_fp32)
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        # No CalibMaxIntermediateOutputs: in onnxruntime 1.32 it discards the ranges it gathered
        # (clear_collected_data without compute_data). MinMax keeps two scalars per tensor and
        # window anyway; entropy and percentile keep histograms of whole tensors (memory-hungry).
        quantize_static(
            str(prepared), str(int8_path), reader, quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
            reduce_range=options.resolved_reduce_range(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=[n for names in excluded.values() for n in names],
            calibrate_method=methods[options.method],
        )
    finally:
        quant_log.setLevel(level)
        prepared.unlink(missing_ok=True)
    quantized = onnx.load(str(int8_path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in quantized.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "calibration_windows": getattr(reader, "windows", None),
        "kept_fp32": {group: len(names) for group, names in excluded.items()},
        "quantize_linear_nodes": ops.get("QuantizeLinear", 0),
        "dequantize_linear_nodes": ops.get("DequantizeLinear", 0),
        "bytes": Path(int8_path).stat().st_size,
        "seconds": time.perf_counter() - started,
    }


# --- the gate --------------------------------------------------------------------------------
class BatchedRunner:
    """A (N, 3, h, w) -> logits callable with the `max_batch_size` the pipeline reads."""

    def __init__(self, call, max_batch_size: int):
        self.call = call
        self.max_batch_size = max_batch_size

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.call(batch), dtype=np.float32)


def argmax_agreement(reference, candidate, images: Sequence[ListImage], spec: PipelineSpec,
                     options: InferenceOptions, batch_size: int) -> dict[str, Any]:
    """Share of pixels whose argmax agrees between two runners on the images' pipeline windows."""
    from tqdm import tqdm

    agree = pixels = crops = 0
    windows_per_image = windows_of(images, spec, options)
    for windows in tqdm(windows_per_image, total=len(images), desc="int8 gate: agreement", unit="img",
                        disable=None, leave=False, dynamic_ncols=True):
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            expected, got = reference(batch), candidate(batch)
            agree += int((expected.argmax(1) == got.argmax(1)).sum())
            pixels += int(expected.shape[0] * expected.shape[2] * expected.shape[3])
            crops += len(batch)
    return {"argmax_agreement": agree / max(pixels, 1), "crops": crops, "images": len(images), "pixels": pixels}


def pipeline_scores(runners: dict[str, BatchedRunner], data: GateData, spec: PipelineSpec,
                    options: InferenceOptions) -> dict[str, dict[str, Any]]:
    """mIoU/mAcc/aAcc of each runner through the serving pipeline on the scored images.

    Areas and averaging are `training.metrics`' (AreaMeter with its default absent-class policy).
    """
    from tqdm import tqdm

    from training.evaluate import read_class_map
    from training.metrics import AreaMeter

    meters = {name: AreaMeter(spec.num_classes, data.ignore_label) for name in runners}
    for item in tqdm(data.scored, desc="int8 gate: mIoU fp32 and int8", unit="img", disable=None, leave=False,
                     dynamic_ncols=True):
        image = read_rgb(item.image_path)
        target = read_class_map(item.label_path, "label")
        if data.label_mapping is not None:
            target = data.label_mapping(target)
        for name, runner in runners.items():
            label = predict_label(image, runner, spec, options)
            if label.shape != target.shape:
                raise ExportError(f"label {item.label_path} is {target.shape[1]}x{target.shape[0]}, "
                                  f"its image {label.shape[1]}x{label.shape[0]}")
            try:
                meters[name].update(label, target)
            except ValueError as exc:
                raise ExportError(f"label {item.label_path}: {exc}") from None
    names = list(data.class_names) or None
    return {name: meter.summary(names) for name, meter in meters.items()}


def measure_int8(fp32_path: Path, int8_path: Path, data: GateData, spec: PipelineSpec,
                 options: InferenceOptions, quant: QuantizationOptions, batch_size: int,
                 threads: int | None = None) -> dict[str, Any]:
    """Both gate figures of an int8 graph against its fp32 source; `passed` says whether it may ship."""
    from export.onnx_file import OrtRunner

    fp32 = BatchedRunner(OrtRunner(fp32_path, threads), batch_size)
    int8 = BatchedRunner(OrtRunner(int8_path, threads), batch_size)
    figures: dict[str, Any] = {"criteria": {"min_agreement": quant.min_agreement, "max_miou_drop": quant.max_miou_drop}}
    tick = time.perf_counter()
    figures["agreement"] = argmax_agreement(fp32, int8, data.held_out, spec, options, batch_size)
    figures["argmax_agreement"] = figures["agreement"]["argmax_agreement"]
    if data.scored:
        scores = pipeline_scores({"fp32": fp32, "int8": int8}, data, spec, options)
        figures["miou"] = {"fp32": scores["fp32"]["mIoU"], "int8": scores["int8"]["mIoU"],
                           "images": len(data.scored), "absent": scores["int8"].get("absent")}
        figures["miou_drop"] = float(scores["fp32"]["mIoU"] - scores["int8"]["mIoU"])
        figures["int8_metrics"] = scores["int8"]
    else:
        figures["miou"] = None
        figures["miou_drop"] = None
        figures["miou_not_measured"] = data.unscored_reason
    figures["seconds"] = time.perf_counter() - tick
    agreement_ok = figures["argmax_agreement"] >= quant.min_agreement
    drop = figures["miou_drop"]
    miou_ok = drop is None or (not np.isnan(drop) and drop <= quant.max_miou_drop + 1e-12)
    figures["passed"] = bool(agreement_ok and miou_ok)
    return figures


def describe_gate(figures: dict[str, Any]) -> str:
    """One line with both gate figures, e.g. for the CLI and for a refusal."""
    crit = figures["criteria"]
    text = (f"argmax agreement with fp32 {100 * figures['argmax_agreement']:.3f}% on "
            f"{figures['agreement']['crops']} held-out crops (min {100 * crit['min_agreement']:.2f}%)")
    if figures.get("miou") is not None:
        miou = figures["miou"]
        text += (f"; mIoU through the pipeline fp32 {100 * miou['fp32']:.2f} -> int8 {100 * miou['int8']:.2f} "
                 f"(drop {100 * figures['miou_drop']:+.2f} points, max {100 * crit['max_miou_drop']:.2f}) "
                 f"on {miou['images']} val images")
    else:
        text += f"; mIoU drop not measured: {figures.get('miou_not_measured', 'no labelled val images')}"
    return text


def require_int8_gate(figures: dict[str, Any]) -> None:
    """Raise Int8GateError with both figures when `figures` (from measure_int8) did not pass."""
    if not figures["passed"]:
        raise Int8GateError(f"int8 gate failed: {describe_gate(figures)}; nothing was published", figures)


def build_int8(fp32_path: Path, int8_path: Path, work: Path, data: GateData, spec: PipelineSpec,
               options: InferenceOptions, quant: QuantizationOptions, input_name: str, batch_size: int,
               progress=None) -> tuple[Path, dict[str, Any]]:
    """Quantize the verified fp32 graph at `fp32_path` into `int8_path`, gate it; returns (int8_path, figures).

    `work` is a scratch directory; `data` (from `gate_data`, picked before any heavy work) says
    which images calibrate, which are held out and which are scored; `spec` and `options` are
    the deployed pipeline's. `progress` (None: quiet) is called with "int8 gate" after calibration.

    Raises Int8GateError (a VerificationError) when the gate fails, ExportError for missing
    or unreadable calibration data.
    """
    from tqdm import tqdm

    quant.check()
    bar = tqdm(total=len(data.calibration), desc="calibrate", unit="img", disable=True if progress is None else None,
               dynamic_ncols=True, leave=False)
    try:
        reader = WindowReader(input_name, data.calibration, spec, options, progress=bar)
        try:
            done = quantize_graph(fp32_path, int8_path, reader, quant, work)
        except ExportError:
            raise
        except ValueError as exc:  # an unreadable calibration image, a bad list entry
            raise ExportError(f"calibration: {exc}") from None
        except Exception as exc:
            raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {str(exc).strip()[:300]}") from exc
    finally:
        bar.close()
    if progress is not None:
        progress("int8 gate")
    figures = measure_int8(fp32_path, int8_path, data, spec, options, quant, batch_size)
    figures.update(
        options=_json_options(quant),
        quantization=done,
        calibration={"list": data.calibration_list,
                     "images": [str(i.image_path) for i in data.calibration], "windows": done["calibration_windows"]},
        held_out_images=[str(i.image_path) for i in data.held_out],
    )
    require_int8_gate(figures)
    return int8_path, figures


def _json_options(quant: QuantizationOptions) -> dict[str, Any]:
    from sceneparse.cpu import describe_cpu

    values = asdict(quant)
    values["keep_fp32"] = list(quant.keep_fp32)
    values["reduce_range"] = quant.resolved_reduce_range()
    values["measured_on"] = describe_cpu()  # the gate ran this CPU's int8 kernels
    values.update(format="QDQ", activations="uint8 (asymmetric, per tensor)",
                  weights="int8 (symmetric, " + ("per channel)" if quant.per_channel else "per tensor)"))
    return values
