"""Progress from the model thread to the runner: the latest report of each job, coalesced."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from workers.runtime.model import Job


class ProgressRelay:
    """Takes progress reports from the model thread for the runner to send, latest first.

    `send` (the runner's sending loop) starts on the first report, or when `start` is called
    for a heartbeat: a batch that finishes quickly and reports nothing costs no task at all.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, send: Callable[[ProgressRelay], Awaitable[None]]
    ) -> None:
        self._loop = loop
        self._send = send
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    def __call__(self, job: Job, percent: float, outputs: dict[str, Any] | None = None) -> None:
        """What a model calls (from its thread): progress in percent, and optional outputs."""
        with self._lock:
            self._latest[job.id] = (max(0.0, min(100.0, float(percent))), outputs)
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.wake.set()
        self.start()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._send(self))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def take(self) -> dict[str, tuple[float, dict[str, Any] | None]]:
        with self._lock:
            latest, self._latest = self._latest, {}
        return latest
