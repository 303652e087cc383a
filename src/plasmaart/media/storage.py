"""Where generated media and uploads are kept: the ``Storage`` interface and its backends.

``LocalStorage`` (a folder, the default) and ``S3Storage`` (any S3-compatible
bucket) behave the same way, and ``create_storage`` picks one from the
settings. Keys are relative POSIX paths chosen by our code, such as
``outputs/2026/11/gen_x/0.png``; a key that could leave its folder or bucket
prefix (absolute, ``..``, backslash, NUL, ...) is refused with ``ValueError``
before any I/O. A missing object is ``StorageNotFound`` in both backends.

Each object carries a content type, its SHA-256 and a small string-to-string
metadata mapping (the license of an output, for instance). Metadata follows
S3's rules in both backends, so that switching backend never changes what
comes back: lower-case keys, printable ASCII values, at most 2 KB in all.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import mimetypes
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Any, Protocol

from plasmaart.config import ConfigError, Settings
from plasmaart.db.disk_full import WATCH as STORAGE_WATCH
from plasmaart.errors import NotFound

if TYPE_CHECKING:
    # botocore and boto3 ship without type information and their stubs are
    # not a dependency; unused-ignore keeps mypy quiet where they are
    # installed. Imported by S3Storage only: local storage never loads them.
    from botocore.exceptions import ClientError  # type: ignore[import-untyped, unused-ignore]

NO_METADATA: Mapping[str, str] = MappingProxyType({})
DEFAULT_CHUNK_SIZE = 64 * 1024

# S3's own limits, applied to both backends.
_MAX_KEY_BYTES = 1024
_MAX_METADATA_BYTES = 2048
_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
# type/subtype with optional parameters; no control characters, since the
# value ends up in a Content-Type response header.
_MIME_WORD = r"[A-Za-z0-9!#$&^_.+-]+"
_MIME_PARAMETER = rf"[ \t]*;[ \t]*{_MIME_WORD}=(?:{_MIME_WORD}|\"[\x20-\x7e]*\")"
_CONTENT_TYPE = re.compile(rf"{_MIME_WORD}/{_MIME_WORD}(?:{_MIME_PARAMETER})*")
# Where LocalStorage keeps each object's description; no key can reach it,
# because a key segment never starts with a dot.
_SIDECAR_DIR = ".meta"


class StorageNotFound(NotFound):
    """No object under this key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no stored object {key}", key=key)
        self.key = key


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    content_type: str
    sha256: str  # lower-case hex of the bytes
    metadata: Mapping[str, str] = field(default_factory=dict)


class ByteStream(Iterator[bytes], Protocol):
    """Chunks of one object. ``close()`` releases the file or connection early."""

    def close(self) -> None: ...


