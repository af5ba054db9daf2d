"""nginx in front of three servers on one Redis: examples/nginx/jobhive.conf, run for real.

Debian's `nginx` runs as a child of the test (no daemon; its pid file, logs and temporary files
in a temporary folder) with the example's own file as its site: only the upstream addresses and
the listen port are replaced. Three `jobhive-server --store redis://...` stand behind it; the
noop worker and the clients reach them only through nginx. What a test cannot wait for (a long-
poll past nginx's default 60 s) is checked in the config instead, against the server's defaults.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import REPO, Process, _start, hold_port, wait_until
from e2e_http import parse_events
from PIL import Image

from api_server.config import ServerConfig

EXAMPLE = REPO / "examples" / "nginx" / "jobhive.conf"
EXAMPLE_UPSTREAM = re.compile(r"\bserver 127\.0\.0\.1:777[1-3]\b")
EXAMPLE_LISTEN = re.compile(r"^(\s*)listen\s+[^;]+;", re.MULTILINE)


def nginx_binary() -> str | None:
    """Debian's nginx: on PATH, else /usr/sbin (not on a non-root user's PATH); None if absent."""
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found if os.access(found, os.X_OK) else None


# --- the example, read as nginx reads it ---------------------------------------------------


@dataclass
class Block:
    """One `{...}` block of an nginx config: its directive name and arguments (`location`,
    `("~", "^/api/...")`), the simple directives in it and the blocks inside it."""

    name: str
    args: tuple[str, ...] = ()
    directives: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)

    def value(self, name: str) -> tuple[str, ...] | None:
        """The arguments of this block's last `name` directive (None: not set here)."""
        found = self.directives.get(name)
        return found[-1] if found else None

    def children(self, name: str) -> list[Block]:
        return [b for b in self.blocks if b.name == name]


def parse_config(text: str) -> Block:
    """The blocks and directives of an nginx config text (quotes kept off, comments dropped)."""
    tokens = re.findall(r'"([^"]*)"|([{};])|([^\s{};"]+)', re.sub(r"#[^\n]*", "", text))
    stack = [Block("")]
    words: list[str] = []
    for quoted, punct, word in tokens:
        if punct == "{":
            block = Block(words[0], tuple(words[1:]))
            stack[-1].blocks.append(block)
            stack.append(block)
            words = []
        elif punct == "}":
            assert not words, f"no ';' after {words}"
            stack.pop()
        elif punct == ";":
            stack[-1].directives.setdefault(words[0], []).append(tuple(words[1:]))
            words = []
        else:
            words.append(quoted if punct == "" and word == "" else word)
    assert len(stack) == 1 and not words, "unbalanced braces"
    return stack[0]


def location_for(server: Block, uri: str) -> Block:
    """The location nginx picks for a URI: an exact (=) match; else the longest prefix, unless
    it is `^~`, gives way to the first regex (~, ~*) that matches, in file order."""
    prefixes, regexes = [], []
    for location in server.children("location"):
        modifier, pattern = location.args if len(location.args) == 2 else ("", location.args[0])
        if modifier == "=" and uri == pattern:
            return location
        if modifier in ("~", "~*"):
            regexes.append((re.compile(pattern, re.I if modifier == "~*" else 0), location))
        elif modifier in ("", "^~") and uri.startswith(pattern):
            prefixes.append((len(pattern), modifier, location))
    longest = max(prefixes, key=lambda p: p[0], default=None)
    if longest is not None and longest[1] == "^~":
        return longest[2]
    for regex, location in regexes:
        if regex.search(uri):
            return location
    assert longest is not None, f"no location for {uri}"
    return longest[2]


def setting(server: Block, uri: str, name: str, default: str) -> str:
    """A directive's value for a URI: its location's, else the server block's, else nginx's
    default (directives like these are inherited from the enclosing level)."""
    for level in (location_for(server, uri), server):
        if (args := level.value(name)) is not None:
            return " ".join(args)
    return default


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[unit]


