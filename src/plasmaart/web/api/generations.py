"""``/v1/generations``, ``/v1/quotes``, ``/v1/uploads`` and output downloads."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field, TypeAdapter

from plasmaart.errors import NotFound
from plasmaart.generation.service import Generation, GenerationRequest, Seen
from plasmaart.media.signing import sign_url, signing_secret, verify
from plasmaart.media.uploads import MAX_UPLOAD_BYTES
from plasmaart.platform import Platform
from plasmaart.web.auth import CurrentPrincipal, OptionalPrincipal
from plasmaart.web.deps import CursorQuery, LimitQuery, PlatformDep
from plasmaart.web.pagination import DEFAULT_LIMIT, decode_cursor, encode_cursor
from plasmaart.web.rate_limit_guard import RATE_LIMITED, GenerationRateLimit, QuoteRateLimit
from plasmaart.web.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["generations"])

# How long a download link in a generation object works.
DOWNLOAD_LINK_LIFETIME = timedelta(hours=1)


class GenerationIn(StrictBody):
    model: Annotated[str, Field(min_length=1, max_length=100)]
    prompt: Annotated[str, Field(max_length=20_000)]
    num_outputs: Annotated[int, Field(ge=1, le=16)] = 1
    image_url: Annotated[str | None, Field(max_length=2000)] = None
    upload_id: Annotated[str | None, Field(max_length=40)] = None
    team_id: Annotated[str | None, Field(max_length=40)] = None
    params: dict[str, Any] = Field(default_factory=dict)
    webhook_url: Annotated[
        str | None,
        Field(
            max_length=2000,
            description="Where to POST this generation's terminal event, signed with the "
            "account's webhook secret (docs/webhooks.md)",
        ),
    ] = None

    def request(self) -> GenerationRequest:
        return GenerationRequest(
            model=self.model,
            prompt=self.prompt,
            num_outputs=self.num_outputs,
            image_url=self.image_url,
            upload_id=self.upload_id,
            team_id=self.team_id,
            params=self.params,
            webhook_url=self.webhook_url,
        )


class OutputOut(BaseModel):
    id: str
    url: str
    content_type: str
    width: int | None
    height: int | None
    duration_s: float | None
    watermarked: bool
    license: Literal["personal", "commercial"]


class ErrorOut(BaseModel):
    code: str
    message: str


class GenerationOut(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    model: str
    kind: str
    prompt: str
    num_outputs: int
    team_id: str | None
    params: dict[str, Any]
    credits_per_output: int
    credits_held: int
    credits_charged: int
    balance_after: int
    outputs: list[OutputOut]
    error: ErrorOut | None
    license: Literal["personal", "commercial"]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None
    # A running job asked to stop: it ends canceled, or succeeded if the
    # provider had already delivered.
    cancel_requested: bool
    can_cancel: bool = Field(
        description="Whether the caller may cancel it now: it is queued or running and the "
        "caller submitted it or owns its team (other members of the team may not)"
    )


# A submission's answer, written by its route (``create_generation``).
_GENERATION_JSON = TypeAdapter(GenerationOut)


class GenerationPage(BaseModel):
    data: list[GenerationOut]
    next_cursor: str | None


class QuoteOut(BaseModel):
    credits: int
    available: int
    available_after: int
    allowed: bool
    reason: str | None


class UploadOut(BaseModel):
    id: str
    url: str
    content_type: str
    width: int
    height: int


def _signed(platform: Platform, path: str) -> str:
    secret = signing_secret(platform.settings)
    return sign_url(path, platform.clock.now() + DOWNLOAD_LINK_LIFETIME, secret)


def seen_out(platform: Platform, seen: Seen) -> GenerationOut:
    """A generation as the caller who read it sees it."""
    return generation_out(platform, seen.generation, caller_may_cancel=seen.caller_may_cancel)


def generation_out(
    platform: Platform, generation: Generation, *, caller_may_cancel: bool = True
) -> GenerationOut:
    """The generation as the caller sees it. ``caller_may_cancel`` holds for
    its submitter and whoever was just let cancel it; reads of other members'
    team generations pass what ``may_cancel`` says."""
    return GenerationOut(
        id=generation.id,
        status=generation.status,
        model=generation.model,
        kind=generation.kind,
        prompt=generation.prompt,
        num_outputs=generation.num_outputs,
        team_id=generation.team_id,
        params=generation.params,
        credits_per_output=generation.credits_per_output,
        credits_held=generation.credits_held,
        credits_charged=generation.credits_charged,
        balance_after=generation.balance_after,
        outputs=[
            OutputOut(
                id=output.id,
                url=_signed(platform, f"/v1/outputs/{output.id}/content"),
                content_type=output.content_type,
                width=output.width,
                height=output.height,
                duration_s=output.duration_s,
                watermarked=output.watermarked,
                license=output.license,
            )
            for output in generation.outputs
        ],
        error=None
        if generation.error_code is None
        else ErrorOut(code=generation.error_code, message=generation.error_message or ""),
        license=generation.license,
        created_at=generation.created_at,
        started_at=generation.started_at,
        finished_at=generation.finished_at,
        queue_position=generation.queue_position,
        cancel_requested=generation.cancel_requested,
        can_cancel=caller_may_cancel and generation.status in ("queued", "running"),
    )


@router.post(
    "/generations",
    status_code=201,
    response_model=GenerationOut,
    dependencies=[GenerationRateLimit],
    responses=RATE_LIMITED,
)
def create_generation(
    body: GenerationIn, request: Request, principal: CurrentPrincipal, platform: PlatformDep
) -> Response:
    """Hold credits x outputs and queue the job; 201 with the generation."""
    # The HTTP Idempotency-Key, scoped like the middleware scopes it (per
    # credential), makes the job itself unique: a re-run after a crash finds it.
    http_key = getattr(request.state, "idempotency_key", None)
    key = None
    if http_key:
        key = hashlib.sha256(f"{principal.credential_id}\n{http_key}".encode()).hexdigest()
    request_ = replace(body.request(), api_key=principal.api_key)
    generation = platform.submissions.submit(principal.user, request_, idempotency_key=key)
    # Written here, as FastAPI's own fast path writes a response model (the
    # same bytes): returned as a model, it would be validated a second time,
    # in a second hop to the thread pool, on the busiest route of the API.
    return Response(
        _GENERATION_JSON.dump_json(generation_out(platform, generation), by_alias=True),
        status_code=201,
        media_type="application/json",
    )


@router.post(
    "/quotes", response_model=QuoteOut, dependencies=[QuoteRateLimit], responses=RATE_LIMITED
)
def quote(body: GenerationIn, principal: CurrentPrincipal, platform: PlatformDep) -> QuoteOut:
    """What the request would cost and whether it would be accepted; nothing is held."""
    answer = platform.submissions.quote(
        principal.user, replace(body.request(), api_key=principal.api_key)
    )
    return QuoteOut(
        credits=answer.credits,
        available=answer.available,
        available_after=answer.available_after,
        allowed=answer.allowed,
        reason=answer.reason,
    )


@router.get("/generations", response_model=GenerationPage)
def list_generations(
    principal: CurrentPrincipal,
    platform: PlatformDep,
    status: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None,
    model: Annotated[str | None, Query(max_length=100)] = None,
    team_id: Annotated[str | None, Query(max_length=40)] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> GenerationPage:
    """Your generations (and your teams'), newest first."""
    before = decode_cursor(cursor) if cursor else None
    with platform.db.read() as conn:
        found = platform.generations.browse(
            conn,
            principal.user,
            limit=limit + 1,
            before=before,
            status=status,
            model=model,
            team_id=team_id,
        )
    more = len(found) > limit
    found = found[:limit]
    return GenerationPage(
        data=[seen_out(platform, seen) for seen in found],
        next_cursor=encode_cursor(found[-1].generation.id) if more else None,
    )


@router.get("/generations/{generation_id}", response_model=GenerationOut)
def get_generation(
    generation_id: str, principal: CurrentPrincipal, platform: PlatformDep
) -> GenerationOut:
    with platform.db.read() as conn:
        seen = platform.generations.read(conn, principal.user, generation_id)
    return seen_out(platform, seen)


@router.post(
    "/generations/{generation_id}/cancel",
    response_model=GenerationOut,
    dependencies=[GenerationRateLimit],
    responses=RATE_LIMITED,
)
def cancel_generation(
    generation_id: str, principal: CurrentPrincipal, platform: PlatformDep
) -> GenerationOut:
    """Queued: canceled and refunded at once. Running: canceled at the provider,
    unless it had already delivered (then it succeeds and is charged)."""
    # Fair use sees the cancel: one right after the submission is churn.
    generation = platform.submissions.cancel(principal.user, generation_id)
    return generation_out(platform, generation)


@router.post(
    "/uploads",
    status_code=201,
    response_model=UploadOut,
    dependencies=[GenerationRateLimit],
    responses=RATE_LIMITED,
)
def upload(
    file: Annotated[UploadFile, File(description="PNG, JPEG or WebP; 10 MB; 4096 px a side")],
    principal: CurrentPrincipal,
    platform: PlatformDep,
) -> UploadOut:
    """An input image for image-to-video (or image editing)."""
    # One byte past the limit is enough to refuse a file as too large.
    data = file.file.read(MAX_UPLOAD_BYTES + 1)
    made = platform.uploads.upload(principal.user.id, data, file.content_type)
    return UploadOut(
        id=made.id,
        url=_signed(platform, f"/v1/uploads/{made.id}/content"),
        content_type=made.content_type,
        width=made.width,
        height=made.height,
    )


def _stream(platform: Platform, key: str) -> Iterator[bytes]:
    stream = platform.storage.open_stream(key)
    try:
        yield from stream
    finally:
        stream.close()


def output_filename(generation_id: str, position: int, storage_key: str) -> str:
    """What a browser saves an output as: ``plasmaart-<generation>-<n>.<ext>``,
    n counting from 1, the extension the stored file's."""
    extension = PurePosixPath(storage_key).suffix.lstrip(".").lower() or "bin"
    return f"plasmaart-{generation_id}-{position + 1}.{extension}"


def _download(
    platform: Platform,
    request: Request,
    key: str,
    content_type: str,
    allowed: bool,
    filename: str | None = None,
) -> StreamingResponse:
    expires, signature = request.query_params.get("expires"), request.query_params.get("signature")
    signed = (
        expires is not None
        and signature is not None
        and verify(
            request.url.path,
            expires,
            signature,
            signing_secret(platform.settings),
            platform.clock.now(),
        )
    )
    if not (signed or allowed):
        raise NotFound("not found")
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    if filename is not None:
        # Inline, so that the gallery's <img> and <video> and a link opened in a
        # tab still show it; the name is what "Download" (or curl -OJ) saves.
        # Ids and extensions are [A-Za-z0-9_.-], so the quoted name needs no escaping.
        headers["Content-Disposition"] = f'inline; filename="{filename}"'
    return StreamingResponse(_stream(platform, key), media_type=content_type, headers=headers)


@router.get("/outputs/{output_id}/content", response_class=StreamingResponse)
def output_content(
    output_id: str, request: Request, principal: OptionalPrincipal, platform: PlatformDep
) -> StreamingResponse:
    """The file: for its owner, the team, an admin, or anyone with a signed URL."""
    user = None if principal is None else principal.user
    with platform.db.read() as conn:
        found = platform.generations.output_file(conn, user, output_id)
    output = found.output
    filename = output_filename(output.generation_id, output.position, output.storage_key)
    return _download(
        platform, request, output.storage_key, output.content_type, found.readable, filename
    )


@router.get("/uploads/{upload_id}/content", response_class=StreamingResponse)
def upload_content(
    upload_id: str, request: Request, principal: OptionalPrincipal, platform: PlatformDep
) -> StreamingResponse:
    """An uploaded image: for its owner, or with a signed URL."""
    found = platform.uploads.file(None if principal is None else principal.user.id, upload_id)
    upload = found.upload
    return _download(platform, request, upload.storage_key, upload.content_type, found.readable)
