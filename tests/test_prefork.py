"""workers/prefork.py: jobhive-worker command lines as forks of one process (the demo's workers)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import ECHO_WORKER_KEY, REPO


class Host:
    """A `python -m workers.prefork` process and the reading end of its events."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.prefork", "--events-fd", str(write_fd)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(write_fd,), text=True,
        )
        os.close(write_fd)
        self.events = os.fdopen(read_fd, "rb")

    def start(self, name: str, *argv: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"name": name, "argv": list(argv)}) + "\n")
        self.proc.stdin.flush()

    def event(self, timeout_s: float = 30.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout_s
        ready, _, _ = select.select([self.events], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "no event from the prefork host"
        line = self.events.readline()
        assert line, "the prefork host closed its events"
        return json.loads(line)


@pytest.fixture
def host() -> Iterator[Host]:
    started = Host()
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.wait()
    for stream in (started.proc.stdin, started.proc.stdout, started.events):
        stream.close()


def test_forked_workers_serve_jobs_exit_with_their_status_and_stop_on_sigterm(
    start_server, http, host
):
    server = start_server()
    worker = ("noop", "--server", server.url, "--key", ECHO_WORKER_KEY)
    host.proc.stdin.write("not json\n")  # ignored, with a line on stderr
    host.start("wrong-key", "noop", "--server", server.url, "--key", "nope")
    assert host.event()["event"] == "started"
    exited = host.event()
    assert (exited["event"], exited["name"], exited["status"]) == ("exited", "wrong-key", 2)
    host.start("echo", *worker, "--worker-id", "forked-echo")
    started = host.event()
    assert (started["event"], started["name"]) == ("started", "echo")
    reply = http.post(f"{server.url}/api/v1/endpoints/echo/jobs?wait=20",
                      json={"inputs": {"text": "hello"}})
    assert reply.json()["outputs"]["text"] == "hello"
    host.proc.send_signal(signal.SIGTERM)  # passed on: the worker stops cleanly
    assert host.event() == {"event": "exited", "name": "echo", "pid": started["pid"],
                            "status": 0}
    assert host.proc.wait(15) == 0
    output = host.proc.stdout.read()
    assert "not a worker to start, ignored" in output
    assert "jobhive-worker: " in output  # the refused worker's own message, in its words
    assert "worker forked-echo stopped" in output
