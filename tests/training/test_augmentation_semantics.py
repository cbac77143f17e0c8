"""The training augmentation is the original's, stated on hand-made arrays.

Each test writes down one rule of the original recipe (issue 11) in its own arithmetic and checks
the transforms against it: the order of the random draws, RandScale's output size and sampling
grid (the factors as drawn, not the rounded size), RandRotate's centre and nearest/bilinear
sampling, the blur's kernel and border, Crop's padding split and offsets, and the dtypes.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from training.data.dataset import SegmentationDataset
from training.data.transforms import (
    IMAGENET_MEAN,
    Crop,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandRotate,
    RandScale,
    Resize,
    train_transform,
    val_transform,
)


class ScriptedRandom:
    """A stand-in for the `random` module that hands out given values and records every call."""

    def __init__(self, values):
        self.values = list(values)
        self.calls: list[tuple] = []

    def random(self):
        self.calls.append(("random",))
        return self.values.pop(0)

    def randint(self, a, b):
        self.calls.append(("randint", a, b))
        value = self.values.pop(0)
        assert a <= value <= b
        return value


def ramp(h: int, w: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Image whose channel 0 is x and channel 1 is y; label = x (so resampling is readable)."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx, yy, np.zeros_like(xx)], axis=-1).astype(dtype)
    return image, xx.astype(np.uint8)


# --- the order of the draws ----------------------------------------------------------------------
def test_train_preset_draws_in_the_originals_order():
    cfg = {"scale_min": 0.5, "scale_max": 2.0, "rotate_min": -10, "rotate_max": 10,
           "train_h": 17, "train_w": 25, "ignore_label": 255}
    # scale 0.5 + 1.5 * 0.4 = 1.1; rotate? 0.2 < 0.5 yes; angle -10 + 20 * 0.75 = 5; blur? 0.9 no;
    # flip? 0.1 yes; then the row offset, then the column offset.
    rng = ScriptedRandom([0.4, 0.2, 0.75, 0.9, 0.1, 3, 7])
    image, label = ramp(30, 40)
    tensor, target = train_transform(cfg, rng=rng)(image, label)
    assert rng.calls == [("random",), ("random",), ("random",), ("random",), ("random",),
                         ("randint", 0, 33 - 17), ("randint", 0, 44 - 25)]
    assert tensor.shape == (3, 17, 25) and target.shape == (17, 25)


def test_rotate_draws_the_angle_only_when_it_rotates():
    rng = ScriptedRandom([0.7])
    image, label = ramp(8, 8)
    out_image, out_label = RandRotate([-10, 10], padding=[0, 0, 0], p=0.5, rng=rng)(image, label)
    assert rng.calls == [("random",)] and out_label is label and out_image is image


def test_rand_scale_draws_scale_then_aspect_ratio():
    rng = ScriptedRandom([0.5, 0.25])
    image, label = ramp(20, 20)
    _, out_label = RandScale([0.5, 1.5], aspect_ratio=[0.5, 4.5], rng=rng)(image, label)
    # s = 1.0, r = sqrt(0.5 + 4 * 0.25) = sqrt(1.5): width x s*r, height x s/r
    r = math.sqrt(1.5)
    assert out_label.shape == (round(20 / r), round(20 * r))


# --- RandScale -----------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1.37, 0.63, 1.95])
def test_rand_scale_samples_with_the_drawn_factor(factor):
    """Output round(w * f); image column j samples x = (j + 0.5) / f - 0.5 (clamped) bilinearly and
    label column j takes x = floor(j / f): with f itself, not the rounded size / w (14/10 for 1.37)."""
    h, w = 6, 10
    image, label = ramp(h, w)
    rng = ScriptedRandom([(factor - 0.5) / 1.5])
    out_image, out_label = RandScale([0.5, 2.0], rng=rng)(image, label)
    assert out_label.shape == (round(h * factor), round(w * factor)) == out_image.shape[:2]
    j = np.arange(out_label.shape[1])
    np.testing.assert_allclose(out_image[0, :, 0], np.clip((j + 0.5) / factor - 0.5, 0, w - 1), atol=1e-4)
    np.testing.assert_array_equal(out_label[0], np.minimum(np.floor(j / factor), w - 1))
    assert out_image.dtype == np.float32 and out_label.dtype == np.uint8


def test_rand_scale_shrinks_without_antialiasing_and_rounds_uint8():
    """A uint8 image stays uint8; bilinear between two neighbours only (no averaging window)."""
    image = np.tile((np.arange(10) * 20).astype(np.uint8), (4, 1))
    out, _ = RandScale([1.37, 1.37], rng=ScriptedRandom([0.0]))(image, np.zeros((4, 10), np.uint8))
    j = np.arange(out.shape[1])
    np.testing.assert_array_equal(out[0], np.rint(np.clip((j + 0.5) / 1.37 - 0.5, 0, 9) * 20))
    assert out.dtype == np.uint8
    shrunk, _ = RandScale([0.5, 0.5], rng=ScriptedRandom([0.0]))(image, np.zeros((4, 10), np.uint8))
    # x = (j + 0.5) * 2 - 0.5 = 2j + 0.5: the mean of columns 2j and 2j+1 only
    np.testing.assert_array_equal(shrunk[0], (np.arange(5) * 40 + 10).astype(np.uint8))


def test_rand_scale_to_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match="shrinks a 1x3 input to nothing"):
        RandScale([0.1, 0.1], rng=ScriptedRandom([0.0]))(*ramp(1, 3))


def test_resize_takes_h_w_and_samples_like_rand_scale():
    image, label = ramp(6, 10)
    out_image, out_label = Resize([3, 20])(image, label)
    assert out_image.shape == (3, 20, 3) and out_label.shape == (3, 20)
    np.testing.assert_array_equal(out_label[0], np.arange(20) // 2)


# --- RandRotate ----------------------------------------------------------------------------------
def _inverse_map(h: int, w: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Source (x, y) of every output pixel: rotation by `angle` degrees counter-clockwise (image
    axes, y down) about (w/2, h/2), pixel centres at integer coordinates."""
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    cx, cy = w / 2, h / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    return c * dx - s * dy + cx, s * dx + c * dy + cy


