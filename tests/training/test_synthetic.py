"""The synthetic dataset generator: format, determinism, argument checks, the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from training.data.synthetic import class_styles, main, make_synthetic_dataset, render_scene


def _read_pairs(list_path):
    return [line.split() for line in list_path.read_text().splitlines()]


def test_fixture_dataset_has_the_list_format(synthetic_dataset):
    ds = synthetic_dataset
    train, val = _read_pairs(ds.train_list), _read_pairs(ds.val_list)
    assert (len(train), len(val)) == (24, 8)
    seen = set()
    for image_rel, label_rel in train + val:
        assert not image_rel.startswith("/") and not label_rel.startswith("/")
        image = Image.open(ds.root / image_rel)
        label = Image.open(ds.root / label_rel)
        assert image.mode == "RGB" and label.mode == "L"
        assert image.size == label.size == (80, 64)
        ids = np.unique(np.asarray(label))
        assert ids.max() < ds.classes  # never 255, never out of range
        seen.update(ids.tolist())
    assert seen == set(range(ds.classes)), "every class appears somewhere"


def test_names_and_colors_files_match_the_classes(synthetic_dataset):
    names = synthetic_dataset.names_path.read_text().splitlines()
    colors = np.loadtxt(synthetic_dataset.colors_path)
    assert len(names) == synthetic_dataset.classes == len(set(names))
    assert names[0] == "background"
    assert colors.shape == (synthetic_dataset.classes, 3)
    assert colors.min() >= 0 and colors.max() <= 255
    assert len({tuple(c) for c in colors}) == synthetic_dataset.classes


def test_same_seed_same_scenes_and_prefixes_stable(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", train=3, val=1, size=(32, 40), seed=7, progress=False)
    b = make_synthetic_dataset(tmp_path / "b", train=5, val=2, size=(32, 40), seed=7, progress=False)
    c = make_synthetic_dataset(tmp_path / "c", train=3, val=1, size=(32, 40), seed=8, progress=False)
    for name in ("images/train_0002.jpg", "labels/train_0002.png", "labels/val_0000.png"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes()
    assert (a.root / "labels/train_0000.png").read_bytes() != (c.root / "labels/train_0000.png").read_bytes()


def test_classes_look_different_from_each_other():
    """Mean colour per class over many scenes differs: the task is learnable from appearance."""
    styles = class_styles(6)
    rng = np.random.default_rng(0)
    sums = np.zeros((6, 3))
    counts = np.zeros(6)
    for _ in range(20):
        image, label = render_scene(styles, 48, 64, rng)
        for k in range(6):
            mask = label == k
            sums[k] += image[mask].sum(axis=0)
            counts[k] += mask.sum()
    means = sums / counts[:, None]
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(6, dtype=bool)].min() > 20


def test_many_classes_get_unique_names():
    styles = class_styles(255)
    assert len({s.name for s in styles}) == 254


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--classes", "1"], "classes must be between 2 and 255"),
        (["--classes", "256"], "classes must be between 2 and 255"),
        (["--train", "0"], "at least 1 image"),
        (["--size", "96by128"], "HxW"),
        (["--size", "8x8"], "16..4096"),
    ],
)
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["--out", str(tmp_path / "out"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_writes_a_dataset(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sceneparse.cli", "make-synthetic", "--out", str(tmp_path / "d"),
         "--classes", "3", "--train", "2", "--val", "1", "--size", "24x32", "--seed", "1"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "make-synthetic" in result.stderr  # the progress bar
    assert len((tmp_path / "d/train.txt").read_text().splitlines()) == 2
    assert (tmp_path / "d/list/val.txt").read_text() == (tmp_path / "d/val.txt").read_text()
    assert len((tmp_path / "d/synthetic_names.txt").read_text().splitlines()) == 3
