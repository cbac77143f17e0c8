"""Parity measurement: the figures, the tie rule and the pass/fail gates."""

from __future__ import annotations

import numpy as np
import pytest

from export.errors import VerificationError
from export.verify import compare_logits, measure_parity, probe_inputs, require_parity, structured_images


def test_probe_inputs_cover_random_and_structured_at_batch_one_and_max():
    inputs = probe_inputs(33, 41, 3, (123.7, 116.3, 103.5), (58.4, 57.1, 57.4))
    assert sorted(inputs) == ["random_b1", "random_b3", "structured_b1", "structured_b3"]
    for batch in inputs.values():
        assert batch.dtype == np.float32 and batch.shape[1:] == (3, 33, 41)
    assert inputs["structured_b3"].shape[0] == 3
    # structured images are made of smooth regions: neighbours differ far less than in noise
    def roughness(batch):
        return float(np.abs(np.diff(batch, axis=3)).mean())

    assert roughness(inputs["structured_b3"]) < 0.3 * roughness(inputs["random_b3"])


def test_structured_images_are_valid_pixels():
    images = structured_images(4, 20, 30, seed=1)
    assert images.shape == (4, 20, 30, 3) and images.min() >= 0 and images.max() <= 255


def test_compare_logits_counts_ties_only_in_the_raw_agreement():
    reference = np.zeros((1, 2, 1, 4), np.float32)
    reference[0, 0] = [1.0, 0.0, 0.5, 0.5]  # pixel 2: a clear win for class 0; pixel 3 ties
    reference[0, 1] = [0.0, 1.0, 0.0, 0.5 + 1e-6]
    candidate = reference.copy()
    candidate[0, 0, 0, 3] += 2e-6  # a rounding-sized change flips the tie
    figures = compare_logits(reference, candidate)
    assert figures["argmax_agreement"] == pytest.approx(0.75)
    assert figures["decisive_agreement"] == 1.0
    assert figures["max_abs_delta"] == pytest.approx(2e-6, rel=0.05)  # float32 rounding at 0.5
    candidate[0, 1, 0, 2] = 2.0  # a real disagreement
    assert compare_logits(reference, candidate)["decisive_agreement"] < 1.0


def test_tolerance_grows_with_the_logits_magnitude():
    small = np.full((1, 2, 2, 2), 0.5, np.float32)
    small[:, 1] = -0.5
    large = small * 100
    # 2e-4 is beyond 1e-4 + 1e-5 * 0.5 but within 1e-4 + 1e-5 * 50.
    assert compare_logits(small, small + 2e-4)["tolerance_used"] > 1.0
    assert compare_logits(large, large + 2e-4)["tolerance_used"] < 1.0
    # Rounding follows the image's logit range: a near-zero logit beside large ones gets the same bound.
    mixed = large.copy()
    mixed[0, 0, 0, 0] = 0.01
    assert compare_logits(mixed, mixed + 2e-4)["tolerance_used"] < 1.0
    assert compare_logits(mixed, mixed + 1e-3)["tolerance_used"] > 1.0
    inputs = {"b1": np.ones((1, 3, 2, 2), np.float32)}
    assert not measure_parity(lambda b: small, {"onnxruntime": lambda b: small + 2e-4}, inputs)["passed"]
    assert measure_parity(lambda b: large, {"onnxruntime": lambda b: large + 2e-4}, inputs)["passed"]


def test_compare_logits_rejects_wrong_shapes_and_nan():
    reference = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(VerificationError, match="shape"):
        compare_logits(reference, np.zeros((1, 3, 5, 5), np.float32))
    broken = reference.copy()
    broken[0, 0, 0, 0] = np.nan
    with pytest.raises(VerificationError, match="NaN"):
        compare_logits(reference, broken)


def _linear_model(seed: int = 0):
    weights = np.random.default_rng(seed).normal(size=(5, 3)).astype(np.float32)
    return lambda batch: np.einsum("kc,nchw->nkhw", weights, batch.astype(np.float32))


def test_measure_parity_passes_equal_runners_and_fails_perturbed_ones():
    inputs = probe_inputs(9, 9, 2, (0, 0, 0), (1, 1, 1))
    reference = _linear_model()
    good = measure_parity(reference, {"onnxruntime": reference, "torchscript": reference}, inputs)
    assert good["passed"] and good["worst"]["max_abs_delta"] == 0.0
    assert set(good["cases"]) == {"onnxruntime", "torchscript"} and set(good["cases"]["onnxruntime"]) == set(inputs)
    require_parity(good)

    bad = measure_parity(reference, {"onnxruntime": lambda b: reference(b) + 5e-4}, inputs)
    assert not bad["passed"]
    with pytest.raises(VerificationError, match="onnxruntime.*nothing was published"):
        require_parity(bad)


def test_fp16_gate_is_argmax_agreement():
    inputs = probe_inputs(9, 9, 1, (0, 0, 0), (1, 1, 1))
    reference = _linear_model()
    half = measure_parity(reference, {"onnxruntime": lambda b: reference(b).astype(np.float16)}, inputs, precision="fp16")
    assert half["passed"] and half["criteria"] == {"min_argmax_agreement": 0.999}
    shuffled = measure_parity(reference, {"onnxruntime": lambda b: -reference(b)}, inputs, precision="fp16")
    assert not shuffled["passed"]