@pytest.mark.parametrize(("h", "w", "angle"), [(20, 27, 17.3), (15, 15, -8.0), (9, 32, 3.5)])
def test_rotate_samples_about_w2_h2(h, w, angle):
    label = (np.arange(h * w) % 250).reshape(h, w).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([3.0 * xx + 5.0 * yy, np.full((h, w), 100.0), np.zeros((h, w))], -1).astype(np.float32)
    out_image, out_label = RandRotate([angle, angle], padding=[-1, -2, -3], ignore_label=255, p=1.0,
                                      rng=ScriptedRandom([0.0, 0.0]))(image, label)
    sx, sy = _inverse_map(h, w, angle)
    # label: the nearest source pixel, ignore outside (checked away from exact half-pixel ties)
    rx, ry = np.floor(sx + 0.5).astype(int), np.floor(sy + 0.5).astype(int)
    inside = (rx >= 0) & (rx < w) & (ry >= 0) & (ry < h)
    expected = np.full((h, w), 255, np.uint8)
    expected[inside] = label[ry[inside], rx[inside]]
    clear = (np.abs(sx - np.floor(sx) - 0.5) > 0.01) & (np.abs(sy - np.floor(sy) - 0.5) > 0.01)
    assert clear.sum() > 0.8 * h * w
    np.testing.assert_array_equal(out_label[clear], expected[clear])
    # image: bilinear on a plane reproduces the plane at the source point, up to OpenCV's 1/32
    # sub-pixel table (|error| <= (3 + 5) / 64); far outside it is the padding colour, unrounded.
    interior = (sx >= 1) & (sx <= w - 2) & (sy >= 1) & (sy <= h - 2)
    assert np.abs(out_image[..., 0][interior] - (3 * sx + 5 * sy)[interior]).max() <= 8 / 64 + 1e-3
    outside = (sx < -1) | (sx > w) | (sy < -1) | (sy > h)
    np.testing.assert_array_equal(out_image[outside], np.broadcast_to(np.float32([-1, -2, -3]), (outside.sum(), 3)))


