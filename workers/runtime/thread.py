"""The model thread: where a model worker's `load` and `run` execute, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any


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
                result, error = fn(*args), None
            except BaseException as e:  # handed to the awaiting coroutine, not lost here
                result, error = None, e
            # A closed loop: the call was handed back and has ended since; none waits for it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
