"""The worker runtime: everything between a model worker and the server.

`Runner.serve()` loads the model, then loops: long-poll the server for a batch, run the model on
it in the model thread, relay its progress (coalesced, one request per batch; it also renews the
leases), post all results in one request. The server being away is retried with backoff.

Shut-down: the first SIGINT/SIGTERM stops polling and lets the running batch finish (up to
`grace_s`, then its jobs are handed back to the queue); a second signal hands them back at once.
A running job is finished or handed back, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from workers.base import Job, ModelWorker

log = logging.getLogger("jobhive.worker")

_RETRYABLE = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class WorkerRefused(Exception):
    """The server refused this worker outright (wrong key, unknown job type): retrying won't
    help, so the worker stops with this message."""


@dataclass(frozen=True)
class RunnerSettings:
    """How a runner talks to its server.

    Args:
        server_url (str): the API server's base URL, e.g. http://gpu-gateway:7777.
        key (str): this worker's key, one of the endpoint's [WORKER] auth_keys.
        worker_id (str): how the server names this worker in logs and /api/v1/status.
        max_batch (int): the most jobs to take per poll.
        poll_wait_s (float): how long one poll waits on the server for jobs.
        burst (bool): exit when a poll finds no job instead of waiting for more.
        grace_s (float): on shut-down, how long the running batch may take to finish before its
            jobs are handed back.
        progress_interval_s (float): the shortest gap between two progress requests.
        max_backoff_s (float): the longest wait between two tries when the server is away.
    """

    server_url: str
    key: str
    worker_id: str
    max_batch: int = 1
    poll_wait_s: float = 20.0
    burst: bool = False
    grace_s: float = 30.0
    progress_interval_s: float = 0.1
    max_backoff_s: float = 15.0


class ModelThread:
    """One long-lived daemon thread where `load` and `run` execute, in order.

    Daemon, so a worker told to hand its jobs back can exit while a model call is still busy.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Any]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._serve, name="jobhive-model", daemon=True).start()

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put((fn, args, (loop, future)))
        return future

    def _serve(self) -> None:
        while True:
            fn, args, (loop, future) = self._calls.get()
            try:
                result = fn(*args)
            except BaseException as e:  # handed to the awaiting coroutine, not lost here
                loop.call_soon_threadsafe(_settle, future, None, e)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ProgressRelay:
    """Takes progress reports from the model thread; the runner sends the latest of each job."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[Job, float, dict[str, Any] | None]] = {}
        self.wake = asyncio.Event()

    def __call__(self, job: Job, percent: float, outputs: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._latest[job.id] = (job, max(0.0, min(100.0, float(percent))), outputs)
        self._loop.call_soon_threadsafe(self.wake.set)

    def take(self) -> dict[str, tuple[Job, float, dict[str, Any] | None]]:
        with self._lock:
            latest, self._latest = self._latest, {}
        return latest


class Runner:
    """Serves one model worker against one server.

    Args:
        model (ModelWorker): the model worker to run.
        settings (RunnerSettings): server, key and limits.
    """

    def __init__(self, model: ModelWorker, settings: RunnerSettings) -> None:
        self.model = model
        self.settings = settings
        self._stopping = asyncio.Event()  # first signal: finish the batch, then exit
        self._hand_back = asyncio.Event()  # second signal or grace over: return the jobs
        self._http: aiohttp.ClientSession | None = None
        self._thread = ModelThread()
        self._backoff_s = 0.0

    def stop(self) -> None:
        """What SIGINT/SIGTERM do: the first asks to finish, the second to hand back."""
        if self._stopping.is_set():
            log.warning("handing the running jobs back to the server")
            self._hand_back.set()
        else:
            log.warning("stopping: finishing the running batch (signal again to hand it back)")
            self._stopping.set()

    async def serve(self) -> None:
        """Loads the model and serves jobs until stopped (or, with burst, the queue is empty).

        Raises:
            WorkerRefused: the server refused the worker's key or job type.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop)
        settings = self.settings
        log.info("loading %s worker", self.model.job_type)
        started = time.monotonic()
        await self._thread.call(self.model.load)
        log.info(
            "loaded in %.1f s; serving %s at %s as %s (max batch %d)",
            time.monotonic() - started,
            self.model.job_type,
            settings.server_url,
            settings.worker_id,
            settings.max_batch,
        )
        headers = {"Authorization": f"Bearer {settings.key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(settings.server_url, headers=headers) as http:
            self._http = http
            while not self._stopping.is_set():
                jobs = await self._poll()
                if jobs:
                    await self._run_batch(jobs)
                elif settings.burst and jobs is not None:
                    log.info("queue empty: exiting (burst mode)")
                    break
        log.info("worker %s stopped", settings.worker_id)

    # ----- talking to the server

    async def _post(self, path: str, body: dict[str, Any], timeout_s: float) -> tuple[int, Any]:
        assert self._http is not None
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._http.post(path, data=orjson.dumps(body), timeout=timeout) as response:
            data = await response.read()
            return response.status, orjson.loads(data) if data else None

    async def _retry_later(self, problem: object) -> None:
        """Waits before the next try, longer each time (with jitter), up to max_backoff_s."""
        self._backoff_s = min(self.settings.max_backoff_s, max(0.25, self._backoff_s * 2))
        log.warning(
            "server %s unavailable (%s); retrying in %.1f s",
            self.settings.server_url,
            str(problem) or type(problem).__name__,
            self._backoff_s,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._hand_back.wait(), self._backoff_s * random.uniform(0.8, 1.2)
            )

    def _reached(self) -> None:
        if self._backoff_s:
            log.info("server %s reachable again", self.settings.server_url)
            self._backoff_s = 0.0

    async def _poll(self) -> list[Job] | None:
        """The next batch ([] when none came in time); None when stopping."""
        settings = self.settings
        wait_s = min(settings.poll_wait_s, 1.0) if settings.burst else settings.poll_wait_s
        body = {
            "worker_id": settings.worker_id,
            "job_types": [self.model.job_type],
            "max_batch": settings.max_batch,
            "wait_s": wait_s,
            "info": self.model.info(),
        }
        while not self._stopping.is_set():
            poll = asyncio.ensure_future(self._post("/api/v1/worker/jobs", body, wait_s + 15))
            stop = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({poll, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not poll.done():
                poll.cancel()  # the server drops the poll; nothing was granted
                return None
            try:
                status, data = poll.result()
            except _RETRYABLE as e:
                await self._retry_later(e)
                continue
            self._reached()
            if status == 204:
                return []
            if status == 200:
                return [
                    Job(
                        id=j["job_id"],
                        endpoint=j["endpoint"],
                        inputs=j["inputs"],
                        lease_id=j["lease_id"],
                        attempt=j["attempt"],
                        lease_s=j["lease_s"],
                    )
                    for j in data["jobs"]
                ]
            message = data.get("error") if isinstance(data, dict) else None
            if status in (400, 401, 403):
                raise WorkerRefused(f"server refused the poll ({status}): {message} {data}")
            await self._retry_later(f"HTTP {status}: {message}")
        return None

    # ----- running a batch

    async def _run_batch(self, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        relay = ProgressRelay(loop)
        reporter = asyncio.create_task(self._relay_progress(jobs, relay))
        started = time.monotonic()
        run = self._thread.call(self._run_model, jobs, relay)
        try:
            results = await self._finish_or_hand_back(run, jobs)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        if results is None:
            await self._send_results(jobs, [{"release": True}] * len(jobs), self.settings.grace_s)
            return
        await self._send_results(jobs, results)
        log.info(
            "batch of %d %s jobs done in %.3f s",
            len(jobs),
            jobs[0].endpoint,
            time.monotonic() - started,
        )

    def _run_model(self, jobs: list[Job], relay: ProgressRelay) -> list[dict[str, Any]]:
        """In the model thread: runs the batch and turns what it returns into result entries."""
        try:
            outcomes = self.model.run(jobs, relay)
            if not isinstance(outcomes, list) or len(outcomes) != len(jobs):
                raise RuntimeError(f"worker returned {outcomes!r:.80} for a batch of {len(jobs)}")
        except Exception as e:  # the whole batch failed: every job says why
            log.exception("batch of %d jobs failed", len(jobs))
            outcomes = [e] * len(jobs)
        entries = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, Exception):
                entries.append({"error": str(outcome) or type(outcome).__name__})
            elif not isinstance(outcome, dict):
                entries.append({"error": f"worker returned {type(outcome).__name__}, not a dict"})
            else:
                try:  # serialised here, off the event loop; what cannot travel becomes an error
                    data = orjson.dumps(outcome, option=orjson.OPT_SERIALIZE_NUMPY)
                    entries.append({"outputs": orjson.Fragment(data)})
                except TypeError as e:
                    entries.append({"error": f"outputs are not JSON-serialisable: {e}"})
            if job.canceled:
                log.info("job %s was canceled while running", job.id)
        return entries

    async def _finish_or_hand_back(
        self, run: asyncio.Future[Any], jobs: list[Job]
    ) -> list[dict[str, Any]] | None:
        """The batch's result entries, or None when its jobs must be handed back."""
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not run.done():
            log.warning("waiting up to %g s for %d running jobs", self.settings.grace_s, len(jobs))
            hand_back = asyncio.ensure_future(self._hand_back.wait())
            await asyncio.wait(
                {run, hand_back}, timeout=self.settings.grace_s, return_when=asyncio.FIRST_COMPLETED
            )
            hand_back.cancel()
            if not run.done():
                for job in jobs:
                    job.canceled = True  # let the model stop early if it checks
                return None
        return run.result()

    async def _relay_progress(self, jobs: list[Job], relay: ProgressRelay) -> None:
        """Sends the latest progress of each job, at most every progress_interval_s, and a
        heartbeat for jobs that reported nothing for a third of their lease."""
        heartbeat_s = min(job.lease_s for job in jobs) / 3
        sent_at = dict.fromkeys((job.id for job in jobs), time.monotonic())
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(relay.wake.wait(), heartbeat_s)
            relay.wake.clear()
            latest = relay.take()
            now = time.monotonic()
            reports = []
            for job in jobs:
                if job.id in latest:
                    _, percent, outputs = latest[job.id]
                    reports.append(
                        {
                            "job_id": job.id,
                            "lease_id": job.lease_id,
                            "progress": percent,
                            "outputs": outputs,
                        }
                    )
                elif now - sent_at[job.id] >= heartbeat_s and not job.canceled:
                    reports.append({"job_id": job.id, "lease_id": job.lease_id})
            if reports:
                await self._send_progress(jobs, reports)
                sent_at.update(dict.fromkeys((r["job_id"] for r in reports), now))
            await asyncio.sleep(self.settings.progress_interval_s)

    async def _send_progress(self, jobs: list[Job], reports: list[dict[str, Any]]) -> None:
        try:
            status, data = await self._post("/api/v1/worker/progress", {"reports": reports}, 30)
        except _RETRYABLE as e:
            log.warning("progress not delivered (%s); the lease renews with the next one", e)
            return
        if status != 200:
            log.warning("progress refused (%d): %s", status, data)
            return
        by_id = {job.id: job for job in jobs}
        for answer in data["answers"]:
            if not answer["ok"] or answer["canceled"]:
                job = by_id[answer["job_id"]]
                if not job.canceled:
                    log.info("job %s stops: %s", job.id, answer.get("error") or "canceled")
                job.canceled = True

    async def _send_results(
        self, jobs: list[Job], entries: list[dict[str, Any]], give_up_s: float | None = None
    ) -> None:
        """Posts a batch's results in one request, retrying while the server is away (for at
        most give_up_s when given: a hand-back that cannot be delivered is not needed, the
        lease expiring requeues the job all the same)."""
        reports = [
            {"job_id": job.id, "lease_id": job.lease_id, **entry}
            for job, entry in zip(jobs, entries, strict=True)
        ]
        deadline = time.monotonic() + give_up_s if give_up_s is not None else None
        while True:
            try:
                status, data = await self._post("/api/v1/worker/results", {"reports": reports}, 60)
            except _RETRYABLE as e:
                problem: object = e
            else:
                self._reached()
                if status == 200:
                    for answer in data["answers"]:
                        if not answer["ok"]:
                            log.warning(
                                "result of job %s not taken: %s",
                                answer["job_id"],
                                answer.get("error"),
                            )
                    return
                if status < 500 and status != 429:
                    log.error("results refused (%d): %s", status, data)
                    return
                problem = f"HTTP {status}"
            if deadline is not None and time.monotonic() > deadline:
                log.warning("gave up delivering %d results: %s", len(jobs), problem)
                return
            await self._retry_later(problem)
