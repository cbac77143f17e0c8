"""Admission by cost: what a request will cost, known before any pixel is decoded.

A request's cost is the host memory it is estimated to hold at its peak, in bytes. It follows
from the image's size (read from its header: nothing is decoded), the model (crop, classes, base
size, max batch) and the request's options (max_side, scales, flip, output), through the same
geometry the pipeline uses (`scaled_size`, `window_origins`, `windows_per_batch`):

    body        the upload itself, held until the job ends
    image       the image at its own size: the decoded picture, its RGB array and the label map
    inference   the image shrunk to max_side, each scale's normalised and padded copy, and the
                probabilities accumulated over its windows (crops x crop area x classes, summed
                at the processing resolution) with their overlap counts
    batch       one batch of windows in flight: input, logits and probabilities of as many crops
                as the pipeline sends at once (max_batch_size, bounded by the logits' bytes)
    stitch      one band of the probabilities brought back to the inference size for the argmax
                (serving/stitching.py): a few MiB, never the whole (h, w, classes) array
    render      the outputs at the image's size (PNG sources and encoders; the overlay a band
                of float32 at a time)

The stages follow each other, so the peak is body + image + the larger of inference + the larger
of (batch, stitch), which are held together, and render, which comes after the probabilities are
gone. A request over `max_request_cost_mb` is refused with 413 before it takes any place; the
others are charged against `cost_budget_mb`, shared by every admitted request (running or
waiting), so the queue is bounded by cost as well as by count. The constants below were measured
on the pipeline with tracemalloc (tests/serving/test_admission.py checks that the estimate stays
above what the pipeline really allocates); the batch part also counts the softmax's output and
its transposed input, which ONNX Runtime allocates where tracemalloc does not see. ONNX
Runtime's own arena is per model, not per request, and is not part of it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from serving.metrics import GatewayMetrics
from serving.pipeline import PipelineSpec, scaled_size, window_origins, windows_per_batch
from serving.rendering import BAND_PIXELS
from serving.segmentation import SegmentOptions, inference_size
from serving.stitching import BAND_BYTES

MIB = 1024 * 1024
FLOAT32 = 4

# Bytes per pixel of the image at its own size, whatever the output: Pillow's decoded picture (4,
# RGBX), an EXIF-rotated copy (4), the RGB array (3) and the label map (1).
IMAGE_BYTES_PER_PIXEL = 12
# What rendering adds per pixel of the image: the PNG's source and its encoder's buffers; the
# overlay's uint8 result (3) and Pillow's RGBX copy of it (4) beside them, and with a class filter
# the kept photo pixels (3); a class filter makes the colour mask RGBA (4 more); the confidence map
# is a uint8 copy brought back to the image size, its filtered copy and the PNG's source; RLE holds
# a column-major copy of the label map, one class's mask and pycocotools' run buffers.
OUTPUT_BYTES_PER_PIXEL = {"color": 8, "label": 4, "overlay": 12, "confidence": 8, "rle": 12}
# The overlay blends BAND_PIXELS at a time in float32: photo, colours, their sum and the rounded
# copy (12 bytes per pixel each) and the band's colours (3).
OVERLAY_BAND_BYTES_PER_PIXEL = 51
# Per pixel at the inference size: the float32 copy each scale's resize starts from (12), and when
# the image is shrunk, Pillow's resize output and its array (7).
SMALL_BYTES_PER_PIXEL = 12
SHRUNK_BYTES_PER_PIXEL = 7
# Interpreter and library scratch of one request (session output views, PNG state, ...).
FIXED_BYTES = 2 * MIB
# Per pixel of each scale's padded image: the normalised float32 copy and its transient resize
# (3 channels x 4 bytes, twice), the overlap count (4 bytes); the probabilities add classes x 4.
LEVEL_BYTES_PER_PIXEL = 28
# A batch holds its input (3 x 4 bytes per crop pixel) and, per class, the logits and the
# probabilities (2 x 4 bytes), plus one more copy while a flipped window is added.
BATCH_CLASS_COPIES = 3
# One band of the stitch (serving/stitching.py) at the inference size: the scales' running total,
# the bilinear resize's intermediates (the band's input rows, then its columns), each a band of
# (rows, width, classes) float32, and the argmax.
STITCH_BAND_COPIES = 6


class RequestTooCostly(Exception):
    """One request's estimated cost is over the per-request limit (413)."""


class UploadsFull(Exception):
    """Every upload slot is taken (503)."""


