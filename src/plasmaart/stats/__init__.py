"""The operators' numbers: the generation queue and the credits that moved.

Read by ``GET /v1/admin/stats`` and the dashboard's admin page, from the same
tables the worker and the ledger write (no counters of their own to drift);
the queries are in ``stats/repository.py``.
"""

from plasmaart.stats.repository import PlatformStats, platform_stats

__all__ = ["PlatformStats", "platform_stats"]
