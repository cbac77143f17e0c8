"""The one inference pipeline against a direct, per-window transcription of the original protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.pipeline import (
    InferenceOptions,
    PipelineSpec,
    PipelineStats,
    predict_label,
    predict_probabilities,
    resize_bilinear,
    scaled_size,
    validate_scales,
    window_origins,
)

SPEC = PipelineSpec(crop_h=17, crop_w=17, num_classes=4, mean=(120.0, 110.0, 100.0), std=(50.0, 55.0, 60.0), base_size=30)


class ConvRunner:
    """A small deterministic numpy "network": a 3x3 convolution to 4 classes, output at 1/2 size.

    Position-dependent (not flip-invariant) so that flipping, padding and stitching mistakes show.
    """

    def __init__(self, max_batch_size=3, stride=2):
        rng = np.random.default_rng(0)
        self.weights = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
        self.max_batch_size = max_batch_size
        self.stride = stride
        self.calls = []

    def __call__(self, batch):
        assert batch.dtype == np.float32 and batch.shape[0] <= self.max_batch_size
        self.calls.append(batch.shape[0])
        n, _, h, w = batch.shape
        padded = np.pad(batch, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((n, 4, h, w), dtype=np.float32)
        for dy in range(3):
            for dx in range(3):
                out += np.einsum("kc,nchw->nkhw", self.weights[:, :, dy, dx], padded[:, :, dy:dy + h, dx:dx + w])
        out += np.linspace(0, 1, w, dtype=np.float32)  # breaks left/right symmetry
        return out[:, :, ::self.stride, ::self.stride]


def original_protocol(image, runner, spec, scales, flip):
    """The original test script, window by window (float64 accumulation, one call per window)."""
    height, width = image.shape[:2]
    prediction = np.zeros((height, width, spec.num_classes))
    mean, std = np.array(spec.mean), np.array(spec.std)
    for scale in scales:
        new_h, new_w = scaled_size(height, width, spec.base_size, scale)
        img = resize_bilinear(image.astype(np.float32), (new_h, new_w)).astype(np.float64)
        pad_h, pad_w = max(spec.crop_h - new_h, 0), max(spec.crop_w - new_w, 0)
        ph, pw = pad_h // 2, pad_w // 2
        img = np.stack([np.pad(img[..., c], ((ph, pad_h - ph), (pw, pad_w - pw)), constant_values=mean[c]) for c in range(3)], -1)
        H, W = img.shape[:2]
        sh, sw = math.ceil(spec.crop_h * 2 / 3), math.ceil(spec.crop_w * 2 / 3)
        gh, gw = math.ceil((H - spec.crop_h) / sh) + 1, math.ceil((W - spec.crop_w) / sw) + 1
        acc, count = np.zeros((H, W, spec.num_classes)), np.zeros((H, W))
        for ih in range(gh):
            for iw in range(gw):
                eh, ew = min(ih * sh + spec.crop_h, H), min(iw * sw + spec.crop_w, W)
                s_h, s_w = eh - spec.crop_h, ew - spec.crop_w
                crop = ((img[s_h:eh, s_w:ew] - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
                batch = np.concatenate([crop, crop[..., ::-1]]) if flip else crop
                outs = []
                for single in batch:  # one window per call
                    logit = runner(np.ascontiguousarray(single[None]))[0]
                    logit = resize_bilinear(logit.transpose(1, 2, 0), (spec.crop_h, spec.crop_w), align_corners=True)
                    e = np.exp(logit - logit.max(-1, keepdims=True))
                    outs.append(e / e.sum(-1, keepdims=True))
                prob = (outs[0] + outs[1][:, ::-1]) / 2 if flip else outs[0]
                acc[s_h:eh, s_w:ew] += prob
                count[s_h:eh, s_w:ew] += 1
        acc = (acc / count[..., None])[ph:ph + new_h, pw:pw + new_w]
        prediction += resize_bilinear(acc.astype(np.float32), (height, width))
    return prediction / len(scales)


@pytest.mark.parametrize("shape", [(23, 41), (40, 12), (9, 9)])
@pytest.mark.parametrize(("scales", "flip"), [((1.0,), False), ((0.5, 1.0, 1.75), True)])
def test_matches_the_original_protocol(shape, scales, flip):
    image = np.random.default_rng(1).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    expected = original_protocol(image, ConvRunner(), SPEC, scales, flip)
    stats = PipelineStats()
    runner = ConvRunner(max_batch_size=3)
    got = predict_probabilities(image, runner, SPEC, InferenceOptions(scales=scales, flip=flip), stats)
    assert got.shape == (*shape, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # All windows go out in as few calls as the batch size allows.
    assert sum(runner.calls) == stats.tiles
    assert len(runner.calls) == math.ceil(stats.tiles / 3) == stats.batches
    label = predict_label(image, ConvRunner(max_batch_size=8), SPEC, InferenceOptions(scales=scales, flip=flip))
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected.argmax(-1))


def test_window_origins_cover_the_image_and_stay_inside():
    for h, w in [(17, 17), (18, 60), (100, 33)]:
        covered = np.zeros((h, w), dtype=int)
        for y, x in window_origins(h, w, 17, 17):
            assert 0 <= y <= h - 17 and 0 <= x <= w - 17
            covered[y:y + 17, x:x + 17] += 1
        assert covered.min() >= 1


def test_scaled_size_keeps_the_long_side():
    assert scaled_size(300, 400, 512, 1.0) == (384, 512)
    assert scaled_size(400, 300, 512, 0.5) == (256, 192)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) RGB image"):
        predict_probabilities(np.zeros((5, 5), np.uint8), ConvRunner(), SPEC)
    with pytest.raises(ValueError, match="runner returned shape"):
        predict_probabilities(np.zeros((5, 5, 3), np.uint8), lambda_runner(lambda b: b[:, :2]), SPEC)
    with pytest.raises(ValueError, match="within"):
        validate_scales([0.1])
    with pytest.raises(ValueError, match="between 1 and 6"):
        validate_scales([1.0] * 7)


def lambda_runner(fn, max_batch_size=4):
    class _Runner:
        def __call__(self, batch):
            return fn(batch)

    runner = _Runner()
    runner.max_batch_size = max_batch_size
    return runner
