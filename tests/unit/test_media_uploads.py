"""Uploaded images: only real PNG/JPEG/WebP within the limits get through.

Every hostile file is built here, byte by byte where Pillow would refuse to
write it: a header claiming 100000x100000, polyglots, wrong declared types,
truncated and corrupt data, animations.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest
from PIL import Image

from plasmaart.errors import DomainError
from plasmaart.media.sandbox_render import render_image
from plasmaart.media.uploads import (
    MAX_UPLOAD_BYTES,
    UploadInfo,
    UploadRefused,
    inspect_upload,
)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    # Real content (not a flat fill), so truncation cuts into actual image data.
    return Image.open(io.BytesIO(render_image("upload", 1, 320, 240))).convert("RGB")


@pytest.fixture(scope="module")
def jpeg(picture: Image.Image) -> bytes:
    return encoded(picture, "JPEG", quality=90)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def refusal(data: bytes, declared_type: str | None = None) -> str:
    with pytest.raises(UploadRefused) as refused:
        inspect_upload(data, declared_type)
    return refused.value.reason


# --- accepted -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "options", "content_type"),
    [
        ("PNG", {}, "image/png"),
        ("JPEG", {"quality": 85}, "image/jpeg"),
        ("WEBP", {"quality": 80}, "image/webp"),
        ("WEBP", {"lossless": True}, "image/webp"),
    ],
)
def test_png_jpeg_and_webp_are_accepted(
    picture: Image.Image, fmt: str, options: dict[str, object], content_type: str
) -> None:
    data = encoded(picture, fmt, **options)
    assert inspect_upload(data, None) == UploadInfo(content_type, 320, 240)
    assert inspect_upload(data, content_type) == UploadInfo(content_type, 320, 240)


@pytest.mark.parametrize(
    "declared",
    ["image/jpeg; charset=binary", "IMAGE/JPEG", "image/jpg", "application/octet-stream", ""],
)
def test_declared_types_that_name_nothing_else_are_fine(jpeg: bytes, declared: str) -> None:
    assert inspect_upload(jpeg, declared).content_type == "image/jpeg"


@pytest.mark.parametrize(
    "tail",
    [b"<html><script>alert(1)</script></html>", b"PK\x03\x04" + b"\x00" * 200],
)
def test_a_jpeg_with_a_tail_is_still_a_jpeg(jpeg: bytes, tail: bytes) -> None:
    assert inspect_upload(jpeg + tail, "image/jpeg") == UploadInfo("image/jpeg", 320, 240)


def test_the_largest_sides_are_accepted() -> None:
    image = Image.new("L", (4096, 4096), 128)
    assert inspect_upload(encoded(image, "PNG")) == UploadInfo("image/png", 4096, 4096)


def test_exactly_ten_mebibytes_is_accepted(picture: Image.Image) -> None:
    png = encoded(picture, "PNG")
    padded = png + b"\x00" * (MAX_UPLOAD_BYTES - len(png))
    assert inspect_upload(padded).content_type == "image/png"


# --- refused --------------------------------------------------------------------


def test_a_refusal_is_invalid_input_on_the_file_field() -> None:
    with pytest.raises(DomainError) as refused:
        inspect_upload(b"GIF89a" + b"\x00" * 20, "image/gif")
    error = refused.value
    assert (error.code, error.status) == ("invalid_input", 422)
    assert error.extra["errors"] == [{"field": "file", "message": error.detail}]


def test_one_byte_over_ten_mebibytes_is_refused_before_anything_else() -> None:
    assert refusal(b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_UPLOAD_BYTES - 7)) == "too_large"


@pytest.mark.parametrize(
    "name",
    ["gif", "bmp", "tiff", "zip_with_a_jpeg", "html_then_jpeg", "svg", "empty", "text"],
)
def test_anything_that_does_not_start_as_png_jpeg_or_webp_is_refused(
    picture: Image.Image, jpeg: bytes, name: str
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("photo.jpg", jpeg)
    files = {
        "gif": encoded(picture, "GIF"),
        "bmp": encoded(picture, "BMP"),
        "tiff": encoded(picture, "TIFF"),
        "zip_with_a_jpeg": archive.getvalue(),
        "html_then_jpeg": b"<!doctype html><html><body>" + jpeg,
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "empty": b"",
        "text": b"just some text",
    }
    # Whatever it claims to be.
    assert refusal(files[name], "image/jpeg") == "unsupported_type"
    assert refusal(files[name], None) == "unsupported_type"


@pytest.mark.parametrize(
    ("fmt", "declared"),
    [("PNG", "image/jpeg"), ("JPEG", "image/png"), ("WEBP", "image/png"), ("PNG", "text/html")],
)
def test_a_declared_type_that_disagrees_with_the_content_is_refused(
    picture: Image.Image, fmt: str, declared: str
) -> None:
    assert refusal(encoded(picture, fmt), declared) == "type_mismatch"


def bomb_png(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 65536, 9)  # what would inflate to gigabytes
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def bomb_webp(width: int, height: int) -> bytes:
    canvas = (
        b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(canvas)) + canvas
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bomb_jpeg(jpeg: bytes, width: int, height: int) -> bytes:
    frame = jpeg.index(b"\xff\xc0")
    return jpeg[: frame + 5] + struct.pack(">HH", height, width) + jpeg[frame + 9 :]


@pytest.mark.parametrize("kind", ["png", "webp", "jpeg"])
def test_decompression_bombs_are_refused_from_the_header_alone(
    jpeg: bytes, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bombs = {
        "png": bomb_png(100_000, 100_000),
        "webp": bomb_webp(16_000, 16_000),
        "jpeg": bomb_jpeg(jpeg, 60_000, 60_000),
    }

    def no_decoding(*_args: object, **_kwargs: object) -> Image.Image:
        raise AssertionError("Pillow opened a file whose header already refuses it")

    monkeypatch.setattr(Image, "open", no_decoding)
    assert refusal(bombs[kind]) == "too_many_pixels"


def test_the_jpeg_bomb_is_still_a_jpeg_to_pillow(jpeg: bytes) -> None:
    # Guards the test above: the patched file really declares the huge size.
    with Image.open(io.BytesIO(bomb_jpeg(jpeg, 6000, 5000))) as image:
        assert image.size == (6000, 5000)


@pytest.mark.parametrize("size", [(4097, 8), (8, 4097)])
def test_more_than_4096_pixels_a_side_is_refused(size: tuple[int, int]) -> None:
    assert refusal(encoded(Image.new("RGB", size), "PNG")) == "too_many_pixels"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_truncated_image_is_refused(picture: Image.Image, fmt: str) -> None:
    data = encoded(picture, fmt)
    assert refusal(data[: len(data) * 6 // 10]) == "corrupt"


@pytest.mark.parametrize("keep", [8, 20, 30])
def test_a_file_cut_inside_its_header_is_refused(picture: Image.Image, keep: int) -> None:
    assert refusal(encoded(picture, "PNG")[:keep]) == "corrupt"


def test_a_png_with_damaged_pixel_data_is_refused(picture: Image.Image) -> None:
    data = bytearray(encoded(picture, "PNG"))
    data[data.index(b"IDAT") + 100] ^= 0xFF
    assert refusal(bytes(data)) == "corrupt"


def test_a_png_whose_checksum_does_not_match_is_refused(picture: Image.Image) -> None:
    data = bytearray(encoded(picture, "PNG"))
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4 : idat], "big")
    data[idat + 4 + length] ^= 0xFF  # the pixels decode, the CRC says they are damaged
    assert refusal(bytes(data)) == "corrupt"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_are_refused(picture: Image.Image, fmt: str) -> None:
    second = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    animated = encoded(picture, fmt, save_all=True, append_images=[second], duration=100)
    with Image.open(io.BytesIO(animated)) as opened:
        assert getattr(opened, "n_frames", 1) == 2  # really an animation
    assert refusal(animated) == "animated"
