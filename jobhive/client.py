"""The Python client: `AsyncClient` (asyncio) and `Client` (the same calls, blocking).

    async with AsyncClient("http://127.0.0.1:7777") as client:
        job = await client.submit("echo", {"text": "hi", "delay_s": 1, "steps": 4})
        async for event in client.stream(job):
            print(event.event, event.job.progress)
        outputs = await client.result(job)

    with Client("http://127.0.0.1:7777") as client:
        outputs = client.result(client.submit("echo", {"text": "hi"}))
        outputs["image"].save("out.png")  # a file output: a `File` (`AsyncFile` above)

Every request is safe to repeat (submit sends a job_id of its own making, so a repeat finds the
job the first try made), so connection errors and 502/503/504 are retried with backoff. Given
several servers (API servers sharing one queue: any of them answers any request), a client moves
on to the next one at such a failure, and backs off only once a whole round of them failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from jobhive.errors import ConnectionFailed, JobCanceled, JobFailed, WaitTimeout, error_for
from jobhive.protocol import (
    DEFAULT_SERVER_URL,
    ENDPOINTS_PATH,
    EVENT_OF_STATUS,
    EVENT_PROGRESS,
    FINISHED_STATUSES,
    INLINE_PARAM,
    PROGRESS_FROM_PARAM,
    PROGRESS_OFFSETS_KEY,
    FileRef,
    JobStatus,
    ProtocolError,
    endpoint_path,
    events_path,
    is_file_ref,
    job_file_path,
    job_path,
    new_job_id,
    rebuild_progress,
    server_urls,
    submit_path,
)

log = logging.getLogger("jobhive.client")

RETRY_STATUSES = frozenset({502, 503, 504})  # a proxy or load balancer with no server behind
LONG_POLL_S = 30.0  # one `GET ?wait=` holds this long at most
_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the server shows it (`GET /api/v1/jobs/{id}`)."""

    job_id: str
    endpoint: str
    status: str  # queued, running, done, failed or canceled
    version: int  # bumped on every change; the SSE event id
    progress: float  # percent, 0 to 100
    queue_position: int | None  # jobs ahead of it while queued, else None
    progress_outputs: dict[str, Any] | None  # the latest previews or partial text
    outputs: dict[str, Any] | None  # set when done
    error: str | None  # set when failed or canceled
    attempts: int  # leases granted to workers so far
    created_at_ms: int
    started_at_ms: int | None
    finished_at_ms: int | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """The Job for the server's JSON; keys it does not know are ignored."""
        return cls(**{name: data.get(name) for name in _JOB_FIELDS})

    @property
    def finished(self) -> bool:
        """True once done, failed or canceled: nothing will change any more."""
        return self.status in FINISHED_STATUSES


_JOB_FIELDS = [f.name for f in fields(Job)]


def _rebuilt(data: dict[str, Any], held: Job | None) -> Job | None:
    """The Job of an event or long-poll whose progress texts may come as new parts
    (`progress_offsets`), joined to the texts of `held`; None when a part's start is not
    there (the server thought we held more: ask again for the whole)."""
    offsets = data.get(PROGRESS_OFFSETS_KEY)
    if offsets:
        held_outputs = held.progress_outputs if held is not None else None
        whole, missing = rebuild_progress(held_outputs, data.get("progress_outputs") or {},
                                          offsets)
        if missing:
            return None
        data["progress_outputs"] = whole
    return Job.from_json(data)


