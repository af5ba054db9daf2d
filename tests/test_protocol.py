"""jobhive/protocol.py in process: the data-URL codec, the job-id rule, grants, route paths, and
the runner's goodbye against a tiny in-process aiohttp app (no server process)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import logging
import socket
from typing import Any

import pytest
from aiohttp import web
from e2e_http import serve_app

from jobhive import client, protocol
from jobhive.protocol import (
    EVENT_OF_STATUS,
    FINISHED_STATUSES,
    GRANT_KEYS,
    JOB_ID_MAX_LENGTH,
    POLL_KEYS,
    WORKER_GOODBYE_PATH,
    WORKER_POLL_PATH,
    Grant,
    JobStatus,
    ProtocolError,
    decode_data_url,
    encode_data_url,
    new_job_id,
    server_urls,
    valid_job_id,
)
from workers.runtime import images
from workers.runtime.link import ServerLink
from workers.runtime.model import ModelWorker
from workers.runtime.runner import Runner, RunnerSettings

# ----- data URLs


@pytest.mark.parametrize("data", [b"", b"\x00", b"hello", bytes(range(256)) * 3])
def test_a_data_url_decodes_to_its_mime_and_bytes(data):
    url = encode_data_url(data, "image/png")
    assert url == "data:image/png;base64," + base64.b64encode(data).decode()
    assert decode_data_url(url) == ("image/png", data)
    assert decode_data_url(url, validate=True) == ("image/png", data)


def test_bare_base64_decodes_with_no_mime():
    assert decode_data_url(base64.b64encode(b"abc").decode()) == ("", b"abc")


def test_a_data_url_with_parameters_gives_the_bare_mime():
    url = "data:text/plain;charset=utf-8;base64," + base64.b64encode(b"hi").decode()
    assert decode_data_url(url) == ("text/plain", b"hi")


def test_a_data_url_that_is_not_base64_is_refused():
    with pytest.raises(ValueError, match="not a base64 data URL"):
        decode_data_url("data:text/plain,hello")
    with pytest.raises(ValueError, match="not a base64 data URL"):
        decode_data_url("data:image/png;base64")  # no comma


def test_broken_base64_is_refused_as_a_value_error():
    with pytest.raises(ValueError, match="invalid base64"):
        decode_data_url("data:image/png;base64,abc")  # bad padding
    with pytest.raises(ValueError, match="invalid base64"):
        decode_data_url("ÿÿÿÿ")


def test_validate_refuses_what_the_lenient_decode_skips():
    assert decode_data_url("aGk=\n") == ("", b"hi")
    with pytest.raises(ValueError, match="invalid base64"):
        decode_data_url("aGk=\n", validate=True)


def test_the_workers_image_helpers_use_the_codec():
    assert images.data_url(b"\x89PNG", "png") == encode_data_url(b"\x89PNG", "image/png")
    pil = pytest.importorskip("PIL.Image")
    import io

    buffer = io.BytesIO()
    pil.new("RGB", (3, 2), (10, 20, 30)).save(buffer, "PNG")
    for value in (images.data_url(buffer.getvalue(), "png"),
                  base64.b64encode(buffer.getvalue()).decode()):
        image = images.decode_image(value)
        assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (3, 2), (10, 20, 30))


# ----- job ids


@pytest.mark.parametrize(
    "job_id",
    ["a", "A-Z_a.z:0-9", "x" * JOB_ID_MAX_LENGTH, "0123abcdef0123abcdef0123abcdef01"],
)
def test_good_job_ids(job_id):
    assert valid_job_id(job_id)


@pytest.mark.parametrize(
    "job_id",
    ["", "x" * (JOB_ID_MAX_LENGTH + 1), "a b", "a/b", "é", "abc\n", "\nabc", None, 12, ["a"]],
)
def test_bad_job_ids(job_id):
    assert not valid_job_id(job_id)


def test_new_job_ids_are_valid_and_fresh():
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(valid_job_id(i) for i in ids)
    assert client.new_job_id is new_job_id  # the client makes them the same way


# ----- statuses, events, the job's keys


def test_every_status_has_an_event_and_finished_ones_end_the_stream():
    assert set(EVENT_OF_STATUS) == set(JobStatus)
    assert {JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELED} == FINISHED_STATUSES
    for status in JobStatus:
        assert status.finished == (EVENT_OF_STATUS[status] in ("result", "error"))
    assert EVENT_OF_STATUS["running"] == "progress"  # plain strings find their status
    assert "done" in FINISHED_STATUSES


def test_the_clients_job_has_the_protocols_keys():
    assert tuple(f.name for f in dataclasses.fields(client.Job)) == protocol.JOB_KEYS


def test_paths_quote_what_they_are_given():
    assert protocol.submit_path("echo") == "/api/v1/endpoints/echo/jobs"
    assert protocol.endpoint_path("a/b c") == "/api/v1/endpoints/a%2Fb%20c"
    assert protocol.job_path("j:1") == "/api/v1/jobs/j%3A1"
    assert protocol.events_path("j1") == "/api/v1/jobs/j1/events"
    assert protocol.worker_job_result_path("j1") == "/api/v1/worker/jobs/j1/result"
    assert protocol.worker_job_progress_path("j1") == "/api/v1/worker/jobs/j1/progress"
    assert protocol.JOB_ROUTE == "/api/v1/jobs/{job_id}"  # an aiohttp pattern, as the server has


# ----- grants


def grant_json(**changes: Any) -> dict[str, Any]:
    grant = {
        "job_id": "j1",
        "endpoint": "echo",
        "lease_id": "l1",
        "lease_s": 30,
        "lease_expires_at_ms": 1_700_000_000_000,
        "attempt": 1,
        "inputs": {"text": "hi"},
    }
    return {k: v for k, v in {**grant, **changes}.items() if v is not ...}


def test_a_grant_reads_every_field_and_writes_them_back_in_order():
    data = grant_json()
    grant = Grant.from_json(data)
    assert (grant.job_id, grant.endpoint, grant.lease_id) == ("j1", "echo", "l1")
    assert (grant.lease_s, grant.attempt, grant.inputs) == (30, 1, {"text": "hi"})
    assert grant.to_json() == data
    assert tuple(grant.to_json()) == GRANT_KEYS == tuple(data)


def test_a_grant_ignores_keys_it_does_not_know():
    assert Grant.from_json(grant_json(extra=1)) == Grant.from_json(grant_json())


@pytest.mark.parametrize("name", GRANT_KEYS)
def test_a_grant_without_a_field_names_it(name):
    with pytest.raises(ProtocolError, match=f"lacks '{name}'"):
        Grant.from_json(grant_json(**{name: ...}))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("job_id", ""),
        ("lease_id", 3),
        ("lease_s", 0),
        ("lease_s", True),
        ("attempt", 1.5),
        ("lease_expires_at_ms", None),
        ("inputs", []),
    ],
)
def test_a_grant_with_a_wrong_field_names_it(name, value):
    with pytest.raises(ProtocolError, match=f"'{name}' must be"):
        Grant.from_json(grant_json(**{name: value}))


def test_a_grant_must_be_an_object():
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        Grant.from_json(["j1"])
    assert issubclass(ProtocolError, ValueError)


# ----- the runner's side


class Quiet(ModelWorker):
    job_type = "echo"

    def run(self, batch, progress):
        return [{} for _ in batch]


def runner(url: str) -> Runner:
    settings = RunnerSettings(url, "worker-key", "w-1", burst=True, max_backoff_s=0.1)
    return Runner(Quiet(argparse.Namespace()), settings)


def test_the_runner_polls_with_protocol_keys_and_reads_grants():
    worker = runner("http://127.0.0.1:9")
    assert set(worker._poll_body()) <= set(POLL_KEYS)
    (job,) = worker._jobs_from({"jobs": [grant_json()]})
    assert (job.id, job.endpoint, job.lease_id, job.attempt, job.lease_s) == (
        "j1", "echo", "l1", 1, 30)


async def test_a_worker_stopping_cleanly_says_goodbye():
    seen: list[tuple[str, Any]] = []
    routes = web.RouteTableDef()

    @routes.post(WORKER_POLL_PATH)
    async def poll(request: web.Request) -> web.Response:
        seen.append(("poll", request.headers["Authorization"]))
        return web.Response(status=204)

    @routes.post(WORKER_GOODBYE_PATH)
    async def goodbye(request: web.Request) -> web.Response:
        seen.append(("goodbye", (request.headers["Authorization"], await request.json())))
        return web.json_response({"ok": True})

    app_runner, url = await serve_app(routes)
    try:
        await asyncio.wait_for(runner(url).serve(), 10)
    finally:
        await app_runner.cleanup()
    assert seen == [
        ("poll", "Bearer worker-key"),
        ("goodbye", ("Bearer worker-key", {"worker_id": "w-1"})),
    ]


async def test_a_server_without_the_goodbye_route_is_no_trouble(caplog):
    routes = web.RouteTableDef()

    @routes.post(WORKER_POLL_PATH)
    async def poll(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app_runner, url = await serve_app(routes)  # goodbye: aiohttp's own 404, in plain text
    try:
        with caplog.at_level(logging.INFO, "jobhive.worker"):
            await asyncio.wait_for(runner(url).serve(), 10)
    finally:
        await app_runner.cleanup()
    goodbyes = [r for r in caplog.records if r.name == "jobhive.worker" and "goodbye" in r.msg]
    assert [(r.levelno, r.getMessage()[:26]) for r in goodbyes] == [
        (logging.INFO, "goodbye not taken (HTTP 40")]


async def test_a_server_gone_costs_the_goodbye_one_log_line(caplog):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with ServerLink(url, "worker-key", max_backoff_s=0.1) as link:
        with caplog.at_level(logging.INFO, "jobhive.worker"):
            await asyncio.wait_for(link.say_goodbye("w-1"), 5)
    goodbyes = [r for r in caplog.records if r.name == "jobhive.worker"]
    assert [(r.levelno, r.getMessage()[:22]) for r in goodbyes] == [
        (logging.INFO, "goodbye not delivered ")]


def test_server_urls_are_checked_and_trimmed():
    assert server_urls(" http://a:7777/, https://b ") == ("http://a:7777", "https://b")
    assert server_urls(["http://proxy/jobhive/"]) == ("http://proxy/jobhive",)
    for bad in ("queue-b:7777", "ftp://a", "http://a:7777?x=1", "http://:7777", "http://a:0",
                "http://a:99999"):
        with pytest.raises(ValueError, match="is not a server URL"):
            server_urls(f"http://ok:1,{bad}")
    with pytest.raises(ValueError, match=r"\(http\(s\)://HOST\[:PORT\]\)"):
        server_urls("http://proxy/jobhive", paths=False)
    with pytest.raises(ValueError, match="no server URL"):
        server_urls(" , ")
