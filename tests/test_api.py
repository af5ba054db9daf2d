"""End to end: the client routes of a real server process, over real HTTP.

Where a test needs a job to be taken, reported on or finished at a moment of its choosing it
plays the worker itself (`RawWorker`); where it needs a real worker it starts `jobhive-worker
noop`. Every error reply is checked for its status and its JSON body.
"""

from __future__ import annotations

import itertools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from conftest import ECHO_WORKER_KEY, wait_until
from e2e_http import (
    Event,
    RawWorker,
    assert_declared,
    assert_error,
    echo_variant,
    entry,
    explained,
    get_job,
    parse_events,
    read_events,
)

OPEN = {"CLIENTS": {"auth_keys": []}}


def submit(
    http: httpx.Client,
    url: str,
    inputs: dict[str, Any] | None = None,
    endpoint: str = "echo",
    query: str = "",
    **body: Any,
) -> httpx.Response:
    headers = body.pop("headers", None)
    return http.post(
        f"{url}/api/v1/endpoints/{endpoint}/jobs{query}",
        json={"inputs": inputs or {}, **body},
        headers=headers,
    )


def submitted(http: httpx.Client, url: str, inputs: dict[str, Any] | None = None) -> dict:
    reply = submit(http, url, inputs)
    assert reply.status_code == 202, reply.text
    return reply.json()


def queued_counts(http: httpx.Client, url: str) -> dict[str, int]:
    stats = http.get(f"{url}/api/v1/status").json()
    return {name: e["queued"] for name, e in stats["endpoints"].items()}


# ----- health, status, endpoint schemas


def test_health(start_server, http):
    server = start_server()
    reply = http.get(f"{server.url}/health")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


def test_status_shows_queues_and_workers(start_server, http):
    server = start_server()
    worker = RawWorker(http, server.url, worker_id="w-status")
    first, second, third = (submitted(http, server.url, {"text": str(i)}) for i in range(3))
    stats = http.get(f"{server.url}/api/v1/status").json()
    queued_bytes = stats["endpoints"]["echo"].pop("queued_bytes")
    assert stats["endpoints"]["echo"] == {"queued": 3, "running": 0, "workers": 0}
    assert queued_bytes > 3 * len('{"text":"0"}')
    assert stats["workers"] == []

    (job,) = worker.take()
    assert job["job_id"] == first["job_id"]
    assert worker.result(job, outputs={"text": "0"}).status_code == 200
    (job,) = worker.take()
    assert job["job_id"] == second["job_id"]
    assert worker.result(job, error="out of memory").status_code == 200
    (job,) = worker.take()
    assert job["job_id"] == third["job_id"]

    stats = http.get(f"{server.url}/api/v1/status").json()
    assert stats["endpoints"]["echo"] == {"queued": 0, "queued_bytes": 0, "running": 1,
                                          "workers": 1}
    (seen,) = stats["workers"]
    assert "address" not in seen  # only for an admin key
    assert seen["worker_id"] == "w-status"
    assert seen["job_types"] == ["echo"]
    assert seen["info"] == {"model": "raw"}
    assert (seen["jobs_done"], seen["jobs_failed"], seen["running"]) == (1, 1, 1)
    assert seen["last_seen_ms"] <= time.time() * 1000 + 1000
    assert 0 <= seen["last_seen_s_ago"] < 30


