"""Dataset label ids -> train ids (the ids the network predicts; void -> the ignore label, 255 by default)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from training.datasets.metadata import IGNORE_LABEL, DatasetInfo, dataset_info

# cityscapesScripts helpers/labels.py: label id -> trainId for ids 0..33 (255 = not evaluated).
# License plate (id -1) never appears in the *_labelIds.png files.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_NUM_IDS = 34  # ids 0..33

ADE20K_NUM_IDS = 151  # 0 = "other objects" (void), 1..150 = classes
CAMVID_VOID_ID = 11  # SegNet CamVid: 0..10 classes, 11 = Unlabelled


def _lut(num_ids: int, mapping: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for source, target in mapping.items():
        lut[source] = target
    known = np.zeros(256, dtype=bool)
    known[:num_ids] = True
    return lut, known


def label_lut(dataset: str | DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """The id mapping of a dataset as lookup tables.

    Returns `(lut, known)`: `lut` is a `(256,)` uint8 array with `train_id = lut[id]`; `known`
    is a `(256,)` bool array marking the ids the dataset's label files may contain.
    - ade20k: 0 (void) -> 255, k -> k - 1 for k in 1..150.
    - cityscapes: label ids 0..33 -> trainIds of cityscapesScripts' labels.py, 255 for the rest.
    - camvid, camvid_segnet: 0..10 unchanged, 11 (Unlabelled) -> 255; 255 stays 255.
    - others (voc2012, bdd100k, bdd100k_drivable(_toolkit), custom): ids are train ids already;
      0..num_classes-1 and 255 are valid.
    """
    info = dataset if isinstance(dataset, DatasetInfo) else dataset_info(dataset)
    if info.name == "ade20k":
        return _lut(ADE20K_NUM_IDS, {k: k - 1 for k in range(1, ADE20K_NUM_IDS)})
    if info.name == "cityscapes":
        return _lut(CITYSCAPES_NUM_IDS, CITYSCAPES_ID_TO_TRAINID)
    mapping = {k: k for k in range(info.num_classes)}
    if info.name in ("camvid", "camvid_segnet"):
        mapping[CAMVID_VOID_ID] = IGNORE_LABEL
        lut, known = _lut(CAMVID_VOID_ID + 1, mapping)
    else:
        lut, known = _lut(info.num_classes, mapping)
    known[IGNORE_LABEL] = True
    return lut, known


def map_labels(label: np.ndarray, dataset: str | DatasetInfo, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Convert a label map from the dataset's stored ids to train ids.

    Args:
        label: integer array of any shape (typically `(H, W)` from a label PNG).
        dataset: a dataset name or DatasetInfo (see `label_lut` for each mapping).
        ignore_label: the value ignored pixels get (the config's `ignore_label`; 255 by default).

    Returns:
        uint8 array of the same shape with train ids, `ignore_label` for ignored pixels (the
        dataset's void ids, and 255 in the file).
        Raises ValueError listing ids the dataset's label files cannot contain.
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must hold integers, got dtype {label.dtype}")
    lut, known = label_lut(dataset)
    name = dataset.name if isinstance(dataset, DatasetInfo) else dataset
    if label.size and label.dtype != np.uint8:
        low, high = int(label.min()), int(label.max())
        if low < 0 or high > 255:
            raise ValueError(f"{name}: label id {low if low < 0 else high} is not a valid id")
        label = label.astype(np.uint8)
    present = np.unique(label)
    unknown = present[~known[present]]
    if unknown.size:
        raise ValueError(f"{name}: label ids {unknown[:10].tolist()} are not valid ids of this dataset")
    mapped = lut[label]
    if ignore_label != IGNORE_LABEL:
        mapped[mapped == IGNORE_LABEL] = ignore_label
    return mapped


# Packaged datasets whose label files hold ids other than the train ids; the others' files hold
# train ids already (VOC, BDD100K, synthetic, custom datasets), as the original read them.
MAPPED_DATASETS = ("ade20k", "cityscapes", "camvid", "camvid_segnet")


def label_mapping(dataset: str | None, ignore_label: int = IGNORE_LABEL) -> Callable[[np.ndarray], np.ndarray] | None:
    """The label-id -> train-id mapping that training and evaluation apply to a dataset's label
    files (e.g. ADE20K's 0 -> ignore, k -> k-1), or None when its files hold train ids.

    Void ids become `ignore_label`, the config's: a hard-coded 255 would reach the loss and the
    metrics as a class id when the config ignores another value. Raises ValueError when
    `ignore_label` is one of the dataset's train ids or outside 0..255 (the maps are 8-bit).
    """
    if dataset not in MAPPED_DATASETS:
        return None
    info = dataset_info(dataset)
    ignore_label = int(ignore_label)
    if not 0 <= ignore_label <= 255 or ignore_label < info.num_classes:
        raise ValueError(f"ignore_label {ignore_label} cannot mark {dataset}'s void pixels: it must lie in "
                         f"{info.num_classes}..255, past its train ids 0..{info.num_classes - 1}")
    return functools.partial(map_labels, dataset=dataset, ignore_label=ignore_label)
