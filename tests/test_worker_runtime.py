"""The worker runtime (workers/runtime/) against the real server: no result is ever dropped, a
reply that is not the server's is the server being away, a hung model is found, a shut-down
says what it does.

Real `jobhive-server` and `jobhive-worker noop` processes on loopback (tests/conftest.py), and
for the proxy test a small reverse proxy in a thread of this process that answers 502 with an
HTML page while its upstream is down, as nginx does. Waits are long-polls or `wait_until`.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from conftest import Process, hold_port, wait_until
from e2e_http import echo_variant, get_job, serve_app
from PIL import Image

from jobhive.protocol import (
    WORKER_GOODBYE_PATH,
    WORKER_POLL_PATH,
    WORKER_PROGRESS_PATH,
    WORKER_RESULTS_PATH,
    decode_data_url,
    encode_data_url,
)
from workers.runtime.model import ModelWorker
from workers.runtime.runner import ModelStalled, Runner, RunnerSettings

FINISHED = ("done", "failed", "canceled")
BODY_LIMIT = 1024 * 1024  # the server's max_body_bytes in these tests
BIG_TEXT = {"INPUTS.text": {"max_length": 2_000_000}, "OUTPUTS.text": {"max_length": 2_000_000}}


# ----- helpers


def submit(http: httpx.Client, url: str, **inputs: Any) -> str:
    reply = http.post(f"{url}/api/v1/endpoints/echo/jobs", json={"inputs": inputs})
    assert reply.status_code == 202, reply.text[:500]
    return reply.json()["job_id"]


def wait_finished(http: httpx.Client, url: str, job_id: str, timeout_s: float = 40) -> dict:
    """Long-polls the job until it is finished; returns it."""
    return wait_until(
        lambda: (job := get_job(http, url, job_id, wait_s=2))["status"] in FINISHED and job,
        timeout_s=timeout_s,
    )


def exited(process: Process, timeout_s: float = 30) -> int:
    """Waits for the process to exit by itself (its output all read); its exit status."""
    return process.exited(timeout_s)


def small_body_limit(tmp_path: Path) -> str:
    """A server.toml with max_body_bytes = BODY_LIMIT; returns its path."""
    path = tmp_path / "server.toml"
    path.write_text(f"[SERVER]\nmax_body_bytes = {BODY_LIMIT}\n")
    return str(path)


class Proxy:
    """A reverse proxy in a thread: forwards every request to `upstream` and answers 502 with
    an HTML page (as nginx does) when the upstream cannot be reached. `answered` counts its
    replies by (path, status)."""

    PAGE = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.answered: collections.Counter[tuple[str, int]] = collections.Counter()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        with asyncio.Runner() as runner:
            self._loop = runner.get_loop()
            runner.run(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as self._http:
            self._ready.set()
            await self._stop.wait()
        await runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type")}
        try:
            async with self._http.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=120),
            ) as reply:
                data = await reply.read()
                content_type = reply.headers.get("Content-Type")
                status = reply.status
        except aiohttp.ClientError:
            self.answered[(request.path, 502)] += 1
            return web.Response(status=502, text=self.PAGE, content_type="text/html")
        self.answered[(request.path, status)] += 1
        return web.Response(status=status, body=data,
                            headers={"Content-Type": content_type} if content_type else None)


# ----- A: no result is ever dropped


def test_results_too_large_for_one_request_are_delivered_in_parts(
    start_server, start_worker, endpoints_dir, tmp_path, http
):
    # Short leases: a batch whose results were dropped would fail fast ("lease expired").
    echo_variant(endpoints_dir, "echo", ENDPOINT={"lease_s": 2, "max_attempts": 2}, **BIG_TEXT)
    server = start_server("--config", small_body_limit(tmp_path))
    texts = [letter * 600_000 for letter in "ab"]  # each fits the limit, both together do not
    job_ids = [submit(http, server.url, text=text) for text in texts]
    worker = start_worker(server.url, "--max-batch", "2", "--worker-id", "big")

    jobs = [wait_finished(http, server.url, job_id) for job_id in job_ids]

    assert [(j["status"], j["attempts"]) for j in jobs] == [("done", 1)] * 2, jobs[0]["error"]
    assert [j["outputs"]["text"] for j in jobs] == texts
    worker.wait_for_output(r"batch of 2 echo jobs")  # one batch, so one request at first ...
    # ... refused whole, then delivered in parts
    worker.wait_for_output(r"2 results refused together \(413: .*\); sending them in 2 requests")


def test_a_result_too_large_for_the_server_fails_its_job_with_the_reason(
    start_server, start_worker, endpoints_dir, tmp_path, http
):
    # Clients may send 4 MiB to this endpoint; workers (the server's limit) only 1 MiB.
    echo_variant(endpoints_dir, "echo", ENDPOINT={"max_body_bytes": 4 * BODY_LIMIT, "lease_s": 2,
                                                  "max_attempts": 1}, **BIG_TEXT)
    server = start_server("--config", small_body_limit(tmp_path))
    worker = start_worker(server.url, "--worker-id", "bulky")
    job_id = submit(http, server.url, text="x" * 1_100_000)

    job = wait_finished(http, server.url, job_id)

    assert (job["status"], job["attempts"], job["outputs"]) == ("failed", 1, None), job["error"]
    assert job["error"].startswith("result refused by the server (413): "), job["error"]
    assert f"the limit is {BODY_LIMIT}" in job["error"]
    # The worker goes on serving.
    small = wait_finished(http, server.url, submit(http, server.url, text="small"))
    assert (small["status"], small["outputs"]["worker_id"]) == ("done", "bulky")
    assert "Traceback" not in worker.text


def test_an_image_output_travels_as_a_file_and_one_too_large_fails_its_job(
    start_server, start_worker, tmp_path, http
):
    config = tmp_path / "server.toml"
    config.write_text("[SERVER]\nmax_file_bytes = 65536\n")
    server = start_server("--config", str(config))
    worker = start_worker(server.url, "--worker-id", "painter")
    small, large = (png_data_url(side) for side in (16, 512))  # 1 KB and 786 KB of noise

    done = wait_finished(http, server.url, submit(http, server.url, text="s", image=small))
    big = wait_finished(http, server.url, submit(http, server.url, text="l", image=large))

    ref = done["outputs"]["image"]
    assert (ref["file"], ref["media_type"]) == ("image.png", "image/png"), done
    file = http.get(f"{server.url}{ref['url']}")
    assert file.status_code == 200 and file.content == decode_data_url(small)[1]
    assert big["status"] == "failed" and big["attempts"] == 1, big
    assert big["error"].startswith("result file image.png refused by the server (413)"), big
    assert "Traceback" not in worker.text


def png_data_url(side_px: int) -> str:
    """A PNG of random pixels (it does not compress) as a data URL."""
    image = Image.frombytes("RGB", (side_px, side_px), random.Random(side_px).randbytes(
        side_px * side_px * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return encode_data_url(buffer.getvalue(), "image/png")


def test_a_proxy_error_page_while_the_server_restarts_loses_no_job(
    start_server, start_worker, tmp_path, http, held_port
):
    port, store = held_port, tmp_path / "proxied.sqlite3"  # held across the restarts
    server = start_server(port=port, store=store)
    with Proxy(server.url) as front:
        worker = start_worker(front.url, "--worker-id", "behind", "--poll-wait-s", "1")

        # 1. The server goes while a job runs: progress and results meet the proxy's 502 page.
        job_id = submit(http, server.url, text="through the proxy", delay_s=4, steps=8)
        wait_until(lambda: get_job(http, server.url, job_id)["progress"] > 0, timeout_s=30)
        server.kill()
        wait_until(lambda: front.answered[(WORKER_PROGRESS_PATH, 502)]
                   and front.answered[(WORKER_RESULTS_PATH, 502)], timeout_s=30)
        worker.wait_for_output(r"server \S+ unavailable \(HTTP 502 text/html, not JSON\); "
                               r"retrying in")
        server = start_server(port=port, store=store)
        job = wait_finished(http, server.url, job_id)
        assert (job["status"], job["attempts"]) == ("done", 1), job
        assert job["outputs"]["text"] == "through the proxy"

        # 2. The server goes while the worker waits for jobs: its polls meet the page.
        wait_until(lambda: front.answered[(WORKER_POLL_PATH, 204)], timeout_s=30)
        server.kill()
        wait_until(lambda: front.answered[(WORKER_POLL_PATH, 502)], timeout_s=30)
        server = start_server(port=port, store=store)
        job = wait_finished(http, server.url, submit(http, server.url, text="after"))
        assert (job["status"], job["outputs"]["worker_id"]) == ("done", "behind")
        assert worker.proc.poll() is None, worker.text  # it stayed up throughout

        # 3. Its goodbye meets the page too: still a clean exit.
        server.kill()
        worker.proc.send_signal(signal.SIGTERM)
        assert exited(worker, 30) == 0, worker.text
    assert front.answered[(WORKER_GOODBYE_PATH, 502)] == 1
    assert "goodbye not delivered (HTTP 502 text/html, not JSON)" in worker.text
    assert "Traceback" not in worker.text


class Quiet(ModelWorker):
    job_type = "echo"

    def run(self, batch, progress):
        return [{} for _ in batch]


async def test_a_reply_that_is_not_json_is_the_server_away(caplog):
    replies = [
        web.Response(status=200, text="<html>maintenance</html>", content_type="text/html"),
        web.Response(status=200, body=b"", content_type="application/json"),
        web.Response(status=200, text='{"jobs": []}', content_type="text/plain"),
        web.json_response({"grants": []}),  # JSON, but no list of jobs: the server away too
        web.json_response({"jobs": [{"job_id": 7}]}),  # a grant that is not one: skipped,
    ]  # so no job came: the burst worker exits
    routes = web.RouteTableDef()

    @routes.post(WORKER_POLL_PATH)
    async def poll(request: web.Request) -> web.Response:
        return replies.pop(0)

    @routes.post(WORKER_GOODBYE_PATH)
    async def goodbye(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app_runner, url = await serve_app(routes)
    settings = RunnerSettings(url, "worker-key", "w-1", burst=True, max_backoff_s=0.05)
    try:
        with caplog.at_level(logging.INFO, "jobhive.worker"):
            await asyncio.wait_for(Runner(Quiet(), settings).serve(), 10)
    finally:
        await app_runner.cleanup()
    away = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert [re.sub(r".*unavailable \((.*)\); retrying.*", r"\1", m) for m in away] == [
        "HTTP 200 text/html, not JSON",
        "HTTP 200 application/json, not JSON",
        "HTTP 200 text/plain, not JSON",
        "a reply without its list of jobs",
    ]
    assert any("a grant that is not one" in r.getMessage() for r in caplog.records)
    assert replies == []  # it went on to the last reply, then exited (burst)


# ----- B: a hung model is found


def test_a_hung_model_fails_its_job_and_the_worker_exits_3(start_server, start_worker, http):
    server = start_server()
    worker = start_worker(server.url, "--worker-id", "wedged", "--hang-after", "1",
                          "--stall-s", "2")
    job_id = submit(http, server.url, text="never answered")

    assert exited(worker, 30) == 3, worker.text
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["attempts"]) == ("failed", 1), job
    assert job["error"] == "model stalled for 2 s", job
    assert re.search(rf"model stalled for 2 s .*{job_id}.*exiting", worker.text), worker.text
    assert "jobhive-worker: model stalled for 2 s; its jobs failed" in worker.text
    assert "Traceback" not in worker.text
    assert http.get(f"{server.url}/api/v1/status").json()["workers"] == []  # it said goodbye


def test_a_slow_model_that_shows_life_is_no_stall(start_server, start_worker, http):
    server = start_server()
    worker = start_worker(server.url, "--worker-id", "slow", "--stall-s", "1")
    job_id = submit(http, server.url, text="slow but alive", delay_s=3)  # no progress steps

    job = wait_finished(http, server.url, job_id)

    assert (job["status"], job["outputs"]["text"]) == ("done", "slow but alive"), job
    assert "stalled" not in worker.text


# ----- C: an honest shut-down


def test_an_idle_worker_stopping_says_so(start_server, start_worker, http):
    server = start_server()
    worker = start_worker(server.url, "--worker-id", "idle")
    wait_until(lambda: http.get(f"{server.url}/api/v1/status").json()["workers"])

    worker.proc.send_signal(signal.SIGINT)

    assert exited(worker, 30) == 0, worker.text
    assert "stopping: no job is running" in worker.text
    assert "finishing the running batch" not in worker.text


def test_a_worker_stopped_with_its_server_after_its_last_job_exits_promptly(
    start_server, start_worker, http
):
    server = start_server()
    worker: Process = start_worker(server.url, "--worker-id", "last", "--grace-s", "60")
    job_id = submit(http, server.url, text="seen done")
    assert wait_finished(http, server.url, job_id)["status"] == "done"  # its client saw it

    server.kill()  # the results request waits beside a poll for the next batch: cut short
    worker.proc.send_signal(signal.SIGTERM)

    # Not grace_s (60 s) of retries for results the server had taken already.
    assert exited(worker, 20) == 0, worker.text
    assert re.search(rf"the results of job {job_id} not confirmed", worker.text), worker.text
    assert "gave up delivering" not in worker.text


# ----- D: several servers sharing one queue (--server URL,URL)


def test_a_worker_given_a_refused_server_first_serves_the_next(
    start_server, start_worker, http, refused_url
):
    server = start_server()
    worker = start_worker(f"{refused_url},{server.url}", "--worker-id", "second-choice")

    job = wait_finished(http, server.url, submit(http, server.url, text="via the second"))

    assert (job["status"], job["outputs"]["worker_id"]) == ("done", "second-choice"), job
    worker.wait_for_output(rf"serving echo at {refused_url}, {server.url} as second-choice")
    worker.wait_for_output(rf"WARNING .*server {refused_url} unavailable \(.+\); "
                           rf"trying {server.url}$")
    assert "retrying in" not in worker.text  # on to the next at once, no backoff


def test_a_worker_moves_on_when_its_server_dies(start_server, start_worker, http, tmp_path):
    # Two SQLite servers share no jobs: each job is submitted to the server the worker serves.
    first = start_server(store=tmp_path / "first.sqlite3")
    second = start_server(store=tmp_path / "second.sqlite3")
    worker = start_worker(f"{first.url},{second.url}", "--worker-id", "mover")
    job = wait_finished(http, first.url, submit(http, first.url, text="on the first"))
    assert (job["status"], job["outputs"]["worker_id"]) == ("done", "mover"), job

    first.kill()  # while the worker waits on it for the next batch
    job = wait_finished(http, second.url, submit(http, second.url, text="on the second"))

    assert (job["status"], job["outputs"]["worker_id"], job["attempts"]) == ("done", "mover", 1)
    worker.wait_for_output(rf"server {first.url} unavailable \(.+\); trying {second.url}$")
    assert "retrying in" not in worker.text and "Traceback" not in worker.text


def test_a_worker_backs_off_only_once_every_server_failed(
    start_server, start_worker, http, held_port, refused_url
):
    with hold_port() as other_port:  # refused throughout
        other_url = f"http://127.0.0.1:{other_port}"
        worker = start_worker(f"{refused_url},{other_url}", "--worker-id", "patient")
        worker.wait_for_output(rf"server {refused_url} unavailable \(.+\); trying {other_url}$")
        worker.wait_for_output(rf"server {other_url} unavailable \(.+\); all 2 servers failed, "
                               rf"retrying in [\d.]+ s with {refused_url}$")

        server = start_server(port=held_port)  # the first comes up: the rotation finds it
        job = wait_finished(http, server.url, submit(http, server.url, text="found"))

    assert (job["status"], job["outputs"]["worker_id"]) == ("done", "patient"), job
    worker.wait_for_output(rf"server {refused_url} reachable again")


def test_a_worker_refuses_a_server_option_without_a_url(start_worker):
    worker = start_worker(" , ", wait_ready=False)

    assert exited(worker, 30) == 2, worker.text
    assert "--server: no server URL in ' , '" in worker.text


async def test_servers_answering_503_are_tried_in_turn_with_a_backoff_per_round(caplog):
    # Each fake server answers two polls with the 503 of a store that is away, then 204 (the
    # burst worker exits at once). A 503 is not an answer taken: after both servers failed the
    # worker waits, twice as long each round, it does not go round and round.
    polls: list[str] = []

    def fake_server(name: str) -> web.RouteTableDef:
        routes = web.RouteTableDef()

        @routes.post(WORKER_POLL_PATH)
        async def poll(request: web.Request) -> web.Response:
            polls.append(name)
            if polls.count(name) > 2:
                return web.Response(status=204)
            return web.json_response({"error": f"{name}'s store away"}, status=503)

        @routes.post(WORKER_GOODBYE_PATH)
        async def goodbye(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        return routes

    (first, first_url), (second, second_url) = [
        await serve_app(fake_server(name)) for name in ("first", "second")]
    settings = RunnerSettings(f"{first_url},{second_url}", "worker-key", "w-1", burst=True,
                              max_backoff_s=2)
    try:
        with caplog.at_level(logging.INFO, "jobhive.worker"):
            await asyncio.wait_for(Runner(Quiet(), settings).serve(), 10)
    finally:
        await first.cleanup()
        await second.cleanup()
    away = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert away == [
        f"server {first_url} unavailable (HTTP 503: first's store away); trying {second_url}",
        f"server {second_url} unavailable (HTTP 503: second's store away); all 2 servers "
        f"failed, retrying in 0.2 s with {first_url}",
        f"server {first_url} unavailable (HTTP 503: first's store away); trying {second_url}",
        f"server {second_url} unavailable (HTTP 503: second's store away); all 2 servers "
        f"failed, retrying in 0.5 s with {first_url}",  # (twice as long: a 503 is no answer)
    ]
    assert polls == ["first", "second", "first", "second", "first"]  # then 204: queue empty


async def test_a_failed_progress_report_moves_the_worker_on(caplog):
    # The first server grants a job, then answers its progress with a proxy's 502 page (it
    # died behind the proxy): the next report, and the result, go to the second server, so
    # the lease is renewed there while the batch runs.
    hits: list[tuple[str, str]] = []
    reported = {"first": threading.Event(), "second": threading.Event()}
    grant = {"job_id": "j-1", "endpoint": "echo", "lease_id": "l-1", "lease_s": 30.0,
             "lease_expires_at_ms": 0, "attempt": 1, "inputs": {}}

    def fake_server(name: str) -> web.RouteTableDef:
        routes = web.RouteTableDef()

        @routes.post("/{tail:.*}")
        async def any_post(request: web.Request) -> web.Response:
            hits.append((name, request.path))
            if request.path == WORKER_POLL_PATH:
                granted = name == "first" and len(hits) == 1
                return web.json_response({"jobs": [grant]}) if granted else web.Response(
                    status=204)
            if request.path == WORKER_PROGRESS_PATH:
                reported[name].set()
                if name == "first":
                    return web.Response(status=502, text=Proxy.PAGE, content_type="text/html")
            answers = [{"job_id": "j-1", "ok": True}]
            return web.json_response({"answers": answers, "jobs": []})

        return routes

    class Reporting(ModelWorker):
        job_type = "echo"

        def run(self, batch, progress):
            progress(batch[0], 25)
            assert reported["first"].wait(5)
            progress(batch[0], 50)
            assert reported["second"].wait(5)
            return [{} for _ in batch]

    (first, first_url), (second, second_url) = [
        await serve_app(fake_server(name)) for name in ("first", "second")]
    settings = RunnerSettings(f"{first_url},{second_url}", "worker-key", "w-1", burst=True)
    try:
        with caplog.at_level(logging.INFO, "jobhive.worker"):
            await asyncio.wait_for(Runner(Reporting(), settings).serve(), 10)
    finally:
        await first.cleanup()
        await second.cleanup()
    assert hits[:3] == [("first", WORKER_POLL_PATH), ("first", WORKER_PROGRESS_PATH),
                        ("second", WORKER_PROGRESS_PATH)], hits
    assert ("second", WORKER_RESULTS_PATH) in hits and ("first", WORKER_RESULTS_PATH) not in hits
    assert (f"server {first_url} unavailable (HTTP 502 text/html, not JSON); trying "
            f"{second_url}") in [r.getMessage() for r in caplog.records]


def test_a_worker_refuses_a_server_option_that_is_not_a_url(start_worker):
    worker = start_worker("http://127.0.0.1:7777,queue-b:7777", wait_ready=False)

    assert exited(worker, 30) == 2, worker.text  # (before loading its model)
    assert "'queue-b:7777' is not a server URL (http(s)://HOST[:PORT])" in worker.text


# ----- D: continuous batching (a worker that takes jobs while it runs)


class Ticker(ModelWorker):
    """Echoes, continuously batched: each job takes `steps` ticks of 20 ms, beside the others;
    a job joins at the next tick after it came and leaves at the tick it ends."""

    job_type = "echo"
    takes_jobs_while_running = True

    def __init__(self) -> None:
        super().__init__()
        self.most_running = 0  # touched by the model thread only
        self.ended = threading.Event()
        self.unwedge = threading.Event()  # what a job of text "hang" waits for, silently

    def run_continuously(self, feed, progress):
        self.ended.clear()
        ticks_left: dict = {}
        while (arrived := feed.take()) or ticks_left:
            ticks_left.update((job, job.inputs["steps"]) for job in arrived)
            if any(job.inputs["text"] == "hang" for job in arrived):
                self.unwedge.wait()
            self.most_running = max(self.most_running, len(ticks_left))
            time.sleep(0.02)
            for job in list(ticks_left):
                ticks_left[job] -= 1
                progress(job, 100 * (1 - ticks_left[job] / job.inputs["steps"]))
                if ticks_left[job] <= 0 or job.canceled:
                    del ticks_left[job]
                    feed.finish(job, RuntimeError(job.inputs["fail"]) if job.inputs.get("fail")
                                else {"text": job.inputs["text"], "delay_s": 0.0,
                                      "steps": job.inputs["steps"], "worker_id": "ticker"})
        self.ended.set()


async def test_jobs_join_a_running_worker_and_leave_it_as_they_end(start_server, http):
    # max_batch 2: a long job and a short one run; a third joins when the short one ends (its
    # result posted then, long before the long one ends), a fourth fails alone; on a stop the
    # long job, still running after grace_s, is handed back to the queue.
    server = start_server()
    ticker = Ticker()
    settings = RunnerSettings(server.url, "echo-worker-key", "ticker", max_batch=2,
                              poll_wait_s=2, grace_s=0.3)
    runner = Runner(ticker, settings)
    serving = asyncio.ensure_future(runner.serve())

    def job(job_id: str) -> dict:
        return get_job(http, server.url, job_id)

    def run_in_thread(fn, *args):
        return asyncio.to_thread(fn, *args)

    try:
        long_id = await run_in_thread(lambda: submit(http, server.url, text="long", steps=100))
        await run_in_thread(wait_until, lambda: job(long_id)["status"] == "running")
        short_ids = [await run_in_thread(lambda s=s: submit(http, server.url, text=s, steps=5))
                     for s in ("a", "b")]
        failing_id = await run_in_thread(
            lambda: submit(http, server.url, text="c", steps=2, fail="no luck"))
        finished = [await run_in_thread(wait_finished, http, server.url, i, 20)
                    for i in [*short_ids, failing_id]]
        assert [f["status"] for f in finished] == ["done", "done", "failed"], [
            (f["status"], f.get("error")) for f in finished]
        assert [f["outputs"]["text"] for f in finished[:2]] == ["a", "b"]
        assert finished[2]["error"] == "no luck"
        assert job(long_id)["status"] == "running"  # the others came and went beside it
        assert ticker.most_running == 2  # never more than max_batch
        runner.stop()
        await asyncio.wait_for(serving, 10)
        assert job(long_id)["status"] == "queued"  # handed back after grace_s
        assert await run_in_thread(ticker.ended.wait, 5)  # (canceled, it ended at once)
    finally:
        if not serving.done():
            serving.cancel()


async def test_a_continuous_worker_that_stalls_fails_its_running_jobs(start_server, http):
    server = start_server()
    ticker = Ticker()
    settings = RunnerSettings(server.url, "echo-worker-key", "ticker", max_batch=4,
                              poll_wait_s=2, stall_s=1)
    try:
        ids = [await asyncio.to_thread(submit, http, server.url, text="ok", steps=100)]
        serving = asyncio.ensure_future(Runner(ticker, settings).serve())
        await asyncio.to_thread(wait_until, lambda: get_job(http, server.url, ids[0])["progress"])
        ids.append(await asyncio.to_thread(submit, http, server.url, text="hang", steps=1))
        with pytest.raises(ModelStalled):
            await asyncio.wait_for(serving, 10)
    finally:
        ticker.unwedge.set()
    for job_id in ids:
        job = get_job(http, server.url, job_id)
        assert (job["status"], job["error"]) == ("failed", "model stalled for 1 s"), job