def test_endpoint_list_names_the_models_its_workers_serve(start_server, http, endpoints_dir):
    echo_variant(endpoints_dir, "other", WORKER={"job_type": "other"})
    server = start_server()
    tiny = {"name": "tiny-llama4", "dtype": "float32", "device": "cpu", "random": True}
    real = {"name": "Llama-4-Scout", "dtype": "nf4", "device": "cuda:0", "random": False}

    def poll(worker_id: str, info: Any, job_types: tuple[str, ...] = ("echo",)) -> None:
        body = {"worker_id": worker_id, "job_types": list(job_types), "wait_s": 0, "info": info}
        reply = http.post(f"{server.url}/api/v1/worker/jobs", json=body,
                          headers={"Authorization": f"Bearer {ECHO_WORKER_KEY}"})
        assert reply.status_code == 204, reply.text  # no job: seen all the same

    def models() -> dict[str, list[dict[str, Any]]]:
        listing = http.get(f"{server.url}/api/v1/endpoints").json()["endpoints"]
        return {e["name"]: e["models"] for e in listing}

    assert models()["echo"] == []  # no worker online: no model
    poll("a", {"loaded_models": [tiny]})
    poll("b", {"loaded_models": [tiny, tiny, real]})  # a model twice counts once
    poll("c", {"model": "raw", "dtype": "float16"})  # an older worker: its `model` name
    poll("d", {"loaded_models": [{"name": 5}, "x", {"name": "odd", "random": "yes", "dtype": 7,
                                                    "device": "x" * 500}]})
    poll("e", {"loaded_models": [real]}, job_types=("other",))
    listed = models()
    assert listed["echo"] == [
        {**tiny, "workers": 2},
        {**real, "workers": 1},
        {"name": "raw", "dtype": "float16", "device": None, "random": False, "workers": 1},
        # what is not of its type is left out; only `true` is random; long text is cut
        {"name": "odd", "dtype": None, "device": "x" * 200, "random": False, "workers": 1},
    ]
    assert listed["other"] == [{**real, "workers": 1}]
    status = http.get(f"{server.url}/api/v1/status").json()  # /status shows the info as sent
    assert {w["worker_id"]: w["info"] for w in status["workers"]}["a"] == {"loaded_models": [tiny]}


def test_endpoint_list_and_schema(start_server, http, endpoints_dir):
    echo_variant(
        endpoints_dir,
        "private",
        ENDPOINT={"title": "Private echo"},
        WORKER={"job_type": "private", "auth_keys": ["private-worker-key"]},
        CLIENTS={"auth_keys": ["secret-client-key"]},
    )
    server = start_server()
    submitted(http, server.url)

    listing = http.get(f"{server.url}/api/v1/endpoints")
    assert listing.status_code == 200
    by_name = {e["name"]: e for e in listing.json()["endpoints"]}
    assert {"echo", "private"} <= set(by_name)  # and the repository's other endpoints
    assert by_name["echo"]["title"] == "Echo"
    assert by_name["echo"]["client_auth"] is False
    assert by_name["echo"]["route"] == "/echo"  # its demo page
    assert (by_name["echo"]["queued"], by_name["echo"]["running"]) == (1, 0)
    assert by_name["echo"]["workers"] == 0
    assert by_name["echo"]["models"] == []  # those of the workers online
    assert by_name["private"]["title"] == "Private echo"
    assert by_name["private"]["client_auth"] is True

    reply = http.get(f"{server.url}/api/v1/endpoints/echo")
    assert reply.status_code == 200
    schema = reply.json()
    assert schema["name"] == "echo"
    assert schema["job_type"] == "echo"
    assert schema["lease_s"] == 30
    assert schema["max_attempts"] == 3
    text = schema["inputs"]["text"]
    assert (text["type"], text["max_length"], text["required"]) == ("string", 10000, False)
    assert text["description"] == "Text to echo back."
    assert schema["inputs"]["steps"]["type"] == "integer"
    assert (schema["inputs"]["steps"]["minimum"], schema["inputs"]["steps"]["maximum"]) == (0, 100)
    assert schema["inputs"]["image"]["type"] == "image"
    assert schema["inputs"]["image"]["required"] is False
    assert schema["outputs"]["text"]["type"] == "string"
    assert schema["progress_outputs"]["preview"]["type"] == "image"

    private = http.get(f"{server.url}/api/v1/endpoints/private")
    assert private.status_code == 200
    assert private.json()["client_auth"] is True
    for text in (private.text, listing.text, reply.text):  # keys are never shown
        assert "secret-client-key" not in text
        assert "worker-key" not in text


# ----- submit, poll, wait


