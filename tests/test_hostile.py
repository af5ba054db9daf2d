"""Hostile and careless input, route by route, against the app in process (aiohttp's test
server, an in-memory journal): every case is a 4xx naming what is wrong, never a 500, and no
worker can make a job unreadable. Each case failed on the server before the store rebuild."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api_server.app import create_app
from api_server.config import ServerConfig, load_endpoints
from api_server.routes.pages import static_files
from api_server.store import MemoryJournal, SqliteJournal

REPO = Path(__file__).resolve().parents[1]
WORKER = {"Authorization": "Bearer echo-worker-key"}
CLIENT = {"Authorization": "Bearer client-key"}
ADMIN = {"Authorization": "Bearer admin-key"}


def endpoints(keyed: bool = True):
    """echo as shipped, plus `keyed`: echo with a client key and a worker key of its own."""
    found = load_endpoints(REPO / "endpoints")
    echo = found["echo"]
    result = {"echo": echo}
    if keyed:
        result["keyed"] = dataclasses.replace(
            echo,
            endpoint=dataclasses.replace(echo.endpoint, name="keyed", route="/keyed"),
            worker=dataclasses.replace(echo.worker, job_type="keyed",
                                       auth_keys=("keyed-worker-key",)),
            clients=dataclasses.replace(echo.clients, auth_keys=("client-key",)),
        )
    return result


async def serve(journal=None, config=None, keyed=True) -> TestClient:
    config = config or ServerConfig(admin_keys=("admin-key",))
    app = create_app(config, endpoints(keyed), journal=journal or MemoryJournal())
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client():
    client = await serve()
    yield client
    await client.close()


async def submit(client, endpoint="echo", headers=None, **body):
    body.setdefault("inputs", {"text": "hi"})
    reply = await client.post(f"/api/v1/endpoints/{endpoint}/jobs", json=body, headers=headers)
    assert reply.status == 202, await reply.text()
    return await reply.json()


async def take(client, job_types=("echo",), headers=WORKER):
    reply = await client.post("/api/v1/worker/jobs", headers=headers, json={
        "worker_id": "w1", "job_types": list(job_types), "wait_s": 0})
    assert reply.status == 200, await reply.text()
    return (await reply.json())["jobs"]


async def error_of(reply, status):
    assert reply.status == status, (reply.status, await reply.text())
    return await reply.json()


def nested(depth: int):
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


async def raw_request(client, head: bytes) -> bytes:
    """Sends raw bytes (headers no HTTP client lets through) and returns the reply."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    return reply


async def test_deep_json_is_a_400_naming_the_field(client):
    deep = b"[" * 1000 + b"]" * 1000  # deeper than orjson writes, not than it reads
    for body in (b'{"inputs": {"text": %s}}' % deep, b'{"inputs": {}, "job_id": %s}' % deep):
        reply = await client.post("/api/v1/endpoints/echo/jobs", data=body,
                                  headers={"Content-Type": "application/json"})
        fields = (await error_of(reply, 400))["fields"]
        assert any(name.startswith(("inputs.text", "job_id")) for name in fields), fields
    # Within the depth limit the usual validation speaks, with a short message.
    body = await error_of(await client.post("/api/v1/endpoints/echo/jobs",
                                            json={"inputs": {"text": nested(10)}}), 400)
    assert len(body["fields"]["text"]) < 200


async def test_non_utf8_authorization_is_401(client):
    for path, body in (("/api/v1/worker/jobs", b'{"worker_id": "w", "job_types": ["echo"]}'),
                       ("/api/v1/endpoints/keyed/jobs", b'{"inputs": {}}')):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode()
        reply = await raw_request(client, head + b"Authorization: Bearer \xff\xfe\r\n\r\n" + body)
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        assert b"Authorization" in reply


