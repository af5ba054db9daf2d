"""Queue benchmark: N concurrent clients against the echo endpoint served by M noop workers.

Starts a real `jobhive-server` (fresh SQLite store) and M `jobhive-worker noop` processes on
loopback, then runs each scenario for a fixed time: every client submits a job with `?wait=`
(one request per job) and submits the next as soon as the result is back. Prints jobs/s and the
p50/p99 submit-to-result latency.

    python bench/queue.py                      # the standard scenarios
    python bench/queue.py --clients 8 --workers 2 --batch 8 --duration-s 10
    python bench/queue.py --against d8342ed    # each scenario on that version too, side by side
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

# The repository instead of bench/ (this file's name would shadow the standard library's queue).
REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

from bench.common import percentile, source_tree, start, start_server, stop  # noqa: E402
from jobhive.aio import run_loop  # noqa: E402

WORKER_KEY = "echo-worker-key"


@dataclass(frozen=True)
class Scenario:
    clients: int
    workers: int
    batch: int


STANDARD = [
    Scenario(clients=1, workers=1, batch=1),
    Scenario(clients=32, workers=2, batch=1),
    Scenario(clients=8, workers=2, batch=8),
    Scenario(clients=64, workers=2, batch=8),
]


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def client(http: aiohttp.ClientSession, url: str, stop_at: float, out: list[float]) -> None:
    body = b'{"inputs": {"text": "benchmark"}}'
    headers = {"Content-Type": "application/json"}
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        async with http.post(url, data=body, headers=headers) as reply:
            await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"job not finished: {reply.status} {await reply.text()}")
        out.append(time.perf_counter() - started)


async def measure(base_url: str, clients: int, duration_s: float) -> list[float]:
    url = f"{base_url}/api/v1/endpoints/echo/jobs?wait=30"
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        warm_until = time.perf_counter() + 1.0  # connections opened, caches warm
        await asyncio.gather(*(client(http, url, warm_until, []) for _ in range(clients)))
        stop_at = time.perf_counter() + duration_s
        await asyncio.gather(*(client(http, url, stop_at, latencies) for _ in range(clients)))
    return latencies


def run(scenario: Scenario, duration_s: float, log_level: str, tree: Path, version: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp) / "bench.sqlite3", log_level, tree)
        workers = [
            start(["-m", "workers.cli", "noop", "--server", url, "--key", WORKER_KEY,
                   "--max-batch", str(scenario.batch), "--log-level", "WARNING",
                   "--worker-id", f"bench-{i}"], tree)
            for i in range(scenario.workers)
        ]
        try:
            cpu_before = [cpu_s(p.pid) for p in (server, *workers)] + [own_cpu_s()]
            started = time.perf_counter()
            latencies = run_loop(measure(url, scenario.clients, duration_s))
            elapsed_s = time.perf_counter() - started - 1.0
            cpu_after = [cpu_s(p.pid) for p in (server, *workers)] + [own_cpu_s()]
        finally:
            stop(*workers, server)
    used = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
    jobs = len(latencies) * (duration_s + 1.0) / duration_s  # warm-up jobs used CPU too
    per_job_us = [1e6 * u / jobs for u in (used[0], sum(used[1:-1]), used[-1])]
    p50, p99 = (percentile(latencies, q) * 1000 for q in (0.5, 0.99))
    print(f"{version:>9} {scenario.clients:>7} {scenario.workers:>7} {scenario.batch:>5} "
          f"{len(latencies) / elapsed_s:>9.0f} {p50:>8.2f} {p99:>8.2f} {len(latencies):>8}"
          f"   {per_job_us[0]:>6.0f} {per_job_us[1]:>6.0f} {per_job_us[2]:>6.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, help="concurrent clients (one scenario)")
    parser.add_argument("--workers", type=int, default=2, help="noop worker processes")
    parser.add_argument("--batch", type=int, default=1, help="each worker's --max-batch")
    parser.add_argument("--duration-s", type=float, default=8.0, help="seconds per scenario")
    parser.add_argument("--log-level", default="WARNING",
                        help="the server's log level (INFO logs a line per job state change)")
    parser.add_argument("--against", metavar="REV",
                        help="also run each scenario on this git revision (its server and "
                        "workers), beside this version's run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each scenario (with --against, each round swaps which "
                        "version goes first: the machine drifts between runs)")
    args = parser.parse_args()
    scenarios = (
        [Scenario(args.clients, args.workers, args.batch)] if args.clients else STANDARD
    )
    print(f"{'version':>9} {'clients':>7} {'workers':>7} {'batch':>5} {'jobs/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'jobs':>8}   CPU µs per job: server workers clients",
          flush=True)
    with source_tree(args.against) as previous:
        versions = [(REPO, "this")] + ([(previous, args.against[:9])] if args.against else [])
        for scenario in scenarios:
            for round_ in range(args.rounds):
                for tree, version in versions[::-1] if round_ % 2 else versions:
                    with contextlib.suppress(KeyboardInterrupt):
                        run(scenario, args.duration_s, args.log_level, tree, version)


if __name__ == "__main__":
    main()
