"""``plasmaart backup`` and ``plasmaart restore``: the database and the media
in one archive (``backup/archive.py``), made while the platform runs.

The database is copied first, as one consistent snapshot (SQLite's online
backup API, or ``pg_dump``'s repeatable-read snapshot), and the media folder
after it: every output the snapshot names was stored before its row was
committed, so it is on disk when the folder is copied; files written after
the snapshot are harmless extras, and files deleted meanwhile (an account
deleted) are skipped and counted. Media in an S3 bucket stay there: the
bucket's versioning and replication back them up (docs/deployment.md).

A restore checks the whole archive against its manifest, refuses a database
of the other dialect, a schema newer than this code, a target database that
holds anything (without ``force``) and one that processes still use; then it
puts the media back through the storage the settings name, replaces the
database all at once, and migrates it to this version's head.
"""

from __future__ import annotations

import json
import mimetypes
import os
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from plasmaart import __version__
from plasmaart.backup import postgres, sqlite_files
from plasmaart.backup.archive import (
    DATABASE_MEMBERS,
    FORMAT,
    MEDIA_PREFIX,
    ArchiveReader,
    ArchiveWriter,
    BackupError,
    Manifest,
    MediaSource,
    workdir_beside,
)
from plasmaart.backup.repository import (
    Contents,
    postgres_contents,
    sqlite_contents,
    sqlite_file_check,
    sqlite_file_revision,
    sqlite_snapshot,
)
from plasmaart.config import Settings
from plasmaart.db.engine import create_database, normalise_url
from plasmaart.db.migrate import (
    DatabaseNotReady,
    database_revision,
    describe_database,
    head_revision,
    known_revisions,
    upgrade,
)
from plasmaart.media.storage import create_storage

Say = Callable[[str], None]
_SIDECARS = MEDIA_PREFIX + ".meta/"
_WORKDIR_PREFIX = ".plasmaart-"


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    manifest: Manifest
    media_skipped: int


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    media_restored: int
    migrated_from: str | None  # the archive's revision, when it was migrated


def _dialect(settings: Settings) -> str:
    return make_url(normalise_url(settings.database_url)).get_backend_name()


def _sqlite_path(settings: Settings) -> Path:
    database = make_url(normalise_url(settings.database_url)).database
    if not database or database == ":memory:":
        raise BackupError("DATABASE_URL names an in-memory SQLite database: nothing to keep")
    return Path(database).absolute()


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover - the loop returns


def _files(count: int, kind: str = "") -> str:
    return f"{count} {kind}file{'' if count == 1 else 's'}"


def _media_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Every object file and description under the media folder, in a stable
    order; files being written (``.name.xxx.tmp``) and links are left out."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(_WORKDIR_PREFIX))
        for name in sorted(files):
            if name.startswith(".") and name.endswith(".tmp"):
                continue
            path = Path(folder) / name
            try:
                regular = stat.S_ISREG(path.lstat().st_mode)
            except FileNotFoundError:
                continue
            if regular:  # not a link, a socket or a pipe
                yield path.relative_to(root).as_posix(), path


def back_up(settings: Settings, path: Path, say: Say) -> BackupResult:
    """Write the archive ``path`` (which must not exist) of the configured
    database and media folder."""
    path = path.absolute()
    if path.exists() or path.is_symlink():
        raise BackupError(f"{path} exists: give a new file name (a backup never overwrites)")
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent} is not a folder")
    try:
        return _write_archive(settings, path, say)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"the backup failed, no archive was written: {exc}") from None


