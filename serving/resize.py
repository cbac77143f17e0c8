"""Bilinear resizing in numpy, whole arrays or a band of output rows at a time.

The pipeline resizes images to each scale (align_corners=False, as cv2.INTER_LINEAR), logits to
the crop (align_corners=True, as the original's F.interpolate) and probabilities back to the image
size. The last one is done a band of rows at a time (serving/stitching.py) so that a request never
holds its full-size (H, W, classes) probabilities; `resize_bilinear` and the band path share the
taps and the two blending steps below, so a band's values are those of the whole-array resize to
the bit: every output element is the same float32 expression of the same two or four inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Taps:
    """For each output index along one axis: the two input indices it blends and the weight of `hi`."""

    lo: np.ndarray  # int64
    hi: np.ndarray  # int64
    frac: np.ndarray  # float32

    def __getitem__(self, rows: slice) -> Taps:
        return Taps(self.lo[rows], self.hi[rows], self.frac[rows])


def linear_taps(out_size: int, in_size: int, align_corners: bool) -> Taps:
    """The taps of a bilinear resize of one axis from `in_size` to `out_size`."""
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
    return Taps(lo, hi, frac)


def blend_rows(array: np.ndarray, taps: Taps) -> np.ndarray:
    """Output rows `taps` of `array` (H, W, ...) resized along axis 0: (len(taps.lo), W, ...) float32."""
    frac = taps.frac.reshape((-1,) + (1,) * (array.ndim - 1))
    return array[taps.lo] * (1.0 - frac) + array[taps.hi] * frac


def blend_columns(array: np.ndarray, taps: Taps) -> np.ndarray:
    """`array` (h, W, ...) resized along axis 1 to len(taps.lo) columns, float32."""
    frac = taps.frac.reshape((1, -1) + (1,) * (array.ndim - 2))
    return array[:, taps.lo] * (1.0 - frac) + array[:, taps.hi] * frac


def resize_bilinear(array: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """Bilinearly resize the first two axes of `array` (H, W, ...) to `size` = (h, w); float32 out.

    Rows first, then columns. Returns `array` itself (as float32) when the size is unchanged.
    """
    array = np.asarray(array, dtype=np.float32)
    out_h, out_w = size
    in_h, in_w = array.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return array
    rows = blend_rows(array, linear_taps(out_h, in_h, align_corners))
    return blend_columns(rows, linear_taps(out_w, in_w, align_corners))
