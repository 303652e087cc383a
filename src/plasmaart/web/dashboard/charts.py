"""The usage chart: credits consumed per day, stacked by model, as an SVG the
server renders (no chart library, nothing for the browser to compute).

Plain data in, plain data out: the template draws the rectangles this module
places, so the chart is testable without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

# Colour-blind-safe (Okabe-Ito), each at least 3:1 against the white chart.
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#7A5AC4",
    "#8C6D31",
)
WIDTH = 720
HEIGHT = 240
LEFT = 56  # room for the axis labels (large enough to read on a phone)
BOTTOM = 28
TOP = 12
RIGHT = 8


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    label: str  # for the <title> tooltip and screen readers


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class DayLabel:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    ticks: list[Tick]
    days: list[DayLabel]
    legend: list[tuple[str, str]]  # (model, colour)
    total: int
    baseline: float
    left: int

    @property
    def empty(self) -> bool:
        return self.total == 0


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def credits_chart(first_day: date, days: int, credits: dict[tuple[date, str], int]) -> Chart:
    """Bars for ``days`` days from ``first_day``; ``credits`` maps (day, model)
    to the credits consumed that day with that model."""
    models = sorted({model for (_, model), amount in credits.items() if amount > 0})
    colours = {model: PALETTE[i % len(PALETTE)] for i, model in enumerate(models)}
    per_day = [
        sum(credits.get((first_day + timedelta(offset), model), 0) for model in models)
        for offset in range(days)
    ]
    top = _nice_ceiling(max(per_day, default=0) or 1)
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    baseline = float(TOP + plot_height)
    slot = plot_width / max(days, 1)
    bar_width = max(slot * 0.7, 1.0)
    bars: list[Bar] = []
    for offset in range(days):
        day = first_day + timedelta(offset)
        y = baseline
        for model in models:
            amount = credits.get((day, model), 0)
            if amount <= 0:
                continue
            height = plot_height * amount / top
            y -= height
            bars.append(
                Bar(
                    x=round(LEFT + offset * slot + (slot - bar_width) / 2, 2),
                    y=round(y, 2),
                    width=round(bar_width, 2),
                    height=round(height, 2),
                    colour=colours[model],
                    label=f"{day.isoformat()}: {model}, {amount:,} credits",
                )
            )
    # Gridlines at whole numbers of credits: as many as divide the top evenly.
    lines = next(n for n in (4, 5, 2, 1) if top % n == 0)
    ticks = [
        Tick(y=round(baseline - plot_height * step / lines, 2), label=f"{top * step // lines:,}")
        for step in range(lines + 1)
    ]
    # About six date labels whatever the range, so they never overlap.
    every = max(1, round(days / 6))
    labels = [
        DayLabel(
            x=round(LEFT + offset * slot + slot / 2, 2),
            label=(first_day + timedelta(offset)).strftime("%b %d"),
        )
        for offset in range(0, days, every)
    ]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        ticks=ticks,
        days=labels,
        legend=[(model, colours[model]) for model in models],
        total=sum(per_day),
        baseline=baseline,
        left=LEFT,
    )
