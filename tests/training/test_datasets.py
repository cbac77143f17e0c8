"""Dataset metadata: packaged names/palettes, the label-id mappings, colorize and bad files."""

from __future__ import annotations

import numpy as np
import pytest

from training.datasets import (
    CITYSCAPES_ID_TO_TRAINID,
    DatasetError,
    colorize,
    dataset_info,
    dataset_info_for_config,
    list_datasets,
    map_labels,
    palette_for,
    read_colors,
    read_names,
)

COUNTS = {"ade20k": 150, "voc2012": 21, "cityscapes": 19, "camvid": 11, "camvid_segnet": 11, "bdd100k": 19,
          "bdd100k_drivable": 3, "bdd100k_drivable_toolkit": 3}

# (dataset, train id, name, colour) taken from each dataset's published definition.
KNOWN = [
    ("ade20k", 0, "wall", (120, 120, 120)),
    ("ade20k", 2, "sky", (6, 230, 230)),
    ("ade20k", 12, "person", (150, 5, 61)),
    ("ade20k", 149, "flag", (92, 0, 255)),
    ("voc2012", 0, "background", (0, 0, 0)),
    ("voc2012", 1, "aeroplane", (128, 0, 0)),
    ("voc2012", 15, "person", (192, 128, 128)),
    ("voc2012", 20, "tvmonitor", (0, 64, 128)),
    ("cityscapes", 0, "road", (128, 64, 128)),
    ("cityscapes", 10, "sky", (70, 130, 180)),
    ("cityscapes", 11, "person", (220, 20, 60)),
    ("cityscapes", 18, "bicycle", (119, 11, 32)),
    ("camvid_segnet", 0, "sky", (128, 128, 128)),
    ("camvid_segnet", 3, "road", (128, 64, 128)),
    ("camvid_segnet", 4, "pavement", (60, 40, 222)),
    ("camvid_segnet", 10, "bicyclist", (0, 128, 192)),
    ("bdd100k", 13, "car", (0, 0, 142)),
    ("bdd100k_drivable_toolkit", 0, "direct", (219, 94, 86)),
    ("bdd100k_drivable_toolkit", 1, "alternative", (86, 211, 219)),
    ("bdd100k_drivable_toolkit", 2, "background", (0, 0, 0)),
]

# The original project's files, whole: a model trained on its label ids is coloured as it was.
ORIGINAL_CAMVID = [
    ("Building", (128, 0, 0)), ("Tree", (128, 128, 0)), ("Sky", (128, 128, 128)), ("Car", (64, 0, 128)),
    ("SignSymbol", (192, 128, 128)), ("Road", (128, 64, 128)), ("Pedestrian", (64, 64, 0)),
    ("Fence", (64, 64, 128)), ("Column_Pole", (192, 192, 128)), ("Sidewalk", (0, 0, 192)),
    ("Bicyclist", (0, 128, 192)),
]
ORIGINAL_BDD_DRIVABLE = [("void", (0, 0, 0)), ("drivable", (255, 0, 0)), ("alt", (0, 0, 255))]


@pytest.mark.parametrize(("dataset", "expected"), [("camvid", ORIGINAL_CAMVID), ("bdd100k_drivable", ORIGINAL_BDD_DRIVABLE)])
def test_camvid_and_bdd_drivable_are_the_originals_files(dataset, expected):
    info = dataset_info(dataset)
    assert list(info.classes) == [name for name, _ in expected]
    assert [tuple(c) for c in info.palette.tolist()] == [color for _, color in expected]


def test_the_other_orders_hold_the_same_classes_elsewhere():
    """camvid_segnet is the SegNet order of the same 11 CamVid classes and colours."""
    original, segnet = dataset_info("camvid"), dataset_info("camvid_segnet")
    renamed = {"column_pole": "pole", "sidewalk": "pavement"}
    colours = {renamed.get(n.lower(), n.lower()): tuple(c) for n, c in zip(original.classes, original.palette.tolist(), strict=True)}
    assert set(colours) == set(segnet.classes)
    for name, colour in zip(segnet.classes, segnet.palette.tolist(), strict=True):
        assert name == "pavement" or colours[name] == tuple(colour), name