def _write_archive(settings: Settings, path: Path, say: Say) -> BackupResult:
    dialect = _dialect(settings)
    name = describe_database(settings.database_url)
    media: MediaSource = settings.storage
    skipped = 0
    with workdir_beside(path, "backup") as work:
        writer = ArchiveWriter(path, work)
        try:
            database = work / "database"
            if dialect == "sqlite":
                source = _sqlite_path(settings)
                if not source.is_file():
                    raise BackupError(f"no database at {source} (DATABASE_URL): nothing to back up")
                sqlite_snapshot(source, database)
                revision = sqlite_file_revision(database)
            else:
                postgres.dump(settings, database)
                revision = postgres.dump_revision(settings, database)
            if revision is None:
                raise BackupError(
                    f"the database {name} is not migrated: nothing of PlasmaArt's to back up"
                )
            stored = writer.add_path(DATABASE_MEMBERS[dialect], database)
            database.unlink()
            say(f"database: {name} at revision {revision}, {_size(stored.size)}")
            if media == "local":
                root = settings.media_dir.absolute()
                files = 0
                total = 0
                for relative, file in _media_files(root) if root.is_dir() else ():
                    try:
                        added = writer.add_path(MEDIA_PREFIX + relative, file)
                    except FileNotFoundError:
                        skipped += 1  # deleted since the folder was listed
                        continue
                    files += not relative.startswith(".meta/")
                    total += added.size
                gone = f"; {skipped} deleted while copying, left out" if skipped else ""
                say(f"media: {_files(files)}, {_size(total)} from {root}{gone}")
                location = str(root)
            else:
                location = f"s3://{settings.s3_bucket}/{settings.s3_prefix}".rstrip("/")
                say(
                    f"media: in the S3 bucket {location}, not in this archive: keep the "
                    "bucket versioned and replicated (docs/deployment.md, Backups)"
                )
            manifest = Manifest(
                format=FORMAT,
                plasmaart_version=__version__,
                dialect=dialect,
                revision=revision,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                media=media,
                media_location=location,
                files=dict(writer.files),
            )
            size = writer.publish(manifest)
        finally:
            writer.close()
    say(f"wrote {path} ({_size(size)})")
    return BackupResult(path, size, manifest, skipped)


def _target_contents(settings: Settings) -> Contents:
    """What the configured database holds; refuses one processes still use."""
    name = describe_database(settings.database_url)
    stop = "stop the API and the workers before a restore"
    if _dialect(settings) == "sqlite":
        target = _sqlite_path(settings)
        users = sqlite_files.processes_using(target)
        if users:
            raise BackupError(f"{target} is open in process {', '.join(users)}: {stop}")
        try:
            return sqlite_contents(target)
        except RuntimeError as exc:
            raise BackupError(str(exc)) from None
    contents, sessions = postgres_contents(settings.database_url)
    if sessions:
        raise BackupError(
            f"{len(sessions)} other session(s) are connected to {name} "
            f"({', '.join(sorted(set(sessions)))}): {stop}"
        )
    return contents


def _check_archive(settings: Settings, reader: ArchiveReader) -> Manifest:
    manifest = reader.manifest
    dialect = _dialect(settings)
    if manifest.dialect != dialect:
        raise BackupError(
            f"the archive holds a {manifest.dialect} database, but DATABASE_URL is {dialect} "
            f"({describe_database(settings.database_url)}): restore it into a "
            f"{manifest.dialect} database"
        )
    if manifest.revision not in known_revisions():
        raise BackupError(
            f"the archive's database is at revision {manifest.revision}, which this version "
            f"of PlasmaArt ({__version__}, revision {head_revision()}) does not know: it was "
            f"made by a newer PlasmaArt ({manifest.plasmaart_version}); restore it with that "
            "version or a later one"
        )
    return manifest


def _verify(reader: ArchiveReader) -> dict[str, dict[str, object]]:
    """Check every member against the manifest; the media descriptions, by key."""
    descriptions: dict[str, dict[str, object]] = {}
    for info, entry in reader.members():
        if info.name.startswith(_SIDECARS) and info.name.endswith(".json"):
            data = reader.read_member(info, entry)
            key = info.name.removeprefix(_SIDECARS).removesuffix(".json")
            try:
                description = json.loads(data)
            except ValueError:
                continue  # the object is described from its name instead
            if isinstance(description, dict):
                descriptions[key] = description
        else:
            reader.check_member(info, entry)
    return descriptions


