"""A closed-loop HTTP load generator on httpx, for ``benchmarks/generations.py``
where ``wrk`` cannot be installed. One Python process makes far fewer requests
per second than wrk: on a small machine it measures itself, not the server.

``--connections`` tasks share one ``httpx.AsyncClient`` with as many keep-alive
connections; each sends ``--method`` to ``--url`` (POST with the JSON body by
default, or GET), with the next Bearer key of ``--keys-file`` (one a line) in
turn, waits for the answer and sends the next, until ``--seconds`` have
passed or ``--max-requests`` were sent. It prints one line,
``BENCH_RESULT {json}``: requests answered in the time, the seconds, latency
p50 and p99 in microseconds, and the failures (transport errors and statuses
other than ``--expect``). ``--slot`` in the body becomes a number unique to
each request (prompts differ, as real ones do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

# Run as a script: the repository goes on the path for `benchmarks.harness`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness.stats import percentile


async def run(args: argparse.Namespace) -> dict[str, float]:
    keys = [line.strip() for line in Path(args.keys_file).read_text().splitlines() if line.strip()]
    body = args.body.encode()
    latencies: list[float] = []
    failures = {"status": 0, "transport": 0}
    sent = 0
    limits = httpx.Limits(
        max_connections=args.connections, max_keepalive_connections=args.connections
    )
    timeout = httpx.Timeout(args.timeout)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        started = time.perf_counter()
        deadline = started + args.seconds

        async def loop(index: int) -> None:
            nonlocal sent
            turn = index
            while time.perf_counter() < deadline and sent < args.max_requests:
                sent += 1
                headers = {"Authorization": f"Bearer {keys[turn % len(keys)]}"}
                if args.method != "GET":
                    headers["Content-Type"] = "application/json"
                turn += args.connections
                began = time.perf_counter()
                numbered = body.replace(args.slot.encode(), f"{index}-{turn}".encode())
                try:
                    response = await client.request(
                        args.method,
                        args.url,
                        content=None if args.method == "GET" else numbered,
                        headers=headers,
                    )
                except httpx.HTTPError:
                    failures["transport"] += 1
                    continue
                if response.status_code != args.expect:
                    failures["status"] += 1
                    continue
                latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(loop(index) for index in range(args.connections)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "p50_us": 1e6 * percentile(latencies, 0.50),
        "p99_us": 1e6 * percentile(latencies, 0.99),
        "status_errors": failures["status"],
        "transport_errors": failures["transport"],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--keys-file", required=True)
    parser.add_argument("--method", default="POST", choices=("GET", "POST"))
    parser.add_argument("--body", default="")
    parser.add_argument(
        "--slot", default="#N#", help="replaced in the body by a number unique to the request"
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--expect", type=int, default=201)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    result = asyncio.run(run(parse_args(argv)))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