def test_every_dataset_has_its_class_count_and_a_uint8_palette():
    assert list_datasets() == sorted(COUNTS)
    for name, count in COUNTS.items():
        info = dataset_info(name)
        assert info.num_classes == count == len(info.classes)
        assert info.palette.shape == (count, 3) and info.palette.dtype == np.uint8
        assert info.ignore_label == 255
        assert len(set(info.classes)) == count, f"{name} has duplicate class names"
        assert not info.palette.flags.writeable  # shared metadata must not be edited in place
        assert dataset_info(name) is info  # packaged metadata is read once


@pytest.mark.parametrize(("dataset", "train_id", "name", "color"), KNOWN)
def test_known_names_and_colours(dataset, train_id, name, color):
    info = dataset_info(dataset)
    assert info.classes[train_id] == name
    assert tuple(info.palette[train_id].tolist()) == color


def test_voc_palette_is_the_bit_interleaved_colour_map():
    expected = []
    for index in range(21):
        r = g = b = 0
        for bit in range(8):
            r |= ((index >> (3 * bit)) & 1) << (7 - bit)
            g |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
            b |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
        expected.append((r, g, b))
    assert palette_for("voc2012").tolist() == [list(c) for c in expected]


def test_bdd100k_uses_the_cityscapes_classes_and_colours():
    city, bdd = dataset_info("cityscapes"), dataset_info("bdd100k")
    assert city.classes == bdd.classes
    np.testing.assert_array_equal(city.palette, bdd.palette)


def test_palettes_are_distinct_within_each_dataset():
    for name in ("voc2012", "cityscapes", "camvid", "camvid_segnet", "bdd100k_drivable", "bdd100k_drivable_toolkit"):
        rows = {tuple(c) for c in palette_for(name).tolist()}
        assert len(rows) == COUNTS[name], name
    # The published ADE20K palette repeats one colour: road (6) and skyscraper (48) are both 140 gray.
    ade = palette_for("ade20k")
    assert len({tuple(c) for c in ade.tolist()}) == 149
    assert ade[6].tolist() == ade[48].tolist() == [140, 140, 140]
    assert dataset_info("ade20k").classes[48] == "skyscraper"


def test_ade20k_mapping_makes_void_ignore_and_shifts_classes_down():
    label = np.array([[0, 1, 2], [75, 150, 0]], dtype=np.uint8)
    mapped = map_labels(label, "ade20k")
    assert mapped.dtype == np.uint8 and mapped.shape == label.shape
    np.testing.assert_array_equal(mapped, [[255, 0, 1], [74, 149, 255]])
    with pytest.raises(ValueError, match="151"):
        map_labels(np.array([[151]], dtype=np.uint8), "ade20k")


def test_cityscapes_mapping_follows_labels_py():
    ids = np.arange(34, dtype=np.int32).reshape(2, 17)
    mapped = map_labels(ids, "cityscapes").reshape(-1)
    expected = np.full(34, 255)
    for label_id, train_id in {
        7: 0,
        8: 1,
        11: 2,
        12: 3,
        13: 4,
        17: 5,
        19: 6,
        20: 7,
        21: 8,
        22: 9,
        23: 10,
        24: 11,
        25: 12,
        26: 13,
        27: 14,
        28: 15,
        31: 16,
        32: 17,
        33: 18,
    }.items():
        expected[label_id] = train_id
    np.testing.assert_array_equal(mapped, expected)
    assert sorted(CITYSCAPES_ID_TO_TRAINID.values()) == list(range(19))
    # void / not-evaluated ids: unlabeled, ego vehicle, parking, guard rail, polegroup, caravan, trailer
    assert (map_labels(np.array([0, 1, 9, 14, 18, 29, 30]), "cityscapes") == 255).all()
    with pytest.raises(ValueError, match="34"):
        map_labels(np.array([[34]]), "cityscapes")


def test_camvid_void_and_passthrough_datasets():
    np.testing.assert_array_equal(map_labels(np.array([[0, 10, 11, 255]]), "camvid"), [[0, 10, 255, 255]])
    np.testing.assert_array_equal(map_labels(np.array([[0, 10, 11, 255]]), "camvid_segnet"), [[0, 10, 255, 255]])
    voc = np.array([[0, 20, 255]], dtype=np.int64)
    np.testing.assert_array_equal(map_labels(voc, "voc2012"), voc)
    with pytest.raises(ValueError, match=r"voc2012.*\[21\]"):
        map_labels(np.array([[21]]), "voc2012")
    with pytest.raises(ValueError, match="-1"):
        map_labels(np.array([[-1]]), "bdd100k")
    with pytest.raises(ValueError, match="integers"):
        map_labels(np.zeros((2, 2), dtype=np.float32), "ade20k")


