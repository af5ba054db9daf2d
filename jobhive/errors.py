"""The exceptions the client raises: one class per way a call can fail.

    JobhiveError
    ├── ConnectionFailed        the server could not be reached, even after retries
    ├── WaitTimeout             wait()/result() gave up before the job finished
    ├── JobFailed               result(): the job finished with an error
    ├── JobCanceled             result(): the job was canceled
    └── ApiError                the server answered with an error status
        ├── ValidationError     400, with one message per bad field in `.fields`
        ├── AuthError           401 (missing or wrong key) or 403 (another key's job)
        ├── NotFoundError       404
        ├── ConflictError       409 (a job_id already used with other inputs)
        ├── TooLargeError       413
        └── QueueFullError      429, with `.retry_after_s`
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobhive.client import Job


class JobhiveError(Exception):
    """Base of every error the client raises."""


class ConnectionFailed(JobhiveError):
    """The server could not be reached (refused, reset, timed out), even after the retries."""


class ApiError(JobhiveError):
    """The server refused a request.

    Args:
        status (int): the HTTP status.
        message (str): the server's `error` message.
        fields (Mapping[str, str] | None): the server's `fields`, one reason per bad field.
    """

    def __init__(self, status: int, message: str, fields: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.fields = dict(fields or {})
        details = "; ".join(f"{name}: {reason}" for name, reason in self.fields.items())
        super().__init__(f"HTTP {status}: {message}" + (f" ({details})" if details else ""))


class ValidationError(ApiError):
    """400: bad inputs; `.fields` maps each bad field to why."""


class AuthError(ApiError):
    """401: a missing or wrong client key; 403: the job belongs to another key."""


class NotFoundError(ApiError):
    """404: no such endpoint, or no such job (unknown, or its result expired)."""


class ConflictError(ApiError):
    """409: the job_id was already used with other inputs."""


class TooLargeError(ApiError):
    """413: the request body is over the server's limit."""


class QueueFullError(ApiError):
    """429: the queue is full or the rate limit was hit; try again after `.retry_after_s`."""

    def __init__(
        self,
        status: int,
        message: str,
        fields: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(status, message, fields)
        self.retry_after_s = retry_after_s


class _JobEnded(JobhiveError):
    def __init__(self, job: Job, message: str) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(_JobEnded):
    """The job finished with an error; `.job.error` has the message."""

    def __init__(self, job: Job) -> None:
        super().__init__(job, f"job {job.job_id} failed: {job.error}")


class JobCanceled(_JobEnded):
    """The job was canceled before it finished."""

    def __init__(self, job: Job) -> None:
        super().__init__(job, f"job {job.job_id} was canceled")


class WaitTimeout(_JobEnded, TimeoutError):
    """wait() or result() ran out of time; `.job` is the job as last seen (not finished)."""

    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(job, f"job {job.job_id} still {job.status} after {timeout_s:g} s")


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
}


def error_for(status: int, body: Any, headers: Mapping[str, str]) -> ApiError:
    """The exception for an error reply.

    Args:
        status (int): the HTTP status (400 or more).
        body (Any): the decoded JSON body, `{"error": ..., "fields": {...}}`, or the raw text
            when the reply was not JSON (a proxy's error page).
        headers (Mapping[str, str]): the reply's headers (Retry-After is read for 429).

    Returns:
        ApiError: the subclass for the status, or ApiError itself for any other status.
    """
    if isinstance(body, dict):
        message = str(body.get("error") or f"HTTP {status}")
        fields = body.get("fields") if isinstance(body.get("fields"), dict) else None
    else:
        message, fields = str(body or f"HTTP {status}")[:500], None
    if status == 429:
        return QueueFullError(status, message, fields, _seconds(headers.get("Retry-After")))
    return _BY_STATUS.get(status, ApiError)(status, message, fields)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare enough to treat as "unknown"
        return None
