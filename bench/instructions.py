"""Server instructions per job, counted by valgrind's callgrind: a figure that does not drift.

CPU seconds on this shared 2-core machine drift by 10-30% from run to run (bench/queue.py says
so); an instruction count of the same work repeats to about 0.3%. This runs a `jobhive-server`
under callgrind and drives it in lockstep rounds: each round, --batch clients submit an echo job
with `?wait=`, then one worker poll takes the whole batch and one results post finishes it. Those
are the requests of bench/queue.py's batch-8 scenario, without the timing that decides its batch
sizes. With --handover the worker polls as `workers.cli noop` does (its poll waits on the
server and rides on its results post, so the submit that queues a job hands it over): the
requests of the 1-client scenario with --batch 1. Counters are zeroed after warm-up rounds and
read after the measured ones.

It measures the SQLite store, or with --store redis the Redis store (on a fresh redis-server
with an append-only file). It counts the server's own instructions in user space (Python,
aiohttp, uvloop, SQLite), not the kernel's work for its system calls, so it ranks versions of
the server's code, while bench/queue.py gives the CPU seconds and jobs/s. Needs valgrind
(`apt-get install valgrind`); a run takes about 30 s per version.

    python bench/instructions.py                        # this version
    python bench/instructions.py --against d8342ed      # and an earlier one, side by side
    python bench/instructions.py --store redis --against HEAD
    python bench/instructions.py --store redis --handover --batch 1 --rounds 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

from bench.common import source_tree, wait_for_line  # noqa: E402
from bench.queue import redis_server  # noqa: E402
from jobhive.aio import run_loop  # noqa: E402

WORKER_KEY = "echo-worker-key"
JSON = {"Content-Type": "application/json"}


async def submit(http: aiohttp.ClientSession, url: str) -> None:
    """One echo job, held open by ?wait= until it is done."""
    async with http.post(f"{url}/api/v1/endpoints/echo/jobs?wait=60", headers=JSON,
                         data=b'{"inputs": {"text": "benchmark"}}') as reply:
        await reply.read()
        if reply.status != 200:
            raise RuntimeError(f"job not finished: {reply.status}")


async def rounds(url: str, count: int, batch: int, settle_s: float) -> None:
    """`count` lockstep rounds of `batch` jobs: submits (held open by ?wait=), a pause for them
    to be queued, one poll that must take them all, one results post that finishes them."""
    worker = {**JSON, "Authorization": f"Bearer {WORKER_KEY}"}
    poll = {"worker_id": "bench", "job_types": ["echo"], "max_batch": batch, "wait_s": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        for _ in range(count):
            submits = [asyncio.ensure_future(submit(http, url)) for _ in range(batch)]
            await asyncio.sleep(settle_s)  # (under callgrind the server is ~50x slower)
            async with http.post(f"{url}/api/v1/worker/jobs", json=poll, headers=worker) as r:
                jobs = (await r.json())["jobs"] if r.status == 200 else []
            if len(jobs) != batch:
                raise RuntimeError(f"the poll took {len(jobs)} jobs, not {batch}: raise "
                                   "--settle-s (the submits were not all queued yet)")
            reports = [{"job_id": j["job_id"], "lease_id": j["lease_id"],
                        "outputs": {"text": "benchmark", "worker_id": "bench"}} for j in jobs]
            async with http.post(f"{url}/api/v1/worker/results", json={"reports": reports},
                                 headers=worker) as r:
                await r.read()
            await asyncio.gather(*submits)


async def handover_rounds(url: str, count: int, batch: int, settle_s: float) -> None:
    """`count` rounds of `batch` jobs as `workers.cli noop` runs them: the worker's poll waits
    on the server and rides on its results post, so each job is handed over by the submit
    that queues it (bench/queue.py's scenarios); the worker stops polling after the last."""
    worker = {**JSON, "Authorization": f"Bearer {WORKER_KEY}"}
    poll = {"worker_id": "bench", "job_types": ["echo"], "max_batch": batch, "wait_s": 20}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def work() -> None:
            done, jobs = 0, []
            while done < count * batch:
                if not jobs:
                    async with http.post(f"{url}/api/v1/worker/jobs", json=poll,
                                         headers=worker) as r:
                        if r.status not in (200, 204):
                            raise RuntimeError(f"poll refused: {r.status} {await r.text()}")
                        jobs = (await r.json())["jobs"] if r.status == 200 else []
                    continue
                done += len(jobs)
                reports = [{"job_id": j["job_id"], "lease_id": j["lease_id"],
                            "outputs": {"text": "benchmark", "worker_id": "bench"}}
                           for j in jobs]
                sent = {"reports": reports, **({"poll": poll} if done < count * batch else {})}
                async with http.post(f"{url}/api/v1/worker/results", json=sent,
                                     headers=worker) as r:
                    if r.status != 200:
                        raise RuntimeError(f"results refused: {r.status} {await r.text()}")
                    jobs = (await r.json()).get("jobs", [])

        working = asyncio.ensure_future(work())
        await asyncio.sleep(settle_s)  # (its poll waiting on the server)
        for _ in range(count):
            await asyncio.gather(*(submit(http, url) for _ in range(batch)))
        await working


def measure(tree: Path, count: int, batch: int, settle_s: float, store: str,
            handover: bool = False) -> int:
    """The instructions the server of `tree` executes over `count` rounds (of
    `handover_rounds` when handover, else of `rounds`)."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        out = Path(tmp) / "callgrind.out"
        config = Path(tmp) / "server.toml"  # (a Redis store's files: not in the tree)
        config.write_text(f'[SERVER]\nfiles_dir = "{tmp}/files"\n')
        store_url = f"sqlite:{tmp}/bench.sqlite3"
        if store == "redis":
            _, store_url = stack.enter_context(redis_server(Path(tmp)))
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, "-m", "api_server.cli", "-p", "0", "--store", store_url,
             "--config", str(config), "-c", str(REPO / "endpoints"), "--log-level",
             "WARNING"],
            cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0"},
        )
        try:
            url = wait_for_line(server, r"listening on (http://\S+)").group(1)
            drive = handover_rounds if handover else rounds
            run_loop(drive(url, 3, batch, settle_s))  # warm: imports, connections, caches
            pid = str(server.pid)
            subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
            run_loop(drive(url, count, batch, settle_s))
            subprocess.run(["callgrind_control", "--dump=measured", pid], check=True,
                           capture_output=True)
            return _dumped_total(out)
        finally:
            server.terminate()
            try:  # (the count is in: a server slow to stop under callgrind is killed)
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _dumped_total(out: Path) -> int:
    """The instruction total of the dump callgrind_control asked for (callgrind.out.N)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for dump in out.parent.glob(out.name + ".*"):
            text = dump.read_text(errors="replace")
            if found := re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M):
                return int(found.group(1))
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds")
    parser.add_argument("--batch", type=int, default=8, help="jobs per round")
    parser.add_argument("--settle-s", type=float, default=0.6,
                        help="pause between a round's submits and its poll")
    parser.add_argument("--against", metavar="REV", help="also measure this git revision")
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--handover", action="store_true",
                        help="the worker's poll waits and rides on its results post, as "
                        "workers.cli noop's does (try with --batch 1)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    jobs = args.rounds * args.batch
    flow = ("submits with ?wait=, handed over to the worker's waiting poll, results with "
            "the next poll" if args.handover else
            "submits with ?wait=, one poll, one results post")
    print(f"{'version':>9} {'instructions per job':>21}   ({args.rounds} rounds of {args.batch}"
          f" jobs: {flow})", flush=True)
    with source_tree(args.against) as previous:
        versions = [(REPO, "this")] + ([(previous, args.against[:9])] if args.against else [])
        for tree, version in versions:
            total = measure(tree, args.rounds, args.batch, args.settle_s, args.store,
                            args.handover)
            print(f"{version:>9} {total / jobs:>21,.0f}", flush=True)


if __name__ == "__main__":
    main()
