"""A local stand-in for fal.ai's queue API, served on 127.0.0.1 in a thread.

It speaks the protocol the fal provider relies on:

* ``POST /{endpoint}[?fal_webhook=url]`` queues a request (``Authorization:
  Key …`` checked) and answers ``{status, request_id, response_url,
  status_url, cancel_url, queue_position}``;
* ``GET /{owner}/{app}/requests/{id}/status`` answers ``IN_QUEUE`` (202, with
  ``queue_position``), ``IN_PROGRESS`` (202) or ``COMPLETED`` (200). Requests
  live under the endpoint's app only, as on fal: ``fal-ai/flux`` for
  ``fal-ai/flux/schnell``; any other path is a 404;
* ``GET /{owner}/{app}/requests/{id}`` answers the result, or the error the
  "model" returned; 499 ``client_cancelled`` once cancelled;
* ``PUT /{owner}/{app}/requests/{id}/cancel``: 202 ``CANCELLATION_REQUESTED``,
  400 ``ALREADY_COMPLETED``, 404 ``NOT_FOUND``;
* ``GET /media/{id}/{index}.png|.mp4``: real files made by
  ``plasmaart.media.sandbox_render`` (public, no key, as on fal's CDN);
* ``GET /.well-known/jwks.json``: the ED25519 public keys webhooks are signed
  with, as a JWKS document;
* ``POST /webhook-sink``: records what it receives, so tests can hand the fake
  its own URL as the webhook.

Each submitted request takes the next scripted ``Behaviour`` (``script``), or
``default``: how many polls it stays queued and running, stuck in the queue,
errors at submit, status or result (422 with a ``detail`` list, 5xx with or
without ``X-Fal-Retryable``), output files refused (a 404 for a file past its
expiry, a 5xx that persists), flagged outputs, duplicate webhook delivery. A
request completes after its polls, or when a test calls ``complete``; on
completion its webhook is POSTed, signed like fal's.

It can also lie, as a real provider does (``Lie``): hang (accept the
connection and never answer, until ``hang_s`` or ``honest()``), answer 500,
answer malformed JSON (not JSON, or JSON of the wrong shape), deliver k of
the n outputs asked, or answer late (stay in progress for ``late_s``, ignore
a cancel, then complete and send its webhook after the job's deadline). A lie
is chosen per request either by a marker in the prompt, which the platform
passes through unchanged (``Lie(...).marker()``: works whatever process the
platform runs in), or by a mode the test sets (``lie(..., requests=N)`` or
``seconds=S``; ``honest()`` ends it and heals the requests lying now).
``record()`` says afterwards what it did for each request: the lie, the
outputs asked and offered, the downloads it served, its webhook answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from plasmaart.clock import Clock
from plasmaart.media import sandbox_render as render
from tests.support.http_fake import WAIT_S, Answer, HttpFake

FAKE_USER_ID = "fake-fal-user"

# Small files keep the tests fast; the sides keep each aspect ratio.
_IMAGE_SIDES = {
    "1:1": (64, 64),
    "16:9": (112, 64),
    "9:16": (64, 112),
    "4:3": (96, 72),
    "3:4": (72, 96),
    "square_hd": (64, 64),
    "square": (64, 64),
    "landscape_16_9": (112, 64),
    "portrait_16_9": (64, 112),
    "landscape_4_3": (96, 72),
    "portrait_4_3": (72, 96),
}
_VIDEO_SIDES = {"16:9": (128, 72), "9:16": (72, 128), "1:1": (96, 96), "4:3": (96, 72)}
_REQUEST_PATH = re.compile(r"^/(?P<app>.+?)/requests/(?P<id>[^/]+)(?P<action>/status|/cancel)?$")
_MEDIA_PATH = re.compile(r"^/media/(?P<id>[^/]+)/(?P<index>\d+)\.(?:png|mp4)$")


@dataclass(frozen=True)
class FalError:
    """An error answer as fal gives it."""

    status: int
    body: Any
    retryable: bool | None = None

    @classmethod
    def validation(cls, *problems: tuple[str, str]) -> FalError:
        """A 422 with one ``detail`` entry per (field, message)."""
        return cls(
            422,
            {
                "detail": [
                    {
                        "loc": ["body", name],
                        "msg": message,
                        "type": "value_error",
                        "url": "https://docs.fal.ai/errors/#value_error",
                    }
                    for name, message in problems
                ]
            },
        )

    @classmethod
    def server(cls, status: int = 503, retryable: bool | None = None) -> FalError:
        """A request error: flat ``detail`` and ``error_type``."""
        return cls(
            status,
            {"detail": "No runner could be allocated", "error_type": "runner_scheduling_failure"},
            retryable,
        )


@dataclass(frozen=True)
class Behaviour:
    """How the fake treats one submitted request."""

    queued_polls: int = 1  # status polls answered IN_QUEUE
    running_polls: int = 1  # then IN_PROGRESS; the next poll completes it
    queue_position: int = 2  # fal counts from 0
    stuck_in_queue: bool = False
    submit_error: FalError | None = None
    status_error: FalError | None = None
    result_error: FalError | None = None
    nsfw: tuple[bool, ...] = ()  # has_nsfw_concepts, one flag per image
    # Downloads of the output files answered with this error: those of the
    # indexes in ``download_error_for``, or of every file when it is empty.
    download_error: FalError | None = None
    download_error_for: tuple[int, ...] = ()
    webhook_deliveries: int = 1  # 2: the same webhook is delivered twice


LieKind = Literal["hang", "error", "malformed", "partial", "late"]
Stage = Literal["submit", "status", "result", "webhook"]
LIE_KINDS: tuple[LieKind, ...] = get_args(LieKind)
# Where a hang, a 500 or a malformed answer can happen (a webhook can only be
# malformed: a signed body that is not a fal webhook).
STAGES: tuple[Stage, ...] = ("submit", "status", "result")
_MARKER = re.compile(r"\[fal-lie ([^\]]*)\]")
# What a malformed answer is at each stage: cut-off JSON, or JSON of a shape
# the protocol does not have.
_NOT_JSON = b'{"status": "COMPLETED", "images": [{"url": "http'
_WRONG_SHAPE: dict[Stage, Any] = {
    "submit": {"status": "IN_QUEUE", "request_id": 12345},
    "status": {"status": 200, "state": "done"},
    "result": {"output": [{"href": "nowhere"}], "seed": "seven"},
    "webhook": {"status": "MAYBE", "payload": [1, 2]},
}


@dataclass(frozen=True)
class Lie:
    """How a request misbehaves.

    ``hang``, ``error`` (500) and ``malformed`` (``shape``: ``invalid``, not
    JSON; ``wrong``, JSON of the wrong shape) happen at ``stage`` (submit, the
    status poll, or the result; ``malformed`` also at ``webhook``: the body
    of its webhook, signed as fal signs), for its first ``times`` answers
    there (None: every one). ``partial``: the result offers ``deliver``
    outputs, fewer than asked. ``late``: in progress for ``late_s`` seconds
    after its submission whatever is polled or cancelled (a cancel is
    acknowledged and ignored), then completed, its webhook sent."""

    kind: LieKind
    stage: Stage = "status"
    times: int | None = None
    deliver: int = 1
    late_s: float = 1.0
    shape: Literal["invalid", "wrong"] = "invalid"

    def marker(self) -> str:
        """The text that, in a prompt, makes the fake tell this lie."""
        parts = [f"{item.name}={getattr(self, item.name)}" for item in fields(self)]
        return f"[fal-lie {' '.join(parts)}]"

    @classmethod
    def in_prompt(cls, prompt: str) -> Lie | None:
        found = _MARKER.search(prompt)
        if found is None:
            return None
        values = dict(part.split("=", 1) for part in found[1].split() if "=" in part)
        times = values.get("times", "None")
        return cls(
            kind=values["kind"],  # type: ignore[arg-type]
            stage=values.get("stage", "status"),  # type: ignore[arg-type]
            times=None if times == "None" else int(times),
            deliver=int(values.get("deliver", 1)),
            late_s=float(values.get("late_s", 1.0)),
            shape=values.get("shape", "invalid"),  # type: ignore[arg-type]
        )

    def tells_at(self, stage: Stage, told: int) -> bool:
        """Whether the answer at ``stage``, after ``told`` lies there, is one."""
        return (
            self.kind in ("hang", "error", "malformed")
            and self.stage == stage
            and (stage != "webhook" or self.kind == "malformed")
            and (self.times is None or told < self.times)
        )


@dataclass(frozen=True)
class Served:
    """What the fake did for one accepted request (``FakeFal.record``)."""

    request_id: str
    endpoint: str
    lie: Lie | None
    asked: int  # outputs asked (num_images; 1 for a video)
    offered: int  # files its result offered (0: no result made)
    downloads: tuple[int, ...]  # indexes of the files served (200), in order
    told: tuple[str, ...]  # the lies told, "stage:kind" (and "cancel:ignored")
    webhooks: tuple[int, ...]  # our answer's status to each webhook (0: none)
    completed: bool
    healed: bool


@dataclass(frozen=True)
class Delivery:
    """A webhook the sink received."""

    headers: dict[str, str]
    body: bytes


@dataclass
class FakeRequest:
    request_id: str
    endpoint: str
    app: str
    input: dict[str, Any]
    webhook_url: str | None
    behaviour: Behaviour
    polls: int = 0
    completed: bool = False
    cancelled: bool = False
    result: dict[str, Any] | None = None
    media: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    lie: Lie | None = None
    healed: bool = False
    late_until: float = 0.0  # time.monotonic()
    told: Counter[str] = field(default_factory=Counter)
    told_log: list[str] = field(default_factory=list)
    downloads: list[int] = field(default_factory=list)
    webhook_answers: list[int] = field(default_factory=list)

    def lying(self) -> Lie | None:
        return None if self.healed else self.lie

    def served(self) -> Served:
        asked = 1 if _is_video(self.endpoint) else int(self.input.get("num_images", 1))
        return Served(
            request_id=self.request_id,
            endpoint=self.endpoint,
            lie=self.lie,
            asked=asked,
            offered=len(self.media),
            downloads=tuple(self.downloads),
            told=tuple(self.told_log),
            webhooks=tuple(self.webhook_answers),
            completed=self.completed,
            healed=self.healed,
        )


class FakeFal(HttpFake):
    """The fake server; use as a context manager."""

    name = "fake-fal"

    def __init__(self, clock: Clock, key: str = "fake-fal-key") -> None:
        super().__init__()
        self.clock = clock
        self.key = key
        self.default = Behaviour()
        self.requests: dict[str, FakeRequest] = {}
        self.deliveries: list[Delivery] = []
        self.media_headers: list[dict[str, str]] = []
        self.jwks_fetches = 0
        self.signing_key = Ed25519PrivateKey.generate()
        self.kid = "fake-fal-1"
        # A second published key the fake never signs with: verification must
        # try every key, not just the first.
        self._other_key = Ed25519PrivateKey.generate()
        self._scripted: deque[Behaviour] = deque()
        self._outbox: deque[FakeRequest] = deque()
        self._lock = threading.RLock()
        # Lies: the longest a hang lasts (it then answers honestly), the
        # mode set by ``lie``, what was told at submit (no request made).
        self.hang_s = 30.0
        # A webhook an honest request's platform does not answer 200 fails
        # the test at once; off (multi-process tests, where a platform process
        # may be down), every answer is only recorded (``Served.webhooks``).
        self.strict_webhooks = True
        self._release = threading.Event()
        self._mode: Lie | None = None
        self._mode_requests: int | None = None
        self._mode_until: float | None = None
        self._submit_told: Counter[str] = Counter()
        self.submit_lies: list[str] = []
        self._timers: list[threading.Timer] = []

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._release.set()
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        super().__exit__(*exc)

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    @property
    def webhook_sink_url(self) -> str:
        return f"{self.url}/webhook-sink"

    def platform_settings(self) -> dict[str, Any]:
        """The settings (``Settings`` fields) of a platform whose provider is this fake."""
        return {
            "provider": "fal",
            "fal_key": self.key,
            "fal_base_url": self.url,
            "fal_jwks_url": self.jwks_url,
        }

    # -- driving it from a test --------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        """The behaviours of the next submitted requests, in order."""
        with self._lock:
            self._scripted.extend(behaviours)

    def complete(self, request_id: str) -> None:
        """Finish a request now (as a webhook-driven test needs) and deliver its webhook."""
        with self._lock:
            self._complete(self.requests[request_id])
        self._flush_webhooks()

    def lie(self, lie: Lie, *, requests: int | None = None, seconds: float | None = None) -> None:
        """From now on, tell ``lie`` to the requests submitted without a lie of
        their own in the prompt: the next ``requests`` submissions, or those
        of the next ``seconds``, or (neither) until ``honest``."""
        with self._lock:
            self._mode = lie
            self._mode_requests = requests
            self._mode_until = None if seconds is None else time.monotonic() + seconds

    def honest(self) -> None:
        """Tell no more lies: the mode ends, hangs answer now, requests lying
        now (by mode or by their prompt) are answered honestly from now on."""
        with self._lock:
            self._mode = None
            self._release.set()
            self._release = threading.Event()
            for request in self.requests.values():
                request.healed = True

    def record(self) -> dict[str, Served]:
        """What the fake did for each request it accepted, by request id."""
        with self._lock:
            return {rid: request.served() for rid, request in self.requests.items()}

    def rotate_key(self) -> None:
        """Sign with a new key from now on and publish only that one."""
        with self._lock:
            self.signing_key = Ed25519PrivateKey.generate()
            self.kid = f"fake-fal-{secrets.token_hex(4)}"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_jwk(self._other_key, "fake-fal-other"), _jwk(self.signing_key, self.kid)]}

    def signed_headers(
        self,
        request_id: str,
        body: bytes,
        *,
        timestamp: int | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> dict[str, str]:
        """fal's webhook headers for ``body``, signed with ``key`` (the fake's by default)."""
        stamp = str(int(self.clock.now().timestamp()) if timestamp is None else timestamp)
        message = "\n".join(
            (request_id, FAKE_USER_ID, stamp, hashlib.sha256(body).hexdigest())
        ).encode()
        signature = (key or self.signing_key).sign(message)
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": FAKE_USER_ID,
            "X-Fal-Webhook-Timestamp": stamp,
            "X-Fal-Webhook-Signature": signature.hex(),
        }

    # -- the protocol -------------------------------------------------------

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        return headers.get("authorization") == f"Key {self.key}"

    def submit(self, endpoint: str, query: str, raw: bytes) -> Answer:
        with self._lock:
            lie = self._lie_for(raw)
            digest = hashlib.sha256(raw).hexdigest()
            telling: tuple[Lie, Stage, threading.Event] | None = None
            if lie is not None and lie.tells_at("submit", self._submit_told[digest]):
                self._submit_told[digest] += 1
                self.submit_lies.append(f"submit:{lie.kind}")
                telling = (lie, "submit", self._release)
        if telling is not None:
            answer = self._tell(*telling)
            if answer is not None:
                return answer
        with self._lock:
            behaviour = self._scripted.popleft() if self._scripted else self.default
            if behaviour.submit_error is not None:
                return _error(behaviour.submit_error)
            try:
                arguments = json.loads(raw)
            except ValueError:
                return _error(FalError.validation(("body", "is not valid JSON")))
            if not isinstance(arguments, dict):
                return _error(FalError.validation(("body", "must be an object")))
            webhook = parse_qs(query).get("fal_webhook", [None])[0]
            request = FakeRequest(
                request_id=str(uuid.uuid4()),
                endpoint=endpoint,
                app=_app_of(endpoint),
                input=arguments,
                webhook_url=webhook,
                behaviour=behaviour,
                lie=lie,
            )
            self.requests[request.request_id] = request
            if lie is not None and lie.kind == "late":
                request.late_until = time.monotonic() + lie.late_s
                timer = threading.Timer(lie.late_s, self._arrive_late, args=(request.request_id,))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
            base = f"{self.url}/{request.app}/requests/{request.request_id}"
            return (
                200,
                {
                    "status": "IN_QUEUE",
                    "request_id": request.request_id,
                    "response_url": base,
                    "status_url": f"{base}/status",
                    "cancel_url": f"{base}/cancel",
                    "queue_position": behaviour.queue_position,
                },
                {},
            )

    def status(self, request: FakeRequest) -> Answer:
        behaviour = request.behaviour
        if behaviour.status_error is not None:
            return _error(behaviour.status_error)
        base = f"{self.url}/{request.app}/requests/{request.request_id}"
        request.polls += 1
        done_polls = behaviour.queued_polls + behaviour.running_polls
        lie = request.lying()
        if lie is not None and lie.kind == "late" and time.monotonic() < request.late_until:
            if not request.completed:
                return 202, {"status": "IN_PROGRESS", "response_url": base, "logs": []}, {}
        elif not behaviour.stuck_in_queue and request.polls > done_polls:
            self._complete(request)
        if request.completed:
            return 200, {"status": "COMPLETED", "response_url": base, "logs": [], "metrics": {}}, {}
        if behaviour.stuck_in_queue or request.polls <= behaviour.queued_polls:
            return (
                202,
                {
                    "status": "IN_QUEUE",
                    "queue_position": behaviour.queue_position,
                    "response_url": base,
                },
                {},
            )
        return 202, {"status": "IN_PROGRESS", "response_url": base, "logs": []}, {}

    def result(self, request: FakeRequest) -> Answer:
        if request.cancelled:
            return (
                499,
                {
                    "detail": "The request was cancelled by the client",
                    "error_type": "client_cancelled",
                },
                {"X-Fal-Error-Type": "client_cancelled"},
            )
        if not request.completed:
            return 400, {"detail": "Request is still in progress"}, {}
        if request.behaviour.result_error is not None:
            return _error(request.behaviour.result_error)
        return 200, request.result, {}

    def cancel(self, request: FakeRequest) -> Answer:
        lie = request.lying()
        if lie is not None and lie.kind == "late" and not request.completed:
            request.told_log.append("cancel:ignored")
            return 202, {"status": "CANCELLATION_REQUESTED"}, {}
        if request.completed and not request.cancelled:
            return 400, {"status": "ALREADY_COMPLETED"}, {}
        request.cancelled = True
        request.completed = True
        return 202, {"status": "CANCELLATION_REQUESTED"}, {}

    def _complete(self, request: FakeRequest) -> None:
        if request.completed:
            return
        request.completed = True
        if request.behaviour.result_error is None:
            request.result = self._make_result(request)
        if request.webhook_url is not None:
            # Sent once the lock is released: the sink is served by this
            # same server, from another thread that needs the lock.
            self._outbox.append(request)

    def _flush_webhooks(self) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                request = self._outbox.popleft()
            self._deliver(request)

    def _make_result(self, request: FakeRequest) -> dict[str, Any]:
        arguments = request.input
        prompt = str(arguments.get("prompt", ""))
        seed = int(arguments.get("seed", 7))
        base = f"{self.url}/media/{request.request_id}"
        lie = request.lying()
        partial = lie is not None and lie.kind == "partial"
        if _is_video(request.endpoint) and partial and lie is not None and lie.deliver < 1:
            request.told_log.append("result:partial")  # fewer than the one video asked: none
            return {"videos": [], "seed": seed}
        if _is_video(request.endpoint):
            ratio = str(arguments.get("aspect_ratio", "16:9"))
            width, height = _VIDEO_SIDES.get(ratio, (128, 72))
            video = render.render_video(prompt, seed, width, height, 1.0, fps=8)
            request.media[0] = ("video/mp4", video)
            return {
                "video": {
                    "url": f"{base}/0.mp4",
                    "content_type": "video/mp4",
                    "file_name": "output.mp4",
                    "file_size": len(video),
                },
                "seed": seed,
            }
        size = arguments.get("image_size", arguments.get("aspect_ratio", "1:1"))
        width, height = _IMAGE_SIDES.get(str(size), (64, 64))
        images = []
        count = int(arguments.get("num_images", 1))
        lie = request.lying()
        if lie is not None and lie.kind == "partial":
            count = min(count, lie.deliver)
            request.told_log.append("result:partial")
        for index in range(count):
            png = render.render_image(prompt, seed + index, width, height)
            request.media[index] = ("image/png", png)
            images.append(
                {
                    "url": f"{base}/{index}.png",
                    "width": width,
                    "height": height,
                    "content_type": "image/png",
                    "file_name": f"{index}.png",
                    "file_size": len(png),
                }
            )
        result: dict[str, Any] = {"images": images, "seed": seed, "prompt": prompt}
        if request.behaviour.nsfw:
            result["has_nsfw_concepts"] = list(request.behaviour.nsfw)
        return result

    def _deliver(self, request: FakeRequest) -> None:
        error = request.behaviour.result_error
        payload: dict[str, Any] = {
            "request_id": request.request_id,
            "gateway_request_id": request.request_id,
        }
        if error is None:
            payload.update(status="OK", payload=request.result)
        else:
            payload.update(
                status="ERROR", error=f"Invalid status code: {error.status}", payload=error.body
            )
        body = json.dumps(payload).encode()
        with self._lock:
            telling = self._telling(request, "webhook")
        if telling is not None:  # signed all the same: fal sent it
            wrong = {"request_id": request.request_id, **_WRONG_SHAPE["webhook"]}
            body = _NOT_JSON if telling[0].shape == "invalid" else json.dumps(wrong).encode()
        assert request.webhook_url is not None
        for _ in range(request.behaviour.webhook_deliveries):
            headers = self.signed_headers(request.request_id, body)
            headers["Content-Type"] = "application/json"
            try:
                response = httpx.post(
                    request.webhook_url, content=body, headers=headers, timeout=WAIT_S
                )
            except httpx.HTTPError:
                if self.strict_webhooks and request.lie is None:
                    raise
                with self._lock:
                    request.webhook_answers.append(0)
                continue
            with self._lock:
                request.webhook_answers.append(response.status_code)
            if self.strict_webhooks and request.lie is None:
                assert response.status_code == 200, response.text

    # -- routing ------------------------------------------------------------

    def respond(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        try:
            return self._route(method, target, headers, body)
        finally:
            self._flush_webhooks()

    def _route(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        split = urlsplit(target)
        path = split.path
        if method == "GET" and path == "/.well-known/jwks.json":
            with self._lock:
                self.jwks_fetches += 1
                return 200, self.jwks(), {}
        if method == "POST" and path == "/webhook-sink":
            with self._lock:
                self.deliveries.append(Delivery(dict(headers), body))
            return 200, {"ok": True}, {}
        media = _MEDIA_PATH.match(path)
        if method == "GET" and media:
            return self._media(media["id"], int(media["index"]), headers)
        if not self._authorized(headers):
            return 401, {"detail": "Invalid API key"}, {}
        if method == "POST":
            return self.submit(path.strip("/"), split.query, body)
        found = _REQUEST_PATH.match(path)
        if found is None:
            return 404, {"detail": "Not found"}, {}
        stage: Stage | None = None
        if method == "GET":
            stage = "status" if found["action"] == "/status" else None
            stage = "result" if found["action"] is None else stage
        with self._lock:
            request = self.requests.get(found["id"])
            if request is None or request.app != found["app"]:
                if found["action"] == "/cancel":
                    return 404, {"status": "NOT_FOUND"}, {}
                return 404, {"detail": "Request not found"}, {}
            telling = self._telling(request, stage)
        if telling is not None:
            answer = self._tell(*telling)
            if answer is not None:
                return answer
        with self._lock:
            if method == "GET" and found["action"] == "/status":
                return self.status(request)
            if method == "GET" and found["action"] is None:
                return self.result(request)
            if method == "PUT" and found["action"] == "/cancel":
                return self.cancel(request)
        return 405, {"detail": "Method not allowed"}, {}

    def _media(self, request_id: str, index: int, headers: Mapping[str, str]) -> Answer:
        with self._lock:
            self.media_headers.append(dict(headers))
            request = self.requests.get(request_id)
            if request is None or index not in request.media:
                return 404, {"detail": "No such file"}, {}
            refused = request.behaviour.download_error
            if refused is not None and index in (request.behaviour.download_error_for or (index,)):
                return _error(refused)
            content_type, data = request.media[index]
            request.downloads.append(index)
        return 200, data, {"Content-Type": content_type}

    # -- lies ---------------------------------------------------------------

    def _lie_for(self, raw: bytes) -> Lie | None:
        """The lie of a submission: its prompt's, else the mode's (counted)."""
        try:
            arguments = json.loads(raw)
        except ValueError:
            arguments = None
        prompt = arguments.get("prompt") if isinstance(arguments, dict) else None
        own = Lie.in_prompt(prompt) if isinstance(prompt, str) else None
        if own is not None:
            return own
        mode = self._mode
        if mode is None:
            return None
        if self._mode_until is not None and time.monotonic() >= self._mode_until:
            self._mode = None
            return None
        if self._mode_requests is not None:
            if self._mode_requests <= 0:
                self._mode = None
                return None
            self._mode_requests -= 1
        return mode

    def _telling(
        self, request: FakeRequest, stage: Stage | None
    ) -> tuple[Lie, Stage, threading.Event] | None:
        """The lie to tell ``request`` at ``stage`` now, counted (under the lock)."""
        lie = request.lying()
        if stage is None or lie is None or not lie.tells_at(stage, request.told[stage]):
            return None
        request.told[stage] += 1
        request.told_log.append(f"{stage}:{lie.kind}")
        return lie, stage, self._release

    def _tell(self, lie: Lie, stage: Stage, release: threading.Event) -> Answer | None:
        """The lie's answer at ``stage``; None once a hang is over (the
        request is then answered honestly, most likely to nobody)."""
        if lie.kind == "hang":
            release.wait(self.hang_s)
            return None
        if lie.kind == "error":
            return (
                500,
                {"detail": "Internal Server Error", "error_type": "internal_server_error"},
                {},
            )
        if lie.shape == "wrong":
            return 200, _WRONG_SHAPE[stage], {}
        return 200, _NOT_JSON, {"Content-Type": "application/json"}

    def _arrive_late(self, request_id: str) -> None:
        with self._lock:
            request = self.requests.get(request_id)
            if request is None or request.completed:
                return
            self._complete(request)
        try:
            self._flush_webhooks()
        except Exception:  # a webhook to a platform already gone: recorded as 0
            return


def _error(error: FalError) -> Answer:
    headers = {}
    if error.retryable is not None:
        headers["X-Fal-Retryable"] = "true" if error.retryable else "false"
    return error.status, error.body, headers


def _is_video(endpoint: str) -> bool:
    return "video" in endpoint or "veo" in endpoint


def _app_of(endpoint: str) -> str:
    return "/".join(endpoint.split("/")[:2])


def _jwk(key: Ed25519PrivateKey, kid: str) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
    }