def test_submit_then_poll_until_a_worker_finishes(start_server, start_worker, http):
    server = start_server()
    reply = submit(http, server.url, {"text": "hi", "delay_s": 0.2})
    assert reply.status_code == 202
    job = reply.json()
    assert job["status"] == "queued"
    assert job["queue_position"] == 0
    assert re.fullmatch(r"[0-9a-f]{32}", job["job_id"])
    assert get_job(http, server.url, job["job_id"])["status"] == "queued"

    start_worker(server.url)

    def finished() -> dict | None:
        seen = get_job(http, server.url, job["job_id"], wait_s=5)
        return seen if seen["status"] == "done" else None

    done = wait_until(finished, timeout_s=30)
    assert done["outputs"]["text"] == "hi"
    assert done["progress"] == 100
    assert done["queue_position"] is None
    assert done["error"] is None
    assert done["attempts"] == 1
    assert done["finished_at_ms"] >= done["started_at_ms"] >= done["created_at_ms"]


def test_submit_with_wait(start_server, start_worker, http):
    server = start_server()
    # No worker: the wait runs out and the reply is the queued job, 202.
    started = time.monotonic()
    reply = submit(http, server.url, {"text": "later"}, query="?wait=0.5")
    assert reply.status_code == 202, reply.text
    assert reply.json()["status"] == "queued"
    assert time.monotonic() - started >= 0.4

    start_worker(server.url)
    reply = submit(http, server.url, {"text": "quick"}, query="?wait=20")
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "done"
    assert reply.json()["outputs"]["text"] == "quick"

    reply = submit(http, server.url, {"fail": "no GPU today"}, query="?wait=20")
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "failed"
    assert reply.json()["error"] == "no GPU today"

    reply = submit(http, server.url, {"delay_s": 2}, query="?wait=0.2")
    assert reply.status_code == 202, reply.text
    assert reply.json()["status"] in ("queued", "running")
    http.delete(f"{server.url}/api/v1/jobs/{reply.json()['job_id']}")


def test_get_with_wait_and_since_long_polls(start_server, http):
    server = start_server()
    worker = RawWorker(http, server.url)
    job = submitted(http, server.url)
    version = job["version"]
    url = f"{server.url}/api/v1/jobs/{job['job_id']}"

    # Nothing changes: the request is held for the whole wait and answers the same version.
    started = time.monotonic()
    same = http.get(url, params={"wait": 1, "since": version})
    assert same.status_code == 200
    assert same.json()["version"] == version
    assert time.monotonic() - started >= 0.8

    # A change while the request is held answers it at once (well before its wait is over).
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        held = pool.submit(httpx.get, url, params={"wait": 25, "since": version}, timeout=30)
        (grant,) = worker.take()
        changed = held.result(timeout=30)
    assert changed.status_code == 200
    assert changed.json()["status"] == "running"
    assert changed.json()["version"] > version
    assert time.monotonic() - started < 20

    # `since` older than the job's version: the current state at once.
    assert http.get(url, params={"wait": 25, "since": version}).json()["status"] == "running"
    # No `since`: waits for a change after now; none comes, so the same version after the wait.
    running = get_job(http, server.url, job["job_id"])
    started = time.monotonic()
    assert http.get(url, params={"wait": 1}).json()["version"] == running["version"]
    assert time.monotonic() - started >= 0.8
    done = worker.result(grant, outputs={"text": ""})
    assert done.status_code == 200
    # A finished job answers at once, whatever the wait.
    started = time.monotonic()
    assert http.get(url, params={"wait": 25}).json()["status"] == "done"
    assert time.monotonic() - started < 10


# ----- Server-Sent Events


def _event_order_ok(events: list[Event], last: str) -> None:
    names = "".join(e.event[0] for e in events)  # q(ueued), p(rogress), r(esult), e(rror)
    assert re.fullmatch(rf"q*p*{last[0]}", names), [e.event for e in events]
    ids = [e.id for e in events]
    assert ids == sorted(ids), ids
    for before, after in itertools.pairwise(events):
        if before.event != after.event:
            assert after.id > before.id, ids
    assert all(e.data["job_id"] == events[0].data["job_id"] for e in events)
    assert all(e.data["version"] == e.id for e in events)


