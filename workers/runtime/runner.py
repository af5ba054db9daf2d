"""The worker runtime: everything between a model worker and the server.

`Runner.serve()` loads the model, then loops: long-poll the server for a batch, run the model on
it in the model thread, relay its progress (coalesced, one request per batch; it also renews the
leases while the model shows life), post the results in requests that fit the server's limits
(workers/runtime/delivery.py). The server being away is retried with backoff; so is a reply
that is not the server's JSON (a proxy's HTML error page while the server restarts). Given
several servers sharing one queue, such a failure moves the worker on to the next server at
once, and it backs off only after all of them failed in a row (workers/runtime/link.py).

A worker that takes jobs while it runs (continuous batching: `takes_jobs_while_running`) is
served by workers/runtime/continuous.py instead: the runner keeps polling while it runs, for
the room --max-batch leaves, feeds it the jobs that come, and posts each result at once.

A model silent for `stall_s` (no progress report, no `progress.alive()`) is taken for hung: the
leases are no longer renewed, the batch's jobs fail with "model stalled for N s", and `serve`
raises ModelStalled (the CLI exits with status 3) so that a supervisor starts a fresh process.

Shut-down: the first SIGINT/SIGTERM stops polling and lets the running batch finish (up to
`grace_s`, then its jobs are handed back to the queue); a second signal hands them back at once.
A running job is finished or handed back, never dropped. Results not yet delivered are tried
for grace_s more, those the server may hold already (their request was cut short) once more.
A worker that stops cleanly (signal, or burst mode's queue empty) then says goodbye, so the
server's status drops it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import orjson

from jobhive.files import FileUploadError
from jobhive.protocol import (
    WORKER_POLL_PATH,
    WORKER_PROGRESS_PATH,
    WORKER_RESULTS_PATH,
    Grant,
    ProtocolError,
    progress_delta,
)
from workers.runtime import continuous, delivery
from workers.runtime.delivery import Chunk
from workers.runtime.link import RETRYABLE, ServerLink, maybe_taken
from workers.runtime.media import MediaFile
from workers.runtime.model import Job, ModelWorker
from workers.runtime.progress import ProgressRelay
from workers.runtime.thread import ModelThread

log = logging.getLogger("jobhive.worker")

RETRIED_4XX = (408, 429)  # the client errors a retry can fix


class WorkerRefused(Exception):
    """The server refused this worker outright (wrong key, unknown job type): retrying won't
    help, so the worker stops with this message."""


class ModelStalled(Exception):
    """The model showed no life for stall_s: its batch failed, and since a Python thread cannot
    be stopped, the worker exits (status 3) for a supervisor to start a fresh process."""


@dataclass(frozen=True)
class RunnerSettings:
    """How a runner talks to its server.

    Args:
        server_url (str): the API server's base URL, e.g. http://gpu-gateway:7777; or several
            servers sharing one queue, separated by commas, tried in turn.
        key (str): this worker's key, one of the endpoint's [WORKER] auth_keys.
        worker_id (str): how the server names this worker in logs and /api/v1/status.
        max_batch (int): the most jobs to take per poll.
        poll_wait_s (float): how long one poll waits on the server for jobs.
        burst (bool): exit when a poll finds no job instead of waiting for more.
        grace_s (float): on shut-down, how long the running batch may take to finish before its
            jobs are handed back.
        progress_interval_s (float): the shortest gap between two progress requests.
        max_backoff_s (float): the longest wait between two tries when the server is away.
        stall_s (float | None): the longest a batch may run without a sign of life before the
            model is taken for hung (see ModelWorker.stall_s); None: the model's own.
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
    stall_s: float | None = None


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
        self._link: ServerLink  # set by serve()
        self._thread = ModelThread()
        self._running = 0  # jobs in the model now; the stop messages say what is left to do
        self._unsent = 0  # results not yet handed to a request
        # Learned from 413s: a results request this large was refused (None: none was yet).
        self._refused_bytes: int | None = None

    def stop(self) -> None:
        """What SIGINT/SIGTERM do: the first asks to finish, the second to hand back."""
        assert self._stopping is not None and self._hand_back is not None
        if self._stopping.done():
            if self._running:
                log.warning("handing the running jobs back to the server")
            elif self._unsent:
                log.warning("stopping now: %d results not delivered", self._unsent)
            else:
                log.warning("stopping now")
            if not self._hand_back.done():
                self._hand_back.set_result(None)
            return
        if self._running:
            log.warning("stopping: finishing the running batch (signal again to hand it back)")
        elif self._unsent:
            log.warning("stopping: delivering %d results first (signal again to give up)",
                        self._unsent)
        else:
            log.info("stopping: no job is running")  # (nothing to wait for: no warning)
        self._stopping.set_result(None)

    async def serve(self) -> None:
        """Loads the model and serves jobs until stopped (or, with burst, the queue is empty).

        Raises:
            WorkerRefused: the server refused the worker's key or job type.
            ModelStalled: the model showed no life for stall_s (its jobs were failed).
        """
        loop = asyncio.get_running_loop()
        self._stopping, self._hand_back = loop.create_future(), loop.create_future()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop)
        settings = self.settings
        link = ServerLink(settings.server_url, settings.key, settings.max_backoff_s)
        log.info("loading %s worker", self.model.serves)
        started = time.monotonic()
        await self._thread.call(self.model.load)
        log.info(
            "loaded in %.1f s; serving %s at %s as %s (max batch %d)",
            time.monotonic() - started,
            self.model.serves,
            ", ".join(link.urls),
            settings.worker_id,
            settings.max_batch,
        )
        async with link:
            self._link = link
            try:
                await self._serve_batches()
            except ModelStalled:
                await link.say_goodbye(settings.worker_id)
                raise
            await link.say_goodbye(settings.worker_id)
        log.info("worker %s stopped", settings.worker_id)

    async def _serve_batches(self) -> None:
        jobs = await self._poll()
        while jobs is not None:  # None: stopping
            if jobs and self.model.takes_jobs_while_running:
                jobs = await continuous.Session(self, jobs).run()  # its last poll's jobs
            elif jobs:
                jobs = await self._run_batch(jobs)  # its results post brings the next batch
            elif self.settings.burst:
                log.info("queue empty: exiting (burst mode)")
                return
            else:
                jobs = await self._poll()

    # ----- talking to the server

    async def _retry_later(
        self, problem: object, deadline: float | None = None, moves: int | None = None
    ) -> None:
        """Moves on to the next server, or backs off before the next try (not past deadline, a
        time.monotonic()); a first stop, or a hand-back, cuts the wait short. `server`: the
        one the failed request went to, if the link may have moved on since (see
        ServerLink.retry_later)."""
        wake = [self._hand_back] if self._stopping.done() else [self._hand_back, self._stopping]
        at_most_s = None if deadline is None else deadline - time.monotonic()
        await self._link.retry_later(problem, *wake, at_most_s=at_most_s, moves=moves)

    def _poll_body(self, max_batch: int | None = None) -> dict[str, Any]:
        settings = self.settings
        return {
            "worker_id": settings.worker_id,
            "job_types": [self.model.serves],
            "max_batch": max_batch or settings.max_batch,
            "wait_s": min(settings.poll_wait_s, 1.0) if settings.burst else settings.poll_wait_s,
            "info": self.model.info(),
        }

    @staticmethod
    def _jobs_from(data: Any) -> list[Job]:
        """The jobs a poll's (or a results post's) reply grants. A grant that is not one is
        logged and left alone: its lease runs out and the job goes to another worker.

        Raises:
            ProtocolError: the reply has no list of grants (not the server's answer).
        """
        grants = data.get("jobs") if isinstance(data, dict) else None
        if not isinstance(grants, list):
            raise ProtocolError("a reply without its list of jobs")
        jobs = []
        for grant in grants:
            try:
                g = Grant.from_json(grant)
            except ProtocolError as e:
                log.warning("a grant that is not one (%s): left to its lease", e)
                continue
            jobs.append(Job(id=g.job_id, endpoint=g.endpoint, inputs=g.inputs,
                            lease_id=g.lease_id, attempt=g.attempt, lease_s=g.lease_s))
        return jobs

    async def _poll(self, max_batch: int | None = None) -> list[Job] | None:
        """The next batch ([] when none came in time) of up to max_batch jobs (None:
        --max-batch); None when stopping."""
        body = self._poll_body(max_batch)
        while not self._stopping.done():
            try:
                reply = await self._link.post_unless(
                    WORKER_POLL_PATH, body, body["wait_s"] + 15, self._stopping
                )
            except RETRYABLE as e:
                await self._retry_later(e)
                continue
            if reply is None:
                return None
            status, data = reply
            if status == 204:
                self._link.reached()
                return []
            if status == 200:
                try:
                    jobs = self._jobs_from(data)
                except ProtocolError as e:
                    await self._retry_later(e)
                    continue
                self._link.reached()
                return jobs
            why = delivery.reason(status, data)
            if status in (400, 401, 403):
                raise WorkerRefused(f"server refused the poll ({status}): {why}")
            await self._retry_later(f"HTTP {status}: {why}")
        return None

    # ----- running a batch

    async def _run_batch(self, jobs: list[Job]) -> list[Job] | None:
        """Runs one batch and delivers its results; returns the next batch (None: stopping).

        Raises:
            ModelStalled: the model showed no life for stall_s (its jobs were failed).
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        heartbeat_s = min(job.lease_s for job in jobs) / 3
        stall_s = self.model.stall_s if self.settings.stall_s is None else self.settings.stall_s
        sent_at = dict.fromkeys((job.id for job in jobs), started)
        relay = ProgressRelay(
            loop, lambda r: self._relay_progress(jobs, r, sent_at, heartbeat_s), stall_s
        )
        heartbeat = loop.call_later(heartbeat_s, relay.start)
        run = self._thread.call(self._run_model, jobs, relay)
        self._running = len(jobs)
        try:
            results = await self._finish_or_hand_back(run, jobs, relay.stalled)
            if results is not None:
                log.info("batch of %d %s jobs ran in %.3f s", len(jobs), jobs[0].endpoint,
                         time.monotonic() - started)
                # While the relay runs its heartbeats keep the leases: each stored file is a
                # sign of life, so a long upload is not taken for a stalled model.
                await self._upload_files(jobs, results, relay)
        finally:
            self._running = 0
            heartbeat.cancel()
            await relay.stop()
        if relay.stalled.done() and not run.done():
            await self._fail_stalled(jobs, stall_s)
        if results is None:
            await self._send_results(jobs, [{"release": True}] * len(jobs), self.settings.grace_s)
            return None
        return await self._send_results(jobs, results)

    async def _fail_stalled(self, jobs: list[Job], stall_s: float) -> None:
        """Fails a hung model's batch (trying for grace_s), then raises ModelStalled."""
        error = f"model stalled for {stall_s:g} s"
        log.error("%s (no progress from its batch of %d %s jobs: %s): failing them and "
                  "exiting for a fresh process", error, len(jobs), self.model.serves,
                  ", ".join(job.id for job in jobs))
        await self._send_results(jobs, [{"error": error}] * len(jobs), self.settings.grace_s)
        raise ModelStalled(f"{error}; its jobs failed")

    def _run_model(self, jobs: list[Job], relay: ProgressRelay) -> list[dict[str, Any]]:
        """In the model thread: runs the batch and turns what it returns into result entries."""
        try:
            outcomes = self.model.run(jobs, relay)
            if not isinstance(outcomes, list) or len(outcomes) != len(jobs):
                raise RuntimeError(f"worker returned {outcomes!r:.80} for a batch of {len(jobs)}")
        except Exception as e:  # the whole batch failed: every job says why
            log.exception("batch of %d jobs failed", len(jobs))
            outcomes = [e] * len(jobs)
        return [delivery.result_entry(job, outcome)
                for job, outcome in zip(jobs, outcomes, strict=True)]

    async def _finish_or_hand_back(
        self, run: asyncio.Future[Any], jobs: list[Job], stalled: asyncio.Future[float]
    ) -> list[dict[str, Any]] | None:
        """The batch's result entries, or None when its jobs must be handed back (or failed:
        the model stalled)."""
        await asyncio.wait({run, self._stopping, stalled}, return_when=asyncio.FIRST_COMPLETED)
        if stalled.done() and not run.done():
            return None
        if not run.done():
            log.warning("waiting up to %g s for %d running jobs", self.settings.grace_s, len(jobs))
            await asyncio.wait(
                {run, self._hand_back, stalled},
                timeout=self.settings.grace_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not run.done():
                for job in jobs:
                    job.canceled = True  # let the model stop early if it checks
                return None
        return run.result()

    async def _relay_progress(
        self, jobs: list[Job], relay: ProgressRelay, sent_at: dict[str, float],
        heartbeat_s: float,
    ) -> None:
        """Sends the latest progress of each job, at most every progress_interval_s (a job's
        first report at once), and a heartbeat for jobs that reported nothing for heartbeat_s
        (a third of their lease). `jobs` may change as it runs (continuous batching): each
        job's `sent_at` is set when it joins (a time.monotonic())."""
        while True:
            due_s = min((sent_at[job.id] for job in jobs), default=time.monotonic())
            due_s += heartbeat_s - time.monotonic()
            if due_s > 0 and not relay.wake.is_set():
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows the cancel that
                # relay.stop() sends when the wait has just ended, and stop() never returns.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due_s):
                        await relay.wake.wait()
            relay.wake.clear()
            relay.first.clear()  # (set again by a first report from here on)
            latest = relay.take()
            now = time.monotonic()
            reports = []
            whole: dict[str, dict[str, Any]] = {}  # the outputs of each report, texts whole
            for job in jobs:
                if job.id in latest:
                    percent, outputs = latest[job.id]
                    report = {"job_id": job.id, "lease_id": job.lease_id, "progress": percent,
                              "outputs": outputs}
                    if outputs:  # the texts the server holds go as their new parts
                        whole[job.id] = outputs
                        report["outputs"], offsets = progress_delta(job.server_texts, outputs)
                        if offsets:
                            report["offsets"] = offsets
                    reports.append(report)
                elif now - sent_at[job.id] >= heartbeat_s and not job.canceled and relay.lively:
                    reports.append({"job_id": job.id, "lease_id": job.lease_id})
            if reports:
                await self._send_progress(jobs, reports, whole)
                for report in reports:  # (a job that ended meanwhile is gone from sent_at)
                    if report["job_id"] in sent_at:
                        sent_at[report["job_id"]] = now
            # The interval between two requests, cut short by a job's first report.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.progress_interval_s):
                    await relay.first.wait()

    async def _send_progress(
        self, jobs: list[Job], reports: list[dict[str, Any]], whole: dict[str, dict[str, Any]]
    ) -> None:
        """Posts progress reports; marks the jobs the server stops (canceled, lease lost) and
        notes the texts it now holds of each job's `whole` outputs (Job.server_texts)."""
        moves = self._link.moves
        try:
            try:
                status, data = await self._link.post(WORKER_PROGRESS_PATH, {"reports": reports},
                                                     30)
            except TypeError as e:  # outputs that are not JSON: the leases are still renewed
                log.warning("progress outputs not JSON-serialisable (%s); sent without them", e)
                status, data = 413, None
            if status == 413 and any(r.get("outputs") for r in reports):
                # Previews too large for the server: the leases must still be renewed.
                if data is not None or status != 413:
                    log.warning("progress refused (413: %s); sending it without its outputs",
                                delivery.reason(status, data))
                reports = [{"job_id": r["job_id"], "lease_id": r["lease_id"],
                            "progress": r.get("progress")} for r in reports]
                whole = {}
                status, data = await self._link.post(WORKER_PROGRESS_PATH, {"reports": reports}, 30)
        except RETRYABLE as e:
            log.warning("progress not delivered (%s); the lease renews with the next one",
                        str(e) or type(e).__name__)
            self._link.move_on(e, moves)  # the next one goes to the next server, if any
            return
        if status != 200:
            why = delivery.reason(status, data)
            log.warning("progress refused (%d): %s", status, why)
            if status >= 500:
                self._link.move_on(f"HTTP {status}: {why}", moves)
            return
        by_id = {job.id: job for job in jobs}
        for answer in _answers(data):
            job = by_id.get(answer.get("job_id"))
            if job is None:
                continue
            if job.id in whole:
                job.server_texts = _server_texts(whole[job.id], answer.get("offsets"))
            if not answer.get("ok") or answer.get("canceled"):
                if not job.canceled:
                    log.info("job %s stops: %s", job.id, answer.get("error") or "canceled")
                job.canceled = True

    # ----- delivering results

    async def _upload_files(
        self, jobs: list[Job], entries: list[dict[str, Any]], relay: ProgressRelay
    ) -> None:
        """Uploads the media files of each job's result (entry["files"]), which its outputs
        reference, before the results are posted. The server being away is retried as for
        results; a file it refuses for a reason a retry cannot fix (the lease gone, 409,
        included) becomes that job's error, which the server then takes or answers for.
        A hand-back (second signal) stops the uploads: the jobs not uploaded yet are handed
        back instead."""
        for job, entry in zip(jobs, entries, strict=True):
            files = entry.pop("files", None) or {}
            for name, media in files.items():
                problem = "handing back" if self._hand_back.done() else (
                    await self._upload(job, name, media))
                if problem is None:
                    relay.alive()
                    continue
                if self._hand_back.done():
                    entry.clear()
                    entry["release"] = True
                else:
                    entry.clear()
                    entry["error"] = problem
                    log.error("job %s fails: %s", job.id, problem)
                break

    async def _upload(self, job: Job, name: str, media: MediaFile) -> str | None:
        """Uploads one file, retrying while the server is away (for grace_s once stopping);
        None when it is stored, else why it is not (the job's error)."""
        deadline = None
        while True:
            moves = self._link.moves  # (a failed progress report may move the link on)
            try:
                await self._link.upload(job.id, job.lease_id, name, media.media_type, media.data)
                self._link.reached()
                return None
            except FileUploadError as e:
                if e.status < 500 and e.status not in RETRIED_4XX:
                    return f"result file {name} refused by the server ({e.status}): {e.message}"
                problem: object = f"HTTP {e.status}: {e.message[:200]}"
            except RETRYABLE as e:
                problem = str(e) or type(e).__name__
            if self._stopping.done() and deadline is None:
                deadline = time.monotonic() + self.settings.grace_s
            if self._hand_back.done() or (deadline is not None and time.monotonic() > deadline):
                return f"result file {name} not delivered: {problem}"
            await self._retry_later(problem, deadline, moves)

    async def _send_results(
        self, jobs: list[Job], entries: list[dict[str, Any]], give_up_s: float | None = None,
        poll: bool = True,
    ) -> list[Job] | None:
        """Posts a batch's results in requests that fit the server's limits, the last one also
        polling for the next batch (unless stopping); returns that batch ([] when none came),
        None when stopping. The server being away is retried with backoff; a result it refuses
        fails its job with the reason (workers/runtime/delivery.py).

        Once stopping, results not yet delivered are tried for grace_s at most, those the
        server may hold already (their request was cut short) once more, and none after a
        second signal: the leases expire and the jobs run again elsewhere, late but not lost.
        With give_up_s (a hand-back, a stalled batch's errors), tries only that long, and
        without a poll; without `poll` (continuous batching polls on its own), no poll."""
        reports = [
            {"job_id": job.id, "lease_id": job.lease_id, **entry}
            for job, entry in zip(jobs, entries, strict=True)
        ]
        pending = delivery.pack(reports, self._results_budget())
        deadline = time.monotonic() + give_up_s if give_up_s is not None else None
        next_jobs: list[Job] | None = None
        while pending:
            chunk = pending[0]
            polling = (poll and give_up_s is None and not self._stopping.done()
                       and len(pending) == 1)
            self._unsent = sum(len(c.reports) for c in pending) - len(chunk.reports) * polling
            try:
                status, data, size = await self._post_results(chunk, polling)
            except RETRYABLE as e:
                problem: object = str(e) or type(e).__name__
                chunk.maybe_taken |= maybe_taken(e)
            else:
                if status == 0:  # stopping cut the poll short: send them again, without it
                    chunk.maybe_taken = True
                    continue
                if status == 200 or (400 <= status < 500 and status not in RETRIED_4XX):
                    self._link.reached()  # (an answer taken: not one tried again)
                if status == 200:
                    pending.pop(0)
                    self._note_answers(data)
                    if polling:  # (a reply without grants: the next poll asks again)
                        with contextlib.suppress(ProtocolError):
                            next_jobs = self._jobs_from(data)
                    continue
                if 400 <= status < 500 and status not in RETRIED_4XX:
                    pending[:1] = self._after_refusal(chunk, status, data, size)
                    continue
                problem = f"HTTP {status}: {delivery.reason(status, data)}"
            if self._stopping.done() and deadline is None:  # stopping: try for grace_s more
                deadline = time.monotonic() + self.settings.grace_s
            if self._stopping.done() and chunk.maybe_taken:
                log.warning("%s not confirmed (%s): the server may hold them already; if not, "
                            "their leases run out and they run again", chunk.what, problem)
                pending.pop(0)
            elif self._hand_back.done() or (deadline is not None and time.monotonic() > deadline):
                for left in pending:
                    log.warning("gave up delivering %s (%s): their leases run out and they run "
                                "again", left.what, problem)
                pending.clear()
            else:
                await self._retry_later(problem, deadline)
        self._unsent = 0
        if next_jobs is not None:
            return next_jobs
        return None if self._stopping.done() or give_up_s is not None else []

    def _results_budget(self) -> int | None:
        """The most bytes of reports a results request may carry (None: no limit known yet)."""
        if self._refused_bytes is None:
            return None
        return self._refused_bytes - len(orjson.dumps(self._poll_body())) - 256

    async def _post_results(self, chunk: Chunk, polling: bool) -> tuple[int, Any, int]:
        """Posts one chunk (with a poll for the next batch); returns (status, data, the body's
        size), status 0 when a stop cut the poll short."""
        body: dict[str, Any] = {"reports": chunk.reports}
        if not polling:
            data = orjson.dumps(body)
            return (*await self._link.post(WORKER_RESULTS_PATH, data, 60), len(data))
        body["poll"] = self._poll_body()
        data = orjson.dumps(body)
        reply = await self._link.post_unless(
            WORKER_RESULTS_PATH, data, body["poll"]["wait_s"] + 60, self._stopping
        )
        return (0, None, len(data)) if reply is None else (*reply, len(data))

    def _note_answers(self, data: Any) -> None:
        for answer in _answers(data):
            if not answer.get("ok"):
                log.warning("result of job %s not taken: %s", answer.get("job_id"),
                            answer.get("error"))

    def _after_refusal(self, chunk: Chunk, status: int, data: Any, size: int) -> list[Chunk]:
        """What to send instead of a chunk the server refused: its reports in smaller chunks,
        or, for one report, the error that fails its job (nothing if that was refused too)."""
        why = delivery.reason(status, data)
        if status == 413:
            self._refused_bytes = min(self._refused_bytes or size, size)
        if len(chunk.reports) > 1:
            parts = delivery.split(chunk, self._results_budget() if status == 413 else None)
            log.warning("%d results refused together (%d: %s); sending them in %d requests",
                        len(chunk.reports), status, why, len(parts))
            return parts
        (report,) = chunk.reports
        replacement = delivery.refused(report, status, why)
        if replacement is None:
            log.error("%s refused (%d: %s): its lease runs out and it runs again",
                      chunk.what, status, why)
            return []
        log.error("result of job %s refused (%d: %s): the job fails with that reason",
                  report["job_id"], status, why)
        return [Chunk([replacement], chunk.maybe_taken)]


def _server_texts(outputs: dict[str, Any], lengths: Any) -> dict[str, str]:
    """The texts a server holds of the whole `outputs` it was sent, from its answer's lengths
    (none where it gave none: an older server, or a refusal; the next report sends them whole)."""
    if not isinstance(lengths, dict):
        return {}
    held = {}
    for key, length in lengths.items():
        text = outputs.get(key)
        if isinstance(text, str) and isinstance(length, int) and 0 < length <= len(text):
            held[key] = text[:length]
    return held


def _answers(data: Any) -> list[dict[str, Any]]:
    """The per-job answers of a progress or results reply; what is not one is skipped (the
    runner acts on a server's answers, it does not trust their shape)."""
    answers = data.get("answers") if isinstance(data, dict) else None
    return [a for a in answers if isinstance(a, dict)] if isinstance(answers, list) else []

