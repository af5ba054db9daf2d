"""`jobhive-server --demo`: the server plus one worker process per endpoint that has a demo worker.

The workers are separate processes (`python -m workers.cli ...`), as on a real deployment; the
server only starts and stops them. Each demo worker runs offline: no model downloads. The
retrieval workers need an index: the shipped corpus (examples/corpus) is indexed first, with a
tiny random CLIP and the real MiniLM sentence model, and brought up to date on later starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from api_server.config import Endpoint
from api_server.store.base import Store

log = logging.getLogger("jobhive.demo")

INDEX_MARKER = "meta.sqlite3"  # a file every index folder has (workers/rag/meta.py)
STAMP = "demo-corpus.sha256"  # in the index folder: corpus_stamp() when it was last indexed
READING_CODE = Path(__file__).resolve().parents[1] / "workers" / "rag"
DEMO_CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"
DEMO_INDEX = Path.home() / ".cache" / "jobhive" / "demo-index"
READY_TIMEOUT_S = 300.0  # the most the demo waits for its workers to connect
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
    url: str, endpoints: Mapping[str, Endpoint], store: Store, stop: asyncio.Event
) -> AsyncIterator[list[str]]:
    """Starts the demo workers against the server at `url` and waits until each has connected
    (or exited, or `stop` is set); stops them (SIGTERM) on exit.

    Yields:
        list[str]: the names of the endpoints whose worker is connected.
    """
    processes: list[asyncio.subprocess.Process] = []
    served = []
    try:
        # Workers without an index first: they start while the corpus is being indexed.
        with_index = [name for name, args in DEMO_WORKERS.items() if "--index" in args]
        names = sorted(DEMO_WORKERS, key=lambda name: name in with_index)
        index_ok: bool | None = None
        for name in names:
            args = DEMO_WORKERS[name]
            endpoint = endpoints.get(name)
            if endpoint is None:
                continue
            if name in with_index:
                index_ok = await index_demo_corpus() if index_ok is None else index_ok
                if not index_ok:
                    log.error("demo: no index, so no worker for %s", name)
                    continue
            processes.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "workers.cli", *args, "--server", url,
                "--key", endpoint.worker.auth_keys[0], "--worker-id", f"demo-{name}",
                "--log-level", "WARNING", env={**os.environ, **WORKER_ENV},
                start_new_session=True,  # Ctrl-C reaches the server only; it stops them once
            ))
            served.append(name)
        yield await connected(store, dict(zip(served, processes, strict=True)), stop)
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def connected(
    store: Store, workers: Mapping[str, asyncio.subprocess.Process], stop: asyncio.Event
) -> list[str]:
    """The endpoints of `workers` once each worker has polled the store (seen as demo-NAME) or
    exited, READY_TIMEOUT_S at most (or until `stop` is set); those connected."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while True:
        seen = {w["worker_id"] for w in (await store.stats())["workers"]}
        ready = [name for name in workers if f"demo-{name}" in seen]
        waiting = [name for name, process in workers.items()
                   if name not in ready and process.returncode is None]
        if not waiting or loop.time() > deadline or stop.is_set():
            for name in sorted(set(workers) - set(ready) - set(waiting)):
                log.error("demo: the worker for %s exited before it connected", name)
            return ready
        await asyncio.sleep(0.2)