def _texts_held(job: Job | None) -> str:
    """PROGRESS_FROM_PARAM for a long-poll past this job: the length of each of its texts."""
    outputs = job.progress_outputs if job is not None and not job.finished else None
    return ",".join(f"{key}:{len(text)}" for key, text in (outputs or {}).items()
                    if isinstance(text, str) and ":" not in key and "," not in key)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of `stream()`: `queued`, `progress`, then `result` or `error`, with the job."""

    event: str
    job: Job


@dataclass(frozen=True, slots=True)
class AsyncFile:
    """A file of a job's outputs, as `AsyncClient.result` returns it in place of its reference
    (images, audio, video: the server keeps them as files, not base64 in the JSON).

    Attributes:
        name (str): its name within the job, e.g. "image-0.png" (what `download` takes).
        media_type (str): its Content-Type, e.g. "image/png".
        url (str): where the server serves it (a path on the server).
        size (int): its length in bytes.
        sha256 (str): the hex SHA-256 of its bytes.
    """

    name: str
    media_type: str
    url: str
    size: int
    sha256: str
    _client: AsyncClient = field(repr=False, compare=False)

    async def read(self) -> bytes:
        """The file's bytes (downloaded with the client's key)."""
        return await self._client._request("GET", self.url, raw=True)

    async def save(self, path: str | Path) -> Path:
        """Downloads the file to `path` (a file; replaced if there); returns the path."""
        return await _write(Path(path), await self.read())

    def to_json(self) -> dict[str, Any]:
        """The file reference as the server sent it."""
        return FileRef(self.name, self.url, self.media_type, self.size, self.sha256).to_json()


@dataclass(frozen=True, slots=True)
class File:
    """A file of a job's outputs, as `Client.result` returns it: AsyncFile's attributes, with
    `read()` and `save(path)` that block."""

    name: str
    media_type: str
    url: str
    size: int
    sha256: str
    _client: Client = field(repr=False, compare=False)

    def read(self) -> bytes:
        """The file's bytes (downloaded with the client's key)."""
        return self._client._call(self._client._client._request("GET", self.url, raw=True))

    def save(self, path: str | Path) -> Path:
        """Downloads the file to `path` (a file; replaced if there); returns the path."""
        path = Path(path)
        path.write_bytes(self.read())
        return path

    def to_json(self) -> dict[str, Any]:
        """The file reference as the server sent it."""
        return FileRef(self.name, self.url, self.media_type, self.size, self.sha256).to_json()


async def _write(path: Path, data: bytes) -> Path:
    await asyncio.to_thread(path.write_bytes, data)
    return path


def _outputs_of(finished: Job, make_file: Callable[[FileRef], Any]) -> dict[str, Any]:
    """A finished job's outputs, file references made into files; raises if it did not end
    done (JobFailed, JobCanceled)."""
    if finished.status == JobStatus.FAILED:
        raise JobFailed(finished)
    if finished.status == JobStatus.CANCELED:
        raise JobCanceled(finished)
    return _with_files(finished.outputs or {}, make_file)


def _with_files(outputs: dict[str, Any], make: Callable[[FileRef], Any]) -> dict[str, Any]:
    """The outputs with each file reference (a value, or an item of a list value) made into
    `make(ref)`; anything else (data URLs too) as it is."""

    def one(value: Any) -> Any:
        if not is_file_ref(value):
            return value
        try:
            return make(FileRef.from_json(value))
        except ProtocolError:  # not a reference after all: the value as it came
            return value

    return {key: [one(v) for v in value] if isinstance(value, list) else one(value)
            for key, value in outputs.items()}


def _file_name(file: str | AsyncFile | File) -> str:
    return file.name if isinstance(file, AsyncFile | File) else file


def backoff_delay_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait before retry number `attempt` (0 for the first retry).

    Args:
        attempt (int): how many retries came before this one.
        base_s (float): the wait before the first retry, in seconds.
        max_s (float): the cap, in seconds.

    Returns:
        float: base_s doubled per attempt, capped at max_s, times a random 0.5 to 1 (jitter, so
        many clients cut off together do not come back together).
    """
    return min(max_s, base_s * 2**attempt) * random.uniform(0.5, 1.0)


def _job_id(job: str | Job) -> str:
    return job.job_id if isinstance(job, Job) else job


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def _decode(response: aiohttp.ClientResponse) -> Any:
    body = await response.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # a proxy's error page, say
        return body.decode(errors="replace")


