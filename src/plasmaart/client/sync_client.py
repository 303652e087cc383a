"""``Client``: the API over a blocking ``httpx.Client``. Each method sends
one of the calls in ``calls``; retries, errors and parsing are shared with
the async client."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from plasmaart.client import calls
from plasmaart.client import models as m
from plasmaart.client.calls import (
    CSRF_COOKIE,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    SESSION_COOKIE,
    Call,
    Instant,
    PageCall,
    Pager,
)
from plasmaart.client.downloads import Destination, open_destination, output_filename
from plasmaart.client.errors import AuthenticationError, PlasmaArtError, TransportError
from plasmaart.client.retries import RetryPolicy
from plasmaart.client.sse import EventParser, Reconnection
from plasmaart.client.waiting import RESYNC, STREAM_HEADERS, GenerationWatch, check_timeout

OnUpdate = Callable[[m.Generation], object]

T = TypeVar("T")


class Client:
    """The PlasmaArt API. ``api_key`` authenticates every request; without
    one, ``signup`` or ``login`` opens a cookie session instead (the CSRF
    token is then sent on writes automatically). Use it as a context
    manager, or call ``close()``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_retry_after: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # A whole policy (``max_backoff`` too) replaces the three numbers.
        self._policy = retry or RetryPolicy(
            max_retries=max_retries, backoff=backoff, max_retry_after=max_retry_after
        )
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url,
            headers=calls.client_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- sending ------------------------------------------------------------

    def _exchange(
        self,
        call: Call[Any],
        *,
        stream: bool = False,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> httpx.Response:
        """A successful response (open, when ``stream``), after the retries."""
        call = call.with_key()
        request = calls.build_request(self._http, call, headers=headers, read_timeout=read_timeout)
        attempt, unanswered = 0, False
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                response = self._http.send(request, stream=stream)
                if response.is_success:
                    return response
                response.read()
                outcome = response
            except httpx.TransportError as error:
                outcome = error
            delay = None
            if call.retry:
                delay = self._policy.next_wait(attempt, outcome, unanswered_before=unanswered)
            if delay is None:
                raise calls.failure(call, outcome)
            unanswered = unanswered or isinstance(outcome, httpx.TransportError)
            self._sleep(delay)
            attempt += 1

    def _send(self, call: Call[T]) -> T:
        return calls.read_answer(call, self._exchange(call))

    def _walk(self, make: PageCall[T], limit: int | None, page_size: int) -> Iterator[T]:
        pager = Pager(make, limit, page_size)  # checks its arguments now, not at first use
        return self._pages(pager)

    def _pages(self, pager: Pager[T]) -> Iterator[T]:
        while (call := pager.next_call()) is not None:
            yield from pager.take(self._send(call))

    # -- operations -----------------------------------------------------------

    def healthz(self) -> m.Health:
        """The process is up (never retried)."""
        return self._send(calls.healthz())

    def readyz(self) -> m.Readiness:
        """The database answers and is migrated; 503 raises ServerError (never retried)."""
        return self._send(calls.readyz())

    # -- catalog ----------------------------------------------------------------

    def models(self) -> list[m.Model]:
        """Every model; ``available`` is for your plan (Free without credentials)."""
        return list(self._walk(calls.models, None, MAX_PAGE_SIZE))

    def model(self, model_id: str) -> m.Model:
        return self._send(calls.model(model_id))

    def plans(self) -> list[m.Plan]:
        return list(self._walk(calls.plans, None, MAX_PAGE_SIZE))

    def credit_packs(self) -> list[m.CreditPack]:
        return list(self._walk(calls.credit_packs, None, MAX_PAGE_SIZE))

    # -- accounts -----------------------------------------------------------------

    def signup(
        self, email: str, password: str, *, idempotency_key: str | None = None
    ) -> m.User | m.VerificationSent:
        """Create an account and keep its session (cookies) for later calls.
        A server that requires address verification answers
        ``VerificationSent`` instead, with no session: open the mailed link
        (``verify_email``), then ``login``."""
        return self._send(calls.signup(email, password, idempotency_key))

    def verify_email(self, token: str, *, idempotency_key: str | None = None) -> m.User:
        """Use a mailed link's token (address verification or change); logs
        this client in when it has no session."""
        return self._send(calls.verify_email(token, idempotency_key))

    def resend_verification(self, *, idempotency_key: str | None = None) -> m.VerificationSent:
        """Mail a new verification link to the account's address."""
        return self._send(calls.resend_verification(idempotency_key))

    def change_email(self, email: str, password: str, *, otp: str | None = None) -> m.Me:
        """Ask to change the address (it takes effect once the link mailed
        to ``email`` is used): the current password, and a two-factor code
        when two-factor is on."""
        return self._send(calls.change_email(email, password, otp))

    def login(self, email: str, password: str, *, idempotency_key: str | None = None) -> m.User:
        """Open a session for later calls (an ``api_key``, when set, still wins)."""
        return self._send(calls.login(email, password, idempotency_key))

    def logout(self, *, idempotency_key: str | None = None) -> None:
        """End the session; already ended is fine."""
        with contextlib.suppress(AuthenticationError):
            self._send(calls.logout(idempotency_key))
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            self._http.cookies.delete(name)

    def me(self) -> m.Me:
        return self._send(calls.me())

    def update_settings(self, *, remove_watermark: bool | None = None) -> m.Me:
        return self._send(calls.update_settings(remove_watermark))

    def create_api_key(self, name: str, *, idempotency_key: str | None = None) -> m.NewApiKey:
        """A new key; its secret is in ``key``, shown only this once."""
        return self._send(calls.create_api_key(name, idempotency_key))

    def api_keys(self) -> list[m.ApiKey]:
        return list(self._send(calls.api_keys()).items)

    def revoke_api_key(self, key_id: str) -> m.ApiKey:
        return self._send(calls.revoke_api_key(key_id))

    # -- credits ----------------------------------------------------------------------

    def balance(self) -> m.Balance:
        return self._send(calls.balance())

    def ledger(
        self,
        *,
        limit: int | None = None,
        kind: str | None = None,
        since: Instant | None = None,
        until: Instant | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[m.LedgerEntry]:
        """Journal entries, newest first (by time when ``kind`` is given), at
        most ``limit`` of them; pages are fetched as the iteration needs them."""
        return self._walk(calls.ledger(kind, since, until), limit, page_size)

    def usage(
        self,
        *,
        since: Instant | None = None,
        until: Instant | None = None,
        group_by: str = "model",
    ) -> list[m.UsageRow]:
        """Generations, outputs and credits in ``[since, until)`` by model or day."""
        return self._send(calls.usage(since, until, group_by))

    def usage_csv(self, *, since: Instant | None = None, until: Instant | None = None) -> str:
        """The generation history as CSV text."""
        return self._exchange(calls.usage_csv(since, until)).text

    def download_usage_csv(
        self,
        destination: Destination,
        *,
        since: Instant | None = None,
        until: Instant | None = None,
    ) -> int:
        """Stream the CSV into a path or a binary file; the bytes written."""
        return self._save(calls.usage_csv(since, until), destination, "the CSV")

    def _save(self, call: Call[None], destination: Destination, what: str) -> int:
        """Stream ``call``'s answer into ``destination``; the bytes written."""
        response = self._exchange(call, stream=True)
        written = 0
        try:
            with open_destination(destination) as sink:
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as error:
            raise TransportError(f"the download of {what} broke off: {error!r}") from error
        finally:
            response.close()
        return written

    # -- generations ------------------------------------------------------------------------

    def create_generation(
        self,
        model: str,
        prompt: str,
        *,
        num_outputs: int = 1,
        image_url: str | None = None,
        upload_id: str | None = None,
        team_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> m.Generation:
        """Submit a generation: its credits are held and it is queued (see
        ``generate`` to also wait for it). Image-to-video models need
        ``upload_id`` (see ``upload``) or an https ``image_url``. ``webhook_url``
        receives its terminal event, signed with the account's webhook secret."""
        body = calls.generation_body(
            model, prompt, num_outputs, image_url, upload_id, team_id, params, webhook_url
        )
        return self._send(calls.create_generation(body, idempotency_key))

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        num_outputs: int = 1,
        image_url: str | None = None,
        upload_id: str | None = None,
        team_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        wait: bool = True,
        timeout: float = 600.0,
        on_update: OnUpdate | None = None,
    ) -> m.Generation:
        """Submit a generation and, with ``wait``, wait until it succeeds,
        fails or is canceled (check ``status``: a failed one is returned, not
        raised). ``on_update(generation)`` hears of each state seen. Raises
        ``GenerationTimeout`` (with the last state) when it is not finished
        ``timeout`` seconds after this call began; it carries on regardless."""
        started = time.monotonic()
        check_timeout(timeout)
        generation = self.create_generation(
            model,
            prompt,
            num_outputs=num_outputs,
            image_url=image_url,
            upload_id=upload_id,
            team_id=team_id,
            params=params,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )
        if not wait:
            if on_update is not None:
                on_update(generation)
            return generation
        return self._wait(GenerationWatch(generation, timeout, started=started), on_update)

    def wait_for_generation(
        self,
        generation: m.Generation | str,
        *,
        timeout: float = 600.0,
        on_update: OnUpdate | None = None,
    ) -> m.Generation:
        """Wait until a generation (or the one with this id) is finished, as
        ``generate`` does."""
        started = time.monotonic()
        if isinstance(generation, str):
            generation = self.generation(generation)
        return self._wait(GenerationWatch(generation, timeout, started=started), on_update)

    def generation(self, generation_id: str) -> m.Generation:
        """Yours, or your team's (another's id: ``NotFoundError``)."""
        return self._send(calls.generation(generation_id))

    def generations(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        team_id: str | None = None,
        limit: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[m.Generation]:
        """Your generations (with ``team_id``: that team's), newest first."""
        return self._walk(calls.generations(status, model, team_id), limit, page_size)

    def cancel_generation(
        self, generation_id: str, *, idempotency_key: str | None = None
    ) -> m.Generation:
        """A queued generation is canceled (and refunded) at once; a running
        one comes back still ``running`` and ends ``canceled``, or
        ``succeeded`` if the model had already delivered."""
        return self._send(calls.cancel_generation(generation_id, idempotency_key))

    def quote(
        self,
        model: str,
        prompt: str,
        *,
        num_outputs: int = 1,
        image_url: str | None = None,
        upload_id: str | None = None,
        team_id: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> m.Quote:
        """What the submission would cost and whether it would be accepted;
        nothing is held."""
        body = calls.generation_body(
            model, prompt, num_outputs, image_url, upload_id, team_id, params
        )
        return self._send(calls.quote(body, None))

    def upload(
        self,
        path_or_bytes: str | os.PathLike[str] | bytes,
        content_type: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> m.Upload:
        """Upload an input image (PNG, JPEG or WebP, at most 10 MB and 4096 px
        a side); its ``id`` is the ``upload_id`` of image-to-video models."""
        if isinstance(path_or_bytes, bytes):
            content, name = path_or_bytes, "upload"
        else:
            path = Path(path_or_bytes)
            content, name = path.read_bytes(), path.name
        return self._send(calls.upload(content, name, content_type, idempotency_key))

    def download_output(self, output: m.Output | str, path_or_file: Destination) -> int:
        """Stream an output (or the output with this id) into a path (which
        gets the whole file or nothing) or a binary file; the bytes written."""
        return self._save(calls.output_content(output), path_or_file, "the output")

    def download_outputs(
        self, generation: m.Generation, folder: str | os.PathLike[str] = "."
    ) -> list[Path]:
        """Every output of ``generation`` into ``folder`` (made if missing),
        as ``<generation id>-<n>.<ext>`` with n from 1; the paths written."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for number, output in enumerate(generation.outputs, start=1):
            path = target / output_filename(generation.id, number, output.content_type)
            self.download_output(output, path)
            written.append(path)
        return written

    def _wait(self, watch: GenerationWatch, on_update: OnUpdate | None) -> m.Generation:
        self._observe(watch, watch.generation, on_update)
        if not watch.done:
            self._follow_events(watch, on_update)
        while not watch.done:
            if watch.expired():
                raise watch.timed_out()
            self._sleep(watch.poll_wait())
            self._observe(watch, self.generation(watch.id), on_update)
        return watch.generation

    def _observe(
        self, watch: GenerationWatch, generation: m.Generation, on_update: OnUpdate | None
    ) -> None:
        if watch.see(generation) and on_update is not None:
            on_update(generation)

    def _follow_events(self, watch: GenerationWatch, on_update: OnUpdate | None) -> None:
        """Follow the event stream until the generation is finished, or
        return early for polling: the stream failed, ended or said resync,
        or too little time is left to open one."""
        while not watch.done:
            read_timeout = watch.stream_read_timeout()
            if read_timeout is None:
                return
            try:
                response = self._exchange(
                    calls.events(), stream=True, headers=STREAM_HEADERS, read_timeout=read_timeout
                )
            except PlasmaArtError:
                return
            try:
                if not self._follow_connection(watch, on_update, response, read_timeout):
                    return
            finally:
                response.close()

    def _follow_connection(
        self,
        watch: GenerationWatch,
        on_update: OnUpdate | None,
        response: httpx.Response,
        read_timeout: float,
    ) -> bool:
        """Read one stream connection; True to go on with a fresh one (this
        one could read past the deadline), False to stop following."""
        # Subscribed once the answer began: what happened before is in the generation.
        self._observe(watch, self.generation(watch.id), on_update)
        if watch.done:
            return False
        parser = EventParser()
        try:
            for line in response.iter_lines():
                event = parser.feed(line)
                if event is not None and event.type == RESYNC:
                    return False
                if event is not None and watch.concerns(event):
                    self._observe(watch, self.generation(watch.id), on_update)
                    if watch.done:
                        return False
                if watch.outlives_deadline(read_timeout):
                    return True
        except httpx.TransportError:
            return False
        return False

    # -- billing ----------------------------------------------------------------------------

    def subscription(self) -> m.Subscription:
        """Your subscription (``status`` ``none`` without one; ``grace_ends_at``
        while past due)."""
        return self._send(calls.subscription())

    def subscribe(
        self, plan: str, *, idempotency_key: str | None = None
    ) -> m.Subscription | m.Checkout:
        """Subscribe to a paid plan. Sandbox billing charges the card on file
        and answers the active subscription; Stripe answers a ``Checkout``
        to pay at (the subscription starts once Stripe confirms it)."""
        return self._send(calls.subscribe(plan, idempotency_key))

    def change_plan(self, plan: str, *, prorate_at: Instant | None = None) -> m.Subscription:
        """Upgrade now (prorated), or downgrade at the period end
        (``pending_plan``). Your current plan withdraws a scheduled downgrade
        or cancellation (resumes the subscription). ``prorate_at``: the
        ``prorated_at`` of a ``preview_subscription`` to be charged exactly
        what it showed."""
        return self._send(calls.change_plan(plan, prorate_at))

    def preview_subscription(
        self, plan: str, *, idempotency_key: str | None = None
    ) -> m.SubscriptionPreview:
        """What subscribing or changing to ``plan`` would charge and grant
        now, and the next renewal; nothing is charged."""
        return self._send(calls.preview_subscription(plan, idempotency_key))

    def cancel_subscription(self) -> m.Subscription:
        """Cancel at the period end (``cancel_at_period_end``), then Free;
        ``change_plan`` to the current plan resumes it before then."""
        return self._send(calls.cancel_subscription())

    def pay_subscription(self, *, idempotency_key: str | None = None) -> m.Subscription:
        """Pay the failed renewal of a past-due subscription."""
        return self._send(calls.pay_subscription(idempotency_key))

    def buy_credits(
        self, pack: str, *, idempotency_key: str | None = None
    ) -> m.CreditPurchase | m.Checkout:
        """Buy a credit pack (``credit_packs()``), on any plan. Sandbox: paid
        and added at once; Stripe: a ``Checkout``. One purchase per
        ``idempotency_key``, however often the request is sent."""
        return self._send(calls.buy_credits(pack, idempotency_key))

    def payments(
        self, *, limit: int | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[m.Payment]:
        """What you paid, newest first, each with its receipt's number and page."""
        return self._walk(calls.payments, limit, page_size)

    def spend_limit(self, *, team_id: str | None = None) -> m.SpendLimit:
        """Your wallet's monthly spend limit (with ``team_id``: the team's,
        for its owner) and what it spent this month."""
        return self._send(calls.spend_limit(team_id))

    def set_spend_limit(
        self, monthly_credits: int | None, *, team_id: str | None = None
    ) -> m.SpendLimit:
        """Set the wallet's monthly spend limit (None removes it); past it,
        submissions raise ``ApiError`` 402 ``spend_limit_reached``."""
        return self._send(calls.set_spend_limit(monthly_credits, team_id))

    def auto_topup(self, *, team_id: str | None = None) -> m.AutoTopup:
        """The wallet's auto top-up, what it spent this month and its last run."""
        return self._send(calls.auto_topup(team_id))

    def set_auto_topup(
        self,
        *,
        enabled: bool,
        threshold: int,
        pack: str,
        monthly_cap_cents: int,
        team_id: str | None = None,
    ) -> m.AutoTopup:
        """Buy ``pack`` whenever the available balance drops below
        ``threshold``, at most ``monthly_cap_cents`` a month. Enabling needs
        a saved card (Stripe; else ``InvalidInputError`` ``payment_method_required``)."""
        return self._send(
            calls.set_auto_topup(enabled, threshold, pack, monthly_cap_cents, team_id)
        )

    # -- teams ----------------------------------------------------------------------------

    def create_team(self, name: str, *, idempotency_key: str | None = None) -> m.Team:
        """A team sharing your wallet (plans with team seats only)."""
        return self._send(calls.create_team(name, idempotency_key))

    def team(self, team_id: str) -> m.Team:
        return self._send(calls.team(team_id))

    def invite(
        self, team_id: str, email: str, *, idempotency_key: str | None = None
    ) -> m.NewInvitation:
        """Invite an address; the ``token`` to accept with is shown only this once."""
        return self._send(calls.invite(team_id, email, idempotency_key))

    def invitations(self, team_id: str) -> list[m.Invitation]:
        return list(self._send(calls.invitations(team_id)).items)

    def revoke_invitation(self, team_id: str, invitation_id: str) -> None:
        self._send(calls.revoke_invitation(team_id, invitation_id))

    def resend_invitation(
        self, team_id: str, invitation_id: str, *, idempotency_key: str | None = None
    ) -> m.NewInvitation:
        """Mail a pending invitation again, with a new token (the earlier link
        stops working) and 7 more days."""
        return self._send(calls.resend_invitation(team_id, invitation_id, idempotency_key))

    def invitation(self, token: str) -> m.InvitationPreview:
        """The invitation a token opens, whatever its status (no account needed)."""
        return self._send(calls.invitation(token))

    def decline_invitation(
        self, token: str, *, idempotency_key: str | None = None
    ) -> m.InvitationPreview:
        """Decline an invitation (no account needed); its owner is told."""
        return self._send(calls.decline_invitation(token, idempotency_key))

    def accept_invitation(self, token: str, *, idempotency_key: str | None = None) -> m.Team:
        return self._send(calls.accept_invitation(token, idempotency_key))

    def members(
        self, team_id: str, *, limit: int | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[m.TeamMember]:
        """Members in the order they joined, the owner first."""
        return self._walk(calls.members(team_id), limit, page_size)

    def remove_member(self, team_id: str, user_id: str) -> None:
        """The owner removes a member, or a member leaves (their own id)."""
        self._send(calls.remove_member(team_id, user_id))

    def set_member_cap(
        self, team_id: str, user_id: str, monthly_credit_cap: int | None
    ) -> m.TeamMember:
        """Credits the member may spend per month (None: no cap)."""
        return self._send(calls.set_member_cap(team_id, user_id, monthly_credit_cap))

    # -- notifications ----------------------------------------------------------------------

    def notifications(
        self,
        *,
        unread: bool = False,
        limit: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[m.Notification]:
        """Your notifications, newest first."""
        return self._walk(calls.notifications(unread), limit, page_size)

    def mark_notification_read(
        self, notification_id: str, *, idempotency_key: str | None = None
    ) -> m.Notification:
        return self._send(calls.mark_notification_read(notification_id, idempotency_key))

    # -- admin ------------------------------------------------------------------------------

    def admin_users(
        self,
        q: str | None = None,
        *,
        status: str | None = None,
        limit: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[m.AdminUser]:
        """Users, newest first, matching ``q`` in the e-mail or id (admins only)."""
        return self._walk(calls.admin_users(q, status), limit, page_size)

    def admin_audit(
        self,
        *,
        actor: str | None = None,
        subject: str | None = None,
        action: str | None = None,
        since: Instant | None = None,
        until: Instant | None = None,
        limit: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[m.AuditEntry]:
        """The audit log, newest first (admins only): entries by ``actor``,
        about ``subject``, of ``action``, at or after ``since`` and before
        ``until`` (each optional)."""
        return self._walk(calls.admin_audit(actor, subject, action, since, until), limit, page_size)

    def suspend_user(
        self, user_id: str, reason: str, *, idempotency_key: str | None = None
    ) -> m.AdminUser:
        return self._send(calls.suspend_user(user_id, reason, idempotency_key))

    def reinstate_user(self, user_id: str, *, idempotency_key: str | None = None) -> m.AdminUser:
        return self._send(calls.reinstate_user(user_id, idempotency_key))

    def adjust_credits(
        self,
        user_id: str,
        amount: int,
        reason: str,
        *,
        expires_at: Instant | None = None,
        idempotency_key: str | None = None,
    ) -> m.CreditAdjustment:
        """Grant (``amount`` > 0) or take back (< 0, never below zero)."""
        return self._send(
            calls.adjust_credits(user_id, amount, reason, expires_at, idempotency_key)
        )

    def advance_clock(self, days: int, *, idempotency_key: str | None = None) -> m.ClockAdvance:
        """Move the sandbox test clock ``days`` forward for every process and
        run what fell due (admins, sandbox billing only; else ``NotFoundError``)."""
        return self._send(calls.advance_clock(days, idempotency_key))

    def set_sandbox_card(
        self,
        user_id: str,
        *,
        declines: bool,
        requires_action: bool | None = None,
        idempotency_key: str | None = None,
    ) -> m.SandboxCard:
        """Make a user's sandbox card decline every charge, or succeed again;
        ``requires_action``: its off-session charges (auto top-ups) ask to
        confirm (admins, sandbox billing only)."""
        return self._send(
            calls.set_sandbox_card(user_id, declines, requires_action, idempotency_key)
        )

    # -- events -------------------------------------------------------------------------------

    def events(
        self,
        *,
        last_event_id: str | None = None,
        max_reconnects: int = 5,
        read_timeout: float = 60.0,
    ) -> Generator[m.Event, None, None]:
        """Your live events, as they come. A dropped connection is resumed
        with ``Last-Event-ID`` (the server then sends ``resync``: fetch the
        state again), up to ``max_reconnects`` times in a row. The server
        sends a heartbeat every 15 s, so ``read_timeout`` only trips on a
        dead connection. Close the iterator (or leave its loop) to stop."""
        return self._events(Reconnection(self._policy, max_reconnects, last_event_id), read_timeout)

    def _events(
        self, reconnection: Reconnection, read_timeout: float
    ) -> Generator[m.Event, None, None]:
        while True:
            response = self._exchange(
                calls.events(),
                stream=True,
                headers=reconnection.headers(),
                read_timeout=read_timeout,
            )
            dropped: httpx.TransportError | None = None
            try:
                for line in response.iter_lines():
                    event = reconnection.feed(line)
                    if event is not None:
                        yield event
            except httpx.TransportError as error:
                dropped = error
            finally:
                response.close()
            self._sleep(reconnection.after_drop(dropped))
