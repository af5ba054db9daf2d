"""Helpers of the end-to-end HTTP tests (test_api.py, test_worker_protocol.py and others).

`echo_variant` writes a copy of the echo endpoint with some settings changed; `read_events`
reads a Server-Sent Events stream; `RawWorker` speaks the worker protocol by hand, so a test
decides when a job is taken, reported on and finished.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from conftest import ECHO_WORKER_KEY, REPO, write_endpoint

from jobhive.protocol import FINISHED_STATUSES

ECHO_TOML = (REPO / "endpoints" / "echo" / "endpoint.toml").read_text()
FINISHED = tuple(sorted(FINISHED_STATUSES))  # a job's statuses once it ended


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _set_in_section(text: str, section: str, settings: dict[str, Any]) -> str:
    """Sets `key = value` lines of one `[SECTION]` table, replacing or adding each key."""
    lines = text.splitlines()
    start = lines.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    body = lines[start + 1 : end]
    for key, value in settings.items():
        line = f"{key} = {_toml_value(value)}"
        matches = [i for i, text in enumerate(body) if text.split("=")[0].strip() == key]
        if matches:
            body[matches[0]] = line
        else:
            body.insert(0, line)
    return "\n".join([*lines[: start + 1], *body, *lines[end:]]) + "\n"


def echo_variant(folder: Path, name: str, **sections: dict[str, Any]) -> Path:
    """Writes folder/name/endpoint.toml: the echo endpoint with these settings changed.

    Args:
        folder (Path): the endpoints folder (the `endpoints_dir` fixture).
        name (str): the new endpoint's name (its folder's name).
        **sections (dict[str, Any]): per table (`ENDPOINT`, `WORKER`, `CLIENTS`), the keys to set.
            Unless WORKER.job_type is given, the copy keeps job type "echo", so the noop worker
            serves it.

    Returns:
        Path: the endpoint.toml written.
    """
    text = ECHO_TOML
    for section, settings in sections.items():
        text = _set_in_section(text, section, settings)
    return write_endpoint(folder, name, text)


@dataclass
class Event:
    """One Server-Sent Event; `data` is the job as JSON."""

    event: str
    id: int
    data: dict[str, Any]


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of an event stream's lines (comments, such as keepalives, skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        elif fields:
            yield Event(fields["event"], int(fields["id"]), json.loads(fields["data"]))
            fields = {}


def whole_progress(events: Iterable[Event]) -> list[dict[str, Any]]:
    """The progress outputs of each `progress` event that has some, its texts whole: after a
    stream's first event, a text comes as its new part from `progress_offsets`."""
    held: dict[str, Any] = {}
    wholes = []
    for event in events:
        if event.event == "progress" and event.data["progress_outputs"]:
            offsets = event.data.get("progress_offsets", {})
            held = {key: held[key][:offsets[key]] + value if key in offsets else value
                    for key, value in event.data["progress_outputs"].items()}
            wholes.append(held)
    return wholes