@pytest.mark.parametrize("since", ["²", "1" * 5000, "-1", "1.5", "0x10"])
async def test_bad_since_and_last_event_id_are_400(client, since):
    job = await submit(client)
    reply = await client.get(f"/api/v1/jobs/{job['job_id']}", params={"wait": "1",
                                                                      "since": since})
    assert "since" in (await error_of(reply, 400))["fields"]
    reply = await client.get(f"/api/v1/jobs/{job['job_id']}/events",
                             headers={"Last-Event-ID": since})
    assert "Last-Event-ID" in (await error_of(reply, 400))["fields"]


async def test_a_worker_cannot_make_a_job_unreadable(client):
    job = await submit(client)
    (grant,) = await take(client)
    lease = {"job_id": job["job_id"], "lease_id": grant["lease_id"]}
    reply = await client.post("/api/v1/worker/progress", headers=WORKER, json={
        "reports": [{**lease, "progress": 5, "outputs": {"step": nested(300)}}]})
    assert list((await error_of(reply, 400))["fields"]) == ["reports[0].outputs.step"]
    # Undeclared keys are dropped; the job reads fine, as JSON and as an event stream.
    reply = await client.post("/api/v1/worker/progress", headers=WORKER, json={
        "reports": [{**lease, "progress": 5, "outputs": {"step": 1, "junk": "x" * 100}}]})
    assert reply.status == 200
    seen = await (await client.get(f"/api/v1/jobs/{job['job_id']}")).json()
    assert seen["progress_outputs"] == {"step": 1}
    # A batch with one bad entry is refused whole: the good entry is not applied either.
    other = await submit(client, inputs={"text": "other"})
    reply = await client.post("/api/v1/worker/results", headers=WORKER, json={"reports": [
        {**lease, "outputs": {"text": "fine"}},
        {"job_id": other["job_id"], "lease_id": "x", "outputs": {"text": nested(300)}},
    ]})
    await error_of(reply, 400)
    assert (await (await client.get(f"/api/v1/jobs/{job['job_id']}")).json())["status"] == (
        "running")


async def test_keys_of_other_endpoints_get_403_and_unknown_ones_401(client):
    job = await submit(client, "keyed", headers=CLIENT)
    url = f"/api/v1/jobs/{job['job_id']}"
    assert (await client.get(url, headers=CLIENT)).status == 200
    assert (await client.get(url)).status == 401
    assert (await client.get(url, headers={"Authorization": "Bearer nope"})).status == 401
    assert (await client.get(url, headers=WORKER)).status == 403  # a key of echo's workers
    reply = await client.post("/api/v1/endpoints/keyed/jobs", json={"inputs": {}},
                              headers=WORKER)
    assert reply.status == 403


