"""Several servers on one Redis act as one: real `jobhive-server` processes on a real Redis.

A job submitted on A is claimed by a worker polling B and followed on C; killing any one server
(SIGKILL) loses nothing acknowledged; a Redis that goes away is a 503, and the servers recover
by themselves when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from conftest import Process, hold_port, start_redis, wait_until
from e2e_http import echo_variant, get_job, read_events, wait_status

from jobhive import AsyncClient

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (scripts/setup.sh)")
PNG_1PX = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
           "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture
def servers(
    start_server: Callable[..., Process], redis_url: str, tmp_path: Path
) -> list[Process]:
    """Three servers (A, B, C) on one Redis, sharing one files folder."""
    config = tmp_path / "server.toml"
    config.write_text(f'[SERVER]\nfiles_dir = "{tmp_path / "files"}"\n')
    return [start_server("--store", redis_url, "--config", str(config)) for _ in range(3)]


def submit(http: httpx.Client, url: str, endpoint: str = "echo", **inputs) -> dict:
    reply = http.post(f"{url}/api/v1/endpoints/{endpoint}/jobs", json={"inputs": inputs})
    assert reply.status_code == 202, reply.text
    return reply.json()


def test_submit_on_a_worker_on_b_events_on_c_and_b_killed_mid_job(
    servers, start_worker, http
):
    a, b, c = servers
    worker = start_worker(f"{b.url},{a.url}", "--worker-id", "w-b")
    job = submit(http, a.url, text="hello", delay_s=6.0, steps=24, image=PNG_1PX)
    on_c: list = []
    follow_c = threading.Thread(target=read_events, args=(f"{c.url}/api/v1/jobs/{job['job_id']}"
                                                          "/events",), kwargs={"collected": on_c})
    on_b: list = []
    follow_b = threading.Thread(target=_read_until_cut, args=(
        f"{b.url}/api/v1/jobs/{job['job_id']}/events", on_b))
    follow_c.start()
    follow_b.start()
    wait_until(lambda: any(e.event == "progress" for e in on_c) and
               any(e.event == "progress" for e in on_b), timeout_s=20)
    # Every server shows the worker that polls B.
    (seen,) = http.get(f"{c.url}/api/v1/status").json()["workers"]
    assert seen["worker_id"] == "w-b"

    assert on_c[-1].event == "progress", on_c[-1]  # (still running)
    b.kill()  # mid-job: the worker moves on to A; the stream on B is cut
    follow_b.join(20)
    last_on_b = on_b[-1].id
    resumed = read_events(f"{a.url}/api/v1/jobs/{job['job_id']}/events",
                          headers={"Last-Event-ID": str(last_on_b)})
    follow_c.join(30)
    assert not follow_b.is_alive() and not follow_c.is_alive()
    assert on_c[-1].event == "result" and resumed[-1].event == "result"
    assert all(e.id > last_on_b for e in resumed)  # nothing twice
    done = on_c[-1].data
    assert (done["status"], done["outputs"]["text"], done["attempts"]) == ("done", "hello", 1)
    # Its image went up as a file through B (or A); every server serves it.
    image = done["outputs"]["image"]
    for server in (a, c):
        reply = http.get(server.url + image["url"])
        assert reply.status_code == 200 and len(reply.content) == image["bytes"]
    worker.wait_for_output(r"trying " + a.url)


def _read_until_cut(url: str, collected: list) -> None:
    with contextlib.suppress(httpx.HTTPError, OSError):  # the server was killed: it ends here
        read_events(url, collected=collected)


def test_cancel_positions_and_versions_are_the_same_on_every_server(servers, http):
    a, b, c = servers
    first = submit(http, a.url, text="first")
    second = submit(http, b.url, text="second")
    assert (first["queue_position"], second["queue_position"]) == (0, 1)
    seen_on_c = get_job(http, c.url, second["job_id"])
    assert (seen_on_c["queue_position"], seen_on_c["version"]) == (1, second["version"])
    with ThreadPoolExecutor(1) as pool:
        # B's long-poll of the first job wakes when A cancels it.
        started = time.monotonic()
        polled = pool.submit(http.get, f"{b.url}/api/v1/jobs/{first['job_id']}",
                             params={"wait": 20, "since": first["version"]})
        canceled = http.delete(f"{a.url}/api/v1/jobs/{first['job_id']}").json()
        moved = polled.result().json()
    assert canceled["status"] == moved["status"] == "canceled"
    assert moved["version"] == canceled["version"] and time.monotonic() - started < 10
    assert get_job(http, c.url, second["job_id"])["queue_position"] == 0


def test_the_rate_limit_holds_across_servers(
    start_server, redis_url, endpoints_dir, http
):
    echo_variant(endpoints_dir, "echo", CLIENTS={"rate_limit_per_s": 0.05, "rate_burst": 2})
    a, b = (start_server("--store", redis_url) for _ in range(2))
    assert http.post(f"{a.url}/api/v1/endpoints/echo/jobs", json={"inputs": {}}).status_code == 202
    assert http.post(f"{b.url}/api/v1/endpoints/echo/jobs", json={"inputs": {}}).status_code == 202
    refused = http.post(f"{a.url}/api/v1/endpoints/echo/jobs", json={"inputs": {}})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1


@pytest.mark.timeout(180)
def test_a_server_killed_under_load_loses_no_acknowledged_job(servers, start_worker):
    """Clients submit (with their own job ids) round robin to A, B and C while two workers run
    the jobs; B is SIGKILLed mid-load. A submit that fails is retried on the next server with
    the same id. Every job any server acknowledged ends done, once."""
    a, b, c = servers
    for i, server in enumerate((a, c)):
        start_worker(f"{server.url},{b.url}", "--max-batch", "4", "--worker-id", f"w{i}")
    acknowledged: set[str] = set()
    retried: list[str] = []  # submits sent again (to the next server) after a failure
    lock = threading.Lock()
    killed = threading.Event()

    def client(n: int) -> None:
        urls = [a.url, b.url, c.url]
        with httpx.Client(timeout=10) as http:
            for i in range(40):
                job_id = f"load-{n}-{i}"
                for attempt in range(6):
                    url = urls[(i + attempt) % 3]
                    try:
                        reply = http.post(f"{url}/api/v1/endpoints/echo/jobs",
                                          json={"job_id": job_id, "inputs": {"text": job_id}})
                    except httpx.HTTPError:
                        retried.append(job_id)
                        continue
                    if reply.status_code in (200, 202):
                        with lock:
                            acknowledged.add(job_id)
                        break
                if n == 0 and i == 10:
                    b.kill()
                    killed.set()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))
    assert killed.is_set() and len(acknowledged) == 160
    with httpx.Client(timeout=30) as http:
        for job_id in sorted(acknowledged):
            job = wait_status(http, a.url, job_id, timeout_s=60)
            assert (job["status"], job["outputs"]["text"]) == ("done", job_id), job
    print(f"{len(acknowledged)} acknowledged (of them {len(set(retried))} sent again after a "
          "failure), all done")


def test_redis_away_is_a_503_and_the_servers_recover(start_server, tmp_path, http):
    """Redis hung (SIGSTOP): requests answer 503 with Retry-After within redis_timeout_s, never
    a hang; Redis killed: 503 at once; Redis back (its append-only file kept the queue, even
    after a SIGKILL): the server serves again by itself."""
    config = tmp_path / "server.toml"
    config.write_text('[SERVER]\nredis_timeout_s = 1.0\n')
    with hold_port() as port:
        redis_dir = tmp_path / "redis"
        store = start_redis(redis_dir, port)
        try:
            server = start_server("--store", store.url, "--config", str(config))
            job = submit(http, server.url, text="kept")
            store.proc.send_signal(signal.SIGSTOP)  # hung: nothing answers
            try:
                started = time.monotonic()
                hung = http.get(f"{server.url}/api/v1/jobs/{job['job_id']}")
                assert hung.status_code == 503 and "Retry-After" in hung.headers, hung.text
                assert time.monotonic() - started < 3  # (redis_timeout_s is 1)
            finally:
                store.proc.send_signal(signal.SIGCONT)
            store.kill()
            refused = http.post(f"{server.url}/api/v1/endpoints/echo/jobs",
                                json={"inputs": {"text": "refused"}})
            assert refused.status_code == 503 and "Retry-After" in refused.headers, refused.text
            store = start_redis(redis_dir, port)
            job_again = wait_until(lambda: _ok(http, f"{server.url}/api/v1/jobs/"
                                                     f"{job['job_id']}"), timeout_s=15)
            assert job_again["status"] == "queued"
            server.wait_for_output(r"Redis events followed again", timeout_s=20)
        finally:
            store.stop()


def _ok(http: httpx.Client, url: str) -> dict | None:
    reply = http.get(url)
    return reply.json() if reply.status_code == 200 else None


@pytest.mark.parametrize(("redis_args", "durability", "said"), [
    (["--maxmemory-policy", "allkeys-lru"], "everysec", "set `maxmemory-policy noeviction`"),
    (["--appendonly", "no"], "everysec", "set `appendonly yes`"),
    ([], "always", "durability 'always' needs `appendfsync always`"),
])
def test_start_up_refuses_a_redis_that_would_lose_jobs(
    start_server, tmp_path, redis_args, durability, said
):
    config = tmp_path / "server.toml"
    config.write_text(f'[SERVER]\ndurability = "{durability}"\n')
    with hold_port() as port:
        store = start_redis(tmp_path / "redis", port, *redis_args)  # (later options win)
        try:
            server = start_server("--store", store.url, "--config", str(config),
                                  expect_failure=True)
            assert server.proc.returncode == 2
            assert said in server.text
        finally:
            store.stop()


def test_redis_store_reads_keep_working_when_redis_refuses_writes(
    start_server, redis_url, http
):
    server = start_server("--store", redis_url)
    job = submit(http, server.url, text="kept")
    with redis.Redis.from_url(redis_url) as client:
        client.config_set("maxmemory", 1)
        try:
            refused = http.post(f"{server.url}/api/v1/endpoints/echo/jobs",
                                json={"inputs": {"text": "refused"}})
            assert refused.status_code == 507 and "Retry-After" in refused.headers
            assert http.get(f"{server.url}/api/v1/jobs/{job['job_id']}").status_code == 200
            assert http.get(f"{server.url}/api/v1/status").status_code == 200
        finally:
            client.config_set("maxmemory", 0)


async def test_the_client_follows_a_job_on_to_the_next_server(servers, start_worker):
    """`AsyncClient([B, A])` streams a job from B; B is killed mid-job: the stream goes on from
    A with Last-Event-ID, each event once, to the result."""
    a, b, c = servers
    start_worker(f"{c.url},{a.url}")
    async with AsyncClient([b.url, a.url], max_retries=2, backoff_s=0.05) as client:
        job = await client.submit("echo", {"text": "go on", "delay_s": 6.0, "steps": 24})
        versions, events = [], []
        async for event in client.stream(job):
            versions.append(event.job.version)
            events.append(event.event)
            if events.count("progress") == 2:
                await asyncio.to_thread(b.kill)
    assert events[-1] == "result" and client.server_url == a.url
    assert versions == sorted(set(versions))  # nothing twice, in order
