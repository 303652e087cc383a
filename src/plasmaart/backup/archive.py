"""The backup archive: one tar file, its ``manifest.json`` and its checksums.

An archive holds the database (``database/plasmaart.sqlite3``, a SQLite
file, or ``database/plasmaart.pgdump``, ``pg_dump``'s custom format), the
media folder under ``media/`` (each object and its ``.meta`` description, as
``LocalStorage`` keeps them) and, last, ``manifest.json``: the format, the
PlasmaArt version, the dialect and migration revision of the database, when
it was made, where the media were, and the size and SHA-256 of every other
member. The manifest goes last because the checksums are taken while the
members are written, in one read of each file. Any ``tar`` reads the archive;
a name ending in ``.gz``/``.tgz`` makes it gzip-compressed.

An archive is written under a temporary name beside its path and linked into
place at the end, so a crash never leaves half an archive under the path, and
an existing file is never overwritten (the link fails instead).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, Protocol

FORMAT = 1
MANIFEST = "manifest.json"
DATABASE_MEMBERS = {
    "sqlite": "database/plasmaart.sqlite3",
    "postgresql": "database/plasmaart.pgdump",
}
MEDIA_PREFIX = "media/"
_CHUNK = 1024 * 1024

MediaSource = Literal["local", "s3"]


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class BackupError(Exception):
    """A backup or restore cannot go on; the message is one line for the operator."""


@dataclass(frozen=True)
class Member:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    format: int
    plasmaart_version: str
    dialect: str
    revision: str
    created_at: str
    # Where the media were: "local" (they are in the archive) or "s3" (they
    # stayed in the bucket, named here).
    media: MediaSource
    media_location: str
    files: dict[str, Member]

    @property
    def database_member(self) -> str:
        return DATABASE_MEMBERS[self.dialect]

    @property
    def media_files(self) -> int:
        """The media objects in the archive (their descriptions not counted)."""
        return sum(
            name.startswith(MEDIA_PREFIX) and not name.startswith(MEDIA_PREFIX + ".meta/")
            for name in self.files
        )

    def to_json(self) -> bytes:
        document: dict[str, Any] = {
            "format": self.format,
            "plasmaart_version": self.plasmaart_version,
            "dialect": self.dialect,
            "revision": self.revision,
            "created_at": self.created_at,
            "media": self.media,
            "media_location": self.media_location,
            "files": {
                name: {"size": member.size, "sha256": member.sha256}
                for name, member in sorted(self.files.items())
            },
        }
        return json.dumps(document, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(data)
            if not isinstance(document, dict):
                raise TypeError("not an object")
            version = document["format"]
            if version != FORMAT:
                raise BackupError(
                    f"the archive's format is {version!r}; this version of PlasmaArt reads "
                    f"format {FORMAT}"
                )
            dialect = str(document["dialect"])
            if dialect not in DATABASE_MEMBERS:
                raise BackupError(f"the archive names an unknown database dialect: {dialect!r}")
            media = document["media"]
            if media not in ("local", "s3"):
                raise BackupError(f"the archive names an unknown media source: {media!r}")
            files = {
                str(name): Member(int(entry["size"]), str(entry["sha256"]))
                for name, entry in document["files"].items()
            }
            return cls(
                format=version,
                plasmaart_version=str(document["plasmaart_version"]),
                dialect=dialect,
                revision=str(document["revision"]),
                created_at=str(document["created_at"]),
                media=media,
                media_location=str(document["media_location"]),
                files=files,
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BackupError(f"the archive's manifest.json is not valid: {exc}") from None


class _Hashing(io.RawIOBase):
    """A file read through once, its SHA-256 taken on the way."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.digest.update(data)
        return data


def _compression(path: Path) -> Literal["w", "w:gz"]:
    return "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"


class ArchiveWriter:
    """Writes members into a temporary file in ``workdir``; ``publish``
    links it to ``path`` once the manifest is in."""

    def __init__(self, path: Path, workdir: Path) -> None:
        self.path = path
        self._temp = workdir / "archive.partial"
        # Readable by this user only: it holds what the database holds.
        self._file = os.fdopen(
            os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb"
        )
        self._tar = tarfile.open(fileobj=self._file, mode=_compression(path))  # noqa: SIM115 - closed by publish
        self.files: dict[str, Member] = {}

    def add_file(self, name: str, source: IO[bytes], size: int, mtime: float) -> None:
        """Add ``size`` bytes read from ``source`` as ``name``."""
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = int(mtime)
        info.mode = 0o600
        hashing = _Hashing(source)
        self._tar.addfile(info, hashing)
        self.files[name] = Member(size, hashing.digest.hexdigest())

    def add_path(self, name: str, path: Path) -> Member:
        with path.open("rb") as source:
            status = os.fstat(source.fileno())
            self.add_file(name, source, status.st_size, status.st_mtime)
        return self.files[name]

    def publish(self, manifest: Manifest) -> int:
        """Write the manifest, make the archive durable and link it to its
        path; its size in bytes. Refuses to replace an existing file."""
        data = manifest.to_json()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        info.mtime = int(os.path.getmtime(self._temp))
        info.mode = 0o600
        self._tar.addfile(info, io.BytesIO(data))
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        try:
            os.link(self._temp, self.path)
        except FileExistsError:
            raise BackupError(f"{self.path} exists: give a new file name") from None
        with contextlib.suppress(OSError):
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return self.path.stat().st_size

    def close(self) -> None:
        if not self._file.closed:
            self._tar.close()
            self._file.close()


