"""The client's webhook verification (``plasmaart.client.webhooks``) against
three signers: the server's (``webhooks/signing.py``), an independent one
written here from the Standard Webhooks specification with ``hmac`` and
``base64`` by hand, and the specification's own published test vector.
Forged, stale, future, unsigned and rotated deliveries are all judged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
from datetime import UTC, datetime, timedelta

import pytest

from plasmaart.client import WebhookVerificationError, verify_webhook, webhooks
from plasmaart.client.webhooks import sign, verify
from plasmaart.webhooks import signing

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STAMP = int(NOW.timestamp())
BODY = b'{"data":{"id":"gen_1","status":"succeeded"},"timestamp":"2026-03-01T12:00:00+00:00","type":"generation.succeeded"}'  # noqa: E501
MESSAGE = "msg_01jabcdefghjkmnpqrstvwxyz"


def by_hand(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The specification, read literally: the key is the base64 after
    ``whsec_``; the content is ``id.timestamp.body``; the signature is
    ``v1,`` and the base64 of the HMAC-SHA256."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    mac = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def delivery(secrets: list[str], *, at: int = STAMP, body: bytes = BODY) -> dict[str, str]:
    return signing.headers(secrets, MESSAGE, at, body)


def test_what_the_server_signs_the_client_verifies() -> None:
    secret = signing.new_secret()
    event = verify(BODY, delivery([secret]), secret, now=NOW)
    assert event == json.loads(BODY)
    assert event["type"] == "generation.succeeded"
    assert verify_webhook is verify


def test_the_server_and_an_independent_implementation_agree() -> None:
    for _ in range(20):
        secret = signing.new_secret()
        stamp = STAMP + len(secret)
        expected = by_hand(secret, MESSAGE, stamp, BODY)
        assert signing.signature(secret, MESSAGE, stamp, BODY) == expected
        assert sign(secret, MESSAGE, stamp, BODY) == expected
        headers = {"webhook-id": MESSAGE, "webhook-timestamp": str(stamp)}
        headers["webhook-signature"] = expected
        assert verify(BODY, headers, secret, now=NOW)["type"] == "generation.succeeded"


def test_the_specifications_published_test_vector() -> None:
    # From the Standard Webhooks reference libraries' tests (standard-webhooks/
    # standard-webhooks, libraries/python/tests/test_webhooks.py, test_sign_function).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    message_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    timestamp = 1614265330
    payload = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signing.signature(secret, message_id, timestamp, payload) == expected
    assert by_hand(secret, message_id, timestamp, payload) == expected
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": expected,
    }
    sent = datetime.fromtimestamp(timestamp, UTC)
    assert verify(payload, headers, secret, now=sent) == {"test": 2432232314}
    # The secret without its prefix is the same key.
    assert verify(payload, headers, secret.removeprefix("whsec_"), now=sent)["test"] == 2432232314
    # The vector's own forged signature (its last character changed).
    headers["webhook-signature"] = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
    with pytest.raises(WebhookVerificationError, match="no valid signature"):
        verify(payload, headers, secret, now=sent)


def test_a_forged_or_tampered_delivery_is_refused() -> None:
    secret = signing.new_secret()
    headers = delivery([secret])
    # The body changed in transit.
    with pytest.raises(WebhookVerificationError, match="no valid signature"):
        verify(BODY.replace(b"succeeded", b"failed", 1), headers, secret, now=NOW)
    # Another id or timestamp than the one signed.
    for name, value in (("webhook-id", "msg_other"), ("webhook-timestamp", str(STAMP + 1))):
        with pytest.raises(WebhookVerificationError, match="no valid signature"):
            verify(BODY, headers | {name: value}, secret, now=NOW)
    # A signature flipped by one bit, a truncated one, an empty one, another scheme.
    mac = bytearray(base64.b64decode(headers["webhook-signature"].removeprefix("v1,")))
    mac[0] ^= 1
    for forged in (
        "v1," + base64.b64encode(bytes(mac)).decode(),
        headers["webhook-signature"][:-4],
        "v1,",
        "v2," + headers["webhook-signature"].removeprefix("v1,"),
        "v1a," + headers["webhook-signature"].removeprefix("v1,"),
    ):
        with pytest.raises(WebhookVerificationError, match="no valid signature"):
            verify(BODY, headers | {"webhook-signature": forged}, secret, now=NOW)


def test_the_wrong_secret_is_refused() -> None:
    secret, other = signing.new_secret(), signing.new_secret()
    with pytest.raises(WebhookVerificationError, match="no valid signature"):
        verify(BODY, delivery([secret]), other, now=NOW)


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (timedelta(0), True),
        (-timedelta(minutes=5), True),
        (timedelta(minutes=5), True),
        (-timedelta(minutes=5, seconds=1), False),
        (timedelta(minutes=5, seconds=1), False),
        (-timedelta(days=1), False),
        (timedelta(hours=1), False),
    ],
)
def test_stale_and_future_timestamps_are_refused(offset: timedelta, accepted: bool) -> None:
    secret = signing.new_secret()
    stamp = int((NOW + offset).timestamp())
    headers = delivery([secret], at=stamp)
    if accepted:
        assert verify(BODY, headers, secret, now=NOW)["type"] == "generation.succeeded"
    else:
        with pytest.raises(WebhookVerificationError, match=r"too old|future"):
            verify(BODY, headers, secret, now=NOW)


def test_the_tolerance_is_the_callers() -> None:
    secret = signing.new_secret()
    headers = delivery([secret], at=STAMP - 600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(BODY, headers, secret, now=NOW)
    event = verify(BODY, headers, secret, now=NOW, tolerance=timedelta(minutes=11))
    assert event["type"] == "generation.succeeded"


def test_now_defaults_to_the_current_time() -> None:
    secret = signing.new_secret()
    fresh = int(datetime.now(UTC).timestamp())
    assert verify(BODY, delivery([secret], at=fresh), secret)["type"] == "generation.succeeded"
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(BODY, delivery([secret], at=STAMP - 86_400 * 365), secret)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_or_empty_header_is_refused(header: str) -> None:
    secret = signing.new_secret()
    headers = delivery([secret])
    without = {k: v for k, v in headers.items() if k != header}
    with pytest.raises(WebhookVerificationError, match=f"missing header {header}"):
        verify(BODY, without, secret, now=NOW)
    with pytest.raises(WebhookVerificationError, match=f"missing header {header}"):
        verify(BODY, headers | {header: ""}, secret, now=NOW)


@pytest.mark.parametrize("stamp", ["soon", "1.5e9", "", "99999999999999999999"])
def test_a_timestamp_that_is_not_a_unix_time_is_refused(stamp: str) -> None:
    secret = signing.new_secret()
    headers = delivery([secret]) | {"webhook-timestamp": stamp}
    with pytest.raises(WebhookVerificationError):
        verify(BODY, headers, secret, now=NOW)


def test_header_names_are_matched_in_any_case() -> None:
    secret = signing.new_secret()
    headers = {name.title(): value for name, value in delivery([secret]).items()}
    assert "Webhook-Signature" in headers
    assert verify(BODY, headers, secret, now=NOW)["type"] == "generation.succeeded"


def test_during_a_rotation_either_secret_verifies() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    headers = delivery([new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert headers["webhook-signature"].split(" ") == [
        by_hand(new, MESSAGE, STAMP, BODY),
        by_hand(old, MESSAGE, STAMP, BODY),
    ]
    for known in (old, new, [old], [new, old], [signing.new_secret(), old]):
        assert verify(BODY, headers, known, now=NOW)["type"] == "generation.succeeded"
    # After the overlap only the new one signs; a receiver still on the old one refuses.
    with pytest.raises(WebhookVerificationError):
        verify(BODY, delivery([new]), old, now=NOW)
    # Signatures of other versions or unknown keys beside a good one are ignored.
    mixed = " ".join(
        [
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            by_hand(old, MESSAGE, STAMP, BODY),
        ]
    )
    event = verify(BODY, headers | {"webhook-signature": mixed}, [new, old], now=NOW)
    assert event["type"] == "generation.succeeded"


def test_a_signed_body_that_is_not_a_json_object_is_refused() -> None:
    secret = signing.new_secret()
    for body in (b"[1, 2]", b"not json", b"\xff\xfe"):
        headers = delivery([secret], body=body)
        with pytest.raises(WebhookVerificationError, match=r"not (a )?JSON"):
            verify(body, headers, secret, now=NOW)


def test_a_body_given_as_text_is_verified_as_its_utf8_bytes() -> None:
    secret = signing.new_secret()
    body = '{"type":"credits.low","data":{"note":"café"}}'
    headers = delivery([secret], body=body.encode())
    assert verify(body, headers, secret, now=NOW)["data"] == {"note": "café"}


def test_a_secret_that_is_not_base64_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not a whsec_ secret"):
        verify(BODY, delivery([signing.new_secret()]), "whsec_not base64!", now=NOW)
    with pytest.raises(ValueError, match="no secret"):
        verify(BODY, delivery([signing.new_secret()]), [], now=NOW)


def test_the_comparison_is_constant_time() -> None:
    # The verifier compares with hmac.compare_digest, never ==.
    source = inspect.getsource(webhooks.verify)
    assert "compare_digest" in source
    assert "candidate == known" not in source
