"""Progress from the model thread to the runner: the latest report of each job, coalesced, and
the batch's last sign of life (which the stall watch reads)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from workers.runtime.model import Job

log = logging.getLogger("jobhive.worker")


class ProgressRelay:
    """Takes progress reports from the model thread for the runner to send, latest first.

    `send` (the runner's sending loop) starts on the first report, or when `start` is called
    for a heartbeat: a batch that finishes quickly and reports nothing costs no task at all.
    A job's first report also sets `first`, so that the runner sends it without waiting out
    its progress interval (a chat's first token is its time to first token).
    The relay also watches the batch's life: `stalled` resolves (to the seconds of silence)
    once neither a report nor `alive()` came for stall_s; a timer, not a task.

    Args:
        loop (asyncio.AbstractEventLoop): the runner's loop.
        send (Callable[[ProgressRelay], Awaitable[None]]): the runner's sending loop.
        stall_s (float): the longest silence before the batch counts as stalled.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[ProgressRelay], Awaitable[None]],
        stall_s: float,
    ) -> None:
        self._loop = loop
        self._send = send
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._reported: set[str] = set()  # the jobs that reported (until forgotten)
        self._task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.first = asyncio.Event()  # a job reported for the first time
        self.stall_s = stall_s
        # Written by the model thread, read by the loop: a float store is atomic in CPython.
        self.alive_at = time.monotonic()
        self.stalled: asyncio.Future[float] = loop.create_future()
        self._watch = loop.call_later(stall_s, self._check_life)

    def __call__(self, job: Job, percent: float, outputs: dict[str, Any] | None = None) -> None:
        """What a model calls (from its thread): progress in percent, and optional outputs."""
        self.alive_at = time.monotonic()
        with self._lock:
            self._latest[job.id] = (max(0.0, min(100.0, float(percent))), outputs)
            first = job.id not in self._reported
            self._reported.add(job.id)
        self._loop.call_soon_threadsafe(self._wake, first)

    def alive(self) -> None:
        """What a model calls (from its thread) to show it works, with nothing to report."""
        self.alive_at = time.monotonic()

    @property
    def lively(self) -> bool:
        """Whether the model showed life within stall_s (only then are leases renewed)."""
        return time.monotonic() - self.alive_at < self.stall_s

    def _check_life(self) -> None:
        silent_s = time.monotonic() - self.alive_at
        if silent_s >= self.stall_s:
            self.stalled.set_result(silent_s)
        else:
            self._watch = self._loop.call_later(self.stall_s - silent_s, self._check_life)

    def forget(self, job_id: str) -> None:
        """The job ended (continuous batching): a report still waiting for it is dropped."""
        with self._lock:
            self._latest.pop(job_id, None)
            self._reported.discard(job_id)

    def _wake(self, first: bool = False) -> None:
        self.wake.set()
        if first:
            self.first.set()
        self.start()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._send(self))

    async def stop(self) -> None:
        self._watch.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # the batch's results must still go: its progress is no reason
                log.exception("the progress relay failed")

    def take(self) -> dict[str, tuple[float, dict[str, Any] | None]]:
        with self._lock:
            latest, self._latest = self._latest, {}
        return latest
