"""Continuous batching: serving a worker that takes jobs while it runs.

A worker with `takes_jobs_while_running` (the llama4 worker) runs `run_continuously(feed,
progress)` in the model thread for as long as it has jobs: a Session. Meanwhile the runner

- keeps polling, for as many jobs as --max-batch leaves room for beside the running ones, and
  puts those that come into the feed; the model takes them between two of its steps;
- posts each job's result as soon as the model finishes it (a results request without a poll);
- relays progress and renews the leases of the running jobs, as for a batch;
- on a first stop signal, lets no job join (those not taken yet are handed back) and gives the
  running ones grace_s to finish; on a second (or after grace_s) hands them back; a stalled
  model fails them, as for a batch.

The session ends when the model returns (no job running, none arrived). A poll still waiting
then is the idle poll: the jobs it brings start the next session.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.runtime import delivery
from workers.runtime.model import Job
from workers.runtime.progress import ProgressRelay

if TYPE_CHECKING:
    from workers.runtime.runner import Runner

log = logging.getLogger("jobhive.worker")


class RunningFeed:
    """The JobFeed of a session: the event loop puts the jobs polled, the model thread takes
    them and finishes them; each finished job's result entry goes back to the loop.

    Args:
        loop (asyncio.AbstractEventLoop): the runner's loop.
        on_finish (Callable[[Job, dict], None]): called on the loop with each job's entry.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_finish: Callable[[Job, dict[str, Any]], None]) -> None:
        self._loop = loop
        self._on_finish = on_finish
        self._lock = threading.Lock()
        self._arrived: list[Job] = []
        self._taken: dict[str, Job] = {}
        self.closed = False

    # ----- the model thread's side (JobFeed)

    def take(self) -> list[Job]:
        with self._lock:
            arrived, self._arrived = self._arrived, []
            self._taken.update((job.id, job) for job in arrived)
            if not self._taken:  # none running, none arrived: the session ends
                self.closed = True
            return arrived

    def finish(self, job: Job, outcome: dict[str, Any] | Exception) -> None:
        entry = delivery.result_entry(job, outcome)
        with self._lock:
            if self._taken.pop(job.id, None) is None:
                return  # handed back or failed already: its result is not posted
        self._loop.call_soon_threadsafe(self._on_finish, job, entry)

    # ----- the event loop's side

    def put(self, jobs: list[Job]) -> bool:
        """Offers jobs to the model; False when the session has ended (they start the next)."""
        with self._lock:
            if self.closed:
                return False
            self._arrived.extend(jobs)
            return True

    def close(self) -> list[Job]:
        """Lets no more jobs join; returns those the model had not taken yet."""
        with self._lock:
            self.closed = True
            left, self._arrived = self._arrived, []
            return left

    def drop(self) -> list[Job]:
        """Closes the feed and returns every job not finished yet: the model's later
        outcomes for them are not posted (they are handed back or failed instead)."""
        with self._lock:
            self.closed = True
            left = self._arrived + list(self._taken.values())
            self._arrived, self._taken = [], {}
            return left


