"""The durable side of the default job store: every job change written to one SQLite file.

Writes are grouped: the changes made during one turn of the event loop commit together in one
transaction at the end of that turn. A caller that must not answer before its change is durable
(a submit, a result, a cancel) awaits the future `write` returns; others fire and forget.

Where commits run: WAL with synchronous=NORMAL and automatic checkpoints off makes a commit a
plain write() into the WAL file, no fsync, tens of microseconds for a job row. Such a commit runs
on the event loop: sending it to a thread costs more (a wake-up and a GIL hand-off each way) than
the commit itself. A group carrying large values (images in inputs or outputs) commits in the
journal's thread instead, and so do checkpoints, the one step that fsyncs. A committed change
survives the server process dying; a power cut may lose the changes since the last checkpoint
(every few seconds), which synchronous=FULL would avoid at several times the cost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from api_server.store.journal import JournalError
from api_server.store.model import INLINE_VALUE_MAX_BYTES, Job
from jobhive.protocol import JobStatus

log = logging.getLogger("jobhive.journal")

INLINE_COMMIT_MAX_BYTES = 256 * 1024  # larger groups commit in the journal's thread
FAILURE_LOG_EVERY_S = 1.0  # failed commits (a full disk) are logged at most this often

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    owner TEXT NOT NULL,
    inputs BLOB NOT NULL,
    status TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    lease_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    expires_at_ms INTEGER,
    outputs BLOB,
    error TEXT
)
"""
_INSERT = (
    "INSERT OR REPLACE INTO jobs (id, endpoint, owner, inputs, status, created_at_ms, attempts,"
    " lease_id, worker_id, started_at_ms, finished_at_ms, expires_at_ms, outputs, error)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE jobs SET status = ?, attempts = ?, lease_id = ?, worker_id = ?, started_at_ms = ?,"
    " finished_at_ms = ?, expires_at_ms = ?, error = ? WHERE id = ?"
)
_FINISH = (
    "UPDATE jobs SET status = ?, attempts = ?, lease_id = ?, worker_id = ?, started_at_ms = ?,"
    " finished_at_ms = ?, expires_at_ms = ?, error = ?, outputs = ? WHERE id = ?"
)
_DELETE = "DELETE FROM jobs WHERE id = ?"

_Op = tuple[str, tuple[object, ...]]


