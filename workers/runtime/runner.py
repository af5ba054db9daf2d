"""The worker runtime: everything between a model worker and the server.

`Runner.serve()` loads the model, then loops: long-poll the server for a batch, run the model on
it in the model thread, relay its progress (coalesced, one request per batch; it also renews the
leases), post all results in one request. The server being away is retried with backoff.

Shut-down: the first SIGINT/SIGTERM stops polling and lets the running batch finish (up to
`grace_s`, then its jobs are handed back to the queue); a second signal hands them back at once.
A running job is finished or handed back, never dropped. A worker that stops cleanly (signal,
or burst mode's queue empty) then says goodbye, so the server's status drops it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from jobhive.protocol import (
    WORKER_GOODBYE_PATH,
    WORKER_POLL_PATH,
    WORKER_PROGRESS_PATH,
    WORKER_RESULTS_PATH,
    Grant,
)
from workers.runtime.model import Job, ModelWorker
from workers.runtime.progress import ProgressRelay
from workers.runtime.thread import ModelThread

log = logging.getLogger("jobhive.worker")

_RETRYABLE = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
GOODBYE_TIMEOUT_S = 2.0  # a goodbye is a courtesy: a server slow to take it is not waited for


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


class Runner:
    """Serves one model worker against one server.

    Args:
        model (ModelWorker): the model worker to run.
        settings (RunnerSettings): server, key and limits.
    """

    def __init__(self, model: ModelWorker, settings: RunnerSettings) -> None:
        self.model = model
        self.settings = settings
        # Resolved by the first signal (finish the batch, then exit) and by the second (hand the
        # running jobs back); futures, not Events, so that racing them costs no task per batch.
        self._stopping: asyncio.Future[None] | None = None
        self._hand_back: asyncio.Future[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._thread = ModelThread()
        self._backoff_s = 0.0

    def stop(self) -> None:
        """What SIGINT/SIGTERM do: the first asks to finish, the second to hand back."""
        assert self._stopping is not None and self._hand_back is not None
        if self._stopping.done():
            log.warning("handing the running jobs back to the server")
            if not self._hand_back.done():
                self._hand_back.set_result(None)
        else:
            log.warning("stopping: finishing the running batch (signal again to hand it back)")
            self._stopping.set_result(None)

    async def serve(self) -> None:
        """Loads the model and serves jobs until stopped (or, with burst, the queue is empty).

        Raises:
            WorkerRefused: the server refused the worker's key or job type.
        """
        loop = asyncio.get_running_loop()
        self._stopping, self._hand_back = loop.create_future(), loop.create_future()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop)
        settings = self.settings
        log.info("loading %s worker", self.model.serves)
        started = time.monotonic()
        await self._thread.call(self.model.load)
        log.info(
            "loaded in %.1f s; serving %s at %s as %s (max batch %d)",
            time.monotonic() - started,
            self.model.serves,
            settings.server_url,
            settings.worker_id,
            settings.max_batch,
        )
        headers = {"Authorization": f"Bearer {settings.key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(settings.server_url, headers=headers) as http:
            self._http = http
            jobs = await self._poll()
            while jobs is not None:  # None: stopping
                if jobs:
                    jobs = await self._run_batch(jobs)  # its results post brings the next batch
                elif settings.burst:
                    log.info("queue empty: exiting (burst mode)")
                    break
                else:
                    jobs = await self._poll()
            await self._say_goodbye()
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
        await asyncio.wait({self._hand_back}, timeout=self._backoff_s * random.uniform(0.8, 1.2))

    def _reached(self) -> None:
        if self._backoff_s:
            log.info("server %s reachable again", self.settings.server_url)
            self._backoff_s = 0.0

    def _poll_body(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "worker_id": settings.worker_id,
            "job_types": [self.model.serves],
            "max_batch": settings.max_batch,
            "wait_s": min(settings.poll_wait_s, 1.0) if settings.burst else settings.poll_wait_s,
            "info": self.model.info(),
        }

    async def _post_unless_stopping(
        self, path: str, body: dict[str, Any], timeout_s: float
    ) -> tuple[int, Any] | None:
        """Posts, but gives up (None) as soon as a stop is asked for: a poll left hanging would
        hold the shut-down for its whole wait. The server drops a poll whose client left."""
        post = asyncio.ensure_future(self._post(path, body, timeout_s))
        await asyncio.wait({post, self._stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not post.done():
            post.cancel()
            return None
        return post.result()

    async def _say_goodbye(self) -> None:
        """Tells the server this worker is gone, so it leaves /api/v1/status now instead of
        when it has been quiet long enough. Best effort: any failure (server gone, an older
        server without the route) is logged and ignored."""
        assert self._http is not None
        body = orjson.dumps({"worker_id": self.settings.worker_id})
        timeout = aiohttp.ClientTimeout(total=GOODBYE_TIMEOUT_S)
        try:
            async with self._http.post(WORKER_GOODBYE_PATH, data=body, timeout=timeout) as reply:
                status = reply.status  # the body is not needed (and an older server's 404 is text)
        except Exception as e:  # whatever went wrong, the worker stops all the same
            log.info("goodbye not delivered (%s)", str(e) or type(e).__name__)
            return
        if status == 200:
            log.debug("said goodbye to %s", self.settings.server_url)
        else:
            log.info("goodbye not taken (HTTP %d); the server forgets this worker in time", status)

    @staticmethod
    def _jobs_from(grants: list[dict[str, Any]]) -> list[Job]:
        jobs = []
        for data in grants:
            g = Grant.from_json(data)
            jobs.append(Job(id=g.job_id, endpoint=g.endpoint, inputs=g.inputs,
                            lease_id=g.lease_id, attempt=g.attempt, lease_s=g.lease_s))
        return jobs

    async def _poll(self) -> list[Job] | None:
        """The next batch ([] when none came in time); None when stopping."""
        body = self._poll_body()
        while not self._stopping.done():
            try:
                reply = await self._post_unless_stopping(
                    WORKER_POLL_PATH, body, body["wait_s"] + 15
                )
            except _RETRYABLE as e:
                await self._retry_later(e)
                continue
            if reply is None:
                return None
            status, data = reply
            self._reached()
            if status == 204:
                return []
            if status == 200:
                return self._jobs_from(data["jobs"])
            message = data.get("error") if isinstance(data, dict) else None
            if status in (400, 401, 403):
                fields = data.get("fields") if isinstance(data, dict) else None
                details = "".join(f"; {k}: {v}" for k, v in (fields or {}).items())
                raise WorkerRefused(f"server refused the poll ({status}): {message}{details}")
            await self._retry_later(f"HTTP {status}: {message}")
        return None

    # ----- running a batch

    async def _run_batch(self, jobs: list[Job]) -> list[Job] | None:
        """Runs one batch and delivers its results; returns the next batch (None: stopping)."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        heartbeat_s = min(job.lease_s for job in jobs) / 3
        relay = ProgressRelay(loop, lambda r: self._relay_progress(jobs, r, started, heartbeat_s))
        heartbeat = loop.call_later(heartbeat_s, relay.start)
        run = self._thread.call(self._run_model, jobs, relay)
        try:
            results = await self._finish_or_hand_back(run, jobs)
        finally:
            heartbeat.cancel()
            await relay.stop()
        if results is None:
            await self._send_results(jobs, [{"release": True}] * len(jobs), self.settings.grace_s)
            return None
        log.info("batch of %d %s jobs ran in %.3f s", len(jobs), jobs[0].endpoint,
                 time.monotonic() - started)
        return await self._send_results(jobs, results)

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
        await asyncio.wait({run, self._stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            log.warning("waiting up to %g s for %d running jobs", self.settings.grace_s, len(jobs))
            await asyncio.wait(
                {run, self._hand_back},
                timeout=self.settings.grace_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not run.done():
                for job in jobs:
                    job.canceled = True  # let the model stop early if it checks
                return None
        return run.result()

    async def _relay_progress(
        self, jobs: list[Job], relay: ProgressRelay, started: float, heartbeat_s: float
    ) -> None:
        """Sends the latest progress of each job, at most every progress_interval_s, and a
        heartbeat for jobs that reported nothing for heartbeat_s (a third of their lease)."""
        sent_at = dict.fromkeys((job.id for job in jobs), started)
        while True:
            due_s = min(sent_at.values()) + heartbeat_s - time.monotonic()
            if due_s > 0 and not relay.wake.is_set():
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows the cancel that
                # relay.stop() sends when the wait has just ended, and stop() never returns.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due_s):
                        await relay.wake.wait()
            relay.wake.clear()
            latest = relay.take()
            now = time.monotonic()
            reports = []
            for job in jobs:
                if job.id in latest:
                    percent, outputs = latest[job.id]
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
            status, data = await self._post(WORKER_PROGRESS_PATH, {"reports": reports}, 30)
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
    ) -> list[Job] | None:
        """Posts a batch's results in one request that also polls for the next batch (unless
        stopping), retrying while the server is away; returns the next batch, None when
        stopping. Once stopping, it tries for grace_s at most, and not at all after a second
        signal: the leases expire and the jobs run again elsewhere, late but not lost.
        With give_up_s (a hand-back), tries only that long: a hand-back that cannot
        be delivered is not needed, the lease expiring requeues the jobs all the same."""
        reports = [
            {"job_id": job.id, "lease_id": job.lease_id, **entry}
            for job, entry in zip(jobs, entries, strict=True)
        ]
        deadline = time.monotonic() + give_up_s if give_up_s is not None else None
        while True:
            body: dict[str, Any] = {"reports": reports}
            if give_up_s is None and not self._stopping.done():
                body["poll"] = self._poll_body()
            try:
                if "poll" in body:
                    reply = await self._post_unless_stopping(
                        WORKER_RESULTS_PATH, body, body["poll"]["wait_s"] + 60
                    )
                else:
                    reply = await self._post(WORKER_RESULTS_PATH, body, 60)
            except _RETRYABLE as e:
                problem: object = e
            else:
                if reply is None:
                    continue  # stopping: send the results again, without the poll (idempotent)
                status, data = reply
                self._reached()
                if status == 200:
                    for answer in data["answers"]:
                        if not answer["ok"]:
                            log.warning("result of job %s not taken: %s",
                                        answer["job_id"], answer.get("error"))
                    return self._jobs_from(data["jobs"]) if "jobs" in data else None
                if status < 500 and status != 429:
                    log.error("results refused (%d): %s", status, data)
                    return None if self._stopping.done() else []
                problem = f"HTTP {status}"
            if self._stopping.done() and deadline is None:  # stopping: try for grace_s more
                deadline = time.monotonic() + self.settings.grace_s
            if self._hand_back.done() or (deadline is not None and time.monotonic() > deadline):
                log.warning("gave up delivering %d results: %s", len(jobs), problem)
                return None
            await self._retry_later(problem)
