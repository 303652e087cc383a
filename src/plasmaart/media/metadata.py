"""What a media file carries besides its pixels: license, provenance, format facts.

Every output carries its license (``personal`` or ``commercial``, from the
plan) and where it came from (generation, model, ...) inside the file, so a
downloaded copy still says under which terms it may be used:

* PNG: uncompressed ``iTXt`` chunks ``plasmaart.<key>`` plus the standard
  ``Copyright`` and ``Software`` keywords, inserted right after ``IHDR``
  without re-encoding the pixels.
* MP4: ``plasmaart.<key>`` tags (``mdta`` keys, ``-movflags
  use_metadata_tags``) plus the standard ``copyright`` tag, written by ffmpeg
  with ``-c copy`` so the streams are untouched.

This module also owns the bundled ffmpeg runner shared by ``render`` and
``watermark``, and ``probe_mp4``, which reads codec, size, duration and frame
count straight from the MP4 boxes (no ffprobe in the wheel).
"""

from __future__ import annotations

import functools
import re
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

License = Literal["personal", "commercial"]
LICENSES: Final[tuple[License, ...]] = ("personal", "commercial")

KEY_PREFIX: Final = "plasmaart."
LICENSE_NOTICES: Final[Mapping[str, str]] = {
    "personal": "PlasmaArt output under the personal license: personal, non-commercial use",
    "commercial": "PlasmaArt output under the commercial license: commercial use allowed",
}

_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")
_MAX_VALUE_CHARS: Final = 2000
# Text chunks of PNGs we did not write could be zlib bombs; ours are tiny.
_MAX_TEXT_BYTES: Final = 64 * 1024
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS: Final = (b"tEXt", b"zTXt", b"iTXt")
_STANDARD_PNG_KEYWORDS: Final = ("Copyright", "Software")


class MediaToolError(RuntimeError):
    """ffmpeg failed or ran past its deadline: an internal failure, not the user's."""


