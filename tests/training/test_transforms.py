"""Joint transforms: image and label stay aligned, padding is mean/ignore, shapes are right.

The property tests render an image whose pixels hold their own coordinates (float channels
y and x, or uint8 R=y, G=x) and a label made from the same coordinates
(`(y mod 15) * 16 + x mod 16`, never 255). After a geometric transform, wherever the label is
not ignore, the coordinates decoded from the label must match those read from the image (up to
the sub-pixel difference between nearest and bilinear sampling): image and label still index
the same places of the source.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Crop,
    DownscaleLabel,
    Normalize,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandomVerticalFlip,
    RandRotate,
    RandScale,
    Resize,
    ToTensor,
    downscale_label,
    train_transform,
    val_transform,
)

IGNORE = 255
VALID = 100.0  # third channel of the float source; padding puts 0 there
FLOAT_PAD = (-50.0, -50.0, 0.0)
MOD_Y, MOD_X = 15, 16
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def coordinate_pair(h: int, w: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    if dtype == np.float32:
        image = np.stack([yy, xx, np.full_like(yy, VALID)], axis=-1).astype(np.float32)
    else:
        image = np.stack([yy, xx, np.full_like(yy, 200)], axis=-1).astype(np.uint8)
    label = ((yy % MOD_Y) * MOD_X + xx % MOD_X).astype(np.uint8)
    return image, label


def circular_gap(a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
    d = np.mod(a - b, modulus)
    return np.minimum(d, modulus - d)


def assert_aligned(image: np.ndarray, label: np.ndarray, tolerance: float, scale=(1.0, 1.0)) -> int:
    """Label coordinates == image coordinates (mod the label code) at unpadded pixels.

    `scale` converts source pixels into output pixels (for RandScale), so the tolerance is in
    output pixels: nearest and bilinear may pick neighbouring sources, never far ones.
    """
    if image.dtype == np.float32:
        clean = np.abs(image[..., 2] - VALID) < 1e-3  # no padding blended in
    else:
        clean = image[..., 2] == 200
    valid = (label != IGNORE) & clean
    y_img, x_img = image[..., 0][valid].astype(np.float64), image[..., 1][valid].astype(np.float64)
    codes = label[valid].astype(np.int64)
    y_lab, x_lab = codes // MOD_X, codes % MOD_X
    gap_y = circular_gap(y_img, y_lab, MOD_Y) * scale[0]
    gap_x = circular_gap(x_img, x_lab, MOD_X) * scale[1]
    assert gap_y.size == 0 or gap_y.max() <= tolerance, f"rows misaligned by {gap_y.max():.2f} px"
    assert gap_x.size == 0 or gap_x.max() <= tolerance, f"columns misaligned by {gap_x.max():.2f} px"
    return int(valid.sum())


sizes = st.integers(min_value=8, max_value=48)
dtypes = st.sampled_from([np.float32, np.uint8])


@PROPERTY
@given(h=sizes, w=sizes, dtype=dtypes, seed=st.integers(0, 2**16),
       scale=st.tuples(st.floats(0.4, 1.0), st.floats(1.0, 2.5)),
       aspect=st.one_of(st.none(), st.just((0.5, 2.0))))
def test_rand_scale_keeps_alignment_and_size(h, w, dtype, seed, scale, aspect):
    image, label = coordinate_pair(h, w, dtype)
    rng = random.Random(seed)
    out_image, out_label = RandScale(scale, aspect, rng=rng)(image, label)
    # replay the random draws to know the factors
    replay = random.Random(seed)
    s = scale[0] + (scale[1] - scale[0]) * replay.random()
    r = 1.0 if aspect is None else np.sqrt(aspect[0] + (aspect[1] - aspect[0]) * replay.random())
    assert out_label.shape == (max(1, round(h * s / r)), max(1, round(w * s * r)))
    assert out_image.shape[:2] == out_label.shape and out_image.dtype == dtype
    assert set(np.unique(out_label)) <= set(np.unique(label))  # nearest: only source ids
    fy, fx = out_label.shape[0] / h, out_label.shape[1] / w
    # A downscale averages over a window (antialiasing) that is clipped at the borders, so allow
    # one output pixel plus the source-pixel half-step of nearest sampling.
    tolerance = 1.0 + 0.5 * max(fy, fx) + (0.5 if dtype == np.uint8 else 0.0) * max(fy, fx)
    assert assert_aligned(out_image, out_label, tolerance, scale=(fy, fx)) > 0


@PROPERTY
@given(h=sizes, w=sizes, dtype=dtypes, angle=st.floats(-30, 30))
def test_rand_rotate_keeps_alignment_and_pads_with_mean_and_ignore(h, w, dtype, angle):
    image, label = coordinate_pair(h, w, dtype)
    padding = FLOAT_PAD if dtype == np.float32 else (7.0, 9.0, 11.0)
    rotate = RandRotate([angle, angle], padding=list(padding), ignore_label=IGNORE, p=1.0, rng=random.Random(0))
    out_image, out_label = rotate(image, label)
    assert out_image.shape == image.shape and out_label.shape == label.shape
    tolerance = 0.5 * np.sqrt(2) + (0.5 if dtype == np.uint8 else 0.0) + 1e-4
    assert assert_aligned(out_image, out_label, tolerance) > 0
    # Pixels that are ignore with an all-ignore 3x3 neighbourhood lie outside the source: pure padding.
    ignored = np.pad(out_label == IGNORE, 1, constant_values=True)
    deep = np.ones_like(out_label, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            deep &= ignored[dy:dy + h, dx:dx + w]
    np.testing.assert_allclose(out_image[deep], np.broadcast_to(np.array(padding, dtype=np.float32), out_image[deep].shape))


def test_rotate_is_counter_clockwise_about_w2_h2():
    """90 degrees about (w/2, h/2) = (8, 8), the original's centre (not numpy's 7.5): dst[y, x] =
    src[x, 16 - y], i.e. np.rot90 moved down one row, the top row uncovered (padding/ignore)."""
    image, label = coordinate_pair(16, 16, np.float32)
    out_image, out_label = RandRotate([90, 90], padding=list(FLOAT_PAD), p=1.0)(image, label)
    np.testing.assert_array_equal(out_label[1:], np.rot90(label)[:-1])
    assert (out_label[0] == IGNORE).all()
    np.testing.assert_allclose(out_image[1:], np.rot90(image)[:-1], atol=1e-4)
    np.testing.assert_allclose(out_image[0], np.broadcast_to(np.float32(FLOAT_PAD), (16, 3)), atol=1e-4)


def test_rotate_and_blur_respect_probability():
    image, label = coordinate_pair(10, 12, np.uint8)
    never = [RandRotate([-10, 10], padding=list(IMAGENET_MEAN), p=0.0), RandomGaussianBlur(p=0.0),
             RandomHorizontalFlip(p=0.0), RandomVerticalFlip(p=0.0)]
    out_image, out_label = Compose(never)(image, label)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)


@PROPERTY
@given(h=sizes, w=sizes, dtype=dtypes, crop_h=st.integers(1, 64), crop_w=st.integers(1, 64),
       crop_type=st.sampled_from(["rand", "center"]), seed=st.integers(0, 2**16))
def test_crop_shapes_alignment_and_padding(h, w, dtype, crop_h, crop_w, crop_type, seed):
    image, label = coordinate_pair(h, w, dtype)
    padding = FLOAT_PAD if dtype == np.float32 else IMAGENET_MEAN
    crop = Crop([crop_h, crop_w], crop_type=crop_type, padding=list(padding), ignore_label=IGNORE,
                rng=random.Random(seed))
    out_image, out_label = crop(image, label)
    assert out_label.shape == (crop_h, crop_w) and out_image.shape == (crop_h, crop_w, 3)
    padded = out_label == IGNORE
    expected_fill = np.array(padding if dtype == np.float32 else [round(v) for v in padding], dtype=dtype)
    np.testing.assert_array_equal(out_image[padded], np.broadcast_to(expected_fill, out_image[padded].shape))
    assert padded.sum() == crop_h * crop_w - min(h, crop_h) * min(w, crop_w)
    # a crop never resamples: coordinates and codes match exactly
    assert assert_aligned(out_image, out_label, 0.0) == min(h, crop_h) * min(w, crop_w)
    if crop_type == "center":
        top = (h - crop_h) // 2 if h >= crop_h else -((crop_h - h) // 2)
        left = (w - crop_w) // 2 if w >= crop_w else -((crop_w - w) // 2)
        first = np.argwhere(~padded)[0]
        assert tuple(out_image[first[0], first[1], :2].astype(int)) == (first[0] + top, first[1] + left)


def test_crop_padding_split_puts_the_extra_pixel_bottom_right():
    image, label = coordinate_pair(3, 4, np.float32)
    _, out_label = Crop([6, 5], "center", padding=list(FLOAT_PAD))(image, label)
    rows = np.nonzero((out_label != IGNORE).any(axis=1))[0]
    cols = np.nonzero((out_label != IGNORE).any(axis=0))[0]
    assert rows.tolist() == [1, 2, 3] and cols.tolist() == [0, 1, 2, 3]


@PROPERTY
@given(h=sizes, w=sizes, dtype=dtypes)
def test_flips_mirror_both(h, w, dtype):
    image, label = coordinate_pair(h, w, dtype)
    out_image, out_label = RandomHorizontalFlip(p=1.0)(image, label)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_label, label[:, ::-1])
    assert_aligned(out_image, out_label, 0.0)
    out_image, out_label = RandomVerticalFlip(p=1.0)(image, label)
    np.testing.assert_array_equal(out_label, label[::-1])
    assert_aligned(out_image, out_label, 0.0)


@PROPERTY
@given(h=st.integers(20, 48), w=st.integers(20, 48), seed=st.integers(0, 2**16))
def test_full_train_geometry_stays_aligned(h, w, seed):
    """The preset's geometry chained (scale, rotate, flip, crop) on the float coordinate image."""
    image, label = coordinate_pair(h, w, np.float32)
    rng = random.Random(seed)
    chain = Compose([
        RandScale([1.0, 1.6], rng=rng),
        RandRotate([-10, 10], padding=list(FLOAT_PAD), p=1.0, rng=rng),
        RandomHorizontalFlip(rng=rng),
        Crop([33, 33], "rand", padding=list(FLOAT_PAD), rng=rng),
    ])
    out_image, out_label = chain(image, label)
    assert out_label.shape == (33, 33)
    # scale >= 1 so one output pixel is at most one source pixel; rotation adds half a diagonal
    assert assert_aligned(out_image, out_label, 1.6) > 0


