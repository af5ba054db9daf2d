"""Fixtures that start the real server and real worker processes on loopback.

`start_server(...)` runs `python -m api_server.cli -p 0` and reads the bound port from its
"listening on" line; `start_worker(...)` runs `python -m workers.cli`. Both are stopped (SIGTERM,
then SIGKILL) when the test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from browser import Pages

REPO = Path(__file__).resolve().parents[1]
ECHO_WORKER_KEY = "echo-worker-key"
# One torch thread in this process and every worker it starts: the models are tiny, and the
# suite's processes already share the cores (more threads only spin waiting for each other).
os.environ.setdefault("OMP_NUM_THREADS", "1")
_LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass
class Process:
    """A started server or worker; `output` collects its stdout and stderr lines."""

    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    url: str = ""
    pump: threading.Thread | None = None

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after timeout_s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()
        return self.proc.returncode

    def exited(self, timeout_s: float = 30.0) -> int:
        """Waits for the process to exit by itself and for all its output to be read (so that
        `text` holds its last lines); returns its exit code. Fails, with its output, when it
        is still running after timeout_s."""
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout_s} s:\n{self.text}") from None
        self._close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash, a lost host)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.pump is not None:
            self.pump.join(15)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def wait_for_output(self, pattern: str, timeout_s: float = 10.0, since: int = 0) -> str:
        """Waits for a line of output matching the regex and returns it; with `since` (a
        len(output) taken before), only among the lines that came after."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        seen = since
        while time.monotonic() < deadline:
            lines = self.output[seen:]  # (a line appended meanwhile is read next time round)
            for line in lines:
                if regex.search(line):
                    return line
            seen += len(lines)
            if self.proc.poll() is not None and seen == len(self.output):
                break
            time.sleep(0.02)
        raise AssertionError(f"no output matching {pattern!r}; got:\n" + "".join(self.output))

    @property
    def text(self) -> str:
        return "".join(self.output)


def _spawn(args: list[str], env: dict[str, str] | None = None) -> Process:
    return _start([sys.executable, *args], env)


