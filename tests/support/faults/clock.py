"""The clock jumps: the wall clock of the platform's processes moved
backwards or forwards, without touching the machine's (shared) clock.

``ClockControl`` is libfaketime (Debian's ``libfaketime``) preloaded into the
child processes it configures (``env()``, merged into their environment):
each process reads the offset from the control's file
(``FAKETIME_TIMESTAMP_FILE``, re-read on every call: ``FAKETIME_NO_CACHE``),
so one write moves the clock of every process started with that
environment at once, as an NTP step moves a machine's. Only the wall clock
moves: ``FAKETIME_DONT_FAKE_MONOTONIC`` leaves the monotonic clock (sleeps,
timeouts, ``time.monotonic``) alone, as a real step of the wall clock does.
libfaketime 0.9.10 then still shifts the absolute deadline of a sleep on the
monotonic clock (``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``, which
is how Python's ``time.sleep`` sleeps) as if it were wall-clock time, and the
kernel refuses it (EINVAL): a small library preloaded before it
(``monotonic_sleep.c``, built with gcc into the control's folder) sends those
sleeps straight to the kernel. The test process itself is not affected (it
reads the real clock).

``ClockJump`` is the fault: ``inject`` jumps the clock by a random bounded
amount (backwards, or forwards, as its generator picks) from real time;
``heal`` puts it back to real time.
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

# Where Debian's libfaketime puts its library.
LIBRARY_PATHS = (
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/faketime/libfaketime.so.1"),
)


SHIM_SOURCE = Path(__file__).with_name("monotonic_sleep.c")
# The clock_nanosleep system call's number, by machine.
SYS_CLOCK_NANOSLEEP = {"x86_64": 230, "aarch64": 115}


def build_sleep_shim(directory: Path) -> Path:
    """``monotonic_sleep.c`` built into ``directory`` (gcc, no headers needed)."""
    machine = platform.machine()
    if machine not in SYS_CLOCK_NANOSLEEP:
        raise RuntimeError(f"no clock_nanosleep system call number known for {machine}")
    built = directory / "monotonic_sleep.so"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-nostdlib",
            "-O2",
            f"-DSYS_CLOCK_NANOSLEEP={SYS_CLOCK_NANOSLEEP[machine]}",
            str(SHIM_SOURCE),
            "-o",
            str(built),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return built


def faketime_library() -> Path:
    for path in LIBRARY_PATHS:
        if path.exists():
            return path
    raise RuntimeError(
        "libfaketime is not installed (apt-get install libfaketime): "
        f"none of {', '.join(map(str, LIBRARY_PATHS))}"
    )


class ClockControl:
    """The offset of the wall clock of the processes started with ``env()``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "faketime"
        self.library = faketime_library()
        self.shim = build_sleep_shim(directory)
        self.offset_s = 0
        self._write(0)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (or nothing) with the variables that put a process under
        this control (libfaketime preloaded before any other preload)."""
        env = dict(base or {})
        preload = env.get("LD_PRELOAD", "")
        env.update(
            LD_PRELOAD=f"{self.shim} {self.library} {preload}".strip(),
            FAKETIME_TIMESTAMP_FILE=str(self.path),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
        )
        # A FAKETIME in the environment would win over the file.
        env.pop("FAKETIME", None)
        return env

    def jump(self, offset_s: int) -> None:
        """The processes' clock reads real time + ``offset_s`` from now on."""
        self._write(offset_s)

    def real_time(self) -> None:
        self._write(0)

    def _write(self, offset_s: int) -> None:
        # Replaced whole (a rename), so no process ever reads half a file.
        staged = self.path.with_suffix(".new")
        staged.write_text(f"{offset_s:+d}\n")
        os.replace(staged, self.path)
        self.offset_s = offset_s


class ClockJump:
    kind = "clock jump"

    def __init__(
        self,
        control: ClockControl,
        rng: random.Random,
        *,
        min_s: int = 60,
        max_s: int = 300,
        backwards_share: float = 0.5,
    ) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("a jump needs 0 < min_s <= max_s")
        self.control = control
        self.rng = rng
        self.min_s = min_s
        self.max_s = max_s
        self.backwards_share = backwards_share
        # Every jump injected, in seconds (negative: backwards).
        self.jumps: list[int] = []

    def inject(self) -> None:
        amount = self.rng.randint(self.min_s, self.max_s)
        offset = -amount if self.rng.random() < self.backwards_share else amount
        self.jumps.append(offset)
        self.control.jump(offset)

    def heal(self) -> None:
        self.control.real_time()
