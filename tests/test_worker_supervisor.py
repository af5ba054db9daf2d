"""`jobhive-worker TYPE --processes N` and `--gpus all|LIST`: one supervisor process that runs
and restarts one worker process per GPU or N of them (workers/runtime/supervisor.py).

Real processes throughout: the real server, a real supervisor, its real children. The children
are found by the supervisor's start lines (`started noop child p0 (pid 123, worker id sup-p0)`);
which child holds a job, by the server's status route. No test here waits on a clock: every
wait is a poll for a line, a status or an exit, with a generous limit for a loaded host.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ECHO_WORKER_KEY, REPO, Process, spawn_worker, wait_until
from e2e_http import echo_variant, get_job

from workers.runtime.supervisor import child_command

_STARTED = re.compile(r"started \S+ child (\S+) \(pid (\d+), worker id (\S+?)[,)]")
BOTH = {"sup-p0", "sup-p1"}


# ----- helpers


def started(supervisor: Process) -> list[tuple[str, int, str]]:
    """(label, pid, worker id) of each child start the supervisor printed, in order."""
    return [(m[1], int(m[2]), m[3]) for m in _STARTED.finditer(supervisor.text)]


def pids_of(supervisor: Process, label: str) -> list[int]:
    return [pid for child, pid, _ in started(supervisor) if child == label]


def loads(supervisor: Process, worker_id: str) -> int:
    """How many times a child with this worker id has loaded its model and begun serving."""
    return len(re.findall(rf"loaded in .* as {worker_id} ", supervisor.text))


def is_worker_process(pid: int) -> bool:
    """Whether `pid` is (still) a jobhive-worker process."""
    try:
        return b"workers.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def status(http: httpx.Client, url: str) -> dict[str, dict[str, Any]]:
    """The workers the status route lists, by worker id."""
    reply = http.get(f"{url}/api/v1/status")
    assert reply.status_code == 200, reply.text
    return {w["worker_id"]: w for w in reply.json()["workers"]}


def online(http: httpx.Client, url: str, worker_ids: set[str], timeout_s: float = 60) -> None:
    wait_until(lambda: worker_ids <= status(http, url).keys(), timeout_s=timeout_s)


def holder(http: httpx.Client, url: str) -> str:
    """The id of the worker that runs a job, once one does."""
    return wait_until(
        lambda: next((w for w, seen in status(http, url).items() if seen["running"]), None),
        timeout_s=30,
    )


def submit(http: httpx.Client, url: str, endpoint: str = "echo", **inputs: Any) -> str:
    reply = http.post(f"{url}/api/v1/endpoints/{endpoint}/jobs", json={"inputs": inputs})
    assert reply.status_code == 202, reply.text
    return reply.json()["job_id"]


def finished(http: httpx.Client, url: str, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = get_job(http, url, job_id, wait_s=2)
        return job if job["status"] in ("done", "failed", "canceled") else None

    return wait_until(done, timeout_s=timeout_s)


def exit_status(supervisor: Process, timeout_s: float = 60) -> int:
    """Waits for the supervisor to exit (its output all read); its exit status."""
    return supervisor.exited(timeout_s)


def exit_status_after(supervisor: Process, signum: int) -> int:
    supervisor.proc.send_signal(signum)
    return exit_status(supervisor)


@pytest.fixture
def start_supervisor() -> Iterator[Callable[..., Process]]:
    """Starts `jobhive-worker KIND --server URL --key KEY --worker-id sup ...` (with --processes
    or --gpus among the options) without waiting; at the end stops it and makes sure that no
    child it started outlives the test."""
    supervisors: list[Process] = []

    def start(url: str, *options: str, kind: str = "noop", key: str = ECHO_WORKER_KEY,
              env: dict[str, str] | None = None) -> Process:
        supervisor = spawn_worker(url, "--worker-id", "sup", *options, kind=kind, key=key,
                                  env=env, ready_timeout_s=None)
        supervisors.append(supervisor)
        return supervisor

    yield start
    for supervisor in supervisors:
        supervisor.stop(timeout_s=30)
        for _, pid, _ in started(supervisor):
            if is_worker_process(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Puts an `nvidia-smi` first on PATH that prints the given `-L` listing (and unsets
    CUDA_VISIBLE_DEVICES, which `--gpus all` would take instead)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def listing(text: str) -> None:
        script = bin_dir / "nvidia-smi"
        script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}EOF\n")
        script.chmod(0o755)

    return listing


# ----- the children's command line


@pytest.mark.parametrize(
    ("argv", "tiny_model", "expected"),
    [
        (["noop", "--server", "U", "--processes", "2", "--max-batch", "4"], None,
         ["noop", "--server", "U", "--max-batch", "4"]),
        (["noop", "--gpus=0,2", "--worker-id", "box", "--burst"], None, ["noop", "--burst"]),
        (["noop", "--proc", "2", "--worker=box"], None, ["noop"]),  # argparse's abbreviations
        (["sd3", "--tiny", "--tiny-dir", "/t", "--device", "cpu", "--gpus", "all"], "/t",
         ["sd3", "--device", "cpu", "--model", "/t"]),
        (["sd3", "--tiny", "--tiny-dir=/t"], "/t", ["sd3", "--model", "/t"]),
    ],
)
def test_children_get_the_command_line_less_the_supervisor_options(argv, tiny_model, expected):
    assert child_command(argv, tiny_model) == [sys.executable, "-m", "workers.cli", *expected]


@pytest.mark.parametrize(
    ("options", "listing", "message"),
    [
        (["--gpus", "0", "--processes", "2"], None, "not allowed with argument"),
        (["--processes", "0"], None, "--processes must be at least 1 (got 0)"),
        (["--gpus", "0,,1"], None, "is neither `all` nor a list of distinct GPUs"),
        (["--gpus", "all"], "", "--gpus all: no NVIDIA GPU found (nvidia-smi -L lists none)"),
    ],
)
def test_bad_supervisor_options_are_usage_errors(fake_nvidia_smi, options, listing, message):
    if listing is not None:
        fake_nvidia_smi(listing)
    run = subprocess.run(
        [sys.executable, "-m", "workers.cli", "noop", "--key", "k", *options],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert run.returncode == 2, run
    assert message in run.stderr, run.stderr
    assert "started" not in run.stderr


# ----- supervising noop children


def test_two_processes_serve_jobs_as_two_workers(start_server, start_supervisor, http):
    server = start_server()
    supervisor = start_supervisor(server.url, "--processes", "2")
    online(http, server.url, BOTH)  # the status route lists both
    assert sorted((label, wid) for label, _, wid in started(supervisor)) == [
        ("p0", "sup-p0"), ("p1", "sup-p1")]
    # While one child runs the long job (and so does not poll), the short one goes to the other.
    long_job = submit(http, server.url, text="long", delay_s=4)
    busy = holder(http, server.url)
    short = finished(http, server.url, submit(http, server.url, text="short"))
    assert short["status"] == "done", short
    assert short["outputs"]["worker_id"] == (BOTH - {busy}).pop()
    long = finished(http, server.url, long_job)
    assert (long["status"], long["outputs"]["worker_id"]) == ("done", busy)
    assert exit_status_after(supervisor, signal.SIGTERM) == 0


def test_a_child_killed_mid_job_is_restarted_and_the_job_still_finishes(
    endpoints_dir, start_server, start_supervisor, http
):
    # A short lease, so the killed child's job is soon requeued (slack for a loaded host).
    echo_variant(endpoints_dir, "echo", ENDPOINT={"lease_s": 2.0, "max_attempts": 5})
    server = start_server()
    supervisor = start_supervisor(server.url, "--processes", "2")
    online(http, server.url, BOTH)
    job_id = submit(http, server.url, text="survives", delay_s=3)
    label = holder(http, server.url).removeprefix("sup-")
    (pid,) = pids_of(supervisor, label)
    os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    supervisor.wait_for_output(
        rf"child {label} \(pid {pid}\) was killed by SIGKILL; restarting in 1\.0 s")
    wait_until(lambda: len(pids_of(supervisor, label)) == 2, timeout_s=30)
    job = finished(http, server.url, job_id)
    assert (job["status"], job["outputs"]["text"]) == ("done", "survives"), job
    assert job["attempts"] >= 2, job  # the first lease ran out with the killed child
    wait_until(lambda: loads(supervisor, f"sup-{label}") == 2, timeout_s=30)  # the new one
    assert supervisor.proc.poll() is None  # the supervisor stays up
    assert exit_status_after(supervisor, signal.SIGTERM) == 0


def test_sigterm_stops_every_child_after_its_batch(start_server, start_supervisor, http):
    server = start_server()
    supervisor = start_supervisor(server.url, "--processes", "2")
    online(http, server.url, BOTH)
    job_id = submit(http, server.url, text="finished first", delay_s=2)
    holder(http, server.url)
    assert exit_status_after(supervisor, signal.SIGTERM) == 0
    for label, pid, _ in started(supervisor):  # each stopped on its own: it got the signal
        assert f"child {label} (pid {pid}) exited with status 0" in supervisor.text
        assert not is_worker_process(pid)
    assert len(started(supervisor)) == 2
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["outputs"]["text"]) == ("done", "finished first"), job


def test_a_second_sigint_hands_the_running_job_back(start_server, start_supervisor, http):
    server = start_server()
    supervisor = start_supervisor(server.url, "--processes", "2")
    online(http, server.url, BOTH)
    job_id = submit(http, server.url, text="handed back", delay_s=60)
    holder(http, server.url)
    supervisor.proc.send_signal(signal.SIGINT)
    supervisor.wait_for_output(r"waiting up to \S+ s for 1 running job")  # the child got it
    assert exit_status_after(supervisor, signal.SIGINT) == 0
    assert get_job(http, server.url, job_id)["status"] == "queued"
    assert "restarting" not in supervisor.text


def test_a_refused_child_stops_the_supervisor_with_status_2(start_server, start_supervisor):
    server = start_server()
    supervisor = start_supervisor(server.url, "--processes", "2", key="not-a-worker-key")
    assert exit_status(supervisor) == 2
    assert "jobhive-worker: server refused the poll (401)" in supervisor.text
    assert "exited with status 2: a configuration error" in supervisor.text
    assert len(started(supervisor)) == 2  # no restart
    assert "restarting" not in supervisor.text
    assert not any(is_worker_process(pid) for _, pid, _ in started(supervisor))


def test_burst_children_exit_and_so_does_the_supervisor(start_server, start_supervisor, http):
    server = start_server()
    job_ids = [submit(http, server.url, text=str(i)) for i in range(4)]
    supervisor = start_supervisor(server.url, "--processes", "2", "--burst")
    assert exit_status(supervisor) == 0
    assert [get_job(http, server.url, j)["status"] for j in job_ids] == ["done"] * 4
    assert supervisor.text.count("exited with status 0") == 2
    assert len(started(supervisor)) == 2


# ----- --gpus


@pytest.mark.parametrize(
    ("gpus", "visible", "expected"),
    [
        ("all", None, {"gpu0": "0", "gpu1": "1"}),  # from nvidia-smi -L
        ("all", "2,3", {"gpu2": "2", "gpu3": "3"}),  # a scheduler's CUDA_VISIBLE_DEVICES
        ("1,3", None, {"gpu1": "1", "gpu3": "3"}),
    ],
)
def test_gpus_start_one_child_per_gpu(
    fake_nvidia_smi, start_server, start_supervisor, http, gpus, visible, expected
):
    fake_nvidia_smi("GPU 0: Fake GPU (UUID: GPU-0000)\nGPU 1: Fake GPU (UUID: GPU-1111)\n")
    server = start_server()
    env = {"CUDA_VISIBLE_DEVICES": visible} if visible is not None else None
    supervisor = start_supervisor(server.url, "--gpus", gpus, env=env)
    online(http, server.url, {f"sup-{label}" for label in expected})
    for label, gpu in expected.items():
        line = supervisor.wait_for_output(rf"started noop child {label} \(")
        assert f"CUDA_VISIBLE_DEVICES={gpu})" in line, line
        (pid,) = pids_of(supervisor, label)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"CUDA_VISIBLE_DEVICES={gpu}".encode() in environ
    assert exit_status_after(supervisor, signal.SIGTERM) == 0


# ----- a model worker: the tiny SD3, built once by the supervisor


@pytest.mark.timeout(300)
def test_tiny_model_children_share_one_build_and_each_serve(
    tiny_llama4_dir, start_server, start_supervisor, http
):
    # The tiny Llama 4 (the session's build; the supervisor builds it if no test did yet): a
    # model worker whose children load in seconds (the tiny SD3 takes three times as long).
    server = start_server()
    supervisor = start_supervisor(
        server.url, "--tiny", "--tiny-dir", str(tiny_llama4_dir), "--device", "cpu",
        "--dtype", "float32", "--processes", "2", kind="llama4", key="llama4-worker-key",
        env={"OMP_NUM_THREADS": "1"},
    )
    online(http, server.url, BOTH, timeout_s=240)
    for _, pid, _ in started(supervisor):  # the children load the build, never build it
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--tiny" not in argv, argv
        assert argv[argv.index(b"--model") + 1] == str(tiny_llama4_dir).encode(), argv
    inputs = {"chat_context": [{"role": "user", "content": "hi"}], "max_new_tokens": 4,
              "seed": 1}

    def both_served() -> bool:
        # Two jobs at once: while one child runs the first, the other takes the second.
        job_ids = [submit(http, server.url, "llama4_chat", **inputs) for _ in range(2)]
        assert [finished(http, server.url, j)["status"] for j in job_ids] == ["done"] * 2
        seen = status(http, server.url)
        return all(seen[w]["jobs_done"] >= 1 for w in BOTH)

    wait_until(both_served, timeout_s=120)
    assert exit_status_after(supervisor, signal.SIGTERM) == 0
    assert len(started(supervisor)) == 2


def test_a_stalled_child_is_restarted(start_server, start_supervisor, http):
    server = start_server()
    # The child's model hangs on its first batch; the runner's watchdog fails the job, exits 3.
    supervisor = start_supervisor(server.url, "--processes", "1", "--stall-s", "1",
                                  "--hang-after", "1")
    online(http, server.url, {"sup-p0"})
    job = finished(http, server.url, submit(http, server.url, text="hangs"))
    assert job["status"] == "failed" and "stalled" in job["error"], job
    pid = pids_of(supervisor, "p0")[0]
    supervisor.wait_for_output(
        rf"child p0 \(pid {pid}\) exited with status 3 \(its model stalled\); restarting in 1\.0 s")
    wait_until(lambda: loads(supervisor, "sup-p0") == 2, timeout_s=30)  # the new one serves
    assert exit_status_after(supervisor, signal.SIGTERM) == 0
