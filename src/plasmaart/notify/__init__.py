"""Telling users what happened: live events and in-app notifications.

* ``events``: the event bus. ``publish(user_ids, type, data)`` from an
  ``after_commit`` callback; the ``/v1/events`` stream subscribes per user.
  In-process on SQLite, PostgreSQL LISTEN/NOTIFY across processes otherwise.
  ``BalanceEvents`` turns the ledger's balance changes into
  ``balance.updated`` for the wallet's owner.
* ``notifications``: ``NotificationService`` stores in-app notifications and
  announces each one as a ``notification`` event after commit.
"""
