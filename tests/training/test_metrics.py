"""Metric code on hand-computed examples: ignore label, absent classes, both policies, torch parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.metrics import (
    DEFAULT_ABSENT,
    AreaMeter,
    intersection_and_union,
    intersection_and_union_torch,
    summarize,
)

# A 3x4 example with 4 classes; class 3 appears in neither prediction nor target,
# and 255 marks two ignored pixels (one of them predicted as class 2).
TARGET = np.array([[0, 0, 1, 1],
                   [0, 2, 1, 255],
                   [2, 2, 255, 1]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 0, 2],
                 [2, 0, 1, 1]], dtype=np.uint8)
# Counted by hand over the 10 non-ignored pixels:
#   predictions there: [0,1,1,1, 0,2,0, 2,0,1] -> areas 4, 4, 2, 0
#   targets there:     [0,0,1,1, 0,2,1, 2,2,1] -> areas 3, 4, 3, 0
#   agreeing pixels:   (0,0)=0 (1,0)=0 | (0,2)=1 (0,3)=1 (2,3)=1 | (1,1)=2 (2,0)=2 -> 2, 3, 2, 0
EXPECTED_INTERSECTION = [2, 3, 2, 0]
EXPECTED_TARGET = [3, 4, 3, 0]
EXPECTED_PRED = [4, 4, 2, 0]
EXPECTED_UNION = [3 + 4 - 2, 4 + 4 - 3, 3 + 2 - 2, 0]  # [5, 5, 3, 0]


def test_areas_hand_computed_with_ignore_label():
    inter, union, target = intersection_and_union(PRED, TARGET, 4)
    assert inter.tolist() == EXPECTED_INTERSECTION
    assert union.tolist() == EXPECTED_UNION
    assert target.tolist() == EXPECTED_TARGET
    assert inter.dtype == union.dtype == target.dtype == np.int64
    # The ignored pixels change nothing whatever is predicted there.
    other = PRED.copy()
    other[TARGET == 255] = 3
    assert [a.tolist() for a in intersection_and_union(other, TARGET, 4)] == [inter.tolist(), union.tolist(), target.tolist()]


def test_summary_exclude_policy_leaves_absent_class_out():
    result = summarize(EXPECTED_INTERSECTION, EXPECTED_UNION, EXPECTED_TARGET, ["a", "b", "c", "d"], absent="exclude")
    ious = [2 / 5, 3 / 5, 2 / 3]
    accs = [2 / 3, 3 / 4, 2 / 3]
    assert result["mIoU"] == pytest.approx(sum(ious) / 3)
    assert result["mAcc"] == pytest.approx(sum(accs) / 3)
    assert result["aAcc"] == pytest.approx(7 / 10)
    assert result["classes_in_miou"] == 3 and result["classes_in_macc"] == 3
    assert [c["name"] for c in result["per_class"]] == ["a", "b", "c", "d"]
    assert math.isnan(result["per_class"][3]["iou"]) and math.isnan(result["per_class"][3]["accuracy"])
    assert result["per_class"][1]["iou"] == pytest.approx(3 / 5)


def test_summary_zero_policy_reproduces_original_numbers():
    result = summarize(EXPECTED_INTERSECTION, EXPECTED_UNION, EXPECTED_TARGET, absent="zero")
    # The original: mean over all K classes of I / (U + 1e-10), the absent class counting 0.
    original_miou = np.mean(np.array(EXPECTED_INTERSECTION) / (np.array(EXPECTED_UNION) + 1e-10))
    original_macc = np.mean(np.array(EXPECTED_INTERSECTION) / (np.array(EXPECTED_TARGET) + 1e-10))
    assert result["mIoU"] == pytest.approx(original_miou)
    assert result["mIoU"] == pytest.approx((2 / 5 + 3 / 5 + 2 / 3) / 4)
    assert result["mAcc"] == pytest.approx(original_macc)
    assert result["per_class"][3]["iou"] == 0.0
    assert result["classes_in_miou"] == 4


def test_predicted_but_absent_from_target_counts_zero_iou_and_no_accuracy():
    # Class 2 is predicted but never in the target: IoU 0 counts, accuracy is undefined.
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    result = summarize(*intersection_and_union(pred, target, 3), absent="exclude")
    assert result["per_class"][2]["iou"] == 0.0
    assert math.isnan(result["per_class"][2]["accuracy"])
    assert result["mIoU"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert result["mAcc"] == pytest.approx((1 / 2 + 1) / 2)


def test_perfect_prediction_and_out_of_range_prediction():
    target = np.array([[0, 1], [2, 255]])
    result = summarize(*intersection_and_union(target, target, 3))
    assert result["mIoU"] == 1.0 and result["mAcc"] == 1.0 and result["aAcc"] == 1.0
    # A prediction outside [0, K) is a miss for the target's class and belongs to no union.
    inter, union, tgt = intersection_and_union(np.array([[0, 7], [2, 0]]), target, 3)
    assert inter.tolist() == [1, 0, 1] and union.tolist() == [1, 1, 1] and tgt.tolist() == [1, 1, 1]


def test_bad_target_ids_and_shapes_are_named():
    with pytest.raises(ValueError, match=r"class ids \[5\] outside \[0, 3\)"):
        intersection_and_union(np.zeros(3), np.array([0, 5, 255]), 3)
    with pytest.raises(ValueError, match="shape"):
        intersection_and_union(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="absent"):
        summarize([1], [1], [1], absent="skip")
    with pytest.raises(ValueError, match="names"):
        summarize([1], [1], [1], class_names=["a", "b"])


def test_empty_target_gives_nan_means_under_exclude():
    result = summarize([0, 0], [0, 0], [0, 0], absent="exclude")
    assert math.isnan(result["mIoU"]) and math.isnan(result["aAcc"])
    zero = summarize([0, 0], [0, 0], [0, 0], absent="zero")
    assert zero["mIoU"] == 0.0 and zero["aAcc"] == 0.0


def test_torch_variant_matches_numpy_on_random_batches():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 6, size=(3, 17, 23))
    target = rng.integers(0, 6, size=(3, 17, 23))
    target[rng.random(target.shape) < 0.1] = 255
    expected = intersection_and_union(pred, target, 6)
    got = intersection_and_union_torch(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8), 6)
    for e, g in zip(expected, got, strict=True):
        assert g.dtype == torch.int64
        assert g.tolist() == e.tolist()
    with pytest.raises(ValueError, match="outside"):
        intersection_and_union_torch(torch.zeros(2, dtype=torch.long), torch.tensor([0, 9]), 6)


def test_meter_sums_images_equal_one_big_image():
    rng = np.random.default_rng(1)
    preds = [rng.integers(0, 4, size=(5, 7)) for _ in range(3)]
    targets = [rng.integers(0, 4, size=(5, 7)) for _ in range(3)]
    meter = AreaMeter(4)
    for p, t in zip(preds, targets, strict=True):
        meter.update(p, t)
    whole = summarize(*intersection_and_union(np.concatenate(preds), np.concatenate(targets), 4))
    assert meter.summary() == whole


def test_the_default_is_the_originals_average_over_all_classes():
    """`sceneparse test`, validation and AreaMeter.summary() average as the original by default:
    every class counts, an absent one as 0 (the original divided by union + 1e-10)."""
    assert DEFAULT_ABSENT == "zero"
    result = summarize(EXPECTED_INTERSECTION, EXPECTED_UNION, EXPECTED_TARGET)
    assert result["absent"] == "zero" and result["classes_in_miou"] == 4
    assert result["mIoU"] == pytest.approx((2 / 5 + 3 / 5 + 2 / 3 + 0) / 4)
    assert result["mAcc"] == pytest.approx((2 / 3 + 3 / 4 + 2 / 3 + 0) / 4)
    meter = AreaMeter(4)
    meter.update(PRED, TARGET)
    assert meter.summary()["mIoU"] == pytest.approx(result["mIoU"])
    assert meter.summary(absent="exclude")["mIoU"] == pytest.approx((2 / 5 + 3 / 5 + 2 / 3) / 3)
