"""An ignore label other than 255 (254, or 0 where 0 marks void): the metrics, the transforms, the
training loop's loss and validation, and `sceneparse test` all leave out exactly the configured
label, and 255 is then an ordinary (invalid) id. Every other test uses 255, so a 255 written into
the code instead of the setting would pass them all.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.transforms import Crop, RandRotate, train_transform, val_transform
from training.metrics import AreaMeter, intersection_and_union, intersection_and_union_torch

MEAN = (124.0, 116.0, 104.0)

# Hand-computed areas, one case per ignore label: (pred, target, classes, (intersection, union, target)).
CASES = {
    254: ([[0, 1, 1], [2, 2, 254]], [[0, 1, 2], [2, 254, 254]], 3,
          ([1, 1, 1], [1, 2, 2], [1, 1, 2])),
    # 0 marks void; classes 1..3 (a 4-way output whose channel 0 is never a target).
    0: ([[1, 1, 2], [3, 0, 0]], [[0, 1, 2], [2, 3, 0]], 4,
        ([0, 1, 1, 0], [1, 1, 2, 2], [0, 1, 2, 1])),
}


@pytest.mark.parametrize("ignore", CASES)
def test_metrics_leave_out_the_configured_ignore_label(ignore):
    pred, target, classes, expected = CASES[ignore]
    areas = intersection_and_union(np.array(pred), np.array(target), classes, ignore)
    assert [a.tolist() for a in areas] == [list(e) for e in expected]
    areas_torch = intersection_and_union_torch(torch.tensor(pred), torch.tensor(target), classes, ignore)
    assert [a.tolist() for a in areas_torch] == [list(e) for e in expected]
    meter = AreaMeter(classes, ignore)
    meter.update(np.array(pred), np.array(target))
    meter.update(np.array(pred), np.array(target))
    assert meter.target.tolist() == [2 * v for v in expected[2]]


def test_255_is_an_ordinary_id_when_the_ignore_label_is_254():
    target = np.array([[0, 255], [1, 254]])
    with pytest.raises(ValueError, match="255"):
        intersection_and_union(np.zeros_like(target), target, 3, 254)
    with pytest.raises(ValueError, match="255"):
        intersection_and_union_torch(torch.zeros(2, 2, dtype=torch.long), torch.from_numpy(target), 3, 254)


@pytest.mark.parametrize("ignore", [254, 0])
def test_padding_and_rotation_fill_the_label_with_the_ignore_label(ignore):
    image = np.full((6, 8, 3), 50, dtype=np.float32)
    label = np.full((6, 8), 2 if ignore == 0 else 1, dtype=np.uint8)
    _, padded = Crop((10, 12), "center", padding=MEAN, ignore_label=ignore)(image, label)
    assert padded.shape == (10, 12)
    assert set(np.unique(padded[:2])) == {ignore} and set(np.unique(padded[2:8, 2:10])) == {label[0, 0]}

    _, rotated = RandRotate([45, 45], padding=MEAN, ignore_label=ignore, p=1.0)(
        np.full((21, 21, 3), 50, np.float32), np.full((21, 21), 3, np.uint8))
    assert rotated[0, 0] == ignore and rotated[10, 10] == 3 and 255 not in rotated


@pytest.mark.parametrize("ignore", [254, 0])
def test_the_presets_pad_with_the_configured_ignore_label(ignore):
    cfg = {"scale_min": 0.5, "scale_max": 0.5, "rotate_min": -10, "rotate_max": 10, "train_h": 33, "train_w": 33,
           "ignore_label": ignore}
    image = np.random.default_rng(0).uniform(0, 255, (40, 40, 3)).astype(np.float32)
    label = np.full((40, 40), 2, np.uint8)
    random.seed(0)
    _, train_label = train_transform(cfg)(image, label)  # 20x20 after scaling: padded to 33x33
    values = set(torch.unique(train_label).tolist())
    assert ignore in values and values <= {2, ignore}
    _, val_label = val_transform(cfg)(image[:20, :20], label[:20, :20])
    assert set(torch.unique(val_label).tolist()) == {2, ignore}


# --- training: the loss and the per-epoch validation read the setting ---------------------------
def relabelled_dataset(source, destination: Path, ignore: int, samples: int = 4) -> tuple[Path, Path]:
    """The first `samples` train and val images of `source` with rows of `ignore` pixels in each
    label (and, for ignore 0, class 0 moved to class 1 so 0 means only void). Returns the lists."""
    lists = []
    for split, list_path in (("train", source.train_list), ("val", source.val_list)):
        lines = []
        for line in list_path.read_text().splitlines()[:samples]:
            image_rel, label_rel = line.split()
            for rel in (image_rel, label_rel):
                (destination / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(source.root) / image_rel, destination / image_rel)
            label = np.array(Image.open(Path(source.root) / label_rel))
            if ignore == 0:
                label[label == 0] = 1
            label[::4] = ignore  # every 4th row: in any crop the transforms take
            Image.fromarray(label).save(destination / label_rel)
            lines.append(line)
        lists.append(destination / f"{split}.txt")
        lists[-1].write_text("\n".join(lines) + "\n")
    return lists[0], lists[1]


@pytest.mark.parametrize("ignore", [254, 0])
def test_training_and_its_validation_use_the_configured_ignore_label(synthetic_dataset, tmp_path, ignore):
    from training.config import config_path
    from training.train import main

    train_list, val_list = relabelled_dataset(synthetic_dataset, tmp_path / "data", ignore)
    overrides = {"data_root": tmp_path / "data", "train_list": train_list, "val_list": val_list,
                 "save_path": tmp_path / "run", "train_h": 33, "train_w": 33, "batch_size": 2, "batch_size_val": 2,
                 "epochs": 1, "workers": 0, "manual_seed": 0, "evaluate": True, "ignore_label": ignore}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = [str(item) for key, value in overrides.items() for item in (key, value)]
        assert main(["--config", str(config_path("synthetic/synthetic_pspnet18")), *args]) == 0
    finally:
        torch.set_num_threads(before)
    metrics = torch.load(tmp_path / "run" / "final.pth", weights_only=True)["metrics"]
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["aAcc"] <= 1.0


# --- evaluation: `sceneparse test` scores with the configured ignore label ----------------------
@pytest.mark.parametrize("ignore", [254, 0])
def test_scoring_leaves_out_the_configured_ignore_label(synthetic_dataset, tmp_path, ignore):
    from training.evaluate import evaluate_dataset

    _, val_list = relabelled_dataset(synthetic_dataset, tmp_path / "data", ignore, samples=3)
    save_folder = tmp_path / "result"
    (save_folder / "gray").mkdir(parents=True)
    rng = np.random.default_rng(ignore)
    expected_intersection = np.zeros(6, np.int64)
    expected_target = np.zeros(6, np.int64)
    for line in val_list.read_text().splitlines():
        image_rel, label_rel = line.split()
        label = np.array(Image.open(tmp_path / "data" / label_rel))
        # A prediction right on ~70% of the pixels, any class (never the ignore label) elsewhere.
        prediction = np.where(rng.random(label.shape) < 0.7, label, rng.integers(1, 6, label.shape)).astype(np.uint8)
        prediction[label == ignore] = rng.integers(1, 6, int((label == ignore).sum()))
        Image.fromarray(prediction).save(save_folder / "gray" / f"{Path(image_rel).stem}.png")
        scored = label != ignore
        expected_target += np.bincount(label[scored], minlength=6)
        expected_intersection += np.bincount(label[scored & (prediction == label)], minlength=6)
    cfg = {"data_root": str(tmp_path / "data"), "test_list": str(val_list), "split": "val", "classes": 6,
           "dataset": "synthetic", "names_path": str(synthetic_dataset.names_path),
           "colors_path": str(synthetic_dataset.colors_path), "has_prediction": True, "save_folder": str(save_folder),
           "ignore_label": ignore, "test_h": 33, "test_w": 33, "base_size": 80, "scales": [1.0]}
    result = evaluate_dataset(cfg, progress=False, write_report_files=False)
    assert [c["target"] for c in result["per_class"]] == expected_target.tolist()
    assert [c["intersection"] for c in result["per_class"]] == expected_intersection.tolist()
    assert result["aAcc"] == pytest.approx(expected_intersection.sum() / expected_target.sum())


# --- datasets whose label files hold their own ids (CamVid's void is 11, ADE20K's 0) -------------
@pytest.mark.parametrize("ignore", [255, 254])
def test_a_mapped_datasets_void_becomes_the_configured_ignore_label(synthetic_dataset, tmp_path, ignore):
    from training.config import config_path
    from training.datasets import label_mapping
    from training.evaluate import evaluate_dataset
    from training.train import main

    mapped = label_mapping("camvid", ignore)(np.array([[0, 10, 11, 255]], np.uint8))
    assert mapped.tolist() == [[0, 10, ignore, ignore]]
    mapped = label_mapping("ade20k", ignore)(np.array([[0, 1, 150]], np.uint8))
    assert mapped.tolist() == [[ignore, 0, 149]]
    with pytest.raises(ValueError, match="ignore_label 3"):
        label_mapping("camvid", 3)  # a class of the dataset cannot be its ignore label

    # The synthetic scenes as CamVid label files: classes 0..5, and rows of CamVid's void id 11.
    train_list, val_list = relabelled_dataset(synthetic_dataset, tmp_path / "data", 11)
    data = {"data_root": tmp_path / "data", "dataset": "camvid", "classes": 11, "ignore_label": ignore}
    overrides = {**data, "train_list": train_list, "val_list": val_list, "save_path": tmp_path / "run",
                 "train_h": 33, "train_w": 33, "batch_size": 2, "batch_size_val": 2, "epochs": 1, "workers": 0,
                 "manual_seed": 0, "evaluate": True, "names_path": "", "colors_path": ""}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = [str(item) for key, value in overrides.items() for item in (key, value)]
        assert main(["--config", str(config_path("synthetic/synthetic_pspnet18")), *args]) == 0
    finally:
        torch.set_num_threads(before)

    # Scoring: void pixels are left out, whatever the ignore label.
    save_folder = tmp_path / "result"
    (save_folder / "gray").mkdir(parents=True)
    expected = np.zeros(11, np.int64)
    for line in val_list.read_text().splitlines():
        image_rel, label_rel = line.split()
        label = np.array(Image.open(tmp_path / "data" / label_rel))
        Image.fromarray(np.where(label == 11, 3, label).astype(np.uint8)).save(
            save_folder / "gray" / f"{Path(image_rel).stem}.png")
        expected += np.bincount(label[label != 11], minlength=11)
    cfg = {**{k: str(v) for k, v in data.items()}, "classes": 11, "ignore_label": ignore, "test_list": str(val_list),
           "split": "val", "has_prediction": True, "save_folder": str(save_folder), "test_h": 33, "test_w": 33,
           "base_size": 80, "scales": [1.0]}
    result = evaluate_dataset(cfg, progress=False, write_report_files=False)
    assert [c["target"] for c in result["per_class"]] == expected.tolist()
    assert result["aAcc"] == 1.0  # every scored pixel was predicted right; the void ones were not scored
