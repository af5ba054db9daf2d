"""jobhive's wire protocol: the facts the server, the worker runtime and the client share.

Clients submit a job to an endpoint (`POST /api/v1/endpoints/{name}/jobs`, with a job_id of
their making so a repeat is safe), then read it (`GET /api/v1/jobs/{job_id}`, long-polled with
`?wait=&since=`) or follow it as Server-Sent Events (`.../events`: one event per change, named
after the job's status, each carrying the whole job). Workers long-poll for a batch
(`POST /api/v1/worker/jobs`), each job coming as a grant holding its lease; they report
progress (which renews the lease) and post results, one job or a batch per request, the
results request also asking for the next batch; a worker that stops says goodbye. Binary
outputs (images, audio, video) travel as files: the worker uploads each one
(`PUT /api/v1/worker/jobs/{job_id}/files/{name}?lease_id=...`, the raw bytes) and puts its
file reference (`FileRef`) in the outputs; clients download it
(`GET /api/v1/jobs/{job_id}/files/{name}`), or ask for the job with `?inline=1` to get data
URLs in its place. Binary inputs, and outputs of older workers, are base64 data URLs.

Standard library only: imported by the server, the workers and the client alike.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

# ----- job statuses and the SSE events that carry them


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting in its endpoint's queue for a worker
    RUNNING = "running"  # leased to a worker, which renews the lease with progress reports
    DONE = "done"  # finished; outputs are readable until the endpoint's result_ttl_s
    FAILED = "failed"  # finished with an error (from the worker, or leases/timeouts ran out)
    CANCELED = "canceled"  # stopped by its client; a running worker hears at its next report

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELED)


# The statuses after which a job never changes again; plain strings compare equal to them.
FINISHED_STATUSES = frozenset(s for s in JobStatus if s.finished)

EVENT_QUEUED = "queued"  # the job waits (sent again whenever its queue position changes)
EVENT_PROGRESS = "progress"  # the job runs: progress and progress_outputs
EVENT_RESULT = "result"  # the job is done: its outputs (the last event)
EVENT_ERROR = "error"  # the job failed or was canceled: its error (the last event)

# The SSE event a job's state is sent as; its data is always the whole job (as GET shows it).
# Keyed by JobStatus, which also finds a status given as a plain string.
EVENT_OF_STATUS: Mapping[str, str] = MappingProxyType(
    {
        JobStatus.QUEUED: EVENT_QUEUED,
        JobStatus.RUNNING: EVENT_PROGRESS,
        JobStatus.DONE: EVENT_RESULT,
        JobStatus.FAILED: EVENT_ERROR,
        JobStatus.CANCELED: EVENT_ERROR,
    }
)

# The keys of a job as clients see it (`GET /api/v1/jobs/{id}`, every SSE event's data), in order.
JOB_KEYS = (
    "job_id",
    "endpoint",
    "status",
    "version",
    "progress",
    "queue_position",
    "progress_outputs",
    "outputs",
    "error",
    "attempts",
    "created_at_ms",
    "started_at_ms",
    "finished_at_ms",
)

# ----- servers

DEFAULT_SERVER_URL = "http://127.0.0.1:7777"


def server_urls(urls: str | Sequence[str], paths: bool = True) -> tuple[str, ...]:
    """The server URLs of a client's or worker's argument, in order, without a trailing slash.

    Args:
        urls (str | Sequence[str]): one URL, several separated by commas
            ("http://a:7777,http://b:7777"), or a list or tuple of them.
        paths (bool): whether a URL may have a path (a server behind a proxy's prefix); the
            worker's may not.

    Returns:
        tuple[str, ...]: the URLs (empty items left out).

    Raises:
        ValueError: no URL in it, or one that is not http(s)://HOST[:PORT][/PATH] (saying
            which).
    """
    items = urls.split(",") if isinstance(urls, str) else urls
    found = tuple(url.strip().rstrip("/") for url in items if url.strip().rstrip("/"))
    if not found:
        raise ValueError(f"no server URL in {urls!r}")
    for url in found:
        try:
            parts = urlsplit(url)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            parts, port_ok = None, False
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or \
                not port_ok or parts.query or parts.fragment or (parts.path and not paths):
            form = "http(s)://HOST[:PORT]" + ("[/PATH]" if paths else "")
            raise ValueError(f"{url!r} is not a server URL ({form})")
    return found


# ----- job ids

JOB_ID_MAX_LENGTH = 128
JOB_ID_RULE = f"1 to {JOB_ID_MAX_LENGTH} letters, digits or '_', '.', ':', '-'"
# \A and \Z, not ^ and $: `$` would let a trailing newline through.
JOB_ID_PATTERN = re.compile(rf"\A[A-Za-z0-9_.:-]{{1,{JOB_ID_MAX_LENGTH}}}\Z")


def valid_job_id(value: object) -> bool:
    """True if `value` may be a client's job_id: a string of JOB_ID_RULE."""
    return isinstance(value, str) and JOB_ID_PATTERN.match(value) is not None


