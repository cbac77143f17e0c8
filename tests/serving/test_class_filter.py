"""The class filter (`classes=`): parsing names and ids, and what each rendering does with it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving.class_filter import ClassFilterError, filter_label, filtered_value, parse_classes
from serving.rendering import class_summary, render_png
from serving.repository import ModelMetadata

CLASSES = ["wall", "chest of drawers", "sky", "7"]
META = ModelMetadata(
    name="m", version=1, arch="psp", layers=18, dataset="d", classes=["a", "b", "c"],
    palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255]], crop_h=33, crop_w=33, mean=[0, 0, 0], std=[1, 1, 1],
)
LABEL = np.array([[0, 1, 1], [2, 2, 2]], dtype=np.uint8)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize(("values", "expected"), [
    (None, None),
    ("sky", (2,)),
    (" Chest of Drawers , WALL", (0, 1)),  # case and blanks around a name do not matter
    (["2", "0,2"], (0, 2)),  # repeated and comma-separated, duplicates once
    ("7", (3,)),  # a name that looks like an id is the name
    ("3", (3,)),
    ("sky,", (2,)),  # a trailing comma is no class
])
def test_names_and_ids_are_parsed(values, expected):
    assert parse_classes(values, CLASSES) == expected


@pytest.mark.parametrize(("values", "unknown"), [
    ("tree", "'tree'"), ("4", "'4'"), ("-1", "'-1'"), ("2.0", "'2.0'"), ("sky,road,9", "'road', '9'"),
    ("chest", "'chest'"), ("", None), (",", None), ([], None),
])
def test_unknown_or_empty_choices_are_refused_naming_the_valid_classes(values, unknown):
    with pytest.raises(ClassFilterError) as error:
        parse_classes(values, CLASSES)
    message = str(error.value)
    if unknown is None:
        assert "at least one" in message
    else:
        assert f"unknown class {unknown};" in message
        assert "0 wall, 1 chest of drawers, 2 sky, 3 7" in message


def test_the_label_of_other_classes_is_255_or_65535_beyond_255_classes():
    assert np.array_equal(filter_label(LABEL, (1,), 3), [[255, 1, 1], [255, 255, 255]])
    assert filter_label(LABEL, None, 3) is LABEL
    assert filtered_value(255) == 255 and filtered_value(256) == 65535
    wide = filter_label(LABEL, (2,), 300)
    assert wide.dtype == np.int32 and wide.tolist() == [[65535, 65535, 65535], [2, 2, 2]]
    image = Image.open(io.BytesIO(render_png("label", np.zeros((2, 3, 3), np.uint8), LABEL.astype(np.int32),
                                             _meta(300), chosen=(2,))))
    assert np.asarray(image).tolist() == [[65535, 65535, 65535], [2, 2, 2]]


def _meta(classes: int) -> ModelMetadata:
    return ModelMetadata(name="m", version=1, arch="psp", layers=18, dataset="d",
                         classes=[f"c{i}" for i in range(classes)], palette=[[i % 256, 0, 0] for i in range(classes)],
                         crop_h=33, crop_w=33, mean=[0, 0, 0], std=[1, 1, 1])


def test_filtered_color_is_rgba_with_other_pixels_transparent():
    photo = np.zeros((2, 3, 3), np.uint8)
    rgba = decode(render_png("color", photo, LABEL, META, chosen=(0, 2)))
    assert rgba.shape == (2, 3, 4)
    assert rgba[..., 3].tolist() == [[255, 0, 0], [255, 255, 255]]
    assert rgba[0, 0].tolist() == [255, 0, 0, 255] and rgba[1, 1].tolist() == [0, 0, 255, 255]
    assert rgba[0, 1].tolist() == [0, 0, 0, 0]
    assert decode(render_png("color", photo, LABEL, META)).ndim == 2  # unfiltered: still a palette PNG


def test_filtered_overlay_paints_only_the_chosen_classes():
    photo = np.full((2, 3, 3), 100, np.uint8)
    painted = decode(render_png("overlay", photo, LABEL, META, alpha=1.0, chosen=(1,)))
    assert painted[0, 1].tolist() == [0, 255, 0] and painted[0, 0].tolist() == [100, 100, 100]
    assert (painted[1] == 100).all()


def test_filtered_confidence_is_zero_elsewhere_and_confidence_needs_its_map():
    photo = np.zeros((2, 3, 3), np.uint8)
    confidence = np.array([[200, 90, 91], [255, 128, 60]], np.uint8)
    assert decode(render_png("confidence", photo, LABEL, META, confidence=confidence)).tolist() == confidence.tolist()
    assert decode(render_png("confidence", photo, LABEL, META, chosen=(2,), confidence=confidence)).tolist() == \
        [[0, 0, 0], [255, 128, 60]]
    with pytest.raises(ValueError, match="confidence map"):
        render_png("confidence", photo, LABEL, META)


def test_filtered_summary_lists_only_the_chosen_classes_with_whole_image_fractions():
    summary = class_summary(LABEL, META, chosen=(0, 1))
    assert [(e["name"], e["pixels"], e["fraction"]) for e in summary] == [("b", 2, 0.333333), ("a", 1, 0.166667)]