# --- ffmpeg -------------------------------------------------------------------


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped in the ``imageio-ffmpeg`` wheel
    (imported on the first video: a server that makes images never loads it)."""
    import imageio_ffmpeg  # type: ignore[import-untyped]  # the wheel ships no type hints

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def run_ffmpeg(args: Sequence[str], *, timeout_s: float) -> bytes:
    """Run ffmpeg with ``args``; return its stdout.

    Raises ``MediaToolError`` on a non-zero exit or when ``timeout_s`` passes
    (the process is killed then).
    """
    command = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    try:
        done = subprocess.run(  # noqa: S603 - fixed binary, arguments never go through a shell
            command, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaToolError(f"ffmpeg ran longer than {timeout_s:g} s") from exc
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip()[-800:]
        raise MediaToolError(f"ffmpeg exited with {done.returncode}: {tail}")
    return done.stdout


# --- license and provenance -----------------------------------------------------


def _checked(fields: Mapping[str, str]) -> dict[str, str]:
    """The fields to write; ``license`` is required and must be a known license."""
    license_ = fields.get("license")
    if license_ not in LICENSES:
        raise ValueError(f"license must be one of {LICENSES}, not {license_!r}")
    checked: dict[str, str] = {}
    for key, value in fields.items():
        if not _KEY.fullmatch(key):
            raise ValueError(f"metadata key {key!r} must match {_KEY.pattern}")
        if not isinstance(value, str):
            raise TypeError(f"metadata value of {key!r} must be a str")
        if "\x00" in value or len(value) > _MAX_VALUE_CHARS:
            raise ValueError(f"metadata value of {key!r} must have no NUL and at most 2000 chars")
        checked[key] = value
    return checked


# PNG


def _png_chunks(png: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, data) of each chunk, checking the structure; raises ``ValueError``."""
    if not png.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos = len(_PNG_SIGNATURE)
    first = True
    while True:
        if pos + 8 > len(png):
            raise ValueError("PNG ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        end = pos + 8 + length + 4
        if end > len(png):
            raise ValueError("PNG chunk runs past the end of the file")
        if first and kind != b"IHDR":
            raise ValueError("PNG does not start with IHDR")
        first = False
        yield kind, png[pos + 8 : pos + 8 + length]
        pos = end
        if kind == b"IEND":
            return


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _itxt(keyword: str, text: str) -> bytes:
    # keyword, NUL, compression flag 0, method 0, empty language, NUL, empty translation, NUL
    return _chunk(b"iTXt", keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode())


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, _MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("PNG text chunk inflates past 64 KiB")
    return out


def _png_text(kind: bytes, data: bytes) -> tuple[str, str]:
    keyword, sep, rest = data.partition(b"\x00")
    if not sep:
        raise ValueError("PNG text chunk has no keyword terminator")
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":
        return name, _inflate(rest[1:]).decode("latin-1")
    compressed, rest = rest[:1] == b"\x01", rest[2:]
    _language, _, rest = rest.partition(b"\x00")
    _translated, _, text = rest.partition(b"\x00")
    return name, (_inflate(text) if compressed else text).decode("utf-8", "replace")


def stamp_png(png: bytes, fields: Mapping[str, str]) -> bytes:
    """``png`` with ``fields`` (``license`` required) written into its text chunks.

    Earlier PlasmaArt fields and the ``Copyright``/``Software`` notices are
    replaced, other chunks (pixels included) are kept byte for byte.
    """
    checked = _checked(fields)
    replaced = set(_STANDARD_PNG_KEYWORDS)
    out = [_PNG_SIGNATURE]
    for kind, data in _png_chunks(png):
        if kind in _TEXT_CHUNKS:
            keyword = data.partition(b"\x00")[0].decode("latin-1")
            if keyword.startswith(KEY_PREFIX) or keyword in replaced:
                continue
        out.append(_chunk(kind, data))
        if kind == b"IHDR":
            out.append(_itxt("Copyright", LICENSE_NOTICES[checked["license"]]))
            out.append(_itxt("Software", "PlasmaArt"))
            out.extend(_itxt(KEY_PREFIX + key, value) for key, value in checked.items())
    return b"".join(out)


def read_png_metadata(png: bytes) -> dict[str, str]:
    """The PlasmaArt fields of ``png`` (keys without the prefix); ``{}`` if none."""
    fields: dict[str, str] = {}
    for kind, data in _png_chunks(png):
        if kind in _TEXT_CHUNKS:
            keyword, text = _png_text(kind, data)
            if keyword.startswith(KEY_PREFIX):
                fields[keyword.removeprefix(KEY_PREFIX)] = text
    return fields


# MP4


def stamp_mp4(mp4: bytes, fields: Mapping[str, str], *, timeout_s: float = 30.0) -> bytes:
    """``mp4`` with ``fields`` (``license`` required) written as tags; streams copied.

    Earlier PlasmaArt tags are replaced, like ``stamp_png`` does.
    """
    checked = _checked(fields)
    # An empty value deletes a tag: earlier fields the new set lacks must go.
    stale = read_mp4_metadata(mp4, timeout_s=timeout_s).keys() - checked.keys()
    tags = [f"copyright={LICENSE_NOTICES[checked['license']]}"]
    tags += [f"{KEY_PREFIX}{key}=" for key in sorted(stale)]
    tags += [f"{KEY_PREFIX}{key}={value}" for key, value in checked.items()]
    with tempfile.TemporaryDirectory(prefix="plasmaart-stamp-") as tmp:
        source, target = Path(tmp, "in.mp4"), Path(tmp, "out.mp4")
        source.write_bytes(mp4)
        args = ["-i", str(source), "-map", "0", "-c", "copy", "-map_metadata", "0"]
        for tag in tags:
            args += ["-metadata", tag]
        args += ["-movflags", "+faststart+use_metadata_tags", "-f", "mp4", "-y", str(target)]
        run_ffmpeg(args, timeout_s=timeout_s)
        return target.read_bytes()


def _ffmetadata_globals(text: str) -> dict[str, str]:
    """Global tags of ffmpeg's ``-f ffmetadata`` output (its backslash escapes undone)."""
    tags: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if line.startswith("["):
            break  # stream and chapter sections follow the globals
        if not line or line.startswith((";", "#")):
            continue
        key, value, current, escaped = "", "", [], False
        rest = line
        while True:
            for char in rest:
                if escaped:
                    current.append(char)
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == "=" and not key:
                    key, current = "".join(current), []
                else:
                    current.append(char)
            if not escaped:
                break
            # an escaped newline: the value goes on on the next line
            current.append("\n")
            escaped = False
            rest = next(lines, "")
        value = "".join(current)
        if key:
            tags[key] = value
    return tags


def read_mp4_metadata(mp4: bytes, *, timeout_s: float = 30.0) -> dict[str, str]:
    """The PlasmaArt tags of ``mp4`` (keys without the prefix); ``{}`` if none."""
    with tempfile.TemporaryDirectory(prefix="plasmaart-read-") as tmp:
        source = Path(tmp, "in.mp4")
        source.write_bytes(mp4)
        out = run_ffmpeg(["-i", str(source), "-f", "ffmetadata", "-"], timeout_s=timeout_s)
    tags = _ffmetadata_globals(out.decode("utf-8", "replace"))
    return {
        key.removeprefix(KEY_PREFIX): value
        for key, value in tags.items()
        if key.startswith(KEY_PREFIX)
    }


# --- MP4 format facts -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VideoInfo:
    codec: str  # "h264" for avc1/avc3 sample entries, else the entry's fourcc
    width: int
    height: int
    duration_s: float
    frames: int
    faststart: bool  # the moov box comes before the media data, so playback starts early


_CONTAINERS: Final = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise ValueError("MP4 box header is cut off")
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"MP4 box {kind!r} runs past its parent")
        yield kind, pos + header, pos + size
        pos += size


