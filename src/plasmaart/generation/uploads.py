"""Input images users upload (``POST /v1/uploads``), for image-to-video and
image editing: checked (``media/uploads.py``), stored, and recorded.

Like a submission (``submission.py``), an upload makes its own transaction:
the file goes to storage first, outside any transaction (up to 10 MB), then
its row is written in one short write transaction; a refused file writes
nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from plasmaart.clock import Clock
from plasmaart.db.engine import Database
from plasmaart.errors import NotFound
from plasmaart.generation import repository as repo
from plasmaart.generation.repository import UploadRow
from plasmaart.ids import new_id
from plasmaart.media.storage import Storage
from plasmaart.media.uploads import inspect_upload


@dataclass(frozen=True)
class UploadFile:
    """An uploaded image, and whether the caller may read it without a signed link."""

    upload: UploadRow
    readable: bool


class UploadService:
    def __init__(self, db: Database, storage: Storage, clock: Clock) -> None:
        self.db = db
        self.storage = storage
        self.clock = clock

    def upload(self, user_id: str, data: bytes, declared_type: str | None) -> UploadRow:
        """Check ``data`` (``inspect_upload`` raises the refusal), store it
        and record it as ``user_id``'s; the upload as recorded."""
        info = inspect_upload(data, declared_type)
        upload_id = new_id("upl")
        extension = info.content_type.split("/")[1]
        key = f"uploads/{user_id}/{upload_id}.{extension}"
        self.storage.put(key, data, info.content_type)
        upload = UploadRow(
            id=upload_id,
            user_id=user_id,
            storage_key=key,
            content_type=info.content_type,
            width=info.width,
            height=info.height,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            created_at=self.clock.now(),
        )
        with self.db.write() as conn:
            repo.insert_upload(conn, upload)
        return upload

    def file(self, user_id: str | None, upload_id: str) -> UploadFile:
        """An upload, readable without a signed link by its owner alone."""
        with self.db.read() as conn:
            upload = repo.get_upload(conn, upload_id)
        if upload is None:
            raise NotFound(f"no upload {upload_id!r}")
        return UploadFile(upload, readable=upload.user_id == user_id)
