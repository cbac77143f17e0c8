"""Untrusted image bytes -> an RGB pixel array, safely.

The format is judged by the bytes alone (never by Content-Type or file name) and only the
decoders in `ALLOWED_FORMATS` are ever asked to parse them. The pixel count is checked from the
header before any pixel is decoded, so a decompression bomb costs nothing. EXIF orientation is
applied, animations give their first frame, and every mode Pillow can produce from these formats
(CMYK, 16-bit, palette, alpha, grayscale, ...) becomes 8-bit RGB.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# Alpha is composited onto white: what an image viewer shows for transparent pixels.
BACKGROUND_RGB = (255, 255, 255)

# Signatures of the allowed formats: bytes that start like one of them but do not open are corrupt.
_ALLOWED_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"GIF87a", b"GIF89a")
# Signatures of image formats we recognise but refuse: these get 415 rather than 400.
_REFUSED_MAGIC = {
    b"\x00\x00\x01\x00": "ICO",
    b"8BPS": "PSD",
    b"%PDF": "PDF",
    b"%!PS": "PostScript",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b"\xff\x4f\xff\x51": "JPEG 2000",
    b"\xff\x0a": "JPEG XL",
    b"\x00\x00\x00\x0cJXL ": "JPEG XL",
    b"qoif": "QOI",
    b"DDS ": "DDS",
    b"icns": "ICNS",
    b"\x76\x2f\x31\x01": "OpenEXR",
}
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


class ImageError(Exception):
    """An upload that cannot be used; `status` and `code` are what the HTTP API answers."""

    status = 400
    code = "invalid_image"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class InvalidImage(ImageError):
    """Not an image, or an image that is truncated or corrupt."""


class UnsupportedImage(ImageError):
    """A real image in a format (or pixel layout) outside the allow-list."""

    status = 415
    code = "unsupported_image_format"


class ImageTooLarge(ImageError):
    """More pixels than the configured limit."""

    status = 413
    code = "image_too_large"


def sniff_refused_format(data: bytes) -> str | None:
    """The name of a recognised but refused image format that `data` starts with, else None."""
    for magic, name in _REFUSED_MAGIC.items():
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[data[8:12]]
    if len(data) > 2 and data[:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n":
        return "PNM"
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:1024].lower()):
        return "SVG"
    return None


def _looks_allowed(data: bytes) -> bool:
    return data.startswith(_ALLOWED_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Identify `data` with the allowed decoders and check its size; nothing is decoded yet.

    Raises InvalidImage (400), UnsupportedImage (415) or ImageTooLarge (413).
    """
    if not data:
        raise InvalidImage("the request has no image: the body (or the 'image' field) is empty")
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; Pillow's warning threshold would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has too many pixels: {exc}") from None
    except UnidentifiedImageError:
        refused = sniff_refused_format(data)
        if refused:
            raise UnsupportedImage(
                f"{refused} images are not accepted; send one of {', '.join(ALLOWED_FORMATS)}"
            ) from None
        if _looks_allowed(data):
            raise InvalidImage("the image header is corrupt or truncated") from None
        raise InvalidImage(f"the data is not an image in a supported format ({', '.join(ALLOWED_FORMATS)})") from None
    except Exception as exc:  # header parsers raise SyntaxError, struct.error, ValueError, ...
        raise InvalidImage(f"the image header is corrupt: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image in any mode -> (H, W, 3) uint8 RGB.

    16-bit data is scaled (65535 -> 255), float data in 0-1 is stretched to 0-255, alpha (RGBA,
    LA, PA, palette transparency) is composited onto white; CMYK, YCbCr, LAB and HSV go through
    Pillow's conversions.
    """
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float32)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in {"RGBA", "RGBa", "LA", "La", "PA"} or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise UnsupportedImage(f"pixel mode {mode!r} cannot be converted to RGB: {exc}") from None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Untrusted bytes -> (H, W, 3) uint8 RGB after EXIF orientation (first frame if animated).

    Raises ImageError subclasses (400 invalid, 413 too large, 415 unsupported) and nothing else.
    """
    image = open_image(data, max_pixels)
    try:
        image.seek(0)
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has too many pixels: {exc}") from None
    except MemoryError:
        raise ImageTooLarge("image is too large to decode") from None
    except Exception as exc:  # truncated data, bad Huffman tables, zlib errors, ...
        raise InvalidImage(f"the image is truncated or corrupt: {exc}") from None
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception:  # a corrupt EXIF block should not cost the user the image
        oriented = image
    width, height = oriented.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return np.ascontiguousarray(to_rgb_array(oriented))
