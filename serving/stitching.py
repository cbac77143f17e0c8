"""Each scale's window-averaged probabilities, read back at the image size a band of rows at a time.

The original protocol resizes every scale's probabilities back to the image size, averages the
scales and takes the argmax. On whole arrays that is a full-size (H, W, classes) float32 array
per scale plus their running total: 2.5 GB each for a 2048x2048 image and 150 classes. Here each
scale's average stays at its processing resolution, which the protocol fixes (long side
base_size x scale, whatever the image's size), and `ProbabilityField.bands()` produces the
image-size probabilities a band of rows at a time: for each scale only the input rows the band
needs are resized (serving/resize.py, the same arithmetic as the whole-array resize), the scales
are averaged in the same order, and the band is handed to the caller, who keeps only what it
derives per pixel. A band is at most `BAND_BYTES` (at least one row), so what a request holds
besides its outputs is bounded by the processing resolution, not by the image.

Anything per pixel is produced in the same loop; the label is `label()`, and a confidence map
(the winning class's probability) would be:

    label = np.empty((field.height, field.width), np.uint8)
    confidence = np.empty((field.height, field.width), np.float32)
    for rows, probs in field.bands(check):   # probs: (rows, width, classes) float32, read-only
        label[rows] = probs.argmax(axis=2)
        confidence[rows] = probs.max(axis=2)

The values in every band equal, bit for bit, those of the whole-array computation
(tests/serving/test_stitching.py compares them on random probabilities, several scales and odd
sizes), so labels are the same as before this existed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from serving.cancellation import Check, never_cancelled
from serving.resize import Taps, blend_columns, blend_rows, linear_taps

# Bytes of one band's (rows, width, classes) float32 probabilities. A band's resize holds about four
# arrays of this size at once; 4 MiB keeps that well inside a worker's share of memory while each
# band is still large enough that numpy's per-call overhead does not show (7 rows at 1024 x 150).
BAND_BYTES = 4 * 1024 * 1024
FLOAT32 = 4


class ProbabilityField:
    """The class probabilities of one image, held as each scale's average at its own resolution.

    Args:
        levels: per scale, (h_s, w_s, classes) float32, averaged over windows and flips, padding
            cut off. They are read, never written.
        height, width: the image size the probabilities are read back at.
    """

    def __init__(self, levels: Sequence[np.ndarray], height: int, width: int):
        if not levels:
            raise ValueError("at least one scale is needed")
        classes = {level.shape[2] for level in levels}
        if len(classes) != 1:
            raise ValueError(f"every scale must have the same classes, got {sorted(classes)}")
        self.levels = [np.asarray(level, dtype=np.float32) for level in levels]
        self.height, self.width = int(height), int(width)
        self.num_classes = classes.pop()
        # Per scale: None when it is already at the image size, else the row and column taps of
        # the bilinear resize (align_corners=False) to the image size.
        self._taps: list[tuple[Taps, Taps] | None] = []
        for level in self.levels:
            in_h, in_w = level.shape[:2]
            if (in_h, in_w) == (self.height, self.width):
                self._taps.append(None)
            else:
                self._taps.append((linear_taps(self.height, in_h, False), linear_taps(self.width, in_w, False)))

    @property
    def nbytes(self) -> int:
        """Bytes the scales' probabilities hold."""
        return sum(level.nbytes for level in self.levels)

    def band_rows(self, band_bytes: int = BAND_BYTES) -> int:
        """Rows per band: as many as fit `band_bytes` of (rows, width, classes) float32, at least one."""
        return max(1, int(band_bytes) // (self.width * self.num_classes * FLOAT32))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Probabilities of image rows [start, stop): (stop - start, width, classes) float32.

        Averaged over scales in their order, as the whole-array protocol sums them; may be a
        read-only view of a scale already at the image size.
        """
        if not 0 <= start < stop <= self.height:
            raise ValueError(f"rows [{start}, {stop}) are outside the image's {self.height} rows")
        if len(self.levels) == 1:
            # The whole-array protocol adds the one scale to zeros and divides by 1: the same values.
            band = self._level_rows(0, start, stop)
        else:
            band = np.zeros((stop - start, self.width, self.num_classes), dtype=np.float32)
            for index in range(len(self.levels)):
                band += self._level_rows(index, start, stop)
            band /= len(self.levels)
        return band

    def _level_rows(self, index: int, start: int, stop: int) -> np.ndarray:
        level, taps = self.levels[index], self._taps[index]
        if taps is None:
            view = level[start:stop]
            view.flags.writeable = False  # a caller writing into a band must not change the scale
            return view
        row_taps, column_taps = taps
        # Only the input rows this band blends are read: blend_rows indexes them.
        return blend_columns(blend_rows(level, row_taps[start:stop]), column_taps)

    def bands(self, check: Check = never_cancelled, band_bytes: int = BAND_BYTES) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, probabilities) for consecutive bands of rows covering the image, top to bottom.

        `check` runs before each band (it raises to stop the work, serving/cancellation.py). The
        probabilities are valid until the next band is asked for; do not write into them.
        """
        step = self.band_rows(band_bytes)
        for start in range(0, self.height, step):
            check()
            stop = min(start + step, self.height)
            yield slice(start, stop), self.rows(start, stop)

    def label(self, check: Check = never_cancelled, band_bytes: int = BAND_BYTES) -> np.ndarray:
        """(H, W) argmax class ids: uint8 when the classes fit a byte, else int32."""
        label = np.empty((self.height, self.width), dtype=np.uint8 if self.num_classes <= 256 else np.int32)
        for rows, probs in self.bands(check, band_bytes):
            label[rows] = probs.argmax(axis=2)
        return label

    def full(self, check: Check = never_cancelled) -> np.ndarray:
        """All of it as one (H, W, classes) float32 array: for small images, tests and calibration only."""
        out = np.empty((self.height, self.width, self.num_classes), dtype=np.float32)
        for rows, probs in self.bands(check):
            out[rows] = probs
        return out
