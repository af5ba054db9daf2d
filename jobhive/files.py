"""A worker's side of output files: upload one, get back the reference to put in its outputs.

    ref = await upload_file(http, grant.job_id, grant.lease_id, "image-0.png", "image/png", png)
    outputs = {"image": ref.to_json()}   # or {"image": {"file": "image-0.png"}}: the server
                                         # fills in the rest from what it stored

The worker runtime calls it before it posts the job's result; the server answers only once the
file is durable, and a retry with the same name replaces the file (safe to repeat).
"""

from __future__ import annotations

import io

import aiohttp
import orjson

from jobhive.protocol import LEASE_PARAM, FileRef, ProtocolError, worker_job_file_path


class FileUploadError(Exception):
    """The server refused an upload, or answered it with something other than a reference.

    Attributes:
        status (int): the HTTP status (413: too large, 409: the lease was lost, 507/503: the
            server cannot store it now, try later).
        message (str): the server's error message.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"file upload refused: HTTP {status}: {message}")
        self.status = status
        self.message = message


async def upload_file(
    session: aiohttp.ClientSession,
    job_id: str,
    lease_id: str,
    name: str,
    media_type: str,
    data: bytes,
    *,
    timeout_s: float | None = None,
) -> FileRef:
    """PUTs one output file of a job and returns its reference.

    Args:
        session (aiohttp.ClientSession): a session sending the worker key (Authorization:
            Bearer KEY), with the server as its base URL.
        job_id (str): the job's id.
        lease_id (str): the job's current lease (from its grant).
        name (str): the file's name within the job (protocol.FILE_NAME_RULE), e.g.
            "image-0.png".
        media_type (str): its media type, one of protocol.FILE_MEDIA_TYPES.
        data (bytes): its bytes.
        timeout_s (float | None): the longest the upload may take; None: the session's.

    Returns:
        FileRef: the reference as the server stored it (url, bytes, sha256 filled in); put
        `ref.to_json()` where the output's value goes.

    Raises:
        FileUploadError: any answer but 200 (its status and the server's message), or a 200
            without a reference.
        aiohttp.ClientError: the server could not be reached.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else None
    async with session.put(  # (a BytesIO: aiohttp writes it in chunks, off the loop's back)
        worker_job_file_path(job_id, name), params={LEASE_PARAM: lease_id},
        data=io.BytesIO(data), headers={"Content-Type": media_type}, timeout=timeout,
    ) as response:
        body = await response.read()
        if response.status != 200:
            raise FileUploadError(response.status, _message(body))
        try:
            return FileRef.from_json(orjson.loads(body))
        except (orjson.JSONDecodeError, ProtocolError) as e:
            raise FileUploadError(response.status, f"not a file reference: {e}") from e


def _message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace")
    return str(data.get("error", data)) if isinstance(data, dict) else str(data)
