"""Decoding untrusted uploads: the allow-list, size checks before decoding, and every pixel mode."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from serving.imaging import (
    ImageTooLarge,
    InvalidImage,
    UnsupportedImage,
    decode_image,
    open_image,
    sniff_refused_format,
)
from tests.serving.conftest import encode, scene_array

LIMIT = 10_000_000


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand (for layouts Pillow cannot write, and for forged headers)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = png_chunk(b"IHDR", header)
    if rows is not None:
        body += png_chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF", "WEBP", "JPEG"])
def test_allowed_formats_decode_to_rgb(fmt):
    image = scene_array(30, 40)
    params = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    decoded = decode_image(encode(image, fmt, **params), LIMIT)
    assert decoded.shape == (30, 40, 3) and decoded.dtype == np.uint8
    tolerance = {"JPEG": 40, "GIF": 60}.get(fmt, 0)  # lossy formats; GIF quantises to 256 colours
    assert np.abs(decoded.astype(int) - image.astype(int)).mean() <= max(tolerance / 4, 0.01)
    if tolerance == 0:
        assert np.array_equal(decoded, image)


@pytest.mark.parametrize(("fmt", "name"), [("ICO", "ICO"), ("PPM", "PNM"), ("PDF", "PDF"), ("TGA", None)])
def test_other_image_formats_are_refused(fmt, name):
    data = encode(scene_array(16, 16), fmt)
    expected = UnsupportedImage if name else InvalidImage  # TGA has no signature: just "not an image"
    with pytest.raises(expected) as caught:
        decode_image(data, LIMIT)
    if name:
        assert caught.value.status == 415 and name in caught.value.detail


@pytest.mark.parametrize(("data", "name"), [
    (b"8BPS\x00\x01" + bytes(40), "PSD"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
    (b"\x00\x00\x00\x1cftypheic" + bytes(40), "HEIC"),
    (b"\x00\x00\x00\x1cftypavif" + bytes(40), "AVIF"),
])
def test_refused_signatures(data, name):
    assert sniff_refused_format(data) == name
    with pytest.raises(UnsupportedImage):
        decode_image(data, LIMIT)


@pytest.mark.parametrize("data", [b"", b"hello, world", b"{\"image\": 1}", bytes(1000)])
def test_not_an_image(data):
    with pytest.raises(InvalidImage) as caught:
        decode_image(data, LIMIT)
    assert caught.value.status == 400


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_images_are_400(fmt):
    data = encode(scene_array(64, 64, seed=1), fmt)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], LIMIT)


def test_corrupt_header_is_400():
    with pytest.raises(InvalidImage, match="corrupt"):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, LIMIT)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # 60000 x 60000 declared, no pixel data at all: decoding would fail with 400, the size check says 413.
    forged = raw_png(60000, 60000, 8, 2, rows=None)
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(forged, LIMIT)
    assert caught.value.status == 413
    # Still under Pillow's own bomb threshold but over ours.
    with pytest.raises(ImageTooLarge, match="4000x3000"):
        open_image(raw_png(4000, 3000, 8, 0, rows=None), LIMIT)


def test_real_decompression_bomb_is_refused_cheaply():
    # 6000 x 6000 zeros: 36 MB of pixels in a ~36 kB file.
    rows = (b"\x00" + bytes(6000)) * 6000
    bomb = raw_png(6000, 6000, 8, 0, rows)
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge):
        decode_image(bomb, LIMIT)


def test_cmyk_jpeg_is_converted():
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode_image(encode(cmyk, "JPEG", quality=100), LIMIT)
    assert decoded.shape == (8, 16, 3)
    assert np.allclose(decoded.reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=6)


def test_16_bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 257 * 128, 65535, 257 * 10]], dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(values)), LIMIT)
    assert decoded[0, :, 0].tolist() == [0, 128, 255, 10]
    assert np.array_equal(decoded[..., 0], decoded[..., 2])


def test_16_bit_rgb_png():
    pixels = np.array([[[65535, 0, 32896], [256 * 7, 65535, 0]]], dtype=">u2")  # big-endian, as PNG stores it
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    decoded = decode_image(raw_png(2, 1, 16, 2, rows), LIMIT)
    assert decoded.tolist() == [[[255, 0, 128], [7, 255, 0]]]


def test_palette_and_transparency():
    palette_image = Image.new("P", (4, 2))
    palette_image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette_image.putpixel((1, 0), 1)
    decoded = decode_image(encode(palette_image), LIMIT)
    assert decoded[0, 0].tolist() == [255, 0, 0] and decoded[0, 1].tolist() == [0, 255, 0]
    palette_image.info["transparency"] = 1
    decoded = decode_image(encode(palette_image, transparency=1), LIMIT)
    assert decoded[0, 1].tolist() == [255, 255, 255]  # transparent -> white
    assert decoded[0, 0].tolist() == [255, 0, 0]


def test_rgba_is_composited_on_white():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = [10, 20, 30, 255]  # opaque: kept
    rgba[0, 1] = [10, 20, 30, 0]  # transparent: white
    rgba[0, 2] = [0, 0, 0, 128]  # half: grey
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA")), LIMIT)
    assert decoded[0, 0].tolist() == [10, 20, 30]
    assert decoded[0, 1].tolist() == [255, 255, 255]
    assert np.allclose(decoded[0, 2], 127, atol=1)


def test_la_and_grayscale_and_bilevel():
    la = np.array([[[50, 255], [50, 0]]], dtype=np.uint8)
    decoded = decode_image(encode(Image.fromarray(la, "LA")), LIMIT)
    assert decoded.tolist() == [[[50, 50, 50], [255, 255, 255]]]
    gray = np.array([[0, 77, 200]], dtype=np.uint8)
    assert decode_image(encode(Image.fromarray(gray)), LIMIT)[0, :, 1].tolist() == [0, 77, 200]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert decode_image(encode(bilevel, "BMP"), LIMIT)[0, :, 0].tolist() == [0, 255]


def test_float_tiff():
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    decoded = decode_image(encode(Image.fromarray(values, "F"), "TIFF"), LIMIT)
    assert decoded[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied():
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[0, 0] = [255, 0, 0]  # red marker top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(Image.fromarray(stored), "PNG", exif=exif)
    decoded = decode_image(data, LIMIT)
    assert decoded.shape == (40, 20, 3)  # portrait after orientation
    assert decoded[0, -1].tolist() == [255, 0, 0]  # top-left moved to top-right


def test_animated_gif_and_webp_use_the_first_frame():
    first = Image.new("RGB", (12, 10), (255, 0, 0))
    second = Image.new("RGB", (12, 10), (0, 0, 255))
    for fmt, params in (("GIF", {}), ("WEBP", {"lossless": True})):
        buffer = io.BytesIO()
        first.save(buffer, format=fmt, save_all=True, append_images=[second], duration=100, loop=0, **params)
        decoded = decode_image(buffer.getvalue(), LIMIT)
        assert decoded.shape == (10, 12, 3), fmt
        assert np.allclose(decoded.reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=2), fmt
