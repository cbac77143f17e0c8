"""Joint image/label transforms with the original project's semantics, on PIL and numpy.

Every transform is `t(image, label) -> (image, label)`. Before `ToTensor`, `image` is a numpy
array (H, W, 3) (or (H, W)), uint8 or float32 in the 0-255 scale, and `label` is uint8 (H, W)
class ids with `ignore_label` (255) for "don't care". Geometry is applied to both with the same
parameters; the image is resampled bilinearly, the label ONLY with nearest neighbour, so a label
value always comes from some real source pixel. Padding fills the image with the mean colour and
the label with `ignore_label`.

Random decisions come from `rng` (anything with `random()` and `randint(a, b)`), by default the
`random` module, which PyTorch seeds per DataLoader worker, as the original relied on.

`train_transform(cfg)` and `val_transform(cfg)` are the original training and validation presets.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Crop",
    "DownscaleLabel",
    "Normalize",
    "RandRotate",
    "RandScale",
    "RandomGaussianBlur",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "Resize",
    "ToTensor",
    "downscale_label",
    "train_transform",
    "val_transform",
]

# ImageNet statistics in the 0-255 scale, RGB, as the original configs used them.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


# --- array helpers -----------------------------------------------------------------------------
def _planes(image: np.ndarray) -> list[np.ndarray]:
    return [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]


def _stack(planes: list[np.ndarray], like: np.ndarray) -> np.ndarray:
    return planes[0] if like.ndim == 2 else np.stack(planes, axis=-1)


def _is_rgb8(image: np.ndarray) -> bool:
    return image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _fill_tuple(padding: Sequence[float], image: np.ndarray) -> tuple[float, ...]:
    """The padding colour in the image's dtype (rounded for uint8)."""
    if image.dtype == np.uint8:
        return tuple(int(np.clip(round(v), 0, 255)) for v in padding)
    return tuple(float(v) for v in padding)


def _pil_map(image: np.ndarray, op, fill: Sequence[float] | None = None) -> np.ndarray:
    """Apply a PIL operation to an image array: RGB uint8 at once, otherwise plane by plane.

    `op(pil_image, fill_value)` returns a PIL image. Float planes go through PIL mode "F", so
    float32 images keep their precision.
    """
    if _is_rgb8(image):
        return np.asarray(op(Image.fromarray(image), None if fill is None else _fill_tuple(fill, image)))
    out = []
    for c, plane in enumerate(_planes(image)):
        value = None if fill is None else _fill_tuple(fill, image)[min(c, len(fill) - 1)]
        if plane.dtype == np.uint8:
            out.append(np.asarray(op(Image.fromarray(plane), value)))
        else:
            result = np.asarray(op(Image.fromarray(plane.astype(np.float32)), value))
            out.append(result.astype(image.dtype, copy=False))
    return _stack(out, image)


def _resize_pair(image: np.ndarray, label: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    image = _pil_map(image, lambda im, _: im.resize((w, h), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    return image, label


def _check_pair(image: np.ndarray, label: np.ndarray, name: str, same_size: bool = True) -> None:
    if not isinstance(image, np.ndarray) or not isinstance(label, np.ndarray):
        raise TypeError(f"{name} takes numpy arrays (image, label); convert to tensors with ToTensor last")
    if image.ndim not in (2, 3):
        raise ValueError(f"{name}: image must be (H, W, C) or (H, W), got shape {image.shape}")
    if label.ndim != 2 or (same_size and image.shape[:2] != label.shape):
        raise ValueError(f"{name}: image {image.shape} and label {label.shape} must share (H, W)")


def _pair_of_numbers(value: Any, name: str, positive: bool = False) -> tuple[float, float]:
    if not (isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, numbers.Number) for v in value)):
        raise ValueError(f"{name} must be a pair of numbers [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if low > high or (positive and low <= 0):
        raise ValueError(f"{name} must satisfy {'0 < ' if positive else ''}low <= high, got {value!r}")
    return low, high


def _padding(value: Any, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if not (isinstance(value, Sequence) and len(value) == 3 and all(isinstance(v, numbers.Number) for v in value)):
        raise ValueError(f"{name} padding must be 3 numbers (the mean colour, 0-255), got {value!r}")
    return tuple(float(v) for v in value)


# --- transforms --------------------------------------------------------------------------------
class Compose:
    """Apply transforms in order: `Compose([RandScale((0.5, 2.0)), ToTensor()])`."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, label):
        for t in self.transforms:
            image, label = t(image, label)
        return image, label

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(t.__class__.__name__ for t in self.transforms) + "])"


class ToTensor:
    """numpy (H, W, C) or (H, W) image -> float32 tensor (C, H, W); uint8 label -> int64 (H, W).

    Values stay in the 0-255 scale (Normalize divides by a 0-255 std).
    """

    def __call__(self, image, label):
        import torch

        _check_pair(image, label, "ToTensor", same_size=False)
        if image.ndim == 2:
            image = image[:, :, None]
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        label = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return image, label


class Normalize:
    """`(image - mean) / std` per channel on a float tensor (C, H, W); mean/std in 0-255 scale.

    `std=None` only subtracts the mean, as the original allowed.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float] | None = None):
        if std is not None and len(mean) != len(std):
            raise ValueError(f"Normalize: mean {list(mean)} and std {list(std)} differ in length")
        self.mean = [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]

    def __call__(self, image, label):
        import torch

        mean = torch.tensor(self.mean, dtype=image.dtype).view(-1, 1, 1)
        image = image - mean
        if self.std is not None:
            image = image / torch.tensor(self.std, dtype=image.dtype).view(-1, 1, 1)
        return image, label


class Resize:
    """Resize to (h, w): image bilinear, label nearest."""

    def __init__(self, size: Sequence[int]):
        if not (isinstance(size, Sequence) and len(size) == 2 and all(int(s) > 0 for s in size)):
            raise ValueError(f"Resize size must be (h, w) of positive ints, got {size!r}")
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image, label):
        _check_pair(image, label, "Resize")
        return _resize_pair(image, label, *self.size)


