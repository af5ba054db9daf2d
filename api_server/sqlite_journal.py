"""The durable side of the default job store: every job change written to one SQLite file.

Writes are grouped: changes queue up while one transaction commits in the journal's own thread,
then the next transaction takes them all. A caller that must not answer before its change is
durable (a submit, a result, a cancel) awaits the future `write` returns; others fire and forget.
WAL with synchronous=NORMAL: a committed change survives the server process dying (not a power
cut between checkpoints, which would need synchronous=FULL at several times the cost).
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
        self._pending: list[_Op] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def open(self, now_ms: int) -> list[Job]:
        """Opens the file and returns the jobs to keep, oldest first; drops expired results."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._open, now_ms)

    def _open(self, now_ms: int) -> list[Job]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
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
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((sql, params))
        self._waiters.append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            ops, self._pending = self._pending, []
            waiters, self._waiters = self._waiters, []
            try:
                await loop.run_in_executor(self._thread, self._commit, ops)
            except (sqlite3.Error, OSError) as e:
                log.error("journal write of %d changes failed: %s", len(ops), e)
                for w in waiters:
                    if not w.done():
                        w.set_exception(e)
                continue
            for w in waiters:
                if not w.done():
                    w.set_result(None)

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
        """Commits what is pending, then closes the file."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)
