"""The usage chart's geometry: stacked bars by model, whole-number gridlines."""

from __future__ import annotations

from datetime import date

from plasmaart.web.dashboard.charts import credits_chart

DAY = date(2026, 3, 1)


def test_bars_stack_per_day_and_fit_the_plot() -> None:
    chart = credits_chart(DAY, 3, {(DAY, "flux-dev"): 10, (DAY, "wan-pro"): 80})
    assert chart.total == 90
    assert [model for model, _ in chart.legend] == ["flux-dev", "wan-pro"]
    first, second = chart.bars
    # The second model's bar sits on top of the first one's.
    assert abs((first.y) - (second.y + second.height)) < 0.01
    assert chart.ticks[-1].label == "100"  # 90 rounds up to a nice 100
    assert min(bar.y for bar in chart.bars) >= 0
    assert "wan-pro, 80 credits" in second.label


def test_small_totals_get_whole_number_gridlines_and_no_bars_when_empty() -> None:
    small = credits_chart(DAY, 30, {(DAY, "flux-schnell"): 2})
    assert [tick.label for tick in small.ticks] == ["0", "1", "2"]
    empty = credits_chart(DAY, 30, {})
    assert empty.empty
    assert empty.bars == []
