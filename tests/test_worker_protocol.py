"""End to end: the worker routes of a real server process, driven by hand.

The test plays the worker (`RawWorker`, with the echo worker key), so it decides when a job is
taken, when progress comes and when a result is posted: lease expiry, lost leases and late
results happen exactly when the test wants them. The `short` endpoint has `lease_s = 1`; the
server sweeps expired leases every 0.5 s (its default).
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
from conftest import ECHO_WORKER_KEY, wait_until
from e2e_http import RawWorker, assert_error, echo_variant, entry, get_job


def submit(http: httpx.Client, url: str, endpoint: str = "echo", **inputs: Any) -> str:
    reply = http.post(f"{url}/api/v1/endpoints/{endpoint}/jobs", json={"inputs": inputs})
    assert reply.status_code == 202, reply.text
    return reply.json()["job_id"]


def status_is(http: httpx.Client, url: str, job_id: str, status: str):
    """A wait_until condition: the job once it has this status."""

    def check() -> dict[str, Any] | None:
        job = get_job(http, url, job_id)
        return job if job["status"] == status else None

    return check


def short_endpoint(endpoints_dir, max_attempts: int = 2) -> None:
    echo_variant(
        endpoints_dir,
        "short",
        ENDPOINT={"lease_s": 1, "max_attempts": max_attempts},
        WORKER={"job_type": "short"},
    )


def no_server_errors(server) -> None:
    assert "Traceback" not in server.text, server.text
    assert "unexpected error" not in server.text, server.text


# ----- polling


def test_poll_answers_204_after_wait_s_without_jobs(start_server, http):
    server = start_server()
    worker = RawWorker(http, server.url)
    started = time.monotonic()
    reply = worker.poll(wait_s=0.5)
    assert reply.status_code == 204
    assert reply.content == b""
    assert time.monotonic() - started >= 0.4
    assert worker.poll(wait_s=0).status_code == 204


def test_poll_waits_for_a_job_submitted_meanwhile(start_server, http):
    server = start_server()
    worker = RawWorker(http, server.url)
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=30) as other:
        poll = pool.submit(RawWorker(other, server.url).poll, 1, 20)
        wait_until(lambda: http.get(f"{server.url}/api/v1/status").json()["workers"])
        started = time.monotonic()
        job_id = submit(http, server.url, text="wake up")
        reply = poll.result(timeout=30)
    assert reply.status_code == 200, reply.text
    assert [j["job_id"] for j in reply.json()["jobs"]] == [job_id]
    assert time.monotonic() - started < 15  # answered by the submit, not by the wait running out
    assert worker.poll(wait_s=0).status_code == 204


def test_poll_grants_a_batch_of_at_most_max_batch(start_server, endpoints_dir, http):
    echo_variant(endpoints_dir, "batchy", WORKER={"job_type": "batchy", "max_batch": 3})
    server = start_server()
    ids = [submit(http, server.url, "batchy", text=str(i), steps=i) for i in range(5)]
    other = submit(http, server.url, "echo", text="not batchy")
    worker = RawWorker(http, server.url, job_types=["batchy"])

    granted = worker.take(max_batch=10)  # the endpoint's [WORKER] max_batch caps it at 3
    assert [j["job_id"] for j in granted] == ids[:3]
    now_ms = time.time() * 1000
    for i, job in enumerate(granted):
        assert job["endpoint"] == "batchy"
        assert job["attempt"] == 1
        assert job["lease_s"] == 30
        assert now_ms < job["lease_expires_at_ms"] <= now_ms + 31_000
        assert job["inputs"] == {
            "text": str(i),
            "delay_s": 0.0,
            "steps": i,
            "fail": None,
            "image": None,
        }
    assert len({j["lease_id"] for j in granted}) == 3
    assert [j["job_id"] for j in worker.take(max_batch=1)] == ids[3:4]
    assert [j["job_id"] for j in worker.take(max_batch=2)] == ids[4:5]
    assert worker.poll(max_batch=2, wait_s=0).status_code == 204
    stats = http.get(f"{server.url}/api/v1/status").json()["endpoints"]
    assert stats["batchy"] == {"queued": 0, "queued_bytes": 0, "running": 5, "workers": 1}
    assert stats["echo"].pop("queued_bytes") > 0
    assert stats["echo"] == {"queued": 1, "running": 0, "workers": 0}

    # A worker of both job types gets one endpoint per batch, never a mix.
    both = RawWorker(http, server.url, worker_id="both", job_types=["batchy", "echo"])
    submit(http, server.url, "batchy", text="late")
    first = both.take(max_batch=5)
    second = both.take(max_batch=5)
    assert [j["job_id"] for j in first] == [other]  # the oldest waiting job's endpoint first
    assert [j["endpoint"] for j in second] == ["batchy"]


def test_a_dropped_poll_is_not_granted_jobs(start_server, http):
    server = start_server()
    status_url = f"{server.url}/api/v1/status"

    def worker_ids() -> set[str]:
        return {w["worker_id"] for w in http.get(status_url).json()["workers"]}

    # A worker starts a long poll, then its connection dies.
    body = json.dumps(
        {"worker_id": "dead", "job_types": ["echo"], "max_batch": 1, "wait_s": 25}
    ).encode()
    address = urlsplit(server.url)
    dead = socket.create_connection((address.hostname, address.port))
    dead.sendall(
        b"POST /api/v1/worker/jobs HTTP/1.1\r\nHost: test\r\n"
        b"Authorization: Bearer " + ECHO_WORKER_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    wait_until(lambda: "dead" in worker_ids())  # its poll is waiting on the server
    dead.close()

    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=40) as other:
        live = pool.submit(RawWorker(other, server.url, worker_id="live").poll, 1, 25)
        wait_until(lambda: "live" in worker_ids())
        job_id = submit(http, server.url, text="for the living")
        reply = live.result(timeout=40)
    assert reply.status_code == 200, reply.text
    assert [j["job_id"] for j in reply.json()["jobs"]] == [job_id]
    running = {w["worker_id"]: w["running"] for w in http.get(status_url).json()["workers"]}
    assert running == {"dead": 0, "live": 1}
    assert "worker=dead" not in server.text


# ----- leases


def test_progress_renews_the_lease(start_server, endpoints_dir, http):
    short_endpoint(endpoints_dir)
    server = start_server()
    job_id = submit(http, server.url, "short")
    worker = RawWorker(http, server.url, job_types=["short"])
    (grant,) = worker.take()
    assert grant["lease_s"] == 1

    # Reports for 2.5 leases: the job stays with this worker the whole time.
    deadline = time.monotonic() + 2.5
    step = 0
    while time.monotonic() < deadline:
        step += 1
        reply = worker.progress(grant, progress=step, outputs={"step": step})
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"job_id": job_id, "ok": True, "canceled": False}
        time.sleep(0.15)
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["attempts"]) == ("running", 1)
    assert (job["progress"], job["progress_outputs"]) == (step, {"step": step})
    assert f"job {job_id} requeued" not in server.text
    # A heartbeat (no progress, no outputs) renews it as well and changes nothing shown.
    assert worker.progress(grant).status_code == 200
    assert get_job(http, server.url, job_id)["progress"] == step

    assert worker.result(grant, outputs={"text": "kept"}).status_code == 200
    assert get_job(http, server.url, job_id)["status"] == "done"


def test_an_expired_lease_requeues_then_fails_after_max_attempts(start_server, endpoints_dir, http):
    short_endpoint(endpoints_dir, max_attempts=2)
    server = start_server()
    job_id = submit(http, server.url, "short")
    behind = submit(http, server.url, "short")
    worker = RawWorker(http, server.url, job_types=["short"])
    (first,) = worker.take()
    assert (first["job_id"], first["attempt"]) == (job_id, 1)

    # No progress: after the lease it is back in the queue, ahead of the job behind it.
    requeued = wait_until(status_is(http, server.url, job_id, "queued"), timeout_s=15)
    assert requeued["attempts"] == 1
    assert requeued["queue_position"] == 0
    assert get_job(http, server.url, behind)["queue_position"] == 1

    (second,) = worker.take()
    assert (second["job_id"], second["attempt"]) == (job_id, 2)
    assert second["lease_id"] != first["lease_id"]

    # The last attempt's lease runs out too: the job fails and says why.
    failed = wait_until(status_is(http, server.url, job_id, "failed"), timeout_s=15)
    assert failed["attempts"] == 2
    assert "lease expired" in failed["error"]
    assert "max_attempts = 2" in failed["error"]
    assert failed["outputs"] is None
    assert get_job(http, server.url, behind)["status"] == "queued"

    # The worker that held the last lease comes back with a result: the job failed for good,
    # and the worker is told its result was not taken rather than that all is well.
    late = worker.result(second, outputs={"text": "too late"})
    assert_error(late, 409)
    assert get_job(http, server.url, job_id)["status"] == "failed"
    no_server_errors(server)


def test_a_late_result_is_taken_when_nobody_retook_the_job(start_server, endpoints_dir, http):
    short_endpoint(endpoints_dir)
    server = start_server()
    job_id = submit(http, server.url, "short", text="slow")
    worker = RawWorker(http, server.url, job_types=["short"])
    (grant,) = worker.take()
    wait_until(status_is(http, server.url, job_id, "queued"), timeout_s=15)

    reply = worker.result(grant, outputs={"text": "slow"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["ok"] is True
    done = get_job(http, server.url, job_id)
    assert (done["status"], done["outputs"], done["attempts"]) == ("done", {"text": "slow"}, 1)
    stats = http.get(f"{server.url}/api/v1/status").json()["endpoints"]["short"]
    assert stats == {"queued": 0, "queued_bytes": 0, "running": 0, "workers": 1}
    assert worker.poll(wait_s=0).status_code == 204


def test_late_progress_takes_the_job_back_when_nobody_retook_it(start_server, endpoints_dir, http):
    short_endpoint(endpoints_dir)
    server = start_server()
    job_id = submit(http, server.url, "short")
    worker = RawWorker(http, server.url, job_types=["short"])
    (grant,) = worker.take()
    wait_until(status_is(http, server.url, job_id, "queued"), timeout_s=15)

    reply = worker.progress(grant, progress=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["canceled"] is False
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["progress"], job["queue_position"]) == ("running", 60, None)
    assert http.get(f"{server.url}/api/v1/status").json()["endpoints"]["short"]["queued"] == 0
    assert worker.poll(wait_s=0).status_code == 204  # nobody else can take it now
    assert worker.result(grant, outputs={"text": "x"}).status_code == 200
    assert get_job(http, server.url, job_id)["status"] == "done"


def test_a_lost_lease_is_refused_and_the_new_holder_wins(start_server, endpoints_dir, http):
    short_endpoint(endpoints_dir, max_attempts=3)
    server = start_server()
    job_id = submit(http, server.url, "short")
    slow = RawWorker(http, server.url, worker_id="slow", job_types=["short"])
    quick = RawWorker(http, server.url, worker_id="quick", job_types=["short"])
    (old,) = slow.take()
    wait_until(status_is(http, server.url, job_id, "queued"), timeout_s=15)
    (new,) = quick.take()
    assert new["attempt"] == 2

    for reply in (slow.progress(old, progress=90), slow.result(old, outputs={"text": "slow"})):
        body = assert_error(reply, 409)
        assert "lease" in body["error"]
    (answer,) = slow.batch_results([entry(old, outputs={"text": "slow"})]).json()["answers"]
    assert (answer["ok"], answer["canceled"]) == (False, False)
    assert "lease" in answer["error"]
    assert get_job(http, server.url, job_id)["status"] == "running"

    accepted = quick.result(new, outputs={"text": "quick"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["ok"] is True
    assert_error(slow.result(old, outputs={"text": "slow"}), 409)
    done = get_job(http, server.url, job_id)
    assert (done["status"], done["outputs"]) == ("done", {"text": "quick"})
    workers = {
        w["worker_id"]: (w["jobs_done"], w["running"])
        for w in http.get(f"{server.url}/api/v1/status").json()["workers"]
    }
    assert workers == {"slow": (0, 0), "quick": (1, 0)}


# ----- results


def test_results_are_idempotent(start_server, http):
    server = start_server()
    done_id = submit(http, server.url, text="a")
    failed_id = submit(http, server.url, text="b")
    worker = RawWorker(http, server.url)
    done, failed = worker.take(max_batch=2)

    for _ in range(2):
        reply = worker.result(done, outputs={"text": "a"})
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"job_id": done_id, "ok": True, "canceled": False}
        assert worker.result(failed, error="CUDA out of memory").status_code == 200
    answers = worker.batch_results(
        [entry(done, outputs={"text": "a"}), entry(failed, error="CUDA out of memory")]
    ).json()["answers"]
    assert [a["ok"] for a in answers] == [True, True]

    job = get_job(http, server.url, done_id)
    assert (job["status"], job["outputs"]) == ("done", {"text": "a"})
    assert get_job(http, server.url, failed_id)["error"] == "CUDA out of memory"
    stats = http.get(f"{server.url}/api/v1/status").json()
    (seen,) = stats["workers"]
    assert (seen["jobs_done"], seen["jobs_failed"], seen["running"]) == (1, 1, 0)

    # Progress about a finished job is refused.
    body = assert_error(worker.progress(done, progress=10), 409)
    assert "done" in body["error"]
    # A different result for a job already finished is not silently taken.
    assert_error(worker.result(done, outputs={"text": "changed"}), 409)
    assert get_job(http, server.url, done_id)["outputs"] == {"text": "a"}


def test_release_hands_the_job_back_to_the_front(start_server, http):
    server = start_server()
    first_id = submit(http, server.url, text="first")
    second_id = submit(http, server.url, text="second")
    worker = RawWorker(http, server.url)
    (grant,) = worker.take()
    assert (grant["job_id"], grant["attempt"]) == (first_id, 1)
    assert worker.progress(grant, progress=50, outputs={"step": 1}).status_code == 200

    reply = worker.result(grant, release=True)
    assert reply.status_code == 200, reply.text
    assert reply.json()["ok"] is True
    job = get_job(http, server.url, first_id)
    assert (job["status"], job["queue_position"], job["attempts"]) == ("queued", 0, 0)
    assert (job["progress"], job["progress_outputs"]) == (0, None)
    assert get_job(http, server.url, second_id)["queue_position"] == 1

    (again,) = worker.take()
    assert (again["job_id"], again["attempt"]) == (first_id, 1)
    assert_error(worker.progress(grant, progress=1), 409)  # the released lease is gone

    # Through the batch route as well.
    answers = worker.batch_results([entry(again, release=True)]).json()["answers"]
    assert answers == [{"job_id": first_id, "ok": True, "canceled": False}]
    assert get_job(http, server.url, first_id)["attempts"] == 0


def test_a_release_after_the_lease_expired_gives_no_attempt_back(
    start_server, endpoints_dir, http
):
    short_endpoint(endpoints_dir)
    server = start_server()
    job_id = submit(http, server.url, "short")
    worker = RawWorker(http, server.url, job_types=["short"])
    (grant,) = worker.take()
    requeued = wait_until(status_is(http, server.url, job_id, "queued"), timeout_s=15)
    assert requeued["attempts"] == 1  # the expired lease counted

    reply = worker.result(grant, release=True)  # the worker, late, hands it back too
    assert reply.status_code == 200, reply.text
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["queue_position"], job["attempts"]) == ("queued", 0, 1)


def test_batch_routes_answer_per_job(start_server, http):
    server = start_server()
    ids = [submit(http, server.url, text=str(i)) for i in range(3)]
    worker = RawWorker(http, server.url)
    jobs = worker.take(max_batch=3)
    assert [j["job_id"] for j in jobs] == ids

    reply = worker.batch_progress(
        [
            entry(jobs[0], progress=10),
            entry(jobs[1], progress=20, outputs={"step": 1}),
            {"job_id": "no-such-job", "lease_id": "x"},
            entry(jobs[2], lease_id="not-the-lease"),
        ]
    )
    assert reply.status_code == 200, reply.text
    answers = Counter(
        (a["job_id"], a["ok"], a["canceled"], "error" in a) for a in reply.json()["answers"]
    )
    assert answers == Counter(
        [
            (ids[0], True, False, False),
            (ids[1], True, False, False),
            ("no-such-job", False, False, True),
            (ids[2], False, False, True),
        ]
    )
    second = get_job(http, server.url, ids[1])
    assert (second["progress"], second["progress_outputs"]) == (20, {"step": 1})

    assert http.delete(f"{server.url}/api/v1/jobs/{ids[2]}").status_code == 200
    answers = worker.batch_progress([entry(j, progress=50) for j in jobs]).json()["answers"]
    assert {a["job_id"]: a["canceled"] for a in answers} == {
        ids[0]: False,
        ids[1]: False,
        ids[2]: True,
    }

    reply = worker.batch_results(
        [
            entry(jobs[0], outputs={"text": "0"}),
            entry(jobs[1], error="bad prompt"),
            entry(jobs[2], outputs={"text": "2"}),
        ]
    )
    assert reply.status_code == 200, reply.text
    answers = {a["job_id"]: (a["ok"], a["canceled"]) for a in reply.json()["answers"]}
    assert answers == {ids[0]: (True, False), ids[1]: (True, False), ids[2]: (False, True)}
    statuses = [get_job(http, server.url, i)["status"] for i in ids]
    assert statuses == ["done", "failed", "canceled"]
    assert get_job(http, server.url, ids[2])["outputs"] is None


def test_results_with_a_poll_get_the_next_batch(start_server, http):
    server = start_server()
    ids = [submit(http, server.url, text=str(i)) for i in range(3)]
    worker = RawWorker(http, server.url)
    (first,) = worker.take()
    poll = {"worker_id": worker.worker_id, "job_types": ["echo"], "max_batch": 2, "wait_s": 5}
    reply = http.post(
        f"{server.url}/api/v1/worker/results",
        json={"reports": [entry(first, outputs={"text": "0"})], "poll": poll},
        headers=worker.headers,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["answers"] == [{"job_id": ids[0], "ok": True, "canceled": False}]
    assert [j["job_id"] for j in body["jobs"]] == ids[1:]
    reply = http.post(
        f"{server.url}/api/v1/worker/results",
        json={
            "reports": [entry(j, outputs={}) for j in body["jobs"]],
            "poll": {**poll, "wait_s": 0.2},
        },
        headers=worker.headers,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["jobs"] == []
    assert [get_job(http, server.url, i)["status"] for i in ids] == ["done"] * 3


# ----- keys


def test_wrong_worker_keys_get_401(start_server, http):
    server = start_server()
    job_id = submit(http, server.url)
    worker = RawWorker(http, server.url)
    (grant,) = worker.take()
    version = get_job(http, server.url, job_id)["version"]
    routes = [
        ("/api/v1/worker/jobs", {"worker_id": "w", "job_types": ["echo"], "wait_s": 0}),
        (f"/api/v1/worker/jobs/{job_id}/progress", {"lease_id": grant["lease_id"]}),
        (f"/api/v1/worker/jobs/{job_id}/result", {"lease_id": grant["lease_id"], "outputs": {}}),
        ("/api/v1/worker/progress", {"reports": [entry(grant)]}),
        ("/api/v1/worker/results", {"reports": [entry(grant, outputs={})]}),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ECHO_WORKER_KEY}):
        for path, body in routes:
            reply = http.post(server.url + path, json=body, headers=headers)
            assert_error(reply, 401)
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            # The key is checked before the body is even read.
            assert_error(http.post(server.url + path, content=b"{oops", headers=headers), 401)
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["version"]) == ("running", version)  # nothing changed
    assert worker.result(grant, outputs={"text": "fine"}).status_code == 200


def test_another_endpoints_worker_key_cannot_report(start_server, endpoints_dir, http):
    echo_variant(
        endpoints_dir, "other", WORKER={"job_type": "other", "auth_keys": ["other-worker-key"]}
    )
    server = start_server()
    job_id = submit(http, server.url)
    (grant,) = RawWorker(http, server.url).take()
    before = get_job(http, server.url, job_id)
    intruder = RawWorker(
        http, server.url, worker_id="intruder", key="other-worker-key", job_types=["echo"]
    )

    # It may not even ask for echo jobs (nor show up as an echo worker in the status).
    assert_error(intruder.poll(wait_s=0), 400, "job_types")
    assert_error(intruder.progress(grant, progress=99), 403)
    assert_error(intruder.result(grant, outputs={"text": "forged"}), 403)
    assert_error(intruder.result(grant, release=True), 403)
    for reply in (
        intruder.batch_progress([entry(grant, progress=99)]),
        intruder.batch_results([entry(grant, outputs={"text": "forged"})]),
    ):
        assert reply.status_code == 200, reply.text
        (answer,) = reply.json()["answers"]
        assert (answer["job_id"], answer["ok"]) == (job_id, False)
        assert "echo" in answer["error"]
    after = get_job(http, server.url, job_id)
    assert after == before
    # Its own endpoint's jobs it may take.
    other_id = submit(http, server.url, "other")
    other = RawWorker(http, server.url, key="other-worker-key", job_types=["other"])
    assert [j["job_id"] for j in other.take()] == [other_id]


# ----- bad bodies: 400 naming the field, never a 500


BODY_CASES: list[tuple[bytes, str]] = [
    (b"", "body"),
    (b"{oops", "body"),
    (b"[]", "body"),
    (b'"text"', "body"),
    (b"null", "body"),
    (b"\xff", "body"),
    (b"[" * 3000 + b"]" * 3000, "body"),
]


def _post(http: httpx.Client, url: str, body: bytes | dict) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {ECHO_WORKER_KEY}", "Content-Type": "application/json"}
    return http.post(url, content=content, headers=headers)


def test_bad_poll_bodies_get_400(start_server, http):
    server = start_server()
    url = f"{server.url}/api/v1/worker/jobs"
    ok = {"worker_id": "w", "job_types": ["echo"], "max_batch": 1, "wait_s": 0, "info": {}}
    cases: list[tuple[bytes | dict, str]] = [
        *BODY_CASES,
        ({k: v for k, v in ok.items() if k != "worker_id"}, "worker_id"),
        ({**ok, "worker_id": 5}, "worker_id"),
        ({**ok, "worker_id": ""}, "worker_id"),
        ({**ok, "worker_id": "w" * 129}, "worker_id"),
        ({k: v for k, v in ok.items() if k != "job_types"}, "job_types"),
        ({**ok, "job_types": "echo"}, "job_types"),
        ({**ok, "job_types": []}, "job_types"),
        ({**ok, "job_types": [5]}, "job_types"),
        ({**ok, "job_types": ["echo", "no-such-type"]}, "job_types"),
        ({**ok, "max_batch": 0}, "max_batch"),
        ({**ok, "max_batch": 1025}, "max_batch"),
        ({**ok, "max_batch": True}, "max_batch"),
        ({**ok, "max_batch": "2"}, "max_batch"),
        ({**ok, "max_batch": 1.5}, "max_batch"),
        ({**ok, "info": "gpu"}, "info"),
        ({**ok, "wait_s": -1}, "wait_s"),
        ({**ok, "wait_s": 10_000}, "wait_s"),
        ({**ok, "wait_s": "1"}, "wait_s"),
        ({**ok, "wait_s": False}, "wait_s"),
        ({**ok, "priority": 1}, "priority"),
    ]
    for body, field in cases:
        assert_error(_post(http, url, body), 400, field)
    assert _post(http, url, ok).status_code == 204
    assert http.get(f"{server.url}/api/v1/status").json()["workers"][0]["worker_id"] == "w"
    no_server_errors(server)


def _report_cases(lease_id: str, prefix: str = "") -> list[tuple[dict, str]]:
    """Bad report entries, each with the key its 400 must name."""
    ok = {"lease_id": lease_id}
    return [
        ({}, prefix + "lease_id"),
        ({"lease_id": 5}, prefix + "lease_id"),
        ({"lease_id": ""}, prefix + "lease_id"),
        ({**ok, "progress": 101}, prefix + "progress"),
        ({**ok, "progress": -1}, prefix + "progress"),
        ({**ok, "progress": "50"}, prefix + "progress"),
        ({**ok, "progress": True}, prefix + "progress"),
        ({**ok, "outputs": [1]}, prefix + "outputs"),
        ({**ok, "outputs": "text"}, prefix + "outputs"),
        ({**ok, "error": 5}, prefix + "error"),
        ({**ok, "error": {"message": "x"}}, prefix + "error"),
        ({**ok, "release": "yes"}, prefix + "release"),
        ({**ok, "release": 1}, prefix + "release"),
        ({**ok, "priority": 1}, prefix + "priority"),
    ]


def test_bad_per_job_report_bodies_get_400(start_server, http):
    server = start_server()
    job_id = submit(http, server.url)
    worker = RawWorker(http, server.url)
    (grant,) = worker.take()
    version = get_job(http, server.url, job_id)["version"]
    lease = {"lease_id": grant["lease_id"]}
    for route in ("progress", "result"):
        url = f"{server.url}/api/v1/worker/jobs/{job_id}/{route}"
        cases: list[tuple[bytes | dict, str]] = [*BODY_CASES, *_report_cases(grant["lease_id"])]
        for body, field in cases:
            assert_error(_post(http, url, body), 400, field)
        long_id = "j" * 129
        assert_error(
            _post(http, f"{server.url}/api/v1/worker/jobs/{long_id}/{route}", lease), 400, "job_id"
        )
        assert_error(_post(http, f"{server.url}/api/v1/worker/jobs/nope/{route}", lease), 404)
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["version"]) == ("running", version)  # nothing changed
    assert worker.result(grant, outputs={"text": "ok"}).status_code == 200
    no_server_errors(server)


def test_bad_batch_report_bodies_get_400(start_server, http):
    server = start_server()
    job_id = submit(http, server.url)
    worker = RawWorker(http, server.url)
    (grant,) = worker.take()
    version = get_job(http, server.url, job_id)["version"]
    good = entry(grant)
    for route in ("progress", "results"):
        url = f"{server.url}/api/v1/worker/{route}"
        cases: list[tuple[bytes | dict, str]] = [
            *BODY_CASES,
            ({}, "reports"),
            ({"reports": "x"}, "reports"),
            ({"reports": []}, "reports"),
            ({"reports": {}}, "reports"),
            ({"reports": [good], "extra": 1}, "extra"),
            ({"reports": [5]}, "reports[0]"),
            ({"reports": [good, {"job_id": 5, "lease_id": "x"}]}, "reports[1].job_id"),
            ({"reports": [good, {"lease_id": "x"}]}, "reports[1].job_id"),
            ({"reports": [good, {**good, "progress": 9}]}, "reports[1].job_id"),
            *(
                ({"reports": [good, {"job_id": job_id, **bad}]}, field)
                for bad, field in _report_cases(grant["lease_id"], "reports[1].")
            ),
        ]
        for body, field in cases:
            assert_error(_post(http, url, body), 400, field)
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["version"]) == ("running", version)  # nothing changed
    no_server_errors(server)


def test_bad_poll_beside_batch_results_gets_400(start_server, http):
    server = start_server()
    job_id = submit(http, server.url)
    worker = RawWorker(http, server.url)
    (grant,) = worker.take()
    version = get_job(http, server.url, job_id)["version"]
    url = f"{server.url}/api/v1/worker/results"
    ok = {"worker_id": "w", "job_types": ["echo"], "wait_s": 0}
    reports = [entry(grant, outputs={})]
    for poll, field in (
        ("now", "poll"),
        ([], "poll"),
        ({**ok, "worker_id": 5}, "poll.worker_id"),
        ({**ok, "job_types": ["no-such-type"]}, "poll.job_types"),
        ({**ok, "priority": 1}, "poll.priority"),
    ):
        assert_error(_post(http, url, {"reports": reports, "poll": poll}), 400, field)
    job = get_job(http, server.url, job_id)
    assert (job["status"], job["version"]) == ("running", version)  # the result was not taken
    no_server_errors(server)