def _video_track(data: bytes, start: int, end: int) -> VideoInfo | None:
    handler = codec = b""
    width = height = frames = 0
    timescale = duration = 0
    stack = [(start, end)]
    while stack:
        lo, hi = stack.pop()
        for kind, payload, box_end in _boxes(data, lo, hi):
            if kind in _CONTAINERS:
                stack.append((payload, box_end))
            elif kind == b"hdlr":
                handler = data[payload + 8 : payload + 12]
            elif kind == b"mdhd":
                if data[payload] == 1:
                    timescale, duration = struct.unpack(">IQ", data[payload + 20 : payload + 32])
                else:
                    timescale, duration = struct.unpack(">II", data[payload + 12 : payload + 20])
            elif kind == b"stsd":
                entry = payload + 8
                codec = data[entry + 4 : entry + 8]
                width, height = struct.unpack(">HH", data[entry + 32 : entry + 36])
            elif kind == b"stsz":
                frames = struct.unpack(">I", data[payload + 8 : payload + 12])[0]
    if handler != b"vide" or not timescale:
        return None
    name = "h264" if codec in (b"avc1", b"avc3") else codec.decode("latin-1")
    return VideoInfo(name, width, height, duration / timescale, frames, faststart=False)


def probe_mp4(mp4: bytes) -> VideoInfo:
    """Codec, coded size, duration and frame count of the first video track.

    Raises ``ValueError`` when ``mp4`` is not an MP4 with a video track.
    """
    if mp4[4:8] != b"ftyp":
        raise ValueError("not an MP4 file")
    try:
        return _probe(mp4)
    except struct.error as exc:  # a box too short for the fields it must hold
        raise ValueError("MP4 box is cut off") from exc


def _probe(mp4: bytes) -> VideoInfo:
    moov_at = mdat_at = -1
    found: VideoInfo | None = None
    for kind, payload, end in _boxes(mp4, 0, len(mp4)):
        if kind == b"moov":
            moov_at = payload
            for sub, sub_payload, sub_end in _boxes(mp4, payload, end):
                if sub == b"trak" and found is None:
                    found = _video_track(mp4, sub_payload, sub_end)
        elif kind == b"mdat" and mdat_at < 0:
            mdat_at = payload
    if found is None:
        raise ValueError("MP4 has no video track")
    faststart = 0 <= moov_at < mdat_at or (moov_at >= 0 and mdat_at < 0)
    return VideoInfo(
        found.codec, found.width, found.height, found.duration_s, found.frames, faststart
    )
