"""How long a job may take, step by step (DESIGN.md §4: every job ends within a bound).

A running job goes through three steps, each with its own deadline:

- **submit**: handing the request to the provider, retries included
  (``SUBMIT_TIMEOUT``);
- **wait**: polling until the provider has a result (``WAIT_TIMEOUTS``, by
  kind of model, from the job's first claim);
- **fetch**: copying the outputs into our storage (``FETCH_TIMEOUTS``, by
  kind, from the moment the result is in).

The job's hard deadline, ``deadline_at``, is set by its first claim: the wait
and the fetch allowances after it. It is stored, so it holds however often the
job is claimed again (a worker that keeps dying): a claim past it ends the job
at once, and no worker renews a lease past it. With the cap on ``attempts``
(``Settings.max_job_attempts``) that bounds every job: it ends within its
deadline plus one lease, succeeded with the outputs that arrived (charged for
those only) or failed, and the rest of its hold is released.

These are real elapsed times, read from the platform's job clock (the system
clock), never from the sandbox billing test clock: advancing billing time by a
month must not time out the jobs running now, nor expire their leases.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

DEFAULT_MAX_ATTEMPTS: Final = 5
SUBMIT_TIMEOUT: Final = timedelta(minutes=2)
WAIT_TIMEOUTS: Final = {
    "text-to-image": timedelta(minutes=5),
    "text-to-video": timedelta(minutes=20),
    "image-to-video": timedelta(minutes=20),
}
FETCH_TIMEOUTS: Final = {
    "text-to-image": timedelta(minutes=2),
    "text-to-video": timedelta(minutes=5),
    "image-to-video": timedelta(minutes=5),
}


def job_timeout(kind: str) -> timedelta:
    """From the first claim to the hard deadline."""
    return WAIT_TIMEOUTS[kind] + FETCH_TIMEOUTS[kind]


def deadline_for(kind: str, first_claimed: datetime) -> datetime:
    return first_claimed + job_timeout(kind)


def wait_deadline(kind: str, deadline: datetime) -> datetime:
    """When waiting for the provider's result ends: what is left after it is
    the fetch step's allowance."""
    return deadline - FETCH_TIMEOUTS[kind]
