"""The one inference pipeline: resize, pad, sliding window, flip, scales, stitching.

This is the original project's test protocol, written once in numpy so that the gateway,
`sceneparse predict` and `sceneparse test` (with a PyTorch runner) share it:

- for each scale, resize the image so its long side is round(base_size * scale) (bilinear);
- pad it to at least the crop with the mean (zero after normalisation), centred;
- slide a crop window with stride ceil(crop * stride_rate) (2/3 in the original);
- each window's softmax (and, with flip, the mirrored window's softmax mirrored back) is averaged
  over the overlaps (the softmax runs in ONNX Runtime, see serving/softmax.py);
- the padding is cut off, the probabilities are resized back to the image size, averaged over
  scales, and the argmax is the label.

Unlike the original, all windows (and their flips) of all scales are sent to the runner in as few
calls as its `max_batch_size` and `BATCH_LOGITS_BYTES` allow, and the last step runs a band of
rows at a time (serving/stitching.py) with the same arithmetic, so memory is bounded by the
processing resolution, never by the image's size. Arrays are float32 throughout; probabilities
are kept as (h, w, classes), so that sums and the final argmax run over contiguous class vectors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from serving.cancellation import Check, never_cancelled
from serving.resize import resize_bilinear
from serving.softmax import channel_softmax_nhwc
from serving.stitching import ProbabilityField

FLOAT32 = 4
# Crop-size float32 logits one batch may hold (the softmax output is as large again): with 150
# classes at 473x473 a window alone is just over this, so such a model runs one window at a time,
# while 19 classes at 713 (Cityscapes) still get three and the tiny test models their max batch.
BATCH_LOGITS_BYTES = 128 * 1024 * 1024


class Runner(Protocol):
    """Anything that maps a normalised batch to logits.

    `__call__(batch)` takes float32 `(N, 3, crop_h, crop_w)` with `1 <= N <= max_batch_size`
    and returns float32 logits `(N, num_classes, h, w)`; if `(h, w)` is not the crop size
    the pipeline upsamples bilinearly with align_corners=True, as the original did.
    """

    max_batch_size: int

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PipelineSpec:
    """What the pipeline needs to know about a model (from its metadata or config)."""

    crop_h: int
    crop_w: int
    num_classes: int
    mean: tuple[float, float, float]  # 0-255 scale, RGB
    std: tuple[float, float, float]
    base_size: int

    @classmethod
    def from_metadata(cls, meta) -> PipelineSpec:
        return cls(meta.crop_h, meta.crop_w, meta.num_classes, tuple(meta.mean), tuple(meta.std), meta.base_size)


@dataclass(frozen=True)
class InferenceOptions:
    scales: tuple[float, ...] = (1.0,)
    flip: bool = True
    stride_rate: float = 2.0 / 3.0


@dataclass
class PipelineStats:
    """Filled in by the pipeline: how many windows it ran and seconds spent per stage."""

    tiles: int = 0
    batches: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"preprocess": 0.0, "inference": 0.0, "stitch": 0.0})


# --- geometry --------------------------------------------------------------------------------
def scaled_size(h: int, w: int, base_size: int, scale: float) -> tuple[int, int]:
    """The (h, w) the original test script resizes to: long side round(scale * base_size)."""
    long_size = round(scale * base_size)
    if h > w:
        return long_size, max(1, round(long_size / float(h) * w))
    return max(1, round(long_size / float(w) * h)), long_size


def window_origins(h: int, w: int, crop_h: int, crop_w: int, stride_rate: float = 2.0 / 3.0) -> list[tuple[int, int]]:
    """Top-left corners of the sliding windows over an (h, w) image padded to >= the crop.

    Windows past the edge are shifted back inside, as in the original.
    """
    stride_h = math.ceil(crop_h * stride_rate)
    stride_w = math.ceil(crop_w * stride_rate)
    grid_h = math.ceil(max(h - crop_h, 0) / stride_h) + 1
    grid_w = math.ceil(max(w - crop_w, 0) / stride_w) + 1
    origins = []
    for index_h in range(grid_h):
        bottom = min(index_h * stride_h + crop_h, h)
        for index_w in range(grid_w):
            right = min(index_w * stride_w + crop_w, w)
            origins.append((bottom - crop_h, right - crop_w))
    return origins


# --- the pipeline ----------------------------------------------------------------------------
def normalize(image: np.ndarray, spec: PipelineSpec) -> np.ndarray:
    """(H, W, 3) RGB pixels 0-255 -> (3, H, W) float32 normalised with the model's mean/std."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return ((np.asarray(image, dtype=np.float32) - mean) / std).transpose(2, 0, 1)