def _start(command: list[str], env: dict[str, str] | None = None) -> Process:
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    process = Process(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            process.output.append(line)

    process.pump = threading.Thread(target=pump, daemon=True)
    process.pump.start()
    return process


def spawn_server(endpoints: Path, store: Path, *extra: str, port: int = 0) -> Process:
    """Starts `jobhive-server` and returns once it listens (its URL in .url); stops it if it
    does not come up. The caller stops it (or use the start_server fixture)."""
    process = _spawn([
        "-m", "api_server.cli", "-H", "127.0.0.1", "-p", str(port),
        "-c", str(endpoints), "--store", f"sqlite:{store}", *extra,
    ])
    try:
        line = process.wait_for_output(_LISTENING.pattern, timeout_s=15)
    except AssertionError:
        process.stop()
        raise
    process.url = _LISTENING.search(line).group(1)  # type: ignore[union-attr]
    return process


def spawn_worker(
    url: str, *extra: str, kind: str = "noop", key: str = ECHO_WORKER_KEY,
    env: dict[str, str] | None = None, ready_timeout_s: float | None = 120,
) -> Process:
    """Starts `jobhive-worker KIND --server URL --key KEY ...`; with ready_timeout_s, returns
    once it has loaded its model (stopping it if it does not)."""
    process = _spawn(["-m", "workers.cli", kind, "--server", url, "--key", key, *extra], env)
    if ready_timeout_s is not None:
        try:
            process.wait_for_output(r"loaded in", timeout_s=ready_timeout_s)
        except AssertionError:
            process.stop()
            raise
    return process


@contextlib.contextmanager
def serving(
    endpoints: Path, store: Path, *worker_args: str, kind: str, key: str,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[Process, Process]]:
    """A server and one worker for a module's tests to share (a model worker takes seconds to
    start); both are stopped on exit. Yields (server, worker)."""
    server = spawn_server(endpoints, store)
    try:
        worker = spawn_worker(server.url, *worker_args, kind=kind, key=key, env=env)
        try:
            yield server, worker
        finally:
            worker.stop()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_llama4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build of the tiny Llama 4 for the whole session (the first worker builds it)."""
    return tmp_path_factory.mktemp("tiny-llama4")


SD3_WORKER_KEY = "sd3-worker-key"


@pytest.fixture(scope="module")
def sd3(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> tuple[Process, Process]:
    """(server, worker): the repository's endpoints and one tiny-model SD3 worker on the CPU
    (max batch 4), shared by test_sd3.py and test_browser_sd3.py (started_for_files)."""

    def start() -> contextlib.AbstractContextManager[tuple[Process, Process]]:
        folder = tmp_path_factory.mktemp("sd3")
        return serving(REPO / "endpoints", folder / "jobs.db", "--tiny", "--tiny-dir",
                       str(folder / "tiny-sd3"), "--device", "cpu", "--max-batch", "4",
                       "--poll-wait-s", "2", "--preview-size", "64", kind="sd3",
                       key=SD3_WORKER_KEY)

    return started_for_files(request, start)


# One torch thread (the models are tiny; more threads only spin) and no Hugging Face downloads.
RAG_WORKER_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def build_index(source: Path, out: Path) -> Path:
    """Builds an index of `source` into `out` with the real `jobhive-index build` (tiny random
    CLIP, the real MiniLM, on the CPU); returns `out`."""
    built = subprocess.run(
        [sys.executable, "-m", "workers.index_cli", "build", str(source), "--out", str(out),
         "--clip", "tiny", "--device", "cpu"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, **RAG_WORKER_ENV},
    )
    assert built.returncode == 0, built.stderr
    return out


# The retrieval tests' corpus (test_rag.py, test_browser_rag.py): each text file is one chunk,
# each on its own topic, so a query has one right answer; two drawn images (rag_corpus).
RAG_DOCS = {
    "shoes.md": (
        "# Running shoes\n\n"
        "The Ember Sprint is a red running sneaker with a foam sole that returns energy on every "
        "stride; runners who train on roads love its light mesh upper.\n\n"
        "Trail shoes need deep lugs: on mud and loose rock the grip matters more than the weight."
    ),
    "bread.txt": (
        "Sourdough starts with a starter of flour and water, fed daily until it bubbles.\n\n"
        "Bake the loaf in a covered pot at a high heat so the crust crackles and the crumb opens."
    ),
    "stars.html": (
        "<html><head><title>Night sky</title><style>p {color: red}</style></head><body>"
        "<p>Orion is easy to find in winter: three bright stars in a row make its belt.</p>"
        "<script>var hidden = 'never indexed';</script></body></html>"
    ),
    "bikes.md": (
        "# Bicycle care\n\n"
        "Oil the chain every few hundred kilometres and wipe off what it does not soak up; a "
        "squeaking chain wears its cogs.\n\n"
        "Pump the tyres before each ride: soft tyres pinch the tube on a kerb."
    ),
}


def draw(path: Path, color: tuple[int, int, int], shape: str) -> None:
    """A 96x96 picture of a box or a ball in `color` on a light background."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 96), (250, 250, 245))
    pen = ImageDraw.Draw(image)
    if shape == "box":
        pen.rectangle((12, 30, 84, 70), fill=color)
    else:
        pen.ellipse((20, 20, 76, 76), fill=color)
    image.save(path)


@pytest.fixture(scope="session")
def rag_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with RAG_DOCS, red-box.png and blue-ball.jpg."""
    root = tmp_path_factory.mktemp("corpus")
    for name, text in RAG_DOCS.items():
        (root / name).write_text(text)
    draw(root / "red-box.png", (220, 30, 30), "box")
    draw(root / "blue-ball.jpg", (30, 60, 220), "ball")
    return root


@pytest.fixture(scope="module")
def rag_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, rag_corpus: Path,
    tiny_llama4_dir: Path,
) -> tuple[Process, Process, Process]:
    """(server, search_worker, chat_worker): an index of rag_corpus built by the real
    `jobhive-index build`, a server with rag_search and rag_chat, a rag worker and a tiny llama4
    --index worker (batches of up to 2); shared by test_rag.py and test_browser_rag.py."""

    def start() -> contextlib.AbstractContextManager[tuple[Process, Process, Process]]:
        folder = tmp_path_factory.mktemp("rag-server")
        index = build_index(rag_corpus, folder / "index")
        return serving_rag(folder, index, tiny_llama4_dir, "--max-batch", "2")

    return started_for_files(request, start)


LLAMA4_WORKER_KEY = "llama4-worker-key"


@pytest.fixture(scope="module")
def chat_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    tiny_llama4_dir: Path,
) -> tuple[Process, Process]:
    """(server, worker): a server with only the llama4_chat endpoint (and its page) and one
    tiny llama4 worker (batches of up to 4, one torch thread); shared by test_llama4.py and
    test_browser_chat.py."""

    def start() -> contextlib.AbstractContextManager[tuple[Process, Process]]:
        tmp = tmp_path_factory.mktemp("llama4-server")
        shutil.copytree(REPO / "endpoints" / "llama4_chat", tmp / "endpoints" / "llama4_chat")
        return serving(tmp / "endpoints", tmp / "jobs.sqlite3", "--tiny",
                       "--tiny-dir", str(tiny_llama4_dir), "--max-batch", "4",
                       kind="llama4", key=LLAMA4_WORKER_KEY, env={"OMP_NUM_THREADS": "1"})

    return started_for_files(request, start)


@contextlib.contextmanager
def serving_rag(
    folder: Path, index: Path, tiny_llama4_dir: Path, *chat_args: str
) -> Iterator[tuple[Process, Process, Process]]:
    """A server with the rag_search and rag_chat endpoints (copied into folder/endpoints), a rag
    worker and a tiny `llama4 --index` worker (with `chat_args`), both over `index`; all three
    are stopped on exit. Yields (server, search_worker, chat_worker)."""
    for name in ("rag_search", "rag_chat"):
        shutil.copytree(REPO / "endpoints" / name, folder / "endpoints" / name)
    with serving(folder / "endpoints", folder / "jobs.sqlite3", "--index", str(index),
                 "--index-device", "cpu", kind="rag", key="rag-worker-key",
                 env=RAG_WORKER_ENV) as (server, search_worker):
        chat_worker = spawn_worker(
            server.url, "--tiny", "--tiny-dir", str(tiny_llama4_dir), "--device", "cpu",
            "--index", str(index), "--index-device", "cpu", *chat_args,
            kind="llama4", key="rag-chat-worker-key", env=RAG_WORKER_ENV,
        )
        try:
            yield server, search_worker, chat_worker
        finally:
            chat_worker.stop()


@pytest.fixture
def endpoints_dir(tmp_path: Path) -> Path:
    """A copy of the repository's endpoints/ that a test may change."""
    target = tmp_path / "endpoints"
    shutil.copytree(REPO / "endpoints", target)
    return target


def write_endpoint(folder: Path, name: str, toml_text: str) -> Path:
    """Writes folder/name/endpoint.toml and returns its path."""
    path = folder / name / "endpoint.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_text)
    return path


@pytest.fixture
def start_server(tmp_path: Path, endpoints_dir: Path) -> Iterator[Callable[..., Process]]:
    """Starts `jobhive-server` on a free loopback port; returns the Process (with .url)."""
    started: list[Process] = []

    def start(
        *extra: str,
        endpoints: Path | None = None,
        store: Path | None = None,
        port: int = 0,
        expect_failure: bool = False,
    ) -> Process:
        store_path = store or tmp_path / "jobs.sqlite3"
        if expect_failure:
            process = _spawn([
                "-m", "api_server.cli", "-H", "127.0.0.1", "-p", str(port),
                "-c", str(endpoints or endpoints_dir), "--store", f"sqlite:{store_path}", *extra,
            ])
            started.append(process)
            process.proc.wait(15)
            return process
        process = spawn_server(endpoints or endpoints_dir, store_path, *extra, port=port)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., Process]]:
    """Starts `jobhive-worker TYPE --server URL --key KEY ...`; waits until it has loaded."""
    started: list[Process] = []

    def start(url: str, *extra: str, kind: str = "noop", key: str = ECHO_WORKER_KEY,
              wait_ready: bool = True) -> Process:
        process = spawn_worker(url, *extra, kind=kind, key=key,
                               ready_timeout_s=120 if wait_ready else None)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def start_redis(folder: Path, port: int, *extra: str) -> Process:
    """Debian's `redis-server` on 127.0.0.1:PORT with its files in `folder` (an append-only
    file, no snapshots), as the Redis store expects it; returns once it accepts connections.
    Its url is redis://127.0.0.1:PORT/0. Stopped by PID (SIGTERM) like the other processes."""
    folder.mkdir(parents=True, exist_ok=True)
    process = _start(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir",
                      str(folder), "--save", "", "--appendonly", "yes", "--daemonize", "no",
                      *extra])
    try:
        process.wait_for_output(r"Ready to accept connections", timeout_s=15)
    except AssertionError:
        process.stop()
        raise
    process.url = f"redis://127.0.0.1:{port}/0"
    return process


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """One Redis per test process, on a held port (no other process can take it meanwhile)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    with hold_port() as port:
        server = start_redis(tmp_path_factory.mktemp("redis"), port)
        yield server
        server.stop()


@pytest.fixture
def redis_url(redis_server: Process) -> str:
    """The session's Redis, emptied for this test (a test process runs one test at a time)."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
        client.config_set("maxmemory", 0)
    return redis_server.url


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
async def browser(request: pytest.FixtureRequest) -> AsyncIterator[Pages]:
    """Headless Chromium (tests/browser.py): `await browser.open(url)` gives a page; a console
    error or uncaught exception on any page fails the test unless `browser.allow(regex)` let it
    pass; every page is screenshot into artifacts/screenshots/."""
    from browser import chromium_pages  # only the browser tests need Playwright

    async with chromium_pages(request.node.name) as pages:
        yield pages


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0, every_s: float = 0.05):
    """Polls until condition() is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


@contextlib.contextmanager
def hold_port() -> Iterator[int]:
    """A loopback port from binding port 0, held by that socket until the block ends.

    The socket is bound but never listens: a connect to the port is refused at once (Linux
    answers with a reset), and no other process is given the port meanwhile (binding port 0 and
    outgoing connections skip a bound port; binding it without SO_REUSEADDR fails). The socket
    has SO_REUSEADDR, as the server's has (asyncio's create_server sets it on Unix), so
    `spawn_server(..., port=port)` can listen on the held port, and again after a restart: the
    port is never free for another process to take in between. (Never bind, close, then reuse
    the number: another process may take the port before the test uses it.)"""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port held for the whole test (see hold_port): refused until a server started
    with `port=held_port` listens on it; a server restarted on it gets it back."""
    with hold_port() as port:
        yield port


