"""Label maps to PNGs and summaries; bounding the inference size and bringing labels back."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from serving.cancellation import Checkpoint, RequestCancelled
from serving.rendering import (
    class_summary,
    color_image,
    color_mask,
    encode_png,
    label_image,
    legend,
    overlay,
    render_png,
)
from serving.repository import ModelMetadata
from serving.segmentation import inference_size, resize_label_nearest

META = ModelMetadata(
    name="m", version=1, arch="psp", layers=18, dataset="d", classes=["a", "b", "c"],
    palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255]], crop_h=33, crop_w=33, mean=[0, 0, 0], std=[1, 1, 1],
)
LABEL = np.array([[0, 1, 1], [2, 2, 2]], dtype=np.uint8)


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_color_png_uses_the_palette():
    image = decode(encode_png(color_image(LABEL, META.palette)))
    assert image.mode == "P"
    assert np.array_equal(np.asarray(image), LABEL)  # indices are the class ids
    rgb = np.asarray(image.convert("RGB"))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[1, 2].tolist() == [0, 0, 255]


def test_label_png_is_8_bit_class_ids_or_16_bit_beyond_256_classes():
    image = decode(encode_png(label_image(LABEL)))
    assert image.mode == "L" and np.array_equal(np.asarray(image), LABEL)
    wide = np.array([[0, 300]], dtype=np.int32)
    image = decode(encode_png(label_image(wide)))
    assert image.mode.startswith("I") and np.asarray(image).tolist() == [[0, 300]]


def test_overlay_blends_with_alpha():
    photo = np.full((2, 3, 3), 100, dtype=np.uint8)
    assert np.array_equal(overlay(photo, LABEL, META.palette, 0.0), photo)
    full = overlay(photo, LABEL, META.palette, 1.0)
    assert full[0, 0].tolist() == [255, 0, 0]
    assert overlay(photo, LABEL, META.palette, 0.5)[0, 1].tolist() == [50, 178, 50]  # (100 + 255) / 2 = 177.5 -> 178


def test_the_overlay_in_bands_equals_the_whole_image_blend_and_stops_at_a_deadline(monkeypatch):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(123, 77, 3), dtype=np.uint8)
    label = rng.integers(0, 4, size=(123, 77), dtype=np.uint8)  # 3 is past the palette: black
    whole = (0.3 * photo.astype(np.float32) + 0.7 * color_mask(label, META.palette).astype(np.float32))
    expected = np.clip(np.rint(whole), 0, 255).astype(np.uint8)
    monkeypatch.setattr("serving.rendering.BAND_PIXELS", 77 * 10)  # 10 rows a band: 13 bands
    assert np.array_equal(overlay(photo, label, META.palette, 0.7), expected)
    cancelled = threading.Event()
    checkpoint = Checkpoint(cancelled)
    cancelled.set()
    with pytest.raises(RequestCancelled):
        render_png("overlay", photo, label, META, 0.5, check=checkpoint)
    assert checkpoint.checks == 1
    calls = []

    def cancel_on_third_band():
        calls.append(1)
        if len(calls) == 3:
            raise RequestCancelled("deadline")

    with pytest.raises(RequestCancelled):
        overlay(photo, label, META.palette, 0.5, check=cancel_on_third_band)
    assert len(calls) == 3


def test_render_png_kinds_and_unknown_kind():
    photo = np.zeros((2, 3, 3), dtype=np.uint8)
    for kind in ("color", "label", "overlay"):
        assert decode(render_png(kind, photo, LABEL, META)).size == (3, 2)
    with pytest.raises(ValueError, match="unknown output kind"):
        render_png("jpeg", photo, LABEL, META)


def test_class_summary_and_legend():
    summary = class_summary(LABEL, META)
    assert [entry["name"] for entry in summary] == ["c", "b", "a"]  # largest first
    assert [entry["pixels"] for entry in summary] == [3, 2, 1]
    assert sum(entry["fraction"] for entry in summary) == pytest.approx(1.0)
    assert summary[0]["hex"] == "#0000ff"
    assert [entry["name"] for entry in legend(META)] == ["a", "b", "c"]


def test_inference_size_keeps_aspect_and_small_images():
    assert inference_size(300, 400, 1024) == (300, 400)
    assert inference_size(3000, 4000, 1000) == (750, 1000)
    assert inference_size(4000, 10, 100) == (100, 1)
    assert inference_size(300, 400, None) == (300, 400)


def test_nearest_label_upsampling_has_the_target_size_and_ids():
    small = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    big = resize_label_nearest(small, (4, 6))
    assert big.shape == (4, 6) and big.dtype == np.uint8
    assert big[:2, :3].tolist() == [[1, 1, 1], [1, 1, 1]] and big[3, 5] == 4
    assert set(np.unique(big)) == {1, 2, 3, 4}