class Storage(Protocol):
    def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] = NO_METADATA,
    ) -> StoredObject:
        """Store ``data`` under ``key``, replacing any object there."""
        ...

    def get(self, key: str) -> bytes: ...

    def open_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ByteStream:
        """Open the object now (a missing one raises here, before any chunk) and
        yield it in chunks of at most ``chunk_size`` bytes."""
        ...

    def stat(self, key: str) -> StoredObject:
        """The object's size, content type, SHA-256 and metadata, without its bytes."""
        ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error, so retries are safe."""
        ...


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative POSIX path; ``ValueError`` otherwise."""
    if not isinstance(key, str) or not key:
        raise ValueError("a storage key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
        raise ValueError(f"a storage key is at most {_MAX_KEY_BYTES} bytes")
    if "\\" in key:
        raise ValueError(f"a storage key uses forward slashes only: {key!r}")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        raise ValueError(f"a storage key has no NUL or control characters: {key!r}")
    if key.startswith("/"):
        raise ValueError(f"a storage key is relative: {key!r}")
    for segment in key.split("/"):
        if not segment:
            raise ValueError(f"a storage key has no empty segments: {key!r}")
        # Covers "." and "..", and keeps LocalStorage's temporary files and
        # sidecars (all dot-names) out of every key's reach.
        if segment.startswith("."):
            raise ValueError(f"a storage key segment cannot start with a dot: {key!r}")
    return key


def _check_content_type(content_type: str) -> None:
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise ValueError(f"not a content type: {content_type!r}")


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    total = 0
    for name, value in metadata.items():
        if not _METADATA_NAME.fullmatch(name):
            raise ValueError(
                f"metadata names are lower-case letters, digits, '-' and '_': {name!r}"
            )
        if not isinstance(value, str) or not _PRINTABLE_ASCII.fullmatch(value):
            raise ValueError(f"metadata values are printable ASCII strings: {name}={value!r}")
        total += len(name) + len(value)
    if total > _MAX_METADATA_BYTES:
        raise ValueError(f"metadata is at most {_MAX_METADATA_BYTES} bytes in all")
    return dict(metadata)


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")


class _Chunks:
    """Reads ``chunk_size`` bytes at a time and closes the source when done."""

    def __init__(self, read: Callable[[int], bytes], close: Callable[[], None], size: int) -> None:
        self._read = read
        self._close = close
        self._size = size
        self._closed = False

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        try:
            chunk = self._read(self._size)
        except BaseException:
            self.close()
            raise
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()


def fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a part of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    fsync_directory(path.parent)


class LocalStorage:
    """Objects as files under ``root``; each one's description in a JSON sidecar.

    The bytes live at ``root/<key>``, and the content type, SHA-256 and
    metadata at ``root/.meta/<key>.json``, so that an object comes back
    exactly as it was stored, whatever its file name says. Both files are
    written atomically (temporary file in the same folder, fsync,
    ``os.replace``); the sidecar goes first and the data file decides whether
    the object exists, so a failed put leaves no object behind. The pair is
    not replaced as one: two puts racing on one key may mix their
    descriptions, which does not arise because output and upload keys are
    written once. Files are created readable by the service's user only.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        STORAGE_WATCH.watch_folder("media", self.root)

    def _inside_root(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        # resolve() follows symbolic links, so a link pointing out of the
        # folder is refused like a "..".
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key leaves the storage folder: {relative!r}")
        return path

    def _data_path(self, key: str) -> Path:
        return self._inside_root(check_key(key))

    def _sidecar_path(self, key: str) -> Path:
        return self._inside_root(f"{_SIDECAR_DIR}/{check_key(key)}.json")

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] = NO_METADATA,
    ) -> StoredObject:
        data_path = self._data_path(key)
        sidecar_path = self._sidecar_path(key)
        _check_content_type(content_type)
        stored = StoredObject(
            key=key,
            size=len(data),
            content_type=content_type,
            sha256=hashlib.sha256(data).hexdigest(),
            metadata=_check_metadata(metadata),
        )
        description = {
            "content_type": stored.content_type,
            "sha256": stored.sha256,
            "metadata": dict(stored.metadata),
        }
        existed = data_path.is_file()
        # A full disk: StorageFull (db/disk_full.py); the temporary files are
        # removed, so nothing of the object is left.
        with STORAGE_WATCH.translated("media"):
            _write_atomically(sidecar_path, json.dumps(description, sort_keys=True).encode())
            try:
                _write_atomically(data_path, data)
            except BaseException:
                if not existed:
                    with contextlib.suppress(OSError):
                        sidecar_path.unlink()
                raise
        return stored

    def _open(self, key: str) -> IO[bytes]:
        path = self._data_path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageNotFound(key) from None

    def get(self, key: str) -> bytes:
        with self._open(key) as file:
            return file.read()

    def open_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ByteStream:
        _check_chunk_size(chunk_size)
        file = self._open(key)
        return _Chunks(file.read, file.close, chunk_size)

    def stat(self, key: str) -> StoredObject:
        size = self.size(key)
        try:
            description = json.loads(self._sidecar_path(key).read_text())
        except FileNotFoundError:
            # A file copied into the folder by hand: describe it from its name
            # and bytes rather than refuse to serve it.
            guessed, _ = mimetypes.guess_type(key, strict=False)
            description = {
                "content_type": guessed or "application/octet-stream",
                "sha256": hashlib.sha256(self.get(key)).hexdigest(),
                "metadata": {},
            }
        return StoredObject(
            key=key,
            size=size,
            content_type=description["content_type"],
            sha256=description["sha256"],
            metadata=description["metadata"],
        )

    def size(self, key: str) -> int:
        path = self._data_path(key)
        try:
            status = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise StorageNotFound(key) from None
        if not stat.S_ISREG(status.st_mode):
            raise StorageNotFound(key)
        return status.st_size

    def exists(self, key: str) -> bool:
        return self._data_path(key).is_file()

    def delete(self, key: str) -> None:
        data_path = self._data_path(key)
        sidecar_path = self._sidecar_path(key)
        # Data first: once it is gone the object no longer exists, whatever
        # happens to the sidecar. Empty folders stay, since removing them
        # would race with a put creating a file in them.
        for path in (data_path, sidecar_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _client_error() -> type[ClientError]:
    from botocore.exceptions import ClientError  # type: ignore[import-untyped, unused-ignore]

    return ClientError  # type: ignore[no-any-return, unused-ignore]


def _is_missing(error: ClientError) -> bool:
    # GetObject says NoSuchKey; HeadObject answers without a body, so botocore
    # reports its bare status. A missing bucket is a configuration error and
    # propagates, except through HEAD, which cannot tell the two apart.
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "NotFound", "404")


class S3Storage:
    """Objects in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, ...).

    Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role). Each put sends
    the SHA-256 of the bytes, which the service checks and keeps; transient
    failures (throttling, 5xx, dropped connections) are retried a bounded
    number of times by botocore's standard retry mode.
    """

    MAX_ATTEMPTS = 4

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        prefix: str = "",
        connect_timeout_s: float = 5,
        read_timeout_s: float = 60,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 bucket name is required")
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = check_key(prefix) if prefix else ""
        from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]

        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # S3-compatible services behind a custom endpoint rarely have a
            # DNS name per bucket; AWS itself serves both styles.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        # Imported here: boto3 takes a tenth of a second to import, which
        # processes storing media in a folder need not pay.
        import boto3  # type: ignore[import-untyped, unused-ignore]

        # A session of our own: boto3's default session is not safe to create
        # clients from in several threads; the client itself is.
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] = NO_METADATA,
    ) -> StoredObject:
        object_key = self._object_key(key)
        _check_content_type(content_type)
        checked = _check_metadata(metadata)
        digest = hashlib.sha256(data).digest()
        self._client.put_object(
            Bucket=self.bucket,
            Key=object_key,
            Body=data,
            ContentType=content_type,
            Metadata=checked,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
        )
        return StoredObject(
            key=key,
            size=len(data),
            content_type=content_type,
            sha256=digest.hex(),
            metadata=checked,
        )

    def _get_object(self, key: str) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except _client_error() as error:
            if _is_missing(error):
                raise StorageNotFound(key) from None
            raise

    def _head_object(self, key: str) -> Any:
        try:
            return self._client.head_object(
                Bucket=self.bucket, Key=self._object_key(key), ChecksumMode="ENABLED"
            )
        except _client_error() as error:
            if _is_missing(error):
                raise StorageNotFound(key) from None
            raise

    def get(self, key: str) -> bytes:
        body = self._get_object(key)["Body"]
        try:
            data: bytes = body.read()
            return data
        finally:
            body.close()

    def open_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ByteStream:
        _check_chunk_size(chunk_size)
        body = self._get_object(key)["Body"]
        return _Chunks(body.read, body.close, chunk_size)

    def stat(self, key: str) -> StoredObject:
        head = self._head_object(key)
        sha256 = _sha256_hex(head.get("ChecksumSHA256"))
        if sha256 is None:
            # Stored without a checksum (copied in by other tools): hash it.
            sha256 = hashlib.sha256(self.get(key)).hexdigest()
        return StoredObject(
            key=key,
            size=int(head["ContentLength"]),
            content_type=str(head.get("ContentType") or "application/octet-stream"),
            sha256=sha256,
            metadata=dict(head.get("Metadata", {})),
        )

    def size(self, key: str) -> int:
        return int(self._head_object(key)["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self._head_object(key)
        except StorageNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        # S3 answers a delete of a missing key with success, as LocalStorage does.
        self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))


def _sha256_hex(checksum: object) -> str | None:
    """S3's base64 ChecksumSHA256 as hex; None when absent or composite (multipart)."""
    if not isinstance(checksum, str) or "-" in checksum:
        return None
    try:
        digest = base64.b64decode(checksum, validate=True)
    except binascii.Error:
        return None
    return digest.hex() if len(digest) == hashlib.sha256().digest_size else None


def create_storage(settings: Settings) -> Storage:
    """The backend the settings choose: the media folder, or the S3 bucket."""
    if settings.storage == "s3":
        if not settings.s3_bucket:
            raise ConfigError("PLASMAART_S3_BUCKET: required when PLASMAART_STORAGE=s3")
        return S3Storage(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
        )
    return LocalStorage(settings.media_dir)
