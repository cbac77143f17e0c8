"""`sceneparse test` end to end on the synthetic dataset with a tiny PSPNet-18 (random weights).

Also: the TorchRunner driving the shared numpy pipeline equals a direct PyTorch transcription of
the original per-window test protocol.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from serving.pipeline import InferenceOptions, PipelineSpec, predict_probabilities
from training.config import load_config
from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from training.datasets import read_colors, read_names
from training.evaluate import evaluate_dataset, main
from training.models import build_model
from training.runners import TorchRunner

CONFIG = Path(__file__).resolve().parents[2] / "training" / "config" / "synthetic" / "synthetic_pspnet18.yaml"
CROP, BASE_SIZE, IMAGES = 65, 80, 4


@pytest.fixture(scope="module")
def tiny_model():
    """A PSPNet-18 (6 classes, no aux head) with seeded random weights, in eval mode."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = load_config(CONFIG)
    return build_model({**dict(cfg), "pretrained_backbone": None}, aux=False).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_dataset, tiny_model):
    """A checkpoint of the tiny model, a 4-image list, and the overrides that point the config at them."""
    folder = tmp_path_factory.mktemp("evaluate")
    checkpoint = folder / "model.pth"
    torch.save(tiny_model.state_dict(), checkpoint)
    lines = Path(synthetic_dataset.val_list).read_text().splitlines()[:IMAGES]
    test_list = folder / "val4.txt"
    test_list.write_text("\n".join(lines) + "\n")
    overrides = [
        "data_root", str(synthetic_dataset.root), "test_list", str(test_list), "model_path", str(checkpoint),
        "names_path", str(synthetic_dataset.names_path), "colors_path", str(synthetic_dataset.colors_path),
        "test_h", str(CROP), "test_w", str(CROP), "base_size", str(BASE_SIZE), "scales", "[1.0]",
        "flip", "False",  # flip is proven against the original protocol below; this keeps the runs short
    ]  # fmt: skip
    return {"folder": folder, "overrides": overrides, "lines": lines, "dataset": synthetic_dataset}


@pytest.fixture(scope="module")
def full_run(setup):
    """`sceneparse test` over the 4 images; returns (rc, save_folder)."""
    save_folder = setup["folder"] / "full"
    rc = main(["--config", str(CONFIG), *setup["overrides"], "save_folder", str(save_folder)])
    return rc, save_folder


def _gray(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "gray").glob("*.png"))}


def test_writes_gray_and_color_pngs_of_the_image_size(setup, full_run):
    rc, save_folder = full_run
    assert rc == 0
    root, palette = Path(setup["dataset"].root), read_colors(setup["dataset"].colors_path)
    gray = _gray(save_folder)
    assert sorted(gray) == sorted(Path(line.split()[0]).stem for line in setup["lines"])
    for line in setup["lines"]:
        image_rel = line.split()[0]
        name = Path(image_rel).stem
        width, height = Image.open(root / image_rel).size
        assert gray[name].shape == (height, width) and gray[name].dtype == np.uint8
        assert gray[name].max() < 6
        color = Image.open(save_folder / "color" / f"{name}.png")
        assert color.size == (width, height)
        np.testing.assert_array_equal(np.asarray(color.convert("RGB")), palette[gray[name]])


