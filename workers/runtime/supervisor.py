"""One command per host: `jobhive-worker TYPE --gpus all` (or `--gpus 0,2`, or `--processes N`)
runs one worker process, a child, per GPU (or N of them) and keeps them running.

The supervisor, the parent, loads no model and talks to no server: jobhive-worker has checked
the command line and built what the children share (a --tiny model, passed on as --model)
before it starts them. Each child is `python -m workers.cli TYPE <the same options>
--worker-id ID-LABEL` (LABEL gpu0, gpu2... or p0, p1...), with its own CUDA_VISIBLE_DEVICES
for a GPU, in a process group of its own: a Ctrl-C in the terminal reaches a child once,
through the supervisor, not twice (a second signal would hand its running jobs back).

    a child exits 0             it is done (burst mode's queue empty, a clean stop): it stays
                                stopped; the supervisor exits once every child has
    a child exits 2             the server refused it (key, job type): a configuration error,
                                so every child is stopped and the supervisor exits 2
    any other exit, a signal    restarted after 1 s, doubling up to 60 s (1 s again once the
                                child had run 60 s): a crash, an out-of-memory kill, a stall
    SIGINT/SIGTERM              passed on to every child, the second one too; the supervisor
                                exits 0 once they have all stopped cleanly

It prints one line on stderr per child start and exit, like jobhive-worker's own messages:
`jobhive-worker: started sd3 child gpu0 (pid 123, worker id box-gpu0, CUDA_VISIBLE_DEVICES=0)`,
`jobhive-worker: child gpu0 (pid 123) exited with status 3; restarting in 1.0 s`; with
`--log-format json`, as JSON lines of logger `jobhive.supervisor` (the children log JSON too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobhive.logs import json_line

# jobhive-worker's exit statuses besides 0 (stopped cleanly) and 1 (a crash): 2, the server
# refused the worker (wrong key, unknown job type; also argparse's status for a wrong command
# line), so a restart will not help; 3, the model stalled (no sign of life for --stall-s): a
# fresh process is the cure.
EXIT_REFUSED = 2
EXIT_STALLED = 3
RESTART_FIRST_S = 1.0  # the wait before a failed child's first restart
RESTART_MAX_S = 60.0  # the longest wait between restarts
HEALTHY_AFTER_S = 60.0  # a child that ran this long before failing restarts after 1 s again
PROC_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the NVIDIA driver drives


def say(message: str, log_format: str = "text", level: str = "INFO") -> None:
    """One line of the supervisor's on stderr, as text or (log_format json) a JSON line."""
    line = (json_line(level, "jobhive.supervisor", message) if log_format == "json"
            else f"jobhive-worker: {message}")
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Child:
    """One worker process the supervisor keeps running.

    Args:
        label (str): gpu0, gpu2... or p0, p1...: the end of its worker id, its name in the
            supervisor's lines.
        worker_id (str): its --worker-id.
        env (dict[str, str]): set over the supervisor's environment (CUDA_VISIBLE_DEVICES).
    """

    label: str
    worker_id: str
    env: dict[str, str] = field(default_factory=dict)