async def _sse_messages(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str, str]]:
    """(event, id, data) for each message of a text/event-stream body.

    Parsed by hand: aiohttp has no SSE client, the format is a few lines, and one data line here
    is a whole job JSON with its previews or outputs (megabytes of base64 images at times), longer
    than aiohttp's readline accepts (128 KiB), so lines are cut from the raw chunks.
    """
    buffer = bytearray()
    name, event_id, data = "", "", []
    async for chunk in content.iter_any():
        scan_from = len(buffer)  # the buffer so far holds no newline
        buffer += chunk
        while (end := buffer.find(b"\n", scan_from)) != -1:
            line = buffer[:end].rstrip(b"\r").decode()
            del buffer[: end + 1]
            scan_from = 0
            if not line:  # a blank line ends a message
                if data:
                    yield name or "message", event_id, "\n".join(data)
                name, data = "", []
                continue
            key, _, value = line.partition(":")  # ": keepalive" comments have an empty key
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                event_id = value


class AsyncClient:
    """A client of a jobhive server, on one aiohttp session (opened at the first request).

    Given several servers (API servers sharing one queue), requests go to the current one; a
    connection error or a 502/503/504 moves the client on to the next, at once, and it backs off
    only after a whole round of servers failed.

    Args:
        server_url (str | Sequence[str]): the server, e.g. "http://127.0.0.1:7777"; or several,
            as a list or tuple or separated by commas, tried in turn.
        key (str | None): the client key, sent as `Authorization: Bearer KEY`; default None.
        timeout_s (float): the limit of one request, in seconds, on top of any `wait_s` it asks
            the server to hold it; default 30.
        max_retries (int): retries of a request after a connection error or 502/503/504
            (with several servers: rounds of tries, one per server, each after a backoff);
            default 5.
        backoff_s (float): the wait before the first retry, doubled for each next one; default
            0.25.
        max_backoff_s (float): the cap on that wait; default 10.

    Attributes:
        server_urls (tuple[str, ...]): the servers, in the order they are tried.
        server_url (str): the server requests go to now.

    Raises:
        ValueError: server_url holds no URL.
    """

    def __init__(
        self,
        server_url: str | Sequence[str] = DEFAULT_SERVER_URL,
        key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 0.25,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.server_urls = server_urls(server_url)
        self._current = 0  # the index of the server requests go to
        self.key = key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def server_url(self) -> str:
        """The server requests go to now: the first of server_urls until one fails."""
        return self.server_urls[self._current]

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the HTTP session; a later call opens a new one."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        # Made here, not in __init__: an aiohttp session belongs to the loop it is made on.
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.key}"} if self.key else None
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    def _tries(self, servers: int) -> int:
        """How many tries a request gets over `servers` servers: a round per retry."""
        return servers * (self.max_retries + 1)

    async def _next_try(
        self, failed: int, servers: int, index: int | None, what: str, problem: str
    ) -> None:
        """After the `failed`-th failed try of a request (on server `index`; None: a URL of
        no server of ours): moves on to the next server, and waits only once every one of
        `servers` failed in this round."""
        if index == self._current:  # (unless another request moved on already)
            self._current = (index + 1) % len(self.server_urls)
        if failed % servers:
            log.info("%s: %s; trying %s", what, problem, self.server_url)
            return
        attempt = failed // servers - 1
        delay_s = backoff_delay_s(attempt, self.backoff_s, self.max_backoff_s)
        log.info("%s: %s; retry %d of %d in %.2f s", what, problem, attempt + 1,
                 self.max_retries, delay_s)
        await asyncio.sleep(delay_s)

    def _relative(self, path: str) -> str:
        """A URL on one of the servers as its path (so that it fails over); others as given."""
        for url in self.server_urls:
            if path.startswith(url + "/"):
                return path[len(url):]
        return path

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        wait_s: float = 0.0,
        raw: bool = False,
    ) -> Any:
        """Sends a request, retrying connection errors and 502/503/504 (on the next server);
        returns the JSON reply (with `raw`, the body's bytes). `path` may also be a whole URL.

        Raises ConnectionFailed when the retries run out, an ApiError for an error status.
        """
        path = self._relative(path)
        elsewhere = path.startswith(("http://", "https://"))  # not on our servers: no failover
        servers = 1 if elsewhere else len(self.server_urls)
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        timeout = aiohttp.ClientTimeout(total=self.timeout_s + wait_s)
        for failed in itertools.count():  # tries failed so far
            index = None if elsewhere else self._current
            url = path if index is None else self.server_urls[index] + path
            last = failed + 1 >= self._tries(servers)
            try:
                # A fresh BytesIO each try: aiohttp writes it in chunks (raw bytes past 1 MiB,
                # base64 images, draw a warning that they may block the loop).
                payload = io.BytesIO(data) if data is not None else None
                async with self._open_session().request(
                    method, url, data=payload, params=params, headers=headers, timeout=timeout
                ) as response:
                    if raw and response.status < 400:
                        return await response.read()
                    reply = await _decode(response)
                    if response.status < 400:
                        return reply
                    if response.status not in RETRY_STATUSES or last:
                        raise error_for(response.status, reply, response.headers)
                    problem = f"HTTP {response.status}"
            except _CONNECTION_ERRORS as e:
                if last:
                    raise ConnectionFailed(
                        f"{method} {url}: {_describe(e)} (tried {failed + 1} times)"
                    ) from e
                problem = _describe(e)
            await self._next_try(failed + 1, servers, index, f"{method} {url}", problem)

    async def endpoints(self) -> list[dict[str, Any]]:
        """The server's endpoints: name, title, description, version, client_auth, queue stats.

        Returns:
            list[dict[str, Any]]: one dict per endpoint.
        """
        return (await self._request("GET", ENDPOINTS_PATH))["endpoints"]

    async def endpoint(self, name: str) -> dict[str, Any]:
        """One endpoint's schema (its inputs, outputs and progress outputs).

        Args:
            name (str): the endpoint.

        Returns:
            dict[str, Any]: the schema as the server sends it.
        """
        return await self._request("GET", endpoint_path(name))

    async def submit(
        self,
        endpoint: str,
        inputs: dict[str, Any] | None = None,
        *,
        job_id: str | None = None,
        wait_s: float = 0.0,
    ) -> Job:
        """Queues a job.

        Args:
            endpoint (str): the endpoint's name, e.g. "echo".
            inputs (dict[str, Any] | None): the inputs; images as data URLs; default none.
            job_id (str | None): the job's id (1 to 128 of A-Z a-z 0-9 _ . : -); default a new
                random one. Submitting an id again with the same inputs gives the same job.
            wait_s (float): hold the request up to this many seconds for the job to finish;
                default 0 (answer at once).

        Returns:
            Job: the job, finished if it ended within wait_s.
        """
        body = {"inputs": inputs or {}, "job_id": job_id or new_job_id()}
        params = {"wait": f"{wait_s:g}"} if wait_s else None
        return Job.from_json(
            await self._request(
                "POST", submit_path(endpoint), body=body, params=params, wait_s=wait_s
            )
        )

    async def get(
        self,
        job: str | Job,
        *,
        wait_s: float = 0.0,
        since: int | None = None,
        inline: bool = False,
    ) -> Job:
        """The job's current state.

        Args:
            job (str | Job): the job or its id.
            wait_s (float): hold the request up to this many seconds until the job changes;
                default 0.
            since (int | None): with wait_s, wait for a version past this one; default the
                version the server has now.
            inline (bool): file outputs as data URLs instead of file references; default False.

        Returns:
            Job: the job (its outputs as JSON: a file output is its reference, a dict).
        """
        params = {}
        if wait_s:
            params["wait"] = f"{wait_s:g}"
        if since is not None:
            params["since"] = str(since)
        if inline:
            params[INLINE_PARAM] = "1"
        path = job_path(_job_id(job))
        return Job.from_json(await self._request("GET", path, params=params, wait_s=wait_s))

    async def wait(
        self, job: str | Job, timeout_s: float | None = None, *, inline: bool = False
    ) -> Job:
        """Waits (by long-polling) until the job is done, failed or canceled.

        Args:
            job (str | Job): the job or its id.
            timeout_s (float | None): give up after this many seconds; default None (never).
            inline (bool): file outputs as data URLs (see `get`); default False.

        Returns:
            Job: the finished job, whatever its status.

        Raises:
            WaitTimeout: timeout_s passed first.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        current = job if isinstance(job, Job) and job.finished else await self.get(job)
        while not current.finished:
            wait_s = LONG_POLL_S if deadline is None else min(LONG_POLL_S, deadline - loop.time())
            if wait_s <= 0:
                raise WaitTimeout(current, timeout_s or 0.0)
            current = await self._next(current, wait_s)
        # The data URLs once, for the finished job: not with every long-poll on the way.
        return await self.get(current.job_id, inline=True) if inline else current

    async def _next(self, job: Job, wait_s: float, since: int | None = None) -> Job:
        """The job once it changes past `since` (default its version): a long-poll that asks
        for only the new parts of the progress texts `job` holds, and joins them to those."""
        since = job.version if since is None else since
        params = {"wait": f"{wait_s:g}", "since": str(since)}
        if since == job.version and (held := _texts_held(job)):  # (its texts are of `since`)
            params[PROGRESS_FROM_PARAM] = held
        path = job_path(job.job_id)
        data = await self._request("GET", path, params=params, wait_s=wait_s)
        if isinstance(data, dict) and (rebuilt := _rebuilt(data, job)) is not None:
            return rebuilt
        return await self.get(job.job_id)  # (parts of texts we do not hold: read it whole)

    async def result(
        self, job: str | Job, timeout_s: float | None = None, *, inline: bool = False
    ) -> dict[str, Any]:
        """Waits for the job and returns its outputs.

        Args:
            job (str | Job): the job or its id.
            timeout_s (float | None): give up after this many seconds; default None (never).
            inline (bool): file outputs as data URLs (strings, as before files) instead of
                AsyncFile objects; default False.

        Returns:
            dict[str, Any]: the job's outputs; each file output (or item of a list output)
            an AsyncFile, whose `read()` and `save(path)` download it.

        Raises:
            JobFailed: the job failed (`.job.error` says why).
            JobCanceled: the job was canceled.
            WaitTimeout: timeout_s passed first.
        """
        return _outputs_of(await self.wait(job, timeout_s, inline=inline), self._file)

    def _file(self, ref: FileRef) -> AsyncFile:
        return AsyncFile(ref.file, ref.media_type, ref.url, ref.size, ref.sha256, self)

    async def download(
        self, job: str | Job, name: str | AsyncFile | File, path: str | Path | None = None
    ) -> bytes | Path:
        """One file of a job's outputs.

        Args:
            job (str | Job): the job or its id.
            name (str | AsyncFile | File): the file's name within the job, as its reference
                has it (`"file"`, e.g. "image-0.png"; not the output's key), or the file.
            path (str | Path | None): write it to this file and return the path; default
                None: return its bytes.

        Returns:
            bytes | Path: its bytes, or the path written.

        Raises:
            NotFoundError: no such job, or the job has no such file.
        """
        data = await self._request("GET", job_file_path(_job_id(job), _file_name(name)),
                                   raw=True)
        return data if path is None else await _write(Path(path), data)

    async def cancel(self, job: str | Job) -> Job:
        """Cancels the job: a queued job leaves the queue, a running one stops at its next
        progress report. A finished job stays as it is.

        Args:
            job (str | Job): the job or its id.

        Returns:
            Job: the job after the cancel.
        """
        return Job.from_json(await self._request("DELETE", job_path(_job_id(job))))

    async def stream(
        self, job: str | Job, *, sse: bool = True, inline: bool = False
    ) -> AsyncIterator[Event]:
        """The job's events as they happen, ending after `result` or `error`.

        Uses Server-Sent Events, reconnecting with Last-Event-ID when the connection drops (to
        the next server, given several); if the server does not answer with an event stream,
        or the retries of one connection run out, it goes on by long-polling
        (`GET ?wait=&since=`).

        Args:
            job (str | Job): the job or its id.
            sse (bool): use Server-Sent Events; False long-polls from the start. Default True.
            inline (bool): file outputs as data URLs (see `get`); default False.

        Returns:
            AsyncIterator[Event]: `queued` (again whenever the queue position changes),
            `progress` (with progress_outputs), then `result` or `error`.
        """
        job_id = _job_id(job)
        last: Job | None = None
        if sse:
            async with contextlib.aclosing(self._sse_events(job_id, inline)) as events:
                async for event in events:
                    last = event.job
                    yield event
            if last is not None and last.finished:
                return
            log.info("job %s: no event stream; long-polling instead", job_id)
        async with contextlib.aclosing(
            self._polled_events(job_id, last.version if last else 0, inline)
        ) as events:
            async for event in events:
                yield event

    async def _sse_events(self, job_id: str, inline: bool) -> AsyncIterator[Event]:
        """Events from the SSE route until the final one; stops early when SSE does not work."""
        path = events_path(job_id) + (f"?{INLINE_PARAM}=1" if inline else "")
        # No total limit: a stream lasts as long as the job; the server's keepalive comments
        # (every 15 s by default) keep a healthy connection under the read limit.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout_s, sock_read=max(self.timeout_s, 60.0)
        )
        last_id, failures = "", 0
        held: Job | None = None  # the last event's job, its progress texts whole
        while True:
            index = self._current
            url = self.server_urls[index] + path
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            delivered = False
            try:
                async with self._open_session().get(
                    url, headers=headers, timeout=timeout
                ) as response:
                    if response.status >= 400 and response.status not in RETRY_STATUSES:
                        raise error_for(response.status, await _decode(response), response.headers)
                    if response.status < 400 and response.content_type != "text/event-stream":
                        return
                    problem = f"HTTP {response.status}" if response.status >= 400 else "ended"
                    async with contextlib.aclosing(_sse_messages(response.content)) as messages:
                        async for name, event_id, data in messages:
                            job = _rebuilt(orjson.loads(data), held)
                            if job is None:  # a part of a text we lack: start afresh, whole
                                problem, last_id = "a text's part came without its start", ""
                                break
                            held, last_id, delivered = job, event_id or last_id, True
                            yield Event(name, job)
                            if job.finished:
                                return
            except _CONNECTION_ERRORS as e:
                problem = _describe(e)
            failures = 1 if delivered else failures + 1  # counts failures in a row
            servers = len(self.server_urls)
            if failures >= self._tries(servers):
                return
            await self._next_try(failures, servers, index, f"GET {url}", problem)

    async def _polled_events(self, job_id: str, since: int, inline: bool) -> AsyncIterator[Event]:
        """Events made by long-polling: one per new version of the job, and the final state."""
        current = await self.get(job_id)
        while True:
            if current.finished and inline:  # the data URLs once, for the final event
                current = await self.get(job_id, inline=True)
            # A finished job always ends the stream with its event, even one whose version is
            # not past `since`: versions are not stored, a restarted server numbers them afresh.
            if current.version > since or current.finished:
                yield Event(EVENT_OF_STATUS.get(current.status, EVENT_PROGRESS), current)
                since = current.version
            if current.finished:
                return
            current = await self._next(current, LONG_POLL_S, since)


class Client:
    """The blocking twin of AsyncClient: the same arguments and methods, without `await`.

    It runs an AsyncClient on an event loop of its own in a background thread, so it works
    from any thread, with or without a running event loop. close() (or leaving a `with` block)
    stops it.

    Args:
        server_url (str | Sequence[str]): the server, e.g. "http://127.0.0.1:7777"; or several,
            as a list or tuple or separated by commas, tried in turn (see AsyncClient).
        key (str | None): the client key; default None.
        timeout_s (float): the limit of one request in seconds (plus any wait_s); default 30.
        max_retries (int): retries after a connection error or 502/503/504 (with several
            servers, rounds of tries); default 5.
        backoff_s (float): the wait before the first retry, doubled each time; default 0.25.
        max_backoff_s (float): the cap on that wait; default 10.

    Raises:
        ValueError: server_url holds no URL.
    """

    def __init__(
        self,
        server_url: str | Sequence[str] = DEFAULT_SERVER_URL,
        key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 0.25,
        max_backoff_s: float = 10.0,
    ) -> None:
        self._client = AsyncClient(
            server_url, key, timeout_s, max_retries, backoff_s, max_backoff_s
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="jobhive-client", daemon=True
        )
        self._thread.start()

    @property
    def server_url(self) -> str:
        """The server requests go to now (see AsyncClient)."""
        return self._client.server_url

    @property
    def server_urls(self) -> tuple[str, ...]:
        """The servers, in the order they are tried."""
        return self._client.server_urls

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the HTTP session and stops the background thread; safe to call twice."""
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.close())
            self._call(self._loop.shutdown_asyncgens())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this jobhive Client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:  # KeyboardInterrupt while waiting: stop the work as well
            future.cancel()
            raise

    def endpoints(self) -> list[dict[str, Any]]:
        """See AsyncClient.endpoints."""
        return self._call(self._client.endpoints())

    def endpoint(self, name: str) -> dict[str, Any]:
        """See AsyncClient.endpoint."""
        return self._call(self._client.endpoint(name))

    def submit(
        self,
        endpoint: str,
        inputs: dict[str, Any] | None = None,
        *,
        job_id: str | None = None,
        wait_s: float = 0.0,
    ) -> Job:
        """See AsyncClient.submit."""
        return self._call(self._client.submit(endpoint, inputs, job_id=job_id, wait_s=wait_s))

    def get(
        self,
        job: str | Job,
        *,
        wait_s: float = 0.0,
        since: int | None = None,
        inline: bool = False,
    ) -> Job:
        """See AsyncClient.get."""
        return self._call(self._client.get(job, wait_s=wait_s, since=since, inline=inline))

    def wait(self, job: str | Job, timeout_s: float | None = None, *, inline: bool = False) -> Job:
        """See AsyncClient.wait."""
        return self._call(self._client.wait(job, timeout_s, inline=inline))

    def result(
        self, job: str | Job, timeout_s: float | None = None, *, inline: bool = False
    ) -> dict[str, Any]:
        """See AsyncClient.result; each file output is a File (its read() and save() block)."""
        return _outputs_of(self._call(self._client.wait(job, timeout_s, inline=inline)),
                           self._file)

    def _file(self, ref: FileRef) -> File:
        return File(ref.file, ref.media_type, ref.url, ref.size, ref.sha256, self)

    def download(
        self, job: str | Job, name: str | AsyncFile | File, path: str | Path | None = None
    ) -> bytes | Path:
        """See AsyncClient.download."""
        return self._call(self._client.download(job, name, path))

    def cancel(self, job: str | Job) -> Job:
        """See AsyncClient.cancel."""
        return self._call(self._client.cancel(job))

    def stream(self, job: str | Job, *, sse: bool = True, inline: bool = False) -> Iterator[Event]:
        """See AsyncClient.stream."""
        events = self._client.stream(job, sse=sse, inline=inline)
        try:
            while (event := self._call(_next_or_none(events))) is not None:
                yield event
        finally:
            if not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):  # still running after a Ctrl-C
                    self._call(events.aclose())


async def _next_or_none(events: AsyncIterator[Event]) -> Event | None:
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None
