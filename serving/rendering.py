"""Label maps -> what clients see: palette PNGs, 8-bit label PNGs, overlays, confidence maps and class summaries.

Every function takes an optional `chosen` (class ids from serving/class_filter.py): only those
classes are reported, the rest of the image is transparent (colour), unpainted (overlay), 0
(confidence) or `filtered_value` (label).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from serving.cancellation import Check, never_cancelled
from serving.class_filter import filter_label, kept_mask
from serving.repository import ModelMetadata

# zlib level 3 is within a few percent of level 6 in size on label maps and several times faster.
PNG_COMPRESS_LEVEL = 3
# Pixels of one band of the overlay: its float32 working copies (photo, colours, their blend: 12
# bytes per pixel each) stay within a few MiB whatever the image's size.
BAND_PIXELS = 256 * 1024


def palette_array(palette: list[list[int]], num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours (the model's palette, cut to its classes)."""
    return np.asarray(palette[:num_classes], dtype=np.uint8).reshape(-1, 3)


def color_mask(label: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ids past the palette are black."""
    colors = np.zeros((max(256, len(palette)), 3), dtype=np.uint8)
    colors[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return colors[label]


def color_image(label: np.ndarray, palette: list[list[int]], chosen: Sequence[int] | None = None) -> Image.Image:
    """The mask in the model's palette: a palette ("P") image when the ids fit a byte, else RGB.

    With `chosen`, an RGBA image whose other pixels are fully transparent (alpha 0, colour black).
    """
    if chosen is not None:
        colors = np.zeros((max(256, len(palette), int(label.max(initial=0)) + 1), 4), dtype=np.uint8)
        colors[: len(palette), :3] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        colors[list(chosen), 3] = 255
        colors[colors[:, 3] == 0, :3] = 0
        return Image.fromarray(colors[label])  # (H, W, 4) uint8: RGBA
    if label.dtype == np.uint8 and len(palette) <= 256:
        image = Image.fromarray(label)  # "L"; putpalette turns it into "P" without touching the ids
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        image.putpalette(flat.tobytes())
        return image
    return Image.fromarray(color_mask(label, palette))


def label_image(label: np.ndarray) -> Image.Image:
    """Class ids as a grayscale PNG image: 8-bit ("L"), or 16-bit when there are more than 256 classes."""
    if label.dtype == np.uint8:
        return Image.fromarray(label)
    return Image.fromarray(label.astype(np.uint16))


def overlay(image: np.ndarray, label: np.ndarray, palette: list[list[int]], alpha: float,
            chosen: Sequence[int] | None = None, check: Check = never_cancelled) -> np.ndarray:
    """The mask blended on the photo: (1 - alpha) * photo + alpha * colour; (H, W, 3) uint8.

    With `chosen`, only those classes' pixels are blended; the others keep the photo as it is
    (the blended pixels are exactly those of the unfiltered overlay). Blended a band of rows at a
    time (`check` runs before each), so the float32 copies are a band's, not the image's.
    """
    height, width = label.shape
    out = np.empty((height, width, 3), dtype=np.uint8)
    step = max(1, BAND_PIXELS // max(1, width))
    for start in range(0, height, step):
        check()
        rows = slice(start, min(start + step, height))
        blended = ((1.0 - alpha) * image[rows].astype(np.float32)
                   + alpha * color_mask(label[rows], palette).astype(np.float32))
        blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        if chosen is not None:
            blended = np.where(kept_mask(label[rows], chosen)[..., None], blended, image[rows])
        out[rows] = blended
    return out


def confidence_image(confidence: np.ndarray, label: np.ndarray, chosen: Sequence[int] | None = None) -> Image.Image:
    """The winning class's probability as 8-bit grayscale (round(255 * p)); 0 outside `chosen`.

    0 never occurs otherwise while there are fewer than 510 classes: the winner's p is at least 1/classes.
    """
    if chosen is not None:
        confidence = np.where(kept_mask(label, chosen), confidence, 0).astype(np.uint8)
    return Image.fromarray(confidence)


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    """PNG bytes of a Pillow image or a uint8 array ((H, W) or (H, W, 3))."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


PNG_KINDS = ("color", "label", "overlay", "confidence")


def render_png(kind: str, image: np.ndarray, label: np.ndarray, meta: ModelMetadata, alpha: float = 0.5,
               chosen: Sequence[int] | None = None, confidence: np.ndarray | None = None,
               check: Check = never_cancelled) -> bytes:
    """PNG bytes of one output kind: "color", "label", "overlay" or "confidence" (needs `confidence`).

    `check` runs before it starts and between the overlay's bands (serving/cancellation.py).
    """
    check()
    if kind == "color":
        return encode_png(color_image(label, meta.palette, chosen))
    if kind == "label":
        return encode_png(label_image(filter_label(label, chosen, meta.num_classes)))
    if kind == "overlay":
        return encode_png(overlay(image, label, meta.palette, alpha, chosen, check))
    if kind == "confidence":
        if confidence is None:
            raise ValueError("the confidence output needs the pipeline's confidence map")
        return encode_png(confidence_image(confidence, label, chosen))
    raise ValueError(f"unknown output kind {kind!r}: use {', '.join(PNG_KINDS)}")


def hex_color(rgb: list[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def legend(meta: ModelMetadata) -> list[dict[str, Any]]:
    """Every class of the model: id, name, colour as [R, G, B] and as #rrggbb."""
    return [
        {"id": index, "name": name, "color": [int(v) for v in meta.palette[index]], "hex": hex_color(meta.palette[index])}
        for index, name in enumerate(meta.classes)
    ]


def class_summary(label: np.ndarray, meta: ModelMetadata, chosen: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The classes present in `label` (and among `chosen`), largest first: id, name, colour, pixel
    count and fraction of the whole image."""
    counts = np.bincount(label.ravel(), minlength=meta.num_classes)
    total = max(1, label.size)
    entries = []
    for index in np.flatnonzero(counts):
        index = int(index)
        if chosen is not None and index not in chosen:
            continue
        known = index < meta.num_classes
        color = meta.palette[index] if known else [0, 0, 0]
        entries.append({
            "id": index,
            "name": meta.classes[index] if known else f"class {index}",
            "color": [int(v) for v in color],
            "hex": hex_color(color),
            "pixels": int(counts[index]),
            "fraction": round(float(counts[index]) / total, 6),
        })
    entries.sort(key=lambda entry: (-entry["pixels"], entry["id"]))
    return entries


def base64_png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
