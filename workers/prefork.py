"""`python -m workers.prefork --events-fd FD`: starts `jobhive-worker` command lines as forks of
one process that has imported their libraries once (the demo's workers: api_server/demo.py).

Each worker is still a process of its own, running `jobhive-worker ARGV` (workers/cli.py) with
its own signals, logs and exit status; only the imports are shared. torch, transformers and
sentence-transformers take seconds of CPU to import: the five model workers of the demo,
importing them each, took 39 to 48 s of CPU to start; forked from a process that imported them,
most are ready a fraction of a second after the fork (sd3 imports diffusers itself), and all of
them took 11 to 14 s of CPU.

    stdin (JSON lines)       {"name": NAME, "argv": [TYPE, ...]}: start a worker: the
                             libraries of TYPE (PRELOAD) are imported here first, then it forks
    --events-fd (JSON lines) {"event": "started", "name", "pid"}, {"event": "exited", "name",
                             "pid", "status"} (status as subprocess gives it: -N for signal N)
    SIGTERM, SIGINT          passed on to every worker; it exits once they all have
    end of stdin             the same (the server that started it is gone, or done)

The workers get /dev/null as stdin and this process's stdout and stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import selectors
import signal
import sys
import traceback
import warnings
from collections.abc import Mapping, Sequence

from workers.cli import main as worker_main
from workers.runtime.quiet import drop_unactionable_warnings

# What is imported before a worker of a type (workers/cli.py WORKER_TYPES) is forked: its module
# and the libraries it shares with the other types. diffusers, which only sd3 uses, is left to
# the sd3 worker itself: it imports it on another core while this process goes on to the next.
PRELOAD: Mapping[str, tuple[str, ...]] = {
    "noop": ("workers.noop",),
    "sd3": ("workers.sd3.worker", "transformers.modeling_utils"),
    "llama4": ("workers.llama4.worker", "transformers.modeling_utils",
               "transformers.models.auto.tokenization_auto",
               "transformers.models.llama4.modeling_llama4"),
    "rag": ("workers.rag.worker", "workers.rag.index", "transformers.models.clip.modeling_clip",
            "sentence_transformers", "faiss"),
    "embed": ("workers.rag.embeddings", "transformers.models.clip.modeling_clip",
              "sentence_transformers"),
}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def say(message: str) -> None:
    print(f"jobhive-prefork: {message}", file=sys.stderr, flush=True)


class Host:
    """Forks the workers asked for on stdin and reports their starts and exits on `events`.

    Args:
        events (int): the file descriptor the events are written to.
    """

    def __init__(self, events: int) -> None:
        self.events = events
        self.children: dict[int, str] = {}  # pid -> name
        self.stop_signal: int | None = None  # set by SIGTERM/SIGINT or the end of stdin
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._selector = selectors.DefaultSelector()

    def run(self) -> int:
        """Serves until stopped and every worker has exited; returns the exit status (0)."""
        os.set_blocking(self._wakeup_w, False)
        signal.set_wakeup_fd(self._wakeup_w)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, lambda *_: None)  # noted through the wakeup fd
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)
        self._selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
        pending = b""
        while self.stop_signal is None or self.children:
            for key, _ in self._selector.select():
                if key.fd == self._wakeup_r:
                    self._on_signals(os.read(self._wakeup_r, 512))
                    continue
                chunk = os.read(key.fd, 65536)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip() and self.stop_signal is None:
                        self._start(line)
                if not chunk:  # end of stdin: no more workers, and stop those running
                    self._selector.unregister(key.fd)
                    if self.stop_signal is None:  # (once: a second SIGTERM hands jobs back)
                        self._stop(signal.SIGTERM)
        return 0

    def _on_signals(self, signums: bytes) -> None:
        self._reap()
        for signum in signums:
            if signum in STOP_SIGNALS:
                self._stop(signum)

    def _stop(self, signum: int) -> None:
        """Passes `signum` on to every worker (the first stop, and any signal after it)."""
        self.stop_signal = signum
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        while self.children:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            name = self.children.pop(pid, None)
            if name is not None:
                code = os.waitstatus_to_exitcode(wait_status)
                self._emit({"event": "exited", "name": name, "pid": pid, "status": code})

    def _emit(self, event: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # the reader is gone: the workers still get stopped
            os.write(self.events, json.dumps(event).encode() + b"\n")

    def _start(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            name, argv = str(request["name"]), [str(a) for a in request["argv"]]
        except (ValueError, KeyError, TypeError) as e:
            say(f"not a worker to start, ignored ({e}): {line[:200]!r}")
            return
        for module in PRELOAD.get(argv[0] if argv else "", ()):
            try:
                importlib.import_module(module)
            except Exception as e:  # the worker fails on it too, and says so in its own words
                say(f"could not import {module} before forking {name}: {e}")
        with warnings.catch_warnings():
            # Python 3.12 warns of fork() in a process with threads: the threads here are the
            # thread pools of OpenBLAS (numpy, scipy), which re-create them in a forked child.
            warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            self._become_worker(argv)
        self.children[pid] = name
        self._emit({"event": "started", "name": name, "pid": pid})

    def _become_worker(self, argv: list[str]) -> None:
        """In the forked child: this process's signals and files undone, then `jobhive-worker
        ARGV`; never returns."""
        status: int = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for signum in (signal.SIGTERM, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            self._selector.close()
            for fd in (self._wakeup_r, self._wakeup_w, self.events):
                os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            worker_main(argv)
            status = 0
        except SystemExit as e:  # as the interpreter turns it into an exit status
            if e.code is None or isinstance(e.code, int):
                status = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except KeyboardInterrupt:
            status = 128 + signal.SIGINT
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.prefork",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--events-fd", type=int, required=True,
                        help="where the started and exited events are written")
    args = parser.parse_args(argv)
    drop_unactionable_warnings()  # (before the workers' libraries are imported, here)
    raise SystemExit(Host(args.events_fd).run())


if __name__ == "__main__":
    main()
