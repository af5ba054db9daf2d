"""The Python client (jobhive.client) and its command line, on a real server and noop worker."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, hold_port
from e2e_http import echo_variant
from PIL import Image

from jobhive import (
    AsyncClient,
    AuthError,
    Client,
    ConflictError,
    ConnectionFailed,
    Event,
    JobCanceled,
    JobFailed,
    NotFoundError,
    QueueFullError,
    TooLargeError,
    ValidationError,
    WaitTimeout,
    backoff_delay_s,
)

FAST_RETRIES = {"max_retries": 40, "backoff_s": 0.05, "max_backoff_s": 0.5}


@pytest.fixture
def echo_url(start_server, start_worker) -> str:
    """A server with the echo endpoint and a noop worker serving it."""
    server = start_server()
    start_worker(server.url)
    return server.url


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jobhive.client" and
            "retry" in r.getMessage()]


def check_progress_then_result(events: list[Event], text: str) -> None:
    """queued/progress events in version order with rising steps, then one result."""
    names = [e.event for e in events]
    assert names[-1] == "result", names
    assert set(names[:-1]) <= {"queued", "progress"}, names
    versions = [e.job.version for e in events]
    assert versions == sorted(versions), versions
    steps = [e.job.progress_outputs["step"] for e in events
             if e.event == "progress" and e.job.progress_outputs]
    assert len(steps) >= 2, names
    assert steps == sorted(set(steps)), steps  # each step once, in order
    previews = [e.job.progress_outputs["preview"] for e in events if e.job.progress_outputs]
    assert all(p.startswith("data:image/") for p in previews)
    final = events[-1].job
    assert final.status == "done" and final.outputs["text"] == text
    assert final.progress == 100


# ----- submit, wait, result


async def test_async_submit_then_result(echo_url):
    async with AsyncClient(echo_url) as client:
        job = await client.submit("echo", {"text": "hello"})
        assert job.endpoint == "echo" and job.status in ("queued", "running", "done")
        assert (await client.result(job.job_id, timeout_s=20))["text"] == "hello"


async def test_submit_with_wait_answers_with_the_finished_job(echo_url):
    async with AsyncClient(echo_url) as client:
        job = await client.submit("echo", {"text": "one request"}, wait_s=20)
        assert job.status == "done" and job.finished
        assert job.outputs["text"] == "one request"
        assert await client.result(job) == job.outputs


def test_sync_submit_wait_and_result(echo_url):
    with Client(echo_url) as client:
        job = client.submit("echo", {"text": "sync", "delay_s": 0.3})
        finished = client.wait(job.job_id, timeout_s=20)
        assert finished.status == "done" and finished.outputs["text"] == "sync"
        assert finished.started_at_ms <= finished.finished_at_ms
        assert client.result(job) == finished.outputs
        assert "echo" in [e["name"] for e in client.endpoints()]
        assert "text" in json.dumps(client.endpoint("echo"))


def test_wait_times_out_while_no_worker_runs(start_server):
    server = start_server()
    with Client(server.url) as client:
        job = client.submit("echo", {"text": "nobody home"})
        with pytest.raises(WaitTimeout) as caught:
            client.result(job, timeout_s=0.5)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.job.status == "queued"
    assert caught.value.job.queue_position == 0


def test_a_repeated_job_id_returns_the_same_job(start_server):
    server = start_server()
    with Client(server.url) as client:
        first = client.submit("echo", {"text": "a"}, job_id="my-job.1")
        again = client.submit("echo", {"text": "a"}, job_id="my-job.1")
        assert first.job_id == again.job_id == "my-job.1"
        assert again.created_at_ms == first.created_at_ms
        with pytest.raises(ConflictError) as caught:
            client.submit("echo", {"text": "b"}, job_id="my-job.1")
        assert caught.value.status == 409


# ----- stream


@pytest.mark.parametrize("sse", [True, False], ids=["sse", "long-poll"])
async def test_stream_yields_progress_in_order_then_result(echo_url, sse):
    async with AsyncClient(echo_url) as client:
        job = await client.submit("echo", {"text": "streamed", "delay_s": 1.2, "steps": 4})
        events = [event async for event in client.stream(job, sse=sse)]
    check_progress_then_result(events, "streamed")


def test_sync_stream_yields_progress_in_order_then_result(echo_url):
    with Client(echo_url) as client:
        job = client.submit("echo", {"text": "sync stream", "delay_s": 1.2, "steps": 4})
        events = list(client.stream(job.job_id))
    check_progress_then_result(events, "sync stream")


async def test_stream_carries_a_data_line_of_megabytes(echo_url):
    # A noise image does not compress, so its data URL is megabytes long: the SSE line that
    # carries the result (asked for inline) is far past aiohttp's readline limit (128 KiB).
    image = Image.frombytes("RGB", (1024, 1024), random.Random(0).randbytes(1024 * 1024 * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    async with AsyncClient(echo_url) as client:
        data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        job = await client.submit("echo", {"image": data_url})
        events = [event async for event in client.stream(job, inline=True)]
    assert events[-1].event == "result"
    assert events[-1].job.outputs["image"].startswith("data:image/")
    assert len(events[-1].job.outputs["image"]) > 1_000_000


class CuttingProxy:
    """A TCP proxy in front of the server that drops the client's connection once, right after
    passing on the `cut_after`-th SSE progress event; it notes the Last-Event-ID requests."""

    def __init__(self, server_url: str, cut_after: int) -> None:
        self.target_port = int(server_url.rsplit(":", 1)[1])
        self.cut_after = cut_after
        self.progress_events = 0
        self.cuts = 0
        self.last_event_ids: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Task] = []

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()  # the pipes see the end of their streams and return
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()

    async def _handle(self, client_reader, client_writer) -> None:
        self._handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        server_reader, server_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers += [client_writer, server_writer]
        await asyncio.gather(
            self._pipe(client_reader, server_writer, upstream=True),
            self._pipe(server_reader, client_writer, upstream=False),
            return_exceptions=True,
        )

    async def _pipe(self, reader, writer, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if upstream:
                    self.last_event_ids += re.findall(r"(?i)last-event-id: *(\d+)", data.decode())
                    continue
                self.progress_events += data.count(b"event: progress")
                if self.progress_events >= self.cut_after and not self.cuts:
                    self.cuts += 1
                    return  # closing this side ends the other pipe too
        finally:
            writer.close()


async def test_stream_resumes_with_last_event_id_after_a_dropped_connection(echo_url):
    async with (
        CuttingProxy(echo_url, cut_after=2) as proxy,
        AsyncClient(proxy.url, **FAST_RETRIES) as client,
    ):
        job = await client.submit("echo", {"text": "resumed", "delay_s": 1.2, "steps": 6})
        events = [event async for event in client.stream(job)]
    assert proxy.cuts == 1
    assert proxy.last_event_ids  # the reconnect said where it left off
    assert int(proxy.last_event_ids[0]) in [e.job.version for e in events]
    check_progress_then_result(events, "resumed")  # and nothing came twice


async def test_stream_reconnects_after_the_server_restarts(
    start_server, start_worker, caplog, held_port
):
    caplog.set_level(logging.INFO, logger="jobhive.client")
    # held_port stays bound (not listening) for the whole test, so the port is not free for
    # another process while the server is down between the kill and the restart.
    port = held_port
    server = start_server(port=port)
    start_worker(server.url)
    events = []
    async with AsyncClient(server.url, **FAST_RETRIES) as client:
        job = await client.submit("echo", {"text": "survivor", "delay_s": 2, "steps": 8})
        async for event in client.stream(job):
            events.append(event)
            previews = [e for e in events if e.job.progress_outputs]
            if len(previews) == 3 and server.proc.poll() is None:
                server.kill()  # a crash mid-job: the job waits for its worker to report again
                start_server(port=port)  # same store file, same port
    assert events[-1].event == "result" and events[-1].job.outputs["text"] == "survivor"
    assert events[-1].job.attempts >= 1
    assert any("/events" in line for line in retry_lines(caplog))  # SSE reconnected


# ----- cancel, failure, refusals


def test_cancel_a_running_job_makes_result_raise_job_canceled(echo_url):
    with Client(echo_url) as client:
        job = client.submit("echo", {"delay_s": 2, "steps": 20})
        for event in client.stream(job):
            if event.event == "progress":
                break
        canceled = client.cancel(job)
        assert canceled.status == "canceled"
        with pytest.raises(JobCanceled) as caught:
            client.result(job, timeout_s=10)
        assert caught.value.job.job_id == job.job_id
        assert [e.event for e in client.stream(job)] == ["error"]


async def test_cancel_a_queued_job(start_server):
    server = start_server()
    async with AsyncClient(server.url) as client:
        job = await client.submit("echo", {"text": "never run"})
        assert (await client.cancel(job.job_id)).status == "canceled"
        with pytest.raises(JobCanceled):
            await client.result(job)


async def test_failed_job_raises_job_failed_with_the_worker_message(echo_url):
    async with AsyncClient(echo_url) as client:
        job = await client.submit("echo", {"fail": "out of cheese"})
        with pytest.raises(JobFailed, match="out of cheese") as caught:
            await client.result(job, timeout_s=20)
        events = [event async for event in client.stream(job)]
    assert caught.value.job.status == "failed"
    assert "out of cheese" in caught.value.job.error
    assert events[-1].event == "error"


async def test_bad_inputs_raise_validation_error_with_a_message_per_field(start_server):
    server = start_server()
    async with AsyncClient(server.url) as client:
        with pytest.raises(ValidationError) as caught:
            await client.submit("echo", {"text": "fine", "steps": 1000, "delay_s": "soon"})
        with pytest.raises(NotFoundError):
            await client.submit("no-such-endpoint", {})
        with pytest.raises(NotFoundError):
            await client.get("no-such-job")
    error = caught.value
    assert error.status == 400
    assert set(error.fields) == {"steps", "delay_s"}
    assert "1000" in error.fields["steps"] and "100" in error.fields["steps"]
    assert "steps" in str(error) and "delay_s" in str(error)


def test_client_keys_raise_auth_error_without_the_right_key(
    endpoints_dir, start_server, start_worker
):
    echo_variant(endpoints_dir, "private", CLIENTS={"auth_keys": ["key-a", "key-b"]})
    server = start_server()
    start_worker(server.url)
    for key in (None, "wrong-key"):
        with Client(server.url, key=key) as client, pytest.raises(AuthError) as caught:
            client.submit("private", {"text": "secret"})
        assert caught.value.status == 401
    with Client(server.url, key="key-a") as owner, Client(server.url, key="key-b") as other:
        job = owner.submit("private", {"text": "secret"})
        assert owner.result(job, timeout_s=20)["text"] == "secret"
        with pytest.raises(AuthError) as caught:
            other.get(job)
        assert caught.value.status == 403


def test_a_full_queue_and_a_large_body_raise_typed_errors(endpoints_dir, start_server):
    echo_variant(endpoints_dir, "tiny", ENDPOINT={"max_queue_length": 1, "max_body_bytes": 2000})
    server = start_server()
    with Client(server.url) as client:
        client.submit("tiny", {"text": "first"})
        with pytest.raises(QueueFullError) as full:
            client.submit("tiny", {"text": "second"})
        with pytest.raises(TooLargeError) as large:
            client.submit("tiny", {"text": "x" * 5000})
    assert full.value.status == 429 and full.value.retry_after_s > 0
    assert large.value.status == 413 and "2000" in large.value.message


# ----- retries


def test_backoff_doubles_with_jitter_up_to_the_cap():
    for attempt, full_s in [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 5.0)]:
        delays = [backoff_delay_s(attempt, 0.25, 5.0) for _ in range(200)]
        assert all(full_s / 2 <= d <= full_s for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 100  # jittered, not one fixed value


async def test_submit_retries_until_the_server_comes_up(
    start_server, start_worker, caplog, held_port
):
    caplog.set_level(logging.INFO, logger="jobhive.client")
    first_retry = asyncio.Event()
    handler = logging.Handler()
    handler.emit = lambda record: first_retry.set()  # type: ignore[method-assign]
    logging.getLogger("jobhive.client").addHandler(handler)
    port = held_port  # refused until the server listens on it; nobody else can take it
    try:
        async with AsyncClient(f"http://127.0.0.1:{port}", **FAST_RETRIES) as client:
            submit = asyncio.create_task(client.submit("echo", {"text": "early bird"}))
            await asyncio.wait_for(first_retry.wait(), 10)  # the first try found no server
            assert not submit.done()
            server = await asyncio.to_thread(start_server, port=port)
            start_worker(server.url)
            job = await submit
            assert (await client.result(job, timeout_s=20))["text"] == "early bird"
    finally:
        logging.getLogger("jobhive.client").removeHandler(handler)
    assert "ClientConnectorError" in retry_lines(caplog)[0]


async def test_connection_failed_when_the_retries_run_out(caplog, refused_url):
    caplog.set_level(logging.INFO, logger="jobhive.client")
    async with AsyncClient(refused_url, max_retries=2, backoff_s=0.01) as client:
        with pytest.raises(ConnectionFailed, match="tried 3 times"):
            await client.submit("echo", {})
    assert len(retry_lines(caplog)) == 2


# ----- several servers sharing one queue


def trying_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jobhive.client" and
            "; trying " in r.getMessage()]


def red_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_client_moves_past_a_refused_server(echo_url, refused_url, caplog):
    caplog.set_level(logging.INFO, logger="jobhive.client")
    png = red_png()
    image = "data:image/png;base64," + base64.b64encode(png).decode()
    with Client([refused_url, echo_url]) as client:
        assert client.server_urls == (refused_url, echo_url)
        assert client.server_url == refused_url  # until it fails
        job = client.submit("echo", {"text": "second server", "image": image})
        outputs = client.result(job, timeout_s=20)
        assert client.server_url == echo_url
        assert outputs["text"] == "second server"
        assert outputs["image"].read() == png  # a file's URL is a path: on the current server
    assert retry_lines(caplog) == []  # no backoff: on to the next server at once
    assert len(trying_lines(caplog)) == 1, trying_lines(caplog)
    assert re.fullmatch(rf"POST {refused_url}/\S+: ClientConnectorError: .*; trying {echo_url}",
                        trying_lines(caplog)[0])


async def test_async_client_takes_servers_separated_by_commas(echo_url, refused_url):
    async with AsyncClient(f"{refused_url}, {echo_url}/") as client:
        assert client.server_urls == (refused_url, echo_url)
        job = await client.submit("echo", {"text": "streamed", "delay_s": 1.2, "steps": 4})
        events = [event async for event in client.stream(job)]
        assert client.server_url == echo_url
    check_progress_then_result(events, "streamed")


def test_client_survives_one_server_dying(start_server, start_worker, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jobhive.client")
    # Two SQLite servers share no jobs, so each job is followed where it was submitted.
    first = start_server(store=tmp_path / "first.sqlite3")
    second = start_server(store=tmp_path / "second.sqlite3")
    for server in (first, second):
        start_worker(server.url)
    with Client([first.url, second.url]) as client:
        assert client.result(client.submit("echo", {"text": "one"}), timeout_s=20)["text"] == "one"
        assert client.server_url == first.url

        first.kill()
        job = client.submit("echo", {"text": "two"})
        assert client.server_url == second.url
        assert client.result(job, timeout_s=20)["text"] == "two"
    assert retry_lines(caplog) == []
    assert [line.split(": ")[0] for line in trying_lines(caplog)] == [
        f"POST {first.url}/api/v1/endpoints/echo/jobs"]


async def test_connection_failed_after_every_server_failed_each_round(caplog, refused_url):
    caplog.set_level(logging.INFO, logger="jobhive.client")
    with hold_port() as other_port:
        urls = [refused_url, f"http://127.0.0.1:{other_port}"]
        async with AsyncClient(urls, max_retries=2, backoff_s=0.01) as client:
            with pytest.raises(ConnectionFailed, match="tried 6 times"):
                await client.submit("echo", {})
    assert len(retry_lines(caplog)) == 2  # a backoff after each round but the last
    assert len(trying_lines(caplog)) == 3  # and the next server at once within a round


def test_a_client_needs_a_server_url():
    for nothing in ("", " , ", []):
        with pytest.raises(ValueError, match="no server URL"):
            AsyncClient(nothing)
        with pytest.raises(ValueError, match="no server URL"):
            Client(nothing)


# ----- the command line


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobhive", *args],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )


def test_cli_prints_the_outputs_and_a_progress_bar(echo_url):
    done = run_cli("echo", "text=hi", "delay_s=0.6", "steps=3", "--server", echo_url)
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)
    assert outputs["text"] == "hi" and outputs["steps"] == 3 and outputs["delay_s"] == 0.6
    assert re.search(r"echo: 100%\|█+\|", done.stderr), done.stderr
    assert "done" in done.stderr


def test_cli_sends_a_file_as_a_data_url_and_saves_the_result_file(echo_url, tmp_path: Path):
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "red.png")
    args = ("echo", f"image=@{tmp_path / 'red.png'}", 'text="42"', "--server", echo_url)
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)
    assert outputs["image"]["media_type"] == "image/png"  # the echoed image came back a file
    assert outputs["text"] == "42"  # JSON, so quoted: a string
    saved = run_cli(*args, "--save", str(tmp_path / "out"))
    assert saved.returncode == 0, saved.stderr
    path = Path(json.loads(saved.stdout)["image"])
    assert path.read_bytes() == (tmp_path / "red.png").read_bytes()
    inline = json.loads(run_cli(*args, "--inline").stdout)
    assert inline["image"].startswith("data:image/png;base64,")


def test_cli_takes_servers_separated_by_commas(echo_url, refused_url, tmp_path: Path):
    (tmp_path / "red.png").write_bytes(red_png())
    done = run_cli("echo", "text=hi", f"image=@{tmp_path / 'red.png'}",
                   "--server", f"{refused_url},{echo_url}")
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)
    assert outputs["text"] == "hi"
    assert outputs["image"]["url"].startswith(f"{echo_url}/")  # whole, on the server that served
    nowhere = run_cli("echo", "text=hi", "--server", ",")
    assert nowhere.returncode == 2 and "no server URL" in nowhere.stderr


def test_cli_exits_non_zero_with_the_error(echo_url):
    failed = run_cli("echo", "fail=out of cheese", "--server", echo_url)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert "out of cheese" in failed.stderr
    refused = run_cli("echo", "steps=1000", "--server", echo_url)
    assert refused.returncode == 1
    assert "steps: must be" in refused.stderr
    usage = run_cli("echo", "not-a-pair", "--server", echo_url)
    assert usage.returncode == 2 and "field=value" in usage.stderr


def test_the_readme_example_runs_from_the_folder_that_holds_the_clone(echo_url, tmp_path):
    """Run from the folder `git clone` left the user in, the clone's own folder (named jobhive
    there, and no package) must not shadow the installed one (setup.sh's .pth line)."""
    readme = (REPO / "README.md").read_text()
    example = readme.split("## Python client", 1)[1].split("```python\n", 1)[1].split("```")[0]
    assert 'Client("http://127.0.0.1:7777"' in example
    (tmp_path / "jobhive").symlink_to(REPO, target_is_directory=True)
    ran = subprocess.run(
        [sys.executable, "-c", example.replace("http://127.0.0.1:7777", echo_url)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "hello"