def test_events_queued_progress_previews_result(start_server, start_worker, http):
    server = start_server()
    job = submitted(http, server.url, {"text": "sse", "delay_s": 1.5, "steps": 3})
    events: list[Event] = []
    pool = ThreadPoolExecutor(1)
    worker = None
    try:
        with explained(server):
            stream = pool.submit(
                read_events, f"{server.url}/api/v1/jobs/{job['job_id']}/events", collected=events
            )
            wait_until(lambda: events)  # the stream is open and has said "queued"
            worker = start_worker(server.url)
        with explained(server, worker):
            stream.result(timeout=40)
    finally:
        pool.shutdown(wait=False)  # a stream still open ends when the server stops

    assert events[0].event == "queued"
    assert events[0].data["status"] == "queued"
    assert events[0].data["queue_position"] == 0
    _event_order_ok(events, "result")
    progress = [e for e in events if e.event == "progress"]
    assert progress and all(e.data["status"] == "running" for e in progress)
    previews = [e for e in progress if (e.data["progress_outputs"] or {}).get("preview")]
    assert previews, [e.data for e in progress]
    assert all(
        e.data["progress_outputs"]["preview"].startswith("data:image/jpeg;base64,")
        for e in previews
    )
    percents = [e.data["progress"] for e in progress]
    assert percents == sorted(percents)
    assert events[-1].data["status"] == "done"
    assert events[-1].data["outputs"]["text"] == "sse"
    assert_declared(http, server.url, "echo", events[-1].data["outputs"],
                    [e.data["progress_outputs"] for e in progress])


def test_events_end_with_error_for_failed_and_canceled_jobs(start_server, start_worker, http):
    server = start_server()
    # Canceled while queued: the stream ends with an `error` event whose job says canceled.
    queued = submitted(http, server.url, {"text": "never"})
    events: list[Event] = []
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(
            read_events, f"{server.url}/api/v1/jobs/{queued['job_id']}/events", collected=events
        )
        wait_until(lambda: events)
        assert http.delete(f"{server.url}/api/v1/jobs/{queued['job_id']}").status_code == 200
        stream.result(timeout=30)
    _event_order_ok(events, "error")
    assert events[-1].data["status"] == "canceled"
    assert events[-1].data["error"]

    # Failed by its worker.
    start_worker(server.url)
    failed = submit(http, server.url, {"fail": "the model ran out of memory"}, query="?wait=20")
    assert failed.json()["status"] == "failed"
    events = read_events(f"{server.url}/api/v1/jobs/{failed.json()['job_id']}/events")
    assert [e.event for e in events] == ["error"]
    assert events[0].data["status"] == "failed"
    assert events[0].data["error"] == "the model ran out of memory"


def test_events_resume_with_last_event_id(start_server, http):
    server = start_server()
    worker = RawWorker(http, server.url)
    job = submitted(http, server.url)
    url = f"{server.url}/api/v1/jobs/{job['job_id']}/events"
    (grant,) = worker.take()
    preview = "data:image/png;base64,iVBORw0KGgo="
    assert worker.progress(grant, progress=25, outputs={"step": 1}).status_code == 200
    assert worker.progress(grant, progress=50, outputs={"step": 2, "preview": preview}).is_success
    current = get_job(http, server.url, job["job_id"])

    # Reconnecting with an older id: the current state at once (not every missed step), then
    # the stream goes on to the result.
    with (
        httpx.Client(timeout=15) as client,
        client.stream("GET", url, headers={"Last-Event-ID": str(job["version"])}) as stream,
    ):
        assert stream.status_code == 200
        events = parse_events(stream.iter_lines())
        first = next(events)
        assert first.event == "progress"
        assert first.id == current["version"]
        assert first.data["progress"] == 50
        assert first.data["progress_outputs"] == {"step": 2, "preview": preview}
        assert worker.result(grant, outputs={"text": "resumed"}).status_code == 200
        last = next(events)
        assert last.event == "result"
        assert last.data["outputs"] == {"text": "resumed"}
        assert list(events) == []  # the stream ends after the result

    final = get_job(http, server.url, job["job_id"])
    # Reconnecting with an id older than the final state: the final event, then the end.
    events = read_events(url, headers={"Last-Event-ID": str(current["version"])}, timeout_s=10)
    assert [(e.event, e.id) for e in events] == [("result", final["version"])]
    # Reconnecting with the final event's own id: nothing more to say, so the stream ends
    # (it must not stay open forever on a job that will never change again).
    events = read_events(url, headers={"Last-Event-ID": str(final["version"])}, timeout_s=10)
    assert events == []
    # An id the job has not reached (from before a server restart): the current state.
    events = read_events(url, headers={"Last-Event-ID": "999999"}, timeout_s=10)
    assert [e.event for e in events] == ["result"]