def size_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG])?", value).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** {"k": 1, "m": 2, "g": 3, None: 0}[unit and unit.lower()]


def test_the_example_outlasts_every_wait_and_takes_every_body_the_server_takes():
    """The waits a live test cannot sit through: each route's read timeout against the server
    default that bounds it (`[SERVER]` in README.md), and the body limits likewise."""
    config = ServerConfig()
    conf = parse_config(EXAMPLE.read_text())
    (upstream,) = conf.children("upstream")
    (server,) = conf.children("server")

    def read_timeout_s(uri: str) -> float:
        return seconds(setting(server, uri, "proxy_read_timeout", "60s"))

    # 1. Long waits are not cut: ?wait= (submit and job), worker polls, event streams.
    assert read_timeout_s("/api/v1/endpoints/echo/jobs") > config.client_wait_max_s
    assert read_timeout_s("/api/v1/jobs/abc") > config.client_wait_max_s
    assert read_timeout_s("/api/v1/worker/jobs") > config.worker_poll_max_s
    assert read_timeout_s("/api/v1/worker/results") > config.worker_poll_max_s
    assert read_timeout_s("/api/v1/jobs/abc/events") > config.sse_keepalive_s
    # 2. Events go out as written; worker uploads stream to the server.
    events = "/api/v1/jobs/abc/events"
    assert setting(server, events, "proxy_buffering", "on") == "off"
    assert setting(server, "/api/v1/jobs/abc", "proxy_buffering", "on") == "on"
    upload = "/api/v1/worker/jobs/abc/files/images-0.png"
    assert setting(server, upload, "proxy_request_buffering", "on") == "off"
    # 3. Bodies the server takes pass nginx (its default is 1m).
    submit = "/api/v1/endpoints/echo/jobs"
    assert size_bytes(setting(server, submit, "client_max_body_size", "1m")) >= (
        config.max_body_bytes)
    assert size_bytes(setting(server, "/api/v1/worker/results", "client_max_body_size", "1m")) >= (
        config.max_body_bytes)
    assert size_bytes(setting(server, upload, "client_max_body_size", "1m")) >= (
        config.max_file_bytes)
    # 4. Keep-alive to the servers, closed by nginx before the server closes it.
    assert upstream.value("keepalive") is not None
    assert seconds(" ".join(upstream.value("keepalive_timeout") or ("60s",))) < (
        config.keepalive_timeout_s)
    assert setting(server, "/", "proxy_http_version", "1.0") == "1.1"
    # 5. Headers set once, at server level: a location's own proxy_set_header would drop them.
    headers = {args[0].lower(): args[1] for args in server.directives["proxy_set_header"]}
    assert headers == {"connection": "", "host": "$host", "x-real-ip": "$remote_addr",
                       "x-forwarded-for": "$proxy_add_x_forwarded_for",
                       "x-forwarded-proto": "$scheme"}
    assert not [b.args for b in server.blocks if "proxy_set_header" in b.directives]
    # 6. A sent POST (a submit without job_id) is never sent again to another server.
    assert "non_idempotent" not in server.value("proxy_next_upstream")  # type: ignore[operator]
    assert all(b.value("proxy_pass") == ("http://jobhive",) for b in server.blocks)
    assert len(upstream.directives["server"]) == 3


# --- nginx and three servers, live ----------------------------------------------------------


@dataclass
class Proxied:
    """nginx (`url`) in front of `servers`; `folder` holds nginx's config, logs and files."""

    url: str
    nginx: Process
    servers: list[Process]
    ports: list[int]
    folder: Path

    def error_log(self) -> str:
        return (self.folder / "error.log").read_text()

    def access_log(self) -> str:
        return (self.folder / "access.log").read_text()


