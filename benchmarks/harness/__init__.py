"""What the benchmarks share, one small module a concern; each benchmark in
``benchmarks/`` keeps only its own measurement and report.

* ``session``: one benchmark's run: progress lines, the command line, the
  machine's facts, a temporary folder removed at the end.
* ``cli``: argument types and the options every benchmark has.
* ``stats``: percentiles and medians.
* ``docs``: prose, and rewriting a section and summary rows of
  ``docs/performance.md``.
* ``postgres``: the throwaway PostgreSQL server and its databases.
* ``fixtures``: PlasmaArt set up for a run: settings, a catalog with raised
  bounds, users, a prepared database that each run copies.
* ``ledger``: funded wallets, a hold and its capture.
* ``fakes``: a provider and a storage that cost nothing.
* ``processes``: child processes that report to the benchmark.
* ``servers``: a server in its own process: start, ready, stop, stalls.
* ``load``: the HTTP load generators (``wrk``, ``http_load.py``) and their results.
* ``comparison``: PlasmaArt's server beside the bare app, run after run.
* ``profiles``: cProfile in every thread, shares and tables of a profile.
* ``pyspy``: py-spy sampling a live server.
* ``baselines``: raw ``sqlite3``, ``pgbench`` and PgQueuer.

A benchmark is a script run from the repository root; it puts the
repository on ``sys.path`` and imports these as ``benchmarks.harness.*``.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
