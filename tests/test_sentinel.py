"""Replicated durability on Redis Sentinel: the primary killed under load loses no acknowledged job.

Three Debian `redis-server`s (a primary and two replicas, `min-replicas-to-write 1`) and three
`redis-sentinel`s run on loopback; a `jobhive-server` with durability "replicated" reaches the
primary through the Sentinels. Clients submit with their own job ids (retrying a refused or
failed submit, with the same id, as the Python client does) while a worker runs the jobs; the
primary is SIGKILLed mid-load. Every job a server acknowledged must still be there, and end done.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from conftest import Process, _start, hold_port, start_redis, wait_until
from e2e_http import wait_status

pytestmark = pytest.mark.skipif(shutil.which("redis-sentinel") is None,
                                reason="redis-sentinel is not installed (scripts/setup.sh)")

MASTER = "jobhive"


def start_sentinel(folder: Path, port: int, primary_port: int) -> Process:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "sentinel.conf"
    config.write_text(
        f"bind 127.0.0.1\nport {port}\ndir {folder}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
        f"sentinel parallel-syncs {MASTER} 2\n")
    process = _start(["redis-sentinel", str(config)])
    try:
        process.wait_for_output(r"Sentinel ID is|monitor master", timeout_s=15)
    except AssertionError:
        process.stop()
        raise
    return process


@contextlib.contextmanager
def held_ports(count: int) -> Iterator[list[int]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(hold_port()) for _ in range(count)]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[tuple[list[Process], str]]:
    """A primary, two replicas and three Sentinels; yields the data nodes (primary first)
    and the store URL."""
    started: list[Process] = []
    with held_ports(6) as ports:
        try:
            primary = start_redis(tmp_path / "r0", ports[0], "--min-replicas-to-write", "1",
                                  "--min-replicas-max-lag", "5")
            started.append(primary)
            for i in (1, 2):
                started.append(start_redis(
                    tmp_path / f"r{i}", ports[i], "--replicaof", "127.0.0.1", str(ports[0]),
                    "--min-replicas-to-write", "1", "--min-replicas-max-lag", "5"))
            with redis.Redis(port=ports[0]) as client:
                wait_until(lambda: client.info("replication")["connected_slaves"] == 2)
            for i in (3, 4, 5):
                started.append(start_sentinel(tmp_path / f"s{i}", ports[i], ports[0]))
            hosts = ",".join(f"127.0.0.1:{port}" for port in ports[3:])
            yield started[:3], f"redis+sentinel://{hosts}/{MASTER}/0"
        finally:
            for process in started:
                process.stop()


@pytest.mark.timeout(180)
def test_the_primary_killed_under_load_loses_no_acknowledged_job(
    sentinels, start_server, start_worker, tmp_path, http
):
    (primary, *replicas), url = sentinels
    config = tmp_path / "server.toml"
    config.write_text('[SERVER]\ndurability = "replicated"\nreplication_wait_ms = 500\n'
                      'redis_timeout_s = 1.0\n')
    server = start_server("--store", url, "--config", str(config))

    # Replicated means a replica holds the job before it is acknowledged: with both replicas
    # hung, a submit is answered 503 (it may or may not be kept: the retry with its id is
    # safe). The primary's own guard (min-replicas-to-write) is lifted meanwhile, so that only
    # the server's WAIT can refuse it.
    submit = f"{server.url}/api/v1/endpoints/echo/jobs"
    body = {"job_id": "unconfirmed", "inputs": {"text": "x"}}
    with redis.Redis.from_url(primary.url) as client:
        client.config_set("min-replicas-to-write", 0)
        for replica in replicas:
            replica.proc.send_signal(signal.SIGSTOP)
        try:
            refused = http.post(submit, json=body)
        finally:
            for replica in replicas:
                replica.proc.send_signal(signal.SIGCONT)
            client.config_set("min-replicas-to-write", 1)
    assert refused.status_code == 503 and "no replica confirmed" in refused.text, refused.text
    # Once the replicas are back (and caught up), the retry with the same id is taken.
    wait_until(lambda: http.post(submit, json=body).status_code in (200, 202), timeout_s=15)
    assert http.post(submit, json=body).status_code == 200  # (one job: the same one)

    start_worker(server.url, "--max-batch", "8")
    acknowledged: set[str] = set()
    refusals: list[int] = []
    errors: list[str] = []  # (an assert in a client thread would not fail the test)
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            while not stop.is_set():
                job_id = f"c{n}-{i}"
                while not stop.is_set():  # retried with the same id until it is taken
                    try:
                        reply = http.post(f"{server.url}/api/v1/endpoints/echo/jobs",
                                          json={"job_id": job_id, "inputs": {"text": job_id}})
                    except httpx.HTTPError:
                        refusals.append(0)
                        time.sleep(0.05)
                        continue
                    if reply.status_code in (200, 202):
                        acknowledged.add(job_id)
                        break
                    if reply.status_code not in (503, 507):
                        errors.append(f"{reply.status_code}: {reply.text}")
                    refusals.append(reply.status_code)
                    time.sleep(0.05)
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(acknowledged) >= 20, timeout_s=30)
        primary.kill()
        before = len(acknowledged)
        # Sentinel promotes a replica within a few seconds; submits are refused meanwhile.
        wait_until(lambda: len(acknowledged) >= before + 20, timeout_s=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == [] and refusals, "the failover refused nothing: was the primary killed?"
    lost, unfinished = [], []
    for job_id in sorted(acknowledged):
        if http.get(f"{server.url}/api/v1/jobs/{job_id}").status_code == 404:
            lost.append(job_id)
            continue
        job = wait_status(http, server.url, job_id, timeout_s=60)
        if job["status"] != "done":
            unfinished.append((job_id, job["status"], job["error"]))
    print(f"acknowledged {len(acknowledged)}, lost {len(lost)}, not done {len(unfinished)}, "
          f"refused during the failover {len(refusals)}")
    assert lost == [] and unfinished == []
