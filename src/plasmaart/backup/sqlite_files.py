"""A SQLite database as files: who has it open, and putting a restored file
in its place."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from plasmaart.media.storage import fsync_directory

# The files SQLite keeps beside a database: a stale one of the replaced
# database would be read as part of the restored one.
COMPANIONS = ("-wal", "-shm", "-journal")


def processes_using(path: Path) -> list[str]:
    """The processes (pid and command) that have the database file open, as
    far as this user may see (Linux' /proc; elsewhere nothing is seen)."""
    target = path.resolve()
    names = {str(target), str(target) + "-wal"}
    found: list[str] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:  # gone meanwhile, or another user's
            continue
        if names.intersection(links):
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                command = "?"
            found.append(f"{entry.name} ({command[:80]})")
    return found


def put_in_place(restored: Path, target: Path) -> None:
    """Replace ``target`` (if any) by the file ``restored``, in its folder:
    the companions of the old database go first, then one rename."""
    if target.exists():
        with contextlib.suppress(OSError):
            shutil.copymode(target, restored)
    for suffix in COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            Path(f"{target}{suffix}").unlink()
    os.replace(restored, target)
    fsync_directory(target.parent)