def read_events(
    url: str,
    headers: dict[str, str] | None = None,
    until: Callable[[Event], bool] = lambda e: e.event in ("result", "error"),
    collected: list[Event] | None = None,
    timeout_s: float = 30.0,
) -> list[Event]:
    """Reads a job's event stream until `until(event)` holds or the server ends the stream.

    Args:
        url (str): the events URL.
        headers (dict[str, str] | None): extra request headers (Last-Event-ID, Authorization).
        until (Callable[[Event], bool]): stop after the first event it accepts.
        collected (list[Event] | None): where events are appended as they come (another thread
            may watch it); a new list when None.
        timeout_s (float): the longest wait for any one read.

    Returns:
        list[Event]: every event read, in order.
    """
    events = collected if collected is not None else []
    with (
        httpx.Client(timeout=timeout_s) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in parse_events(response.iter_lines()):
            events.append(event)
            if until(event):
                break
    return events


class RawWorker:
    """A worker played by the test: each call is one request of the worker protocol.

    Args:
        http (httpx.Client): the client to send with.
        url (str): the server's base URL.
        worker_id (str): the worker's name.
        key (str): its worker key.
        job_types (Iterable[str]): what it polls for.
    """

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        worker_id: str = "raw-worker",
        key: str = ECHO_WORKER_KEY,
        job_types: Iterable[str] = ("echo",),
    ) -> None:
        self.http = http
        self.url = url
        self.worker_id = worker_id
        self.headers = {"Authorization": f"Bearer {key}"}
        self.job_types = list(job_types)

    def poll(self, max_batch: int = 1, wait_s: float = 10.0) -> httpx.Response:
        body = {
            "worker_id": self.worker_id,
            "job_types": self.job_types,
            "max_batch": max_batch,
            "wait_s": wait_s,
            "info": {"model": "raw"},
        }
        return self.http.post(f"{self.url}/api/v1/worker/jobs", json=body, headers=self.headers)

    def take(self, max_batch: int = 1, wait_s: float = 10.0) -> list[dict[str, Any]]:
        """Polls and insists on a grant; returns the jobs granted."""
        reply = self.poll(max_batch, wait_s)
        assert reply.status_code == 200, (reply.status_code, reply.text)
        return reply.json()["jobs"]

    def progress(self, job: dict[str, Any], **entry: Any) -> httpx.Response:
        return self.http.post(
            f"{self.url}/api/v1/worker/jobs/{job['job_id']}/progress",
            json={"lease_id": job["lease_id"], **entry},
            headers=self.headers,
        )

    def result(self, job: dict[str, Any], **entry: Any) -> httpx.Response:
        return self.http.post(
            f"{self.url}/api/v1/worker/jobs/{job['job_id']}/result",
            json={"lease_id": job["lease_id"], **entry},
            headers=self.headers,
        )

    def batch_progress(self, reports: list[dict[str, Any]]) -> httpx.Response:
        return self.http.post(
            f"{self.url}/api/v1/worker/progress", json={"reports": reports}, headers=self.headers
        )

    def batch_results(self, reports: list[dict[str, Any]]) -> httpx.Response:
        return self.http.post(
            f"{self.url}/api/v1/worker/results", json={"reports": reports}, headers=self.headers
        )


def get_job(http: httpx.Client, url: str, job_id: str, wait_s: float = 0) -> dict[str, Any]:
    """The job as `GET /api/v1/jobs/{id}` shows it (long-polling with `?wait=` when wait_s)."""
    params = {"wait": f"{wait_s:g}"} if wait_s else None
    reply = http.get(f"{url}/api/v1/jobs/{job_id}", params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait_status(
    http: httpx.Client, url: str, job_id: str, statuses: Iterable[str] = FINISHED,
    timeout_s: float = 30,
) -> dict[str, Any]:
    """Long-polls the job until its status is one of `statuses`; returns the job."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(http, url, job_id)
        if job["status"] in statuses:
            return job
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"job {job_id} still {job['status']}, not {statuses}: {job}")
        get_job(http, url, job_id, wait_s=min(5.0, remaining))


def entry(job: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """One entry of a batch report about a granted job."""
    return {"job_id": job["job_id"], "lease_id": job["lease_id"], **fields}


@contextlib.contextmanager
def explained(*processes: Any) -> Iterator[None]:
    """On failure, prints what the server and worker processes said (pytest shows it)."""
    try:
        yield
    except BaseException:
        for process in processes:
            print(f"----- output of {process.proc.args[1:4]}:\n{process.text}")
        raise


def assert_error(reply: httpx.Response, status: int, *fields: str) -> dict[str, Any]:
    """Checks an error reply: the status, a JSON `error`, and each named field in `fields`."""
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body = reply.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    for name in fields:
        assert name in body.get("fields", {}), (name, body)
        assert isinstance(body["fields"][name], str) and body["fields"][name], body
    return body


def assert_declared(http: httpx.Client, url: str, endpoint: str, outputs: dict[str, Any] | None,
                    progress_outputs: Iterable[dict[str, Any] | None] = ()) -> None:
    """What a worker sent names only fields its endpoint declares in [OUTPUTS] and
    [PROGRESS.OUTPUTS]: the schema that clients and the generic page read stays true."""
    schema = http.get(f"{url}/api/v1/endpoints/{endpoint}").json()
    assert set(outputs or {}) <= set(schema["outputs"]), (
        f"{endpoint} does not declare {set(outputs or {}) - set(schema['outputs'])} in [OUTPUTS]")
    for partial in progress_outputs:
        undeclared = set(partial or {}) - set(schema["progress_outputs"])
        assert not undeclared, f"{endpoint} does not declare {undeclared} in [PROGRESS.OUTPUTS]"


async def serve_app(routes: web.RouteTableDef) -> tuple[web.AppRunner, str]:
    """A small aiohttp app of `routes` on a free loopback port (a fake server for a worker
    test); returns its runner (clean it up) and URL."""
    app = web.Application()
    app.add_routes(routes)
    app_runner = web.AppRunner(app)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    port = app_runner.addresses[0][1]
    return app_runner, f"http://127.0.0.1:{port}"
