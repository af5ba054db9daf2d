"""`--log-format json` (jobhive/logs.py): one JSON object per line, with the job lines' fields."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from api_server.config import ConfigError, load_server_config
from jobhive.logs import JsonFormatter, formatter, message_fields
from workers.runtime.supervisor import say


def test_a_job_line_gives_its_fields_with_numbers_and_seconds():
    assert message_fields("job 3f2a running endpoint=echo worker=w1 attempt=1 waited=0.004s") == {
        "job_id": "3f2a", "event": "running", "endpoint": "echo", "worker": "w1", "attempt": 1,
        "waited_s": 0.004,
    }


def test_a_quoted_error_is_one_field_whatever_it_holds():
    fields = message_fields("job 9 failed endpoint=echo worker=- run=0.002s total=0.010s "
                            "error='boom: x=1 y=\\'2\\''")
    assert fields["error"] == "boom: x=1 y='2'"
    assert fields["total_s"] == 0.01
    assert "x" not in fields and "y" not in fields


def test_a_worker_line_names_the_worker_and_plain_text_gives_nothing():
    assert message_fields("worker demo-echo connected from 127.0.0.1 for echo") == {
        "worker": "demo-echo"}
    assert message_fields("store opened: 0 jobs, 0 queued") == {}


def test_a_record_is_one_line_with_extra_fields_and_its_exception():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("jobhive.jobs", logging.ERROR, __file__, 1,
                                   "job %s requeued endpoint=%s attempt=%d: %s",
                                   ("j1", "echo", 2, "lease expired"), sys.exc_info())
    record.lease_s = 30.0  # as `extra=` sets it
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["time"].endswith("Z") and data["level"] == "ERROR"
    assert data["logger"] == "jobhive.jobs"
    assert data["message"] == "job j1 requeued endpoint=echo attempt=2: lease expired"
    assert (data["job_id"], data["event"], data["attempt"]) == ("j1", "requeued", 2)
    assert data["lease_s"] == 30.0
    assert "ValueError: bad" in data["exception"]


def test_an_unknown_format_is_refused_by_name():
    with pytest.raises(ValueError, match=r"text, json.*'xml'"):
        formatter("xml")


def test_server_and_worker_log_json_lines_with_the_job_fields(start_server, start_worker, http):
    server = start_server("--log-format", "json")
    worker = start_worker(server.url, "--log-format", "json", "--worker-id", "w-json")
    reply = http.post(f"{server.url}/api/v1/endpoints/echo/jobs?wait=10",
                      json={"inputs": {"text": "hello"}})
    assert reply.json()["status"] == "done", reply.text
    assert worker.stop() == 0 and server.stop() == 0
    # The fixtures merge stdout into stderr: stdout's lines are the server's `jobhive-server:`
    # messages (endpoints, listening on, shutting down); every other line is JSON.
    logs = {}
    for name, process in (("server", server), ("worker", worker)):
        logs[name] = [json.loads(line) for line in process.output
                      if not line.startswith("jobhive-server: ")]
        assert logs[name], process.text
        assert all({"time", "level", "logger", "message"} <= set(e) for e in logs[name])
    jobs = {e["event"]: e for e in logs["server"] if "job_id" in e}
    assert {"running", "done"} <= set(jobs)  # (no `queued` line: a waiting worker took it)
    running = jobs["running"]
    assert running["endpoint"] == "echo" and running["worker"] == "w-json"
    assert running["attempt"] == 1 and isinstance(running["waited_s"], float)
    assert isinstance(jobs["done"]["run_s"], float) and isinstance(jobs["done"]["total_s"], float)


def test_the_supervisors_lines_follow_the_format(capsys):
    say("child p0 (pid 7) exited with status 1; restarting in 1.0 s", "json", "WARNING")
    say("all children have exited; exiting with status 0")
    json_line, text_line = capsys.readouterr().err.splitlines()
    data = json.loads(json_line)
    assert (data["level"], data["logger"]) == ("WARNING", "jobhive.supervisor")
    assert data["message"].startswith("child p0 (pid 7) exited")
    assert text_line == "jobhive-worker: all children have exited; exiting with status 0"


def test_server_toml_sets_the_format_and_refuses_an_unknown_one(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text('[SERVER]\nlog_format = "json"\n')
    assert load_server_config(path).log_format == "json"
    path.write_text('[SERVER]\nlog_format = "xml"\n')
    with pytest.raises(ConfigError, match=r"SERVER.log_format: must be one of text, json"):
        load_server_config(path)
