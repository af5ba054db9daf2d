"""The shortest path through the whole system: one job, one worker, one request."""

def test_submit_and_wait_returns_the_echo(start_server, start_worker, http):
    server = start_server()
    start_worker(server.url)
    reply = http.post(f"{server.url}/api/v1/endpoints/echo/jobs?wait=10",
                      json={"inputs": {"text": "hello"}})
    assert reply.status_code == 200, reply.text
    job = reply.json()
    assert job["status"] == "done"
    assert job["outputs"]["text"] == "hello"
