"""The credit ledger: it never loses, mints or double-spends a credit.

Design overview (DESIGN.md §3):

* A **wallet** belongs to one billing owner (a user or a Studio team) and
  keeps two integers: ``available`` and ``held``.
* Credits live in **lots**: grants with a ``source`` (promo, subscription,
  rollover, adjustment, purchase), ``granted``, ``remaining`` and an optional
  ``expires_at``. The sum of a wallet's lots' ``remaining`` is its
  ``available``.
* Spending is two-phase. A **hold** takes credits from lots in **burn order**
  (earliest expiry first, never-expiring last; then promo, subscription,
  rollover, adjustment, purchase; then oldest; then id) and records each lot it
  touched (``hold_lots``). A **capture** charges part or all of it (the
  earliest-expiring part first) and **releases** the rest; a release gives
  every credit back to its lot. A hold resolves exactly once. A credit
  released into a lot that expired (or was clawed back) meanwhile is expired
  (or clawed back) at once, by an explicit entry.
* Every movement is an immutable **journal entry** that moves ``credits``
  from one account to another: the wallet's own ``wallet`` (available) and
  ``holds`` accounts, and the platform's ``issuance``, ``consumed`` and
  ``expired``. ``amount`` is the signed change of ``available`` and
  ``balance_after`` the ``available`` right after it.
* **Renewal** expires the period's monthly credits except
  ``min(unused, rollover_cap)``, which come back from ``expired`` as a
  rollover lot, then grants the new allocation. **Expiry** is swept by the
  worker's clock and also applied lazily before any spend, so an expired credit
  is never spent.
* Every mutation takes an **idempotency key**: a repeat with the same
  arguments returns the first result and writes nothing.
* The database enforces what it can (CHECK constraints in ``db/tables.py``):
  no negative balance, lot, hold or entry; entries agree with their accounts;
  a resolved hold accounts for every credit. ``invariants.check_ledger``
  recomputes everything from the journal and the lots.

Concurrency: every mutation locks the wallet row first (``SELECT … FOR
UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers), then
reads its idempotency key, lots and holds. One lock order, no deadlocks.

Credit controls (docs/credits.md) hook in without costing wallets that have
none: the lock's SELECT also reads the wallet's ``monthly_spend_limit`` and
its **balance watch** (``watch_below``/``watch_above``). ``hold`` asks its
``spend_guard`` under the lock, before anything is written, and an operation
that leaves ``available`` outside the watch calls the ``BalanceWatch`` in its
transaction (an auto top-up starts, an alert fires or re-arms there).

``service.LedgerService`` is the API; ``rules`` holds the pure rules;
``repository`` all SQL; ``tasks`` the clock work.
"""
