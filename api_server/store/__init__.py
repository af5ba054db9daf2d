"""The job store: the job model, the queues, the worker registry, and the journal behind them.

`JobStore` is the interface the routes use (a second backend implements the same methods);
`Journal` is what it needs of durable storage: `SqliteJournal` on disk, `MemoryJournal` in tests.
"""

from api_server.store.jobstore import JobStore
from api_server.store.journal import Journal, JournalError, MemoryJournal
from api_server.store.model import (
    Clock,
    JobIdConflict,
    JobView,
    QueueFull,
    ReportAnswer,
    StoreError,
    StoreUnavailable,
    WorkerReport,
    now_ms,
)
from api_server.store.sqlite import SqliteJournal

__all__ = [
    "Clock",
    "JobIdConflict",
    "JobStore",
    "JobView",
    "Journal",
    "JournalError",
    "MemoryJournal",
    "QueueFull",
    "ReportAnswer",
    "SqliteJournal",
    "StoreError",
    "StoreUnavailable",
    "WorkerReport",
    "now_ms",
]