class UploadSlots:
    """At most `limit` request bodies are received at once, so uploads hold at most
    `limit x max_body_bytes`; one more is refused at once."""

    def __init__(self, limit: int, metrics: GatewayMetrics | None = None):
        self.limit = limit
        self.metrics = metrics
        self._lock = threading.Lock()
        self._active = 0

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot while the body is read; raises UploadsFull when none is free."""
        with self._lock:
            if self._active >= self.limit:
                raise UploadsFull(f"{self.limit} uploads are already being received")
            self._active += 1
            self._publish()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._publish()

    def _publish(self) -> None:  # called with self._lock held
        if self.metrics is not None:
            self.metrics.uploads.set(self._active)


@dataclass(frozen=True)
class RequestCost:
    """The estimated peak host memory of one request, by part (bytes), and its tile count."""

    body: int
    image: int
    inference: int
    batch: int
    stitch: int
    render: int
    tiles: int

    @property
    def total(self) -> int:
        # Inference with its batches, then the stitch; rendering once the probabilities are gone.
        return self.body + self.image + max(self.inference + max(self.batch, self.stitch), self.render)

    def describe(self) -> str:
        parts = {"image": self.image, "inference": self.inference, "batch": self.batch, "stitch": self.stitch,
                 "render": self.render}
        largest = max(parts, key=parts.get)
        return f"{mib(self.total)} ({self.tiles} crops; the largest part: {largest}, {mib(parts[largest])})"


def mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.0f} MiB" if nbytes >= MIB else f"{nbytes / MIB:.2f} MiB"


def estimate_cost(
    width: int,
    height: int,
    body_bytes: int,
    spec: PipelineSpec,
    options: SegmentOptions,
    max_batch_size: int,
    outputs: tuple[str, ...] = ("color",),
) -> RequestCost:
    """The cost of segmenting a `width` x `height` image (after EXIF orientation) with `options`.

    `outputs` are what is rendered ("color", "label", "overlay", "confidence" PNGs, "rle"; none
    for a plain JSON answer).
    Returns a RequestCost; `total` is in bytes.
    """
    pixels = width * height
    image = pixels * IMAGE_BYTES_PER_PIXEL
    render = pixels * sum(OUTPUT_BYTES_PER_PIXEL.get(kind, 4) for kind in outputs)
    if "overlay" in outputs:
        render += min(pixels, BAND_PIXELS) * OVERLAY_BAND_BYTES_PER_PIXEL

    # The pipeline's own geometry: shrink to max_side (never below base_size), then each scale.
    max_side = max(options.max_side, spec.base_size) if options.max_side else None
    small_h, small_w = inference_size(height, width, max_side)
    shrunk = (small_h, small_w) != (height, width)
    inference = FIXED_BYTES + small_h * small_w * (SMALL_BYTES_PER_PIXEL + (SHRUNK_BYTES_PER_PIXEL if shrunk else 0))
    classes = spec.num_classes
    tiles = 0
    for scale in options.scales:
        new_h, new_w = scaled_size(small_h, small_w, spec.base_size, scale)
        padded_h, padded_w = max(new_h, spec.crop_h), max(new_w, spec.crop_w)
        windows = len(window_origins(padded_h, padded_w, spec.crop_h, spec.crop_w, options.stride_rate))
        tiles += windows * (2 if options.flip else 1)
        inference += padded_h * padded_w * (LEVEL_BYTES_PER_PIXEL + classes * FLOAT32)

    crop = spec.crop_h * spec.crop_w
    in_flight = min(tiles, windows_per_batch(max(1, max_batch_size), classes, spec.crop_h, spec.crop_w))
    batch = in_flight * crop * (3 * FLOAT32 + BATCH_CLASS_COPIES * classes * FLOAT32)
    row_bytes = small_w * classes * FLOAT32
    band_rows = min(small_h, max(1, BAND_BYTES // row_bytes))
    stitch = band_rows * row_bytes * STITCH_BAND_COPIES
    return RequestCost(body=body_bytes, image=image, inference=inference, batch=batch, stitch=stitch, render=render,
                       tiles=tiles)


def over_limit_message(cost: RequestCost, limit_bytes: int, width: int, height: int, options: SegmentOptions,
                       classes: int) -> str:
    """The 413 detail: what the request would cost, the limit, and what to change."""
    scales = ",".join(f"{s:g}" for s in options.scales)
    return (
        f"this request would need an estimated {cost.describe()} of working memory for a {width}x{height} "
        f"image at max_side={options.max_side}, scales={scales}, flip={str(options.flip).lower()}, "
        f"{classes} classes; the limit is max_request_cost_mb={limit_bytes // MIB}. Ask for a smaller "
        "max_side or fewer or smaller scales (or flip=false), or send a smaller image"
    )
