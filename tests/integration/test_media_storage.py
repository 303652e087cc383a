"""Media storage: the folder and the S3 backend pass the same suite.

The S3 backend talks HTTP to moto's server, started here on 127.0.0.1; fake
credentials, an explicit endpoint and a disabled instance-metadata lookup keep
every request on this machine.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import itertools
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from plasmaart.config import ConfigError, Settings, load_settings
from plasmaart.db import disk_full as full_disks
from plasmaart.db.disk_full import WATCH as STORAGE_WATCH
from plasmaart.db.disk_full import StorageFull
from plasmaart.errors import DomainError
from plasmaart.media.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    StorageNotFound,
    StoredObject,
    create_storage,
)
from tests.support.s3 import moto_server

REGION = "us-east-1"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
PNG_SHA256 = hashlib.sha256(PNG).hexdigest()
KEY = "outputs/2026/11/gen_x/0.png"
_buckets = itertools.count()

OFFLINE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    # No profile or credentials file of the machine running the tests.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def offline_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in OFFLINE_AWS_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def s3_admin(moto_endpoint: str):  # type: ignore[no-untyped-def]
    """A client of our own, to set up buckets and look behind S3Storage's back."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_admin) -> str:  # type: ignore[no-untyped-def]
    name = f"plasmaart-media-{next(_buckets)}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "media")
    request.getfixturevalue("offline_aws")
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = request.getfixturevalue("bucket")
    return S3Storage(bucket, endpoint_url=endpoint, region=REGION, prefix="media")


# Both backends


def test_put_then_get_stat_and_size(storage: Storage) -> None:
    stored = storage.put(KEY, PNG, "image/png", {"license": "commercial", "generation_id": "gen_x"})
    expected = StoredObject(
        key=KEY,
        size=len(PNG),
        content_type="image/png",
        sha256=PNG_SHA256,
        metadata={"license": "commercial", "generation_id": "gen_x"},
    )
    assert stored == expected
    assert storage.get(KEY) == PNG
    assert storage.stat(KEY) == expected
    assert storage.size(KEY) == len(PNG)
    assert storage.exists(KEY)


def test_metadata_is_optional(storage: Storage) -> None:
    storage.put("uploads/u1.webp", b"RIFF....WEBP", "image/webp")
    described = storage.stat("uploads/u1.webp")
    assert (described.content_type, dict(described.metadata)) == ("image/webp", {})


