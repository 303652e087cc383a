"""A provider and a storage that cost nothing: the platform's own cost of a
job, without a provider's work or media I/O."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping

from PIL import Image

from plasmaart.catalog import ModelSpec
from plasmaart.generation.providers.base import ProviderOutput, ProviderRequest, ProviderStatus
from plasmaart.media.storage import NO_METADATA, ByteStream, StorageNotFound, StoredObject


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


TINY_PNG = _tiny_png()


class NoopProvider:
    """Answers at once: every request has succeeded with one 1x1 PNG."""

    name = "noop"

    def submit(self, request: ProviderRequest) -> str:
        return f"noop-{request.generation_id}"

    def status(self, model: ModelSpec, request_id: str) -> ProviderStatus:  # noqa: ARG002
        output = ProviderOutput("image/png", data=TINY_PNG, width=1, height=1)
        return ProviderStatus("succeeded", outputs=(output,))

    def cancel(self, model: ModelSpec, request_id: str) -> bool:  # noqa: ARG002
        return False

    def download(self, output: ProviderOutput) -> bytes:
        return output.data or b""


class DiscardStorage:
    """Takes every object and keeps none: the queue, not media I/O, is measured."""

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] = NO_METADATA,
    ) -> StoredObject:
        return StoredObject(
            key, len(data), content_type, hashlib.sha256(data).hexdigest(), dict(metadata)
        )

    def get(self, key: str) -> bytes:
        raise StorageNotFound(key)

    def open_stream(self, key: str, chunk_size: int = 0) -> ByteStream:  # noqa: ARG002
        raise StorageNotFound(key)

    def stat(self, key: str) -> StoredObject:
        raise StorageNotFound(key)

    def size(self, key: str) -> int:
        raise StorageNotFound(key)

    def exists(self, key: str) -> bool:  # noqa: ARG002
        return False

    def delete(self, key: str) -> None:
        """Nothing is kept, so nothing to delete."""