def test_metrics_reports_agree_with_an_independent_count(setup, full_run, capsys):
    _, save_folder = full_run
    root = Path(setup["dataset"].root)
    predictions = _gray(save_folder)
    labels = {Path(line.split()[0]).stem: np.asarray(Image.open(root / line.split()[1])) for line in setup["lines"]}
    correct = sum(int((predictions[n] == labels[n]).sum()) for n in labels)
    pixels = sum(labels[n].size for n in labels)  # synthetic labels have no ignore pixels
    report = json.loads((save_folder / "metrics.json").read_text())
    assert report["aAcc"] == pytest.approx(correct / pixels)
    assert report["images"] == IMAGES and report["settings"]["crop"] == [CROP, CROP]
    names = read_names(setup["dataset"].names_path)
    assert [row["name"] for row in report["per_class"]] == names
    target = np.bincount(np.concatenate([lab.ravel() for lab in labels.values()]), minlength=6)
    assert [row["target"] for row in report["per_class"]] == target.tolist()
    # The original's average (the default): over all 6 classes, an absent one counting 0.
    ious = [row["iou"] for row in report["per_class"]]
    assert report["absent"] == "zero" and None not in ious
    assert report["mIoU"] == pytest.approx(sum(ious) / 6)
    with (save_folder / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == names
    assert float(rows[0]["iou"]) == pytest.approx(report["per_class"][0]["iou"])
    chart = Image.open(save_folder / "metrics.png")
    assert chart.format == "PNG" and chart.size[0] >= 400
    # Re-scoring the written PNGs without the model gives the same numbers.
    capsys.readouterr()
    rc = main(["--config", str(CONFIG), *setup["overrides"], "save_folder", str(save_folder), "has_prediction", "True"])
    assert rc == 0
    captured = capsys.readouterr()
    printed = captured.out
    rescored = json.loads((save_folder / "metrics.json").read_text())
    # The original test script's lines, for scripts that parse its logs.
    log = captured.err
    assert (f"] Eval result: mIoU/mAcc/allAcc {report['mIoU']:.4f}/{report['mAcc']:.4f}/{report['aAcc']:.4f}.\n"
            in log)
    for row in report["per_class"]:
        assert (f"] Class_{row['id']} result: iou/accuracy {row['iou']:.4f}/{row['accuracy']:.4f}, "
                f"name: {row['name']}.\n") in log
    assert rescored["per_class"] == report["per_class"] and rescored["seconds_per_image"] is None
    assert f"mIoU {100 * report['mIoU']:.2f}" in printed and names[3] in printed


def test_shards_are_disjoint_and_together_equal_the_full_run(setup, full_run):
    _, full_folder = full_run
    shard_folder = setup["folder"] / "shards"
    halves = []
    for start in (0, 2):
        folder = shard_folder / f"from_{start}"
        args = ["save_folder", str(folder), "index_start", str(start), "index_step", "2"]
        assert main(["--config", str(CONFIG), "--no-progress", *setup["overrides"], *args]) == 0
        halves.append(_gray(folder))
        assert (folder / f"metrics_{start}-{start + 2}.json").is_file()
    assert len(halves[0]) == len(halves[1]) == 2 and not set(halves[0]) & set(halves[1])
    full = _gray(full_folder)
    assert {**halves[0], **halves[1]}.keys() == full.keys()
    for name, prediction in {**halves[0], **halves[1]}.items():
        np.testing.assert_array_equal(prediction, full[name])
    # The shards' areas add up to the full run's.
    reports = [json.loads((shard_folder / f"from_{s}" / f"metrics_{s}-{s + 2}.json").read_text()) for s in (0, 2)]
    whole = json.loads((full_folder / "metrics.json").read_text())
    for key in ("intersection", "union", "target"):
        summed = [a[key] + b[key] for a, b in zip(reports[0]["per_class"], reports[1]["per_class"], strict=True)]
        assert summed == [row[key] for row in whole["per_class"]]


def test_test_split_writes_predictions_only(setup, capsys):
    folder = setup["folder"] / "test_split"
    one_column = folder / "images.txt"
    folder.mkdir()
    one_column.write_text(setup["lines"][0].split()[0] + "\n")
    args = ["split", "test", "test_list", str(one_column), "save_folder", str(folder / "out")]
    assert main(["--config", str(CONFIG), "--no-progress", *setup["overrides"], *args]) == 0
    assert len(list((folder / "out" / "gray").glob("*.png"))) == 1
    assert not list((folder / "out").glob("metrics*"))
    assert "no labels to score" in capsys.readouterr().out


def test_bad_inputs_give_one_line_and_nonzero_exit(setup, capsys):
    base = ["--config", str(CONFIG), "--no-progress", *setup["overrides"]]
    assert main([*base, "model_path", str(setup["folder"] / "missing.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.pth" in err and "model_path" in err
    # Re-scoring a folder that has no predictions names the missing file.
    assert main([*base, "save_folder", str(setup["folder"] / "empty"), "has_prediction", "True"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prediction" in err and "does not exist" in err
    assert main([*base, "index_start", "9"]) == 2
    assert "index_start 9" in capsys.readouterr().err


def test_library_call_returns_the_metrics(setup, tiny_model, full_run):
    _, full_folder = full_run
    cfg = load_config(CONFIG, [*setup["overrides"], "save_folder", str(full_folder), "has_prediction", "True"])
    result = evaluate_dataset(cfg, progress=False, write_report_files=False, absent="zero")
    assert result["absent"] == "zero" and result["images"] == IMAGES and result["reports"] == {}
    assert 0.0 <= result["mIoU"] <= 1.0 and not math.isnan(result["aAcc"])


# --- the runner + pipeline against the original protocol ----------------------------------------
def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.INTER_LINEAR (half-pixel, no antialiasing) of an (H, W, C) float64 array, via PyTorch."""
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0].numpy().transpose(1, 2, 0)


def original_protocol(image, model, crop, base_size, scales, flip, classes, mean, std):
    """The original test script's scale_process/net_process, one window (+ its flip) per forward pass."""
    height, width = image.shape[:2]
    mean_arr, std_arr = np.array(mean), np.array(std)
    prediction = np.zeros((height, width, classes))
    for scale in scales:
        long_size = round(scale * base_size)
        new_h, new_w = long_size, long_size
        if height > width:
            new_w = round(long_size / float(height) * width)
        else:
            new_h = round(long_size / float(width) * height)
        scaled = _resize(image.astype(np.float64), (new_h, new_w))
        pad_h, pad_w = max(crop - new_h, 0), max(crop - new_w, 0)
        top, left = int(pad_h / 2), int(pad_w / 2)
        padded = np.stack(
            [np.pad(scaled[..., c], ((top, pad_h - top), (left, pad_w - left)), constant_values=mean_arr[c]) for c in range(3)],
            axis=-1,
        )
        big_h, big_w = padded.shape[:2]
        stride = int(np.ceil(crop * 2 / 3))
        grid_h, grid_w = int(np.ceil((big_h - crop) / stride) + 1), int(np.ceil((big_w - crop) / stride) + 1)
        summed, count = np.zeros((big_h, big_w, classes)), np.zeros((big_h, big_w))
        for index_h in range(grid_h):
            for index_w in range(grid_w):
                e_h, e_w = min(index_h * stride + crop, big_h), min(index_w * stride + crop, big_w)
                s_h, s_w = e_h - crop, e_w - crop
                window = torch.from_numpy(((padded[s_h:e_h, s_w:e_w] - mean_arr) / std_arr).transpose(2, 0, 1)).float()[None]
                if flip:
                    window = torch.cat([window, window.flip(3)])
                with torch.no_grad():
                    output = model(window)
                if output.shape[2:] != window.shape[2:]:
                    output = F.interpolate(output, window.shape[2:], mode="bilinear", align_corners=True)
                output = F.softmax(output, dim=1)
                output = (output[0] + output[1].flip(2)) / 2 if flip else output[0]
                summed[s_h:e_h, s_w:e_w] += output.double().numpy().transpose(1, 2, 0)
                count[s_h:e_h, s_w:e_w] += 1
        summed = (summed / count[..., None])[top:top + new_h, left:left + new_w]
        prediction += _resize(summed, (height, width))
    return prediction / len(scales)


def test_runner_and_pipeline_equal_the_original_protocol(tiny_model):
    image = np.random.default_rng(3).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    scales, flip = (0.75, 1.25), True  # 0.75: padded, one window; 1.25: 2x2 overlapping windows
    expected = original_protocol(image, tiny_model, CROP, BASE_SIZE, scales, flip, 6, IMAGENET_MEAN, IMAGENET_STD)
    spec = PipelineSpec(CROP, CROP, 6, IMAGENET_MEAN, IMAGENET_STD, BASE_SIZE)
    runner = TorchRunner(tiny_model, "cpu", max_batch_size=4)
    got = predict_probabilities(image, runner, spec, InferenceOptions(scales=scales, flip=flip))
    assert got.shape == (50, 70, 6)
    print(f"max |pipeline - original| = {np.abs(got - expected).max():.2e}")
    assert np.abs(got - expected).max() < 1e-5
    # The check has teeth: the model is not flip-invariant, so a flip mistake would show.
    window = np.random.default_rng(4).normal(size=(1, 3, CROP, CROP)).astype(np.float32)
    logits = runner(np.concatenate([window, window[..., ::-1]]))
    assert np.abs(logits[0] - logits[1][..., ::-1]).max() > 1e-3