def test_the_content_type_is_kept_whatever_the_name_says(storage: Storage) -> None:
    storage.put("outputs/clip", b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    assert storage.stat("outputs/clip").content_type == "video/mp4"


def test_an_object_streams_in_bounded_chunks(storage: Storage) -> None:
    data = os.urandom(300_000)
    storage.put("outputs/big.bin", data, "application/octet-stream")
    chunks = list(storage.open_stream("outputs/big.bin", chunk_size=65_536))
    assert b"".join(chunks) == data
    assert all(0 < len(chunk) <= 65_536 for chunk in chunks)
    assert len(chunks) >= 5


def test_a_stream_closed_early_stops(storage: Storage) -> None:
    storage.put(KEY, PNG, "image/png")
    stream = storage.open_stream(KEY, chunk_size=100)
    assert next(stream) == PNG[:100]
    stream.close()
    assert list(stream) == []
    stream.close()  # closing twice is harmless


def test_a_put_replaces_the_object_and_its_description(storage: Storage) -> None:
    storage.put(KEY, PNG, "image/png", {"license": "personal"})
    storage.put(KEY, b"GIF89a", "image/gif", {"license": "commercial"})
    assert storage.get(KEY) == b"GIF89a"
    described = storage.stat(KEY)
    assert (described.size, described.content_type, dict(described.metadata)) == (
        6,
        "image/gif",
        {"license": "commercial"},
    )


def test_delete_removes_the_object_and_is_safe_to_repeat(storage: Storage) -> None:
    storage.put(KEY, PNG, "image/png")
    storage.put("outputs/2026/11/gen_x/1.png", PNG, "image/png")
    storage.delete(KEY)
    assert not storage.exists(KEY)
    assert storage.exists("outputs/2026/11/gen_x/1.png")
    storage.delete(KEY)
    storage.delete("outputs/never-stored.png")
    with pytest.raises(StorageNotFound):
        storage.get(KEY)


@pytest.mark.parametrize(
    "read",
    [
        lambda s, k: s.get(k),
        lambda s, k: s.open_stream(k),
        lambda s, k: s.stat(k),
        lambda s, k: s.size(k),
    ],
    ids=["get", "open_stream", "stat", "size"],
)
def test_a_missing_object_is_not_found(storage: Storage, read) -> None:  # type: ignore[no-untyped-def]
    storage.put("outputs/gen_x/0.png", PNG, "image/png")
    assert not storage.exists("outputs/gen_x/1.png")
    # A missing key, a "folder" of other keys: neither is an object.
    for key in ("outputs/gen_x/1.png", "outputs/gen_x", "outputs/gen_x/0.png/more"):
        # open_stream refuses at once, before a response would have started.
        with pytest.raises(StorageNotFound) as missing:
            read(storage, key)
        assert isinstance(missing.value, DomainError)
        assert (missing.value.code, missing.value.status) == ("not_found", 404)
        assert missing.value.key == key


TRAVERSALS = [
    "/etc/passwd",
    "../secret_key",
    "outputs/../../secret_key",
    "outputs/./0.png",
    "outputs\\..\\0.png",
    "outputs/0.png\x00.txt",
    "outputs/\n.png",
    "outputs//0.png",
    "outputs/",
    "",
    ".meta/outputs/0.png.json",
    "outputs/.0.png.tmp",
    "x" * 1025,
]


@pytest.mark.parametrize("key", TRAVERSALS)
def test_a_key_that_could_escape_is_refused_before_any_io(
    storage: Storage, key: str, tmp_path: Path
) -> None:
    operations = [
        lambda: storage.put(key, PNG, "image/png"),
        lambda: storage.get(key),
        lambda: storage.open_stream(key),
        lambda: storage.stat(key),
        lambda: storage.size(key),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
    ]
    for operation in operations:
        with pytest.raises(ValueError, match="storage key"):
            operation()
    if isinstance(storage, LocalStorage):
        assert not storage.root.exists()


@pytest.mark.parametrize(
    ("content_type", "metadata", "message"),
    [
        ("image/png\r\nX-Injected: 1", {}, "content type"),
        ("png", {}, "content type"),
        ("image/png", {"License": "personal"}, "metadata names"),
        ("image/png", {"x-amz-meta x": "1"}, "metadata names"),
        ("image/png", {"prompt": "un café"}, "printable ASCII"),
        ("image/png", {"prompt": "line\nbreak"}, "printable ASCII"),
        ("image/png", {"prompt": "x" * 2100}, "2048 bytes"),
    ],
)
def test_descriptions_s3_could_not_keep_are_refused(
    storage: Storage, content_type: str, metadata: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        storage.put(KEY, PNG, content_type, metadata)
    assert not storage.exists(KEY)


def test_a_content_type_may_carry_parameters(storage: Storage) -> None:
    storage.put("outputs/readme.txt", b"hi", 'text/plain; charset="utf-8"')
    assert storage.stat("outputs/readme.txt").content_type == 'text/plain; charset="utf-8"'


# The folder


def test_local_files_sit_under_the_root_and_are_private(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "media")
    storage.put(KEY, PNG, "image/png")
    data_file = tmp_path / "media" / KEY
    assert data_file.read_bytes() == PNG
    assert stat.S_IMODE(data_file.stat().st_mode) == 0o600
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [f"media/.meta/{KEY}.json", f"media/{KEY}"]


def test_a_relative_root_is_fixed_when_the_storage_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = LocalStorage(Path("var/media"))
    monkeypatch.chdir("/")
    storage.put(KEY, PNG, "image/png")
    assert (tmp_path / "var" / "media" / KEY).read_bytes() == PNG


def leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_write_failing_midway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "media")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    # The bytes are in the temporary file when fsync fails.
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StorageFull, match="media storage is full"):
        storage.put(KEY, PNG, "image/png")
    monkeypatch.undo()
    assert not storage.exists(KEY)
    assert leftovers(tmp_path) == []
    assert "media" in STORAGE_WATCH.full()
    # Once there is room, the same write goes through, and (past the quiet
    # spell that ends an outage) the process no longer reports the disk full.
    monkeypatch.setattr(full_disks, "QUIET_S", 0.0)
    storage.put(KEY, PNG, "image/png")
    assert storage.get(KEY) == PNG
    assert "media" not in STORAGE_WATCH.full()


def test_a_failed_replace_keeps_the_previous_object_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "media")
    storage.put(KEY, PNG, "image/png")
    real_replace = os.replace

    def failing_data_replace(src: str, dst: str | Path) -> None:
        # The sidecar goes through; the data file's rename fails.
        if not str(dst).endswith(".json"):
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_data_replace)
    with pytest.raises(OSError, match="I/O error"):
        storage.put(KEY, b"new bytes", "image/png")
    with pytest.raises(OSError, match="I/O error"):
        storage.put("outputs/fresh.png", b"new bytes", "image/png")
    monkeypatch.undo()
    assert storage.get(KEY) == PNG
    assert not storage.exists("outputs/fresh.png")
    # No temporary file, and no description of the object that never landed.
    assert leftovers(tmp_path) == [f"media/.meta/{KEY}.json", f"media/{KEY}"]


