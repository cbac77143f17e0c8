"""Joint image/label transforms with the original project's semantics, on OpenCV and numpy.

Every transform is `t(image, label) -> (image, label)`. Before `ToTensor`, `image` is a numpy
array (H, W, C) or (H, W) in the 0-255 scale and `label` is uint8 (H, W) class ids with
`ignore_label` (255) for "don't care". `SegmentationDataset` hands the transforms float32 RGB
images, as the original did (it read with OpenCV, converted BGR to RGB and then to float32), and
every step keeps the dtype, so images stay float32 through the chain.

The geometry is OpenCV's, called the way the original called it, so that a seeded run gives the
original's tensors: the same output sizes (`cv2.resize` with fx/fy rounds to the nearest pixel),
the same sampling grids (pixel centres at integer coordinates, rotation about (w/2, h/2)), the
same bilinear weights and border rules. The image is resampled bilinearly, the label ONLY with
nearest neighbour, so a label value always comes from some real source pixel. Padding fills the
image with the mean colour (unrounded for float images) and the label with `ignore_label`.

Random decisions come from `rng` (anything with `random()` and `randint(a, b)`), by default the
`random` module, which PyTorch seeds per DataLoader worker, as the original relied on. The draws
happen in the original's order: RandScale: scale (then aspect ratio, if given); RandRotate:
apply? then angle; RandomGaussianBlur: apply?; RandomHorizontalFlip: apply?; Crop ("rand"):
row offset, then column offset.

`train_transform(cfg)` and `val_transform(cfg)` are the original training and validation presets.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from training.config import as_config

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

# As the original's training script: OpenCV's own thread pool would fight the DataLoader workers
# (each worker is already one process per core), and OpenCL would move small arrays to a GPU.
cv2.setNumThreads(0)
cv2.ocl.setUseOpenCL(False)


# --- argument checks ---------------------------------------------------------------------------
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


def _resize(image: np.ndarray, label: np.ndarray, **size) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear image, nearest label; `size` is cv2.resize's dsize=(w, h) or fx=, fy=."""
    dsize = size.pop("dsize", None)
    out_image = cv2.resize(image, dsize, interpolation=cv2.INTER_LINEAR, **size)
    out_label = cv2.resize(label, dsize, interpolation=cv2.INTER_NEAREST, **size)
    if image.ndim == 3 and out_image.ndim == 2:  # OpenCV drops a single channel axis
        out_image = out_image[:, :, None]
    return out_image, out_label


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
        # One contiguous (C, H, W) copy: Normalize's per-channel arithmetic on it is about 3x
        # faster than on the strided view of the (H, W, C) array that the original kept.
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
    """Resize to (h, w): image bilinear, label nearest (`cv2.resize` with dsize=(w, h))."""

    def __init__(self, size: Sequence[int]):
        if not (isinstance(size, Sequence) and len(size) == 2 and all(int(s) > 0 for s in size)):
            raise ValueError(f"Resize size must be (h, w) of positive ints, got {size!r}")
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image, label):
        _check_pair(image, label, "Resize")
        return _resize(image, label, dsize=(self.size[1], self.size[0]))


class RandScale:
    """Scale by s ~ U[scale] (and aspect ratio r ~ U[aspect_ratio] if given), as the original.

    s = low + (high - low) * random(); with an aspect ratio, sqrt(r) multiplies the width factor
    and divides the height factor. `cv2.resize(..., None, fx, fy)`: the output is
    round(w * fx) x round(h * fy) and source coordinates are (dst + 0.5) / f - 0.5 (bilinear image)
    or floor(dst / f) (nearest label), the factors taken as given rather than from the rounded size.
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
        fx, fy = s * r, s / r
        if round(w * fx) < 1 or round(h * fy) < 1:
            # OpenCV refuses an empty output; the original crashed here on tiny inputs.
            raise ValueError(f"RandScale: factor {s:.3f} shrinks a {h}x{w} input to nothing")
        return _resize(image, label, fx=fx, fy=fy)


class RandRotate:
    """With probability p, rotate by an angle ~ U[rotate] degrees (counter-clockwise) about (w/2, h/2).

    As the original: `random() < p` decides, then the angle is drawn; `cv2.getRotationMatrix2D`
    about (w/2, h/2) in pixel-index coordinates and `cv2.warpAffine` to the same (w, h), bilinear for
    the image and nearest for the label. Uncovered corners are the `padding` colour (image) and
    `ignore_label` (label).
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
        h, w = label.shape
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
        out_image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=self.padding)
        if image.ndim == 3 and out_image.ndim == 2:
            out_image = out_image[:, :, None]
        out_label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=self.ignore_label)
        return out_image, out_label


