"""The media pool: checks run in processes; a process that dies is replaced, not fatal."""

import base64
import io
import os

import pytest
from conftest import wait_until
from PIL import Image

from api_server.media_pool import MediaCrash, MediaPool


async def test_runs_in_another_process():
    pool = MediaPool(processes=1)
    try:
        assert await pool.run(os.getpid) != os.getpid()
    finally:
        pool.close()


async def test_a_call_that_kills_its_process_is_refused_and_the_pool_recovers():
    pool = MediaPool(processes=1)
    try:
        with pytest.raises(MediaCrash):
            await pool.run(os._exit, 1)  # dies in the first pool and in the restarted one
        assert await pool.run(abs, -3) == 3  # a fresh pool takes the next call
    finally:
        pool.close()


def children_of(pid: int) -> set[int]:
    """Processes whose parent is pid (Linux /proc)."""
    found = set()
    for stat in os.scandir("/proc"):
        if stat.name.isdigit():
            try:
                with open(f"/proc/{stat.name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.add(int(stat.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_pool_processes_exit_when_the_server_is_killed(start_server, http):
    server = start_server()
    image = Image.new("RGB", (8, 8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    reply = http.post(f"{server.url}/api/v1/endpoints/echo/jobs", json={"inputs": {"image": url}})
    assert reply.status_code == 202, reply.text
    pool = children_of(server.proc.pid)
    assert len(pool) >= 2  # the media processes and multiprocessing's resource tracker
    server.kill()
    wait_until(lambda: not any(pid_alive(pid) for pid in pool), timeout_s=10)