class RandScale:
    """Scale by s ~ U[scale] (and aspect ratio r ~ U[aspect_ratio] if given).

    Width is scaled by s * sqrt(r), height by s / sqrt(r); the new size is rounded to whole pixels
    (at least 1), image bilinear, label nearest.
    """

    def __init__(self, scale: Sequence[float], aspect_ratio: Sequence[float] | None = None, rng=None):
        self.scale = _pair_of_numbers(scale, "RandScale scale", positive=True)
        self.aspect_ratio = None if aspect_ratio is None else _pair_of_numbers(
            aspect_ratio, "RandScale aspect_ratio", positive=True)
        self.rng = rng or random

    def __call__(self, image, label):
        _check_pair(image, label, "RandScale")
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * self.rng.random()
        r = 1.0
        if self.aspect_ratio is not None:
            r = math.sqrt(self.aspect_ratio[0] + (self.aspect_ratio[1] - self.aspect_ratio[0]) * self.rng.random())
        h, w = label.shape
        new_h, new_w = max(1, round(h * s / r)), max(1, round(w * s * r))
        return _resize_pair(image, label, new_h, new_w)


class RandRotate:
    """With probability p, rotate by an angle ~ U[rotate] degrees (counter-clockwise) about the centre.

    The output keeps the input size; uncovered corners are the `padding` colour in the image and
    `ignore_label` in the label.
    """

    def __init__(self, rotate: Sequence[float], padding: Sequence[float], ignore_label: int = 255,
                 p: float = 0.5, rng=None):
        self.rotate = _pair_of_numbers(rotate, "RandRotate rotate")
        self.padding = _padding(padding, "RandRotate")
        if self.padding is None:
            raise ValueError("RandRotate needs padding (the mean colour)")
        self.ignore_label = int(ignore_label)
        self.p = p
        self.rng = rng or random

    def __call__(self, image, label):
        _check_pair(image, label, "RandRotate")
        if self.rng.random() >= self.p:
            return image, label
        angle = self.rotate[0] + (self.rotate[1] - self.rotate[0]) * self.rng.random()
        image = _pil_map(image, lambda im, fill: im.rotate(angle, Image.BILINEAR, fillcolor=fill), self.padding)
        label = np.asarray(Image.fromarray(label).rotate(angle, Image.NEAREST, fillcolor=self.ignore_label))
        return image, label


# OpenCV's GaussianBlur(image, (k, k), 0) uses these binomial kernels for k <= 7 rather than
# the sigma formula, so the original's radius-5 blur is exactly [1, 4, 6, 4, 1] / 16.
_SMALL_GAUSSIAN_KERNELS = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}


