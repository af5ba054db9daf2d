"""File routes: a worker uploads a job's output file, a client downloads it.

A worker PUTs each binary output as its raw bytes (`?lease_id=` naming its lease, Content-Type
its media type) and then puts the reference the upload answered with in its result's outputs
(see `FileStore.references`). Clients read a file with the same access as its job; `?inline=1`
on the job routes gives data URLs in place of references instead (`jobs.shown`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web

from api_server.auth import unauthorized
from api_server.httputil import ApiError, json_response
from api_server.routes.jobs import job_of
from api_server.state import CALLER, FILES, STORE
from api_server.store import ReportAnswer
from api_server.store.files import StoredFile
from jobhive import protocol

routes = web.RouteTableDef()

_READ_CHUNK_BYTES = 256 * 1024


def _refusal(answer: ReportAnswer) -> ApiError | None:
    """The error of an upload whose lease is not the job's current one (None: it is)."""
    if answer.status == 404:
        return ApiError(404, f"no job with id {answer.job_id[:200]!r}")
    if answer.canceled:
        return ApiError(409, "the job was canceled: stop working on it")
    if not answer.ok:
        return ApiError(answer.status, answer.error or "refused")
    return None


def _check_upload(request: web.Request) -> tuple[str, str, str]:
    """(name, lease_id, media type) of an upload; 400 naming each bad one, 415 for a media
    type not taken, 413 for a Content-Length past max_file_bytes (before reading any byte)."""
    name = request.match_info["name"]
    lease_id = request.query.get(protocol.LEASE_PARAM, "")
    errors: dict[str, str] = {}
    if not protocol.valid_file_name(name):
        errors["name"] = f"must be {protocol.FILE_NAME_RULE} (got {name[:40]!r})"
    if not 0 < len(lease_id) <= 128:
        errors[protocol.LEASE_PARAM] = "must be the job's lease_id (a query parameter)"
    if errors:
        raise ApiError(400, "invalid file upload", errors)
    media_type = request.content_type if hdrs.CONTENT_TYPE in request.headers else ""
    if media_type not in protocol.FILE_MEDIA_TYPES:
        raise ApiError(415, f"Content-Type must be the file's media type, one of "
                            f"{', '.join(sorted(protocol.FILE_MEDIA_TYPES))} "
                            f"(got {media_type[:60]!r})")
    limit = request.app[FILES].max_file_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the file is {request.content_length} bytes; the limit is {limit} "
                            "(max_file_bytes)")
    return name, lease_id, media_type


@routes.put(protocol.WORKER_JOB_FILE_ROUTE)
async def upload_file(request: web.Request) -> web.Response:
    """A worker's output file: its raw bytes, Content-Type its media type, `?lease_id=` the
    job's current lease. 200 with the file reference once the file is durable; the same name
    again replaces it (a retry is safe). 409 when the lease is not the job's current one."""
    if not request[CALLER].role.worker_of:
        raise unauthorized("worker")
    name, lease_id, media_type = _check_upload(request)
    job_id = request.match_info["job_id"]
    store, files = request.app[STORE], request.app[FILES]
    endpoint = (await store.endpoints_of([job_id])).get(job_id)
    if endpoint is None:
        raise ApiError(404, f"no job with id {job_id[:200]!r}")
    if endpoint not in request[CALLER].role.worker_of:
        raise ApiError(403, f"worker key not accepted by {endpoint!r}")
    if (refused := _refusal(await store.lease_answer(job_id, lease_id))) is not None:
        raise refused
    # A refusal past this point (413 past a limit, 507/503 when the disk cannot take it) is a
    # StoreError, answered by the app's edge; what was written goes with the upload.
    async with files.upload(job_id, name, media_type) as upload:
        try:
            async for chunk in request.content.iter_chunked(_READ_CHUNK_BYTES):
                await upload.write(chunk)
        except ConnectionResetError as e:  # the worker went, or stalled past body_timeout_s
            raise ApiError(400, f"the upload of {name!r} was cut off: nothing kept") from e
        if (refused := _refusal(await store.lease_answer(job_id, lease_id))) is not None:
            raise refused  # the lease was lost (or the job canceled) while it came
        stored = await upload.commit()
    return json_response(stored.ref().to_json())


class _FileResponse(web.FileResponse):
    """aiohttp's FileResponse (Range, 206/416, conditional requests) with the file's SHA-256
    as its strong ETag instead of one made of its mtime and size."""

    def __init__(self, stored: StoredFile, headers: dict[str, str]) -> None:
        super().__init__(stored.path, headers=headers)
        self._digest = stored.sha256

    @property
    def etag(self) -> Any:
        return web.StreamResponse.etag.fget(self)  # type: ignore[attr-defined]

    @etag.setter
    def etag(self, value: Any) -> None:
        web.StreamResponse.etag.fset(self, self._digest)  # type: ignore[attr-defined]


@routes.get(protocol.JOB_FILE_ROUTE)
async def download_file(request: web.Request) -> web.StreamResponse:
    """A file of the job's outputs, readable as its job is (the submitting key where the
    endpoint has client keys), until the job's TTL. Its ETag is its SHA-256; Range requests
    and If-None-Match are answered (206, 416, 304)."""
    job = await job_of(request)
    name = request.match_info["name"]
    valid = protocol.valid_file_name(name)
    stored = await request.app[FILES].find(job.id, name) if valid else None
    if stored is None:
        raise ApiError(404, f"job {job.id[:200]!r} has no file {name[:100]!r}")
    etag = f'"{stored.sha256}"'
    headers = {
        "Content-Type": stored.media_type,
        "X-Content-Type-Options": "nosniff",
        # No filename: the URL ends with it already, and a page's download link names its
        # own (sd3-SEED-prompt.png), which a filename here would override.
        "Content-Disposition": "inline",
        "Cache-Control": "private, no-cache",  # kept, but checked (ETag) before each use
    }
    if request.if_none_match is not None and any(
        e.value in (stored.sha256, "*") for e in request.if_none_match
    ):
        return web.Response(status=304, headers={**headers, "ETag": etag})
    return _FileResponse(stored, headers)
