"""The band-by-band stitch against the whole-array protocol it replaces: equal to the bit, bounded in memory.

The reference below is the pipeline's last step as it was written before bands (and as the
original test script does it): each scale's probabilities resized to the image size as one
array, summed over scales into a full-size total, divided, argmax. Its resize is transcribed
here on its own, so a mistake in serving/resize.py's taps or blending would show as a difference.
"""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

from serving.cancellation import Checkpoint, RequestCancelled
from serving.pipeline import (
    InferenceOptions,
    PipelineSpec,
    PipelineStats,
    predict_label,
    predict_probabilities,
    window_probabilities,
    windows_per_batch,
)
from serving.repository import ModelMetadata
from serving.segmentation import (
    SegmentOptions,
    confidence_levels,
    inference_size,
    resize_image,
    resize_label_nearest,
    segment,
)
from serving.stitching import ProbabilityField


def reference_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Whole-array bilinear resize (half-pixel centres), rows then columns, as the pipeline had it."""
    def taps(out_size, in_size):
        src = np.clip((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5, 0.0, None)
        lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        return lo, np.minimum(lo + 1, in_size - 1), (src - lo).astype(np.float32)

    if array.shape[:2] == tuple(size):
        return array
    lo, hi, frac = taps(size[0], array.shape[0])
    rows = array[lo] * (1.0 - frac[:, None, None]) + array[hi] * frac[:, None, None]
    lo, hi, frac = taps(size[1], array.shape[1])
    return rows[:, lo] * (1.0 - frac[None, :, None]) + rows[:, hi] * frac[None, :, None]


def reference_total(levels: list[np.ndarray], height: int, width: int) -> np.ndarray:
    total = np.zeros((height, width, levels[0].shape[2]), dtype=np.float32)
    for level in levels:
        total += reference_resize(level, (height, width))
    total /= len(levels)
    return total


def random_levels(rng, shapes, classes):
    """Random probability maps (softmax of random logits) of the given (h, w) per scale."""
    levels = []
    for h, w in shapes:
        logits = rng.standard_normal((h, w, classes), dtype=np.float32) * 4
        e = np.exp(logits - logits.max(-1, keepdims=True))
        levels.append((e / e.sum(-1, keepdims=True)).astype(np.float32))
    return levels


CASES = [
    # (image height, width), per-scale shapes, classes: up- and downsampling, odd sizes, one scale
    # already at the image size, a single row or column, more classes than a byte holds.
    ((37, 53), [(37, 53)], 7),
    ((37, 53), [(19, 27)], 150),
    ((101, 67), [(51, 34), (101, 67), (177, 118)], 21),
    ((30, 400), [(7, 97), (13, 161), (20, 259)], 150),
    ((1, 9), [(3, 5), (1, 9)], 4),
    ((64, 1), [(17, 1)], 3),
    ((45, 46), [(32, 33), (71, 72)], 300),
]


@pytest.mark.parametrize(("size", "shapes", "classes"), CASES)
@pytest.mark.parametrize("band_bytes", [1, 5000, 1 << 30])
def test_bands_equal_the_whole_array_protocol_to_the_bit(size, shapes, classes, band_bytes):
    rng = np.random.default_rng(sum(size) + classes)
    levels = random_levels(rng, shapes, classes)
    height, width = size
    expected = reference_total(levels, height, width)
    field = ProbabilityField(levels, height, width)
    got = np.empty_like(expected)
    seen = []
    for rows, probs in field.bands(band_bytes=band_bytes):
        seen.append((rows.start, rows.stop))
        got[rows] = probs
    # Bands tile the image top to bottom, each within the byte budget (or one row).
    assert seen[0][0] == 0 and seen[-1][1] == height
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert all(stop - start == 1 or (stop - start) * width * classes * 4 <= band_bytes for start, stop in seen)
    assert got.tobytes() == expected.tobytes()
    label = field.label(band_bytes=band_bytes)
    assert label.dtype == (np.uint8 if classes <= 256 else np.int32)
    assert np.array_equal(label, expected.argmax(axis=2))


def test_a_band_cannot_be_written_into_the_scale_it_views():
    level = random_levels(np.random.default_rng(0), [(8, 8)], 3)[0]
    field = ProbabilityField([level], 8, 8)
    _, probs = next(field.bands())
    with pytest.raises(ValueError, match="read-only"):
        probs[0, 0, 0] = 1.0


def test_the_label_never_holds_a_full_size_probability_array():
    """600x800 with 40 classes would be 73 MiB per full-size array (the old path held three)."""
    levels = random_levels(np.random.default_rng(1), [(150, 200), (300, 400)], 40)
    field = ProbabilityField(levels, 600, 800)
    full_bytes = 600 * 800 * 40 * 4
    tracemalloc.start()
    try:
        label = field.label()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert label.shape == (600, 800)
    # The label (0.5 MiB) and about four band-sized arrays (4 MiB each); nothing near 73 MiB.
    assert peak < 24 * 1024 * 1024 < full_bytes / 3, peak


def test_a_deadline_stops_the_stitch_at_the_next_band():
    levels = random_levels(np.random.default_rng(2), [(20, 30)], 5)
    field = ProbabilityField(levels, 100, 150)
    cancelled = threading.Event()
    checkpoint = Checkpoint(cancelled)
    bands = 0
    with pytest.raises(RequestCancelled):
        for _ in field.bands(checkpoint, band_bytes=150 * 5 * 4 * 10):  # 10 rows a band: 10 bands
            bands += 1
            if bands == 3:
                cancelled.set()
    assert bands == 3 and checkpoint.checks == 4


# --- through the pipeline ------------------------------------------------------------------------
SPEC = PipelineSpec(crop_h=17, crop_w=17, num_classes=150, mean=(120.0, 110.0, 100.0), std=(50.0, 55.0, 60.0),
                    base_size=30)


class RandomLogits:
    """A stand-in network: random logits, a pure function of the window's pixels, at half the crop."""

    def __init__(self, classes: int, max_batch_size: int = 4):
        self.classes = classes
        self.max_batch_size = max_batch_size
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        out = np.empty((len(batch), self.classes, 9, 9), dtype=np.float32)
        for i, window in enumerate(batch):
            seed = int(np.abs(window).sum() * 1000) % 2**32
            out[i] = np.random.default_rng(seed).standard_normal((self.classes, 9, 9), dtype=np.float32) * 3
        return out


