"""Which uploaded images are accepted (``POST /v1/uploads``, image-to-video inputs).

An upload is accepted only if it is, by its content, a PNG, JPEG or WebP of
at most 10 MB (10 * 1024 * 1024 bytes) and 4096 px a side, with a single
frame, that decodes fully.
Checks run cheapest first, and the pixel count is read from the header (by
this module, before Pillow sees the file) so a decompression bomb costs
nothing:

1. size of the bytes;
2. magic bytes (the declared type and the file name are never trusted; a file
   that starts as ZIP, HTML, GIF, SVG ... is refused whatever it claims);
3. the declared type, when there is one, must name the type found;
4. header: sides and pixel count, then (Pillow, still no pixels) frame count;
5. full decode (truncated or corrupt data is refused).

Bytes after the end of a valid image (a JPEG with a ZIP tail) do not make it
invalid; whoever serves the stored file sends the type found here with
``nosniff``. Pillow's global ``MAX_IMAGE_PIXELS`` and warning filters are left
alone (both are process-wide and the API serves requests on threads): the
header check here is stricter than Pillow's bomb guard (89 Mpx), so that
guard never fires on an image that passed it; should it fire, it is a
refusal too.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Final

from PIL import Image

from plasmaart.errors import InvalidInput

MAX_UPLOAD_BYTES: Final = 10 * 1024 * 1024


def format_size(size: int) -> str:
    """A byte count as people read it, in the dashboard's binary units
    ("10 MB" is 10 * 1024 * 1024 bytes): "10 MB", "1.5 MB", "512 KB"."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


MAX_SIDE: Final = 4096
MAX_PIXELS: Final = MAX_SIDE * MAX_SIDE
ACCEPTED_TYPES: Final = ("image/png", "image/jpeg", "image/webp")

# Types a client sends when it does not know better; they claim nothing.
_UNDECLARED: Final = frozenset({"", "application/octet-stream"})
_ALIASES: Final = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
_FORMAT_NAMES: Final = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


@dataclass(frozen=True, slots=True)
class UploadInfo:
    content_type: str  # as found in the content: image/png, image/jpeg or image/webp
    width: int
    height: int


class UploadRefused(InvalidInput):
    """An upload that is not an acceptable image (422 ``invalid_input`` on ``file``).

    ``reason`` says which rule refused it: ``too_large``, ``unsupported_type``,
    ``type_mismatch``, ``too_many_pixels``, ``animated`` or ``corrupt``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, field="file")
        self.reason = reason


def sniff_type(data: bytes) -> str | None:
    """The accepted image type ``data`` starts as, by magic bytes; ``None`` if none."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _declared(declared_type: str | None) -> str | None:
    if declared_type is None:
        return None
    kind = declared_type.split(";", 1)[0].strip().lower()
    return None if kind in _UNDECLARED else _ALIASES.get(kind, kind)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the scan begins before any frame header
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            return int.from_bytes(data[pos + 7 : pos + 9], "big"), height
        if length < 2:
            return None
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk, body = data[12:16], data[20:30]
    if len(body) < 10:
        return None
    if chunk == b"VP8X":  # extended: 24-bit canvas sides minus one
        return int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    if chunk == b"VP8L":  # lossless: 14-bit sides minus one after the 0x2F signature
        if body[0] != 0x2F:
            return None
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":  # lossy: keyframe start code, then 14-bit sides
        if body[3:6] != b"\x9d\x01\x2a":
            return None
        return (
            int.from_bytes(body[6:8], "little") & 0x3FFF,
            int.from_bytes(body[8:10], "little") & 0x3FFF,
        )
    return None


def header_size(data: bytes, content_type: str) -> tuple[int, int] | None:
    """(width, height) a PNG/JPEG/WebP header declares, read without Pillow; ``None``
    if the header is malformed."""
    if content_type == "image/png":
        return _png_size(data)
    if content_type == "image/jpeg":
        return _jpeg_size(data)
    return _webp_size(data)


def _check_size(width: int, height: int) -> None:
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise UploadRefused(
            "too_many_pixels",
            f"images are at most {MAX_SIDE} px a side; this one is {width}x{height}",
        )


def _corrupt() -> UploadRefused:
    return UploadRefused("corrupt", "the image is truncated or corrupt")


# What Pillow raises on bad data; a bomb error cannot happen after the header
# check but is a refusal all the same.
_BAD_DATA: Final = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _open(data: bytes, content_type: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[_FORMAT_NAMES[content_type]])
    except _BAD_DATA as exc:
        raise _corrupt() from exc


def inspect_upload(data: bytes, declared_type: str | None = None) -> UploadInfo:
    """Type and size of an acceptable uploaded image; raises ``UploadRefused``.

    ``declared_type`` is the type the client sent (multipart part or header);
    ``None``, empty or ``application/octet-stream`` declare nothing.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadRefused(
            "too_large",
            # Rounded up, so a file just over the limit never reads as "10.0 MB".
            f"the file is {math.ceil(len(data) * 10 / 1_048_576) / 10:.1f} MB; uploads are at most "
            f"{format_size(MAX_UPLOAD_BYTES)}",
        )
    content_type = sniff_type(data)
    if content_type is None:
        raise UploadRefused(
            "unsupported_type", "only PNG, JPEG and WebP images are accepted (by content)"
        )
    declared = _declared(declared_type)
    if declared is not None and declared != content_type:
        raise UploadRefused(
            "type_mismatch", f"the file is {content_type} but was sent as {declared}"
        )

    declared_size = header_size(data, content_type)
    if declared_size is None:
        raise UploadRefused("corrupt", "the image header is truncated or corrupt")
    _check_size(*declared_size)

    with _open(data, content_type) as image:
        width, height = image.size
        _check_size(width, height)  # in case Pillow reads a header differently
        if getattr(image, "n_frames", 1) > 1:
            raise UploadRefused("animated", "animated images are not accepted; upload one frame")
        try:
            # verify() checks the structure (PNG chunk CRCs) without decoding ...
            image.verify()
        except _BAD_DATA as exc:
            raise _corrupt() from exc
    # ... and leaves the image unusable, so a second open decodes every pixel.
    with _open(data, content_type) as image:
        try:
            image.load()
        except _BAD_DATA as exc:
            raise _corrupt() from exc
    return UploadInfo(content_type, width, height)