async def test_jobs_of_a_removed_endpoint_stay_private(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    client = await serve(SqliteJournal(path))
    job = await submit(client, "keyed", headers=CLIENT)
    await client.close()
    client = await serve(SqliteJournal(path), keyed=False)  # restarted without "keyed"
    try:
        url = f"/api/v1/jobs/{job['job_id']}"
        assert (await client.get(url)).status == 401
        assert (await client.get(url, headers=WORKER)).status == 403
        assert (await client.get(url, headers=CLIENT)).status == 200
        assert (await client.delete(url)).status == 401
    finally:
        await client.close()


async def test_status_hides_worker_addresses_but_from_admins(client):
    await client.post("/api/v1/worker/jobs", headers=WORKER,
                      json={"worker_id": "w1", "job_types": ["echo"], "wait_s": 0})
    (seen,) = (await (await client.get("/api/v1/status")).json())["workers"]
    assert "address" not in seen
    (seen,) = (await (await client.get("/api/v1/status", headers=ADMIN)).json())["workers"]
    assert seen["address"] == "127.0.0.1"


async def test_a_worker_lists_only_job_types_its_key_serves(client):
    reply = await client.post("/api/v1/worker/jobs", headers=WORKER,
                              json={"worker_id": "w1", "job_types": ["echo", "keyed"]})
    assert "job_types" in (await error_of(reply, 400))["fields"]
    stats = await (await client.get("/api/v1/status")).json()
    assert stats["endpoints"]["keyed"]["workers"] == 0


async def test_a_worker_says_goodbye(client):
    await client.post("/api/v1/worker/jobs", headers=WORKER,
                      json={"worker_id": "w1", "job_types": ["echo"], "wait_s": 0})
    assert len((await (await client.get("/api/v1/status")).json())["workers"]) == 1
    other_key = {"Authorization": "Bearer keyed-worker-key"}
    reply = await client.post("/api/v1/worker/goodbye", headers=other_key,
                              json={"worker_id": "w1"})
    assert (await reply.json()) == {"ok": False}  # another key cannot send it away
    reply = await client.post("/api/v1/worker/goodbye", headers=WORKER, json={"worker_id": "w1"})
    assert (await reply.json()) == {"ok": True}
    assert (await (await client.get("/api/v1/status")).json())["workers"] == []


async def test_json_routes_need_a_json_content_type(client):
    for path in ("/api/v1/endpoints/echo/jobs", "/api/v1/worker/jobs"):
        reply = await client.post(path, data=b'{"inputs": {}}',
                                  headers={**WORKER, "Content-Type": "text/plain"})
        await error_of(reply, 415)
    stats = await (await client.get("/api/v1/status")).json()
    assert stats["endpoints"]["echo"]["queued"] == 0


async def test_allowed_hosts():
    client = await serve(config=ServerConfig(allowed_hosts=("jobs.example",)))
    try:
        assert (await client.get("/health", headers={"Host": "jobs.example:7777"})).status == 200
        reply = await client.get("/health", headers={"Host": "evil.example"})
        assert "Host" in (await error_of(reply, 400))["fields"]
    finally:
        await client.close()


async def test_pages_are_locked_down(client):
    page = await client.get("/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"
    reply = await client.get("/api/v1/endpoints")
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_static_files_leave_out_symlinks_to_outside(tmp_path):
    folder = tmp_path / "frontend"
    folder.mkdir()
    (folder / "ok.js").write_text("1")
    secret = tmp_path / "secret.js"
    secret.write_text("secret")
    (folder / "link.js").symlink_to(secret)
    assert set(static_files(folder.resolve())) == {"ok.js"}


async def test_a_full_disk_refuses_cleanly_and_reads_go_on():
    journal = MemoryJournal()
    client = await serve(journal)
    try:
        kept = await submit(client, job_id="kept")
        journal.failure = OSError(28, "No space left on device")
        reply = await client.post("/api/v1/endpoints/echo/jobs",
                                  json={"inputs": {"text": "x"}, "job_id": "refused"})
        assert reply.status == 507 and reply.headers["Retry-After"]
        assert "disk is full" in (await reply.json())["error"]
        assert (await client.get("/api/v1/jobs/refused")).status == 404
        assert (await client.get(f"/api/v1/jobs/{kept['job_id']}")).status == 200
        reply = await client.post("/api/v1/worker/jobs", headers=WORKER,
                                  json={"worker_id": "w1", "job_types": ["echo"], "wait_s": 0})
        await error_of(reply, 507)
        journal.failure = None
        (grant,) = await take(client)
        journal.failure = OSError(5, "Input/output error")
        result = {"reports": [{"job_id": grant["job_id"], "lease_id": grant["lease_id"],
                               "outputs": {"text": "x"}}]}
        await error_of(await client.post("/api/v1/worker/results", headers=WORKER,
                                         json=result), 503)
        journal.failure = None
        reply = await client.post("/api/v1/worker/results", headers=WORKER, json=result)
        assert (await reply.json())["answers"][0]["ok"] is True
        assert (await (await client.get("/api/v1/jobs/kept")).json())["status"] == "done"
    finally:
        await client.close()