@pytest.mark.parametrize("shape", [(23, 41), (61, 12), (9, 9)])
@pytest.mark.parametrize(("scales", "flip"), [((1.0,), False), ((0.5, 1.0, 1.75), True)])
def test_the_pipeline_label_is_the_argmax_of_the_whole_array_protocol(shape, scales, flip):
    image = np.random.default_rng(3).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    options = InferenceOptions(scales=scales, flip=flip)
    field = window_probabilities(image, RandomLogits(150), SPEC, options)
    expected = reference_total(field.levels, *shape)
    assert predict_probabilities(image, RandomLogits(150), SPEC, options).tobytes() == expected.tobytes()
    label = predict_label(image, RandomLogits(150), SPEC, options)
    assert label.dtype == np.uint8 and np.array_equal(label, expected.argmax(axis=2))
    # The scales stay at their processing resolution (long side base_size x scale), not the image's.
    assert [level.shape[:2] for level in field.levels] == [
        (max(1, round(30 * s * shape[0] / max(shape))), max(1, round(30 * s * shape[1] / max(shape))))
        for s in scales]


def test_batches_are_bounded_by_their_logits_bytes(monkeypatch):
    per_window = 150 * 17 * 17 * 4
    assert windows_per_batch(8, 150, 17, 17, logits_bytes=3 * per_window) == 3
    assert windows_per_batch(8, 150, 17, 17, logits_bytes=per_window - 1) == 1  # always one at least
    assert windows_per_batch(2, 150, 17, 17, logits_bytes=100 * per_window) == 2
    assert windows_per_batch(8, 150, 473, 473) == 1  # PSPNet on ADE20K: 128 MiB of logits a window
    assert windows_per_batch(8, 19, 713, 713) == 3  # Cityscapes
    image = np.random.default_rng(4).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    unbounded = RandomLogits(150, max_batch_size=8)
    expected = predict_label(image, unbounded, SPEC, InferenceOptions(flip=True))
    monkeypatch.setattr("serving.pipeline.BATCH_LOGITS_BYTES", 2 * per_window)
    bounded, stats = RandomLogits(150, max_batch_size=8), PipelineStats()
    assert np.array_equal(predict_label(image, bounded, SPEC, InferenceOptions(flip=True), stats), expected)
    assert max(bounded.calls) == 2 < max(unbounded.calls) and sum(bounded.calls) == stats.tiles


def test_a_deadline_stops_the_pipeline_before_the_next_batch():
    image = np.random.default_rng(5).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    cancelled = threading.Event()

    class CancelOnFirstBatch(RandomLogits):
        def __call__(self, batch):
            cancelled.set()  # the deadline passes while the first batch runs
            return super().__call__(batch)

    runner = CancelOnFirstBatch(150, max_batch_size=2)
    with pytest.raises(RequestCancelled):
        predict_label(image, runner, SPEC, InferenceOptions(flip=True), check=Checkpoint(cancelled))
    assert runner.calls == [2]


@pytest.mark.parametrize(("shape", "max_side"), [((23, 41), None), ((90, 61), 30)])
def test_confidence_and_probabilities_come_from_the_same_bands_as_the_label(shape, max_side):
    """What `segment` gives besides the label (issue 12's confidence and float16 probabilities)
    equals the whole-array values, also when the image is shrunk for inference and brought back."""
    meta = ModelMetadata(name="m", version=1, arch="psp", layers=18, dataset="d",
                         classes=[f"c{i}" for i in range(150)], palette=[[i, i, i] for i in range(150)],
                         crop_h=SPEC.crop_h, crop_w=SPEC.crop_w, mean=list(SPEC.mean), std=list(SPEC.std),
                         base_size=SPEC.base_size, test_scales=[0.5, 1.0], flip=True)
    image = np.random.default_rng(6).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    options = SegmentOptions((0.5, 1.0), True, 2 / 3, max_side)
    got = segment(image, RandomLogits(150), meta, options, spec=SPEC, confidence=True, probabilities=True)
    small = image if max_side is None else resize_image(image, inference_size(*shape, max(max_side, 30)))
    field = window_probabilities(small, RandomLogits(150), SPEC, options.pipeline_options())
    whole = reference_total(field.levels, *small.shape[:2])
    label, confidence = whole.argmax(axis=2).astype(np.uint8), confidence_levels(whole.max(axis=2))
    planes = np.ascontiguousarray(whole.astype(np.float16).transpose(2, 0, 1))
    if max_side is not None:
        label, confidence, planes = (resize_label_nearest(a, shape) for a in (label, confidence, planes))
    assert np.array_equal(got.label, label)
    assert got.confidence.dtype == np.uint8 and np.array_equal(got.confidence, confidence)
    assert got.probabilities.dtype == np.float16 and got.probabilities.tobytes() == planes.tobytes()
