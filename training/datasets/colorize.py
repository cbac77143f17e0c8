"""Label map -> RGB image through a palette."""

from __future__ import annotations

import numpy as np

from training.datasets.metadata import IGNORE_LABEL


def colorize(label: np.ndarray, palette: np.ndarray, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Paint a label map with a palette.

    Args:
        label: `(H, W)` integer array of train ids in `0..num_classes-1`, or `ignore_label`.
        palette: `(num_classes, 3)` uint8-compatible RGB colours.
        ignore_label: value painted black (0, 0, 0).

    Returns:
        `(H, W, 3)` uint8 RGB image. Raises ValueError for ids outside the palette.
    """
    label = np.asarray(label)
    palette = np.asarray(palette)
    if label.ndim != 2:
        raise ValueError(f"label must be a (H, W) array, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must hold integers, got dtype {label.dtype}")
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0 or len(palette) > 256:
        raise ValueError(f"palette must be (num_classes, 3) with 1..256 rows, got shape {palette.shape}")
    # A 256-entry lookup table makes this one gather for uint8 labels (the common case).
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = palette
    valid = np.zeros(256, dtype=bool)
    valid[: len(palette)] = True
    if 0 <= ignore_label < 256:
        lut[ignore_label] = 0
        valid[ignore_label] = True
    if label.size and label.dtype != np.uint8:
        low, high = int(label.min()), int(label.max())
        if low < 0 or high > 255:
            bad = low if low < 0 else high
            raise ValueError(f"label id {bad} is outside the palette of {len(palette)} classes")
        label = label.astype(np.uint8)
    present = np.unique(label)
    bad_ids = present[~valid[present]]
    if bad_ids.size:
        raise ValueError(
            f"label ids {bad_ids[:10].tolist()} are outside the palette of {len(palette)} classes "
            f"(and not the ignore label {ignore_label})"
        )
    return lut[label]