class Session:
    """One busy period of a worker that takes jobs while it runs, from the poll that brought
    its first jobs until none is running.

    Args:
        runner (Runner): the runner (its link, its model thread, its stop futures).
        jobs (list[Job]): the jobs of the poll that starts it.
    """

    def __init__(self, runner: Runner, jobs: list[Job]) -> None:
        self.runner = runner
        self.running: list[Job] = []  # put into the feed and not finished, arrival order
        self.sent_at: dict[str, float] = {}  # per job: its last progress (or its start)
        self.finished: list[tuple[Job, dict[str, Any]]] = []  # results not sent yet
        self.room = asyncio.Event()  # a job finished or the model ended: the poller looks
        self.results = asyncio.Event()  # a job finished or the model ended: the sender looks
        self.count = 0  # jobs in all
        self.relay: ProgressRelay  # set by run()
        self.feed = RunningFeed(asyncio.get_running_loop(), self._finished)
        self.feed.put(jobs)
        self._joined(jobs)

    async def run(self) -> list[Job] | None:
        """Runs the session; returns the jobs of the last poll ([] when none came), None when
        stopping.

        Raises:
            ModelStalled: the model showed no life for stall_s (its jobs were failed).
        """
        runner, loop = self.runner, asyncio.get_running_loop()
        started = time.monotonic()
        # 1. Progress and heartbeats for whichever jobs are running (a third of their lease).
        heartbeat_s = min(job.lease_s for job in self.running) / 3
        stall_s = runner.settings.stall_s
        stall_s = runner.model.stall_s if stall_s is None else stall_s
        relay = self.relay = ProgressRelay(
            loop, lambda r: runner._relay_progress(self.running, r, self.sent_at, heartbeat_s),
            stall_s,
        )
        heartbeat = loop.call_later(heartbeat_s, relay.start)
        # 2. The model, and beside it the poller and the results sender.
        model = runner._thread.call(runner.model.run_continuously, self.feed, relay)
        model.add_done_callback(lambda _: self._wake())
        poller = asyncio.ensure_future(self._poll_while(model))
        sender = asyncio.ensure_future(self._send_while(model, relay))
        try:
            handed_back = await self._finish_or_hand_back(model, relay.stalled)
            stalled = relay.stalled.done() and not model.done()
            left = self._left() if stalled else []
            await sender  # every result the model gave is sent
            if stalled:
                await runner._fail_stalled(left, stall_s)  # raises ModelStalled
            if not handed_back and model.exception() is not None:
                await self._fail_left(model.exception())
            next_jobs = await poller  # None: a stop came; else the idle poll's jobs
        except BaseException:
            poller.cancel()
            sender.cancel()
            raise
        finally:
            runner._running = 0
            heartbeat.cancel()
            await relay.stop()
        log.info("%d %s jobs ran continuously in %.3f s", self.count, runner.model.serves,
                 time.monotonic() - started)
        return None if handed_back else next_jobs

    # ----- the jobs

    def _joined(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        self.running.extend(jobs)
        self.count += len(jobs)
        self.sent_at.update(dict.fromkeys((job.id for job in jobs), now))
        self.runner._running = len(self.running)

    def _finished(self, job: Job, entry: dict[str, Any]) -> None:
        """On the loop: a job ended in the model; its result goes at once."""
        self.running.remove(job)
        self.runner._running = len(self.running)
        self.sent_at.pop(job.id, None)
        self.relay.forget(job.id)
        self.finished.append((job, entry))
        self._wake()

    def _left(self) -> list[Job]:
        """The jobs not finished, which the model will not report on any more."""
        left = self.feed.drop()
        for job in left:
            job.canceled = True  # let the model stop early if it checks
            self.running.remove(job)
            self.sent_at.pop(job.id, None)
        self.runner._running = len(self.running)
        self._wake()
        return left

    def _wake(self) -> None:
        self.room.set()
        self.results.set()

    # ----- polling and sending beside the model

    async def _poll_while(self, model: asyncio.Future[Any]) -> list[Job] | None:
        """Polls for the room --max-batch leaves while the model runs; returns the jobs of a
        poll that came back after the model ended ([] when it brought none), None when
        stopping."""
        runner = self.runner
        while not runner._stopping.done():
            room = runner.settings.max_batch - len(self.running)
            if room <= 0 and not model.done():
                self.room.clear()
                await self.room.wait()
                continue
            ended = model.done()
            jobs = await runner._poll(max(room, 1))
            if jobs is None:
                return None
            if not jobs:
                if ended:  # a poll begun after the model ended found nothing
                    return []
                continue
            if not self.feed.put(jobs):
                return jobs  # the model ended meanwhile: they start the next session
            self._joined(jobs)
        return None

    async def _send_while(self, model: asyncio.Future[Any], relay: ProgressRelay) -> None:
        """Posts the results of the jobs that finished, as they finish, until the model ended
        and all are sent."""
        while True:
            self.results.clear()
            if self.finished:
                done, self.finished = self.finished, []
                jobs, entries = [job for job, _ in done], [entry for _, entry in done]
                await self.runner._upload_files(jobs, entries, relay)
                await self.runner._send_results(jobs, entries, poll=False)
            elif model.done() or (self.feed.closed and not self.running):
                return  # (closed with jobs running: a first stop; they may still finish)
            else:
                await self.results.wait()

    # ----- the end

    async def _finish_or_hand_back(self, model: asyncio.Future[Any],
                                   stalled: asyncio.Future[float]) -> bool:
        """Waits for the model to end; True when its jobs were handed back instead (a stop
        and grace_s, or a second stop). A stalled model is left to the caller."""
        runner = self.runner
        await asyncio.wait({model, runner._stopping, stalled},
                           return_when=asyncio.FIRST_COMPLETED)
        if model.done() or stalled.done():
            return False
        # A first stop: no job joins any more, those not taken yet go back now.
        self.room.set()
        waiting = self.feed.close()
        for job in waiting:
            self.running.remove(job)
            self.sent_at.pop(job.id, None)
        if waiting:
            await runner._send_results(waiting, [{"release": True}] * len(waiting),
                                       runner.settings.grace_s)
        log.warning("waiting up to %g s for %d running jobs", runner.settings.grace_s,
                    len(self.running))
        await asyncio.wait({model, runner._hand_back, stalled}, timeout=runner.settings.grace_s,
                           return_when=asyncio.FIRST_COMPLETED)
        if model.done() or stalled.done():
            return False
        left = self._left()
        await runner._send_results(left, [{"release": True}] * len(left),
                                   runner.settings.grace_s)
        return True

    async def _fail_left(self, error: BaseException) -> None:
        """run_continuously raised: every job it had not finished fails with the reason."""
        left = self._left()
        log.error("%s jobs failed (%s: %s): %s", len(left), type(error).__name__, error,
                  ", ".join(job.id for job in left))
        message = str(error) or type(error).__name__
        await self.runner._send_results(left, [{"error": message}] * len(left), poll=False)