def test_events_of_a_running_job_resumed_with_an_id_from_before_a_restart(start_server, http):
    server = start_server()
    worker = RawWorker(http, server.url)
    job = submitted(http, server.url)
    (grant,) = worker.take()
    assert worker.progress(grant, progress=10).status_code == 200
    events = read_events(
        f"{server.url}/api/v1/jobs/{job['job_id']}/events",
        headers={"Last-Event-ID": "999999"},
        until=lambda e: True,
        timeout_s=10,
    )
    assert [(e.event, e.data["progress"]) for e in events] == [("progress", 10)]


def test_events_resend_the_queue_position_as_it_changes(start_server, http):
    server = start_server()
    ahead = submitted(http, server.url)
    job = submitted(http, server.url)
    events = []
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(
            read_events,
            f"{server.url}/api/v1/jobs/{job['job_id']}/events",
            until=lambda e: e.data["queue_position"] == 0,
            collected=events,
        )
        wait_until(lambda: events)
        assert events[0].data["queue_position"] == 1
        http.delete(f"{server.url}/api/v1/jobs/{ahead['job_id']}")
        stream.result(timeout=30)
    assert [(e.event, e.data["queue_position"]) for e in events] == [("queued", 1), ("queued", 0)]


# ----- cancel


def test_cancel_a_queued_job(start_server, http):
    server = start_server()
    jobs = [submitted(http, server.url, {"text": str(i)}) for i in range(4)]
    assert [j["queue_position"] for j in jobs] == [0, 1, 2, 3]

    reply = http.delete(f"{server.url}/api/v1/jobs/{jobs[1]['job_id']}")
    assert reply.status_code == 200, reply.text
    canceled = reply.json()
    assert canceled["status"] == "canceled"
    assert canceled["queue_position"] is None
    assert canceled["error"]

    positions = [get_job(http, server.url, j["job_id"])["queue_position"] for j in jobs]
    assert positions == [0, None, 1, 2]
    assert queued_counts(http, server.url)["echo"] == 3
    # Canceling again, or reading it, shows the same canceled job.
    again = http.delete(f"{server.url}/api/v1/jobs/{jobs[1]['job_id']}")
    assert again.status_code == 200
    assert again.json()["status"] == "canceled"
    # A worker never gets it.
    granted = RawWorker(http, server.url).take(max_batch=10)
    assert [j["job_id"] for j in granted] == [jobs[i]["job_id"] for i in (0, 2, 3)]


def test_cancel_a_running_job(start_server, http):
    server = start_server()
    worker = RawWorker(http, server.url)
    job = submitted(http, server.url)
    (grant,) = worker.take()
    assert worker.progress(grant, progress=30).json() == {
        "job_id": job["job_id"],
        "ok": True,
        "canceled": False,
    }

    reply = http.delete(f"{server.url}/api/v1/jobs/{job['job_id']}")
    assert reply.status_code == 200
    assert reply.json()["status"] == "canceled"

    # The worker hears it at its next progress report...
    heard = worker.progress(grant, progress=40)
    assert heard.status_code == 200, heard.text
    assert heard.json()["canceled"] is True
    # ...and a result it sends anyway is not taken: the job stays canceled.
    late = worker.result(grant, outputs={"text": "too late"})
    assert late.status_code == 200, late.text
    assert late.json() == {
        "job_id": job["job_id"],
        "ok": False,
        "canceled": True,
        "error": "canceled",
    }
    seen = get_job(http, server.url, job["job_id"])
    assert seen["status"] == "canceled"
    assert seen["outputs"] is None
    stats = http.get(f"{server.url}/api/v1/status").json()
    assert stats["endpoints"]["echo"] == {"queued": 0, "queued_bytes": 0, "running": 0,
                                          "workers": 1}

    # A finished job is answered as it is.
    other = submitted(http, server.url)
    (grant,) = worker.take()
    assert worker.result(grant, outputs={"text": "kept"}).status_code == 200
    reply = http.delete(f"{server.url}/api/v1/jobs/{other['job_id']}")
    assert reply.status_code == 200
    assert reply.json()["status"] == "done"
    assert reply.json()["outputs"] == {"text": "kept"}