def write_nginx_conf(folder: Path, server_ports: list[int], listen_port: int) -> Path:
    """Writes folder/jobhive.conf (the example, its upstream servers and listen port replaced)
    and folder/nginx.conf, which includes it in http {} and keeps every file nginx writes in
    `folder`. Returns the path of nginx.conf."""
    ports = iter(server_ports)
    site, upstreams = EXAMPLE_UPSTREAM.subn(lambda _: f"server 127.0.0.1:{next(ports)}",
                                            EXAMPLE.read_text())
    site, listens = EXAMPLE_LISTEN.subn(rf"\g<1>listen 127.0.0.1:{listen_port};", site)
    assert (upstreams, listens) == (3, 1), "the example's upstream or listen lines changed"
    (folder / "jobhive.conf").write_text(site)
    # As root nginx would run its worker as nobody, who cannot enter pytest's 0700 folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = folder / "nginx.conf"
    main.write_text(
        f"{user}worker_processes 1;\n"
        f"pid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log notice;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {folder}/access.log;\n"
        # As a site's http {} may have it: events held in a gzip buffer would arrive at the end.
        "    gzip on; gzip_types text/event-stream application/json;\n"
        + "".join(f"    {kind}_temp_path {folder}/{kind}_temp;\n"
                  for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"    include {folder}/jobhive.conf;\n"
        "}\n"
    )
    return main


@pytest.fixture
def proxied(
    tmp_path: Path, start_server: Callable[..., Process], redis_url: str
) -> Iterator[Proxied]:
    """Three servers on one Redis (sharing a files folder), each on a held port, so a killed
    one's port stays refused; nginx on another held port in front of them."""
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed (scripts/setup.sh installs it: apt-get install nginx)")
    config = tmp_path / "server.toml"
    config.write_text(f'[SERVER]\nfiles_dir = "{tmp_path / "files"}"\n')
    folder = tmp_path / "nginx"
    folder.mkdir()
    with contextlib.ExitStack() as held:
        ports = [held.enter_context(hold_port()) for _ in range(3)]
        servers = [start_server("--store", redis_url, "--config", str(config), port=port)
                   for port in ports]
        listen_port = held.enter_context(hold_port())
        conf = write_nginx_conf(folder, ports, listen_port)
        process = _start([nginx, "-p", str(folder), "-e", str(folder / "error.log"),
                          "-c", str(conf), "-g", "daemon off;"])
        proxied = Proxied(f"http://127.0.0.1:{listen_port}", process, servers, ports, folder)
        try:
            wait_until(lambda: _healthy(proxied), timeout_s=15)
            yield proxied
        finally:
            process.stop()  # SIGTERM to the master, by its pid: it stops its worker and exits


def _healthy(proxied: Proxied) -> bool:
    if proxied.nginx.proc.poll() is not None:
        log = proxied.folder / "error.log"
        raise AssertionError(f"nginx exited ({proxied.nginx.proc.returncode}):\n"
                             f"{proxied.nginx.text}{log.read_text() if log.exists() else ''}")
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{proxied.url}/health", timeout=5).status_code == 200
    return False


def noise_png(side_px: int, seed: int = 7) -> bytes:
    """An RGBA PNG of random pixels: incompressible, so about 4 bytes per pixel."""
    pixels = random.Random(seed).randbytes(side_px * side_px * 4)
    buffer = io.BytesIO()
    Image.frombytes("RGBA", (side_px, side_px), pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def test_jobs_events_and_large_bodies_pass_through_nginx(proxied, start_worker, http):
    start_worker(proxied.url, "--worker-id", "behind-nginx")
    jobs = f"{proxied.url}/api/v1/endpoints/echo/jobs"

    # 1. A submit with ?wait= is answered with the finished job.
    reply = http.post(jobs, params={"wait": "10"}, json={"inputs": {"text": "hello"}})
    assert reply.status_code == 200, reply.text
    done = reply.json()
    assert (done["status"], done["outputs"]["text"]) == ("done", "hello")
    again = http.get(f"{proxied.url}/api/v1/jobs/{done['job_id']}")
    assert again.status_code == 200 and again.json()["outputs"]["text"] == "hello"

    # 2. Events arrive as the worker reports, not all at once at the end: 8 progress steps
    #    over 4 s, so the first heard comes seconds before the result (even when the stream
    #    opens late on a loaded machine).
    reply = http.post(jobs, json={"inputs": {"text": "steps", "delay_s": 4, "steps": 8}})
    assert reply.status_code == 202, reply.text
    arrived: list[tuple[float, str]] = []
    final: dict = {}
    url = f"{proxied.url}/api/v1/jobs/{reply.json()['job_id']}/events"
    with http.stream("GET", url) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in stream.headers
        for event in parse_events(stream.iter_lines()):
            arrived.append((time.monotonic(), event.event))
            if event.event in ("result", "error"):
                final = event.data
                break
    assert final.get("status") == "done" and final["outputs"]["text"] == "steps", arrived
    progress = [t for t, name in arrived if name == "progress"]
    assert len(progress) >= 2, arrived
    assert arrived[-1][0] - progress[0] >= 1.0, f"events held back by a buffer: {arrived}"

    # 3. A body past nginx's 1 MB default: a 2048x2048 noise PNG (16 MiB; 22 MB of JSON in
    #    base64) goes up with the submit, comes to the worker, and back up as its output file
    #    through the upload location; the download is the same bytes.
    png = noise_png(2048)
    assert len(png) > 16 * 1024 * 1024
    image = "data:image/png;base64," + base64.b64encode(png).decode()
    reply = http.post(jobs, params={"wait": "30"}, json={"inputs": {"image": image}})
    assert reply.status_code == 200, reply.text[:500]
    ref = reply.json()["outputs"]["image"]
    assert (ref["bytes"], ref["sha256"]) == (len(png), hashlib.sha256(png).hexdigest())
    download = http.get(proxied.url + ref["url"])
    assert download.status_code == 200 and download.content == png
    access = proxied.access_log()
    assert re.search(r'"PUT /api/v1/worker/jobs/\S+/files/image\S* HTTP/1.1" 200 ', access)
    assert not re.search(r'" 413 ', access), access


def test_a_killed_server_is_passed_over(proxied, start_worker, http):
    start_worker(proxied.url, "--worker-id", "behind-nginx")
    jobs = f"{proxied.url}/api/v1/endpoints/echo/jobs"
    reply = http.post(jobs, params={"wait": "10"}, json={"inputs": {"text": "before"}})
    assert reply.status_code == 200 and reply.json()["status"] == "done", reply.text

    killed = f'upstream: "http://127.0.0.1:{proxied.ports[0]}/'
    proxied.servers[0].kill()  # SIGKILL: no goodbye; its port stays held, so connects are refused

    # 1. Reads: the dead server is tried (a refused connect), passed over at once (no 502 ever),
    #    and after max_fails left out for fail_timeout.
    def health_after(line: str) -> bool:
        reply = http.get(f"{proxied.url}/health")
        assert reply.status_code == 200, reply.text
        return any(line in entry and killed in entry for entry in proxied.error_log().splitlines())

    wait_until(lambda: health_after("connect() failed (111: Connection refused)"), timeout_s=10)
    wait_until(lambda: health_after("upstream server temporarily disabled"), timeout_s=10)
    # 2. Submits with ?wait=: the worker, whose poll the kill may have cut, comes back through
    #    nginx. A submit carries a job_id, so the caller may send it again after a 502 (nginx
    #    does not, as it may have reached the dead server); a refused connect nginx passes on.
    for i in range(6):
        job = {"inputs": {"text": f"after-{i}"}, "job_id": f"after-kill-{i}"}
        reply = _submit(http, jobs, job)
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"]["text"] == f"after-{i}"
    assert all(server.proc.poll() is None for server in proxied.servers[1:])


def _submit(http: httpx.Client, url: str, job: dict) -> httpx.Response:
    """A submit with ?wait=, sent once more after a 502 (safe: it has a job_id)."""
    for _ in range(2):
        reply = http.post(url, params={"wait": "10"}, json=job)
        if reply.status_code != 502:
            break
    return reply
