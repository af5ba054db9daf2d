"""What the benchmarks share: starting and stopping the project's processes, percentiles, and
the source tree of an earlier version to run side by side with this one.

Each script puts the repository first on sys.path, not bench/ (whose queue.py would shadow the
standard library's queue), and imports this module as `bench.common`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def source_tree(rev: str | None) -> Iterator[Path]:
    """The repository as it is (rev None), or as of git revision `rev`, unpacked in a temporary
    folder. Processes started in that folder import its own api_server and workers (the
    folder comes first on sys.path), with this venv's packages."""
    if rev is None:
        yield REPO
        return
    with tempfile.TemporaryDirectory(prefix="jobhive-rev-") as tmp:
        archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


def rss_kib(pid: int) -> int:
    """A process's resident memory now, in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def start(args: list[str], tree: Path = REPO) -> subprocess.Popen[str]:
    """Starts `python ARGS` in a source tree, its output (stdout and stderr) piped."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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


def start_server(
    store: Path | str,
    log_level: str = "WARNING",
    tree: Path = REPO,
    endpoints: Path | None = None,
    files_dir: Path | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """A `jobhive-server` of a source tree on a free loopback port with its endpoints (or
    those given) and a fresh SQLite store at `store` (a Path), or the store URL given (a
    str: redis://...), its output files in files_dir when given; returns it and its URL."""
    url = f"sqlite:{store}" if isinstance(store, Path) else store
    extra = []
    if files_dir is not None:
        config = files_dir.with_name(files_dir.name + ".toml")
        config.write_text(f'[SERVER]\nfiles_dir = "{files_dir}"\n')
        extra = ["--config", str(config)]
    server = start(["-m", "api_server.cli", "-p", "0", "--store", url, *extra,
                    "-c", str(endpoints or tree / "endpoints"), "--log-level", log_level], tree)
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
