"""List files and SegmentationDataset: the format, the line-numbered errors, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.dataset import SegmentationDataset, load_pair
from training.data.lists import DataListError, parse_list, read_list
from training.data.transforms import train_transform, val_transform


def _write_pair(root, stem, h=12, w=16, label_size=None, label_mode="L"):
    (root / "img").mkdir(exist_ok=True)
    (root / "lab").mkdir(exist_ok=True)
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img/{stem}.png")
    lh, lw = label_size or (h, w)
    label = Image.fromarray(rng.integers(0, 4, (lh, lw), dtype=np.uint8))
    if label_mode != "L":
        label = label.convert(label_mode)
    label.save(root / f"lab/{stem}.png")
    return f"img/{stem}.png", f"lab/{stem}.png"


def _list(root, lines, name="train.txt"):
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_list_joins_paths_with_data_root_and_skips_blank_lines(tmp_path):
    a, b = _write_pair(tmp_path, "a"), _write_pair(tmp_path, "b")
    path = _list(tmp_path, [" ".join(a), "", " ".join(b), "   "])
    assert read_list(path, tmp_path, "train") == [
        (str(tmp_path / a[0]), str(tmp_path / a[1])),
        (str(tmp_path / b[0]), str(tmp_path / b[1])),
    ]
    assert [e.line for e in parse_list(path, tmp_path, "train")] == [1, 3]


def test_test_split_accepts_image_only_lines(tmp_path):
    a, b = _write_pair(tmp_path, "a"), _write_pair(tmp_path, "b")
    path = _list(tmp_path, [a[0], " ".join(b)], "test.txt")
    assert read_list(path, tmp_path, "test") == [(str(tmp_path / a[0]), None),
                                                 (str(tmp_path / b[0]), str(tmp_path / b[1]))]
    with pytest.raises(DataListError, match=r"test\.txt:1: malformed line for split 'train'"):
        read_list(path, tmp_path, "train")


@pytest.mark.parametrize(
    ("lines", "line", "problem"),
    [
        (["img/a.png lab/a.png", "img/a.png lab/a.png extra"], 2, "malformed line"),
        (["img/a.png lab/a.png", "", "img/missing.png lab/a.png"], 3, "file does not exist: {root}/img/missing.png"),
        (["img/a.png lab/nolabel.png"], 1, "file does not exist: {root}/lab/nolabel.png"),
    ],
)
def test_bad_lines_name_the_list_the_line_and_the_path(tmp_path, lines, line, problem):
    _write_pair(tmp_path, "a")
    path = _list(tmp_path, lines)
    with pytest.raises(DataListError) as info:
        read_list(path, tmp_path, "val")
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert problem.format(root=tmp_path) in str(info.value)
    assert info.value.line == line and info.value.list_path == str(path)


def test_missing_or_empty_list_and_bad_split(tmp_path):
    with pytest.raises(DataListError, match="list file does not exist"):
        read_list(tmp_path / "nope.txt", tmp_path, "train")
    with pytest.raises(DataListError, match="no samples"):
        read_list(_list(tmp_path, [""]), tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        read_list(_list(tmp_path, [""]), tmp_path, "training")


def test_label_of_another_size_is_reported_with_its_line(tmp_path):
    _write_pair(tmp_path, "a")
    b = _write_pair(tmp_path, "b", label_size=(12, 15))
    path = _list(tmp_path, ["img/a.png lab/a.png", " ".join(b)])
    dataset = SegmentationDataset("train", tmp_path, path)
    dataset[0]
    with pytest.raises(DataListError) as info:
        dataset[1]
    message = str(info.value)
    assert message.startswith(f"{path}:2: label is 12x15 but its image")
    assert message.endswith(str(tmp_path / b[1]))


def test_rgb_label_and_unreadable_image_are_errors(tmp_path):
    a = _write_pair(tmp_path, "a", label_mode="RGB")
    (tmp_path / "img/broken.png").write_bytes(b"not a png")
    path = _list(tmp_path, [" ".join(a), f"img/broken.png {a[1]}"])
    dataset = SegmentationDataset("val", tmp_path, path)
    with pytest.raises(DataListError, match=r":1: label must be an 8-bit single-channel PNG.*mode RGB"):
        dataset[0]
    with pytest.raises(DataListError, match=r":2: cannot read image .*broken\.png"):
        dataset[1]


def test_palette_labels_decode_to_their_indices(tmp_path):
    a = _write_pair(tmp_path, "a")
    label = np.asarray(Image.open(tmp_path / a[1]))
    palette_label = Image.fromarray(label).convert("P")
    palette_label.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 3 % 256, i)])
    palette_label.save(tmp_path / a[1])
    entry = parse_list(_list(tmp_path, [" ".join(a)]), tmp_path, "train")[0]
    _, decoded = load_pair(entry)
    np.testing.assert_array_equal(decoded, label)


def test_dataset_reads_the_synthetic_fixture_raw(synthetic_dataset):
    ds = synthetic_dataset
    dataset = SegmentationDataset("train", ds.root, ds.train_list)
    assert len(dataset) == 24
    image, label = dataset[3]
    assert image.dtype == np.uint8 and image.shape == (64, 80, 3)
    assert label.dtype == np.uint8 and label.shape == (64, 80)
    expected = np.asarray(Image.open(dataset.data_list[3][1]))
    np.testing.assert_array_equal(label, expected)


def test_label_mapping_is_applied_and_its_errors_located(synthetic_dataset):
    ds = synthetic_dataset
    shifted = SegmentationDataset("val", ds.root, ds.val_list, label_mapping=lambda lab: np.where(lab == 0, 255, lab - 1))
    plain = SegmentationDataset("val", ds.root, ds.val_list)
    _, label = plain[0]
    _, mapped = shifted[0]
    np.testing.assert_array_equal(mapped[label == 0], 255)
    np.testing.assert_array_equal(mapped[label > 0], label[label > 0] - 1)

    def refuse(label):
        raise ValueError("ids [9] are not ade20k ids")

    with pytest.raises(DataListError, match=r"val\.txt:1: label mapping failed: ids \[9\]"):
        SegmentationDataset("val", ds.root, ds.val_list, label_mapping=refuse)[0]


def test_test_split_without_labels_gives_ignore_placeholders(synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    images = [line.split()[0] for line in ds.val_list.read_text().splitlines()]
    test_list = _list(tmp_path, images, "test.txt")
    dataset = SegmentationDataset("test", ds.root, test_list)
    image, label = dataset[0]
    assert label.shape == image.shape[:2] and (label == 255).all()


def test_dataset_with_presets_feeds_a_dataloader(synthetic_dataset):
    ds = synthetic_dataset
    cfg = {"scale_min": 0.5, "scale_max": 2.0, "rotate_min": -10, "rotate_max": 10,
           "train_h": 65, "train_w": 65, "ignore_label": 255}
    train = SegmentationDataset("train", ds.root, ds.train_list, transform=train_transform(cfg))
    loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=True, num_workers=0)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 65, 65) and images.dtype == torch.float32
    assert labels.shape == (4, 65, 65) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= set(range(6)) | {255}
    val = SegmentationDataset("val", ds.root, ds.val_list, transform=val_transform(cfg))
    image, label = val[0]
    assert image.shape == (3, 65, 65) and label.shape == (65, 65)
    # 64x80 centre-cropped to 65x65: one padded row (the bottom one) of ignore
    assert (label[64] == 255).all() and (label[:64] != 255).all()
