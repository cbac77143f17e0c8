"""`to_float16` equals numpy's float32 -> float16 cast bit for bit, subnormals and ties included."""

from __future__ import annotations

import numpy as np

from serving.float16 import to_float16


def _same_bits(values: np.ndarray) -> bool:
    return np.array_equal(to_float16(values).view(np.uint16), values.astype(np.float16).view(np.uint16))


def test_every_float32_exponent_and_sign():
    # A stride through all float32 bit patterns: every exponent, many mantissas, both signs.
    bits = np.arange(0, 2**31, 4099, dtype=np.uint32)
    values = bits.view(np.float32)
    values = values[np.isfinite(values)]
    with np.errstate(over="ignore"):
        assert _same_bits(np.concatenate([values, -values]))


def test_float16_subnormals_ties_and_the_boundary_to_normals():
    step = 2.0**-24  # float16's smallest subnormal
    values = np.array([0.0, -0.0, step / 2, step, 1.5 * step, 2.5 * step, 3.5 * step, 1023.5 * step,
                       1024 * step, 2.0**-14 - step / 4, 2.0**-14, 6e-8, 1e-30, 1e-45, 0.5, 1.0, 65504.0],
                      dtype=np.float32)
    assert _same_bits(values) and _same_bits(-values)


def test_probabilities_of_many_classes():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 12, size=(7, 9, 150)).astype(np.float32)
    probs = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs /= probs.sum(axis=2, keepdims=True)
    assert (probs < 2.0**-14).mean() > 0.5  # mostly tiny: the case this is for
    assert _same_bits(probs) and to_float16(probs).shape == probs.shape