def new_job_id(created_at_ms: int | None = None) -> str:
    """A fresh job id, which makes a submit safe to repeat: 32 hex digits, the creation time in
    milliseconds (12 digits, now unless given) and then 80 random bits (unguessable).

    Time first, for the store's speed: ids that grow with time go in at the end of the
    journal's index of ids, so a commit of many new jobs writes one or two index pages, not a
    random page per job (with random ids those page writes, in each commit and again in each
    checkpoint, were about a fifth of the journal's CPU per job)."""
    if created_at_ms is None:
        created_at_ms = time.time_ns() // 1_000_000
    return f"{created_at_ms:012x}{secrets.token_hex(10)}"


# ----- routes: `*_ROUTE` are aiohttp patterns, the functions fill them in (quoted)

API_PREFIX = "/api/v1"
HEALTH_PATH = "/health"
STATUS_PATH = f"{API_PREFIX}/status"
ENDPOINTS_PATH = f"{API_PREFIX}/endpoints"
ENDPOINT_ROUTE = f"{ENDPOINTS_PATH}/{{name}}"
SUBMIT_ROUTE = f"{ENDPOINT_ROUTE}/jobs"
JOB_ROUTE = f"{API_PREFIX}/jobs/{{job_id}}"  # GET (long-poll) and DELETE (cancel)
EVENTS_ROUTE = f"{JOB_ROUTE}/events"
WORKER_POLL_PATH = f"{API_PREFIX}/worker/jobs"
WORKER_PROGRESS_PATH = f"{API_PREFIX}/worker/progress"  # a batch: {"reports": [...]}
WORKER_RESULTS_PATH = f"{API_PREFIX}/worker/results"  # a batch, optionally with "poll"
WORKER_JOB_PROGRESS_ROUTE = f"{API_PREFIX}/worker/jobs/{{job_id}}/progress"  # one job
WORKER_JOB_RESULT_ROUTE = f"{API_PREFIX}/worker/jobs/{{job_id}}/result"  # one job
WORKER_GOODBYE_PATH = f"{API_PREFIX}/worker/goodbye"  # {"worker_id"} → 200 {"ok": true}
# PUT the raw bytes of one output file (Content-Type: its media type) → 200 its FileRef.
WORKER_JOB_FILE_ROUTE = f"{API_PREFIX}/worker/jobs/{{job_id}}/files/{{name}}"
JOB_FILE_ROUTE = f"{JOB_ROUTE}/files/{{name}}"  # GET: a file of the job's outputs

LEASE_PARAM = "lease_id"  # the query parameter of a file upload that names its lease
# `?inline=1` on a job read (GET job, a submit with ?wait=, the event stream): each file
# reference in the outputs comes as a data URL instead (as before files; megabytes of JSON).
INLINE_PARAM = "inline"
# `?progress_from=text:1234` on a long-poll (with `?since=`): the client holds that much of each
# named progress text (see "text progress as deltas" below).
PROGRESS_FROM_PARAM = "progress_from"


def _segment(value: str) -> str:
    return quote(value, safe="")


def endpoint_path(name: str) -> str:
    return ENDPOINT_ROUTE.format(name=_segment(name))


def submit_path(endpoint: str) -> str:
    return SUBMIT_ROUTE.format(name=_segment(endpoint))