def find_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs `--gpus all` means, as CUDA_VISIBLE_DEVICES entries, found without torch: those
    of $CUDA_VISIBLE_DEVICES where it is set (a scheduler's share of the host), else the indices
    `nvidia-smi -L` lists, else one per folder of /proc/driver/nvidia/gpus.

    Raises:
        ValueError: none found; the message says where it looked.
    """
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
        if not gpus:
            raise ValueError("--gpus all: CUDA_VISIBLE_DEVICES is set but empty: no GPU is visible")
        return gpus
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        try:
            count = len(list(PROC_GPUS.iterdir()))
        except OSError:
            count = 0
        if count:
            return [str(i) for i in range(count)]
        raise ValueError(f"--gpus all: no NVIDIA GPU found (nvidia-smi -L: {e}; no {PROC_GPUS}); "
                         "give --gpus 0,1 or --processes N") from None
    gpus = re.findall(r"^GPU (\d+):", listed, re.MULTILINE)
    if not gpus:
        raise ValueError("--gpus all: no NVIDIA GPU found (nvidia-smi -L lists none); "
                         "give --gpus 0,1 or --processes N")
    return gpus


def plan_children(
    gpus: str | None, processes: int | None, worker_id: str, device: str | None = None
) -> list[Child]:
    """The children `--gpus` or `--processes` (one of them given) ask for.

    Args:
        gpus (str | None): `all`, or CUDA_VISIBLE_DEVICES entries separated by commas (0,2).
        processes (int | None): how many processes, without GPUs of their own.
        worker_id (str): the --worker-id each child's id starts with.
        device (str | None): the worker's --device, if it has one.

    Returns:
        list[Child]: one per GPU (labels gpu0, gpu2...) or process (p0, p1...).

    Raises:
        ValueError: a bad --gpus or --processes value, or no GPU found.
    """
    if processes is not None:
        if processes < 1:
            raise ValueError(f"--processes must be at least 1 (got {processes})")
        return [Child(f"p{i}", f"{worker_id}-p{i}") for i in range(processes)]
    assert gpus is not None
    listed = find_gpus() if gpus.strip() == "all" else [gpu.strip() for gpu in gpus.split(",")]
    if "" in listed or len(set(listed)) < len(listed):
        raise ValueError(f"--gpus: {gpus!r} is neither `all` nor a list of distinct GPUs (0,2)")
    if device and re.fullmatch(r"cuda:[1-9]\d*", device):
        raise ValueError(f"--device {device} with --gpus: each child sees only its own GPU, as "
                         "cuda:0; give --device cuda")
    numbered = all(gpu.isdigit() for gpu in listed)  # else UUIDs: named by their place
    env = {"CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")}  # nvidia-smi's
    children = []
    for place, gpu in enumerate(listed):
        label = f"gpu{gpu if numbered else place}"
        children.append(Child(label, f"{worker_id}-{label}", {**env, "CUDA_VISIBLE_DEVICES": gpu}))
    return children


def child_command(argv: Sequence[str], tiny_model: str | None = None) -> list[str]:
    """`python -m workers.cli` with `argv` less the options the supervisor answers itself:
    --gpus, --processes and --worker-id (each child gets its own, put last), and with
    `tiny_model` (the tiny model jobhive-worker has built) --tiny and --tiny-dir, replaced by
    `--model tiny_model` so that no child builds it again.
    """
    takes_value = {"--gpus": True, "--processes": True, "--worker-id": True}
    if tiny_model is not None:
        takes_value |= {"--tiny": False, "--tiny-dir": True}
    kept: list[str] = []
    skip_value = False
    for token in argv:
        if skip_value:
            skip_value = False
            continue
        name, equals, _ = token.partition("=")
        # argparse takes an unambiguous prefix of a long option for the option (--proc 2).
        # parse_args accepted argv, so a prefix of exactly one of these options meant it.
        matches = [o for o in takes_value if o == name] or [
            o for o in takes_value if len(name) > 2 and name.startswith("--") and o.startswith(name)
        ]
        if len(matches) == 1:
            skip_value = takes_value[matches[0]] and not equals
        else:
            kept.append(token)
    if tiny_model is not None:
        kept += ["--model", tiny_model]
    return [sys.executable, "-m", "workers.cli", *kept]


def _exit_text(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}" + (" (its model stalled)" if status == EXIT_STALLED
                                              else "")


class Supervisor:
    """Runs the children of one `jobhive-worker --gpus/--processes` command.

    Args:
        kind (str): the worker type (sd3, noop...), for the supervisor's lines.
        command (list[str]): a child's command line, less its --worker-id (child_command).
        children (list[Child]): the children to run (plan_children).
        log_format (str): text or json, the format of its lines (say).
    """

    def __init__(self, kind: str, command: list[str], children: list[Child],
                 log_format: str = "text") -> None:
        self.kind = kind
        self.command = command
        self.children = children
        self.log_format = log_format
        self._running: dict[str, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()  # a signal came, or a child was refused
        self._signals_sent: set[int] = set()  # a child they killed (still loading) stopped fine
        self._refused = False

    async def run(self) -> int:
        """Starts the children and keeps them running until all have stopped.

        Returns:
            int: the exit status: 0 when every child stopped cleanly (status 0, or stopped by
            the signal passed on), 2 when the server refused a child, else 1.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._pass_on, signum)
        self._say(f"supervising {len(self.children)} {self.kind} children "
            f"({', '.join(c.label for c in self.children)}); SIGINT/SIGTERM stops them")
        clean = await asyncio.gather(*(self._keep(child) for child in self.children))
        status = EXIT_REFUSED if self._refused else 0 if all(clean) else 1
        self._say(f"all children have exited; exiting with status {status}")
        return status

    async def _keep(self, child: Child) -> bool:
        """Runs one child until it is done or stopped, restarting it whenever it fails;
        whether it ended cleanly."""
        wait_s = RESTART_FIRST_S
        while True:
            started = time.monotonic()
            process = await self._start(child)
            status = await process.wait()
            del self._running[child.label]
            ended = f"child {child.label} (pid {process.pid}) {_exit_text(status)}"
            if status == EXIT_REFUSED:
                first, self._refused = not self._refused, True
                self._say(f"{ended}: a configuration error (the server refused its key or job "
                          "type, see above): not restarted"
                          + ("; stopping all children" if first else ""), "ERROR")
                if first:  # once: a second SIGTERM would make the others hand their jobs back
                    self._stop_all(signal.SIGTERM)
                return False
            if status == 0 or self._stopping.is_set():
                self._say(ended)
                return status == 0 or -status in self._signals_sent
            if time.monotonic() - started >= HEALTHY_AFTER_S:
                wait_s = RESTART_FIRST_S
            self._say(f"{ended}; restarting in {wait_s:.1f} s", "WARNING")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._stopping.wait()
            if self._stopping.is_set():
                self._say(f"child {child.label} not restarted: stopping")
                return True
            wait_s = min(RESTART_MAX_S, wait_s * 2)

    async def _start(self, child: Child) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *self.command, "--worker-id", child.worker_id,
            env={**os.environ, **child.env},
            process_group=0,  # the terminal's Ctrl-C reaches it only through _pass_on
        )
        self._running[child.label] = process
        if self._stopping.is_set():  # the stop came while it was being started
            process.send_signal(signal.SIGTERM)
        gpu = child.env.get("CUDA_VISIBLE_DEVICES")
        self._say(f"started {self.kind} child {child.label} (pid {process.pid}, worker id "
            f"{child.worker_id}{f', CUDA_VISIBLE_DEVICES={gpu}' if gpu is not None else ''})")
        return process

    def _say(self, message: str, level: str = "INFO") -> None:
        say(message, self.log_format, level)

    def _pass_on(self, signum: int) -> None:
        """SIGINT/SIGTERM: the first asks each child to finish its batch, the second to hand
        its running jobs back (the runner's shut-down)."""
        name = signal.Signals(signum).name
        if self._stopping.is_set():
            self._say(f"{name}: passed on to the children (they hand their running jobs back)")
        else:
            self._say(f"{name}: stopping the children (they finish their running batch; "
                "signal again to hand it back)")
        self._stop_all(signum)

    def _stop_all(self, signum: int) -> None:
        self._stopping.set()
        self._signals_sent.add(signum)
        for process in self._running.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)


def supervise(
    kind: str, command: list[str], children: list[Child], log_format: str = "text"
) -> int:
    """Runs the children until all have stopped (see Supervisor); returns the exit status."""
    return asyncio.run(Supervisor(kind, command, children, log_format).run())
