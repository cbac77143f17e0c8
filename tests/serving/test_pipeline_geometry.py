"""The original test script's geometry worked by hand: the size each scale resizes to and the
sliding windows. test_pipeline.py compares the pipeline with a transcription of the protocol that
calls `scaled_size` itself, so a mistake there would be on both sides; these numbers come from the
original's formulas (tool/test.py: long side round(scale * base_size), the short side
round(long / long_side * short_side), Python 3's round: halves to even).
"""

from __future__ import annotations

import pytest

from serving.pipeline import scaled_size, window_origins


@pytest.mark.parametrize(("h", "w", "base_size", "scale", "expected"), [
    (300, 400, 512, 1.0, (384, 512)),
    (20, 30, 18, 0.75, (9, 14)),  # long side round(13.5) = 14 (half to even), not 13; short round(9.33) = 9
    (2, 3, 10, 1.0, (7, 10)),  # short side round(6.67) = 7, not 6
    (3, 2, 10, 1.0, (10, 7)),  # portrait: the width is the short side
    (10, 10, 25, 0.5, (12, 12)),  # round(12.5) = 12: half to even, as the original's Python 3 round
    (375, 500, 473, 0.75, (266, 355)),  # ADE20K: round(354.75) = 355, round(266.25) = 266
    (1, 1000, 10, 1.0, (1, 10)),  # never below one pixel (round(0.01) = 0)
])
def test_scaled_size_is_the_originals_rounding(h, w, base_size, scale, expected):
    assert scaled_size(h, w, base_size, scale) == expected


@pytest.mark.parametrize(("h", "w", "expected"), [
    (17, 17, [(0, 0)]),
    # stride ceil(17 * 2/3) = 12; the last window is pulled back inside: 40 - 17 = 23.
    (40, 17, [(0, 0), (12, 0), (23, 0)]),
    (17, 50, [(0, 0), (0, 12), (0, 24), (0, 33)]),
    (29, 29, [(0, 0), (0, 12), (12, 0), (12, 12)]),
])
def test_window_origins_are_the_originals_grid(h, w, expected):
    assert window_origins(h, w, 17, 17) == expected