class SqliteJournal:
    """Group-committing writer of job rows, their loader at start-up, and the reader of the
    large values the store does not keep in memory. A failed commit rolls back whole and fails
    every future of its group with a JournalError.

    Args:
        path (Path): the database file; created with its folder when missing.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobhive-sqlite")
        self._db: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None  # the thread's own connection
        self._pending: list[_Op] = []
        self._pending_bytes = 0
        self._group: asyncio.Future[None] | None = None  # what the pending changes resolve
        self._failures = 0
        self._failure_logged_s = -math.inf
        self._scheduled = False  # a flush is queued for the end of this loop turn
        self._in_thread: asyncio.Future[None] | None = None  # a large group committing there

    async def open(self, now_ms: int) -> list[Job]:
        """Opens the file and returns the jobs to keep, oldest first; drops expired results."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._open, now_ms)

    def _open(self, now_ms: int) -> list[Job]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in the thread, see above
        db.execute(_SCHEMA)
        db.execute(
            "DELETE FROM jobs WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?", (now_ms,)
        )
        # Large inputs and outputs stay on disk: read when a worker or a client needs them.
        rows = db.execute(
            "SELECT id, endpoint, owner, CASE WHEN length(inputs) <= ?1 THEN inputs END,"
            " length(inputs), status, created_at_ms, attempts, lease_id, worker_id,"
            " started_at_ms, finished_at_ms, expires_at_ms,"
            " CASE WHEN length(outputs) <= ?1 THEN outputs END, coalesce(length(outputs), 0),"
            " error FROM jobs ORDER BY created_at_ms, rowid",
            (INLINE_VALUE_MAX_BYTES,),
        ).fetchall()
        self._db = db
        return [
            Job(
                id=r[0],
                endpoint=r[1],
                owner=r[2],
                inputs_json=r[3],
                inputs_bytes=r[4],
                status=JobStatus(r[5]),
                created_at_ms=r[6],
                attempts=r[7],
                lease_id=r[8],
                worker_id=r[9],
                started_at_ms=r[10],
                finished_at_ms=r[11],
                expires_at_ms=r[12],
                outputs_json=r[13],
                outputs_bytes=r[14],
                error=r[15],
                progress=100.0 if r[5] == JobStatus.DONE else 0.0,
            )
            for r in rows
        ]

    def insert(self, job: Job, inputs_json: bytes) -> asyncio.Future[None]:
        """Writes a new job row; the future resolves once committed."""
        return self._write(
            _INSERT,
            (
                job.id,
                job.endpoint,
                job.owner,
                inputs_json,
                job.status.value,
                job.created_at_ms,
                job.attempts,
                job.lease_id,
                job.worker_id,
                job.started_at_ms,
                job.finished_at_ms,
                job.expires_at_ms,
                None,
                job.error,
            ),
            len(inputs_json),
        )

    def update(
        self, job: Job, change: Mapping[str, Any], outputs_json: bytes | None = None
    ) -> asyncio.Future[None]:
        """Writes a job's state with `change` applied (and its outputs, when given); the
        future resolves once committed."""
        get = change.get
        params = (
            get("status", job.status).value,
            get("attempts", job.attempts),
            get("lease_id", job.lease_id),
            get("worker_id", job.worker_id),
            get("started_at_ms", job.started_at_ms),
            get("finished_at_ms", job.finished_at_ms),
            get("expires_at_ms", job.expires_at_ms),
            get("error", job.error),
        )
        if outputs_json is None:
            return self._write(_UPDATE, (*params, job.id))
        return self._write(_FINISH, (*params, outputs_json, job.id), len(outputs_json))

    async def read_inputs(self, job_ids: list[str]) -> dict[str, bytes]:
        """The stored inputs of these jobs (in the journal's thread: they may be large)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._read, "inputs", job_ids)

    async def read_outputs(self, job_id: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._thread, self._read, "outputs", [job_id])
        return found.get(job_id)

    def _read(self, column: str, job_ids: list[str]) -> dict[str, bytes]:
        db = self._thread_db()
        marks = ", ".join("?" * len(job_ids))
        rows = db.execute(f"SELECT id, {column} FROM jobs WHERE id IN ({marks})", job_ids)
        return {job_id: value for job_id, value in rows if value is not None}

    def delete(self, job_ids: Iterable[str]) -> asyncio.Future[None]:
        """Forgets jobs (expired results)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)  # (no ids: nothing to wait for)
        for job_id in job_ids:
            future = self._write(_DELETE, (job_id,))
        return future

    def joins(self, write: Awaitable[None]) -> bool:
        """Whether a write made now would be in the same commit as `write` (the group still
        pending)."""
        return write is self._group

    def _write(
        self, sql: str, params: tuple[object, ...], value_bytes: int = 0
    ) -> asyncio.Future[None]:
        """Queues a change (carrying value_bytes of inputs or outputs) for the group commit at
        the end of this loop turn; every change of a group shares its one future."""
        loop = asyncio.get_running_loop()
        self._pending.append((sql, params))
        self._pending_bytes += value_bytes
        if self._group is None:
            self._group = loop.create_future()
        if not self._scheduled and self._in_thread is None:
            self._scheduled = True
            loop.call_soon(self._flush)  # after every change of this loop turn is queued
        return self._group

    def _flush(self) -> None:
        """Commits the pending group: here, or in the thread when it carries large values."""
        self._scheduled = False
        if not self._pending or self._in_thread is not None:
            return  # a commit in the thread flushes what is pending once it is done
        ops, self._pending = self._pending, []
        group, self._group = self._group, None
        assert group is not None
        large, self._pending_bytes = self._pending_bytes > INLINE_COMMIT_MAX_BYTES, 0
        if large:
            loop = asyncio.get_running_loop()
            self._in_thread = loop.run_in_executor(self._thread, self._commit, ops)
            self._in_thread.add_done_callback(lambda done: self._committed(group, len(ops), done))
            return
        error: Exception | None = None
        try:
            self._commit(ops)
        except (sqlite3.Error, OSError) as e:
            error = JournalError(e)
        self._settle(group, error, len(ops))

    def _committed(self, group: asyncio.Future[None], count: int, done: asyncio.Future[None]
                   ) -> None:
        self._in_thread = None
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if isinstance(error, sqlite3.Error | OSError):
            error = JournalError(error)
        self._settle(group, error, count)
        if self._pending:
            self._flush()

    def _settle(self, group: asyncio.Future[None], error: BaseException | None, count: int
                ) -> None:
        if error is not None:
            self._failures += 1
            now = time.monotonic()
            if now - self._failure_logged_s >= FAILURE_LOG_EVERY_S:  # a full disk refuses
                log.error("journal write of %d changes failed: %s (%d failed writes since the "
                          "last such line)", count, error, self._failures)
                self._failure_logged_s, self._failures = now, 0
        if group.done():
            return
        if error is not None:
            group.set_exception(error)
            group.exception()  # retrieved here: a group nobody awaits any more is no error
        else:
            group.set_result(None)

    async def checkpoint(self) -> None:
        """Copies the WAL into the database file (fsync), in the thread; run it every few s."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._checkpoint)

    def _checkpoint(self) -> None:
        self._thread_db().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _thread_db(self) -> sqlite3.Connection:
        """The thread's own connection (reads and checkpoints), opened on first use."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self._path, check_same_thread=False)
        return self._checkpointer

    def _commit(self, ops: list[_Op]) -> None:
        assert self._db is not None
        self._db.execute("BEGIN")
        try:
            for sql, params in ops:
                self._db.execute(sql, params)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Commits what is pending, checkpoints, then closes the file."""
        while self._in_thread is not None:
            await asyncio.shield(self._in_thread)
        self._flush()
        while self._in_thread is not None:
            await asyncio.shield(self._in_thread)
        loop = asyncio.get_running_loop()
        if self._db is not None:
            await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        assert self._db is not None
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._db = None
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
