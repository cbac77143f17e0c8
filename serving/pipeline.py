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
calls as its `max_batch_size` allows. Arrays are float32 throughout; probabilities are kept as
(h, w, classes), so that sums and the final argmax run over contiguous class vectors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from serving.softmax import channel_softmax_nhwc


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


def _linear_taps(out_size: int, in_size: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = np.arange(out_size, dtype=np.float64) * scale
    else:
        # Half-pixel centres, as cv2.INTER_LINEAR and PyTorch's align_corners=False.
        src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
        src = np.clip(src, 0.0, None)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo).astype(np.float32)
    return lo, hi, frac


def resize_bilinear(array: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """Bilinearly resize the first two axes of `array` (H, W, ...) to `size` = (h, w); float32 out."""
    array = np.asarray(array, dtype=np.float32)
    out_h, out_w = size
    in_h, in_w = array.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return array
    lo, hi, frac = _linear_taps(out_h, in_h, align_corners)
    frac = frac.reshape((-1,) + (1,) * (array.ndim - 1))
    rows = array[lo] * (1.0 - frac) + array[hi] * frac
    lo, hi, frac = _linear_taps(out_w, in_w, align_corners)
    frac = frac.reshape((1, -1) + (1,) * (array.ndim - 2))
    return rows[:, lo] * (1.0 - frac) + rows[:, hi] * frac


# --- the pipeline ----------------------------------------------------------------------------
def normalize(image: np.ndarray, spec: PipelineSpec) -> np.ndarray:
    """(H, W, 3) RGB pixels 0-255 -> (3, H, W) float32 normalised with the model's mean/std."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return ((np.asarray(image, dtype=np.float32) - mean) / std).transpose(2, 0, 1)


def predict_probabilities(
    image: np.ndarray,
    runner: Runner,
    spec: PipelineSpec,
    options: InferenceOptions = InferenceOptions(),
    stats: PipelineStats | None = None,
) -> np.ndarray:
    """Class probabilities for one image.

    Args:
        image: (H, W, 3) RGB, uint8 or float in 0-255.
        runner: the model (see `Runner`).
        spec: crop size, classes, mean/std, base size.
        options: scales, flip, stride rate.
        stats: optional, filled with tile count and per-stage seconds.
    Returns:
        (H, W, num_classes) float32, the probabilities averaged over windows, flips and scales.
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

    # 2. Inference in batches of at most max_batch_size, accumulated as soon as they return. A
    # window and its flip are summed unweighted; the division by 2 x (windows covering a pixel)
    # at the end is the original's (flip average) / count.
    batch_size = max(1, int(runner.max_batch_size))
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        tick = time.perf_counter()
        batch = np.empty((len(chunk), 3, crop_h, crop_w), dtype=np.float32)
        for i, (level, oy, ox, flipped) in enumerate(chunk):
            window = levels[level][0][:, oy:oy + crop_h, ox:ox + crop_w]
            batch[i] = window[:, :, ::-1] if flipped else window
        stats.seconds["preprocess"] += time.perf_counter() - tick
        tick = time.perf_counter()
        logits = np.asarray(runner(batch), dtype=np.float32)
        stats.seconds["inference"] += time.perf_counter() - tick
        stats.batches += 1
        tick = time.perf_counter()
        if logits.ndim != 4 or logits.shape[:2] != (len(chunk), classes):
            raise ValueError(f"runner returned shape {logits.shape}, expected ({len(chunk)}, {classes}, h, w)")
        if logits.shape[2:] != (crop_h, crop_w):
            logits = resize_bilinear(logits.transpose(2, 3, 0, 1), (crop_h, crop_w), align_corners=True)
            logits = np.ascontiguousarray(logits.transpose(2, 3, 0, 1))
        probs = channel_softmax_nhwc(logits)  # (N, crop_h, crop_w, classes)
        for i, (level, oy, ox, flipped) in enumerate(chunk):
            p = probs[i][:, ::-1] if flipped else probs[i]
            sums[level][oy:oy + crop_h, ox:ox + crop_w] += p
            if not flipped:
                counts[level][oy:oy + crop_h, ox:ox + crop_w] += 1.0
        stats.seconds["stitch"] += time.perf_counter() - tick

    # 3. Stitch: average overlaps, cut the padding, back to the image size, average scales.
    tick = time.perf_counter()
    passes = 2.0 if options.flip else 1.0
    total = np.zeros((height, width, classes), dtype=np.float32)
    for level, (_, (top, left, new_h, new_w), _) in enumerate(levels):
        inverse = 1.0 / (passes * counts[level][top:top + new_h, left:left + new_w, None])
        averaged = sums[level][top:top + new_h, left:left + new_w] * inverse
        total += resize_bilinear(averaged, (height, width))
    total /= len(levels)
    stats.seconds["stitch"] += time.perf_counter() - tick
    return total


def predict_label(
    image: np.ndarray,
    runner: Runner,
    spec: PipelineSpec,
    options: InferenceOptions = InferenceOptions(),
    stats: PipelineStats | None = None,
) -> np.ndarray:
    """(H, W) class ids (uint8 when the classes fit, else int32) for one RGB image; see predict_probabilities."""
    probs = predict_probabilities(image, runner, spec, options, stats)
    tick = time.perf_counter()
    label = probs.argmax(axis=2)
    label = label.astype(np.uint8 if spec.num_classes <= 256 else np.int32)
    if stats is not None:
        stats.seconds["stitch"] += time.perf_counter() - tick
    return label


def validate_scales(scales: Sequence[float], allowed_max: int = 6) -> tuple[float, ...]:
    """Check user-supplied scales: 1..allowed_max values, each within [0.25, 2.0]."""
    scales = tuple(float(s) for s in scales)
    if not 1 <= len(scales) <= allowed_max:
        raise ValueError(f"between 1 and {allowed_max} scales are allowed, got {len(scales)}")
    bad = [s for s in scales if not 0.25 <= s <= 2.0]
    if bad:
        raise ValueError(f"scales must lie within [0.25, 2.0], got {bad}")
    return scales
