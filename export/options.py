"""`ExportOptions`: the knobs of one export, checked before any heavy work."""

from __future__ import annotations

from dataclasses import dataclass

from export.errors import ExportError
from export.graph import LOGITS_CHOICES
from export.quantize import QuantizationOptions
from export.triton_config import DEFAULT_MAX_QUEUE_SIZE

FORMATS = ("onnx", "torchscript")
# Logits zoomed to the crop inside the graph (the original's zoom_factor 8): ONNX Runtime's Resize
# is about 10x faster than the pipeline's numpy zoom of 150-class logits. "feature" (stride 8)
# suits Triton over a network, where it cuts the response 64x. docs/export.md has the figures.
DEFAULT_LOGITS = "crop"


@dataclass(frozen=True)
class ExportOptions:
    """How to export a checkpoint (the same for every export of a manifest's defaults).

    Attributes:
        formats: any of "onnx", "torchscript"; the first decides config.pbtxt's platform.
        fp16: export in half precision (float16 input and output tensors).
        max_batch_size: Triton's max_batch_size and the largest verified batch.
        opset: ONNX opset (13 to 21).
        logits: "crop" (the zoom to the crop inside the graph) or "feature" (stride-8 logits;
            the serving pipeline zooms them, corners aligned, to the same result).
        simplify: try onnxslim and keep it when it is measurably faster with equal outputs.
        num_versions: Triton's version_policy latest { num_versions }.
        instance_kind: Triton instance_group kind (KIND_AUTO, KIND_GPU, KIND_CPU).
        seed: seed of the random verification inputs.
        int8: quantize the verified fp32 ONNX graph to int8 (export.quantize), calibrated and
            gated as these options say; None exports fp32 or fp16.
        triton_max_queue_size: config.pbtxt's dynamic_batching default_queue_policy max_queue_size:
            requests Triton queues for the model before it rejects more (the gateway answers 503).
    """

    formats: tuple[str, ...] = ("onnx",)
    fp16: bool = False
    max_batch_size: int = 8
    opset: int = 17
    logits: str = DEFAULT_LOGITS
    simplify: bool = True
    num_versions: int = 2
    instance_kind: str = "KIND_AUTO"
    seed: int = 0
    int8: QuantizationOptions | None = None
    triton_max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE

    def __post_init__(self) -> None:
        # A list from a manifest or the CLI becomes the tuple the frozen dataclass promises.
        object.__setattr__(self, "formats", tuple(self.formats))

    @property
    def precision(self) -> str:
        return "int8" if self.int8 is not None else "fp16" if self.fp16 else "fp32"

    def check(self) -> None:
        """Raise ExportError naming the first bad option."""
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ExportError(f"unknown export format(s) {unknown or '(none)'}; choose from {', '.join(FORMATS)}")
        if len(set(self.formats)) != len(self.formats):
            raise ExportError(f"format listed twice: {list(self.formats)}")
        if self.max_batch_size < 1:
            raise ExportError(f"max batch size must be >= 1, got {self.max_batch_size}")
        if self.triton_max_queue_size < 1:
            raise ExportError(f"Triton max queue size must be >= 1, got {self.triton_max_queue_size}")
        if not 13 <= self.opset <= 21:
            raise ExportError(f"ONNX opset must be between 13 and 21, got {self.opset}")
        if self.logits not in LOGITS_CHOICES:
            raise ExportError(f"logits must be one of {', '.join(LOGITS_CHOICES)}, got {self.logits!r}")
        if self.int8 is not None:
            if self.fp16:
                raise ExportError("choose one precision: int8 or fp16")
            if self.formats != ("onnx",):
                raise ExportError(f"int8 is exported as ONNX only (ONNX Runtime's QDQ format), not {list(self.formats)}")
            self.int8.check()


def parse_version(version: int | str) -> int | str:
    """"auto" or a version number >= 1; ExportError otherwise."""
    if version == "auto":
        return version
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise ExportError(f"version must be a positive integer or 'auto', got {version!r}") from None
    if number < 1:
        raise ExportError(f"version must be >= 1, got {number}")
    return number
