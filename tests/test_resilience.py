"""Resilience with real processes: workers and servers killed, stopped and restarted mid-job.

Every test starts the real `jobhive-server` and real `jobhive-worker noop` processes on loopback
(tests/conftest.py) and asserts the promise of DESIGN.md: nothing is silently lost, a job is
finished once, a lease that runs out puts the job back in the queue, a restart keeps the queue.
Waits are long-polls or `wait_until`, never fixed sleeps, with generous limits for a loaded host.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from conftest import Process, wait_until
from e2e_http import FINISHED, echo_variant, get_job, wait_status

# ----- helpers


def submit(http: httpx.Client, url: str, **inputs: Any) -> str:
    reply = http.post(f"{url}/api/v1/endpoints/echo/jobs", json={"inputs": inputs})
    assert reply.status_code == 202, reply.text
    return reply.json()["job_id"]


def wait_running(
    http: httpx.Client, url: str, job_id: str, worker_id: str, attempt: int = 1
) -> dict[str, Any]:
    """Waits until the job runs (its `attempt`-th lease) on this worker and has reported
    progress, so the worker surely holds it and the claim is in the journal."""
    deadline = time.monotonic() + 30
    job = get_job(http, url, job_id)
    while not (job["status"] == "running" and job["progress"] > 0 and job["attempts"] == attempt):
        assert job["status"] not in FINISHED, job
        assert time.monotonic() < deadline, f"job {job_id} not running attempt {attempt}: {job}"
        job = get_job(http, url, job_id, wait_s=5)
    assert worker_of(http, url, worker_id)["running"] == 1
    return job


def worker_of(http: httpx.Client, url: str, worker_id: str) -> dict[str, Any]:
    workers = http.get(f"{url}/api/v1/status").json()["workers"]
    (worker,) = [w for w in workers if w["worker_id"] == worker_id]
    return worker


def queue_counts(status: dict[str, Any], endpoint: str) -> tuple[int, int]:
    """(queued, running) of an endpoint in a `/api/v1/status` reply."""
    counts = status["endpoints"][endpoint]
    return counts["queued"], counts["running"]


def exit_code(process: Process, timeout_s: float = 30) -> int:
    """Waits for a process to exit by itself (its output all read); returns its exit code."""
    return process.exited(timeout_s)


# ----- workers sharing a queue, dying, giving up


def test_two_workers_share_one_queue_each_job_done_once(start_server, start_worker, http):
    server = start_server()
    for name in ("w-a", "w-b"):
        start_worker(server.url, "--max-batch", "4", "--worker-id", name)
    job_ids = [submit(http, server.url, text=f"job {i}", delay_s=0.1) for i in range(40)]

    jobs = [wait_status(http, server.url, job_id, FINISHED) for job_id in job_ids]

    assert {job["status"] for job in jobs} == {"done"}
    assert [job["outputs"]["text"] for job in jobs] == [f"job {i}" for i in range(40)]
    assert {job["attempts"] for job in jobs} == {1}
    done_by = {w: [j for j in jobs if j["outputs"]["worker_id"] == w] for w in ("w-a", "w-b")}
    assert all(done_by.values()), "both workers should have done some jobs"
    status = http.get(f"{server.url}/api/v1/status").json()
    done = {w["worker_id"]: w["jobs_done"] for w in status["workers"]}
    assert done == {w: len(js) for w, js in done_by.items()}
    assert sum(done.values()) == 40
    assert queue_counts(status, "echo") == (0, 0)
    assert not re.search(r"job \S+ requeued", server.text)


def test_killed_worker_job_is_finished_by_another_after_lease(
    start_server, start_worker, endpoints_dir, http
):
    echo_variant(endpoints_dir, "echo", ENDPOINT={"lease_s": 2})
    server = start_server()
    doomed = start_worker(server.url, "--worker-id", "doomed")
    job_id = submit(http, server.url, text="survivor", delay_s=3, steps=6)
    wait_running(http, server.url, job_id, "doomed")

    doomed.kill()
    start_worker(server.url, "--worker-id", "rescuer")

    job = wait_status(http, server.url, job_id, FINISHED)
    assert job["status"] == "done", job
    assert job["outputs"]["text"] == "survivor"
    assert job["outputs"]["worker_id"] == "rescuer"
    assert job["attempts"] == 2
    server.wait_for_output(rf"job {job_id} requeued .*lease expired: worker doomed")


def test_job_fails_after_max_attempts_when_every_worker_dies(
    start_server, start_worker, endpoints_dir, http
):
    echo_variant(endpoints_dir, "echo", ENDPOINT={"lease_s": 2, "max_attempts": 2})
    server = start_server()
    job_id = submit(http, server.url, text="cursed", delay_s=30, steps=30)

    for attempt in (1, 2):
        worker = start_worker(server.url, "--worker-id", f"victim-{attempt}")
        wait_running(http, server.url, job_id, f"victim-{attempt}", attempt)
        worker.kill()

    job = wait_status(http, server.url, job_id, FINISHED)
    assert job["status"] == "failed", job
    assert job["outputs"] is None
    # The error says why: whose lease ran out, and that max_attempts is reached.
    assert re.search(r"victim-2 .*lease expired.*max_attempts = 2", job["error"]), job
    assert job["attempts"] == 2
    assert queue_counts(http.get(f"{server.url}/api/v1/status").json(), "echo") == (0, 0)


# ----- the server dying and coming back


@pytest.mark.parametrize("how", ["kill", "term"])
def test_server_restart_keeps_queued_running_and_finished_jobs(
    start_server, start_worker, endpoints_dir, tmp_path, http, how, held_port
):
    echo_variant(endpoints_dir, "echo", ENDPOINT={"lease_s": 2})
    # The port stays held (bound, not listening) across the restart: nobody else can take it.
    port, store = held_port, tmp_path / "restart.sqlite3"
    server = start_server(port=port, store=store)
    first = start_worker(server.url, "--worker-id", "first")
    finished_id = submit(http, server.url, text="finished")
    assert wait_status(http, server.url, finished_id, FINISHED)["status"] == "done"
    running_id = submit(http, server.url, text="running", delay_s=3, steps=6)
    wait_running(http, server.url, running_id, "first")
    queued_ids = [submit(http, server.url, text=f"queued {i}") for i in range(3)]

    first.kill()  # the worker's host is lost too: only the server can bring the job back
    if how == "kill":
        server.kill()
    else:
        assert server.stop() == 0
        assert "shutting down" in server.text
    server = start_server(port=port, store=store)

    assert get_job(http, server.url, finished_id)["outputs"]["text"] == "finished"
    # The running job waits one lease for its worker (which may be alive and report back)...
    assert get_job(http, server.url, running_id)["status"] == "running"
    for position, job_id in enumerate(queued_ids):
        job = get_job(http, server.url, job_id)
        assert (job["status"], job["queue_position"]) == ("queued", position)
    # ... then, its worker being gone, it goes back to the front of the queue.
    running = wait_until(lambda: (j := get_job(http, server.url, running_id))["status"]
                         == "queued" and j, timeout_s=15)
    assert running["queue_position"] == 0
    server.wait_for_output(r"lease expired")  # (the log line may come just after the requeue)

    start_worker(server.url, "--worker-id", "second", "--max-batch", "4")
    for job_id in [running_id, *queued_ids]:
        job = wait_status(http, server.url, job_id, FINISHED)
        assert job["status"] == "done", job
        assert job["outputs"]["worker_id"] == "second"
        assert job["attempts"] == (2 if job_id == running_id else 1)
    assert get_job(http, server.url, running_id)["outputs"]["text"] == "running"
    assert get_job(http, server.url, finished_id)["outputs"]["worker_id"] == "first"


def test_results_expire_after_their_ttl_also_across_a_restart(
    start_server, start_worker, endpoints_dir, tmp_path, http, held_port
):
    echo_variant(endpoints_dir, "echo", ENDPOINT={"result_ttl_s": 1})
    port, store = held_port, tmp_path / "ttl.sqlite3"  # held across the restart
    server = start_server(port=port, store=store)
    start_worker(server.url)
    live_id = submit(http, server.url, text="live")
    restarted_id = submit(http, server.url, text="restarted")
    jobs = [wait_status(http, server.url, j, FINISHED) for j in (live_id, restarted_id)]
    assert [job["status"] for job in jobs] == ["done", "done"]

    # Expiry while the server runs: the sweeper forgets the result.
    wait_until(
        lambda: http.get(f"{server.url}/api/v1/jobs/{live_id}").status_code == 404, timeout_s=15
    )

    # Expiry while the server is down: the result is not brought back by the restart.
    server.kill()
    expires_at_s = jobs[1]["finished_at_ms"] / 1000 + 1
    wait_until(lambda: time.time() > expires_at_s, timeout_s=5)
    server = start_server(port=port, store=store)
    for job_id in (live_id, restarted_id):
        reply = http.get(f"{server.url}/api/v1/jobs/{job_id}")
        assert reply.status_code == 404, reply.text
        assert "expired" in reply.json()["error"]


def test_server_sigterm_answers_long_polls_and_exits_promptly(
    start_server, start_worker, endpoints_dir, http
):
    echo_variant(endpoints_dir, "parked", WORKER={"job_type": "parked"})  # no worker serves it
    server = start_server()
    worker = start_worker(server.url, "--worker-id", "idle", "--poll-wait-s", "30")
    wait_until(lambda: http.get(f"{server.url}/api/v1/status").json()["workers"])
    parked_id = http.post(f"{server.url}/api/v1/endpoints/parked/jobs", json={"inputs": {}})
    sse_url = f"{server.url}/api/v1/jobs/{parked_id.json()['job_id']}/events"

    def submit_and_wait() -> httpx.Response:
        with httpx.Client(timeout=90) as client:
            return client.post(f"{server.url}/api/v1/endpoints/parked/jobs?wait=60", json={})

    streaming = threading.Event()

    def read_events() -> str:
        with httpx.Client(timeout=90) as client, client.stream("GET", sse_url) as reply:
            streaming.set()  # the stream is open: the shut-down must answer it
            return "".join(reply.iter_text())

    with ThreadPoolExecutor(2) as pool:
        waiting, events = pool.submit(submit_and_wait), pool.submit(read_events)
        wait_until(
            lambda: (
                http.get(f"{server.url}/api/v1/status").json()["endpoints"]["parked"]["queued"] == 2
            )
        )
        assert streaming.wait(10), "the event stream never opened"
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # The worker's 30 s poll, the client's 60 s wait and the open event stream are answered
        # at once instead of holding the shut-down for their whole wait.
        assert server.proc.wait(20) == 0, server.text
        assert time.monotonic() - started < 8, server.text
        reply = waiting.result(10)
        assert (reply.status_code, reply.json()["status"]) == (202, "queued")
        assert events.result(10).startswith("event: queued\n")
    worker.wait_for_output(r"server \S+ unavailable .*; retrying in", timeout_s=30)


def test_worker_rides_out_a_server_restart_and_delivers_its_result(
    start_server, start_worker, tmp_path, http, held_port
):
    port, store = held_port, tmp_path / "away.sqlite3"  # held across the restart
    server = start_server(port=port, store=store)
    worker = start_worker(server.url, "--worker-id", "steady")
    job_id = submit(http, server.url, text="computed while away", delay_s=3, steps=6)
    wait_running(http, server.url, job_id, "steady")

    server.kill()
    # The job finishes while the server is gone; the worker holds its result and backs off.
    worker.wait_for_output(r"server \S+ unavailable .*; retrying in", timeout_s=30)
    server = start_server(port=port, store=store)
    idle = start_worker(server.url, "--worker-id", "idle")  # would run it again if requeued

    job = wait_status(http, server.url, job_id, FINISHED)
    assert job["status"] == "done", job
    assert job["outputs"] == {
        "text": "computed while away",
        "delay_s": 3.0,
        "steps": 6,
        "image": None,
        "worker_id": "steady",
    }
    # Its lease was still valid: the result was taken, the job was not run a second time.
    assert job["attempts"] == 1
    assert not re.search(rf"job {job_id} running", server.text)
    assert "not taken" not in worker.text

    # And it goes on serving the restarted server.
    assert idle.stop() == 0
    next_id = submit(http, server.url, text="after")
    job = wait_status(http, server.url, next_id, FINISHED)
    assert (job["status"], job["outputs"]["worker_id"]) == ("done", "steady")
    worker.wait_for_output(r"server \S+ reachable again")
    backoffs = [float(s) for s in re.findall(r"retrying in ([\d.]+) s", worker.text)]
    assert backoffs == sorted(backoffs) and backoffs[0] <= 0.5, backoffs


# ----- workers stopping


def test_sigterm_lets_the_running_job_finish_then_exits_0(start_server, start_worker, http):
    server = start_server()
    worker = start_worker(server.url, "--worker-id", "leaving")
    job_id = submit(http, server.url, text="finish me", delay_s=2, steps=4)
    wait_running(http, server.url, job_id, "leaving")

    worker.proc.send_signal(signal.SIGTERM)

    assert exit_code(worker) == 0, worker.text
    job = get_job(http, server.url, job_id)
    assert job["status"] == "done", job  # posted before the worker exited
    assert (job["outputs"]["worker_id"], job["attempts"]) == ("leaving", 1)
    assert "stopping: finishing the running batch" in worker.text
    assert "Traceback" not in worker.text


@pytest.mark.parametrize("how", ["second-signal", "grace-over"])
def test_stopped_worker_hands_its_job_back_uncounted(start_server, start_worker, http, how):
    server = start_server()
    grace = ["--grace-s", "1"] if how == "grace-over" else []
    worker = start_worker(server.url, "--worker-id", "quitter", *grace)
    job_id = submit(http, server.url, text="hand me back", delay_s=4, steps=8)
    wait_running(http, server.url, job_id, "quitter")

    worker.proc.send_signal(signal.SIGTERM)
    if how == "second-signal":
        worker.wait_for_output(r"stopping: finishing the running batch")
        worker.proc.send_signal(signal.SIGTERM)

    assert exit_code(worker) == 0, worker.text
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["attempts"], job["queue_position"]) == ("queued", 0, 0), job
    said = "handing the running jobs back" if how == "second-signal" else "waiting up to 1 s"
    assert said in worker.text and "Traceback" not in worker.text, worker.text
    server.wait_for_output(rf"job {job_id} requeued .*handed back by its worker")

    start_worker(server.url, "--worker-id", "successor")
    job = wait_status(http, server.url, job_id, FINISHED)
    assert job["status"] == "done", job
    assert (job["outputs"]["worker_id"], job["attempts"]) == ("successor", 1)


# ----- workers starting


def test_worker_with_a_wrong_key_exits_with_a_clear_message(start_server, start_worker):
    server = start_server()
    worker = start_worker(server.url, key="not-the-key")

    assert exit_code(worker) != 0
    assert "refused" in worker.text and "401" in worker.text, worker.text
    assert "Traceback" not in worker.text


def test_worker_started_before_the_server_connects_once_it_is_up(
    start_server, start_worker, http, held_port, refused_url
):
    port, url = held_port, refused_url  # refused until the server listens on the held port
    worker = start_worker(url, "--worker-id", "early")
    worker.wait_for_output(r"server \S+ unavailable .*; retrying in", timeout_s=30)

    server = start_server(port=port)
    assert server.url == url
    job_id = submit(http, server.url, text="hello early bird")

    job = wait_status(http, server.url, job_id, FINISHED)
    assert (job["status"], job["outputs"]["worker_id"]) == ("done", "early")
    worker.wait_for_output(r"server \S+ reachable again")
