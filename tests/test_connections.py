"""Connection bounds of the real server (api_server/connections.py), over raw sockets: idle and
stalled connections are closed on time, the connection cap keeps `/health` answering, and a
flood of sockets past the open-files limit leaves a short log, not a traceback per accept().
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import _LISTENING, REPO, Process, _spawn, wait_until

HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


def server_toml(folder: Path, **settings: float) -> Path:
    path = folder / "server.toml"
    path.write_text("[SERVER]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    return path


@pytest.fixture
def serve(tmp_path: Path, start_server: Callable[..., Process]) -> Callable[..., Process]:
    """Starts the server with these [SERVER] settings; it is stopped when the test ends."""
    return lambda **settings: start_server("--config", str(server_toml(tmp_path, **settings)))


@pytest.fixture
def sockets() -> Iterator[Callable[[str], socket.socket]]:
    """Opens raw TCP connections to a server URL; all are closed when the test ends."""
    with contextlib.ExitStack() as stack:

        def connect(url: str) -> socket.socket:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            sock = stack.enter_context(socket.create_connection((host, int(port)), timeout=10))
            return sock

        yield connect


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (its body by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def seconds_until_closed(sock: socket.socket, timeout_s: float = 10.0) -> float:
    """Waits for the server to close the connection (reading and dropping what it sends);
    returns how long that took."""
    start = time.monotonic()
    sock.settimeout(timeout_s)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    return time.monotonic() - start


def is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def health_ok(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def server_sockets(process: Process) -> int:
    """How many sockets the server process has open (Linux)."""
    fds = Path(f"/proc/{process.proc.pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_idle_keepalive_connection_is_closed_after_the_timeout(serve, sockets):
    server = serve(keepalive_timeout_s=1, header_timeout_s=5)
    sock = sockets(server.url)
    sock.sendall(HEALTH)
    assert read_response(sock).startswith(b"HTTP/1.1 200")
    sock.sendall(HEALTH)  # still open: keep-alive works
    assert read_response(sock).startswith(b"HTTP/1.1 200")
    assert 0.7 < seconds_until_closed(sock) < 4


def test_stalled_or_trickled_headers_are_closed_after_header_timeout(serve, sockets):
    server = serve(keepalive_timeout_s=30, header_timeout_s=1)
    silent = sockets(server.url)  # connects and sends nothing
    stalled = sockets(server.url)
    stalled.sendall(b"GET /health HTTP/1.1\r\nHost: te")
    assert 0.5 < seconds_until_closed(stalled) < 4
    assert seconds_until_closed(silent) < 4

    # A header line every 0.2 s is progress, but the headers as a whole must come in time;
    # and the deadline counts from the first byte of a request on a kept-alive connection.
    trickled = sockets(server.url)
    trickled.sendall(HEALTH)
    read_response(trickled)
    start = time.monotonic()
    trickled.sendall(b"GET /health HTTP/1.1\r\n")
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while not is_closed(trickled) and time.monotonic() - start < 10:
            trickled.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.2)  # the trickle's pace, not a wait for the server
    assert 0.7 < time.monotonic() - start < 4


def test_stalled_request_body_is_dropped_but_a_slow_one_is_not(serve, sockets):
    server = serve(keepalive_timeout_s=30, header_timeout_s=1, body_timeout_s=1)
    body = b'{"inputs": {"text": "hello"}}'
    head = (b"POST /api/v1/endpoints/echo/jobs HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    stalled = sockets(server.url)
    stalled.sendall(head + body[:5])
    start = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        answer = stalled.recv(65536)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    assert 0.7 < time.monotonic() - start < 4

    # The same body a byte every 0.3 s (taking longer than body_timeout_s) is taken.
    slow = sockets(server.url)
    slow.sendall(head)
    for i in range(0, 12, 1):
        slow.sendall(body[i:i + 1])
        time.sleep(0.3)  # the slow client's pace, not a wait for the server
    slow.sendall(body[12:])
    assert read_response(slow).startswith(b"HTTP/1.1 20")
    assert "Traceback" not in server.text


def test_past_the_cap_idle_connections_make_room_and_health_answers(serve, sockets):
    server = serve(max_connections=20, keepalive_timeout_s=30, header_timeout_s=30)
    logged = len(server.output)
    idle = [sockets(server.url) for _ in range(60)]
    assert health_ok(server.url)  # at once: the longest-idle connection was closed for it
    # The oldest 40 idle connections made room for the newer ones, the newest 20 stay.
    wait_until(lambda: sum(map(is_closed, idle[:40])) == 40, timeout_s=10)
    assert not any(map(is_closed, idle[-19:]))
    assert server_sockets(server) <= 20 + 1 + 2  # the cap, the listener, some slack
    wait_until(lambda: "at the cap of 20 connections" in server.text, timeout_s=5)
    new_lines = server.output[logged:]
    assert len(new_lines) <= 5, new_lines
    assert "Traceback" not in server.text


def test_when_every_connection_is_busy_new_ones_are_refused(serve, sockets):
    server = serve(max_connections=20, body_timeout_s=30, header_timeout_s=30)
    busy = []
    for _ in range(20):  # each stays in the application, waiting for the rest of its body
        sock = sockets(server.url)
        sock.sendall(b"POST /api/v1/endpoints/echo/jobs HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        # Sent just before the request enters the application: from here on it is busy.
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"{")
        busy.append(sock)
    refused = sockets(server.url)
    assert seconds_until_closed(refused) < 4
    assert not health_ok(server.url)
    assert not any(map(is_closed, busy))
    for sock in busy:
        sock.close()
    wait_until(lambda: health_ok(server.url), timeout_s=5)
    wait_until(lambda: "refused a new one, none idle" in server.text, timeout_s=5)
    assert "closed the longest-idle" not in server.text
    assert "Traceback" not in server.text


NOFILE = 128


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs setrlimit and /proc")
def test_more_sockets_than_the_open_files_limit_leave_health_and_a_short_log(tmp_path, sockets):
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4 * NOFILE:
        pytest.skip(f"this test opens {3 * NOFILE} sockets; the limit here is {soft}")
    config = server_toml(tmp_path, keepalive_timeout_s=2, header_timeout_s=2)
    # The server under a low open-files limit, set in its own process before it starts.
    code = (f"import resource, runpy; resource.setrlimit(resource.RLIMIT_NOFILE, "
            f"({NOFILE}, {NOFILE})); runpy.run_module('api_server.cli', run_name='__main__')")
    server = _spawn(["-c", code, "-H", "127.0.0.1", "-p", "0", "--endpoints",
                     str(REPO / "endpoints"), "--store", f"sqlite:{tmp_path / 'jobs.sqlite3'}",
                     "--config", str(config)])
    try:
        line = server.wait_for_output(_LISTENING.pattern, timeout_s=15)
        server.url = _LISTENING.search(line).group(1)  # type: ignore[union-attr]
        wait_until(lambda: "connections: at most" in server.text, timeout_s=5)
        logged = len(server.output)
        start = time.monotonic()
        flood = [sockets(server.url) for _ in range(3 * NOFILE)]
        wait_until(lambda: health_ok(server.url), timeout_s=5)
        wait_until(lambda: sum(map(is_closed, flood)) >= 2 * NOFILE, timeout_s=10)
        wait_until(lambda: "at the cap" in server.text, timeout_s=5)
        assert "Traceback" not in server.text
        # Two kinds of line (at the cap, accept errors), each once a second at most.
        new_lines = server.output[logged:]
        assert len(new_lines) <= 2 * (time.monotonic() - start + 1) + 2, new_lines
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0