# ----- idempotent submit


def test_submit_with_a_job_id_is_idempotent(start_server, endpoints_dir, http):
    echo_variant(endpoints_dir, "twin")
    server = start_server()
    first = submit(http, server.url, {"text": "a"}, job_id="client-job.1")
    assert first.status_code == 202, first.text
    assert first.json()["job_id"] == "client-job.1"

    # The same inputs (defaults spelled out or not): the same job, 200.
    again = submit(http, server.url, {"text": "a", "steps": 0}, job_id="client-job.1")
    assert again.status_code == 200, again.text
    assert again.json()["job_id"] == "client-job.1"
    assert again.json()["created_at_ms"] == first.json()["created_at_ms"]
    assert queued_counts(http, server.url)["echo"] == 1

    # Other inputs, or another endpoint: 409, and nothing new is queued.
    assert_error(submit(http, server.url, {"text": "b"}, job_id="client-job.1"), 409)
    assert_error(
        submit(http, server.url, {"text": "a"}, endpoint="twin", job_id="client-job.1"), 409
    )
    assert queued_counts(http, server.url).items() >= {"echo": 1, "twin": 0}.items()

    # Still the same job once it has finished.
    worker = RawWorker(http, server.url)
    (grant,) = worker.take()
    assert worker.result(grant, outputs={"text": "a"}).status_code == 200
    done = submit(http, server.url, {"text": "a"}, job_id="client-job.1", query="?wait=5")
    assert done.status_code == 200
    assert done.json()["status"] == "done"


# ----- client keys


def test_client_keys(start_server, endpoints_dir, http):
    echo_variant(
        endpoints_dir,
        "private",
        WORKER={"job_type": "private"},
        CLIENTS={"auth_keys": ["key-a", "key-b"]},
    )
    server = start_server()
    jobs_url = f"{server.url}/api/v1/endpoints/private/jobs"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic a2V5LWE6"},
        {"Authorization": "key-a"},
        {"Authorization": "Bearer"},
    ):
        reply = http.post(jobs_url, json={"inputs": {}}, headers=headers)
        assert_error(reply, 401)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert queued_counts(http, server.url)["private"] == 0

    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    reply = http.post(jobs_url, json={"inputs": {"text": "mine"}}, headers=a)
    assert reply.status_code == 202, reply.text
    job_url = f"{server.url}/api/v1/jobs/{reply.json()['job_id']}"

    assert http.get(job_url, headers=a).json()["status"] == "queued"
    for method, url in (("GET", job_url), ("GET", job_url + "/events"), ("DELETE", job_url)):
        assert_error(http.request(method, url, headers=b), 403)
        missing = http.request(method, url)
        assert_error(missing, 401)
        assert "WWW-Authenticate" in missing.headers
        assert_error(http.request(method, url, headers={"Authorization": "Bearer nope"}), 401)
    assert http.get(job_url, headers=a).json()["status"] == "queued"  # not canceled by b

    # The same job_id from the other key is another client's job: 409, not that job.
    own = http.post(jobs_url, json={"inputs": {}, "job_id": "shared-id"}, headers=a)
    assert own.status_code == 202
    assert_error(http.post(jobs_url, json={"inputs": {}, "job_id": "shared-id"}, headers=b), 409)

    events = read_events(job_url + "/events", headers=a, until=lambda e: True, timeout_s=10)
    assert events[0].event == "queued"
    canceled = http.delete(job_url, headers=a)
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"


# ----- limits: body size, queue length, rate


