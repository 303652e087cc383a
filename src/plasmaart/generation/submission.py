"""A submission as the API makes it: one read transaction, then one write
transaction as short as its writes (docs/generations.md, "The transaction of
a submission").

The read step (``GenerationService.prepare``) finds a job already submitted
under the idempotency key, validates the request, and reads the catalog and
plan in force, the upload, the team and the member's cap, and the queue. The
write step is one function of a connection, ``_write``, handed to
``Database.run_write``: it holds the credits (a guarded update in the
ledger), inserts the job only while the wallet's queue has room (one guarded
INSERT), and hands the job to fair use, which counts it after the commit. It never
commits and leaves every effect outside the database to ``after_commit``, so
a writer may run it in a transaction shared with other requests' writes.

A cancel as the API makes it is here too: the cancel and fair use's look at
it, in one write transaction. Fair use sits above generation; what this
module needs of it is the ``FairUseHooks`` protocol (``FairUseService``
has both methods).
"""

from __future__ import annotations

from functools import partial
from typing import Protocol

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from plasmaart.accounts.service import User
from plasmaart.db.engine import Database
from plasmaart.generation.service import (
    Generation,
    GenerationRequest,
    GenerationService,
    Quote,
    Submission,
)


class FairUseHooks(Protocol):
    """What fair use does after a submission and after a cancel, in the
    caller's transaction: nothing read or written in ``conn``; whatever it
    counts or records happens once it commits."""

    def after_submit(
        self,
        conn: Connection,
        user: User,
        generation: Generation,
        request: GenerationRequest | None = None,
    ) -> None: ...

    def after_cancel(self, conn: Connection, user: User, generation: Generation) -> None: ...


class SubmissionService:
    def __init__(self, db: Database, generations: GenerationService, fairuse: FairUseHooks) -> None:
        self.db = db
        self.generations = generations
        self.fairuse = fairuse

    def submit(
        self, user: User, request: GenerationRequest, *, idempotency_key: str | None = None
    ) -> Generation:
        """Hold the credits and queue the job; the job as written (or the one
        already submitted under ``idempotency_key``)."""
        with self.db.read() as conn:
            prepared = self.generations.prepare(
                conn, user, request, idempotency_key=idempotency_key
            )
        if isinstance(prepared, Generation):
            return prepared
        try:
            return self.db.run_write(partial(self._write, user, prepared))
        except IntegrityError:
            # The unique key (user, idempotency key) decides between two
            # retries of one request that both passed the read step: the
            # second one's transaction rolled back (its hold with it), and
            # it answers with the first one's job.
            if idempotency_key is None:
                raise
            with self.db.read() as conn:
                existing = self.generations.by_idempotency_key(conn, user, idempotency_key)
            if existing is None:
                raise
            return existing

    def cancel(self, user: User, generation_id: str) -> Generation:
        """Cancel the job (``GenerationService.cancel``) in one write
        transaction, which fair use sees: a cancel right after the submission
        is churn."""
        with self.db.write() as conn:
            generation = self.generations.cancel(conn, user, generation_id)
            self.fairuse.after_cancel(conn, user, generation)
        return generation

    def quote(self, user: User, request: GenerationRequest) -> Quote:
        """The same read step as a submission, in one read transaction; holds nothing."""
        with self.db.read() as conn:
            return self.generations.quote(conn, user, request)

    def _write(self, user: User, submission: Submission, conn: Connection) -> Generation:
        """The write step: only the statements whose result decides the write."""
        generation = self.generations.write_submission(conn, submission)
        # Fair use: a flood of one request is an abuse signal. It is counted
        # and queued after the commit (nothing is written here); if it
        # suspends the account, within a second, this job is canceled with
        # its other queued ones.
        self.fairuse.after_submit(conn, user, generation, submission.request)
        return generation
