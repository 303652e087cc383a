"""Fair use's refusals, with the codes of API.md."""

from __future__ import annotations

from plasmaart.errors import DomainError


class RateLimited(DomainError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, limit: int, retry_after: int, *, what: str = "generation requests") -> None:
        super().__init__(
            f"at most {limit} {what} a minute on your plan; try again in {retry_after} seconds",
            limit=limit,
            retry_after=retry_after,
        )
        self.limit = limit
        self.retry_after = retry_after
