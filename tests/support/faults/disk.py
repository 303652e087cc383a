"""A disk that fills up: a size-limited filesystem the test mounts, fills and frees.

``size_limited_dir(size_mb)`` mounts a filesystem of ``size_mb`` MiB on a new
folder and yields a ``SizeLimitedDir``: put the SQLite database and the media
folder under ``path``, then ``fill()`` takes (almost) every free byte with a
ballast file, and ``free()`` removes it. On exit the filesystem is unmounted
(lazily if a process still holds a file there) and the folder removed, so no
mount is ever left behind.

Two kinds, both measured to give SQLite's ``SQLITE_FULL`` ("database or disk
is full") and ``ENOSPC`` cleanly, WAL mode included (SQLite writes every page
of its ``-shm`` file before mapping it, so a full disk never means SIGBUS):

* ``"tmpfs"`` (the default): ``mount -t tmpfs -o size=...``; nothing else
  needed, in memory, freed at unmount;
* ``"ext4"``: an image file made with ``mkfs.ext4`` (no root reserve) and
  loop-mounted (``mount -o loop``), for a real on-disk filesystem.

Mounting needs root (CAP_SYS_ADMIN), as the chaos tests and CI run; without
it the harness fails with a message that says so.

``DiskFull(dir)`` is the fault of the harness (``kind`` "disk full"):
``inject`` fills, ``heal`` frees.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BALLAST = ".ballast"
# Each mount or unmount command is given this long.
COMMAND_TIMEOUT_S = 20.0
# Writes of the ballast, from large to single bytes: the last leaves 0 bytes.
_CHUNKS = (1 << 20, 1 << 16, 4096, 512, 1)

Kind = Literal["tmpfs", "ext4"]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )


@dataclass
class SizeLimitedDir:
    """A mounted filesystem of ``size_mb`` MiB at ``path``."""

    path: Path
    size_mb: int
    kind: Kind
    fills: int = field(default=0)

    @property
    def ballast(self) -> Path:
        return self.path / BALLAST

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self) -> int:
        """Take every free byte with the ballast file (added to it if it is
        there already); the bytes it took. Bounded by the filesystem's size."""
        budget = (self.size_mb + 1) << 20
        written = 0
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in _CHUNKS:
                chunk = b"\0" * size
                while written < budget:
                    try:
                        done = os.write(fd, chunk)
                    except OSError:
                        break
                    written += done
                    if done < size:
                        break
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fills += 1
        return written

    def make_room(self, nbytes: int) -> None:
        """Give ``nbytes`` back to the filesystem (the ballast shrinks)."""
        size = self.ballast.stat().st_size
        os.truncate(self.ballast, max(0, size - nbytes))

    def free(self) -> None:
        """Remove the ballast (a no-op without one)."""
        with contextlib.suppress(FileNotFoundError):
            self.ballast.unlink()


def _mount(kind: Kind, size_mb: int, mountpoint: Path, image: Path) -> None:
    if kind == "tmpfs":
        done = _run(
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={size_mb}m,mode=0755",
            "plasmaart-test",
            str(mountpoint),
        )
    else:
        with image.open("wb") as file:
            file.truncate(size_mb << 20)
        made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        if made.returncode != 0:
            raise RuntimeError(f"mkfs.ext4 failed: {made.stderr.strip() or made.stdout.strip()}")
        done = _run("mount", "-o", "loop", str(image), str(mountpoint))
    if done.returncode != 0:
        raise RuntimeError(
            f"could not mount a {size_mb} MiB {kind} filesystem on {mountpoint} "
            f"(the full-disk tests need root, as in CI): {done.stderr.strip()}"
        )


def _unmount(mountpoint: Path) -> None:
    """Unmount, waiting a little for processes that still hold files there;
    lazily as a last resort. Never leaves the mount behind."""
    deadline = time.monotonic() + 5.0
    while os.path.ismount(mountpoint):
        if _run("umount", str(mountpoint)).returncode == 0:
            return
        if time.monotonic() >= deadline:
            lazy = _run("umount", "-l", str(mountpoint))
            if lazy.returncode != 0 and os.path.ismount(mountpoint):
                raise RuntimeError(f"could not unmount {mountpoint}: {lazy.stderr.strip()}")
            return
        time.sleep(0.1)


@contextmanager
def size_limited_dir(size_mb: int, *, kind: Kind = "tmpfs") -> Iterator[SizeLimitedDir]:
    """Mount a ``size_mb`` MiB filesystem on a new folder; unmount it after."""
    if size_mb < 1:
        raise ValueError("size_mb must be at least 1")
    if kind == "ext4" and shutil.which("mkfs.ext4") is None:
        raise RuntimeError("mkfs.ext4 is not installed (Debian: e2fsprogs)")
    base = Path(tempfile.mkdtemp(prefix="plasmaart-disk-"))
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    image = base / "disk.img"
    try:
        _mount(kind, size_mb, mountpoint, image)
        try:
            yield SizeLimitedDir(path=mountpoint, size_mb=size_mb, kind=kind)
        finally:
            _unmount(mountpoint)
    finally:
        with contextlib.suppress(OSError):
            image.unlink()
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()


class DiskFull:
    """The fault: the disk under ``dir`` fills up (``inject``) until the
    ballast is removed (``heal``)."""

    kind = "disk full"

    def __init__(self, dir: SizeLimitedDir) -> None:
        self.dir = dir

    def inject(self) -> None:
        self.dir.fill()

    def heal(self) -> None:
        self.dir.free()