def test_colorize_paints_ids_and_blacks_out_the_ignore_label():
    palette = palette_for("cityscapes")
    label = np.array([[0, 10], [255, 18]], dtype=np.int64)
    image = colorize(label, palette)
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [128, 64, 128]
    assert image[0, 1].tolist() == [70, 130, 180]
    assert image[1, 0].tolist() == [0, 0, 0]
    assert image[1, 1].tolist() == [119, 11, 32]
    with pytest.raises(ValueError, match="19"):
        colorize(np.array([[19]], dtype=np.uint8), palette)
    with pytest.raises(ValueError, match="H, W"):
        colorize(np.zeros((1, 2, 2), dtype=np.uint8), palette)
    with pytest.raises(ValueError, match="outside"):
        colorize(np.array([[300]]), palette)


def test_custom_dataset_from_two_files(tmp_path):
    (tmp_path / "names.txt").write_text("ground\nthing\n\n")  # trailing blank lines are fine
    (tmp_path / "colors.txt").write_text("1 2 3\n  10 20 30  \n")
    info = dataset_info("mine", tmp_path / "names.txt", tmp_path / "colors.txt")
    assert info.name == "mine" and info.classes == ("ground", "thing")
    assert info.palette.tolist() == [[1, 2, 3], [10, 20, 30]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3\n4 5\n", r"colors.txt:2: expected 'R G B'"),
        ("1 2 3\n4 5 x\n", r"colors.txt:2: colour values must be integers"),
        ("1 2 3\n4 5 6\n7 8 256\n", r"colors.txt:3: colour values must be in 0..255"),
        ("1 2 3\n\n4 5 6\n", r"colors.txt:2: expected 'R G B'"),
        ("\n\n", r"colors.txt: colors file is empty"),
    ],
)
def test_bad_colors_files_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "colors.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_colors(path)


def test_bad_names_files_and_mismatches(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\n\nb\n")
    with pytest.raises(DatasetError, match=r"names.txt:2: empty class name"):
        read_names(names)
    with pytest.raises(DatasetError, match="not found"):
        read_names(tmp_path / "missing.txt")
    names.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_names(names)
    names.write_text("a\nb\nc\n")
    colors = tmp_path / "colors.txt"
    colors.write_text("0 0 0\n1 1 1\n")
    with pytest.raises(DatasetError, match="3 classes but .* 2 colours"):
        dataset_info("mine", names, colors)
    with pytest.raises(DatasetError, match="both names_path and colors_path"):
        dataset_info("mine", names_path=names)
    with pytest.raises(DatasetError, match="unknown dataset 'mine'.*ade20k"):
        dataset_info("mine")


def test_dataset_info_for_config_resolves_packaged_custom_and_moved_files(tmp_path):
    # An original config points at data/ade20k/ade20k_names.txt, which does not exist here.
    original = {
        "classes": 150,
        "names_path": "data/ade20k/ade20k_names.txt",
        "colors_path": "data/ade20k/ade20k_colors.txt",
    }
    assert dataset_info_for_config(original).name == "ade20k"
    with pytest.raises(DatasetError, match="classes: 21 .* 150"):
        dataset_info_for_config({**original, "classes": 21})
    (tmp_path / "synthetic_names.txt").write_text("background\nred\n")
    (tmp_path / "synthetic_colors.txt").write_text("0 0 0\n255 0 0\n")
    moved = {
        "dataset": "synthetic",
        "classes": 2,
        "data_root": str(tmp_path),
        "names_path": "data/synthetic/synthetic_names.txt",
        "colors_path": "data/synthetic/synthetic_colors.txt",
    }
    info = dataset_info_for_config(moved)
    assert info.name == "synthetic" and info.classes == ("background", "red")
    with pytest.raises(DatasetError, match="synthetic_names.txt"):
        dataset_info_for_config({**moved, "data_root": str(tmp_path / "elsewhere")})