def job_path(job_id: str) -> str:
    return JOB_ROUTE.format(job_id=_segment(job_id))


def events_path(job_id: str) -> str:
    return EVENTS_ROUTE.format(job_id=_segment(job_id))


def worker_job_progress_path(job_id: str) -> str:
    return WORKER_JOB_PROGRESS_ROUTE.format(job_id=_segment(job_id))


def worker_job_result_path(job_id: str) -> str:
    return WORKER_JOB_RESULT_ROUTE.format(job_id=_segment(job_id))


def worker_job_file_path(job_id: str, name: str) -> str:
    return WORKER_JOB_FILE_ROUTE.format(job_id=_segment(job_id), name=_segment(name))


def job_file_path(job_id: str, name: str) -> str:
    return JOB_FILE_ROUTE.format(job_id=_segment(job_id), name=_segment(name))


# ----- what workers send and receive

# The body of a poll (WORKER_POLL_PATH, or "poll" beside a batch's results).
POLL_KEYS = ("worker_id", "job_types", "max_batch", "info", "wait_s")
# One entry of a progress or result report (one-job routes take the job_id from the URL).
REPORT_KEYS = ("job_id", "lease_id", "progress", "outputs", "offsets", "error", "release")
# The body of WORKER_GOODBYE_PATH.
GOODBYE_KEYS = ("worker_id",)


class ProtocolError(ValueError):
    """A message that does not have the protocol's shape; the text names what is wrong."""


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_MISSING = object()

# Each grant field and the check its value must pass, in Grant's order.
_GRANT_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "job_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "endpoint": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "lease_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "lease_s": (lambda v: _number(v) and v > 0, "a positive number of seconds"),
    "lease_expires_at_ms": (_integer, "an integer (ms since the epoch)"),
    "attempt": (_integer, "an integer"),
    "inputs": (lambda v: isinstance(v, dict), "a JSON object"),
}


class Grant(NamedTuple):
    """One job as a worker receives it (in `jobs` of a poll's or a results request's reply).
    A NamedTuple: made once per job on both sides, several times cheaper than a frozen
    dataclass.

    Attributes:
        job_id (str): the job's id.
        endpoint (str): the endpoint it was submitted to.
        lease_id (str): the lease granted; every progress or result report must name it.
        lease_s (float): how long the lease lasts without a report.
        lease_expires_at_ms (int): when it ends, in ms since the epoch (server clock).
        attempt (int): leases granted for this job so far, this one included (1 at first).
        inputs (Any): the validated inputs, defaults filled in (a dict once parsed; the server
            may hold serialised JSON here).
    """

    job_id: str
    endpoint: str
    lease_id: str
    lease_s: float
    lease_expires_at_ms: int
    attempt: int
    inputs: Any

    @classmethod
    def from_json(cls, data: object) -> Grant:
        """The grant of a parsed JSON object.

        Raises:
            ProtocolError: `data` is not an object, or a field is missing or of the wrong
                type; the message names the field.
        """
        if not isinstance(data, dict):
            raise ProtocolError(f"a grant must be a JSON object (got {type(data).__name__})")
        values = []
        for name, (check, what) in _GRANT_CHECKS.items():
            if (value := data.get(name, _MISSING)) is _MISSING:
                raise ProtocolError(f"grant of job {data.get('job_id')!r} lacks {name!r}")
            if not check(value):
                raise ProtocolError(
                    f"grant of job {data.get('job_id')!r}: {name!r} must be {what} "
                    f"(got {value!r:.60})"
                )
            values.append(value)
        return cls(*values)

    def to_json(self) -> dict[str, Any]:
        """The grant as the server sends it (its keys in GRANT_KEYS order)."""
        return self._asdict()


GRANT_KEYS = tuple(_GRANT_CHECKS)

