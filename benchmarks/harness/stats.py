"""The figures a benchmark reports: percentiles, medians, and PlasmaArt beside
its baseline."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``fraction``
    of the values at or below it; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = math.ceil(round(fraction * len(ordered), 9))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def median(items: Iterable[T], value: Callable[[T], float]) -> float:
    """The median of ``value`` over ``items``."""
    return statistics.median(value(item) for item in items)


@dataclass
class Sides:
    """One figure of each run of PlasmaArt and of its baseline, measured
    alternately; their medians and the ratio of the medians."""

    plasmaart: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    @property
    def plasmaart_median(self) -> float:
        return statistics.median(self.plasmaart)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline)

    @property
    def ratio(self) -> float:
        return self.plasmaart_median / self.baseline_median