def test_oversize_bodies_get_413(start_server, endpoints_dir, http):
    echo_variant(endpoints_dir, "tiny", ENDPOINT={"max_body_bytes": 256})
    server = start_server()
    url = f"{server.url}/api/v1/endpoints/tiny/jobs"
    assert http.post(url, json={"inputs": {"text": "x" * 100}}).status_code == 202

    body = assert_error(http.post(url, json={"inputs": {"text": "x" * 300}}), 413)
    assert "256" in body["error"]

    def chunks():  # no Content-Length: the server counts what it reads
        yield b'{"inputs": {"text": "'
        for _ in range(10):
            yield b"y" * 100
        yield b'"}}'

    json_type = {"Content-Type": "application/json"}
    assert_error(http.post(url, content=chunks(), headers=json_type), 413)
    # The limit is the endpoint's own: echo takes the same body.
    reply = http.post(
        f"{server.url}/api/v1/endpoints/echo/jobs", json={"inputs": {"text": "x" * 300}}
    )
    assert reply.status_code == 202
    assert queued_counts(http, server.url).items() >= {"echo": 1, "tiny": 1}.items()


def test_full_queue_gets_429_with_retry_after(start_server, endpoints_dir, http):
    echo_variant(endpoints_dir, "small", ENDPOINT={"max_queue_length": 2})
    server = start_server()
    jobs = [
        submit(http, server.url, {"text": "0"}, endpoint="small"),
        submit(http, server.url, {"text": "1"}, endpoint="small", job_id="kept"),
    ]
    assert [r.status_code for r in jobs] == [202, 202]

    full = submit(http, server.url, {"text": "one too many"}, endpoint="small")
    assert_error(full, 429)
    assert int(full.headers["Retry-After"]) >= 1
    assert queued_counts(http, server.url)["small"] == 2
    # A repeat of a job already queued is no new job: answered, not refused.
    repeat = submit(http, server.url, {"text": "1"}, endpoint="small", job_id="kept")
    assert repeat.status_code == 200, repeat.text
    assert repeat.json()["job_id"] == "kept"
    # Room again once a job leaves the queue.
    http.delete(f"{server.url}/api/v1/jobs/{jobs[0].json()['job_id']}")
    assert submit(http, server.url, {"text": "fits"}, endpoint="small").status_code == 202


def test_client_rate_limit_gets_429_with_retry_after(start_server, endpoints_dir, http):
    echo_variant(
        endpoints_dir,
        "limited",
        CLIENTS={"auth_keys": ["key-a", "key-b"], "rate_limit_per_s": 0.2, "rate_burst": 2},
    )
    server = start_server()
    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    assert submit(http, server.url, endpoint="limited", headers=a).status_code == 202
    assert submit(http, server.url, endpoint="limited", headers=a).status_code == 202
    limited = submit(http, server.url, endpoint="limited", headers=a)
    assert_error(limited, 429)
    assert 1 <= int(limited.headers["Retry-After"]) <= 5
    assert queued_counts(http, server.url)["limited"] == 2
    # Each client key has its own bucket.
    assert submit(http, server.url, endpoint="limited", headers=b).status_code == 202
    # Reads are not rate limited.
    assert http.get(f"{server.url}/api/v1/endpoints/limited").status_code == 200


# ----- bad requests: 400 with the field named, 404, 405; never a 500


SUBMIT_CASES: list[tuple[bytes, tuple[str, ...]]] = [
    (b"", ("body",)),
    (b"{not json", ("body",)),
    (b'{"inputs": {}', ("body",)),
    (b"[1, 2]", ("body",)),
    (b'"text"', ("body",)),
    (b"null", ("body",)),
    (b"\xff\xfe", ("body",)),
    (b"NaN", ("body",)),
    (b'{"inputs": {"steps": 1e400}}', ("body",)),
    (b"[" * 5000 + b"]" * 5000, ("body",)),
    (b'{"inputs": "hello"}', ("inputs",)),
    (b'{"inputs": [1]}', ("inputs",)),
    (b'{"inputs": {}, "priority": 1}', ("priority",)),
    (b'{"inputs": {"nope": 1}}', ("nope",)),
    (b'{"inputs": {"text": 5}}', ("text",)),
    (b'{"inputs": {"text": "' + b"x" * 10001 + b'"}}', ("text",)),
    (b'{"inputs": {"steps": 1.5}}', ("steps",)),
    (b'{"inputs": {"steps": true}}', ("steps",)),
    (b'{"inputs": {"steps": "3"}}', ("steps",)),
    (b'{"inputs": {"steps": 101}}', ("steps",)),
    (b'{"inputs": {"steps": 99999999999999999999999}}', ("steps",)),
    (b'{"inputs": {"delay_s": "1"}}', ("delay_s",)),
    (b'{"inputs": {"delay_s": -1}}', ("delay_s",)),
    (b'{"inputs": {"fail": {"a": 1}}}', ("fail",)),
    (b'{"inputs": {"image": "not an image"}}', ("image",)),
    (b'{"inputs": {"image": "data:image/png;base64,AAAA"}}', ("image",)),
    (b'{"inputs": {"image": 5}}', ("image",)),
    (b'{"job_id": 5}', ("job_id",)),
    (b'{"job_id": ""}', ("job_id",)),
    (b'{"job_id": "has space"}', ("job_id",)),
    (b'{"job_id": "' + b"j" * 129 + b'"}', ("job_id",)),
    (b'{"inputs": {"text": 5, "steps": "x", "extra": 1}}', ("text", "steps", "extra")),
]


