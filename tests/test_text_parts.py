"""Progress texts as parts (jobhive/protocol.py, "text progress as deltas"), end to end: a worker
played by the test sends only each text's new part, the server keeps the whole, and every kind of
client (SSE, long-poll, the Python client, the JS client in Chromium, a second and a late third
server on Redis) gets parts and rebuilds the same whole text.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ECHO_WORKER_KEY, wait_until, write_endpoint
from e2e_http import ECHO_TOML, RawWorker, assert_error, get_job, read_events

from jobhive import protocol
from jobhive.client import Client
from workers.runtime.link import ServerLink
from workers.runtime.model import Job, ModelWorker
from workers.runtime.runner import Runner, RunnerSettings

STREAM_TOML = ECHO_TOML + '\n[PROGRESS.OUTPUTS.text]\ntype = "string"\n'
WORDS = ["Hello", ", wor", "ld", " and", " more ", "words \N{HONEYBEE}", "!"]


def stream_endpoint(endpoints_dir: Path) -> None:
    """`stream`: the echo endpoint (job type echo) with a text among its progress outputs."""
    write_endpoint(endpoints_dir, "stream", STREAM_TOML)


def submit(http: httpx.Client, url: str) -> str:
    reply = http.post(f"{url}/api/v1/endpoints/stream/jobs", json={"inputs": {"text": "x"}})
    assert reply.status_code == 202, reply.text
    return reply.json()["job_id"]


def reported(worker: RawWorker, grant: dict[str, Any], **entry: Any) -> dict[str, Any]:
    reply = worker.progress(grant, **entry)
    assert reply.status_code == 200, reply.text
    return reply.json()


# ----- unit: the protocol's helpers


def test_parts_are_cut_and_joined_in_code_points():
    held = {"text": "Hello, \N{HONEYBEE}", "step": 3}
    sent, offsets = protocol.progress_delta(held, {"text": "Hello, \N{HONEYBEE}!", "step": 4})
    assert (sent, offsets) == ({"text": "!", "step": 4}, {"text": 8})
    assert protocol.rebuild_progress(held, sent, offsets) == (
        {"text": "Hello, \N{HONEYBEE}!", "step": 4}, [])
    # A text that does not extend the held one goes whole; so does the first one.
    assert protocol.progress_delta(held, {"text": "Bye"}) == ({"text": "Bye"}, {})
    assert protocol.progress_delta(None, {"text": "Hi"}) == ({"text": "Hi"}, {})
    # A part past the held text cannot be joined: the held text stays, the key is named.
    assert protocol.rebuild_progress(held, {"text": "?"}, {"text": 20}) == (
        {"text": "Hello, \N{HONEYBEE}"}, ["text"])
    assert protocol.rebuild_progress(None, {"text": "?"}, {"text": 2}) == ({}, ["text"])
    # Nor one that would grow the text past the receiver's bound (a worker sending parts
    # forever cannot grow the server's memory past what one whole report could be).
    assert protocol.rebuild_progress({"text": "ab"}, {"text": "cd"}, {"text": 2}, 3) == (
        {"text": "ab"}, ["text"])
    assert protocol.texts_extend(held, {"text": "Hello, \N{HONEYBEE} more"})
    assert not protocol.texts_extend(held, {"text": "Hello"})
    assert not protocol.texts_extend(held, None)
    assert protocol.held_lengths({"text": "ab", "step": 1}, {"text": "xxab"}) == {"text": 4}
    assert protocol.held_lengths({"step": 1}, {"text": "x"}) is None
    assert protocol.parse_progress_from("text:12,notes:0") == {"text": 12, "notes": 0}
    for bad in ("text", "text:", ":3", "text:-1", "text:1e3", "text:\N{SUPERSCRIPT TWO}"):
        with pytest.raises(ValueError):
            protocol.parse_progress_from(bad)


# ----- a worker's reports


def test_the_server_joins_a_workers_parts_and_answers_what_it_holds(
    start_server, endpoints_dir, http
):
    stream_endpoint(endpoints_dir)
    server = start_server()
    job_id = submit(http, server.url)
    worker = RawWorker(http, server.url)
    (grant,) = worker.take()

    def text() -> str:
        return get_job(http, server.url, job_id)["progress_outputs"]["text"]

    assert reported(worker, grant, progress=5, outputs={"text": "Hello"})["offsets"] == {"text": 5}
    answer = reported(worker, grant, outputs={"text": ", wor", "step": 2}, offsets={"text": 5})
    assert answer == {"job_id": job_id, "ok": True, "canceled": False, "offsets": {"text": 10}}
    assert get_job(http, server.url, job_id)["progress_outputs"] == {"text": "Hello, wor",
                                                                     "step": 2}
    # A part sent again (its answer was lost) from an earlier offset: the same text.
    assert reported(worker, grant, outputs={"text": " wor"}, offsets={"text": 6})["offsets"] == {
        "text": 10}
    # A part past what the server holds (it restarted, say): the text stays, and the answer's
    # length tells the worker where to send from.
    assert reported(worker, grant, outputs={"text": "ld!"}, offsets={"text": 12})["offsets"] == {
        "text": 10}
    assert text() == "Hello, wor"
    assert reported(worker, grant, outputs={"text": "ld!"}, offsets={"text": 10})["offsets"] == {
        "text": 13}
    assert text() == "Hello, world!"

    assert_error(worker.progress(grant, outputs={"text": "x"}, offsets={"text": -1}), 400,
                 "offsets.text")
    assert_error(worker.progress(grant, outputs={"step": 1}, offsets={"step": 0}), 400,
                 "offsets.step")
    assert_error(worker.progress(grant, outputs={"text": "x"}, offsets=[0]), 400, "offsets")
    assert_error(worker.result(grant, outputs={"text": "x"}, offsets={"text": 0}), 400, "offsets")
    assert text() == "Hello, world!"  # (nothing refused was taken)
    assert worker.result(grant, outputs={"text": "Hello, world!"}).status_code == 200


class Typist(ModelWorker):
    """Reports its text whole, a word at a time, as any model worker does."""

    job_type = "echo"

    def run(self, batch: list[Job], progress: Any) -> list[dict[str, Any]]:
        text = ""
        for word in WORDS:
            text += word
            progress(batch[0], 50, {"text": text, "step": len(text)})
            time.sleep(0.12)  # (past the runner's progress interval: one report per word)
        return [{"text": text}]


async def test_the_worker_runtime_sends_only_what_the_server_lacks(
    start_server, endpoints_dir, monkeypatch
):
    stream_endpoint(endpoints_dir)
    server = start_server()
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{server.url}/api/v1/endpoints/stream/jobs",
                                json={"inputs": {"text": "x"}})
        job_id = reply.json()["job_id"]
        runner = Runner(Typist(None), RunnerSettings(server.url, ECHO_WORKER_KEY, "typist",
                                                     burst=True, max_backoff_s=0.1))
        sent: list[dict[str, Any]] = []
        post = ServerLink.post

        async def watched(link: ServerLink, path: str, body: Any, timeout_s: float) -> Any:
            if path == protocol.WORKER_PROGRESS_PATH:
                sent.extend(body["reports"])
            return await post(link, path, body, timeout_s)

        monkeypatch.setattr(ServerLink, "post", watched)  # (a spy: every request still goes)
        await asyncio.wait_for(runner.serve(), 60)
        job = (await http.get(f"{server.url}{protocol.job_path(job_id)}")).json()
    assert job["outputs"] == {"text": "".join(WORDS)}
    texts = [r for r in sent if (r.get("outputs") or {}).get("text") is not None]
    assert len(texts) >= 3, sent
    assert texts[0]["outputs"]["text"] == "Hello" and "offsets" not in texts[0]
    held = ""
    for report in texts:
        offset = report.get("offsets", {}).get("text", 0)
        assert offset == len(held), report  # from what the server said it holds
        held = held[:offset] + report["outputs"]["text"]
        assert report["outputs"]["step"] == len(held)  # (other outputs go as they are)
    assert all("offsets" in r for r in texts[1:])


# ----- clients


def test_streams_and_long_polls_send_parts_and_a_late_client_the_whole(
    start_server, endpoints_dir, http
):
    stream_endpoint(endpoints_dir)
    server = start_server()
    job_id = submit(http, server.url)
    job_url = f"{server.url}{protocol.job_path(job_id)}"
    events_url = f"{server.url}{protocol.events_path(job_id)}"
    worker = RawWorker(http, server.url)
    (grant,) = worker.take()
    reported(worker, grant, outputs={"text": "Hello"})
    collected: list[Any] = []
    with ThreadPoolExecutor(2) as pool:
        following = pool.submit(read_events, events_url, collected=collected)
        wait_until(lambda: collected)
        first = collected[0].data
        assert first["progress_outputs"] == {"text": "Hello"} and "progress_offsets" not in first
        reported(worker, grant, outputs={"text": ", world"}, offsets={"text": 5})
        wait_until(lambda: len(collected) > 1)
        second = collected[1]
        assert second.data["progress_outputs"] == {"text": ", world"}
        assert second.data["progress_offsets"] == {"text": 5}

        # A client reconnecting (Last-Event-ID) gets the whole text first.
        (again,) = read_events(events_url, {"Last-Event-ID": str(collected[0].id)},
                               until=lambda e: True)
        assert again.data["progress_outputs"] == {"text": "Hello, world"}
        assert "progress_offsets" not in again.data

        # A long-poll holding the text of a version gets the rest of it.
        polled = pool.submit(http.get, job_url, params={
            "wait": 10, "since": second.id, "progress_from": "text:12"})
        reported(worker, grant, outputs={"text": "!"}, offsets={"text": 12})
        reply = polled.result(timeout=20).json()
        assert reply["progress_outputs"] == {"text": "!"}
        assert reply["progress_offsets"] == {"text": 12}
        # A plain read is whole.
        assert get_job(http, server.url, job_id)["progress_outputs"] == {"text": "Hello, world!"}
        # The worker starts its text over: a long-poll from before that gets it whole.
        reported(worker, grant, outputs={"text": "Bonjour"})
        reply = http.get(job_url, params={"since": second.id, "progress_from": "text:12"}).json()
        assert reply["progress_outputs"] == {"text": "Bonjour"}
        assert "progress_offsets" not in reply
        assert_error(http.get(job_url, params={"progress_from": "text"}), 400, "progress_from")

        assert worker.result(grant, outputs={"text": "Bonjour"}).status_code == 200
        events = following.result(timeout=20)
    assert events[-1].event == "result"
    joined = ""
    for event in events:  # the stream's parts rebuild each text the job had
        if event.event == "progress":
            offset = event.data.get("progress_offsets", {}).get("text", 0)
            joined = joined[:offset] + event.data["progress_outputs"]["text"]
            assert joined in ("Hello", "Hello, world", "Hello, world!", "Bonjour"), joined
    assert joined == "Bonjour"


def feed_words(worker: RawWorker, grants: list[dict[str, Any]],
               seen: Callable[[], dict[str, list[str]]]) -> str:
    """Reports WORDS one at a time as parts to every grant's job, each once every follower
    saw the text so far (`seen()`: the texts each one saw); then the results. Returns the
    whole text."""
    text = ""
    for word in WORDS:
        entries = [{"job_id": g["job_id"], "lease_id": g["lease_id"], "outputs": {"text": word}}
                   | ({"offsets": {"text": len(text)}} if text else {}) for g in grants]
        reply = worker.batch_progress(entries)
        assert reply.status_code == 200, reply.text
        text += word
        wait_until(lambda t=text: all(texts and texts[-1] == t for texts in seen().values()),
                   timeout_s=20)
    reply = worker.batch_results([{"job_id": g["job_id"], "lease_id": g["lease_id"],
                                   "outputs": {"text": text}} for g in grants])
    assert reply.status_code == 200, reply.text
    return text


def test_the_python_client_rebuilds_the_text_over_sse_and_long_polls(
    start_server, endpoints_dir, http
):
    stream_endpoint(endpoints_dir)
    server = start_server()
    ids = {"sse": submit(http, server.url), "poll": submit(http, server.url)}
    worker = RawWorker(http, server.url)
    grants = worker.take(max_batch=2)
    seen: dict[str, list[str]] = {"sse": [], "poll": []}
    ended: dict[str, Any] = {}

    def follow(transport: str) -> None:
        with Client(server.url) as client:
            for event in client.stream(ids[transport], sse=transport == "sse"):
                if event.event == "progress" and event.job.progress_outputs:
                    seen[transport].append(event.job.progress_outputs["text"])
                ended[transport] = event.job

    followers = [threading.Thread(target=follow, args=(t,)) for t in seen]
    for thread in followers:
        thread.start()
    text = feed_words(worker, grants, lambda: seen)
    for thread in followers:
        thread.join(timeout=20)
    for transport, texts in seen.items():
        assert all(text.startswith(t) for t in texts), (transport, texts)
        assert ended[transport].outputs == {"text": text}
    # A long-poll with wait() joins parts too (the final job is whole).
    with Client(server.url) as client:
        assert client.wait(ids["sse"]).outputs == {"text": text}


async def test_the_js_client_rebuilds_the_text_over_sse_and_long_polls(
    start_server, endpoints_dir, browser
):
    stream_endpoint(endpoints_dir)
    server = start_server()
    async with httpx.AsyncClient(timeout=30) as http:
        ids = {}
        for transport in ("sse", "poll"):
            reply = await http.post(f"{server.url}/api/v1/endpoints/stream/jobs",
                                    json={"inputs": {"text": transport}})
            ids[transport] = reply.json()["job_id"]
    page = await browser.open(server.url + "/")
    await page.evaluate("""async (ids) => {
        const jobhive = await import("/static/jobhive.js");
        window.seen = {sse: [], poll: []};
        window.ended = {};
        for (const [transport, id] of Object.entries(ids)) {
          jobhive.follow({job_id: id, endpoint: "stream"}, {
            transport,
            onProgress: (job) => {
              if (job.progress_outputs) window.seen[transport].push(job.progress_outputs.text);
            },
          }).then((job) => { window.ended[transport] = job.outputs.text; });
        }
    }""", ids)
    loop = asyncio.get_running_loop()

    def seen_by_page() -> dict[str, list[str]]:  # (called from feed's thread)
        return asyncio.run_coroutine_threadsafe(page.evaluate("window.seen"), loop).result(10)

    def feed() -> str:
        with httpx.Client(timeout=30) as sync_http:
            worker = RawWorker(sync_http, server.url)
            return feed_words(worker, worker.take(max_batch=2), seen_by_page)

    text = await asyncio.to_thread(feed)
    seen = await page.evaluate("window.seen")
    for transport in ("sse", "poll"):
        texts = seen[transport]
        assert texts and all(text.startswith(t) for t in texts), (transport, texts)
    await page.wait_for_function("Object.keys(window.ended).length === 2")
    assert await page.evaluate("window.ended") == {"sse": text, "poll": text}


# ----- several servers on one Redis


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_servers_on_redis_pass_parts_on_and_a_late_server_asks_for_the_whole(
    start_server, redis_url, endpoints_dir, http
):
    """The worker reports to A; B follows over SSE; C starts while the job runs, so it holds
    none of the text: the parts it hears ask A to publish the next report whole."""
    stream_endpoint(endpoints_dir)
    a, b = start_server("--store", redis_url), start_server("--store", redis_url)
    job_id = submit(http, a.url)
    worker = RawWorker(http, a.url)
    (grant,) = worker.take()
    assert reported(worker, grant, outputs={"text": "Hello"})["offsets"] == {"text": 5}
    seen: list[str] = []

    def follow() -> None:
        with Client(b.url) as client:
            for event in client.stream(job_id):
                if event.event == "progress" and event.job.progress_outputs:
                    seen.append(event.job.progress_outputs["text"])

    follower = threading.Thread(target=follow)
    follower.start()
    wait_until(lambda: seen == ["Hello"])
    assert reported(worker, grant, outputs={"text": ", wor"}, offsets={"text": 5})["offsets"] \
        == {"text": 10}
    wait_until(lambda: seen[-1] == "Hello, wor")

    c = start_server("--store", redis_url)
    assert get_job(http, c.url, job_id)["progress_outputs"] is None  # (heard nothing yet)
    reported(worker, grant, outputs={"text": "ld"}, offsets={"text": 10})
    wait_until(lambda: seen[-1] == "Hello, world")
    # C could not join that part; it asked, so A publishes a later report whole (the first
    # one after it heard the ask).
    text = "Hello, world"
    for _ in range(50):
        reported(worker, grant, outputs={"text": "!"}, offsets={"text": len(text)})
        text += "!"
        with contextlib.suppress(AssertionError):
            wait_until(lambda t=text: (get_job(http, c.url, job_id)["progress_outputs"]
                                       or {}).get("text") == t, timeout_s=0.5)
            break
    assert get_job(http, c.url, job_id)["progress_outputs"] == {"text": text}
    assert worker.result(grant, outputs={"text": text}).status_code == 200
    follower.join(timeout=20)
    assert seen[-1] == text and all(text.startswith(t) for t in seen)
