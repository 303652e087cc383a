"""The fault-injection harness of the chaos tests and of ``make soak``.

Each fault is an object a test starts and stops itself, on loopback only,
bounded in count and time. They share one small interface, so that the bank
test (``tests/chaos/test_bank.py``) can mix any of them into its run:

* ``kind``: what it is, as the bank's report and ``docs/reliability.md``
  name it ("postgres restart", "connections dropped", "disk full", ...);
* ``inject()``: start the fault and return (a fault that lasts, such as a
  stopped server or a full disk, stays until ``heal``);
* ``heal()``: end it, waiting until the dependency answers again; a no-op
  when nothing is injected.

One module per kind of fault lives beside this one.
"""

from __future__ import annotations

from typing import Protocol


class Fault(Protocol):
    @property
    def kind(self) -> str: ...

    def inject(self) -> None: ...

    def heal(self) -> None: ...