# --- RandomGaussianBlur, flip --------------------------------------------------------------------
def test_blur_kernel_and_reflect_101_border():
    """Kernel [1, 4, 6, 4, 1] / 16; the border mirrors without repeating the edge pixel
    (column -1 is column 1), so an impulse at column 0 gives 6 there and 4 at column 1."""
    image = np.zeros((6, 8, 3), np.float32)
    image[:, 0] = 16.0
    out, _ = RandomGaussianBlur(p=1.0, rng=ScriptedRandom([0.0]))(image, np.zeros((6, 8), np.uint8))
    np.testing.assert_allclose(out[:, :4, 0], np.tile([6.0, 4.0, 1.0, 0.0], (6, 1)), atol=1e-5)
    assert out.dtype == np.float32


def test_blur_decides_with_p():
    blur = RandomGaussianBlur(rng=ScriptedRandom([0.5]))
    image = np.arange(48, dtype=np.float32).reshape(4, 4, 3)
    assert blur(image, np.zeros((4, 4), np.uint8))[0] is image  # 0.5 is not < 0.5


def test_flip_mirrors_columns():
    image, label = ramp(3, 5)
    out_image, out_label = RandomHorizontalFlip(rng=ScriptedRandom([0.49]))(image, label)
    np.testing.assert_array_equal(out_label[0], [4, 3, 2, 1, 0])
    np.testing.assert_array_equal(out_image[..., 0], image[:, ::-1, 0])


# --- Crop ----------------------------------------------------------------------------------------
def test_crop_pads_int_half_above_and_the_rest_below_with_the_unrounded_mean():
    image, label = ramp(2, 3)
    crop = Crop([7, 6], "rand", padding=list(IMAGENET_MEAN), ignore_label=255, rng=ScriptedRandom([0, 0]))
    out_image, out_label = crop(image, label)
    # pad 5 rows: int(5 / 2) = 2 above, 3 below; pad 3 columns: 1 left, 2 right
    rows = np.nonzero((out_label != 255).any(axis=1))[0]
    cols = np.nonzero((out_label != 255).any(axis=0))[0]
    assert rows.tolist() == [2, 3] and cols.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(out_image[0, 0], np.float32(IMAGENET_MEAN))  # 123.675, not 124


def test_crop_offsets_row_then_column():
    image, label = ramp(10, 12)
    rng = ScriptedRandom([4, 1])
    _, out_label = Crop([5, 6], "rand", rng=rng)(image, label)
    assert rng.calls == [("randint", 0, 5), ("randint", 0, 6)]
    np.testing.assert_array_equal(out_label[0], np.arange(1, 7))
    _, centre = Crop([5, 5], "center")(image, label)
    np.testing.assert_array_equal(centre[0], np.arange(3, 8))  # int((12 - 5) / 2) = 3


# --- dtypes through the chain --------------------------------------------------------------------
def test_images_stay_float32_until_the_tensor(synthetic_dataset):
    seen = []

    def spy(image, label):
        seen.append(image.dtype)
        return image, label

    dataset = SegmentationDataset("train", synthetic_dataset.root, synthetic_dataset.train_list, transform=spy)
    image, _ = dataset[0]
    assert seen == [np.float32] and image.dtype == np.float32
    cfg = {"scale_min": 0.5, "scale_max": 2.0, "rotate_min": -10, "rotate_max": 10,
           "train_h": 33, "train_w": 33, "ignore_label": 255}
    for seed in range(4):
        random.seed(seed)
        step = image
        for transform in train_transform(cfg).transforms[:5]:
            step, _ = transform(step, np.zeros(step.shape[:2], np.uint8))
            assert step.dtype == np.float32
    tensor, target = val_transform(cfg)(image, np.zeros(image.shape[:2], np.uint8))
    assert tensor.dtype == torch.float32 and target.dtype == torch.int64
