"""The words of receipts: the letter that mails the receipt of a
subscription, an upgrade or a credit pack (``billing.receipts.ReceiptIssued``),
the receipt lines the renewal notice carries, and the phrases the receipt
page (``GET /v1/payments/{id}/receipt``) shares with them, so that the mail
and the page describe a purchase alike."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from plasmaart.billing.receipts import Receipt, ReceiptIssued
from plasmaart.outbox import Text


def money(cents: int, currency: str) -> str:
    return f"{cents / 100:,.2f} {currency.upper()}"


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def period(receipt: Receipt) -> str | None:
    """The period a plan's payment paid for: ``2026-01-01 to 2026-02-01``."""
    payment = receipt.payment
    if payment.period_start is None or payment.period_end is None:
        return None
    return f"{_day(payment.period_start)} to {_day(payment.period_end)}"


def purchase(receipt: Receipt) -> str:
    """What was bought, in a line."""
    payment = receipt.payment
    plan = receipt.plan_name or payment.plan_id or "a plan"
    if payment.kind == "pack":
        return f"Credit pack: {payment.credits:,} credits"
    if payment.kind == "subscription":
        return f"{plan} plan, monthly subscription"
    if payment.kind == "renewal":
        return f"{plan} plan, monthly renewal"
    return f"Upgrade to {plan}, prorated to the end of the period"


def paid_through(backend: str) -> str:
    """How it was paid."""
    if backend == "stripe":
        return "Card, through Stripe"
    if backend == "sandbox":
        return "Sandbox (a test payment: no money moved)"
    return backend


def receipt_lines(receipt: Receipt) -> str:
    """The receipt's facts, a line each, then its links (a paragraph each)."""
    payment = receipt.payment
    lines = [
        f"Receipt number: {receipt.number}",
        f"Date: {receipt.paid_at:%Y-%m-%d %H:%M} UTC",
        f"For: {purchase(receipt)}",
    ]
    covered = period(receipt)
    if covered is not None:
        lines.append(f"Period: {covered}")
    lines += [
        f"Amount paid: {money(payment.amount_cents, payment.currency)}",
        f"Credits granted: {payment.credits:,}",
        f"Paid with: {paid_through(payment.backend)}",
    ]
    paragraphs = ["\n".join(lines), f"Your receipt, to view or print:\n{receipt.url}"]
    if receipt.invoice_url:
        paragraphs.append(f"Stripe's invoice for this payment:\n{receipt.invoice_url}")
    return "\n\n".join(paragraphs)


def receipt_issued(fact: ReceiptIssued) -> Text:
    receipt = fact.receipt
    return Text(
        f"Your PlasmaArt receipt {receipt.number}",
        "Thank you for your payment. Here is your receipt.\n\n" + receipt_lines(receipt),
    )


TEXTS: dict[type[Any], Callable[[Any], Text]] = {ReceiptIssued: receipt_issued}
