"""`SegmentationDataset`: image/label pairs from a list file, decoded with PIL.

Images are RGB uint8 (H, W, 3) (palette, grey and RGBA files are converted to RGB); labels are
8-bit single-channel PNGs of class ids (mode "L", or "P" where the palette index is the id, as
in VOC), uint8 (H, W), 255 = ignore. A label whose size differs from its image is a
`DataListError` naming the list file, the line and the label path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from training.data.lists import DataListError, ListEntry, parse_list

__all__ = ["LABEL_MODES", "DataListError", "SegmentationDataset", "load_pair"]

LABEL_MODES = ("L", "P")
LabelMapping = Callable[[np.ndarray], np.ndarray]
Transform = Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]


def _open(entry: ListEntry, path: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise entry.error("file does not exist", path) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise entry.error(f"cannot read image ({exc.__class__.__name__})", path) from None


def load_pair(
    entry: ListEntry, ignore_label: int = 255, label_mapping: LabelMapping | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one entry: (image uint8 (H, W, 3) RGB, label uint8 (H, W) class ids).

    An entry without a label (test split, one column) gets a label full of `ignore_label`, so
    that the same transforms apply. `label_mapping` (e.g. ADE20K's 0 -> 255, id - 1) is applied
    to the decoded label before it is returned.
    """
    with _open(entry, entry.image_path) as image_file:
        size = image_file.size  # (w, h), from the header alone
        if entry.label_path is None:
            label = np.full((size[1], size[0]), ignore_label, dtype=np.uint8)
        else:
            with _open(entry, entry.label_path) as label_file:
                if label_file.size != size:
                    raise entry.error(
                        f"label is {label_file.size[1]}x{label_file.size[0]} but its image "
                        f"{entry.image_path} is {size[1]}x{size[0]} (HxW)",
                        entry.label_path,
                    )
                if label_file.mode not in LABEL_MODES:
                    raise entry.error(
                        f"label must be an 8-bit single-channel PNG of class ids, got mode {label_file.mode}",
                        entry.label_path,
                    )
                label = np.array(label_file, dtype=np.uint8)
        try:
            image = np.array(image_file.convert("RGB"), dtype=np.uint8)
        except OSError as exc:
            raise entry.error(f"cannot decode image ({exc})", entry.image_path) from None
    if label_mapping is not None:
        try:
            label = np.asarray(label_mapping(label), dtype=np.uint8)
        except ValueError as exc:  # e.g. an id the dataset's label files cannot contain
            raise entry.error(f"label mapping failed: {exc}", entry.label_path) from None
    return image, label


class SegmentationDataset(Dataset):
    """A list-file dataset in the original format.

    Args:
        split: "train", "val" or "test" (test may list images without labels).
        data_root: directory the list's paths are relative to.
        list_path: the list file.
        transform: joint `transform(image, label) -> (image, label)`, e.g. `train_transform(cfg)`;
            None returns the raw uint8 arrays.
        label_mapping: callable uint8 (H, W) -> uint8 (H, W) applied to each label, e.g.
            `functools.partial(training.datasets.map_labels, dataset="ade20k")`.
        ignore_label: fill value of the placeholder label of unlabelled test images.

    `dataset[i]` is whatever the transform returns for (image float32 (H, W, 3) in 0-255, label
    uint8 (H, W)): the original handed its transforms float32 images, and the OpenCV steps keep
    the dtype, so the arithmetic (and the result) is the original's. With `ToTensor`/`Normalize`
    at the end, float32 (3, h, w) and int64 (h, w). Without a transform, the decoded uint8 pair.
    """

    def __init__(
        self,
        split: str,
        data_root: str | os.PathLike,
        list_path: str | os.PathLike,
        transform: Transform | None = None,
        label_mapping: LabelMapping | None = None,
        ignore_label: int = 255,
    ):
        self.split = split
        self.entries = parse_list(list_path, data_root, split)
        self.transform = transform
        self.label_mapping = label_mapping
        self.ignore_label = ignore_label

    @property
    def data_list(self) -> list[tuple[str, str | None]]:
        """(image_path, label_path or None) per sample, as the original `make_dataset` gave."""
        return [(e.image_path, e.label_path) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        image, label = load_pair(self.entries[index], self.ignore_label, self.label_mapping)
        if self.transform is not None:
            return self.transform(image.astype(np.float32), label)
        return image, label

