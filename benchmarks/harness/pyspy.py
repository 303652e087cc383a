"""py-spy sampling a live server (``py-spy record --format raw --gil
--nonblocking``): the thread holding the GIL, which bounds a server process,
by function."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness.docs import markdown_table, prose

PY_SPY_RATE = 200  # samples a second
PY_SPY_TOP = 12
PY_SPY_COMMAND = f"py-spy record --format raw --rate {PY_SPY_RATE} --nonblocking --gil --pid PID"


def py_spy_binary() -> str | None:
    """py-spy (the ``bench`` extra) on the PATH or beside this Python."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


@contextmanager
def py_spy_recording(pid: int, out: Path, seconds: float) -> Iterator[None]:
    """``py-spy record --format raw --gil`` of process ``pid`` for ``seconds``
    (without pausing it) while the body runs; the collapsed stacks in ``out``."""
    binary = py_spy_binary()
    if binary is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install -e '.[bench]'")
    command = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--output",
        str(out),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(PY_SPY_RATE),
        "--nonblocking",
        "--gil",
    ]
    spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield
    finally:
        try:
            output, _ = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            output, _ = spy.communicate()
    if spy.returncode or not out.exists():
        raise RuntimeError(f"{shlex.join(command)} failed:\n{output}")


@dataclass
class PySpyProfile:
    """What py-spy saw of one server under load, by function (``name (file)``)."""

    what: str
    rate: float  # the run's requests per second
    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)  # the innermost frame
    total: Counter[str] = field(default_factory=Counter)  # anywhere in the stack

    def top(self, counter: Counter[str], count: int = PY_SPY_TOP) -> list[tuple[str, float]]:
        shares = [(name, n / max(self.samples, 1)) for name, n in counter.most_common()]
        if counter is self.total:
            # The app's own functions (PlasmaArt's, or the bare app's): the
            # frames above them (threads, the event loop) are alike on both.
            shares = [(name, share) for name, share in shares if _own_code(name)]
        return shares[:count]

    def table(self) -> str:
        title = (
            f"{self.what}: {self.samples:,} samples at {PY_SPY_RATE}/s of the thread"
            f" holding the GIL ({self.rate:,.0f} req/s during the recording)"
        )
        own, total = self.top(self.own), self.top(self.total)
        rows = []
        for index in range(max(len(own), len(total))):
            left = own[index] if index < len(own) else ("", 0.0)
            right = total[index] if index < len(total) else ("", 0.0)
            rows.append([_code(left[0]), _share(left), _code(right[0]), _share(right)])
        head = ["own time (innermost frame)", "share", "the app's functions, inclusive", "share"]
        return f"{title}\n\n{markdown_table(head, '<><>', rows)}"


def _own_code(name: str) -> bool:
    """A function of PlasmaArt or of the bare app, not the server's entry point."""
    if name.startswith(("<module> (", "main (")):
        return False
    return "(plasmaart/" in name or "(benchmarks/generation_servers.py)" in name


def _code(name: str) -> str:
    return f"`{name}`" if name else ""


def _share(row: tuple[str, float]) -> str:
    return f"{row[1]:.0%}" if row[0] else ""


def parse_py_spy_raw(text: str, what: str, rate: float) -> PySpyProfile:
    """py-spy's raw format: one collapsed stack a line, outermost frame first,
    ``function (file:line);... count``."""
    profile = PySpyProfile(what, rate)
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [re.sub(r":\d+\)$", ")", frame.strip()) for frame in stack.split(";")]
        profile.samples += samples
        profile.own[frames[-1]] += samples
        for frame in set(frames):
            profile.total[frame] += samples
    return profile


def py_spy_text(profiles: Mapping[str, PySpyProfile], command: str = PY_SPY_COMMAND) -> str:
    """A report's py-spy subsection: how, then one table per server."""
    how = prose(
        f"`{command}` sampled each server process ({PY_SPY_RATE} samples a second,",
        "without pausing it) during one extra run of the same load, after its",
        "warm-up, keeping the thread that held the GIL: one server process runs",
        "its Python on one core at a time, so these samples are what bounds its",
        "requests per second (SQLite's own work and waiting for its write lock",
        "release the GIL and are not in them). A sample counts for its innermost",
        "function (own time) and for every function of the app on its stack",
        "(inclusive). Unlike cProfile, py-spy barely slows the server, so these",
        "shares are those of the real server.",
    )
    return "\n\n".join([how, *(profile.table() for profile in profiles.values())]) + "\n"
