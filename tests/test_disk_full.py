"""A real full disk: the store's SQLite file on a 2 MiB tmpfs, the real server, a raw worker.

Acknowledged means durable and refused means gone: after the disk fills, every submit that got
202 is there after a crash (SIGKILL) and restart, every submit that got 507 is not (and a retry
of it is not answered 200 from memory), and every result answered 200 is still done.
Needs root to mount; skipped with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import spawn_server
from e2e_http import RawWorker, entry, get_job

REPO = Path(__file__).resolve().parents[1]
FILLER_BYTES = 640 * 1024  # deleted once the disk is full, to give the store room again


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_loses_nothing_acknowledged(small_disk, http):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * FILLER_BYTES)
    store = small_disk / "jobs.sqlite3"
    server = spawn_server(REPO / "endpoints", store)
    acknowledged, refused = [], []
    try:
        text = "x" * 9000
        for i in range(400):
            reply = http.post(f"{server.url}/api/v1/endpoints/echo/jobs",
                              json={"inputs": {"text": text}, "job_id": f"job-{i}"})
            assert reply.status_code in (202, 507), reply.text
            (acknowledged if reply.status_code == 202 else refused).append(f"job-{i}")
            if len(refused) >= 3:
                break
        assert refused, "the disk never filled"
        assert len(acknowledged) > 10
        assert "disk is full" in reply.json()["error"] and reply.headers["Retry-After"]
        for job_id in refused:
            assert http.get(f"{server.url}/api/v1/jobs/{job_id}").status_code == 404
            retry = http.post(f"{server.url}/api/v1/endpoints/echo/jobs",
                              json={"inputs": {"text": text}, "job_id": job_id})
            assert retry.status_code == 507  # not "200, same job" from memory
        assert http.get(f"{server.url}/health").status_code == 200  # reads go on

        # Results while the disk is full are refused (the worker keeps them and retries)...
        worker = RawWorker(http, server.url)
        grants = []
        with contextlib.suppress(AssertionError):  # the leases themselves may not fit
            grants = worker.take(max_batch=8, wait_s=0)
        if grants:
            reply = worker.batch_results([entry(g, outputs={"text": "done"}) for g in grants])
            assert reply.status_code in (200, 503, 507), reply.text
        # ...and once there is room again, they are taken.
        filler.unlink()
        if not grants:
            grants = worker.take(max_batch=8, wait_s=0)
        reply = worker.batch_results([entry(g, outputs={"text": "done"}) for g in grants])
        assert reply.status_code == 200, reply.text
        assert all(a["ok"] for a in reply.json()["answers"])
        done = [g["job_id"] for g in grants]
    finally:
        server.kill()  # a crash: no clean shut-down, no last checkpoint

    server = spawn_server(REPO / "endpoints", store)
    try:
        for job_id in acknowledged:
            job = get_job(http, server.url, job_id)
            assert job["status"] == ("done" if job_id in done else "queued"), job
        for job_id in refused:
            assert http.get(f"{server.url}/api/v1/jobs/{job_id}").status_code == 404
    finally:
        server.stop()