@pytest.fixture
def refused_url(held_port: int) -> str:
    """`http://127.0.0.1:PORT` where nobody answers: a connect is refused at once."""
    return f"http://127.0.0.1:{held_port}"


# ----- test files that run together, and the order the files run in

# A test file named here runs in the same test process as the file it maps to, next to it: the
# two share the model servers their fixtures start (started_for_files; a model worker costs
# seconds of CPU to start, a retrieval index more), or the model libraries both import.
RUNS_WITH = {
    "test_browser_rag.py": "test_rag.py",
    "test_browser_sd3.py": "test_sd3.py",
    "test_browser_chat.py": "test_llama4.py",
    "test_rag_recall.py": "test_rag_index.py",  # torch, sentence-transformers, FAISS, in-process
}
# Per file group: what started_for_files entered, by fixture name, and the stack that leaves it.
_STARTED = pytest.StashKey[dict[str, tuple[contextlib.ExitStack, dict[str, object]]]]()


def file_group(path: Path) -> str:
    """The name of the test file the test file at `path` runs with (RUNS_WITH), else its own."""
    return RUNS_WITH.get(path.name, path.name)


def started_for_files(request: pytest.FixtureRequest, start: Callable[[], Any]) -> Any:
    """For a module fixture: enters the context manager that `start()` returns once for the
    requesting file's group (file_group), under the fixture's name, and returns what it gave;
    the group's other file gets the same. It is left after the group's last test, or when the
    session ends first (a stop at the first failure, say)."""
    groups = request.config.stash.setdefault(_STARTED, {})
    group = file_group(request.path)
    if group not in groups:
        groups[group] = (contextlib.ExitStack(), {})
        request.session.addfinalizer(groups[group][0].close)  # (a second close does nothing)
    stack, entered = groups[group]
    if request.fixturename not in entered:
        entered[request.fixturename] = stack.enter_context(start())
    return entered[request.fixturename]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the last test of a file group: stops what started_for_files started for it."""
    try:
        return (yield)
    finally:
        group = file_group(item.path)
        if nextitem is None or file_group(nextitem.path) != group:
            stack, _ = item.config.stash.get(_STARTED, {}).pop(group, (None, None))
            if stack is not None:
                stack.close()


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadfile with a file group (file_group) handed out as one, and the groups handed
    out in the order collected (pytest_collection_modifyitems): pytest-xdist would reorder them
    by their number of tests, most first, and hand out the slow files with a few tests last."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileGroupScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = Path(super()._split_scope(nodeid))
            return str(path.with_name(file_group(path)))

    config.option.loadscopereorder = False
    return FileGroupScheduling(config, log)


# The slowest file groups first (seconds of setup, calls and teardowns, measured with
# --durations=0 on 2 cores; a group goes by the name of the file the others run with, RUNS_WITH):
# the two test processes (--dist loadfile) each take the next whole group, so a long one taken
# last leaves the other process idle at the end. The rest keep their order.
SLOWEST_FIRST = (
    "test_client.py", "test_worker_supervisor.py", "test_resilience.py", "test_browser_pages.py",
    "test_worker_runtime.py", "test_multi_server.py", "test_llama4.py", "test_sd3.py",
    "test_rag.py", "test_api.py", "test_worker_protocol.py", "test_fuzz_api.py",
    "test_rag_index.py", "test_openai.py", "test_connections.py", "test_browser_firefox.py",
    "test_browser_files.py", "test_nginx.py", "test_text_parts.py", "test_sentinel.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Orders the tests by file group: SLOWEST_FIRST's first, a group's files next to each
    other, the rest as collected (a file's tests keep their order)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    seen: dict[str, int] = {}
    for item in items:
        seen.setdefault(file_group(item.path), len(seen))

    def order(item: pytest.Item) -> tuple[int, int]:
        group = file_group(item.path)
        return rank.get(group, len(rank)), seen[group]

    items.sort(key=order)
