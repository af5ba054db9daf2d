"""Where the server checks images and audio: a pool of worker processes.

Decoding and re-encoding media is CPU work that holds the GIL for long stretches: in threads it
would starve the event loop of the server process (measured: callbacks held 0.1-0.3 s while four
large images were checked). In processes it runs beside the loop instead, and a decoder that
crashes on a hostile file takes down a pool process, not the server.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

log = logging.getLogger("jobhive.media")

T = TypeVar("T")


PARENT_CHECK_S = 1.0  # how often a pool process checks that the server is still there


def _exit_with_parent(parent_pid: int) -> None:
    """Pool process start-up: exit once the server is gone, even if it was SIGKILLed and could
    not shut the pool down, rather than linger as an orphan."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="jobhive-parent-watch", daemon=True).start()


class MediaCrash(Exception):
    """A media check crashed its process twice: the value is taken to be the cause."""


class MediaPool:
    """A process pool that starts again when a process dies. Its processes start with the
    first check (about 0.3 s, once), so a server that never sees media never starts them.

    Args:
        processes (int): how many checks may run at once.
    """

    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: the server has threads (SQLite, the loop), which fork does not copy.
        return ProcessPoolExecutor(
            self._processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs fn(*args) in a pool process. When a process dies (a check crashed, this one or
        another running beside it) the pool starts again and the call is tried once more.

        Raises:
            MediaCrash: the call crashed its process both times.
        """
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            executor = self._executor
            try:
                return await loop.run_in_executor(executor, fn, *args)
            except BrokenProcessPool:
                if executor is self._executor:  # the first to notice starts a new pool
                    log.error("a media check process died (attempt %d); restarting the pool",
                              attempt)
                    executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = self._start()
        raise MediaCrash("the value crashed the media decoder")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
