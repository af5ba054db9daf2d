"""`jobhive-server --demo`: the server plus one worker process per endpoint that has a demo worker.

The workers are separate processes (`jobhive-worker ...`), as on a real deployment, forked from
one that imports their libraries once (workers/prefork.py); the server only starts and stops
them. Each demo worker runs offline: no model downloads. The retrieval workers need an index:
the shipped corpus (examples/corpus) is indexed first, with a tiny random CLIP and the real
MiniLM sentence model, and brought up to date on later starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import BinaryIO

from api_server.config import Endpoint
from api_server.store.base import Store

log = logging.getLogger("jobhive.demo")

INDEX_MARKER = "meta.sqlite3"  # a file every index folder has (workers/rag/meta.py)
STAMP = "demo-corpus.sha256"  # in the index folder: corpus_stamp() when it was last indexed
READING_CODE = Path(__file__).resolve().parents[1] / "workers" / "rag"
DEMO_CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"
DEMO_INDEX = Path.home() / ".cache" / "jobhive" / "demo-index"
READY_TIMEOUT_S = 300.0  # the most the demo waits for its workers to connect
STOP_TIMEOUT_S = 30.0  # the most its workers may take to stop before they are killed
# The demo workers' environment: no progress bars of the libraries' model loads (a tiny model
# loads in a blink, and six bars at once only garble the terminal).
WORKER_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}

# endpoint name -> the `jobhive-worker` arguments that serve it in the demo
DEMO_WORKERS: Mapping[str, tuple[str, ...]] = {
    "echo": ("noop", "--max-batch", "8"),
    "sd3": ("sd3", "--tiny", "--device", "cpu", "--max-batch", "4"),
    "llama4_chat": ("llama4", "--tiny", "--device", "cpu", "--max-batch", "8"),
    "rag_search": ("rag", "--index", str(DEMO_INDEX), "--index-device", "cpu", "--max-batch", "8"),
    "rag_chat": ("llama4", "--tiny", "--device", "cpu", "--index", str(DEMO_INDEX),
                 "--index-device", "cpu", "--max-batch", "4"),
    "embeddings": ("embed", "--tiny", "--device", "cpu", "--max-batch", "32"),
}


async def index_demo_corpus(index_dir: Path = DEMO_INDEX) -> bool:
    """Builds the demo index of examples/corpus, or adds what changed since; False on failure.
    Skipped (no model loaded) when neither the corpus nor jobhive's reading code changed since
    the last time it ran well."""
    stamp_file, stamp = index_dir / STAMP, corpus_stamp()
    if (index_dir / INDEX_MARKER).is_file():
        with contextlib.suppress(OSError):
            if stamp_file.read_text() == stamp:
                return True
        command = ("add", str(DEMO_CORPUS), "--index", str(index_dir))
    else:
        command = ("build", str(DEMO_CORPUS), "--out", str(index_dir), "--clip", "tiny",
                   "--device", "cpu", "--force")
    log.info("demo: indexing %s into %s", DEMO_CORPUS, index_dir)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.index_cli", *command, start_new_session=True
    )
    if await process.wait() != 0:
        return False
    stamp_file.write_text(stamp)
    return True


def corpus_stamp() -> str:
    """What the demo index depends on: each corpus file's path, size and time, and the code
    that reads and indexes files (workers/rag)."""
    files = [*sorted(DEMO_CORPUS.rglob("*")), *sorted(READING_CODE.glob("*.py"))]
    lines = [f"{f}\t{f.stat().st_size}\t{f.stat().st_mtime_ns}" for f in files if f.is_file()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@contextlib.asynccontextmanager
async def demo_workers(
    url: str, endpoints: Mapping[str, Endpoint], store: Store, stop: asyncio.Event,
    log_format: str = "text",
) -> AsyncIterator[list[str]]:
    """Starts the demo workers against the server at `url` and waits until each has connected
    (or exited, or `stop` is set); stops them (SIGTERM) on exit.

    The workers are forks of one process, workers/prefork.py, that imports their libraries
    once: five processes importing torch each took 39 to 48 s of CPU to start.

    Args:
        log_format (str): the workers' --log-format (text or json).

    Yields:
        list[str]: the names of the endpoints whose worker is connected.
    """
    read_fd, write_fd = os.pipe()
    try:
        host = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers.prefork", "--events-fd", str(write_fd),
            stdin=asyncio.subprocess.PIPE, pass_fds=(write_fd,), env={**os.environ, **WORKER_ENV},
            start_new_session=True,  # Ctrl-C reaches the server only; it stops them once
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    workers = HostedWorkers(host)
    events = os.fdopen(read_fd, "rb")
    follower = asyncio.create_task(workers.follow(events))
    try:
        # Workers without an index first: they start while the corpus is being indexed.
        with_index = [name for name, args in DEMO_WORKERS.items() if "--index" in args]
        names = sorted(DEMO_WORKERS, key=lambda name: name in with_index)
        index_ok: bool | None = None
        for name in names:
            endpoint = endpoints.get(name)
            if endpoint is None:
                continue
            if name in with_index:
                index_ok = await index_demo_corpus() if index_ok is None else index_ok
                if not index_ok:
                    log.error("demo: no index, so no worker for %s", name)
                    continue
            await workers.start(name, [
                *DEMO_WORKERS[name], "--server", url, "--key", endpoint.worker.auth_keys[0],
                "--worker-id", f"demo-{name}", "--log-level", "WARNING", "--log-format", log_format,
            ])
        yield await connected(store, workers, stop)
    finally:
        await workers.stop()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        events.close()


class HostedWorkers:
    """The demo workers forked by one workers/prefork.py process (`host`): which have been
    asked for, which have exited (from its events)."""

    def __init__(self, host: asyncio.subprocess.Process) -> None:
        self.host = host
        self.asked: list[str] = []  # the endpoints whose worker was asked for, in order
        self.exited: dict[str, int] = {}  # endpoint -> exit status

    async def start(self, name: str, argv: list[str]) -> None:
        """Asks the host to start `jobhive-worker ARGV` for endpoint `name`."""
        assert self.host.stdin is not None
        self.asked.append(name)
        with contextlib.suppress(ConnectionError):  # the host is gone: seen as exited
            self.host.stdin.write(json.dumps({"name": name, "argv": argv}).encode() + b"\n")
            await self.host.stdin.drain()

    def running(self, name: str) -> bool:
        return name in self.asked and name not in self.exited and self.host.returncode is None

    async def follow(self, events: BinaryIO) -> None:
        """Reads the host's events until it closes them."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), events)
        try:
            async for line in reader:
                event = json.loads(line)
                if event.get("event") == "exited":
                    self.exited[event["name"]] = event["status"]
        finally:
            transport.close()

    async def stop(self) -> None:
        """SIGTERM to the host, which passes it on to each worker and exits once all have;
        SIGKILL to all of them after STOP_TIMEOUT_S."""
        if self.host.returncode is None:
            self.host.terminate()
        try:
            await asyncio.wait_for(self.host.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.host.pid, signal.SIGKILL)  # its process group: it and its forks
            await self.host.wait()
        if self.host.stdin is not None:
            self.host.stdin.close()


async def connected(store: Store, workers: HostedWorkers, stop: asyncio.Event) -> list[str]:
    """The endpoints of `workers` once each worker has polled the store (seen as demo-NAME) or
    exited, READY_TIMEOUT_S at most (or until `stop` is set); those connected."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while True:
        seen = {w["worker_id"] for w in (await store.stats())["workers"]}
        ready = [name for name in workers.asked if f"demo-{name}" in seen]
        waiting = [name for name in workers.asked
                   if name not in ready and workers.running(name)]
        if not waiting or loop.time() > deadline or stop.is_set():
            for name in sorted(set(workers.asked) - set(ready) - set(waiting)):
                log.error("demo: the worker for %s exited before it connected", name)
            return ready
        await asyncio.sleep(0.2)
