"""TOTP two-factor (RFC 6238, with ``pyotp``) and its recovery codes.

Turning it on takes two steps: ``begin`` makes a secret (shown as a QR code
and an ``otpauth://`` URL), ``enable`` takes a code from the app, turns it on
and returns ten recovery codes, shown once and stored hashed. When it is on,
``check`` is asked for a code at login and before a sensitive change
(password, address, turning it off, deleting the account).

A TOTP code is accepted within one 30-second step either side of now, and
only once: the step of the last code used is kept, and a code of that step or
an earlier one is refused (a conditional UPDATE, so two requests racing with
one code cannot both pass). A recovery code is used once (conditional too).
Wrong codes are counted: after ``FAILURES_PER_USER`` in ``FAILURE_WINDOW``
the account's codes are refused for the rest of the window (``Throttled``),
so six digits cannot be guessed. Checks of one account's codes take its row's
lock first, so requests sent at once are counted one after the other and
cannot all slip under the limit together. Time is wall time (``job_clock``),
never the sandbox billing test clock, which the authenticator app does not
know.

Every change is told to the account's address through the outbox (turned on,
turned off, a recovery code used, new recovery codes), so that an owner who
did not make it hears of it; an operator turning it off is audit-logged.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import pyotp
from sqlalchemy import Connection

from plasmaart.accounts import audit
from plasmaart.accounts import tokens_repository as repo
from plasmaart.accounts.repository import User
from plasmaart.accounts.second_factor_notices import (
    RecoveryCodesRegenerated,
    RecoveryCodeUsed,
    TwoFactorDisabled,
    TwoFactorEnabled,
)
from plasmaart.accounts.tokens import Throttled, retry_after
from plasmaart.clock import Clock
from plasmaart.errors import Conflict, DomainError
from plasmaart.ids import new_id
from plasmaart.outbox import Outbox

ISSUER = "PlasmaArt"
STEP_S = 30
RECOVERY_CODES = 10
FAILURES_PER_USER = 5
FAILURE_WINDOW = timedelta(minutes=15)
# The throttle's action for a wrong code (``auth_throttle``, per user id).
FAILURE_ACTION = "otp_failure"
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


class OtpRequired(DomainError):
    """Two-factor is on and the request carried no code."""

    code = "otp_required"
    status = 401
    title = "Two-factor code required"


class OtpInvalid(DomainError):
    """The code is wrong, expired or used already (the same answer for all)."""

    code = "otp_invalid"
    status = 401
    title = "Wrong two-factor code"


class TwoFactorState(Conflict):
    code = "two_factor_state"
    title = "Two-factor is not in that state"


@dataclass(frozen=True)
class Enrollment:
    secret: str
    otpauth_url: str


@dataclass(frozen=True)
class TwoFactorStatus:
    """What the account's owner may know of it: on or off, the recovery
    codes left, and whether a secret waits to be confirmed."""

    enabled: bool
    recovery_codes_left: int
    pending: bool


def _normalised(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def recovery_hash(user_id: str, code: str) -> str:
    # Per user, so two accounts' equal codes never share a hash.
    return hashlib.sha256(f"{user_id}:{_normalised(code)}".encode()).hexdigest()


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


class SecondFactor:
    def __init__(self, clock: Clock, outbox: Outbox) -> None:
        # Wall time (the platform's job clock), not the billing test clock.
        self.clock = clock
        # Where the notices to the account's address are queued.
        self.outbox = outbox

    def is_on(self, conn: Connection, user: User) -> bool:
        return repo.totp_state(conn, user.id).secret is not None

    def status(self, conn: Connection, user: User) -> TwoFactorStatus:
        state = repo.totp_state(conn, user.id)
        enabled = state.secret is not None
        return TwoFactorStatus(
            enabled=enabled,
            recovery_codes_left=repo.unused_recovery_codes(conn, user.id) if enabled else 0,
            pending=not enabled and state.pending_secret is not None,
        )

    def begin(self, conn: Connection, user: User) -> Enrollment:
        """A new secret to enrol (replacing one not confirmed yet)."""
        if repo.totp_state(conn, user.id).secret is not None:
            raise TwoFactorState("two-factor is on already; turn it off first")
        secret = pyotp.random_base32()
        repo.set_pending_secret(conn, user.id, secret)
        return Enrollment(secret, otpauth_url(secret, user.email))

    def enable(self, conn: Connection, user: User, code: str) -> list[str] | OtpInvalid:
        """Turn two-factor on with a code of the secret being enrolled; the
        recovery codes (shown once). A wrong code is returned (counted; the
        caller commits the count, then raises it); past the limit of wrong
        codes, ``Throttled`` is raised before the code is tried."""
        state = repo.totp_state(conn, user.id, lock=True)
        if state.secret is not None:
            raise TwoFactorState("two-factor is on already")
        if state.pending_secret is None:
            raise TwoFactorState("start with POST /v1/me/2fa to get a secret")
        self._refuse_if_failing(conn, user)
        step = self._matching_step(state.pending_secret, code)
        if step is None:
            return self._failed(conn, user)
        repo.enable_totp(conn, user.id, state.pending_secret, step)
        codes = self._new_recovery_codes(conn, user)
        now = self.clock.now()
        self.outbox.enqueue(
            conn,
            cause_key=f"2fa-on:{user.id}:{step}",
            user_id=user.id,
            fact=TwoFactorEnabled(now, len(codes)),
        )
        return codes

    def disable(
        self, conn: Connection, user: User, code: str | None
    ) -> OtpRequired | OtpInvalid | None:
        """Turn it off, proven with a current code or a recovery code (as
        ``check``); the refusal is returned (a wrong code counted), None once
        it is off."""
        self._require_on(conn, user)
        refusal = self.check(conn, user, code)
        if refusal is None:
            self._turn_off(conn, user, by_operator=False)
        return refusal

    def reset(self, conn: Connection, user: User, *, actor: str, reason: str | None) -> None:
        """Turn it off for an owner who lost both the phone and the recovery
        codes, by an operator who has made sure who they are (``plasmaart
        users disable-2fa``): audit-logged with ``reason``, and told to the
        account's address."""
        self._require_on(conn, user)
        self._turn_off(conn, user, by_operator=True)
        audit.record(
            conn,
            actor=actor,
            action="user.disable_2fa",
            target=user.id,
            reason=reason,
            now=self.clock.now(),
            data={"email": user.email},
        )

    def regenerate_recovery_codes(
        self, conn: Connection, user: User, code: str | None
    ) -> list[str] | OtpRequired | OtpInvalid:
        """New recovery codes, the old ones void, proven with a current code
        or a recovery code (as ``check``); else the refusal, returned."""
        self._require_on(conn, user)
        refusal = self.check(conn, user, code)
        if refusal is not None:
            return refusal
        codes = self._new_recovery_codes(conn, user)
        self.outbox.enqueue(
            conn,
            cause_key=f"2fa-codes:{user.id}:{new_id('evt')}",
            user_id=user.id,
            fact=RecoveryCodesRegenerated(self.clock.now(), len(codes)),
        )
        return codes

    def recovery_codes_left(self, conn: Connection, user: User) -> int:
        return repo.unused_recovery_codes(conn, user.id)

    def check(
        self, conn: Connection, user: User, code: str | None
    ) -> OtpRequired | OtpInvalid | None:
        """None when two-factor is off or ``code`` (a TOTP code or a recovery
        code) is good, and then it is spent. Otherwise the refusal, returned:
        a wrong code is counted in ``conn``, which the caller commits before
        raising it (``Throttled`` is raised at once, before any code is tried).
        A recovery code used is told to the account's address."""
        if repo.totp_state(conn, user.id).secret is None:
            return None  # off: no lock taken
        state = repo.totp_state(conn, user.id, lock=True)
        if state.secret is None:
            return None
        if not code or not code.strip():
            return OtpRequired("enter the code from your authenticator app, or a recovery code")
        self._refuse_if_failing(conn, user)
        candidate = _normalised(code)
        if candidate.isdigit() and len(candidate) == 6:
            step = self._matching_step(state.secret, candidate)
            if step is not None and repo.advance_step(conn, user.id, step):
                return None
        else:
            now = self.clock.now()
            used = repo.use_recovery_code(conn, user.id, recovery_hash(user.id, code), now)
            if used is not None:
                left = repo.unused_recovery_codes(conn, user.id)
                self.outbox.enqueue(
                    conn,
                    cause_key=f"2fa-recovery:{used}",
                    user_id=user.id,
                    fact=RecoveryCodeUsed(now, left),
                )
                return None
        return self._failed(conn, user)

    # -- internals -----------------------------------------------------------

    def _require_on(self, conn: Connection, user: User) -> None:
        if repo.totp_state(conn, user.id).secret is None:
            raise TwoFactorState("two-factor is off")

    def _turn_off(self, conn: Connection, user: User, *, by_operator: bool) -> None:
        repo.disable_totp(conn, user.id)
        self.outbox.enqueue(
            conn,
            cause_key=f"2fa-off:{user.id}:{new_id('evt')}",
            user_id=user.id,
            fact=TwoFactorDisabled(self.clock.now(), by_operator=by_operator),
        )

    def _matching_step(self, secret: str, code: str) -> int | None:
        code = _normalised(code)
        totp = pyotp.TOTP(secret)
        now_step = int(self.clock.now().timestamp()) // STEP_S
        for step in (now_step, now_step - 1, now_step + 1):
            if secrets.compare_digest(totp.generate_otp(step), code):
                return step
        return None

    def _refuse_if_failing(self, conn: Connection, user: User) -> None:
        """``Throttled`` while the account has had ``FAILURES_PER_USER`` wrong
        codes in the window; nothing is written then."""
        now = self.clock.now()
        failures = repo.recent_requests(
            conn, FAILURE_ACTION, user.id, since=now - FAILURE_WINDOW, limit=FAILURES_PER_USER
        )
        wait = retry_after(failures, FAILURES_PER_USER, FAILURE_WINDOW, now)
        if wait is not None:
            raise Throttled("wrong two-factor codes", wait)

    def _failed(self, conn: Connection, user: User) -> OtpInvalid:
        repo.insert_request(conn, FAILURE_ACTION, user.id, self.clock.now())
        return OtpInvalid("the code is wrong, expired or was used already")

    def _new_recovery_codes(self, conn: Connection, user: User) -> list[str]:
        codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
        rows = [(new_id("rcv"), recovery_hash(user.id, code)) for code in codes]
        repo.replace_recovery_codes(conn, user.id, rows, self.clock.now())
        return codes


def otpauth_url(secret: str, email: str) -> str:
    """The ``otpauth://`` URL an authenticator app reads (from a QR code)."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)
