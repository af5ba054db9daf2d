"""What the job store needs of durable storage (`Journal`), and an in-memory one for tests.

The store changes its in-memory state only after the journal write that records the change has
succeeded, so a journal that fails (disk full, I/O error) leaves no trace of the change. Writes
are futures so that a backend can group the changes of one event-loop turn into one commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import sqlite3
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Protocol

from api_server.store.model import INLINE_VALUE_MAX_BYTES, Job


class JournalError(Exception):
    """A write that did not happen. `disk_full` tells a full disk from other failures."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.disk_full = is_disk_full(cause)


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
            "disk is full" in str(error)
        )
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class Journal(Protocol):
    """Durable storage of job rows. Every write method returns an awaitable that resolves once
    the change is durable, or raises JournalError (and then nothing of it was written)."""

    async def open(self, now_ms: int) -> list[Job]:
        """The jobs to keep, oldest first (expired results dropped); large values left out
        (`inputs_json` / `outputs_json` None, with their sizes)."""
        ...

    def insert(self, job: Job, inputs_json: bytes) -> Awaitable[None]: ...

    def update(
        self, job: Job, change: Mapping[str, Any], outputs_json: bytes | None = None
    ) -> Awaitable[None]:
        """Writes the job's state with `change` (field: new value) applied; its outputs too
        when `outputs_json` is given."""
        ...

    def delete(self, job_ids: Iterable[str]) -> Awaitable[None]: ...

    def joins(self, write: Awaitable[None]) -> bool:
        """Whether a write made now would commit together with this earlier one (and so
        succeed or fail with it)."""
        ...

    async def read_inputs(self, job_ids: list[str]) -> dict[str, bytes]: ...

    async def read_outputs(self, job_id: str) -> bytes | None: ...

    async def checkpoint(self) -> None: ...

    async def close(self) -> None: ...


class MemoryJournal:
    """A journal kept in a dict, for in-process tests. Set `failure` to an exception to make
    every write fail with it (as a full disk would), and back to None to heal.

    Rows are copies: what the store changes in memory later does not leak in.
    """

    def __init__(self) -> None:
        self.rows: dict[str, Job] = {}
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[str, bytes] = {}
        self.failure: BaseException | None = None
        self.writes = 0

    async def open(self, now_ms: int) -> list[Job]:
        expired = [i for i, j in self.rows.items() if j.expires_at_ms and j.expires_at_ms <= now_ms]
        for job_id in expired:
            self._forget(job_id)
        jobs = []
        for job in sorted(self.rows.values(), key=lambda j: j.created_at_ms):
            inputs, outputs = self.inputs[job.id], self.outputs.get(job.id)
            jobs.append(dataclasses.replace(
                job,
                inputs_json=inputs if len(inputs) <= INLINE_VALUE_MAX_BYTES else None,
                inputs_bytes=len(inputs),
                outputs_json=outputs if outputs and len(outputs) <= INLINE_VALUE_MAX_BYTES
                else None,
                outputs_bytes=len(outputs or b""),
                progress=100.0 if job.status == "done" else 0.0,
                busy=None,
                insert_write=None,
            ))
        return jobs

    def insert(self, job: Job, inputs_json: bytes) -> Awaitable[None]:
        def write() -> None:
            self.rows[job.id] = dataclasses.replace(job, busy=None, insert_write=None)
            self.inputs[job.id] = inputs_json
        return self._write(write)

    def update(
        self, job: Job, change: Mapping[str, Any], outputs_json: bytes | None = None
    ) -> Awaitable[None]:
        def write() -> None:
            self.rows[job.id] = dataclasses.replace(
                job, **{**change, "busy": None, "insert_write": None, "progress_outputs": None}
            )
            if outputs_json is not None:
                self.outputs[job.id] = outputs_json
        return self._write(write)

    def delete(self, job_ids: Iterable[str]) -> Awaitable[None]:
        ids = list(job_ids)
        return self._write(lambda: [self._forget(i) for i in ids])

    def joins(self, write: Awaitable[None]) -> bool:
        return False  # every write here is done at once, alone

    async def read_inputs(self, job_ids: list[str]) -> dict[str, bytes]:
        return {i: self.inputs[i] for i in job_ids if i in self.inputs}

    async def read_outputs(self, job_id: str) -> bytes | None:
        return self.outputs.get(job_id)

    async def checkpoint(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _forget(self, job_id: str) -> None:
        self.rows.pop(job_id, None)
        self.inputs.pop(job_id, None)
        self.outputs.pop(job_id, None)

    def _write(self, write) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            future.set_exception(JournalError(self.failure))
        else:
            write()
            self.writes += 1
            future.set_result(None)
        return future
