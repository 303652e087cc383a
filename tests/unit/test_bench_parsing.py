"""What the benchmarks read of their tools' output: wrk's latency distribution
(``--latency``) and py-spy's raw collapsed stacks."""

from __future__ import annotations

import pytest
from benchmarks.harness.load import wrk_percentiles
from benchmarks.harness.pyspy import parse_py_spy_raw

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:40123/v1/generations
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    95.12ms  210.33ms   1.73s    95.01%
    Req/Sec    74.50     20.11   110.00     70.00%
  Latency Distribution
     50%  556.00us
     75%   60.10ms
     90%  120.00ms
     99%    1.73s
  149 requests in 2.00s, 98.21KB read
Requests/sec:     74.40
Transfer/sec:     49.05KB
BENCH_RESULT {"requests": 149, "seconds": 2.0, "p50_us": 1, "p99_us": 2}
"""


def test_wrk_percentiles_in_every_unit() -> None:
    assert wrk_percentiles(WRK_OUTPUT) == {"p50_us": 556.0, "p99_us": 1.73e6}


@pytest.mark.parametrize(
    ("line", "microseconds"),
    [("12.5us", 12.5), ("3.20ms", 3200.0), ("2.00s", 2e6), ("1.50m", 90e6)],
)
def test_wrk_units(line: str, microseconds: float) -> None:
    output = f"  Latency Distribution\n     50%   {line}\n     99%   {line}\n"
    assert wrk_percentiles(output) == {"p50_us": microseconds, "p99_us": microseconds}


def test_no_distribution_no_percentiles() -> None:
    # The same lines without wrk's heading are not its distribution.
    assert wrk_percentiles("     50%   3.20ms\n     99%   9.00ms\n") == {}


def test_py_spy_raw_own_and_inclusive() -> None:
    entry = (
        "<module> (benchmarks/generation_servers.py:600);main (benchmarks/generation_servers.py:5"
    )
    raw = (
        f"{entry}90);submit (plasmaart/generation/service.py:120);"
        "do_execute (sqlalchemy/engine/default.py:9) 6\n"
        f"{entry}91);submit (plasmaart/generation/service.py:130);"
        "submit (plasmaart/generation/service.py:140) 2\n"
        "run (threading.py:10);select (selectors.py:4) 2\n"
        "not a stack line\n"
    )
    profile = parse_py_spy_raw(raw, "PlasmaArt", 50.0)
    assert profile.samples == 10
    # Lines within a function are one function; a recursion counts once per sample.
    assert profile.own["do_execute (sqlalchemy/engine/default.py)"] == 6
    assert profile.own["submit (plasmaart/generation/service.py)"] == 2
    assert profile.total["submit (plasmaart/generation/service.py)"] == 8
    # Inclusive: the app's own functions only, not the server's entry points.
    assert profile.top(profile.total) == [("submit (plasmaart/generation/service.py)", 0.8)]
    assert profile.top(profile.own)[0] == ("do_execute (sqlalchemy/engine/default.py)", 0.6)
    assert "| `submit (plasmaart/generation/service.py)` | 80% |" in profile.table()