def windows_per_batch(max_batch_size: int, num_classes: int, crop_h: int, crop_w: int,
                      logits_bytes: int | None = None) -> int:
    """How many windows go to the runner at once: at most `max_batch_size`, and at most as many as
    keep the batch's crop-size float32 logits within `logits_bytes` (default BATCH_LOGITS_BYTES);
    at least one."""
    budget = BATCH_LOGITS_BYTES if logits_bytes is None else int(logits_bytes)
    per_window = num_classes * crop_h * crop_w * FLOAT32
    return max(1, min(int(max_batch_size), budget // per_window))


def window_probabilities(
    image: np.ndarray,
    runner: Runner,
    spec: PipelineSpec,
    options: InferenceOptions = InferenceOptions(),
    stats: PipelineStats | None = None,
    check: Check = never_cancelled,
) -> ProbabilityField:
    """Every scale's probabilities, averaged over its windows and flips, at its processing resolution.

    Args:
        image: (H, W, 3) RGB, uint8 or float in 0-255.
        runner: the model (see `Runner`).
        spec: crop size, classes, mean/std, base size.
        options: scales, flip, stride rate.
        stats: optional, filled with tile count and per-stage seconds.
        check: called before each batch; raises to stop the work (serving/cancellation.py).
    Returns:
        a `ProbabilityField` that gives the probabilities at the image size, a band at a time.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if not options.scales:
        raise ValueError("at least one scale is needed")
    stats = stats if stats is not None else PipelineStats()
    height, width = image.shape[:2]
    crop_h, crop_w, classes = spec.crop_h, spec.crop_w, spec.num_classes

    # 1. Preprocess: every scale's padded, normalised image and its windows.
    tick = time.perf_counter()
    levels = []  # (padded (3,H',W'), (pad_top, pad_left, h, w), origins)
    for scale in options.scales:
        new_h, new_w = scaled_size(height, width, spec.base_size, scale)
        scaled = resize_bilinear(image, (new_h, new_w))
        normalised = normalize(scaled, spec)
        del scaled
        pad_h, pad_w = max(crop_h - new_h, 0), max(crop_w - new_w, 0)
        top, left = pad_h // 2, pad_w // 2
        if pad_h or pad_w:
            # Zero after normalisation is the mean before it: the original padded with the mean.
            normalised = np.pad(normalised, ((0, 0), (top, pad_h - top), (left, pad_w - left)))
        origins = window_origins(normalised.shape[1], normalised.shape[2], crop_h, crop_w, options.stride_rate)
        levels.append((normalised, (top, left, new_h, new_w), origins))
    jobs = [(level, oy, ox, flipped) for level, (_, _, origins) in enumerate(levels)
            for oy, ox in origins for flipped in ((False, True) if options.flip else (False,))]
    sums = [np.zeros(lvl[0].shape[1:] + (classes,), dtype=np.float32) for lvl in levels]
    counts = [np.zeros(lvl[0].shape[1:], dtype=np.float32) for lvl in levels]
    stats.tiles += len(jobs)
    stats.seconds["preprocess"] += time.perf_counter() - tick

    # 2. Inference in batches, accumulated as soon as they return. A batch is at most the runner's
    # max_batch_size and at most BATCH_LOGITS_BYTES of logits: with 150 classes at 473x473 one
    # window's logits are 128 MiB, and its softmax as much again. A window and its flip are summed
    # unweighted; the division by 2 x (windows covering a pixel) below is the original's
    # (flip average) / count.
    batch_size = windows_per_batch(runner.max_batch_size, classes, crop_h, crop_w)
    for start in range(0, len(jobs), batch_size):
        check()
        chunk = jobs[start:start + batch_size]
        tick = time.perf_counter()
        batch = np.empty((len(chunk), 3, crop_h, crop_w), dtype=np.float32)
        for i, (level, oy, ox, flipped) in enumerate(chunk):
            window = levels[level][0][:, oy:oy + crop_h, ox:ox + crop_w]
            batch[i] = window[:, :, ::-1] if flipped else window
        stats.seconds["preprocess"] += time.perf_counter() - tick
        tick = time.perf_counter()
        logits = np.asarray(runner(batch), dtype=np.float32)
        del batch
        stats.seconds["inference"] += time.perf_counter() - tick
        stats.batches += 1
        tick = time.perf_counter()
        if logits.ndim != 4 or logits.shape[:2] != (len(chunk), classes):
            raise ValueError(f"runner returned shape {logits.shape}, expected ({len(chunk)}, {classes}, h, w)")
        if logits.shape[2:] != (crop_h, crop_w):
            logits = resize_bilinear(logits.transpose(2, 3, 0, 1), (crop_h, crop_w), align_corners=True)
            logits = np.ascontiguousarray(logits.transpose(2, 3, 0, 1))
        probs = channel_softmax_nhwc(logits)  # (N, crop_h, crop_w, classes)
        del logits
        for i, (level, oy, ox, flipped) in enumerate(chunk):
            p = probs[i][:, ::-1] if flipped else probs[i]
            sums[level][oy:oy + crop_h, ox:ox + crop_w] += p
            if not flipped:
                counts[level][oy:oy + crop_h, ox:ox + crop_w] += 1.0
        del probs
        stats.seconds["stitch"] += time.perf_counter() - tick

    # 3. Average the overlaps and cut the padding, in place at the processing resolution; bringing
    # them to the image size and averaging the scales is the field's, a band at a time.
    check()
    tick = time.perf_counter()
    passes = 2.0 if options.flip else 1.0
    averaged = []
    for level, (_, (top, left, new_h, new_w), _) in enumerate(levels):
        inverse = 1.0 / (passes * counts[level][top:top + new_h, left:left + new_w, None])
        view = sums[level][top:top + new_h, left:left + new_w]
        view *= inverse
        averaged.append(view)
    stats.seconds["stitch"] += time.perf_counter() - tick
    return ProbabilityField(averaged, height, width)


def predict_label(
    image: np.ndarray,
    runner: Runner,
    spec: PipelineSpec,
    options: InferenceOptions = InferenceOptions(),
    stats: PipelineStats | None = None,
    check: Check = never_cancelled,
) -> np.ndarray:
    """(H, W) class ids (uint8 when the classes fit, else int32) for one RGB image.

    The argmax of the probabilities averaged over windows, flips and scales, made a band of rows
    at a time (serving/stitching.py): no full-size (H, W, classes) array is ever held. `check`
    runs before each batch and each band.
    """
    field = window_probabilities(image, runner, spec, options, stats, check)
    tick = time.perf_counter()
    label = field.label(check)
    if stats is not None:
        stats.seconds["stitch"] += time.perf_counter() - tick
    return label


def predict_probabilities(
    image: np.ndarray,
    runner: Runner,
    spec: PipelineSpec,
    options: InferenceOptions = InferenceOptions(),
    stats: PipelineStats | None = None,
) -> np.ndarray:
    """(H, W, num_classes) float32 probabilities averaged over windows, flips and scales.

    Holds the whole array: for small images, tests and calibration. Serving uses `predict_label`
    or `window_probabilities(...).bands()`, which never do.
    """
    field = window_probabilities(image, runner, spec, options, stats)
    tick = time.perf_counter()
    probabilities = field.full()
    if stats is not None:
        stats.seconds["stitch"] += time.perf_counter() - tick
    return probabilities

def validate_scales(scales: Sequence[float], allowed_max: int = 6) -> tuple[float, ...]:
    """Check user-supplied scales: 1..allowed_max values, each within [0.25, 2.0]."""
    scales = tuple(float(s) for s in scales)
    if not 1 <= len(scales) <= allowed_max:
        raise ValueError(f"between 1 and {allowed_max} scales are allowed, got {len(scales)}")
    bad = [s for s in scales if not 0.25 <= s <= 2.0]
    if bad:
        raise ValueError(f"scales must lie within [0.25, 2.0], got {bad}")
    return scales
