"""`jobhive-server --demo`: the server plus one worker process per endpoint that has a demo worker.

The workers are separate processes (`python -m workers.cli ...`), as on a real deployment; the
server only starts and stops them. Each demo worker runs offline: no model downloads. The
retrieval workers need an index: the shipped corpus (examples/corpus) is indexed first, with a
tiny random CLIP and the real MiniLM sentence model, and brought up to date on later starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from api_server.config import Endpoint

log = logging.getLogger("jobhive.demo")

INDEX_MARKER = "meta.sqlite3"  # a file every index folder has (workers/rag/meta.py)
DEMO_CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"
DEMO_INDEX = Path.home() / ".cache" / "jobhive" / "demo-index"

# endpoint name -> the `jobhive-worker` arguments that serve it in the demo
DEMO_WORKERS: Mapping[str, tuple[str, ...]] = {
    "echo": ("noop", "--max-batch", "8"),
    "sd3": ("sd3", "--tiny", "--device", "cpu", "--max-batch", "4"),
    "llama4_chat": ("llama4", "--tiny", "--device", "cpu", "--max-batch", "8"),
    "rag_search": ("rag", "--index", str(DEMO_INDEX), "--index-device", "cpu", "--max-batch", "8"),
    "rag_chat": ("llama4", "--tiny", "--device", "cpu", "--index", str(DEMO_INDEX),
                 "--index-device", "cpu", "--max-batch", "4"),
}


async def index_demo_corpus(index_dir: Path = DEMO_INDEX) -> bool:
    """Builds the demo index of examples/corpus, or adds what changed since; False on failure."""
    if (index_dir / INDEX_MARKER).is_file():
        command = ("add", str(DEMO_CORPUS), "--index", str(index_dir))
    else:
        command = ("build", str(DEMO_CORPUS), "--out", str(index_dir), "--clip", "tiny",
                   "--device", "cpu", "--force")
    log.info("demo: indexing %s into %s", DEMO_CORPUS, index_dir)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.index_cli", *command, start_new_session=True
    )
    return await process.wait() == 0


@contextlib.asynccontextmanager
async def demo_workers(url: str, endpoints: Mapping[str, Endpoint]) -> AsyncIterator[list[str]]:
    """Starts the demo workers against the server at `url`; stops them (SIGTERM) on exit.

    Yields:
        list[str]: the names of the endpoints that got a worker.
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
                "--log-level", "WARNING",
                start_new_session=True,  # Ctrl-C reaches the server only; it stops them once
            ))
            served.append(name)
        yield served
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
