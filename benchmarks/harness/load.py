"""HTTP load: ``wrk`` (1 thread, ``--latency``), or ``benchmarks/http_load.py``
where wrk is missing, keeping a number of connections busy with one request
(a submission unless told otherwise), the users' API keys in turn."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from benchmarks.harness import REPO

HTTP_LOAD = REPO / "benchmarks" / "http_load.py"
# Every prompt is different, as real ones are (and fair use counts a user's
# copies of one prompt): the load generators put a number for PROMPT_SLOT.
PROMPT_SLOT = "#N#"
MODEL = "flux-schnell"
SUBMISSION = {
    "model": MODEL,
    "prompt": f"bench {PROMPT_SLOT}",
    "params": {"sandbox": {"delay_s": 0}},
}


@dataclass(frozen=True)
class Load:
    requests: int  # answered (2xx) within the run
    seconds: float
    p50_ms: float
    p99_ms: float
    # Transport errors and timeouts (10 s): a server that stalls, not one that refuses.
    lost: int = 0
    # Where the server's threads were after a run that answered nothing.
    stuck_in: Counter[str] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def detail(self) -> str:
        """``req/s (p50/p99, lost)``, for a report's list of every run."""
        lost = f", {self.lost} lost" if self.lost else ""
        return f"{self.per_second:.0f} ({self.p50_ms:.1f}/{self.p99_ms:.1f}{lost})"


WRK_SCRIPT = """\
local keys = KEYS
local body = [==[BODY]==]
local turn = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function request()
  turn = turn + 1
  local headers = {}
  headers["Authorization"] = "Bearer " .. keys[turn % #keys + 1]
  if METHOD == "GET" then
    return wrk.format("GET", nil, headers, nil)
  end
  headers["Content-Type"] = "application/json"
  local numbered = body:gsub("SLOT", id .. "-" .. turn)
  return wrk.format(METHOD, nil, headers, numbered)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, '
      .. '"status_errors": %d, "transport_errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class LoadGenerator:
    kind: str  # "wrk" or "httpx"
    workdir: Path
    keys: Sequence[str]
    connections: int
    # What each request is: a submission unless told otherwise.
    method: str = "POST"
    body: str = json.dumps(SUBMISSION)
    expect: int = 201

    @property
    def description(self) -> str:
        if self.kind == "wrk":
            return f"wrk {wrk_version()} (1 thread, {self.connections} connections)"
        return f"benchmarks/http_load.py on httpx {httpx.__version__} ({self.connections} tasks)"

    def reads(self) -> LoadGenerator:
        """The same load of ``GET`` requests, answered 200."""
        return replace(self, method="GET", body="", expect=200)

    def at(self, connections: int) -> LoadGenerator:
        return replace(self, connections=connections)

    def _command(self, url: str, seconds: float) -> list[str]:
        if self.kind == "wrk":
            script = self.workdir / f"load-{self.method.lower()}.lua"
            lua_keys = "{" + ", ".join(f'"{key}"' for key in self.keys) + "}"
            script.write_text(
                WRK_SCRIPT.replace("KEYS", lua_keys)
                .replace("SLOT", PROMPT_SLOT)
                .replace("METHOD", f'"{self.method}"')
                .replace("BODY", self.body)
            )
            return [
                wrk(),
                "-t",
                "1",
                "-c",
                str(self.connections),
                "-d",
                f"{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                str(script),
                url,
            ]
        keys_file = self.workdir / "keys.txt"
        keys_file.write_text("\n".join(self.keys) + "\n")
        return [
            sys.executable,
            str(HTTP_LOAD),
            "--url",
            url,
            "--keys-file",
            str(keys_file),
            "--method",
            self.method,
            "--body",
            self.body,
            "--expect",
            str(self.expect),
            "--slot",
            PROMPT_SLOT,
            "--connections",
            str(self.connections),
            "--seconds",
            str(seconds),
        ]

    def run(self, url: str, seconds: float) -> Load:
        command = self._command(url, seconds)
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        found = re.search(r"^BENCH_RESULT (.+)$", done.stdout, re.MULTILINE)
        if done.returncode or found is None:
            raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stdout}{done.stderr}")
        result = json.loads(found.group(1))
        if self.kind == "wrk":
            # wrk's own latency distribution (--latency), where it printed one.
            result.update(wrk_percentiles(done.stdout))
        refused = int(result["status_errors"])
        if refused:
            # A refusal means the benchmark is set up wrong (a plan limit, a
            # bad key), not that the server is slow: stop rather than report.
            raise RuntimeError(f"{refused} of {result['requests']} requests to {url} refused")
        return Load(
            requests=int(result["requests"]),
            seconds=float(result["seconds"]),
            p50_ms=float(result["p50_us"]) / 1e3,
            p99_ms=float(result["p99_us"]) / 1e3,
            lost=int(result["transport_errors"]),
        )


_WRK_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def wrk_percentiles(output: str) -> dict[str, float]:
    """p50 and p99 (``p50_us``, ``p99_us``) from the "Latency Distribution"
    that ``wrk --latency`` prints (lines such as ``99%   12.34ms``)."""
    found = {}
    section = output.partition("Latency Distribution")[2]
    for percent, value, unit in re.findall(
        r"^\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", section, re.MULTILINE
    ):
        if percent in ("50", "99"):
            found[f"p{percent}_us"] = float(value) * _WRK_UNITS_US[unit]
    return found


def wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk not found")
    return found


def wrk_version() -> str:
    done = subprocess.run([wrk(), "-v"], capture_output=True, text=True, check=False)
    found = re.search(r"wrk (\S+)", done.stdout + done.stderr)
    return found.group(1) if found else "unknown"
