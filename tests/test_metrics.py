"""`GET /metrics` (api_server/metrics.py) against real servers: after known jobs, its numbers
(read with prometheus_client's own parser) say what happened: submitted, done, failed, canceled,
refused by status, lease expiries and hand-backs, the histograms, the model workers' own
measures, the queue gauges, HTTP requests by route template; the admin key; and two servers on
one Redis, each counting its own and both showing the shared queue.

One server (and one noop worker) serves the module; each test reads the numbers before and
after its own jobs, on endpoints of its own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO, Process, spawn_server, spawn_worker, wait_until
from e2e_http import RawWorker, assert_error, echo_variant, wait_status
from prometheus_client.parser import text_string_to_metric_families

ADMIN_KEY = "metrics-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SERVER = "metrics-a"
CHAT_OUTPUTS = """
[OUTPUTS.time_to_first_token_s]
type = "float"
[OUTPUTS.tokens_per_s]
type = "float"
[OUTPUTS.generated_tokens]
type = "integer"
[OUTPUTS.timing]
type = "json"
[OUTPUTS.images]
type = "json"
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def endpoints_for_tests(folder: Path) -> Path:
    """echo, plus: `nobody` (no worker serves it; a queue of 1 job, bodies of 2 KiB),
    `limited` (one submit, then 429), `chatty` (served by a RawWorker; chat and image outputs
    declared; leases of 1 s)."""
    shutil.copytree(REPO / "endpoints" / "echo", folder / "echo")
    echo_variant(folder, "nobody", WORKER={"job_type": "nobody"},
                 ENDPOINT={"max_queue_length": 1, "max_body_bytes": 2048})
    echo_variant(folder, "limited", WORKER={"job_type": "limited"},
                 CLIENTS={"rate_limit_per_s": 0.01, "rate_burst": 1})
    chatty = echo_variant(folder, "chatty", WORKER={"job_type": "chatty"},
                          ENDPOINT={"lease_s": 1, "max_attempts": 3})
    chatty.write_text(chatty.read_text() + CHAT_OUTPUTS)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A server whose /metrics needs the admin key, and a noop worker for echo."""
    folder = tmp_path_factory.mktemp("metrics")
    config = folder / "server.toml"
    config.write_text(f'[SERVER]\nadmin_keys = ["{ADMIN_KEY}"]\nmetrics_admin_only = true\n'
                      f'server_name = "{SERVER}"\nsweep_interval_s = 0.2\n')
    server = spawn_server(endpoints_for_tests(folder / "endpoints"), folder / "jobs.sqlite3",
                          "--config", str(config))
    try:
        worker = spawn_worker(server.url, "--worker-id", "metrics-worker")
        try:
            yield server
        finally:
            worker.stop()
    finally:
        server.stop()


def scrape(http: httpx.Client, url: str) -> Samples:
    """Every sample of /metrics (with the admin key), by name and labels."""
    reply = http.get(f"{url}/metrics", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def submit(
    http: httpx.Client, url: str, endpoint: str, wait_s: float = 0, **inputs
) -> httpx.Response:
    return http.post(f"{url}/api/v1/endpoints/{endpoint}/jobs",
                     params={"wait": wait_s} if wait_s else None, json={"inputs": inputs})


def test_jobs_by_outcome_refusals_histograms_gauges_and_routes(served, http):
    url = served.url
    before = scrape(http, url)
    for i in range(3):
        assert submit(http, url, "echo", 10, text=f"job {i}").json()["status"] == "done"
    failed = submit(http, url, "echo", 10, fail="the worker gave up").json()
    assert failed["status"] == "failed"
    assert_error(submit(http, url, "echo", text=5), 400, "text")
    queued = submit(http, url, "nobody", text="waits")
    assert queued.status_code == 202
    assert_error(submit(http, url, "nobody", text="the queue is full"), 429)
    assert_error(submit(http, url, "nobody", text="x" * 4000), 413)
    assert submit(http, url, "limited", text="first").status_code == 202
    assert_error(submit(http, url, "limited", text="over the rate"), 429)
    http.get(f"{url}/api/v1/jobs/{failed['job_id']}")
    during = scrape(http, url)
    http.delete(f"{url}/api/v1/jobs/{queued.json()['job_id']}")
    after = scrape(http, url)

    echo, nobody = {"server": SERVER, "endpoint": "echo"}, {"server": SERVER, "endpoint": "nobody"}
    assert delta(before, after, "jobhive_jobs_submitted_total", **echo) == 4
    assert delta(before, after, "jobhive_jobs_finished_total", **echo, outcome="done") == 3
    assert delta(before, after, "jobhive_jobs_finished_total", **echo, outcome="failed") == 1
    assert delta(before, after, "jobhive_submits_refused_total", **echo, status="400") == 1
    assert delta(before, after, "jobhive_jobs_submitted_total", **nobody) == 1
    assert delta(before, after, "jobhive_jobs_finished_total", **nobody, outcome="canceled") == 1
    assert delta(before, after, "jobhive_submits_refused_total", **nobody, status="429") == 1
    assert delta(before, after, "jobhive_submits_refused_total", **nobody, status="413") == 1
    limited = {"server": SERVER, "endpoint": "limited"}
    assert delta(before, after, "jobhive_submits_refused_total", **limited, status="429") == 1
    # Done jobs' times: queue wait + run = end to end; every job's in the +Inf bucket.
    for histogram in ("queue_wait", "run", "latency"):
        name = f"jobhive_job_{histogram}_seconds"
        assert delta(before, after, name + "_count", **echo) == 3
        assert delta(before, after, name + "_bucket", **echo, le="+Inf") == 3
    latency_s = delta(before, after, "jobhive_job_latency_seconds_sum", **echo)
    assert 0 < latency_s < 30
    assert latency_s == pytest.approx(
        delta(before, after, "jobhive_job_queue_wait_seconds_sum", **echo)
        + delta(before, after, "jobhive_job_run_seconds_sum", **echo), abs=1e-6)
    # The queue's gauges, read from the store at each scrape (no server label).
    assert value(during, "jobhive_jobs_queued", endpoint="nobody") == 1
    assert value(after, "jobhive_jobs_queued", endpoint="nobody") == 0
    assert value(after, "jobhive_workers_online", endpoint="echo") == 1
    assert value(after, "jobhive_queue_limit_jobs", endpoint="nobody") == 1
    # HTTP requests by route template, never by the raw path.
    submits = {"server": SERVER, "method": "POST", "route": "/api/v1/endpoints/{name}/jobs"}
    assert delta(before, after, "jobhive_http_requests_total", **submits, status="200") == 4
    assert delta(before, after, "jobhive_http_requests_total", **submits, status="429") == 2
    job_route = {"server": SERVER, "method": "GET", "route": "/api/v1/jobs/{job_id}"}
    assert delta(before, after, "jobhive_http_requests_total", **job_route, status="200") == 1
    routes = {dict(labels).get("route") for _, labels in after} - {None}
    assert not [r for r in routes if failed["job_id"] in r or "nobody" in r], routes


def test_model_measures_hand_backs_and_lease_expiries(served, http):
    url = served.url
    worker = RawWorker(http, url, "chatty-worker", job_types=["chatty"])
    before = scrape(http, url)
    jobs = [submit(http, url, "chatty", text=str(i)).json() for i in range(3)]
    first, second = worker.take(), worker.take()
    assert worker.result(first[0], outputs={
        "time_to_first_token_s": 0.05, "tokens_per_s": 40.0, "generated_tokens": 20,
        "timing": {"generate_s": 0.5, "batch_images": 2}, "images": [{"a": 1}, {"b": 2}],
    }).status_code == 200
    assert worker.result(second[0], release=True).status_code == 200  # handed back
    held = worker.take()  # ... and never reported: its lease (1 s) expires, it is requeued
    requeued = {"server": SERVER, "endpoint": "chatty", "reason": "lease_expired"}
    wait_until(lambda: delta(before, scrape(http, url), "jobhive_jobs_requeued_total",
                             **requeued) == 1, timeout_s=10)
    after = scrape(http, url)
    chatty = {"server": SERVER, "endpoint": "chatty"}
    assert delta(before, after, "jobhive_jobs_submitted_total", **chatty) == 3
    assert delta(before, after, "jobhive_time_to_first_token_seconds_count", **chatty) == 1
    assert delta(before, after, "jobhive_time_to_first_token_seconds_bucket", **chatty,
                 le="0.05") == 1
    assert delta(before, after, "jobhive_time_to_first_token_seconds_bucket", **chatty,
                 le="0.025") == 0
    assert delta(before, after, "jobhive_tokens_per_second_sum", **chatty) == 40
    assert delta(before, after, "jobhive_generated_tokens_total", **chatty) == 20
    assert delta(before, after, "jobhive_images_per_second_sum", **chatty) == 4  # 2 in 0.5 s
    assert delta(before, after, "jobhive_images_generated_total", **chatty) == 2
    assert delta(before, after, "jobhive_jobs_requeued_total", **chatty,
                 reason="handed_back") == 1
    assert delta(before, after, "jobhive_lease_expiries_total", **chatty) == 1
    assert held[0]["job_id"] in {job["job_id"] for job in jobs}
    for job in jobs:  # (nothing left for the next test's counts)
        http.delete(f"{url}/api/v1/jobs/{job['job_id']}")


def test_metrics_take_only_an_admin_key_when_configured(served, http):
    url = served.url + "/metrics"
    refused = assert_error(http.get(url), 401)
    assert "admin" in refused["error"]
    assert http.get(url).headers["www-authenticate"] == 'Bearer realm="jobhive"'
    worker_key = {"Authorization": "Bearer echo-worker-key"}  # a key, but no admin's
    assert_error(http.get(url, headers=worker_key), 403)
    reply = http.get(url, headers=ADMIN)
    assert reply.status_code == 200
    assert "# TYPE jobhive_jobs_submitted_total counter" in reply.text
    assert "_created" not in reply.text  # (the library's creation times are left out)
    # /api/v1/status stays open: it gives no more than the pages show.
    assert http.get(served.url + "/api/v1/status").status_code == 200


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed (scripts/setup.sh)")
def test_two_servers_on_one_redis_count_their_own_and_share_the_queue(
    start_server, redis_url, tmp_path, http
):
    endpoints, servers = endpoints_for_tests(tmp_path / "endpoints-redis"), []
    for name in ("red-a", "red-b"):
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[SERVER]\nserver_name = "{name}"\nfiles_dir = "{tmp_path / "files"}"\n')
        servers.append(start_server("--store", redis_url, "--config", str(config),
                                    endpoints=endpoints))
    a, b = servers
    worker = RawWorker(http, b.url, "red-worker")  # polls B
    jobs = [submit(http, a.url, "echo", text=str(i)).json() for i in range(2)]
    for job in worker.take(max_batch=2):
        assert worker.result(job, outputs={"text": "ok"}).status_code == 200  # on B
    for job in jobs:
        wait_status(http, a.url, job["job_id"], ("done",))
    submit(http, a.url, "nobody", text="waits")
    on_a, on_b = scrape(http, a.url), scrape(http, b.url)

    echo_a = {"server": "red-a", "endpoint": "echo"}
    echo_b = {"server": "red-b", "endpoint": "echo"}
    assert value(on_a, "jobhive_jobs_submitted_total", **echo_a) == 2  # submitted on A
    assert value(on_b, "jobhive_jobs_submitted_total", **echo_b) == 0
    assert value(on_b, "jobhive_jobs_finished_total", **echo_b, outcome="done") == 2  # on B
    assert value(on_a, "jobhive_jobs_finished_total", **echo_a, outcome="done") == 0
    assert value(on_b, "jobhive_job_latency_seconds_count", **echo_b) == 2
    assert 0 < value(on_b, "jobhive_job_run_seconds_sum", **echo_b) < 30
    # Each server's series carry its own name only.
    for samples, name in ((on_a, "red-a"), (on_b, "red-b")):
        assert {dict(labels).get("server") for _, labels in samples} == {name, None}
    # The queue and the workers are the shared store's: the same on both.
    for samples in (on_a, on_b):
        assert value(samples, "jobhive_jobs_queued", endpoint="nobody") == 1
        assert value(samples, "jobhive_workers_online", endpoint="echo") == 1