class RandomGaussianBlur:
    """With probability p, blur the image with a `radius` x `radius` Gaussian kernel (label untouched).

    As OpenCV's `GaussianBlur(image, (k, k), 0)`: the binomial kernel for k <= 7, otherwise
    sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8; reflect-101 borders.
    """

    def __init__(self, radius: int = 5, p: float = 0.5, rng=None):
        if radius < 1 or radius % 2 == 0:
            raise ValueError(f"RandomGaussianBlur radius (kernel size) must be odd and >= 1, got {radius}")
        self.radius = radius
        self.p = p
        self.rng = rng or random
        if radius in _SMALL_GAUSSIAN_KERNELS:
            kernel = np.array(_SMALL_GAUSSIAN_KERNELS[radius], dtype=np.float64)
        else:
            sigma = 0.3 * ((radius - 1) * 0.5 - 1) + 0.8
            x = np.arange(radius, dtype=np.float64) - radius // 2
            kernel = np.exp(-(x**2) / (2 * sigma**2))
        self.kernel = (kernel / kernel.sum()).astype(np.float32)

    def blur(self, image: np.ndarray) -> np.ndarray:
        """The blurred image, same shape and dtype."""
        half = self.radius // 2
        data = image.astype(np.float32)
        pad = [(half, half), (half, half)] + [(0, 0)] * (image.ndim - 2)
        if min(image.shape[:2]) > half:
            padded = np.pad(data, pad, mode="reflect")
        else:  # reflect needs more pixels than the half kernel; tiny images repeat their edge
            padded = np.pad(data, pad, mode="edge")
        h, w = image.shape[:2]
        rows = sum(k * padded[i:i + h] for i, k in enumerate(self.kernel))
        out = sum(k * rows[:, i:i + w] for i, k in enumerate(self.kernel))
        if image.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.astype(image.dtype, copy=False)

    def __call__(self, image, label):
        if self.rng.random() < self.p:
            image = self.blur(image)
        return image, label


class RandomHorizontalFlip:
    """With probability p, mirror image and label left-right."""

    def __init__(self, p: float = 0.5, rng=None):
        self.p = p
        self.rng = rng or random

    def __call__(self, image, label):
        if self.rng.random() < self.p:
            image, label = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
        return image, label


class RandomVerticalFlip:
    """With probability p, mirror image and label top-bottom."""

    def __init__(self, p: float = 0.5, rng=None):
        self.p = p
        self.rng = rng or random

    def __call__(self, image, label):
        if self.rng.random() < self.p:
            image, label = np.ascontiguousarray(image[::-1]), np.ascontiguousarray(label[::-1])
        return image, label


class Crop:
    """Crop to (crop_h, crop_w), padding first when the input is smaller.

    Padding is split evenly (the extra pixel goes to the bottom/right): the image gets `padding`
    (the mean colour), the label `ignore_label`. `crop_type="rand"` picks the offset uniformly,
    `"center"` takes the middle (rounding the offset down).
    """

    def __init__(self, size, crop_type: str = "center", padding: Sequence[float] | None = None,
                 ignore_label: int = 255, rng=None):
        if isinstance(size, numbers.Integral):
            size = (size, size)
        if not (isinstance(size, Sequence) and len(size) == 2
                and all(isinstance(s, numbers.Integral) and s > 0 for s in size)):
            raise ValueError(f"Crop size must be an int or (h, w) of positive ints, got {size!r}")
        if crop_type not in ("rand", "center"):
            raise ValueError(f"Crop crop_type must be 'rand' or 'center', got {crop_type!r}")
        if not isinstance(ignore_label, numbers.Integral):
            raise ValueError(f"Crop ignore_label must be an integer, got {ignore_label!r}")
        self.crop_h, self.crop_w = int(size[0]), int(size[1])
        self.crop_type = crop_type
        self.padding = _padding(padding, "Crop")
        self.ignore_label = int(ignore_label)
        self.rng = rng or random

    def __call__(self, image, label):
        _check_pair(image, label, "Crop")
        h, w = label.shape
        pad_h, pad_w = max(self.crop_h - h, 0), max(self.crop_w - w, 0)
        if pad_h or pad_w:
            if self.padding is None:
                raise ValueError(f"Crop to {self.crop_h}x{self.crop_w} needs padding for a {h}x{w} input")
            top, left = pad_h // 2, pad_w // 2
            spec = [(top, pad_h - top), (left, pad_w - left)]
            fill = _fill_tuple(self.padding, image)
            planes = [np.pad(p, spec, constant_values=fill[min(c, 2)]) for c, p in enumerate(_planes(image))]
            image = _stack(planes, image)
            label = np.pad(label, spec, constant_values=self.ignore_label)
            h, w = label.shape
        if self.crop_type == "rand":
            top, left = self.rng.randint(0, h - self.crop_h), self.rng.randint(0, w - self.crop_w)
        else:
            top, left = (h - self.crop_h) // 2, (w - self.crop_w) // 2
        return (np.ascontiguousarray(image[top:top + self.crop_h, left:left + self.crop_w]),
                np.ascontiguousarray(label[top:top + self.crop_h, left:left + self.crop_w]))


