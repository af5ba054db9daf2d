"""Queue benchmark: N concurrent clients against the echo endpoint served by M noop workers.

Starts real `jobhive-server`s (a fresh SQLite store, or several servers on a fresh Redis) and
M `jobhive-worker noop` processes on loopback, then runs each scenario for a fixed time: every
client submits a job with `?wait=` (one request per job) and submits the next as soon as the
result is back. Prints jobs/s, the p50/p99 submit-to-result latency, and the CPU each kind of
process spent per job (servers, workers, clients, and Redis).

    python bench/queue.py                      # the standard scenarios
    python bench/queue.py --clients 8 --workers 2 --batch 8 --duration-s 10
    python bench/queue.py --against d8342ed    # each scenario on that version too, side by side
    python bench/queue.py --store redis --servers 3            # three servers on one Redis
    python bench/queue.py --stores sqlite:1,redis:1,redis:2,redis:3   # side by side
    python bench/queue.py --clients 64 --workers 2 --batch 8 --scrape-every-s 1   # metrics' cost

With several servers, clients and workers are spread over them round robin (each worker is
given every server's URL, its own first). Redis runs as Debian's `redis-server` with an
append-only file fsynced every second (the store's default durability).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

# The repository instead of bench/ (this file's name would shadow the standard library's queue).
REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

from bench.common import (  # noqa: E402
    percentile,
    source_tree,
    start,
    start_server,
    stop,
    wait_for_line,
)
from jobhive.aio import run_loop  # noqa: E402

WORKER_KEY = "echo-worker-key"
REDIS_STORE = "api_server/store/redis_store.py"  # (versions before it: SQLite only)


@dataclass(frozen=True)
class Scenario:
    clients: int
    workers: int
    batch: int


@dataclass(frozen=True)
class Deployment:
    store: str  # "sqlite" or "redis"
    servers: int

    @property
    def name(self) -> str:
        return f"{self.store}:{self.servers}"


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


async def scraper(http: aiohttp.ClientSession, base_urls: list[str], every_s: float,
                  stop_at: float) -> None:
    """GET /metrics of every server every `every_s`, as Prometheus would, until stop_at."""
    while time.perf_counter() < stop_at:
        for base in base_urls:
            async with http.get(f"{base}/metrics") as reply:
                await reply.read()
        await asyncio.sleep(every_s)


async def measure(base_urls: list[str], clients: int, duration_s: float,
                  scrape_every_s: float = 0.0) -> list[float]:
    urls = [f"{base}/api/v1/endpoints/echo/jobs?wait=30" for base in base_urls]
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        warm_until = time.perf_counter() + 1.0  # connections opened, caches warm
        await asyncio.gather(*(client(http, urls[i % len(urls)], warm_until, [])
                               for i in range(clients)))
        stop_at = time.perf_counter() + duration_s
        scraping = [scraper(http, base_urls, scrape_every_s, stop_at)] if scrape_every_s else []
        await asyncio.gather(*(client(http, urls[i % len(urls)], stop_at, latencies)
                               for i in range(clients)), *scraping)
    return latencies


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Debian's redis-server with an append-only file (fsynced every second) in `folder`, on a
    loopback port read back from binding port 0 (the bound socket is held until Redis
    listens on the same port, so no other process can take it in between)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for_line(redis, r"Ready to accept connections")
    try:
        yield redis, f"redis://127.0.0.1:{port}/0"
    finally:
        stop(redis)


def run(scenario: Scenario, deployment: Deployment, duration_s: float, log_level: str,
        tree: Path, version: str, scrape_every_s: float = 0.0) -> None:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if deployment.store == "redis":
            redis, store = stack.enter_context(redis_server(Path(tmp)))
            extra = [redis]
        else:
            store, extra = f"sqlite:{Path(tmp) / 'bench.sqlite3'}", []
        files_dir = Path(tmp) / "files" if deployment.store == "redis" else None  # (shared)
        servers = [start_server(store, log_level, tree, files_dir=files_dir)
                   for _ in range(deployment.servers)]
        urls = [url for _, url in servers]
        workers = [
            start(["-m", "workers.cli", "noop", "--max-batch", str(scenario.batch),
                   "--server", ",".join(urls[i % len(urls):] + urls[:i % len(urls)]),
                   "--key", WORKER_KEY, "--log-level", "WARNING", "--worker-id", f"bench-{i}"],
                  tree)
            for i in range(scenario.workers)
        ]
        processes = [*(server for server, _ in servers), *workers, *extra]
        try:
            cpu_before = [cpu_s(p.pid) for p in processes] + [own_cpu_s()]
            started = time.perf_counter()
            latencies = run_loop(measure(urls, scenario.clients, duration_s, scrape_every_s))
            elapsed_s = time.perf_counter() - started - 1.0
            cpu_after = [cpu_s(p.pid) for p in processes] + [own_cpu_s()]
        finally:
            stop(*workers, *(server for server, _ in servers))
    used = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
    jobs = len(latencies) * (duration_s + 1.0) / duration_s  # warm-up jobs used CPU too
    n = deployment.servers
    cpu = [sum(used[:n]), sum(used[n:n + scenario.workers]), used[-1],
           sum(used[n + scenario.workers:-1])]  # servers, workers, clients, redis
    per_job_us = [1e6 * u / jobs for u in cpu]
    p50, p99 = (percentile(latencies, q) * 1000 for q in (0.5, 0.99))
    redis_us = f"{per_job_us[3]:>6.0f}" if deployment.store == "redis" else f"{'-':>6}"
    print(f"{version:>9} {deployment.name:>8} {scenario.clients:>7} {scenario.workers:>7} "
          f"{scenario.batch:>5} {len(latencies) / elapsed_s:>9.0f} {p50:>8.2f} {p99:>8.2f} "
          f"{len(latencies):>8}   {per_job_us[0]:>6.0f} {per_job_us[1]:>6.0f} "
          f"{per_job_us[2]:>6.0f} {redis_us}", flush=True)


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
    parser.add_argument("--store", choices=("sqlite", "redis"),
                        help="one deployment: this store (with --servers)")
    parser.add_argument("--servers", type=int, default=1,
                        help="with --store redis: how many servers share it")
    parser.add_argument("--stores", default="sqlite:1",
                        help="deployments to run side by side, STORE:SERVERS separated by "
                        "commas (sqlite:1, redis:N); default sqlite:1")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each scenario (each round runs the versions and stores "
                        "in the other order: the machine drifts between runs)")
    parser.add_argument("--scrape-every-s", type=float, default=0.0, metavar="S",
                        help="also run each deployment with /metrics scraped every S seconds "
                        "(its rows' version ends in +m)")
    args = parser.parse_args()
    scenarios = (
        [Scenario(args.clients, args.workers, args.batch)] if args.clients else STANDARD
    )
    deployments = []
    if args.servers != 1 and not args.store:
        parser.error("--servers goes with --store (or give --stores STORE:SERVERS,...)")
    stores = f"{args.store}:{args.servers}" if args.store else args.stores
    for item in stores.split(","):
        store, _, servers = item.partition(":")
        if store not in ("sqlite", "redis") or not servers.isdigit() or int(servers) < 1:
            parser.error(f"--stores: {item!r} is not STORE:SERVERS (sqlite:1, redis:3)")
        if store == "sqlite" and int(servers) != 1:
            parser.error("--stores: a SQLite store serves one server (sqlite:1)")
        deployments.append(Deployment(store, int(servers)))
    print(f"{'version':>9} {'store':>8} {'clients':>7} {'workers':>7} {'batch':>5} {'jobs/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'jobs':>8}   CPU µs per job: servers workers clients "
          "redis", flush=True)
    with source_tree(args.against) as previous:
        versions = [(REPO, "this")] + ([(previous, args.against[:9])] if args.against else [])
        for scenario in scenarios:
            for round_ in range(args.rounds):  # (each round in the other order: drift)
                # (an earlier version may have no Redis store; with fewer clients than
                # servers, some servers would get none: not a deployment of N servers)
                scrapes = [0.0] + ([args.scrape_every_s] if args.scrape_every_s else [])
                runs = [(d, v, s) for d in deployments for v in versions for s in scrapes
                        if (d.store == "sqlite" or (v[0] / REDIS_STORE).exists())
                        and d.servers <= scenario.clients]
                for deployment, (tree, version), scrape_s in runs[::-1] if round_ % 2 else runs:
                    with contextlib.suppress(KeyboardInterrupt):
                        run(scenario, deployment, args.duration_s, args.log_level, tree,
                            version + ("+m" if scrape_s else ""), scrape_s)


if __name__ == "__main__":
    main()
