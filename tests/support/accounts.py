"""Making users for tests: through the services, with an API key to call as them."""

from __future__ import annotations

from dataclasses import dataclass

from plasmaart.platform import Platform

PASSWORD = "a long test password"


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # a fixture value, not a test class for pytest to collect

    id: str
    email: str
    wallet_id: str
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        """Headers that authenticate as this user."""
        return {"Authorization": f"Bearer {self.api_key}"}


def make_user(
    platform: Platform,
    email: str,
    *,
    plan: str | None = None,
    admin: bool = False,
    credits: int = 0,
) -> TestUser:
    """A user (optionally subscribed to ``plan`` through sandbox billing, and
    with ``credits`` granted as a purchase) and an API key of theirs."""
    with platform.db.write() as conn:
        # Verified, as an operator's ``users create`` makes them.
        user = platform.accounts.create_user(
            conn, email, PASSWORD, role="admin" if admin else "user", verified=True
        )
        wallet = platform.ledger.wallet_of(conn, "user", user.id)
        if plan:
            platform.billing.subscriptions.subscribe_paid(
                conn, user_id=user.id, wallet_id=wallet, plan_id=plan, backend="sandbox"
            )
        if credits:
            platform.ledger.grant(
                conn, wallet, credits, source="purchase", idempotency_key=f"test-credits:{user.id}"
            )
        key = platform.credentials.create_api_key(conn, user.id, "tests")
    return TestUser(user.id, user.email, wallet, key.secret)
