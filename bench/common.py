"""What the benchmarks share: starting and stopping the project's processes, and percentiles.

Each script puts the repository first on sys.path, not bench/ (whose queue.py would shadow the
standard library's queue), and imports this module as `bench.common`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start(args: list[str]) -> subprocess.Popen[str]:
    """Starts `python ARGS` in the repository, its output (stdout and stderr) piped."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_line(process: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    """Reads the process's output until a line matches; then keeps draining it in a thread (a
    full pipe would stall the process)."""
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(pattern, line):
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return match
    raise RuntimeError(f"process exited before printing {pattern!r}")


def start_server(store: Path, log_level: str = "WARNING") -> tuple[subprocess.Popen[str], str]:
    """A `jobhive-server` on a free loopback port with the repository's endpoints and a fresh
    SQLite store at `store`; returns it and its URL."""
    server = start(["-m", "api_server.cli", "-p", "0", "--store", f"sqlite:{store}",
                    "--log-level", log_level])
    return server, wait_for_line(server, r"listening on (http://\S+)").group(1)


def stop(*processes: subprocess.Popen[str]) -> None:
    """SIGTERM to each, then waits for them (SIGKILL after 30 s)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def percentile(values: list[float], q: float) -> float:
    """The value below which a fraction q of `values` lies (nearest rank; q=0.5 for p50)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