# ----- text progress as deltas
#
# A token stream's progress text grows by a few characters per report; sending it whole each
# time costs bytes that grow with the square of its length. So each hop sends only what the
# other side lacks: a progress output that extends the text the receiver holds travels as its
# new part, and `offsets` (in a worker's report; `progress_offsets` in what clients read) says
# where that part starts, in characters (Unicode code points) of the whole text. A receiver
# rebuilds the whole as `held[:offset] + part`. Outputs without an offset are whole (a text that
# does not extend the held one, a preview image, any output of an older worker or server).
# The worker learns what the server holds from its answer (`offsets` there: the whole texts'
# lengths), so a server that restarted or lost a report gets the whole text at the next one;
# an event stream sends its first event whole, and a long-poll (`?since=V&progress_from=K:N`)
# gets a delta only if no text was replaced since version V.

PROGRESS_OFFSETS_KEY = "progress_offsets"  # in a job as clients read it: where each part starts


def progress_delta(
    held: Mapping[str, Any] | None, outputs: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, int]]:
    """What to send of `outputs` to a receiver holding `held`: each string output that extends
    the held one cut to its new part, and the offsets of those parts.

    Returns:
        tuple[dict[str, Any], dict[str, int]]: the outputs to send, and {key: offset} for each
        one sent as a part (empty when everything goes whole).
    """
    sent, offsets = dict(outputs), {}
    for key, value in outputs.items():
        before = held.get(key) if held else None
        if isinstance(value, str) and isinstance(before, str) and before \
                and value.startswith(before):
            sent[key], offsets[key] = value[len(before):], len(before)
    return sent, offsets


def rebuild_progress(
    held: Mapping[str, Any] | None,
    outputs: Mapping[str, Any],
    offsets: Mapping[str, int],
    max_chars: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The whole outputs of a report or event whose `offsets` name parts of texts in `held`.

    Args:
        max_chars (int | None): the longest a whole text may grow (a server's bound on what
            parts can build); None: no bound.

    Returns:
        tuple[dict[str, Any], list[str]]: the outputs, each part joined to the held text before
        its offset; and the keys that could not be (no held text that long: the sender
        thought the receiver held more; or past max_chars). Those keep the held text, if any.
    """
    whole, missing = dict(outputs), []
    for key, offset in offsets.items():
        before = held.get(key) if held else None
        part = outputs.get(key)
        fits = isinstance(part, str) and (max_chars is None or offset + len(part) <= max_chars)
        if fits and offset == 0:
            continue
        if fits and isinstance(before, str) and offset <= len(before):
            whole[key] = before[:offset] + part
            continue
        missing.append(key)
        if isinstance(before, str):
            whole[key] = before
        else:
            whole.pop(key, None)
    return whole, missing


def held_lengths(
    sent: Mapping[str, Any] | None, held: Mapping[str, Any] | None
) -> dict[str, int] | None:
    """A receiver's answer to a report: for each string output it was sent, the length of the
    whole text it now holds (0 where it holds none); None when no string was sent. A sender
    sends parts only of texts whose length the last answer gave."""
    lengths = {}
    for key, value in (sent or {}).items():
        if isinstance(value, str):
            whole = held.get(key) if held else None
            lengths[key] = len(whole) if isinstance(whole, str) else 0
    return lengths or None


def texts_extend(held: Mapping[str, Any] | None, outputs: Mapping[str, Any] | None) -> bool:
    """Whether every text of `held` is the start of the same output's text in `outputs` (so a
    client holding `held` can be sent parts)."""
    for key, before in (held or {}).items():
        if isinstance(before, str) and before:
            after = outputs.get(key) if outputs else None
            if not isinstance(after, str) or not after.startswith(before):
                return False
    return True


def parse_progress_from(value: str) -> dict[str, int]:
    """`KEY:OFFSET[,KEY:OFFSET]` of PROGRESS_FROM_PARAM as {key: offset}.

    Raises:
        ValueError: not of that form, or an offset that is not a whole number.
    """
    found: dict[str, int] = {}
    for item in value.split(","):
        key, colon, offset = item.rpartition(":")
        if not colon or not key or not (offset.isascii() and offset.isdigit()) or len(offset) > 12:
            raise ValueError(f"must be KEY:OFFSET[,KEY:OFFSET...] (got {item[:40]!r})")
        found[key] = int(offset)
    return found


# ----- binary values: base64 data URLs


def encode_data_url(data: bytes, mime: str) -> str:
    """`data:<mime>;base64,<data>`."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def decode_data_url(value: str, *, validate: bool = False) -> tuple[str, bytes]:
    """The MIME type and bytes of a base64 data URL, or ("", bytes) of bare base64.

    Args:
        value (str): `data:<mime>[;params];base64,<data>`, or the base64 alone.
        validate (bool): refuse characters outside the base64 alphabet instead of skipping
            them (as base64.b64decode does by default); default False.

    Raises:
        ValueError: a data URL that is not base64, or base64 that does not decode.
    """
    mime, payload = "", value
    if value.startswith("data:"):
        header, comma, payload = value[5:].partition(",")
        params = header.split(";")
        if not comma or "base64" not in params[1:]:
            raise ValueError("not a base64 data URL (data:<mime>;base64,<data>)")
        mime = params[0]
    try:
        return mime, base64.b64decode(payload, validate=validate)
    except ValueError as e:  # binascii.Error, or a character outside ASCII
        raise ValueError(f"invalid base64 ({e})") from e


