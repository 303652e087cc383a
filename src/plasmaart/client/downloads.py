"""Where a streamed download goes: an open binary file, or a path that gets
the whole file or nothing (written beside it, renamed at the end)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

Destination = str | os.PathLike[str] | BinaryIO


@contextmanager
def open_destination(destination: Destination) -> Iterator[BinaryIO]:
    if not isinstance(destination, str | os.PathLike):
        yield destination
        return
    path = Path(destination)
    partial = path.with_name(path.name + ".part")
    try:
        with partial.open("wb") as sink:
            yield sink
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


# File name extensions of the media types the API serves.
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "video/mp4": "mp4",
}


# The id comes from the server: it must not steer the file out of its folder.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def output_filename(generation_id: str, number: int, content_type: str) -> str:
    """``<generation id>-<number>.<ext>``; ``number`` counts from 1."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return f"{_UNSAFE.sub('_', generation_id)}-{number}.{EXTENSIONS.get(kind, 'bin')}"