def test_bad_submissions_get_400_naming_the_field(start_server, http):
    server = start_server()
    url = f"{server.url}/api/v1/endpoints/echo/jobs"
    for body, fields in SUBMIT_CASES:
        reply = http.post(url, content=body, headers={"Content-Type": "application/json"})
        assert reply.status_code == 400, (body[:60], reply.status_code, reply.text)
        assert_error(reply, 400, *fields)
    assert queued_counts(http, server.url)["echo"] == 0
    assert "internal error" not in server.text
    assert "Traceback" not in server.text


def test_bad_query_parameters_get_400(start_server, http):
    server = start_server()
    job = submitted(http, server.url)
    jobs_url = f"{server.url}/api/v1/endpoints/echo/jobs"
    for wait in ("soon", "-1", "1e9", "nan", ""):
        assert_error(http.post(jobs_url, params={"wait": wait}, json={"inputs": {}}), 400, "wait")
    job_url = f"{server.url}/api/v1/jobs/{job['job_id']}"
    assert_error(http.get(job_url, params={"wait": "x"}), 400, "wait")
    assert_error(http.get(job_url, params={"wait": 1, "since": "v1"}), 400, "since")
    assert_error(http.get(job_url, params={"wait": 1, "since": "-3"}), 400, "since")
    assert queued_counts(http, server.url)["echo"] == 1


def test_unknown_endpoints_jobs_and_routes(start_server, http):
    server = start_server()
    url = server.url
    assert_error(http.get(f"{url}/api/v1/endpoints/nope"), 404)
    assert_error(http.post(f"{url}/api/v1/endpoints/nope/jobs", json={"inputs": {}}), 404)
    for method, path in (
        ("GET", "/api/v1/jobs/nope"),
        ("GET", "/api/v1/jobs/nope/events"),
        ("DELETE", "/api/v1/jobs/nope"),
        ("GET", "/api/v1/no-such-route"),
    ):
        assert_error(http.request(method, url + path), 404)
    wrong_method = http.put(f"{url}/api/v1/endpoints/echo/jobs", json={})
    assert_error(wrong_method, 405)
    assert "POST" in wrong_method.headers["Allow"]


def test_a_job_finished_by_a_raw_worker_batch_reads_back(start_server, http):
    """The outputs a worker posts are what the client reads, byte for byte as JSON."""
    server = start_server()
    job = submitted(http, server.url, {"text": "ünïcödé ✓"})
    worker = RawWorker(http, server.url)
    (grant,) = worker.take()
    assert grant["inputs"] == {
        "text": "ünïcödé ✓",
        "delay_s": 0.0,
        "steps": 0,
        "fail": None,
        "image": None,
    }
    outputs = {"text": "ünïcödé ✓", "delay_s": 2.5, "steps": 3, "worker_id": None}
    answers = worker.batch_results([entry(grant, outputs=outputs)])
    assert answers.json() == {"answers": [{"job_id": job["job_id"], "ok": True, "canceled": False}]}
    assert get_job(http, server.url, job["job_id"])["outputs"] == outputs
