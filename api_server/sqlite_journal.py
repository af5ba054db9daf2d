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
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from api_server.jobs import Job, JobStatus

log = logging.getLogger("jobhive.journal")

INLINE_COMMIT_MAX_BYTES = 256 * 1024  # larger groups commit in the journal's thread

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
    " finished_at_ms = ?, expires_at_ms = ?, outputs = ?, error = ? WHERE id = ?"
)
_DELETE = "DELETE FROM jobs WHERE id = ?"

_Op = tuple[str, tuple[object, ...]]


class SqliteJournal:
    """Group-committing writer of job rows, and their loader at start-up.

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
        self._waiters: list[asyncio.Future[None]] = []
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
        rows = db.execute(
            "SELECT id, endpoint, owner, inputs, status, created_at_ms, attempts, lease_id,"
            " worker_id, started_at_ms, finished_at_ms, expires_at_ms, outputs, error"
            " FROM jobs ORDER BY created_at_ms, rowid"
        ).fetchall()
        self._db = db
        return [
            Job(
                id=r[0],
                endpoint=r[1],
                owner=r[2],
                inputs_json=r[3],
                status=JobStatus(r[4]),
                created_at_ms=r[5],
                attempts=r[6],
                lease_id=r[7],
                worker_id=r[8],
                started_at_ms=r[9],
                finished_at_ms=r[10],
                expires_at_ms=r[11],
                outputs_json=r[12],
                error=r[13],
                progress=100.0 if r[4] == JobStatus.DONE else 0.0,
            )
            for r in rows
        ]

    def insert(self, job: Job) -> asyncio.Future[None]:
        """Writes a new job row (or replaces one); the future resolves once committed."""
        return self._write(
            _INSERT,
            (
                job.id,
                job.endpoint,
                job.owner,
                job.inputs_json,
                job.status.value,
                job.created_at_ms,
                job.attempts,
                job.lease_id,
                job.worker_id,
                job.started_at_ms,
                job.finished_at_ms,
                job.expires_at_ms,
                job.outputs_json,
                job.error,
            ),
        )

    def update(self, job: Job) -> asyncio.Future[None]:
        """Writes a job's state as it is now; the future resolves once committed."""
        return self._write(
            _UPDATE,
            (
                job.status.value,
                job.attempts,
                job.lease_id,
                job.worker_id,
                job.started_at_ms,
                job.finished_at_ms,
                job.expires_at_ms,
                job.outputs_json,
                job.error,
                job.id,
            ),
        )

    def delete(self, job_ids: Iterable[str]) -> asyncio.Future[None]:
        """Forgets jobs (expired results)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for job_id in job_ids:
            future = self._write(_DELETE, (job_id,))
        return future

    def _write(self, sql: str, params: tuple[object, ...]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((sql, params))
        self._pending_bytes += sum(len(p) for p in params if isinstance(p, bytes))
        self._waiters.append(future)
        if not self._scheduled and self._in_thread is None:
            self._scheduled = True
            loop.call_soon(self._flush)  # after every change of this loop turn is queued
        return future

    def _flush(self) -> None:
        """Commits the pending group: here, or in the thread when it carries large values."""
        self._scheduled = False
        if not self._pending or self._in_thread is not None:
            return  # a commit in the thread flushes what is pending once it is done
        ops, self._pending = self._pending, []
        waiters, self._waiters = self._waiters, []
        large, self._pending_bytes = self._pending_bytes > INLINE_COMMIT_MAX_BYTES, 0
        if large:
            loop = asyncio.get_running_loop()
            self._in_thread = loop.run_in_executor(self._thread, self._commit, ops)
            self._in_thread.add_done_callback(lambda done: self._committed(waiters, done))
            return
        error: Exception | None = None
        try:
            self._commit(ops)
        except (sqlite3.Error, OSError) as e:
            error = e
        self._settle(waiters, error, len(ops))

    def _committed(self, waiters: list[asyncio.Future[None]], done: asyncio.Future[None]) -> None:
        self._in_thread = None
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        self._settle(waiters, error, len(waiters))
        if self._pending:
            self._flush()

    @staticmethod
    def _settle(
        waiters: list[asyncio.Future[None]], error: BaseException | None, count: int
    ) -> None:
        if error is not None:
            log.error("journal write of %d changes failed: %s", count, error)
        for w in waiters:
            if not w.done():
                if error is not None:
                    w.set_exception(error)
                else:
                    w.set_result(None)

    async def checkpoint(self) -> None:
        """Copies the WAL into the database file (fsync), in the thread; run it every few s."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._checkpoint)

    def _checkpoint(self) -> None:
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self._path, check_same_thread=False)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _commit(self, ops: list[_Op]) -> None:
        assert self._db is not None
        self._db.execute("BEGIN")
        try:
            for sql, params in ops:
                self._db.execute(sql, params)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