def _safe_member_name(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        bool(name)
        and not path.is_absolute()
        and ".." not in path.parts
        and "\\" not in name
        and "\x00" not in name
    )


class ArchiveReader:
    """An archive opened for restore: the manifest, then each member checked
    against it as it is read."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise BackupError(f"no such archive: {path}")
        try:
            self._tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as exc:
            raise BackupError(
                f"{path} is not a PlasmaArt backup (not a tar archive: {exc})"
            ) from None
        self.path = path
        try:
            member = self._tar.getmember(MANIFEST)
        except KeyError:
            self._tar.close()
            raise BackupError(
                f"{path} has no manifest.json: it is not a PlasmaArt backup, or it was cut short"
            ) from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._tar.close()
            raise BackupError(f"{path} is damaged: {exc}") from None
        self.manifest = Manifest.from_json(self._read_all(member))

    def _read_all(self, member: tarfile.TarInfo) -> bytes:
        source = self._tar.extractfile(member)
        if source is None:
            raise BackupError(f"{self.path}: {member.name} is not a file")
        with source:
            return source.read()

    def members(self) -> Iterator[tuple[tarfile.TarInfo, Member]]:
        """Every member but the manifest, in archive order, with its manifest
        entry; refuses members the manifest does not name or that could be
        written outside their folder."""
        seen: set[str] = set()
        try:
            for info in self._tar:
                if info.name == MANIFEST:
                    continue
                if not info.isfile() or not _safe_member_name(info.name):
                    raise BackupError(
                        f"{self.path} holds {info.name!r}, which a PlasmaArt backup never does"
                    )
                entry = self.manifest.files.get(info.name)
                if entry is None or info.name in seen:
                    raise BackupError(
                        f"{self.path} holds {info.name}, which its manifest does not name once"
                    )
                seen.add(info.name)
                yield info, entry
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{self.path} is damaged: {exc}") from None
        missing = sorted(set(self.manifest.files) - seen)
        if missing:
            raise BackupError(
                f"{self.path} lacks {len(missing)} file(s) its manifest names, such as {missing[0]}"
            )

    def copy_member(self, info: tarfile.TarInfo, entry: Member, target: Sink) -> None:
        """Copy a member into ``target``, checking its size and checksum."""
        source = self._tar.extractfile(info)
        if source is None:  # pragma: no cover - members() yields files only
            raise BackupError(f"{self.path}: {info.name} is not a file")
        digest = hashlib.sha256()
        size = 0
        with source:
            while True:
                try:
                    chunk = source.read(_CHUNK)
                except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                    raise BackupError(f"{self.path} is damaged: {exc}") from None
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
                target.write(chunk)
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise BackupError(
                f"{self.path}: {info.name} does not match its checksum in the manifest "
                "(the archive was altered or damaged); nothing was restored from it"
            )

    def member(self, name: str) -> tuple[tarfile.TarInfo, Member]:
        entry = self.manifest.files.get(name)
        try:
            info = self._tar.getmember(name)
        except KeyError:
            info = None
        if info is None or entry is None or not info.isfile():
            raise BackupError(f"{self.path} lacks {name}, or its manifest does not name it")
        return info, entry

    def check_member(self, info: tarfile.TarInfo, entry: Member) -> None:
        self.copy_member(info, entry, _Discard())

    def read_member(self, info: tarfile.TarInfo, entry: Member) -> bytes:
        buffer = io.BytesIO()
        self.copy_member(info, entry, buffer)
        return buffer.getvalue()

    def verify(self) -> None:
        """Read every member once and check it against the manifest."""
        for info, entry in self.members():
            self.check_member(info, entry)

    def close(self) -> None:
        self._tar.close()


class _Discard:
    def write(self, data: bytes, /) -> int:
        return len(data)


@contextlib.contextmanager
def workdir_beside(path: Path, purpose: str) -> Iterator[Path]:
    """A private temporary folder in ``path``'s folder (the same file system,
    so the result can be renamed or linked into place), removed afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".plasmaart-{purpose}-") as name:
        yield Path(name)