def downscale_label(label, factor: int):
    """Label guidance at 1/factor scale: nearest-neighbour samples on the model's output grid.

    A (..., H, W) label (numpy array or torch tensor) becomes (..., (H-1)//factor+1, (W-1)//factor+1)
    by sampling rows/columns round(i * (H-1) / (h_out-1)), the align-corners grid that a stride-8
    network's logits live on (for H = 8k+1 that is exactly every 8th pixel). Class ids are never
    blended, unlike the original's bilinear resize of ids.
    """
    if factor < 1:
        raise ValueError(f"label downscale factor must be >= 1, got {factor}")
    if factor == 1:
        return label
    h, w = label.shape[-2:]
    h_out, w_out = (h - 1) // factor + 1, (w - 1) // factor + 1
    rows = np.rint(np.linspace(0, h - 1, h_out)).astype(np.int64)
    cols = np.rint(np.linspace(0, w - 1, w_out)).astype(np.int64)
    if isinstance(label, np.ndarray):
        return np.ascontiguousarray(label[..., rows, :][..., cols])
    import torch

    rows_t, cols_t = torch.from_numpy(rows).to(label.device), torch.from_numpy(cols).to(label.device)
    return label.index_select(-2, rows_t).index_select(-1, cols_t)


class DownscaleLabel:
    """Transform form of `downscale_label`: the image is untouched, the label goes to 1/factor."""

    def __init__(self, factor: int):
        if factor < 1:
            raise ValueError(f"DownscaleLabel factor must be >= 1, got {factor}")
        self.factor = int(factor)

    def __call__(self, image, label):
        return image, downscale_label(label, self.factor)


# --- presets -----------------------------------------------------------------------------------
_MISSING = object()


def _cfg(cfg, key: str, default: Any = _MISSING) -> Any:
    """`cfg[key]` for a Config, a dict or any attribute object; a clear KeyError if required."""
    if isinstance(cfg, Mapping):
        value = cfg.get(key, _MISSING)
    else:
        try:
            value = cfg[key]
        except (KeyError, TypeError, AttributeError):
            value = getattr(cfg, key, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise KeyError(f"config has no {key!r} (needed by the data transforms)")
        return default
    return value


def _mean_std(cfg) -> tuple[list[float], list[float]]:
    return list(_cfg(cfg, "mean", IMAGENET_MEAN)), list(_cfg(cfg, "std", IMAGENET_STD))


def train_transform(cfg, rng=None) -> Compose:
    """The original training preset from config keys.

    RandScale([scale_min, scale_max]) -> RandRotate([rotate_min, rotate_max], mean, ignore_label)
    -> RandomGaussianBlur() -> RandomHorizontalFlip() -> Crop([train_h, train_w], "rand", mean,
    ignore_label) -> [DownscaleLabel(label_scale) when label_scale > 1] -> ToTensor() ->
    Normalize(mean, std). mean/std default to ImageNet x 255 (keys `mean`/`std` override).
    Output: float32 (3, train_h, train_w) and int64 labels (train_h, train_w), or 1/label_scale.
    """
    mean, std = _mean_std(cfg)
    ignore = int(_cfg(cfg, "ignore_label", 255))
    steps = [
        RandScale([_cfg(cfg, "scale_min"), _cfg(cfg, "scale_max")], rng=rng),
        RandRotate([_cfg(cfg, "rotate_min"), _cfg(cfg, "rotate_max")], padding=mean, ignore_label=ignore, rng=rng),
        RandomGaussianBlur(rng=rng),
        RandomHorizontalFlip(rng=rng),
        Crop([int(_cfg(cfg, "train_h")), int(_cfg(cfg, "train_w"))], crop_type="rand", padding=mean,
             ignore_label=ignore, rng=rng),
    ]
    label_scale = int(_cfg(cfg, "label_scale", 1))
    if label_scale not in (1, 8):
        raise ValueError(f"config label_scale must be 1 or 8, got {label_scale}")
    if label_scale > 1:
        steps.append(DownscaleLabel(label_scale))
    return Compose([*steps, ToTensor(), Normalize(mean, std)])


def val_transform(cfg) -> Compose:
    """The original validation preset: Crop([train_h, train_w], "center", mean, ignore_label) ->
    ToTensor() -> Normalize(mean, std). Labels stay at full scale (metrics are full-resolution).
    """
    mean, std = _mean_std(cfg)
    ignore = int(_cfg(cfg, "ignore_label", 255))
    crop = Crop([int(_cfg(cfg, "train_h")), int(_cfg(cfg, "train_w"))], crop_type="center", padding=mean,
                ignore_label=ignore)
    return Compose([crop, ToTensor(), Normalize(mean, std)])
