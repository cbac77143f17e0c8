"""Segmentation metrics: per-class intersection/union/target areas, mIoU, mAcc and aAcc.

The areas are counted as the original project did (pixels whose target is the ignore label are
left out; a class's union is prediction area + target area - intersection), so that sums over
images, batches or processes give the dataset's areas. This module imports no torch at the top:
the numpy half works anywhere, `intersection_and_union_torch` imports torch when called.

Classes absent from both the prediction and the target (union 0) have no defined IoU. Two
policies, chosen with `absent=`:

- `"zero"` (default, the original's numbers): every class counts in the mean, an undefined ratio
  counts as 0 (the original divided by union + 1e-10 and averaged over all K classes).
- `"exclude"` (opt-in, as some later tools do): such classes are left out of mIoU; classes with
  no target pixels are left out of mAcc. Their per-class values are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ABSENT_POLICIES = ("zero", "exclude")
DEFAULT_ABSENT = "zero"  # the original's averaging; `sceneparse test`, validation and the gates follow it


def intersection_and_union(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class pixel areas of one prediction against its target.

    Args:
        pred: integer class ids, any shape; values outside [0, num_classes) count as wrong.
        target: integer class ids of the same shape, in [0, num_classes) or `ignore_index`.
        num_classes: K.
        ignore_index: target value whose pixels are left out entirely.
    Returns:
        (area_intersection, area_union, area_target): int64 arrays of length K.
    Raises:
        ValueError: shapes differ, or the target holds ids other than [0, K) and ignore_index
        (usually a missing label-id mapping).
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    pred = pred.reshape(-1).astype(np.int64, copy=False)
    target = target.reshape(-1).astype(np.int64, copy=False)
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    bad = (target < 0) | (target >= num_classes)
    if bad.any():
        raise ValueError(
            f"target holds class ids {sorted(np.unique(target[bad]).tolist())[:10]} outside "
            f"[0, {num_classes}) that are not the ignore label {ignore_index}"
        )
    in_range = (pred >= 0) & (pred < num_classes)
    area_pred = np.bincount(pred[in_range], minlength=num_classes)
    area_target = np.bincount(target, minlength=num_classes)
    area_intersection = np.bincount(target[pred == target], minlength=num_classes)
    area_union = area_pred + area_target - area_intersection
    return area_intersection.astype(np.int64), area_union.astype(np.int64), area_target.astype(np.int64)


def intersection_and_union_torch(pred, target, num_classes: int, ignore_index: int = 255):
    """The same areas as `intersection_and_union`, for torch tensors on any device.

    Args:
        pred, target: integer tensors of the same shape (e.g. (N, H, W)) on one device.
    Returns:
        (area_intersection, area_union, area_target): int64 tensors of length K on that device,
        ready for `torch.distributed.all_reduce` (sum) across processes.
    """
    import torch

    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    bad = (target < 0) | (target >= num_classes)
    if bool(bad.any()):
        ids = torch.unique(target[bad])[:10].tolist()
        raise ValueError(
            f"target holds class ids {ids} outside [0, {num_classes}) that are not the ignore label {ignore_index}"
        )
    in_range = (pred >= 0) & (pred < num_classes)
    # bincount without weights is deterministic on CUDA (histc is not).
    area_pred = torch.bincount(pred[in_range], minlength=num_classes)
    area_target = torch.bincount(target, minlength=num_classes)
    area_intersection = torch.bincount(target[pred == target], minlength=num_classes)
    area_union = area_pred + area_target - area_intersection
    return area_intersection, area_union, area_target


def _ratio(numerator: np.ndarray, denominator: np.ndarray, absent: str) -> np.ndarray:
    """numerator / denominator per class; where the denominator is 0: NaN (exclude) or 0 (zero)."""
    out = np.full(numerator.shape, np.nan if absent == "exclude" else 0.0, dtype=np.float64)
    defined = denominator > 0
    out[defined] = numerator[defined] / denominator[defined]
    return out


def _mean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def summarize(
    intersection: Sequence[int] | np.ndarray,
    union: Sequence[int] | np.ndarray,
    target: Sequence[int] | np.ndarray,
    class_names: Sequence[str] | None = None,
    absent: str = DEFAULT_ABSENT,
) -> dict:
    """Dataset metrics from summed per-class areas (numpy arrays, lists or CPU tensors).

    Args:
        intersection, union, target: per-class pixel counts, length K (summed over images).
        class_names: optional K names for the per-class table (default "class_<i>").
        absent: "zero" (default) or "exclude", see the module docstring.
    Returns:
        {"mIoU", "mAcc", "aAcc": floats in [0, 1] (NaN when nothing is defined),
         "absent": the policy, "num_classes": K,
         "classes_in_miou": how many classes the mIoU averages, "classes_in_macc": same for mAcc,
         "per_class": [{"id", "name", "iou", "accuracy", "intersection", "union", "target"}, ...]}
        with per-class iou/accuracy NaN where undefined under "exclude".
    """
    if absent not in ABSENT_POLICIES:
        raise ValueError(f"absent must be one of {ABSENT_POLICIES}, got {absent!r}")
    intersection = np.asarray(intersection, dtype=np.int64).reshape(-1)
    union = np.asarray(union, dtype=np.int64).reshape(-1)
    target = np.asarray(target, dtype=np.int64).reshape(-1)
    num_classes = intersection.size
    if union.size != num_classes or target.size != num_classes:
        raise ValueError(
            f"intersection, union and target lengths differ: {num_classes}, {union.size}, {target.size}"
        )
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
    iou = _ratio(intersection, union, absent)
    accuracy = _ratio(intersection, target, absent)
    total_target = int(target.sum())
    if total_target:
        all_accuracy = float(intersection.sum() / total_target)
    else:
        all_accuracy = math.nan if absent == "exclude" else 0.0
    per_class = [
        {
            "id": i,
            "name": str(class_names[i]),
            "iou": float(iou[i]),
            "accuracy": float(accuracy[i]),
            "intersection": int(intersection[i]),
            "union": int(union[i]),
            "target": int(target[i]),
        }
        for i in range(num_classes)
    ]
    return {
        "mIoU": _mean(iou),
        "mAcc": _mean(accuracy),
        "aAcc": all_accuracy,
        "absent": absent,
        "num_classes": num_classes,
        "classes_in_miou": int((~np.isnan(iou)).sum()),
        "classes_in_macc": int((~np.isnan(accuracy)).sum()),
        "per_class": per_class,
    }


class AreaMeter:
    """Sums per-class areas over images; `summary()` gives `summarize`'s dict.

    Example: `meter.update(pred, target)` per image, then `meter.summary(names)`.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.intersection = np.zeros(num_classes, dtype=np.int64)
        self.union = np.zeros(num_classes, dtype=np.int64)
        self.target = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add one prediction/target pair (numpy, same shape); returns that pair's areas."""
        areas = intersection_and_union(pred, target, self.num_classes, self.ignore_index)
        self.add(*areas)
        return areas

    def add(self, intersection, union, target) -> None:
        """Add already counted areas (e.g. all-reduced across processes)."""
        self.intersection += np.asarray(intersection, dtype=np.int64)
        self.union += np.asarray(union, dtype=np.int64)
        self.target += np.asarray(target, dtype=np.int64)

    def summary(self, class_names: Sequence[str] | None = None, absent: str = DEFAULT_ABSENT) -> dict:
        return summarize(self.intersection, self.union, self.target, class_names, absent)
