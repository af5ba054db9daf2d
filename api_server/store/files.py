"""Output files of jobs, kept on disk beside the job store: one folder per job.

Layout under the root (`PATH.files` beside the SQLite file by default, `[SERVER] files_dir`):

    job-<job_id>/<name>            the file's record: JSON {media_type, bytes, sha256, data}
    job-<job_id>/.data-<token>     its bytes (the record names them)
    job-<job_id>/.record-<token>   a record being written

An upload streams into a fresh `.data-` file, which is fsynced; then its record is written to a
temporary file, fsynced and renamed over `<name>`, and the folder fsynced: the rename is the
commit, so a re-upload replaces a file whole or not at all, and an upload is acknowledged only
once it is durable. The bytes it replaced are unlinked after. File names never start with a
dot (protocol.FILE_NAME_PATTERN), so they cannot meet the store's own files.

At start-up the records are read back into memory (names, sizes, digests; no file's bytes are
read), bytes that no record names are removed (uploads cut off by a crash), and the folders of
jobs the job store no longer knows are removed. A job's folder goes when its job is forgotten
(its result's TTL): the job store calls `delete_jobs`.

Shared (several servers on one Redis, the folder on a file system they all mount): the disk is
the truth, not one server's memory. A job's records are read again before its files are looked
up (a worker may have uploaded through another server), bytes without a record are left alone
at start-up unless they are an hour old (another server may be receiving them), and a
forgotten job's folder is removed whoever wrote it.

All file I/O runs in threads; the in-memory index is changed only on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from api_server.store.journal import is_disk_full
from api_server.store.model import StoreError, StoreUnavailable
from jobhive.protocol import (
    FileRef,
    ProtocolError,
    encode_data_url,
    is_file_ref,
    job_file_path,
    valid_file_name,
)

log = logging.getLogger("jobhive.files")

_JOB_PREFIX = "job-"  # a job's folder: a prefix keeps ids such as ".." from naming a path
_DATA_PREFIX = ".data-"
_RECORD_PREFIX = ".record-"
_WRITE_CHUNK_BYTES = 1024 * 1024  # bytes received are written (and hashed) in a thread per MiB
ORPHAN_AGE_S = 3600.0  # in a shared folder, bytes without a record are removed this old
SHARED_INDEX_JOBS = 10_000  # in a shared folder, jobs whose files a server keeps in its index


class FileRefused(StoreError):
    """An upload the store will not keep (413: past a size limit)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file of a job as the store keeps it."""

    job_id: str
    name: str
    media_type: str
    size: int  # bytes
    sha256: str  # hex
    path: Path  # its bytes

    def ref(self) -> FileRef:
        """The reference clients see (url, media type, size and digest as stored)."""
        return FileRef(self.name, job_file_path(self.job_id, self.name), self.media_type,
                       self.size, self.sha256)


class FileStore:
    """The output files of every job, by job id and name.

    Args:
        root (Path): the folder that holds one folder per job (made when needed).
        max_file_bytes (int): the largest file one upload may make.
        max_job_bytes (int): the most bytes of files one job may hold.
        temporary (bool): remove the whole root when closed (a store of tests with an
            in-memory journal); default False.
        shared (bool): other servers write in the folder too (see the module's notes).
    """

    def __init__(
        self,
        root: Path,
        max_file_bytes: int,
        max_job_bytes: int,
        temporary: bool = False,
        shared: bool = False,
    ) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.max_job_bytes = max_job_bytes
        self._temporary = temporary
        self._shared = shared
        self._files: dict[str, dict[str, StoredFile]] = {}  # job id -> name -> file
        self._commit = asyncio.Lock()  # commits and deletions, one at a time: exact totals

    @classmethod
    def temporary(cls, max_file_bytes: int, max_job_bytes: int) -> FileStore:
        """A store in a fresh temporary folder, removed when it closes."""
        root = Path(tempfile.mkdtemp(prefix="jobhive-files-"))
        return cls(root, max_file_bytes, max_job_bytes, temporary=True)

    # ----- start-up and shut-down

    async def open(self, known: Callable[[list[str]], Awaitable[Mapping[str, Any]]]) -> None:
        """Reads the records back; removes folders of jobs that `known` (the job store's
        `endpoints_of`: the known ids among those given) does not return."""
        async with self._commit:  # (a job forgotten meanwhile waits for its files' index)
            found = await asyncio.to_thread(_scan, self.root, self._shared)
            kept = await known(list(found))
            orphans = [job_id for job_id in found if job_id not in kept]
            if orphans:
                await asyncio.to_thread(_remove_folders, self.root, orphans)
                log.info("removed the files of %d jobs that no longer exist", len(orphans))
            if not self._shared:  # (shared: read from the folder when needed)
                self._files = {job_id: files for job_id, files in found.items()
                               if job_id in kept}
        if self._files:
            log.info("files of %d jobs kept", len(self._files))

    async def close(self) -> None:
        if self._temporary:
            await asyncio.to_thread(shutil.rmtree, self.root, True)

    # ----- reading

    def get(self, job_id: str, name: str) -> StoredFile | None:
        """The file as this server's index has it (see `find` for a shared folder)."""
        return self._files.get(job_id, {}).get(name)

    async def find(self, job_id: str, name: str) -> StoredFile | None:
        """The job's file `name`, as the folder has it now."""
        await self.refresh(job_id)
        return self.get(job_id, name)

    async def refresh(self, job_id: str) -> None:
        """In a shared folder: reads the job's records again (another server may have
        written them); nothing to do otherwise."""
        if not self._shared:
            return
        files = await asyncio.to_thread(_scan_job, self.root / (_JOB_PREFIX + job_id), job_id,
                                        False)
        self._files.pop(job_id, None)  # (re-inserted last: the oldest go first)
        if files is not None:
            if len(self._files) >= SHARED_INDEX_JOBS:  # (the folder is the truth: a cache)
                del self._files[next(iter(self._files))]
            self._files[job_id] = files

    def job_bytes(self, job_id: str, but: str = "") -> int:
        """The bytes of the job's files (leaving out the one named `but`)."""
        return sum(f.size for n, f in self._files.get(job_id, {}).items() if n != but)

    async def read(self, stored: StoredFile) -> bytes:
        return await asyncio.to_thread(stored.path.read_bytes)

    async def references(
        self,
        job_id: str,
        outputs: dict[str, Any],
        media_keys: Collection[str] | None = None,
        where: str = "outputs",
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """A worker's outputs with each file reference (an output's value, or an item of a
        list-valued output) checked and rewritten from what this job's store holds. Only the
        outputs in media_keys may hold references (None: any output).

        Returns:
            tuple[dict, dict[str, str]]: the outputs, and one reason per bad reference
            (`outputs.key` or `outputs.key[i]`): not a reference's shape, a file not uploaded
            for this job, or a sha256 other than the uploaded file's. Data URLs and other
            values pass as they are.
        """
        if media_keys is not None:
            outputs_with_refs = {k: v for k, v in outputs.items() if k in media_keys}
        else:
            outputs_with_refs = outputs
        if not any(is_file_ref(v) or (isinstance(v, list) and any(map(is_file_ref, v)))
                   for v in outputs_with_refs.values()):
            return outputs, {}  # (most outputs: nothing to look up)
        await self.refresh(job_id)
        errors: dict[str, str] = {}

        def one(value: Any, path: str) -> Any:
            if not is_file_ref(value):
                return value
            try:
                ref = FileRef.from_json(value)
            except ProtocolError as e:
                errors[path] = str(e)
                return value
            stored = self.get(job_id, ref.file)
            if stored is None:
                errors[path] = (f"names file {ref.file!r}, which was not uploaded for this job "
                                "(upload it first: PUT /api/v1/worker/jobs/{job_id}/files/{name})")
                return value
            if ref.sha256 and ref.sha256 != stored.sha256:
                errors[path] = f"sha256 differs from that of the uploaded file {ref.file!r}"
                return value
            return stored.ref().to_json()

        out = {
            key: value if key not in outputs_with_refs
            else [one(v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
            if isinstance(value, list) else one(value, f"{where}.{key}")
            for key, value in outputs.items()
        }
        return out, errors

    async def inline(self, job_id: str, outputs: Any, max_bytes: int) -> Any:
        """The outputs with each reference to one of this job's files replaced by its data
        URL (the files read in a thread); anything else as it is.

        Raises:
            FileRefused: 413, the files together are over max_bytes (their data URLs, a third
                larger again, would all be in memory): they are to be fetched from their URLs.
        """
        if not isinstance(outputs, dict):
            return outputs
        await self.refresh(job_id)
        wanted: dict[str, StoredFile] = {}
        for value in outputs.values():
            for item in value if isinstance(value, list) else (value,):
                if is_file_ref(item) and (stored := self.get(job_id, str(item["file"]))):
                    wanted[stored.name] = stored
        if not wanted:
            return outputs
        if (total := sum(f.size for f in wanted.values())) > max_bytes:
            raise FileRefused(413, f"the job's files are {total} bytes, over the {max_bytes} that "
                              "may come inline (max_body_bytes): fetch them from their URLs")
        urls = await asyncio.to_thread(_data_urls, list(wanted.values()))

        def one(value: Any) -> Any:
            return urls.get(str(value["file"]), value) if is_file_ref(value) else value

        return {key: [one(v) for v in value] if isinstance(value, list) else one(value)
                for key, value in outputs.items()}

    # ----- writing

    def upload(self, job_id: str, name: str, media_type: str) -> Upload:
        """A new upload of this job's file `name` (use it as `async with`)."""
        if not valid_file_name(name):
            raise ValueError(f"not a file name: {name!r}")
        return Upload(self, job_id, name, media_type)

    async def _commit_upload(self, upload: Upload) -> StoredFile:
        stored = StoredFile(upload.job_id, upload.name, upload.media_type, upload.size,
                            upload.sha256, upload.path)
        async with self._commit:
            self._check_total(upload.job_id, upload.name, upload.size)
            old = self.get(upload.job_id, upload.name)
            record = orjson.dumps({"media_type": stored.media_type, "bytes": stored.size,
                                   "sha256": stored.sha256, "data": upload.path.name})
            await _in_thread(_write_record, upload.path.parent, upload.name, record)
            self._files.setdefault(upload.job_id, {})[upload.name] = stored
        if old is not None and old.path != stored.path:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(old.path.unlink, True)
        return stored

    def _check_total(self, job_id: str, name: str, size: int) -> None:
        if size > self.max_file_bytes:
            raise FileRefused(413, f"the file is over {self.max_file_bytes} bytes, the largest "
                                   "a file may be (max_file_bytes)")
        others = self.job_bytes(job_id, but=name)
        if others + size > self.max_job_bytes:
            raise FileRefused(413, f"the job's files would be over {self.max_job_bytes} bytes "
                                   f"(max_job_files_bytes; {others} bytes are already there)")

    async def delete_jobs(self, job_ids: Iterable[str]) -> None:
        """Removes these jobs' files (their jobs were forgotten)."""
        async with self._commit:
            ids = [i for i in job_ids if self._files.pop(i, None) is not None or self._shared]
            if ids:
                await asyncio.to_thread(_remove_folders, self.root, ids)


class Upload:
    """One file being received: `write` the chunks, then `commit`; leaving the `async with`
    block without a commit removes what was written."""

    def __init__(self, store: FileStore, job_id: str, name: str, media_type: str) -> None:
        self._store = store
        self.job_id, self.name, self.media_type = job_id, name, media_type
        folder = store.root / (_JOB_PREFIX + job_id)
        self.path = folder / (_DATA_PREFIX + secrets.token_hex(8))
        self.size = 0
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._file: Any = None
        self._committed = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def __aenter__(self) -> Upload:
        await self._store.refresh(self.job_id)  # (files uploaded through another server count)
        self._file = await _in_thread(_create, self._store.root, self.path)
        self._store._files.setdefault(self.job_id, {})  # its folder goes with the job
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
        if not self._committed:
            await asyncio.to_thread(self.path.unlink, True)

    async def write(self, chunk: bytes) -> None:
        """Adds bytes; 413 (FileRefused) once the file or the job's files pass their limit."""
        self.size += len(chunk)
        self._store._check_total(self.job_id, self.name, self.size)
        self._buffer += chunk
        if len(self._buffer) >= _WRITE_CHUNK_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        data, self._buffer = bytes(self._buffer), bytearray()
        await _in_thread(_write_hashed, self._file, self._hash, data)

    async def commit(self) -> StoredFile:
        """Makes the file durable and the job's file `name` (replacing one of that name)."""
        await self._flush()
        await _in_thread(_sync_close, self._file)
        self._file = None
        stored = await self._store._commit_upload(self)
        self._committed = True
        return stored


# ----- blocking helpers (run in threads)


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Runs blocking file I/O in a thread; an OSError becomes StoreUnavailable (507 when the
    disk is full, else 503)."""
    try:
        return await asyncio.to_thread(function, *args)
    except OSError as e:
        raise StoreUnavailable(e, is_disk_full(e)) from e


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(root: Path, path: Path) -> Any:
    folder = path.parent
    if not folder.is_dir():
        new_root = not root.is_dir()
        folder.mkdir(parents=True, exist_ok=True)
        if new_root:
            _fsync_dir(root.parent)
        _fsync_dir(root)
    return path.open("xb")


def _write_hashed(file: Any, digest: Any, data: bytes) -> None:
    digest.update(data)
    file.write(data)


def _sync_close(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


def _write_record(folder: Path, name: str, record: bytes) -> None:
    temporary = folder / (_RECORD_PREFIX + secrets.token_hex(8))
    try:
        with temporary.open("xb") as file:
            file.write(record)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, folder / name)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)


def _data_urls(files: list[StoredFile]) -> dict[str, str]:
    urls = {}
    for stored in files:
        with contextlib.suppress(OSError):  # gone meanwhile: the reference stays
            urls[stored.name] = encode_data_url(stored.path.read_bytes(), stored.media_type)
    return urls


def _remove_folders(root: Path, job_ids: Iterable[str]) -> None:
    for job_id in job_ids:
        shutil.rmtree(root / (_JOB_PREFIX + job_id), ignore_errors=True)


def _scan(root: Path, shared: bool = False) -> dict[str, dict[str, StoredFile]]:
    """Every job folder's files, from their records; bytes no record names are removed (in a
    shared folder: only once they are an hour old)."""
    found: dict[str, dict[str, StoredFile]] = {}
    if not root.is_dir():
        return found
    for folder in root.iterdir():
        if not folder.name.startswith(_JOB_PREFIX) or not folder.is_dir():
            continue
        job_id = folder.name.removeprefix(_JOB_PREFIX)
        files = _scan_job(folder, job_id, clean=True, shared=shared)
        if files is not None:
            found[job_id] = files
    return found


def _scan_job(
    folder: Path, job_id: str, clean: bool, shared: bool = True
) -> dict[str, StoredFile] | None:
    """One job folder's files (None: no folder); with `clean`, removes bytes no record names
    (an upload or a record cut off by a crash; in a shared folder, only an hour old ones)."""
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return None
    files: dict[str, StoredFile] = {}
    for record in entries:
        if valid_file_name(record.name) and (stored := _read_record(job_id, record, clean)):
            files[stored.name] = stored
    if clean:
        named = {stored.path.name for stored in files.values()}
        cutoff = time.time() - ORPHAN_AGE_S if shared else math.inf
        for other in entries:
            if other.name.startswith(".") and other.name not in named:
                with contextlib.suppress(FileNotFoundError):
                    if other.stat().st_mtime < cutoff:
                        other.unlink()
    return files


def _read_record(job_id: str, record: Path, drop_bad: bool = True) -> StoredFile | None:
    try:
        data = orjson.loads(record.read_bytes())
        path = record.parent / data["data"]
        stored = StoredFile(job_id, record.name, str(data["media_type"]), int(data["bytes"]),
                            str(data["sha256"]), path)
        if not str(data["data"]).startswith(_DATA_PREFIX) or path.stat().st_size != stored.size:
            raise ValueError("its bytes are missing or of another size")
    except (OSError, ValueError, KeyError, TypeError) as e:
        if drop_bad:
            log.warning("file %s of job %s is unreadable, dropped: %s", record.name, job_id, e)
            record.unlink(missing_ok=True)
        return None
    return stored
