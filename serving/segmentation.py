"""One image through one model: bound the size, run the shared pipeline, give the label back at full size.

Used by the gateway and by `sceneparse predict`, so both answer the same for the same image.
`segment` also gives the per-pixel confidence (the winning class's probability as
round(255 * p), 8 bits) when an output needs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from serving.cancellation import Check, never_cancelled
from serving.float16 import to_float16
from serving.pipeline import (
    InferenceOptions,
    PipelineSpec,
    PipelineStats,
    Runner,
    predict_label,
    window_probabilities,
)
from serving.repository import ModelMetadata


@dataclass(frozen=True)
class SegmentOptions:
    """Per-request choices. `max_side`: long side the image is shrunk to for inference (None: never)."""

    scales: tuple[float, ...]
    flip: bool
    stride_rate: float = 2.0 / 3.0
    max_side: int | None = None

    @classmethod
    def defaults_for(cls, meta: ModelMetadata, max_side: int | None = None) -> SegmentOptions:
        """The model's own test protocol (its scales, flip and stride rate)."""
        return cls(tuple(meta.test_scales), bool(meta.flip), float(meta.stride_rate), max_side)

    def pipeline_options(self) -> InferenceOptions:
        return InferenceOptions(scales=self.scales, flip=self.flip, stride_rate=self.stride_rate)


def inference_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) with the long side at most `max_side`, aspect ratio kept; unchanged when it fits."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    ratio = max_side / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8, bilinear with Pillow's antialiasing when shrinking."""
    height, width = size
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def _nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    return np.minimum(((np.arange(out_size) + 0.5) * in_size / out_size).astype(np.int64), in_size - 1)


def resize_label_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) class ids -> (H, W) by nearest neighbour (pixel centres), dtype kept.

    Also (..., h, w) arrays (probabilities per class): the last two axes are resized.
    """
    out_h, out_w = size
    in_h, in_w = label.shape[-2:]
    rows, cols = _nearest_indices(out_h, in_h), _nearest_indices(out_w, in_w)
    return label[..., rows[:, None], cols[None, :]]


@dataclass
class Prediction:
    """What the pipeline gave for one image: the decoded (H, W, 3) uint8 RGB image, its (H, W) class
    ids and, when asked for, its (H, W) uint8 confidence and its (classes, H, W) float16
    probabilities."""

    image: np.ndarray
    label: np.ndarray
    confidence: np.ndarray | None = None
    probabilities: np.ndarray | None = None


def confidence_levels(winning: np.ndarray) -> np.ndarray:
    """The winning class's probability p as round(255 * p) in uint8 (halves to even, as numpy rounds)."""
    return np.rint(np.asarray(winning, dtype=np.float32) * np.float32(255.0)).astype(np.uint8)


def _from_probabilities(image: np.ndarray, runner: Runner, spec: PipelineSpec, options: InferenceOptions,
                        stats: PipelineStats, confidence: bool, probabilities: bool,
                        check: Check) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(label, confidence or None, (classes, h, w) float16 probabilities or None) at the inference size.

    All three come from one pass over the probabilities, a band of rows at a time
    (serving/stitching.py): no full-size float32 (h, w, classes) array is held.
    """
    field = window_probabilities(image, runner, spec, options, stats, check)
    tick = time.perf_counter()
    height, width, classes = field.height, field.width, field.num_classes
    label = np.empty((height, width), dtype=np.uint8 if classes <= 256 else np.int32)
    levels = np.empty((height, width), dtype=np.uint8) if confidence else None
    planes = np.empty((classes, height, width), dtype=np.float16) if probabilities else None
    for rows, probs in field.bands(check):
        label[rows] = probs.argmax(axis=2)
        if levels is not None:
            # The max is the argmax's own value: the winner's probability.
            levels[rows] = confidence_levels(probs.max(axis=2))
        if planes is not None:
            planes[:, rows] = to_float16(probs).transpose(2, 0, 1)  # numpy's cast, without its slow path
    stats.seconds["stitch"] += time.perf_counter() - tick
    return label, levels, planes


def segment(
    image: np.ndarray,
    runner: Runner,
    meta: ModelMetadata,
    options: SegmentOptions,
    stats: PipelineStats | None = None,
    spec: PipelineSpec | None = None,
    confidence: bool = False,
    probabilities: bool = False,
    check: Check = never_cancelled,
) -> Prediction:
    """`segment_image`'s label map, and what else is asked for, as a Prediction.

    `check` runs at every stage boundary (each resize, each batch, each band of the stitch) and
    raises `RequestCancelled` to stop the work (serving/cancellation.py).

    `confidence`: the (H, W) uint8 confidence map; `probabilities`: the (classes, H, W) float16
    probabilities (offline outputs only: they cost 2 bytes per pixel and class). Both are
    brought back to the input's size as the label is (nearest neighbour), so each pixel's values
    are those of its own label.
    """
    stats = stats if stats is not None else PipelineStats()
    spec = spec or PipelineSpec.from_metadata(meta)
    height, width = image.shape[:2]
    max_side = max(options.max_side, spec.base_size) if options.max_side else None
    small_size = inference_size(height, width, max_side)
    small = image
    if small_size != (height, width):
        check()
        tick = time.perf_counter()
        small = resize_image(image, small_size)
        stats.seconds["preprocess"] += time.perf_counter() - tick
    levels = planes = None
    if confidence or probabilities:
        label, levels, planes = _from_probabilities(small, runner, spec, options.pipeline_options(), stats,
                                                    confidence, probabilities, check)
    else:
        label = predict_label(small, runner, spec, options.pipeline_options(), stats, check)
    del small
    if small_size != (height, width):
        check()
        tick = time.perf_counter()
        label = resize_label_nearest(label, (height, width))
        levels = resize_label_nearest(levels, (height, width)) if levels is not None else None
        planes = resize_label_nearest(planes, (height, width)) if planes is not None else None
        stats.seconds["stitch"] += time.perf_counter() - tick
    return Prediction(image, label, levels, planes)


def segment_image(
    image: np.ndarray,
    runner: Runner,
    meta: ModelMetadata,
    options: SegmentOptions,
    stats: PipelineStats | None = None,
    spec: PipelineSpec | None = None,
    check: Check = never_cancelled,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) class ids (uint8 up to 256 classes, else int32).

    When the long side exceeds `options.max_side` the image is shrunk for inference and the label
    map is brought back with nearest neighbour, so the result always has the input's size.
    `max_side` never goes below the model's base_size: the pipeline brings every image to that
    long side (times each scale) anyway, so shrinking it further would only lose detail, and an
    image of the dataset's own size (Cityscapes 2048x1024, base_size 2048) gets exactly the
    label map that evaluation writes for it.
    """
    return segment(image, runner, meta, options, stats, spec, check=check).label
