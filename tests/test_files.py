"""Output files, against the app in process (aiohttp's test server): a worker uploads a file under
its lease, its result references it, a client downloads it (ETag, 304, Range) or asks for the
job with ?inline=1; every refusal is its own status; files live and die with their job."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

import api_server.store.files as files_module
from api_server.app import create_app
from api_server.config import ServerConfig, load_endpoints
from api_server.state import FILES, STORE
from api_server.store import MemoryJournal, SqliteJournal
from jobhive.client import AsyncClient, AsyncFile, Client, File
from jobhive.errors import AuthError, NotFoundError
from jobhive.files import FileUploadError, upload_file
from jobhive.protocol import FileRef, decode_data_url

REPO = Path(__file__).resolve().parents[1]
WORKER = {"Authorization": "Bearer echo-worker-key"}
KEYED_WORKER = {"Authorization": "Bearer keyed-worker-key"}
CLIENT = {"Authorization": "Bearer client-key"}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # (the server does not decode it)


def endpoints(ttl_s: float | None = None):
    """echo as shipped (with an `images` list output), and `keyed`: echo with a client key and
    a worker key of its own."""
    echo = load_endpoints(REPO / "endpoints")["echo"]
    echo = dataclasses.replace(echo, outputs={**echo.outputs, "images": echo.outputs["image"]})
    if ttl_s is not None:
        echo = dataclasses.replace(echo, endpoint=dataclasses.replace(echo.endpoint,
                                                                      result_ttl_s=ttl_s))
    keyed = dataclasses.replace(
        echo,
        endpoint=dataclasses.replace(echo.endpoint, name="keyed", route="/keyed"),
        worker=dataclasses.replace(echo.worker, job_type="keyed", auth_keys=("keyed-worker-key",)),
        clients=dataclasses.replace(echo.clients, auth_keys=("client-key",)),
    )
    return {"echo": echo, "keyed": keyed}


async def serve(journal=None, ttl_s=None, **config) -> TestClient:
    config.setdefault("sweep_interval_s", 3600.0)  # the tests sweep when they mean to
    app = create_app(ServerConfig(**config), endpoints(ttl_s), journal=journal or MemoryJournal())
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client():
    client = await serve(max_file_bytes=64 * 1024, max_job_files_bytes=96 * 1024)
    yield client
    await client.close()


async def running_job(client, endpoint="echo", worker=WORKER, client_key=None):
    """A job taken by a worker: (job_id, lease_id)."""
    reply = await client.post(f"/api/v1/endpoints/{endpoint}/jobs", json={"inputs": {}},
                              headers=client_key)
    assert reply.status == 202, await reply.text()
    job_id = (await reply.json())["job_id"]
    reply = await client.post("/api/v1/worker/jobs", headers=worker,
                              json={"worker_id": "w1", "job_types": [endpoint], "wait_s": 0})
    assert reply.status == 200, await reply.text()
    (grant,) = (await reply.json())["jobs"]
    assert grant["job_id"] == job_id
    return job_id, grant["lease_id"]


def put(client, job_id, name, data=PNG, lease_id="", media_type="image/png", headers=WORKER,
        **extra):
    return client.put(f"/api/v1/worker/jobs/{job_id}/files/{name}", data=data,
                      params={"lease_id": lease_id}, headers={**headers,
                                                              "Content-Type": media_type},
                      **extra)


async def finish(client, job_id, lease_id, outputs, headers=WORKER):
    return await client.post(f"/api/v1/worker/jobs/{job_id}/result", headers=headers,
                             json={"lease_id": lease_id, "outputs": outputs})


async def error_of(reply, status):
    assert reply.status == status, (reply.status, await reply.text())
    return await reply.json()


def files_root(client) -> Path:
    return client.server.app[FILES].root


# ----- the path of a file: upload, result, download


async def test_upload_result_download(client):
    job_id, lease_id = await running_job(client)
    reply = await put(client, job_id, "image-0.png", lease_id=lease_id)
    assert reply.status == 200, await reply.text()
    ref = await reply.json()
    digest = hashlib.sha256(PNG).hexdigest()
    assert ref == {"file": "image-0.png", "url": f"/api/v1/jobs/{job_id}/files/image-0.png",
                   "media_type": "image/png", "bytes": len(PNG), "sha256": digest}
    # The worker may send only the name: the server fills in the rest.
    reply = await finish(client, job_id, lease_id, {"image": {"file": "image-0.png"},
                                                     "text": "done"})
    assert reply.status == 200, await reply.text()
    job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["outputs"] == {"image": ref, "text": "done"}

    reply = await client.get(ref["url"])
    assert reply.status == 200
    assert await reply.read() == PNG
    assert reply.headers["Content-Type"] == "image/png"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Content-Disposition"] == "inline"
    assert reply.headers["ETag"] == f'"{digest}"'

    reply = await client.get(ref["url"], headers={"If-None-Match": f'"{digest}"'})
    assert reply.status == 304 and reply.headers["ETag"] == f'"{digest}"'
    reply = await client.get(ref["url"], headers={"If-None-Match": '"something-else"'})
    assert reply.status == 200

    reply = await client.get(ref["url"], headers={"Range": "bytes=8-15"})
    assert reply.status == 206
    assert await reply.read() == PNG[8:16]
    assert reply.headers["Content-Range"] == f"bytes 8-15/{len(PNG)}"
    assert reply.headers["ETag"] == f'"{digest}"'
    reply = await client.get(ref["url"], headers={"Range": f"bytes={len(PNG) + 10}-"})
    assert reply.status == 416
    assert reply.headers["Content-Range"] == f"bytes */{len(PNG)}"

    await error_of(await client.get(f"/api/v1/jobs/{job_id}/files/nope.png"), 404)
    await error_of(await client.get("/api/v1/jobs/nope/files/image-0.png"), 404)


async def test_a_list_output_of_references_and_the_upload_helper(client):
    job_id, lease_id = await running_job(client)
    # A session as a worker runtime has one: the server as its base URL, the worker key.
    async with aiohttp.ClientSession(str(client.make_url("")), headers=WORKER) as session:
        refs = [await upload_file(session, job_id, lease_id, f"image-{i}.png", "image/png",
                                  PNG + b"%d" % i) for i in range(2)]
        # It raises with the server's status and message.
        with pytest.raises(FileUploadError) as raised:
            await upload_file(session, job_id, "stale", "x.png", "image/png", PNG)
    assert raised.value.status == 409 and "lease" in raised.value.message
    assert [r.file for r in refs] == ["image-0.png", "image-1.png"]
    assert all(isinstance(r, FileRef) and r.size == len(PNG) + 1 for r in refs)
    reply = await finish(client, job_id, lease_id, {"images": [r.to_json() for r in refs]})
    assert reply.status == 200, await reply.text()
    job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["outputs"]["images"] == [r.to_json() for r in refs]


async def test_inline_gives_data_urls(client):
    job_id, lease_id = await running_job(client)
    ref = await (await put(client, job_id, "image-0.png", lease_id=lease_id)).json()
    assert (await finish(client, job_id, lease_id, {"image": ref, "images": [ref, "data:,x"]})
            ).status == 200
    for reply in (await client.get(f"/api/v1/jobs/{job_id}?inline=1"),
                  await client.get(f"/api/v1/jobs/{job_id}?inline=true")):
        outputs = (await reply.json())["outputs"]
        assert decode_data_url(outputs["image"]) == ("image/png", PNG)
        assert outputs["images"][0] == outputs["image"] and outputs["images"][1] == "data:,x"
    plain = await (await client.get(f"/api/v1/jobs/{job_id}?inline=0")).json()
    assert plain["outputs"]["image"] == ref
    reply = await client.get(f"/api/v1/jobs/{job_id}?inline=maybe")
    assert "inline" in (await error_of(reply, 400))["fields"]
    # The event stream's final event, inline too.
    reply = await client.get(f"/api/v1/jobs/{job_id}/events?inline=1")
    text = (await reply.read()).decode()
    assert text.startswith("event: result") and '"data:image/png;base64,' in text


async def test_inline_is_bounded_by_max_body_bytes():
    client = await serve(max_body_bytes=len(PNG) + 100)  # one file fits, two do not
    try:
        job_id, lease_id = await running_job(client)
        refs = [await (await put(client, job_id, f"image-{i}.png", lease_id=lease_id)).json()
                for i in range(2)]
        assert (await finish(client, job_id, lease_id, {"images": refs})).status == 200
        body = await error_of(await client.get(f"/api/v1/jobs/{job_id}?inline=1"), 413)
        assert "fetch them from their URLs" in body["error"], body
        plain = await client.get(f"/api/v1/jobs/{job_id}")  # the references still answer
        assert (await plain.json())["outputs"]["images"][0]["file"] == "image-0.png"
    finally:
        await client.close()


async def test_submit_with_wait_and_inline(client):
    submitted = asyncio.ensure_future(client.post(
        "/api/v1/endpoints/echo/jobs?wait=10&inline=1", json={"inputs": {}, "job_id": "w-1"}))
    reply = await client.post("/api/v1/worker/jobs", headers=WORKER,
                              json={"worker_id": "w1", "job_types": ["echo"], "wait_s": 10})
    (grant,) = (await reply.json())["jobs"]
    ref = await (await put(client, grant["job_id"], "a.png", lease_id=grant["lease_id"])).json()
    assert (await finish(client, grant["job_id"], grant["lease_id"], {"image": ref})).status == 200
    reply = await submitted
    assert reply.status == 200
    assert decode_data_url((await reply.json())["outputs"]["image"]) == ("image/png", PNG)


async def test_a_re_upload_replaces_the_file(client):
    job_id, lease_id = await running_job(client)
    first = await (await put(client, job_id, "a.png", lease_id=lease_id)).json()
    second = await (await put(client, job_id, "a.png", b"other", lease_id=lease_id)).json()
    assert second["bytes"] == 5 and second["sha256"] != first["sha256"]
    assert await (await client.get(second["url"])).read() == b"other"
    folder = files_root(client) / f"job-{job_id}"
    assert sorted(p.name.split("-")[0] for p in folder.iterdir()) == [".data", "a.png"]


# ----- refusals


async def test_a_stale_lease_is_409_and_an_unknown_job_404(client):
    job_id, lease_id = await running_job(client)
    body = await error_of(await put(client, job_id, "a.png", lease_id="not-the-lease"), 409)
    assert "lease" in body["error"]
    await error_of(await put(client, "no-such-job", "a.png", lease_id=lease_id), 404)
    # A finished job takes no more files, even under its last lease.
    assert (await finish(client, job_id, lease_id, {"text": "x"})).status == 200
    await error_of(await put(client, job_id, "a.png", lease_id=lease_id), 409)
    # A canceled one neither.
    job_id, lease_id = await running_job(client)
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status == 200
    body = await error_of(await put(client, job_id, "a.png", lease_id=lease_id), 409)
    assert "canceled" in body["error"]


async def test_worker_keys(client):
    job_id, lease_id = await running_job(client)
    await error_of(await put(client, job_id, "a.png", lease_id=lease_id, headers={}), 401)
    await error_of(await put(client, job_id, "a.png", lease_id=lease_id, headers=CLIENT), 401)
    body = await error_of(await put(client, job_id, "a.png", lease_id=lease_id,
                                    headers=KEYED_WORKER), 403)
    assert "echo" in body["error"]


async def test_downloads_need_the_jobs_client_key(client):
    job_id, lease_id = await running_job(client, "keyed", KEYED_WORKER, CLIENT)
    ref = await (await put(client, job_id, "a.png", lease_id=lease_id,
                           headers=KEYED_WORKER)).json()
    assert (await finish(client, job_id, lease_id, {"image": ref}, KEYED_WORKER)).status == 200
    await error_of(await client.get(ref["url"]), 401)
    await error_of(await client.get(ref["url"], headers={"Authorization": "Bearer nope"}), 401)
    await error_of(await client.get(ref["url"], headers=WORKER), 403)
    reply = await client.get(ref["url"], headers=CLIENT)
    assert reply.status == 200 and await reply.read() == PNG


@pytest.mark.parametrize("name", [".hidden", "a/b", "..", "-a", "a" * 101, "a b", "é.png"])
async def test_bad_names_are_400_naming_the_field(client, name):
    job_id, lease_id = await running_job(client)
    from urllib.parse import quote

    reply = await client.put(f"/api/v1/worker/jobs/{job_id}/files/{quote(name, safe='')}",
                             data=PNG, params={"lease_id": lease_id},
                             headers={**WORKER, "Content-Type": "image/png"})
    if reply.status == 404:  # ("a/b" and ".." never reach the route: the router says 404)
        assert name in ("a/b", "..")
        return
    assert "name" in (await error_of(reply, 400))["fields"]


async def test_a_missing_lease_is_400(client):
    job_id, _ = await running_job(client)
    reply = await client.put(f"/api/v1/worker/jobs/{job_id}/files/a.png", data=PNG,
                             headers={**WORKER, "Content-Type": "image/png"})
    assert "lease_id" in (await error_of(reply, 400))["fields"]


@pytest.mark.parametrize("media_type", ["text/html", "image/svg+xml", "application/json"])
async def test_other_media_types_are_415(client, media_type):
    job_id, lease_id = await running_job(client)
    await error_of(await put(client, job_id, "a.png", lease_id=lease_id,
                             media_type=media_type), 415)
    reply = await client.put(f"/api/v1/worker/jobs/{job_id}/files/a.png", data=PNG,
                             params={"lease_id": lease_id}, headers=WORKER,
                             skip_auto_headers=["Content-Type"])
    await error_of(reply, 415)


async def test_too_big_is_413_before_the_body_is_read(client):
    """The server answers 413 while the body is still coming: the body's generator waits for
    the reply before it sends its end, so a server that read (or buffered) it all would never
    answer."""
    job_id, lease_id = await running_job(client)
    replied = asyncio.Event()

    async def body(size: int):
        sent = 0
        while sent < size:
            yield b"x" * 16384
            sent += 16384
        await replied.wait()
        yield b"the end"

    limit = client.server.app[FILES].max_file_bytes
    # Declared too big (Content-Length): refused before a byte is read.
    reply = await put(client, job_id, "a.png", data=body(16384), lease_id=lease_id,
                      headers={**WORKER, "Content-Length": str(limit + 1)})
    replied.set()
    assert "max_file_bytes" in (await error_of(reply, 413))["error"]
    # Streamed (chunked, no length): refused once past the limit.
    replied.clear()
    reply = await put(client, job_id, "b.png", data=body(limit + 16384), lease_id=lease_id)
    replied.set()
    assert "max_file_bytes" in (await error_of(reply, 413))["error"]
    assert client.server.app[FILES].get(job_id, "b.png") is None
    assert [p.name for p in (files_root(client) / f"job-{job_id}").iterdir()] == []


async def test_a_jobs_files_are_bounded_together(client):
    job_id, lease_id = await running_job(client)
    chunk = b"x" * (40 * 1024)  # the job may hold 96 KiB: two fit, a third does not
    for name in ("a.png", "b.png"):
        assert (await put(client, job_id, name, chunk, lease_id=lease_id)).status == 200
    body = await error_of(await put(client, job_id, "c.png", chunk, lease_id=lease_id), 413)
    assert "max_job_files_bytes" in body["error"]
    # Replacing one counts its new size only.
    assert (await put(client, job_id, "b.png", chunk, lease_id=lease_id)).status == 200


async def test_a_full_disk_is_507_and_other_errors_503(client, monkeypatch):
    job_id, lease_id = await running_job(client)
    for error, status in ((errno.ENOSPC, 507), (errno.EIO, 503)):
        def fail(file, digest, data, error=error):
            raise OSError(error, "injected")

        monkeypatch.setattr(files_module, "_write_hashed", fail)
        reply = await put(client, job_id, "a.png", b"x" * 32768, lease_id=lease_id)
        await error_of(reply, status)
        assert reply.headers["Retry-After"] == "5"
    monkeypatch.undo()
    assert [p.name for p in (files_root(client) / f"job-{job_id}").iterdir()] == []


async def test_a_reference_to_a_file_not_uploaded_is_refused(client):
    job_id, lease_id = await running_job(client)
    body = await error_of(await finish(client, job_id, lease_id, {"image": {"file": "a.png"}}),
                          400)
    assert "outputs.image" in body["error"] and "a.png" in body["error"]
    ref = await (await put(client, job_id, "a.png", lease_id=lease_id)).json()
    body = await error_of(await finish(client, job_id, lease_id, {
        "images": [ref, {"file": "b.png"}]}), 400)
    assert "outputs.images[1]" in body["error"]
    body = await error_of(await finish(client, job_id, lease_id, {
        "image": {**ref, "sha256": "0" * 64}}), 400)
    assert "sha256" in body["error"]
    body = await error_of(await finish(client, job_id, lease_id, {"image": {"file": "../x"}}),
                          400)
    assert "outputs.image" in body["error"]
    # In a batch, only that job's report is refused.
    reply = await client.post("/api/v1/worker/results", headers=WORKER, json={"reports": [
        {"job_id": job_id, "lease_id": lease_id, "outputs": {"image": {"file": "nope.png"}}}]})
    (answer,) = (await reply.json())["answers"]
    assert not answer["ok"] and "outputs.image" in answer["error"]
    assert (await (await client.get(f"/api/v1/jobs/{job_id}")).json())["status"] == "running"


async def test_only_media_outputs_hold_references(client):
    # `text` is a string output: an object with a "file" key there is the worker's own value.
    job_id, lease_id = await running_job(client)
    notes = {"file": "notes.txt", "page": 3}
    assert (await finish(client, job_id, lease_id, {"text": notes})).status == 200
    assert (await (await client.get(f"/api/v1/jobs/{job_id}")).json())["outputs"]["text"] == notes


async def test_a_reference_to_another_jobs_file_is_rewritten_or_refused(client):
    other_id, other_lease = await running_job(client)
    theirs = await (await put(client, other_id, "a.png", lease_id=other_lease)).json()
    job_id, lease_id = await running_job(client)
    # This job has no a.png: refused, though the url names a file that exists.
    await error_of(await finish(client, job_id, lease_id, {"image": theirs}), 400)
    ours = await (await put(client, job_id, "a.png", b"ours", lease_id=lease_id)).json()
    # With a.png of its own, the url (and size, type) come from this job's file, not the
    # worker's; the sha256 of the other file would not match, so a worker's sha256 is dropped.
    forged = {"file": "a.png", "url": theirs["url"], "bytes": 1, "media_type": "video/mp4"}
    assert (await finish(client, job_id, lease_id, {"image": forged})).status == 200
    job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["outputs"]["image"] == ours
    assert await (await client.get(job["outputs"]["image"]["url"])).read() == b"ours"


async def test_data_urls_of_older_workers_stay_accepted(client):
    job_id, lease_id = await running_job(client)
    url = "data:image/png;base64,iVBORw0KGgo="
    assert (await finish(client, job_id, lease_id, {"image": url})).status == 200
    job = await (await client.get(f"/api/v1/jobs/{job_id}?inline=1")).json()
    assert job["outputs"]["image"] == url


async def test_progress_references_are_checked_too(client):
    job_id, lease_id = await running_job(client)
    preview = {"preview": {"file": "p.png"}}
    reply = await client.post(f"/api/v1/worker/jobs/{job_id}/progress", headers=WORKER,
                              json={"lease_id": lease_id, "outputs": preview})
    assert "outputs.preview" in (await error_of(reply, 400))["error"]
    ref = await (await put(client, job_id, "p.png", lease_id=lease_id)).json()
    reply = await client.post(f"/api/v1/worker/jobs/{job_id}/progress", headers=WORKER,
                              json={"lease_id": lease_id, "outputs": {"preview": ref}})
    assert reply.status == 200
    job = await (await client.get(f"/api/v1/jobs/{job_id}?inline=1")).json()
    assert decode_data_url(job["progress_outputs"]["preview"]) == ("image/png", PNG)


# ----- files live and die with their job


async def test_files_go_when_the_job_is_forgotten(tmp_path):
    client = await serve(ttl_s=0.001, files_dir=str(tmp_path / "files"))
    try:
        job_id, lease_id = await running_job(client)
        ref = await (await put(client, job_id, "a.png", lease_id=lease_id)).json()
        assert (await finish(client, job_id, lease_id, {"image": ref})).status == 200
        folder = tmp_path / "files" / f"job-{job_id}"
        assert folder.is_dir()
        store = client.server.app[STORE]
        while await store.get(job_id) is not None:  # swept once its TTL of 1 ms has passed
            await store.sweep()
        assert not folder.exists()
        await error_of(await client.get(ref["url"]), 404)
    finally:
        await client.close()


async def test_files_survive_a_restart_and_orphans_do_not(tmp_path):
    db, root = tmp_path / "jobs.sqlite3", tmp_path / "files"
    client = await serve(SqliteJournal(db), files_dir=str(root))
    try:
        job_id, lease_id = await running_job(client)
        ref = await (await put(client, job_id, "a.png", lease_id=lease_id)).json()
        assert (await finish(client, job_id, lease_id, {"image": ref})).status == 200
    finally:
        await client.close()
    # Left behind by a crash or a job gone: a folder of no job, stray bytes of an upload
    # cut off, a record whose bytes are missing.
    (root / "job-ghost").mkdir()
    (root / "job-ghost" / "a.png").write_text("{}")
    (root / f"job-{job_id}" / ".data-cutoff").write_bytes(b"half")
    (root / f"job-{job_id}" / "b.png").write_text(
        '{"media_type": "image/png", "bytes": 4, "sha256": "", "data": ".data-missing"}')

    client = await serve(SqliteJournal(db), files_dir=str(root))
    try:
        reply = await client.get(ref["url"])
        assert reply.status == 200 and await reply.read() == PNG
        assert reply.headers["ETag"] == f'"{ref["sha256"]}"'
        assert not (root / "job-ghost").exists()
        left = sorted(p.name for p in (root / f"job-{job_id}").iterdir())
        assert left[1:] == ["a.png"] and left[0].startswith(".data-") and len(left) == 2
        await error_of(await client.get(f"/api/v1/jobs/{job_id}/files/b.png"), 404)
    finally:
        await client.close()


async def test_a_store_with_a_journal_of_its_own_keeps_files_in_a_temporary_folder():
    client = await serve()
    root = files_root(client)
    try:
        job_id, lease_id = await running_job(client)
        assert (await put(client, job_id, "a.png", lease_id=lease_id)).status == 200
        assert root.is_dir()
    finally:
        await client.close()
    assert not root.exists()


# ----- the Python client


async def done_with_files(client, endpoint="echo", worker=WORKER, client_key=None):
    """A finished job whose outputs are `image` (a file) and `images` (a file and a data URL)."""
    job_id, lease_id = await running_job(client, endpoint, worker, client_key)
    ref = await (await put(client, job_id, "image-0.png", lease_id=lease_id,
                           headers=worker)).json()
    outputs = {"image": ref, "images": [ref, "data:,x"], "text": "t"}
    assert (await finish(client, job_id, lease_id, outputs, worker)).status == 200
    return job_id


async def test_the_async_client_gives_files(client, tmp_path):
    job_id = await done_with_files(client, "keyed", KEYED_WORKER, CLIENT)
    async with AsyncClient(str(client.make_url("")), key="client-key") as api:
        outputs = await api.result(job_id)
        image = outputs["image"]
        assert isinstance(image, AsyncFile) and outputs["images"][0] == image
        assert (image.name, image.media_type, image.size) == ("image-0.png", "image/png", len(PNG))
        assert outputs["images"][1] == "data:,x" and outputs["text"] == "t"
        assert await image.read() == PNG
        assert (await image.save(tmp_path / "a.png")).read_bytes() == PNG
        assert await api.download(job_id, "image-0.png") == PNG
        assert await api.download(job_id, image, tmp_path / "b.png") == tmp_path / "b.png"
        assert (tmp_path / "b.png").read_bytes() == PNG
        with pytest.raises(NotFoundError):
            await api.download(job_id, "other.png")
        inline = await api.result(job_id, inline=True)
        assert decode_data_url(inline["image"]) == ("image/png", PNG)
    async with AsyncClient(str(client.make_url(""))) as keyless:  # the job's key is needed
        with pytest.raises(AuthError):
            await keyless.download(job_id, "image-0.png")


async def test_the_blocking_client_gives_files(client, tmp_path):
    job_id = await done_with_files(client)

    def use_it():  # (in a thread: the server runs on this test's loop)
        with Client(str(client.make_url(""))) as api:
            outputs = api.result(job_id)
            assert isinstance(outputs["image"], File)
            assert outputs["image"].read() == PNG
            assert outputs["image"].save(tmp_path / "a.png").read_bytes() == PNG
            assert api.download(job_id, "image-0.png") == PNG
            assert api.result(job_id, inline=True)["image"].startswith("data:image/png;base64,")

    await asyncio.to_thread(use_it)