def test_blur_is_opencvs_binomial_kernel_and_leaves_the_label():
    image = np.zeros((9, 9, 3), dtype=np.float32)
    image[4, 4] = 256.0
    label = np.arange(81, dtype=np.uint8).reshape(9, 9)
    out_image, out_label = RandomGaussianBlur(p=1.0)(image, label)
    kernel = np.array([1, 4, 6, 4, 1], dtype=np.float32) / 16
    np.testing.assert_allclose(out_image[2:7, 2:7, 0], 256 * np.outer(kernel, kernel), atol=1e-4)
    assert out_label is label
    flat = np.full((7, 5, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(RandomGaussianBlur().blur(flat), flat)  # reflect borders keep a flat image flat


def test_to_tensor_and_normalize():
    image = np.broadcast_to(np.array(IMAGENET_MEAN, dtype=np.float32), (4, 5, 3)).copy()
    image[0, 0] += np.array(IMAGENET_STD, dtype=np.float32)
    label = np.full((4, 5), 3, dtype=np.uint8)
    tensor, target = Compose([ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image, label)
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32
    assert target.shape == (4, 5) and target.dtype == torch.int64 and (target == 3).all()
    torch.testing.assert_close(tensor[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(tensor[:, 1:, :], torch.zeros(3, 3, 5), atol=1e-5, rtol=0)
    mean_only, _ = Normalize(IMAGENET_MEAN)(*ToTensor()(image, label))
    torch.testing.assert_close(mean_only[:, 0, 0], torch.tensor(IMAGENET_STD, dtype=torch.float32))


def test_resize_uses_nearest_for_labels():
    image, label = coordinate_pair(10, 10, np.float32)
    out_image, out_label = Resize([25, 15])(image, label)
    assert out_image.shape == (25, 15, 3) and out_label.shape == (25, 15)
    assert set(np.unique(out_label)) <= set(np.unique(label))


@pytest.mark.parametrize(("h", "w"), [(65, 97), (64, 80), (9, 9), (1, 17)])
def test_downscale_label_samples_the_stride_8_grid(h, w):
    label = np.random.default_rng(0).integers(0, 256, (2, h, w), dtype=np.uint8)
    small = downscale_label(label, 8)
    assert small.shape == (2, (h - 1) // 8 + 1, (w - 1) // 8 + 1)
    if (h - 1) % 8 == 0 and (w - 1) % 8 == 0:
        np.testing.assert_array_equal(small, label[:, ::8, ::8])
    assert set(np.unique(small)) <= set(np.unique(label))
    as_tensor = downscale_label(torch.from_numpy(label).long(), 8)
    np.testing.assert_array_equal(as_tensor.numpy(), small)
    assert downscale_label(label, 1) is label
    image, lab = DownscaleLabel(8)(np.zeros((h, w, 3), np.uint8), label[0])
    assert image.shape == (h, w, 3) and lab.shape == small.shape[1:]


CFG = {"scale_min": 0.5, "scale_max": 2.0, "rotate_min": -10, "rotate_max": 10,
       "train_h": 65, "train_w": 97, "ignore_label": 255}


def test_presets_give_crop_sized_tensors_and_label_guidance_at_1_8():
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    label = np.random.default_rng(2).integers(0, 6, (50, 70), dtype=np.uint8)
    for seed in range(5):
        tensor, target = train_transform(CFG, rng=random.Random(seed))(image, label)
        assert tensor.shape == (3, 65, 97) and target.shape == (65, 97)
        assert set(target.unique().tolist()) <= set(range(6)) | {255}
    tensor, target = train_transform({**CFG, "label_scale": 8}, rng=random.Random(0))(image, label)
    assert tensor.shape == (3, 65, 97) and target.shape == (9, 13)
    tensor, target = val_transform(CFG)(image, label)
    assert tensor.shape == (3, 65, 97) and target.shape == (65, 97)
    # val pads the 50x70 image centred: 7 rows above, 8 below, 13 columns left, 14 right;
    # the mean padding normalises to 0
    inside = torch.zeros(65, 97, dtype=torch.bool)
    inside[7:57, 13:83] = True
    assert (target[inside] != 255).all() and (target[~inside] == 255).all()
    assert tensor[:, ~inside].abs().max() < 0.01


def test_presets_read_a_loaded_config():
    from training.config import load_config

    cfg = load_config("training/config/synthetic/synthetic_pspnet18.yaml")
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    label = np.zeros((40, 50), dtype=np.uint8)
    tensor, target = train_transform(cfg)(image, label)
    assert tensor.shape == (3, cfg.train_h, cfg.train_w) and target.shape == (cfg.train_h, cfg.train_w)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        # The config's schema (training.config) checks every value before the transforms see it.
        ({"train_h": 64}, ValueError, "train_h: 64 is not a valid crop size"),
        ({"label_scale": 4}, ValueError, "label_scale: 4 is not one of 1, 8"),
        ({"scale_min": 3.0}, ValueError, r"scale_min \(3.0\) is larger than scale_max"),
        ({"rotate_min": "a"}, ValueError, "rotate_min: expected a number"),
    ],
)
def test_bad_config_values_are_named(change, error, message):
    cfg = {k: v for k, v in {**CFG, **change}.items() if v is not None}
    with pytest.raises(error, match=message):
        train_transform(cfg)


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="crop_type"):
        Crop(5, crop_type="middle")
    with pytest.raises(ValueError, match="needs padding"):
        Crop(5)(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="odd"):
        RandomGaussianBlur(radius=4)
    with pytest.raises(ValueError, match="share"):
        Crop(2)(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 4), np.uint8))
