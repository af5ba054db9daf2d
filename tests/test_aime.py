"""AIME wire compatibility end to end: a real jobhive server started with an AIME endpoint
config (tests/data/aime/echo), spoken to over HTTP the way AIME's worker library
(aime_api_worker_interface 0.9: batch job requests, progress posts with progress images, results,
server-status checks) and AIME's client libraries (login, submit with wait_for_result,
progress polls with the key) speak, plus a jobhive worker on the same queue.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Process, spawn_server
from PIL import Image

DATA = Path(__file__).parent / "data" / "aime"
CLIENT_KEY = "aime-client-key"
OTHER_KEY = "aime-other-key"
WORKER_KEY = "aime-echo-worker-key"
NOT_LOGGED_IN = "client session authentication key not registered in API Server"


def jpeg_data_url(size_px: int = 8) -> str:
    """A data URL as AIME's worker library makes one (`data:image/JPEG;base64,...`), of
    noise (so that a large one is large)."""
    buffer = io.BytesIO()
    Image.effect_noise((size_px, size_px), 80).convert("RGB").save(buffer, format="JPEG")
    return "data:image/JPEG;base64," + base64.b64encode(buffer.getvalue()).decode()


class AimeWorker:
    """The requests aime_api_worker_interface sends, field for field."""

    def __init__(self, http: httpx.Client, name: str = "testhost#0_1xTest_GPU",
                 key: str = WORKER_KEY, job_type: str = "echo") -> None:
        self.http, self.name, self.key, self.job_type = http, name, key, job_type

    def request(self, max_job_batch: int = 1, request_timeout: float = 3) -> dict[str, Any]:
        reply = self.http.post("/worker_job_request", json={
            "auth": self.name, "job_type": self.job_type, "auth_key": self.key,
            "version": "AIME API Worker Interface 0.9.12", "worker_version": 0,
            "gpu_name": "Test_GPU", "num_gpus": 1, "request_timeout": request_timeout,
            "model_label": "echo", "model_quantization": None, "model_size": None,
            "model_family": None, "model_type": None, "model_repo_name": None,
            "max_job_batch": max_job_batch, "framework": "none", "framework_version": None,
            "pytorch_version": None,
        }, timeout=request_timeout + 5)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def progress(self, job: dict[str, Any], progress: float, data: dict[str, Any]) -> Any:
        """One job's progress, as `send_progress` posts it (an object, with auth)."""
        return self.http.post("/worker_job_progress", json={
            "job_id": job["job_id"], "auth": self.name, "job_type": self.job_type,
            "auth_key": self.key, "progress": progress,
            "progress_data": {**data, "version": "AIME 0.9.12", "auth": self.name},
        }).json()

    def batch_progress(self, jobs: list[dict[str, Any]], progress: float) -> Any:
        """A batch's progress, as `send_batch_progress` posts it (a list, no auth)."""
        return self.http.post("/worker_job_progress", json=[{
            "job_id": job["job_id"], "job_type": self.job_type, "auth_key": self.key,
            "progress": progress, "progress_data": {"progress_message": f"at {progress}"},
        } for job in jobs]).json()

    def result(self, job: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        reply = self.http.post("/worker_job_result", json={
            **outputs, "version": "AIME 0.9.12", "auth": self.name, "job_id": job["job_id"],
            "job_type": self.job_type, "auth_key": self.key,
        })
        assert reply.status_code == 200, reply.text
        return reply.json()

    def serve_one(self, text_suffix: str = " (aime)") -> None:
        """Takes one job, reports progress with a preview image, posts its result."""
        cmd = self.request(request_timeout=5)
        assert cmd["cmd"] == "job", cmd
        (job,) = cmd["job_data"]
        assert self.progress(job, 50, {"progress_images": [jpeg_data_url()],
                                       "progress_message": "half"})[0]["success"]
        assert self.result(job, {"text": job["text"] + text_suffix,  # over 4 KiB: on disk
                                 "images": [jpeg_data_url(96)]}) == {"cmd": "ok"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    folder = tmp_path_factory.mktemp("aime")
    shutil.copytree(DATA / "echo", folder / "endpoints" / "echo")
    process = spawn_server(folder / "endpoints", folder / "jobs.sqlite3")
    yield process
    process.stop()


@pytest.fixture
def aime(server: Process) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + "/aime", timeout=20) as client:
        yield client


@pytest.fixture
def worker(aime: httpx.Client) -> AimeWorker:
    return AimeWorker(aime)


def submit(aime: httpx.Client, **params: Any) -> httpx.Response:
    return aime.post("/aime_echo", json={"key": CLIENT_KEY, "wait_for_result": False, **params})


def progress(aime: httpx.Client, job_id: str, key: str | None = CLIENT_KEY) -> httpx.Response:
    return aime.get("/aime_echo/progress", params={"job_id": job_id,
                                                   **({"key": key} if key else {})})


def test_start_up_lists_the_keys_it_does_not_support(server: Process) -> None:
    server.wait_for_output(r"AIME config key not supported: .*aime_api_endpoint.cfg: "
                           r"ENDPOINT.demo_url: not supported")
    server.wait_for_output(r"INPUTS.image.size.minimum: not supported")


def test_login_then_a_waiting_request_gets_the_result_of_an_aime_worker(
    aime: httpx.Client, worker: AimeWorker
) -> None:
    login = aime.get("/aime_echo/login", params={"user": "aime", "key": CLIENT_KEY,
                                                 "version": "Python AIME API Client 0.8"})
    assert login.status_code == 200 and login.json()["success"]
    session_key = login.json()["client_session_auth_key"]
    serving = threading.Thread(target=worker.serve_one)
    serving.start()
    reply = aime.post("/aime_echo", json={"text": "hello", "client_session_auth_key":
                                          session_key, "key": None, "wait_for_result": True})
    serving.join(10)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["success"] and result["ep_version"] == 2
    assert result["text"] == "hello (aime)" and result["images"][0].startswith("data:image/")
    assert result["auth"] == worker.name  # [CLIENTS] provide_worker_meta_data
    assert result["worker_interface_version"] == "AIME 0.9.12"
    assert result["total_duration"] >= result["compute_duration"] >= 0
    bad = aime.post("/aime_echo", json={"text": "x", "client_session_auth_key": "forged"})
    assert bad.status_code == 401 and NOT_LOGGED_IN in bad.json()["error"]
    wrong = aime.get("/aime_echo/login", params={"key": "not-a-key"})
    assert wrong.status_code == 401 and wrong.json()["success"] is False


def test_progress_polls_see_queue_progress_images_and_the_result_every_time(
    aime: httpx.Client, worker: AimeWorker, server: Process
) -> None:
    job_id = submit(aime, text="poll me").json()["job_id"]
    queued = progress(aime, job_id).json()
    assert queued["job_state"] == "queued" and queued["progress"]["queue_position"] == 1
    (job,) = worker.request()["job_data"]
    assert job["job_id"].startswith(job_id + "#") and job["text"] == "poll me"
    assert worker.progress(job, 40, {"progress_images": [jpeg_data_url()]}) == [
        {"success": True, "job_id": job["job_id"], "canceled": False}]
    running = progress(aime, job_id).json()
    assert running["job_state"] == "processing" and running["progress"]["progress"] == 40
    assert running["progress"]["queue_position"] == 0
    assert running["progress"]["num_workers_online"] >= 1
    assert running["progress"]["progress_data"]["progress_images"][0].startswith("data:image/")
    assert worker.result(job, {"text": "done"}) == {"cmd": "ok"}
    for _ in range(2):  # AIME gives the result once; jobhive until its result_lifetime
        done = progress(aime, job_id).json()
        assert done["job_state"] == "done" and done["job_result"]["text"] == "done"
    other = progress(aime, job_id, key=OTHER_KEY)  # results are the submitting key's
    assert other.status_code == 403 and other.json()["success"] is False
    assert progress(aime, job_id, key=None).status_code == 401
    assert progress(aime, "0123456789abcdef").status_code == 404
    native = httpx.get(f"{server.url}/api/v1/jobs/{job_id}",
                       headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert native.json()["status"] == "done"  # the same job, through jobhive's own API


def test_a_batch_request_takes_what_is_queued_and_reports_in_one_post(
    aime: httpx.Client, worker: AimeWorker
) -> None:
    ids = [submit(aime, text=f"job {i}").json()["job_id"] for i in range(3)]
    cmd = worker.request(max_job_batch=4)
    assert cmd["cmd"] == "job" and cmd["endpoint_name"] == "aime_echo"
    assert cmd["final_output_descriptions"]["images"]["format"] == "JPEG"
    assert "progress_images" in cmd["progress_output_descriptions"]
    jobs = cmd["job_data"]
    assert [j["job_id"].split("#")[0] for j in jobs] == ids  # in queue order
    answers = worker.batch_progress(jobs, 10)
    assert [a["job_id"] for a in answers] == [j["job_id"] for j in jobs]
    assert all(a["success"] and not a["canceled"] for a in answers)
    for job in jobs:
        assert worker.result(job, {"text": job["text"]}) == {"cmd": "ok"}
    assert all(progress(aime, i).json()["job_state"] == "done" for i in ids)


def test_a_cancel_reaches_the_aime_worker_and_its_result_is_turned_away(
    aime: httpx.Client, worker: AimeWorker, server: Process
) -> None:
    job_id = submit(aime, text="cancel me").json()["job_id"]
    (job,) = worker.request()["job_data"]
    canceled = httpx.delete(f"{server.url}/api/v1/jobs/{job_id}",
                            headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert canceled.json()["status"] == "canceled"
    assert worker.progress(job, 60, {})[0]["canceled"] is True
    assert worker.result(job, {"text": "too late"})["cmd"] == "warning"
    done = progress(aime, job_id).json()
    assert (done["job_state"], done["status"]) == ("done", "canceled")
    assert done["job_result"]["error"]


def test_a_silent_aime_worker_loses_its_job_to_another(aime: httpx.Client) -> None:
    silent, keeper = AimeWorker(aime, "host-a#0_1xGPU"), AimeWorker(aime, "host-b#0_1xGPU")
    job_id = submit(aime, text="requeue me").json()["job_id"]
    kept_id = submit(aime, text="keep me").json()["job_id"]
    (lost,) = silent.request()["job_data"]
    (kept,) = keeper.request()["job_data"]
    taken: list[dict[str, Any]] = []
    waiting = threading.Thread(  # another worker, given the job once the 1.5 s lease expires
        target=lambda: taken.extend(AimeWorker(aime, "host-c#0").request(
            request_timeout=6)["job_data"]))
    waiting.start()
    renewals = 0
    while waiting.is_alive():  # meanwhile progress renews the other job's lease
        assert keeper.progress(kept, 50, {})[0]["success"]
        renewals += 1
        waiting.join(0.4)
    assert renewals >= 4  # (1.6 s and more: past its lease)
    (again,) = taken
    assert again["job_id"].split("#")[0] == job_id and again["job_id"] != lost["job_id"]
    assert silent.progress(lost, 10, {})[0]["success"] is False  # lease lost
    assert silent.result(lost, {"text": "late"})["cmd"] == "warning"
    assert keeper.result(kept, {"text": "kept"}) == {"cmd": "ok"}
    assert keeper.result(again, {"text": "second"}) == {"cmd": "ok"}
    assert progress(aime, job_id).json()["job_result"]["text"] == "second"
    assert progress(aime, kept_id).json()["job_result"]["text"] == "kept"


def test_refused_workers_are_told_why_in_the_reply_aimes_worker_acts_on(
    aime: httpx.Client,
) -> None:
    wrong_key = AimeWorker(aime, key="This_is_an_invalid_auth_key").request()
    assert wrong_key["cmd"] == "error" and "Worker not authorized" in wrong_key["msg"]
    wrong_type = AimeWorker(aime, job_type="This_is_an_invalid_job_type").request()
    assert wrong_type["cmd"] == "error" and "No job queue for job_type" in wrong_type["msg"]
    status = aime.post("/worker_check_server_status",
                       json={"auth_key": WORKER_KEY, "job_type": "echo"}).json()
    assert status["job_type_present"] and status["key_valid"]
    status = aime.post("/worker_check_server_status",
                       json={"auth_key": "bad", "job_type": "echo"}).json()
    assert status["key_valid"] is False
    login = aime.post("/worker_login", json={
        "worker_parameters": {"auth": "w#0", "job_type": "echo", "auth_key": WORKER_KEY,
                              "max_batch_size": 8, "gpu_name": "Test_GPU"},
        "model_parameters": {"label": "echo"}})
    assert login.status_code == 200 and login.json()["success"]
    refused = aime.post("/worker_login", json={"worker_parameters": {
        "auth": "w#0", "job_type": "echo", "auth_key": "bad"}})
    assert refused.status_code == 401 and refused.json()["success"] is False
    details = aime.get("/api/endpoints/aime_echo").json()
    assert any(w["name"] == "w#0" and w["max_batch_size"] == 8 for w in details["workers"])


def test_inputs_as_aimes_clients_send_them(aime: httpx.Client, worker: AimeWorker) -> None:
    by_get = aime.get("/aime_echo", params={
        "key": CLIENT_KEY, "wait_for_result": "false", "text": "get", "steps": "2",
        "delay_s": "0.5", "shout": "true", "size": "500", "mode": "medium"})
    assert by_get.status_code == 200, by_get.text
    chat = json.dumps([{"role": "user", "content": "hi"}])  # the JS client's JSON text
    assert submit(aime, text="chat", chat_context=chat).status_code == 200
    (first,) = worker.request()["job_data"]
    assert (first["steps"], first["delay_s"], first["shout"]) == (2, 0.5, True)
    assert (first["size"], first["mode"]) == (496, "fast")  # auto_convert, as configured
    (second,) = worker.request()["job_data"]
    assert second["chat_context"] == [{"role": "user", "content": "hi"}]
    for job in (first, second):
        worker.result(job, {"text": "ok"})
    both = submit(aime, text="x", chat_context=chat, text_context="plain")
    assert both.status_code == 400 and "text_context" in both.json()["fields"]


def test_hostile_input_gets_a_4xx_naming_the_field(
    aime: httpx.Client, worker: AimeWorker
) -> None:
    bad = submit(aime, text="x" * 201, steps="many", bogus=1)
    assert bad.status_code == 400 and bad.json()["success"] is False
    assert set(bad.json()["fields"]) == {"text", "steps", "bogus"}
    assert submit(aime, text="x", wait_for_result="maybe").status_code == 400
    assert submit(aime, text="x", chat_context="[not json").status_code == 400
    assert aime.post("/aime_echo", content=b"{", headers={"Content-Type": "application/json"}
                     ).status_code == 400
    assert aime.post("/aime_echo", json=[1, 2]).status_code == 400
    huge = aime.post("/aime_echo", json={"key": CLIENT_KEY, "text": "x" * (40 << 20)})
    assert huge.status_code == 413
    assert submit(aime, text="x", key="k" * 2000).status_code == 400
    assert aime.put("/aime_echo", json={}).status_code == 405
    assert aime.get("/no_such_endpoint").status_code == 404
    forged = worker.result({"job_id": "0123456789abcdef#beef"}, {"text": "x"})
    assert forged["cmd"] == "warning"
    no_lease = aime.post("/worker_job_progress", json=[{
        "job_id": "no-lease", "auth_key": WORKER_KEY, "progress": 1}])
    assert no_lease.status_code == 400 and "[0].job_id" in no_lease.json()["fields"]
    wrong_key = aime.post("/worker_job_progress", json={
        "job_id": "a#b", "auth_key": "bad", "progress": 1})
    assert wrong_key.status_code == 401
    batch = aime.post("/worker_job_request", json={
        "auth": "w", "job_type": "echo", "auth_key": WORKER_KEY, "max_job_batch": "8"})
    assert batch.status_code == 400 and "max_job_batch" in batch.json()["fields"]


def test_endpoint_list_details_and_key_validation(aime: httpx.Client) -> None:
    assert aime.get("/api/endpoints").json() == {"endpoints": ["aime_echo"]}
    assert aime.get("/api/endpoints", params={"key": CLIENT_KEY}).json()["endpoints"] == [
        "aime_echo"]
    assert aime.get("/api/endpoints", params={"key": "nope"}).status_code == 401
    details = aime.get("/api/endpoints/aime_echo").json()
    assert (details["name"], details["category"], details["http_methods"]) == (
        "aime_echo", "test", ["GET", "POST"])
    assert details["parameter_description"]["input"]["steps"]["type"] == "int"
    assert aime.get("/api/validate_key", params={"key": CLIENT_KEY}).json() == {
        "success": True, "error": None}
    assert aime.get("/api/validate_key", params={"key": "x"}).json()["success"] is False


def test_a_jobhive_worker_serves_the_same_queue(
    aime: httpx.Client, server: Process, start_worker: Any
) -> None:
    start_worker(server.url, "--worker-id", "jobhive-noop", "--poll-wait-s", "1",
                 key=WORKER_KEY)
    reply = aime.post("/aime_echo", json={"key": CLIENT_KEY, "text": "native worker"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["text"] == "native worker"
    assert reply.json()["worker_id"] == "jobhive-noop"


def test_two_servers_on_one_redis_share_aime_jobs_and_logins(
    redis_url: str, tmp_path: Path
) -> None:
    shutil.copytree(DATA / "echo", tmp_path / "endpoints" / "echo")
    config = tmp_path / "server.toml"
    config.write_text(f'[SERVER]\nfiles_dir = "{tmp_path / "files"}"\n')
    servers = [spawn_server(tmp_path / "endpoints", tmp_path / "unused.sqlite3", "--store",
                            redis_url, "--config", str(config)) for _ in range(2)]
    try:
        with httpx.Client(base_url=servers[0].url + "/aime", timeout=20) as first, \
                httpx.Client(base_url=servers[1].url + "/aime", timeout=20) as second:
            session_key = first.get("/aime_echo/login", params={"key": CLIENT_KEY}).json()[
                "client_session_auth_key"]
            job_id = second.post("/aime_echo", json={  # a login made on the other server
                "text": "shared", "client_session_auth_key": session_key,
                "wait_for_result": False}).json()["job_id"]
            worker = AimeWorker(first)
            (job,) = worker.request()["job_data"]
            assert worker.result(job, {"text": "from the first"}) == {"cmd": "ok"}
            done = progress(second, job_id).json()
            assert done["job_result"]["text"] == "from the first"
    finally:
        for server in servers:
            server.stop()
