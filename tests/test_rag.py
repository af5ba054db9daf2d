"""rag_search and rag_chat end to end: an index built by the real `jobhive-index` CLI (tiny random
CLIP, real MiniLM), the real server, `jobhive-worker rag` and `jobhive-worker llama4 --index`
(conftest's rag_server, shared with test_browser_rag.py, over conftest's rag_corpus).

With a random CLIP, image-to-image search still works (an image is nearest to itself) but text
to image does not; the text side runs on the real sentence model, so text queries are real.
"""

from __future__ import annotations

import base64
import io
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import wait_until
from e2e_http import assert_declared, assert_error, explained, read_events
from PIL import Image

from workers.rag import grounding as rag
from workers.runtime.images import data_url


def search(http, url, **inputs):
    reply = http.post(f"{url}/api/v1/endpoints/rag_search/jobs?wait=30", json={"inputs": inputs})
    assert reply.status_code == 200, reply.text
    job = reply.json()
    assert job["status"] == "done", job
    assert_declared(http, url, "rag_search", job["outputs"])
    return job["outputs"]


def image_data_url(path: Path) -> str:
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.save(buffer, format="PNG")
    return data_url(buffer.getvalue(), "png")


# ----- rag_search


@pytest.mark.timeout(120)  # run alone, this file's first test builds the index, starts both workers
def test_a_text_query_finds_its_paragraph_first(rag_server, http):
    server, search_worker, _ = rag_server
    with explained(server, search_worker):
        outputs = search(http, server.url, text="lightweight red sneakers for road running",
                         kinds="text", top_k=3)
    hits = outputs["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["source"].endswith("shoes.md") and "Ember Sprint" in hits[0]["text"], hits[0]
    assert all(h["kind"] == "text" for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert outputs["search_ms"] > 0


def test_an_html_page_is_indexed_without_its_script(rag_server, http):
    server, _, _ = rag_server
    hits = search(http, server.url, text="constellation with a belt of three stars",
                  kinds="text", top_k=5)["hits"]
    assert hits[0]["source"].endswith("stars.html") and "Orion" in hits[0]["text"]
    assert not any("never indexed" in (h["text"] or "") for h in hits)


def test_an_image_query_finds_the_same_image_first(rag_server, http, rag_corpus):
    server, _, _ = rag_server
    hits = search(http, server.url, image=image_data_url(rag_corpus / "blue-ball.jpg"),
                  kinds="image", top_k=2)["hits"]
    assert hits[0]["source"].endswith("blue-ball.jpg"), hits
    assert hits[0]["thumbnail"].startswith("data:image/")
    assert all(h["kind"] == "image" for h in hits)


def test_text_and_image_together_return_both_kinds(rag_server, http, rag_corpus):
    server, _, _ = rag_server
    hits = search(http, server.url, text="sourdough loaf", image=image_data_url(
        rag_corpus / "red-box.png"), top_k=6)["hits"]
    assert {h["kind"] for h in hits} == {"text", "image"}
    assert any(h["source"].endswith("bread.txt") for h in hits[:3]), hits


@pytest.mark.parametrize("inputs", [{}, {"text": ""}, {"top_k": 3}])
def test_a_query_needs_text_or_an_image(rag_server, http, inputs):
    server, _, _ = rag_server
    reply = http.post(f"{server.url}/api/v1/endpoints/rag_search/jobs", json={"inputs": inputs})
    body = assert_error(reply, 400, "text", "image")
    assert "at least one of" in body["fields"]["text"]


def test_a_query_image_that_is_not_an_image_is_refused(rag_server, http):
    server, _, _ = rag_server
    bogus = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    reply = http.post(f"{server.url}/api/v1/endpoints/rag_search/jobs",
                      json={"inputs": {"image": bogus}})
    body = assert_error(reply, 400, "image")
    assert "not an image" in body["fields"]["image"] and "text" not in body["fields"]


# ----- rag_chat


def test_rag_chat_streams_an_answer_with_numbered_sources(rag_server, http):
    server, _, chat_worker = rag_server
    chat = [{"role": "user", "content": "How do I bake sourdough with a crackling crust?"}]
    with explained(server, chat_worker), ThreadPoolExecutor(1) as pool:
        # The worker paused until the stream is open: a short reply could otherwise end before
        # the stream began, and the stream would hold only its result.
        chat_worker.proc.send_signal(signal.SIGSTOP)
        try:
            reply = http.post(f"{server.url}/api/v1/endpoints/rag_chat/jobs", json={"inputs": {
                "chat_context": chat, "num_sources": 3, "max_new_tokens": 24, "seed": 3}})
            assert reply.status_code == 202, reply.text
            collected: list = []
            following = pool.submit(read_events, f"{server.url}/api/v1/jobs/"
                                    f"{reply.json()['job_id']}/events", collected=collected)
            wait_until(lambda: collected)  # (its first event: queued, or taken)
        finally:
            chat_worker.proc.send_signal(signal.SIGCONT)
        events = following.result(timeout=60)
    assert events[-1].event == "result", events[-1]
    outputs = events[-1].data["outputs"]
    sources = outputs["sources"]
    assert [s["n"] for s in sources] == [1, 2, 3]
    assert sources[0]["source"].endswith("bread.txt") and "crust" in sources[0]["text"]
    assert isinstance(outputs["text"], str) and outputs["finish_reason"] in ("stop", "length")
    assert set(outputs["cited"]) <= {1, 2, 3}
    streamed = [e.data["progress_outputs"] for e in events
                if e.event == "progress" and e.data["progress_outputs"]]
    assert streamed and all(p["sources"] == sources for p in streamed)
    assert_declared(http, server.url, "rag_chat", outputs, streamed)


def test_rag_chat_without_a_question_fails_with_the_reason(rag_server, http):
    server, _, _ = rag_server
    chat = [{"role": "system", "content": "Be brief."}]
    reply = http.post(f"{server.url}/api/v1/endpoints/rag_chat/jobs?wait=30",
                      json={"inputs": {"chat_context": chat}})
    job = reply.json()
    assert job["status"] == "failed" and "user message" in job["error"], job


# ----- grounding (no model needed)

SOURCES = [
    {"n": 1, "kind": "text", "source": "a.md", "text": "Alpha.", "thumbnail": None, "score": 0.5},
    {"n": 2, "kind": "text", "source": "b.md", "text": "Beta.", "thumbnail": None, "score": 0.4},
]


def test_grounded_messages_number_the_sources_in_the_system_prompt():
    chat = [{"role": "user", "content": "What is alpha?"}]
    grounded = rag.grounded_messages(chat, SOURCES)
    assert grounded[1:] == chat and grounded[0]["role"] == "system"
    assert "[1] (a.md) Alpha." in grounded[0]["content"]
    assert "[2] (b.md) Beta." in grounded[0]["content"]
    # The user's own system prompt stays first, the sources after it.
    own = [{"role": "system", "content": "Be brief."}, *chat]
    merged = rag.grounded_messages(own, SOURCES)
    assert len(merged) == 2 and merged[0]["content"].startswith("Be brief.\n\n")
    assert rag.question_of(own) == "What is alpha?"


def test_cited_lists_the_sources_an_answer_cites_once_in_order():
    assert rag.cited("See [2], and [1][2]; not [7] or [x].", SOURCES) == [2, 1]
    assert rag.cited("no citations", SOURCES) == []


def test_the_endpoint_list_names_the_models_behind_search_and_chat(rag_server, http):
    server = rag_server[0]
    listing = http.get(f"{server.url}/api/v1/endpoints").json()["endpoints"]
    models = {e["name"]: e["models"] for e in listing}
    on_cpu = {"dtype": "float32", "device": "cpu", "workers": 1}
    clip = {"name": "tiny-clip", "random": True, **on_cpu}  # the index's, built --clip tiny
    text = {"name": "all-MiniLM-L6-v2", "random": False, **on_cpu}  # real weights: never random
    assert models["rag_search"] == [clip, text]
    assert models["rag_chat"] == [
        {"name": "tiny-llama4", "dtype": "bfloat16", "device": "cpu", "random": True,
         "workers": 1}, clip, text]