# ----- binary outputs: files and the references to them

FILE_NAME_RULE = (
    "1 to 100 letters, digits or '.', '_', '-', the first a letter or digit (e.g. image-0.png)"
)
FILE_NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
# The media types a worker may upload (the Content-Type of the upload, without parameters).
FILE_MEDIA_TYPES = frozenset({
    "image/png", "image/jpeg", "image/webp", "image/gif",
    "audio/wav", "audio/mpeg", "audio/ogg", "audio/flac",
    "video/mp4",
    "application/octet-stream",
})
FILE_REF_KEYS = ("file", "url", "media_type", "bytes", "sha256")


def valid_file_name(value: object) -> bool:
    """True if `value` may name a job's file: a string of FILE_NAME_RULE."""
    return isinstance(value, str) and FILE_NAME_PATTERN.match(value) is not None


def is_file_ref(value: object) -> bool:
    """Whether an output value is shaped as a file reference: a JSON object with a "file" key
    (checked further by `FileRef.from_json`)."""
    return isinstance(value, dict) and "file" in value


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file of a job's outputs, where a data URL used to be: an output's value (or an item of
    a list-valued output) is `{"file", "url", "media_type", "bytes", "sha256"}`.

    The server fills in `url`, `media_type`, `bytes` and `sha256` from the file it stored for
    this job (a worker need only send `file`, the name it uploaded under).

    Attributes:
        file (str): the file's name within its job (FILE_NAME_RULE), e.g. "image-0.png".
        url (str): where clients download it: `/api/v1/jobs/{job_id}/files/{file}` (a path on
            the server, with the job's read access).
        media_type (str): its Content-Type, one of FILE_MEDIA_TYPES.
        size (int): its length in bytes (the JSON key is "bytes").
        sha256 (str): the SHA-256 of its bytes in hex; also its ETag.
    """

    file: str
    url: str
    media_type: str
    size: int
    sha256: str

    @classmethod
    def from_json(cls, data: object) -> FileRef:
        """The reference of a parsed JSON object; url, media_type, bytes and sha256 may be
        missing (a worker's reference before the server fills them in: "", 0).

        Raises:
            ProtocolError: not an object, or a key of the wrong type (the message names it).
        """
        if not isinstance(data, dict):
            raise ProtocolError(f"a file reference must be a JSON object (got "
                                f"{type(data).__name__})")
        if not valid_file_name(data.get("file")):
            raise ProtocolError(f"'file' must be {FILE_NAME_RULE} (got {data.get('file')!r:.60})")
        for key in ("url", "media_type", "sha256"):
            if not isinstance(data.get(key, ""), str):
                raise ProtocolError(f"file reference {data['file']!r}: {key!r} must be a string")
        size = data.get("bytes", 0)
        if not _integer(size) or size < 0:
            raise ProtocolError(f"file reference {data['file']!r}: 'bytes' must be a whole "
                                "number")
        return cls(data["file"], data.get("url", ""), data.get("media_type", ""), size,
                   data.get("sha256", ""))

    def to_json(self) -> dict[str, Any]:
        """The reference as it travels (its keys in FILE_REF_KEYS order)."""
        return {"file": self.file, "url": self.url, "media_type": self.media_type,
                "bytes": self.size, "sha256": self.sha256}