class RandomGaussianBlur:
    """With probability p, blur the image with `cv2.GaussianBlur(image, (radius, radius), 0)` (label untouched).

    OpenCV uses the binomial kernel for sizes up to 7 ([1, 4, 6, 4, 1] / 16 for the default 5),
    otherwise sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8; borders reflect without repeating the edge.
    """

    def __init__(self, radius: int = 5, p: float = 0.5, rng=None):
        if radius < 1 or radius % 2 == 0:
            raise ValueError(f"RandomGaussianBlur radius (kernel size) must be odd and >= 1, got {radius}")
        self.radius = radius
        self.p = p
        self.rng = rng or random

    def blur(self, image: np.ndarray) -> np.ndarray:
        """The blurred image, same shape and dtype."""
        out = cv2.GaussianBlur(image, (self.radius, self.radius), 0)
        return out[:, :, None] if image.ndim == 3 and out.ndim == 2 else out

    def __call__(self, image, label):
        if self.rng.random() < self.p:
            image = self.blur(image)
        return image, label


def _flip(image: np.ndarray, label: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    # cv2.flip, as the original: the same pixels as numpy's reversed views, but copied about 8x
    # faster than np.ascontiguousarray(image[:, ::-1]) on a float32 image.
    out = cv2.flip(image, code)
    return (out[:, :, None] if image.ndim == 3 and out.ndim == 2 else out), cv2.flip(label, code)


class RandomHorizontalFlip:
    """With probability p, mirror image and label left-right."""

    def __init__(self, p: float = 0.5, rng=None):
        self.p = p
        self.rng = rng or random

    def __call__(self, image, label):
        if self.rng.random() < self.p:
            image, label = _flip(image, label, 1)
        return image, label


class RandomVerticalFlip:
    """With probability p, mirror image and label top-bottom."""

    def __init__(self, p: float = 0.5, rng=None):
        self.p = p
        self.rng = rng or random

    def __call__(self, image, label):
        if self.rng.random() < self.p:
            image, label = _flip(image, label, 0)
        return image, label


class Crop:
    """Crop to (crop_h, crop_w), padding first when the input is smaller.

    Padding (`cv2.copyMakeBorder`, constant) puts int(pad / 2) rows above and the rest below, and
    likewise left/right: the image gets `padding` (the mean colour), the label `ignore_label`.
    `crop_type="rand"` draws the row offset with randint(0, h - crop_h), then the column offset
    with randint(0, w - crop_w); `"center"` takes int((h - crop_h) / 2), int((w - crop_w) / 2).
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
            borders = (top, pad_h - top, left, pad_w - left)
            padded = cv2.copyMakeBorder(image, *borders, cv2.BORDER_CONSTANT, value=self.padding)
            image = padded[:, :, None] if image.ndim == 3 and padded.ndim == 2 else padded
            label = cv2.copyMakeBorder(label, *borders, cv2.BORDER_CONSTANT, value=self.ignore_label)
            h, w = label.shape
        if self.crop_type == "rand":
            top = self.rng.randint(0, h - self.crop_h)
            left = self.rng.randint(0, w - self.crop_w)
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
def train_transform(cfg, rng=None) -> Compose:
    """The original training preset from config keys.

    RandScale([scale_min, scale_max]) -> RandRotate([rotate_min, rotate_max], mean, ignore_label)
    -> RandomGaussianBlur() -> RandomHorizontalFlip() -> Crop([train_h, train_w], "rand", mean,
    ignore_label) -> [DownscaleLabel(label_scale) when label_scale > 1] -> ToTensor() ->
    Normalize(mean, std) with ImageNet's mean/std x 255, as the original.
    Output: float32 (3, train_h, train_w) and int64 labels (train_h, train_w), or 1/label_scale.

    `cfg` is a Config or a mapping of the keys it needs (validated by `training.config.as_config`;
    keys it leaves out take the schema's defaults).
    """
    cfg = as_config(cfg, partial=True)
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    steps = [
        RandScale([cfg.scale_min, cfg.scale_max], rng=rng),
        RandRotate([cfg.rotate_min, cfg.rotate_max], padding=mean, ignore_label=cfg.ignore_label, rng=rng),
        RandomGaussianBlur(rng=rng),
        RandomHorizontalFlip(rng=rng),
        Crop([cfg.train_h, cfg.train_w], crop_type="rand", padding=mean, ignore_label=cfg.ignore_label, rng=rng),
    ]
    label_scale = cfg.label_scale
    if label_scale > 1:
        steps.append(DownscaleLabel(label_scale))
    return Compose([*steps, ToTensor(), Normalize(mean, std)])


def val_transform(cfg) -> Compose:
    """The original validation preset: Crop([train_h, train_w], "center", mean, ignore_label) ->
    ToTensor() -> Normalize(mean, std). Labels stay at full scale (metrics are full-resolution).
    """
    cfg = as_config(cfg, partial=True)
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    crop = Crop([cfg.train_h, cfg.train_w], crop_type="center", padding=mean, ignore_label=cfg.ignore_label)
    return Compose([crop, ToTensor(), Normalize(mean, std)])
