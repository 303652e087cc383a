"""Credit packs, on any plan: bought through the configured backend, granted
once paid as their own lot whose ``reference`` is the payment id (what a
refund's clawback takes back), never expiring unless the pack or the operator
gives them a lifetime (``rules.pack_expires_at``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from plasmaart.billing import repository as repo
from plasmaart.billing.backends import Backends, Checkout, Customer, Declined, Redirect
from plasmaart.billing.errors import PaymentFailed
from plasmaart.billing.payments import PaymentService
from plasmaart.billing.repository import Payment
from plasmaart.billing.rules import pack_expires_at
from plasmaart.catalog import CreditPack
from plasmaart.catalog.catalogs import Catalogs
from plasmaart.clock import Clock
from plasmaart.errors import InvalidInput
from plasmaart.ids import new_id
from plasmaart.ledger.service import LedgerService


@dataclass(frozen=True)
class PackPurchase:
    payment_id: str
    pack: str
    credits: int
    balance: int
    lot_id: str | None
    expires_at: datetime | None


class PackService:
    def __init__(
        self,
        clock: Clock,
        catalogs: Catalogs,
        ledger: LedgerService,
        payments: PaymentService,
        backends: Backends,
        *,
        purchased_credits_expire_days: int | None = None,
    ) -> None:
        self.clock = clock
        self.catalogs = catalogs
        self.ledger = ledger
        self.payments = payments
        self.backends = backends
        self.purchased_credits_expire_days = purchased_credits_expire_days

    def buy(
        self, conn: Connection, customer: Customer, pack_id: str, *, idempotency_key: str | None
    ) -> PackPurchase | Checkout:
        """Buy a credit pack through the configured backend. With an
        ``idempotency_key`` (the client's), a repeat returns the first purchase."""
        pack = self._pack(pack_id)
        key = (
            f"pack:{customer.user_id}:{idempotency_key}"
            if idempotency_key
            else f"pack:{new_id('buy')}"
        )
        done = repo.payment_by_key(conn, key)
        if done is not None:
            return self._purchase(conn, done)
        backend = self.backends.default
        outcome = backend.checkout_pack(conn, customer=customer, pack=pack, idempotency_key=key)
        if isinstance(outcome, Redirect):
            return Checkout(outcome.url)
        if isinstance(outcome, Declined):
            raise PaymentFailed(outcome.reason)
        return self.paid(
            conn,
            user_id=customer.user_id,
            wallet_id=customer.wallet_id,
            pack_id=pack.id,
            backend=backend.name,
            idempotency_key=key,
            external_id=outcome.external_id,
            invoice_url=outcome.invoice_url,
        )

    def paid(
        self,
        conn: Connection,
        *,
        user_id: str,
        wallet_id: str,
        pack_id: str,
        backend: str,
        idempotency_key: str,
        external_id: str | None = None,
        invoice_url: str | None = None,
    ) -> PackPurchase:
        """A paid credit pack: its credits added to the balance as their own
        lot (``reference`` = the payment id, for a refund's clawback), never
        expiring unless configured. A repeat of the key returns the first.
        ``invoice_url``: the provider's invoice page (Stripe), for the receipt."""
        done = repo.payment_by_key(conn, idempotency_key)
        if done is not None:
            return self._purchase(conn, done)
        pack = self._pack(pack_id)
        now = self.clock.now()
        expires_at = pack_expires_at(pack, self.purchased_credits_expire_days, now)
        payment_id = new_id("pay")
        granted = self.ledger.grant(
            conn,
            wallet_id,
            pack.credits,
            source="purchase",
            expires_at=expires_at,
            reference=payment_id,
            memo=f"credit pack {pack.id}",
            idempotency_key=f"pack:{payment_id}",
        )
        self.payments.record(
            conn,
            payment_id=payment_id,
            key=idempotency_key,
            user_id=user_id,
            wallet_id=wallet_id,
            subscription_id=None,
            kind="pack",
            plan=None,
            pack=pack,
            amount_cents=pack.price_cents,
            credits=pack.credits,
            lot_id=granted.lot_id,
            period=None,
            backend=backend,
            external_id=external_id,
            hosted_invoice_url=invoice_url,
        )
        return PackPurchase(
            payment_id=payment_id,
            pack=pack.id,
            credits=pack.credits,
            balance=granted.balance_after,
            lot_id=granted.lot_id,
            expires_at=expires_at,
        )

    def _purchase(self, conn: Connection, payment: Payment) -> PackPurchase:
        """A purchase made before, as it stands now."""
        balance = self.ledger.balance(conn, payment.wallet_id)
        lot = next((lot for lot in balance.lots if lot.id == payment.lot_id), None)
        return PackPurchase(
            payment_id=payment.id,
            pack=payment.pack_id or "",
            credits=payment.credits,
            balance=balance.available,
            lot_id=payment.lot_id,
            expires_at=None if lot is None else lot.expires_at,
        )

    def _pack(self, pack_id: str) -> CreditPack:
        # Packs are the catalog file's: announced changes never touch them.
        try:
            return self.catalogs.base.pack(pack_id)
        except KeyError:
            raise InvalidInput(f"unknown credit pack {pack_id!r}", field="pack") from None
