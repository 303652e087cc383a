"""What a finished fal request delivered: its files, as our outputs.

Read from the result URL by the client's ``status()``, and from a webhook's
payload by ``parse_webhook``.
"""

from __future__ import annotations

from collections.abc import Mapping

from plasmaart.generation.providers.base import ProviderOutput, ProviderStatus, ProviderUnavailable


def outputs_of(result: Mapping[str, object]) -> tuple[ProviderOutput, ...]:
    """The files in a fal result (``images`` list, ``image``, ``video`` or
    ``videos``), without the images fal's safety checker flagged: fal blanks
    those rather than leaving them out, and a blank picture is not a delivery."""
    files: list[Mapping[str, object]] = []
    images = result.get("images")
    if isinstance(images, list):
        flags = result.get("has_nsfw_concepts")
        flagged = flags if isinstance(flags, list) else []
        for index, image in enumerate(images):
            if isinstance(image, Mapping) and not (index < len(flagged) and flagged[index] is True):
                files.append(image)
    for single in ("image", "video"):
        value = result.get(single)
        if isinstance(value, Mapping):
            files.append(value)
    videos = result.get("videos")
    if isinstance(videos, list):
        files.extend(video for video in videos if isinstance(video, Mapping))
    return tuple(_output(file) for file in files if isinstance(file.get("url"), str))


def _output(file: Mapping[str, object]) -> ProviderOutput:
    url = str(file["url"])
    content_type = file.get("content_type")
    duration = file.get("duration")
    return ProviderOutput(
        content_type=content_type if isinstance(content_type, str) else _type_from_url(url),
        url=url,
        width=_int_or_none(file.get("width")),
        height=_int_or_none(file.get("height")),
        duration_s=float(duration)
        if isinstance(duration, int | float) and not isinstance(duration, bool)
        else None,
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _type_from_url(url: str) -> str:
    path = url.split("?", 1)[0].lower()
    for suffix, content_type in (
        (".png", "image/png"),
        (".jpg", "image/jpeg"),
        (".jpeg", "image/jpeg"),
        (".webp", "image/webp"),
        (".mp4", "video/mp4"),
        (".webm", "video/webm"),
    ):
        if path.endswith(suffix):
            return content_type
    return "application/octet-stream"


def finished(result: Mapping[str, object]) -> ProviderStatus:
    """Where a completed request stands: its outputs, or why there are none.

    A result with none of the fields fal puts files in (an ``images`` or
    ``videos`` list, an ``image`` or ``video`` object) is not a result we can
    read, not a model that made nothing: ``ProviderUnavailable``, so that the
    worker reads it again (fal keeps a request's result) until its deadline."""
    if not _has_files_field(result):
        keys = ", ".join(sorted(str(key) for key in result)[:10]) or "none"
        raise ProviderUnavailable(
            f"fal result: the answer has no images or video (its keys: {keys})"
        )
    outputs = outputs_of(result)
    if outputs:
        return ProviderStatus("succeeded", outputs=outputs)
    if isinstance(result.get("has_nsfw_concepts"), list) and result.get("images"):
        return ProviderStatus("failed", error="fal's safety checker withheld every output")
    return ProviderStatus("failed", error="fal returned no outputs")


def _has_files_field(result: Mapping[str, object]) -> bool:
    return (
        isinstance(result.get("images"), list)
        or isinstance(result.get("videos"), list)
        or isinstance(result.get("image"), Mapping)
        or isinstance(result.get("video"), Mapping)
    )
