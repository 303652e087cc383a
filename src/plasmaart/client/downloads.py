"""Where a streamed download goes: an open binary file, or a path that gets
the whole file or nothing (written beside it, renamed at the end)."""

from __future__ import annotations

import os
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
