"""Calibration and held-out windows for int8 export: images from a list, cut the way serving cuts them.

Static quantization fixes every activation's int8 range from the tensors it sees while
calibrating, so those tensors must be the ones serving will produce. The windows here are not
re-derived: each image goes through `serving.pipeline.predict_probabilities` itself (resize to
the base size per scale, normalise with the model's mean/std, pad, sliding windows, flips),
with a runner that records the batches it is handed and answers with neutral logits. Whatever
the pipeline feeds a network, calibration sees, including any future change to its geometry.

Images are picked evenly spaced over the list (deterministic, and spread over a list that is
often sorted by scene or city); `held_out` images never overlap the calibration images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.pipeline import InferenceOptions, PipelineSpec, predict_probabilities


@dataclass(frozen=True)
class ListImage:
    """One image of a list file and its label (None when the list has no label column)."""

    image_path: Path
    label_path: Path | None


class _RecordingRunner:
    """A pipeline Runner that keeps every batch and answers with zero logits (uniform softmax)."""

    def __init__(self, num_classes: int, max_batch_size: int = 64):
        self.num_classes = num_classes
        self.max_batch_size = max_batch_size
        self.batches: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(np.array(batch, dtype=np.float32, copy=True))
        n, _, h, w = batch.shape
        return np.zeros((n, self.num_classes, h, w), dtype=np.float32)


def pipeline_windows(image: np.ndarray, spec: PipelineSpec, options: InferenceOptions) -> np.ndarray:
    """The normalised windows the serving pipeline feeds the network for `image`.

    Args:
        image: (H, W, 3) RGB, uint8 or float in 0-255.
        spec, options: the deployed model's geometry and test protocol (scales, flip, stride).
    Returns:
        float32 (N, 3, crop_h, crop_w): every window of every scale, and its mirror when
        `options.flip`, in the pipeline's order.
    """
    recorder = _RecordingRunner(spec.num_classes)
    predict_probabilities(image, recorder, spec, options)
    return np.concatenate(recorder.batches, axis=0)


def read_list_images(list_path: str | Path, data_root: str | Path) -> list[ListImage]:
    """Every image of a list file in the original format (one or two columns), paths resolved.

    Raises `training.data.lists.DataListError` (a ValueError) naming the file and line when the
    list is missing, malformed or names a file that does not exist.
    """
    from training.data.lists import parse_list

    # "test" accepts one or two columns: calibration needs no labels, the mIoU gate checks for them.
    entries = parse_list(list_path, data_root, "test")
    return [ListImage(Path(e.image_path), Path(e.label_path) if e.label_path else None) for e in entries]


def evenly_spaced(items: Sequence, count: int, exclude: Sequence = ()) -> list:
    """Up to `count` items spread evenly over `items` (first and last included), skipping `exclude`."""
    pool = [item for item in items if item not in set(exclude)]
    if count <= 0 or not pool:
        return []
    if count >= len(pool):
        return list(pool)
    positions = np.linspace(0, len(pool) - 1, count).round().astype(int)
    return [pool[i] for i in positions]


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; ValueError naming the file when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def windows_of(images: Sequence[ListImage], spec: PipelineSpec, options: InferenceOptions) -> Iterator[np.ndarray]:
    """Yield each image's pipeline windows, float32 (n, 3, crop_h, crop_w), one image at a time."""
    for item in images:
        yield pipeline_windows(read_rgb(item.image_path), spec, options)


class WindowReader:
    """An `onnxruntime.quantization.CalibrationDataReader` over the pipeline windows of some images.

    Feeds one window per call (batch 1), so the calibration's memory does not grow with the
    number of windows an image has. `windows` counts what was fed.
    """

    def __init__(self, input_name: str, images: Sequence[ListImage], spec: PipelineSpec,
                 options: InferenceOptions, progress=None):
        self.input_name = input_name
        self.images = list(images)
        self.spec, self.options = spec, options
        self.progress = progress
        self.windows = 0
        self._iterator: Iterator[dict[str, np.ndarray]] | None = None

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for batch in windows_of(self.images, self.spec, self.options):
            for window in batch:
                self.windows += 1
                yield {self.input_name: window[None]}
            if self.progress is not None:
                self.progress.update(1)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iterator is None:
            self._iterator = self._feeds()
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = None
        self.windows = 0
