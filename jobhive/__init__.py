"""jobhive's Python client: submit jobs, follow their progress, read their results.

    from jobhive import Client

    with Client("http://127.0.0.1:7777") as client:
        outputs = client.result(client.submit("echo", {"text": "hi"}))
"""

from jobhive.client import (
    AsyncClient,
    AsyncFile,
    Client,
    Event,
    File,
    Job,
    backoff_delay_s,
    new_job_id,
)
from jobhive.errors import (
    ApiError,
    AuthError,
    ConflictError,
    ConnectionFailed,
    JobCanceled,
    JobFailed,
    JobhiveError,
    NotFoundError,
    QueueFullError,
    TooLargeError,
    ValidationError,
    WaitTimeout,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncFile",
    "AuthError",
    "Client",
    "ConflictError",
    "ConnectionFailed",
    "Event",
    "File",
    "Job",
    "JobCanceled",
    "JobFailed",
    "JobhiveError",
    "NotFoundError",
    "QueueFullError",
    "TooLargeError",
    "ValidationError",
    "WaitTimeout",
    "backoff_delay_s",
    "new_job_id",
]
