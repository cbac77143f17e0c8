"""Label maps as COCO run-length encodings (pycocotools), for `output=rle` and `predict --output coco`.

Each class present gets the compressed RLE that `pycocotools.mask.encode` gives for its binary
mask: column-major runs, as COCO defines them, starting with a run of zeros, written as COCO's
LEB128-like ASCII string. The masks of the listed classes partition the image's pixels (with a
class filter, the pixels of the chosen classes). COCO-stuff results (`results.json`) hold one
entry per image and class, `category_id` being the model's class id (the same id as in the label
map, the legend and every other output; `categories.json` maps it to name and colour).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from serving.rendering import class_summary, hex_color
from serving.repository import ModelMetadata


def encode_masks(label: np.ndarray, class_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """{class id: {"size": [h, w], "counts": str}} for each of `class_ids`, one class at a time.

    The label map is put in column-major order once; each class's mask is then a column-major
    uint8 array of the image's size (what pycocotools takes), so memory stays at two bytes per
    pixel whatever the number of classes.
    """
    columns = np.asfortranarray(label)
    encoded = {}
    for class_id in class_ids:
        mask = (columns == class_id).view(np.uint8)  # bool -> uint8 without a copy; still Fortran order
        rle = coco_mask.encode(mask)
        encoded[int(class_id)] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return encoded


def rle_document(label: np.ndarray, meta: ModelMetadata, chosen: Sequence[int] | None = None) -> dict[str, Any]:
    """The `output=rle` answer: model, version, height, width and, per class present (largest
    first), the class summary's id, name, colour, pixels and fraction plus its "rle"."""
    classes = class_summary(label, meta, chosen)
    masks = encode_masks(label, [entry["id"] for entry in classes])
    return {
        "model": meta.name,
        "version": meta.version,
        "height": int(label.shape[0]),
        "width": int(label.shape[1]),
        "classes": [{**entry, "rle": masks[entry["id"]]} for entry in classes],
    }


def coco_results(document: dict[str, Any], image_id: int, file_name: str) -> list[dict[str, Any]]:
    """The COCO-stuff results entries of one image from its `rle_document`."""
    return [{"image_id": image_id, "file_name": file_name, "category_id": entry["id"], "segmentation": entry["rle"]}
            for entry in document["classes"]]


def coco_categories(meta: ModelMetadata) -> list[dict[str, Any]]:
    """`categories.json`: every class of the model as id, name, colour ([R, G, B]) and hex colour."""
    return [{"id": index, "name": name, "color": [int(v) for v in meta.palette[index]],
             "hex": hex_color(meta.palette[index])} for index, name in enumerate(meta.classes)]