def test_a_symbolic_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "outputs").symlink_to(outside, target_is_directory=True)
    storage = LocalStorage(tmp_path / "media")
    with pytest.raises(ValueError, match="leaves the storage folder"):
        storage.put("outputs/0.png", PNG, "image/png")
    with pytest.raises(ValueError, match="leaves the storage folder"):
        storage.get("outputs/0.png")
    assert list(outside.iterdir()) == []


def test_a_file_copied_in_by_hand_is_described_from_its_name(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "old.png").write_bytes(PNG)
    described = storage.stat("outputs/old.png")
    assert (described.content_type, described.sha256, described.size) == (
        "image/png",
        PNG_SHA256,
        len(PNG),
    )


# The bucket


@pytest.mark.usefixtures("offline_aws")
def test_s3_objects_sit_under_the_prefix_with_their_checksum(  # type: ignore[no-untyped-def]
    moto_endpoint: str, bucket: str, s3_admin
) -> None:
    storage = S3Storage(bucket, endpoint_url=moto_endpoint, region=REGION, prefix="/plasma/media/")
    storage.put(KEY, PNG, "image/png", {"license": "personal"})
    listed = s3_admin.list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listed["Contents"]] == [f"plasma/media/{KEY}"]
    head = s3_admin.head_object(Bucket=bucket, Key=f"plasma/media/{KEY}", ChecksumMode="ENABLED")
    assert bytes.fromhex(PNG_SHA256) == base64.b64decode(head["ChecksumSHA256"])
    assert (head["ContentType"], head["Metadata"]) == ("image/png", {"license": "personal"})


@pytest.mark.usefixtures("offline_aws")
def test_s3_an_object_put_without_a_checksum_is_hashed_on_stat(  # type: ignore[no-untyped-def]
    moto_endpoint: str, bucket: str, s3_admin
) -> None:
    # Another tool's upload: botocore adds a CRC checksum of its own, not SHA-256.
    s3_admin.put_object(Bucket=bucket, Key="outputs/raw.png", Body=PNG)
    storage = S3Storage(bucket, endpoint_url=moto_endpoint, region=REGION)
    assert storage.stat("outputs/raw.png").sha256 == PNG_SHA256


@pytest.mark.usefixtures("offline_aws")
def test_s3_a_missing_bucket_is_an_error_not_a_missing_object(moto_endpoint: str) -> None:
    storage = S3Storage("plasmaart-no-such-bucket", endpoint_url=moto_endpoint, region=REGION)
    with pytest.raises(ClientError, match="NoSuchBucket"):
        storage.get(KEY)


@pytest.mark.usefixtures("offline_aws")
def test_s3_retries_are_standard_and_bounded(moto_endpoint: str) -> None:
    storage = S3Storage("plasmaart-media", endpoint_url=moto_endpoint, region=REGION)
    assert storage._client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}


def test_s3_prefix_follows_the_key_rules() -> None:
    with pytest.raises(ValueError, match="storage key"):
        S3Storage("plasmaart-media", prefix="../other")


# The factory


def test_the_folder_is_the_default(tmp_path: Path) -> None:
    storage = create_storage(Settings(var_dir=tmp_path, storage_dir=None, storage="local"))
    assert isinstance(storage, LocalStorage)
    assert storage.root == (tmp_path / "media").resolve()


@pytest.mark.usefixtures("offline_aws")
def test_s3_is_chosen_by_settings(  # type: ignore[no-untyped-def]
    moto_endpoint: str, bucket: str, s3_admin
) -> None:
    settings = Settings(
        storage="s3",
        s3_bucket=bucket,
        s3_endpoint_url=moto_endpoint,
        s3_region=REGION,
        s3_prefix="media",
    )
    storage = create_storage(settings)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == (bucket, "media")
    storage.put(KEY, PNG, "image/png")
    stored = s3_admin.get_object(Bucket=bucket, Key=f"media/{KEY}")
    assert stored["Body"].read() == PNG


def test_s3_without_a_bucket_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLASMAART_S3_BUCKET", raising=False)
    monkeypatch.setenv("PLASMAART_STORAGE", "s3")
    with pytest.raises(ConfigError, match=r"PLASMAART_S3_BUCKET: .*PLASMAART_STORAGE=s3"):
        load_settings()
