"""float32 -> float16 exactly as numpy's `astype(np.float16)`, without its slow path for tiny values.

numpy converts a float32 that is subnormal or zero in float16 (below 2**-14, about 6.1e-5)
through a scalar routine some 30 times slower than its vector loop for ordinary values, and
probabilities over 150 classes are mostly that small: `predict --probabilities` spent 2.4 s per
512x384 image on the cast alone (bench/outputs.py). Here those values are set aside (0 for the
vector cast), and their float16 bit patterns are computed directly: a float16 subnormal is
m x 2**-24 with its 10-bit mantissa m as the whole bit pattern (m = 1024 is the smallest normal,
0x0400, so the carry of a rounding is right too), and m = rint(|x| x 2**24) rounds to nearest,
ties to even, as IEEE's cast does. The scaling by a power of two is exact in float32. The result
equals numpy's bit for bit (tests/serving/test_float16.py checks every exponent).
"""

from __future__ import annotations

import numpy as np

_SMALLEST_NORMAL = np.float32(2.0**-14)
_SUBNORMAL_STEP = np.float32(2.0**24)  # 1 / float16's smallest subnormal


def to_float16(values: np.ndarray) -> np.ndarray:
    """`np.asarray(values, np.float32).astype(np.float16)`, bit for bit, faster when most values are tiny."""
    values = np.asarray(values, dtype=np.float32)
    magnitude = np.abs(values)
    small = magnitude < _SMALLEST_NORMAL
    out = np.where(small, np.float32(0), values).astype(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):  # only the small values' products are used
        mantissa = np.rint(magnitude * _SUBNORMAL_STEP).astype(np.uint16)
    mantissa |= np.signbit(values).astype(np.uint16) << 15
    np.copyto(out.view(np.uint16), mantissa, where=small)
    return out
