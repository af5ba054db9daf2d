"""`jobhive-server --demo`: the server plus one worker process per endpoint that has a demo worker.

The workers are separate processes (`python -m workers.cli ...`), as on a real deployment; the
server only starts and stops them. Each demo worker runs offline: no model downloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Mapping

from api_server.config import Endpoint

log = logging.getLogger("jobhive.demo")

# endpoint name -> the `jobhive-worker` arguments that serve it in the demo
DEMO_WORKERS: Mapping[str, tuple[str, ...]] = {
    "echo": ("noop", "--max-batch", "8"),
    "sd3": ("sd3", "--tiny", "--device", "cpu", "--max-batch", "4"),
    "llama4_chat": ("llama4", "--tiny", "--device", "cpu", "--max-batch", "8"),
}


@contextlib.asynccontextmanager
async def demo_workers(url: str, endpoints: Mapping[str, Endpoint]) -> AsyncIterator[list[str]]:
    """Starts the demo workers against the server at `url`; stops them (SIGTERM) on exit.

    Yields:
        list[str]: the names of the endpoints that got a worker.
    """
    processes: list[asyncio.subprocess.Process] = []
    served = []
    try:
        for name, args in DEMO_WORKERS.items():
            endpoint = endpoints.get(name)
            if endpoint is None:
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