def _restore_media(
    settings: Settings, reader: ArchiveReader, descriptions: dict[str, dict[str, object]]
) -> int:
    """Put each object of the archive back through the configured storage
    (the media folder, or the bucket: a restore also moves media into S3)."""
    storage = create_storage(settings)
    restored = 0
    for info, entry in reader.members():
        if not info.name.startswith(MEDIA_PREFIX) or info.name.startswith(_SIDECARS):
            continue
        key = info.name.removeprefix(MEDIA_PREFIX)
        description = descriptions.get(key, {})
        content_type = description.get("content_type")
        if not isinstance(content_type, str):
            guessed, _ = mimetypes.guess_type(key, strict=False)
            content_type = guessed or "application/octet-stream"
        metadata = description.get("metadata")
        data = reader.read_member(info, entry)
        try:
            storage.put(
                key,
                data,
                content_type,
                {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
            )
        except Exception as exc:  # the storage's own error (S3's, the disk's) says why
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise BackupError(f"media: {key} could not be stored: {reason}") from None
        restored += 1
    return restored


def _restore_sqlite(settings: Settings, reader: ArchiveReader, manifest: Manifest) -> None:
    target = _sqlite_path(settings)
    info, entry = reader.member(manifest.database_member)
    with workdir_beside(target, "restore") as work:
        restored = work / "restored.sqlite3"
        with restored.open("xb") as file:
            reader.copy_member(info, entry, file)
            file.flush()
            os.fsync(file.fileno())
        problems = sqlite_file_check(restored)
        if problems:
            raise BackupError(f"the archive's database fails SQLite's check: {problems[:3]}")
        if sqlite_file_revision(restored) != manifest.revision:
            raise BackupError("the archive's database is not at the revision its manifest names")
        sqlite_files.put_in_place(restored, target)


def _restore_postgres(
    settings: Settings, reader: ArchiveReader, manifest: Manifest, *, clear: bool
) -> None:
    info, entry = reader.member(manifest.database_member)
    with tempfile.TemporaryDirectory(prefix="plasmaart-restore-") as work:
        dump = Path(work) / "database.pgdump"
        with dump.open("xb") as file:
            reader.copy_member(info, entry, file)
        postgres.restore(settings, dump, clear=clear)


def _migrate(settings: Settings) -> str | None:
    """Migrate the restored database to this version's head; the revision it
    was at when it was behind."""
    db = create_database(settings.database_url, pool_size=1, group_commit=False)
    try:
        current = database_revision(db)
        if current == head_revision():
            return None
        upgrade(db)
        return current
    finally:
        db.dispose()


def restore_backup(settings: Settings, path: Path, *, force: bool, say: Say) -> RestoreResult:
    """Restore the archive ``path`` into the configured database and media storage."""
    reader = ArchiveReader(path.absolute())
    try:
        manifest = _check_archive(settings, reader)
        name = describe_database(settings.database_url)
        try:
            contents = _target_contents(settings)
        except DatabaseNotReady as exc:
            raise BackupError(str(exc)) from None
        if not contents.empty and not force:
            raise BackupError(
                f"the database {name} is not empty: it has {contents.describe()}; a restore "
                "replaces all of it: add --force to do so (nothing was changed)"
            )
        media = (
            f"{_files(manifest.media_files, 'media ')}"
            if manifest.media == "local"
            else f"media left in {manifest.media_location}"
        )
        descriptions = _verify(reader)
        say(
            f"archive: made {manifest.created_at} by PlasmaArt {manifest.plasmaart_version}, "
            f"{manifest.dialect} at revision {manifest.revision}, {media}; checksums match"
        )
        try:
            restored = _put_back(settings, reader, manifest, descriptions, contents, say)
        except (sqlite3.Error, OSError) as exc:
            raise BackupError(f"the restore failed: {exc}") from None
        try:
            migrated_from = _migrate(settings)
        except DatabaseNotReady as exc:
            raise BackupError(str(exc)) from None
        if migrated_from is not None:
            say(f"database: migrated from revision {migrated_from} to {head_revision()}")
        return RestoreResult(manifest, restored, migrated_from)
    finally:
        reader.close()


def _put_back(
    settings: Settings,
    reader: ArchiveReader,
    manifest: Manifest,
    descriptions: dict[str, dict[str, object]],
    contents: Contents,
    say: Say,
) -> int:
    """The media, then the database; the media restored."""
    name = describe_database(settings.database_url)
    restored = 0
    if manifest.media == "local":
        restored = _restore_media(settings, reader, descriptions)
        where = (
            f"s3://{settings.s3_bucket}/{settings.s3_prefix}".rstrip("/")
            if settings.storage == "s3"
            else str(settings.media_dir.absolute())
        )
        say(f"media: {_files(restored)} restored into {where}")
    else:
        say(
            f"media: not in this archive; they are in the S3 bucket "
            f"{manifest.media_location} (restore it from its versions or replica if needed)"
        )
    replaced = "" if contents.empty else f" (replacing {contents.describe()})"
    if manifest.dialect == "sqlite":
        _restore_sqlite(settings, reader, manifest)
    else:
        _restore_postgres(settings, reader, manifest, clear=not contents.empty)
    say(f"database: restored into {name}{replaced}")
    return restored
