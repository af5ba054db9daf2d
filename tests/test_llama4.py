"""The llama4_chat endpoint end to end: the real server and a real `jobhive-worker llama4 --tiny`.

The tiny model has random weights: its text is gibberish, but it is deterministic for a seed,
which is what these tests lean on (stop strings are cut from a reply generated before). Most
tests share conftest's chat_server with test_browser_chat.py.
"""

from __future__ import annotations

import itertools
import re
import threading

import pytest
from conftest import LLAMA4_WORKER_KEY, wait_until
from e2e_http import assert_declared, explained, read_events, whole_progress

from workers.runtime.model import Job

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}]


def submit(http, url, wait_s: float | None = 30, **inputs):
    inputs.setdefault("chat_context", CHAT)
    query = f"?wait={wait_s}" if wait_s else ""
    reply = http.post(f"{url}/api/v1/endpoints/llama4_chat/jobs{query}", json={"inputs": inputs})
    assert reply.status_code in (200, 202), reply.text
    return reply.json()


def test_tokens_stream_in_order_and_add_up_to_the_result(chat_server, http):
    server, worker = chat_server
    with explained(server, worker):
        job = submit(http, server.url, wait_s=None, max_new_tokens=200, temperature=1.0, seed=7,
                     ignore_eos=True)
        events = read_events(f"{server.url}/api/v1/jobs/{job['job_id']}/events")
        assert events[-1].event == "result", events[-1]
        outputs = events[-1].data["outputs"]
        assert [bool(e.data.get("progress_offsets")) for e in events if e.event == "progress"
                and e.data["progress_outputs"]][:2] == [False, True]  # whole, then parts
        progress = whole_progress(events)
        assert len(progress) >= 2, events  # streamed, not only the result
        assert_declared(http, server.url, "llama4_chat", outputs, progress)
        # Each text is the text so far: a prefix of the next one and of the final text.
        texts = [p["text"] for p in progress]
        texts.append(outputs["text"])
        for before, after in itertools.pairwise(texts):
            assert after.startswith(before)
        tokens = [p["tokens"] for p in progress]
        assert tokens == sorted(tokens) and tokens[-1] <= outputs["generated_tokens"]
        assert outputs["finish_reason"] == "length"
        assert outputs["generated_tokens"] == 200
        assert outputs["prompt_tokens"] > 0 and outputs["tokens_per_s"] > 0
        assert outputs["seed"] == 7
        # Polling sees the same job, done, with the same text.
        polled = http.get(f"{server.url}/api/v1/jobs/{job['job_id']}").json()
        assert polled["status"] == "done" and polled["outputs"]["text"] == outputs["text"]


def test_seed_gives_the_same_text_and_max_new_tokens_ends_it(chat_server, http):
    server, worker = chat_server
    with explained(server, worker):
        first = submit(http, server.url, max_new_tokens=30, temperature=1.0, seed=11,
                       ignore_eos=True)
        again = submit(http, server.url, max_new_tokens=30, temperature=1.0, seed=11,
                       ignore_eos=True)
        other = submit(http, server.url, max_new_tokens=30, temperature=1.0, seed=12,
                       ignore_eos=True)
        assert first["status"] == "done", first
        assert first["outputs"]["text"] == again["outputs"]["text"]
        assert first["outputs"]["text"] != other["outputs"]["text"]
        assert first["outputs"]["generated_tokens"] == 30
        assert first["outputs"]["finish_reason"] == "length"
        # seed -1 picks one, reported so that the reply can be made again.
        chosen = submit(http, server.url, max_new_tokens=20, temperature=1.0, seed=-1)
        replay = submit(http, server.url, max_new_tokens=20, temperature=1.0,
                        seed=chosen["outputs"]["seed"])
        assert chosen["outputs"]["seed"] >= 0
        assert replay["outputs"]["text"] == chosen["outputs"]["text"]


def stop_string_in(text: str) -> str:
    """Three characters of a random reply, from its first half, to stop a replay of it at: a
    stop string is matched on the text as it is (whitespace, U+FFFD and all), so whatever the
    model wrote will do; one without U+FFFD is taken when there is one."""
    assert len(text) >= 8, text  # 200 tokens always decode to more (a token is 1 to 4 bytes)
    starts = range(len(text) // 4, len(text) // 2)
    start = next((i for i in starts if "\ufffd" not in text[i:i + 3]), starts[0])
    return text[start:start + 3]


def test_stop_string_ends_the_reply_before_it(chat_server, http):
    server, worker = chat_server
    with explained(server, worker):
        base = submit(http, server.url, max_new_tokens=200, temperature=1.0, seed=5,
                      ignore_eos=True)["outputs"]
        stop = stop_string_in(base["text"])
        cut = base["text"].find(stop)
        stopped = submit(http, server.url, max_new_tokens=200, temperature=1.0, seed=5,
                         ignore_eos=True, stop=["never-generated", stop])
        assert stopped["status"] == "done", stopped
        assert stopped["outputs"]["finish_reason"] == "stop"
        assert stopped["outputs"]["text"] == base["text"][:cut]
        assert stopped["outputs"]["generated_tokens"] < base["generated_tokens"]
        bad = submit(http, server.url, stop=[""])
        assert bad["status"] == "failed" and "`stop`" in bad["error"], bad


def test_a_late_chat_joins_a_long_one_and_cancel_stops_that(chat_server, http):
    server, worker = chat_server
    with explained(server, worker):
        job = submit(http, server.url, wait_s=None, max_new_tokens=1900, temperature=1.0,
                     ignore_eos=True)
        url = f"{server.url}/api/v1/jobs/{job['job_id']}"
        wait_until(lambda: (http.get(url).json()["progress_outputs"] or {}).get("tokens"), 30)
        # A chat that comes while the long one generates joins its batch: it is done, its
        # result posted, while the long one still runs (continuous batching).
        late = submit(http, server.url, max_new_tokens=5, seed=3, ignore_eos=True)
        assert late["status"] == "done" and late["outputs"]["generated_tokens"] == 5, late
        assert http.get(url).json()["status"] == "running"
        # Canceled, the long one stops mid-stream.
        assert http.delete(url).status_code == 200
        line = worker.wait_for_output(rf"job {job['job_id']} canceled after \d+ tokens", 30)
        assert int(re.search(r"after (\d+) tokens", line).group(1)) < 1000, line
        worker.wait_for_output(rf"job {job['job_id']} was canceled while running", 10)
        assert http.get(url).json()["status"] == "canceled"
        # The worker is free again: the next chat runs.
        assert submit(http, server.url, max_new_tokens=5)["status"] == "done"


def test_over_long_context_is_refused_or_trimmed(chat_server, http):
    server, worker = chat_server
    long_chat = [
        {"role": "system", "content": "You are terse."},
        *[{"role": role, "content": "hello world " * 120}
          for _ in range(5) for role in ("user", "assistant")],
        {"role": "user", "content": "And now?"},
    ]
    with explained(server, worker):
        refused = submit(http, server.url, chat_context=long_chat, max_new_tokens=10)
        assert refused["status"] == "failed", refused
        assert "window is 2048 tokens" in refused["error"] and "trim_context" in refused["error"]
        trimmed = submit(http, server.url, chat_context=long_chat, max_new_tokens=100,
                         trim_context=True)
        assert trimmed["status"] == "done", trimmed
        assert trimmed["outputs"]["prompt_tokens"] + 100 <= 2048
        # The worker is still serving.
        assert submit(http, server.url, max_new_tokens=3)["status"] == "done"


def test_a_batch_of_chats_runs_together(start_server, start_worker, tiny_llama4_dir, http,
                                        monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    server = start_server()
    seeds = [1, 2, 3, 4]
    jobs = [submit(http, server.url, wait_s=None, max_new_tokens=40 + 10 * i, temperature=1.0,
                   seed=seed, ignore_eos=True,
                   chat_context=[{"role": "user", "content": "hi " * (1 + 5 * i)}])
            for i, seed in enumerate(seeds)]
    worker = start_worker(server.url, "--tiny", "--tiny-dir", str(tiny_llama4_dir),
                          "--max-batch", "4",
                          kind="llama4", key=LLAMA4_WORKER_KEY)
    with explained(server, worker):
        done = [wait_until(lambda j=j: _finished(http, server.url, j), 30) for j in jobs]
        assert [d["status"] for d in done] == ["done"] * 4, done
        # One poll took all four: they started together.
        starts = [d["started_at_ms"] for d in done]
        assert max(starts) - min(starts) < 100, starts
        for i, d in enumerate(done):
            assert d["outputs"]["generated_tokens"] == 40 + 10 * i
            assert d["outputs"]["finish_reason"] == "length"


def _finished(http, url, job):
    data = http.get(f"{url}/api/v1/jobs/{job['job_id']}?wait=5").json()
    return data if data["status"] in ("done", "failed", "canceled") else None


def test_4bit_loads_and_serves_the_tiny_model(start_server, start_worker, tiny_llama4_dir, http,
                                              monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    server = start_server()
    worker = start_worker(server.url, "--tiny", "--tiny-dir", str(tiny_llama4_dir),
                          "--quantize", "4bit",
                          kind="llama4", key=LLAMA4_WORKER_KEY)
    with explained(server, worker):
        worker.wait_for_output(r"4-bit NF4 in [1-9]\d* layers")
        job = submit(http, server.url, max_new_tokens=8, seed=1, ignore_eos=True)
        assert job["status"] == "done", job
        assert job["outputs"]["generated_tokens"] == 8


def test_concurrent_streams_each_get_their_own_text(chat_server, http):
    """Two chats in one batch, each followed over SSE, each streams only its own text."""
    server, worker = chat_server
    results: dict[int, list] = {}

    def follow(i: int, job_id: str) -> None:
        results[i] = read_events(f"{server.url}/api/v1/jobs/{job_id}/events")

    with explained(server, worker):
        # ignore_eos: each reply is 150 sampled tokens, never one that ends at once (two empty
        # replies would be equal whatever the streams did).
        jobs = [submit(http, server.url, wait_s=None, max_new_tokens=150, temperature=1.0,
                       seed=seed, ignore_eos=True) for seed in (21, 22)]
        threads = [threading.Thread(target=follow, args=(i, j["job_id"]))
                   for i, j in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        finals = [results[i][-1].data["outputs"]["text"] for i in range(2)]
        assert finals[0] != finals[1]
        for i in range(2):
            streamed = [p["text"] for p in whole_progress(results[i])]
            assert streamed, results[i]
            assert all(finals[i].startswith(text) for text in streamed)


@pytest.fixture(scope="module")
def local_worker(tiny_llama4_dir):
    """The worker class in this process (float32 on CPU), for what HTTP cannot reach; loaded
    once for the module (a test that patches it does so with monkeypatch, undone after it)."""
    from workers.llama4.worker import Llama4Settings, Llama4Worker
    from workers.tiny.llama4 import build_tiny_llama4

    folder = build_tiny_llama4(tiny_llama4_dir)
    worker = Llama4Worker(Llama4Settings(model=folder, tiny=True, device="cpu", dtype="float32"))
    worker.load()
    return worker


def local_job(job_id: str, content: str = "Hello!", **inputs) -> Job:
    inputs = {"chat_context": [{"role": "user", "content": content}], "max_new_tokens": 40,
              "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 1, "stop": [],
              "ignore_eos": True, **inputs}
    return Job(id=job_id, endpoint="llama4_chat", inputs=inputs, lease_id="lease")


def test_a_batched_chat_gives_what_it_gives_alone(local_worker):
    """Left padding, masks and positions are right: greedy rows of different prompt lengths
    produce in a batch exactly what they produce alone."""
    jobs = [local_job("short", "hi"), local_job("long", "hello there, how are you? " * 10)]
    alone = [local_worker.run([job], lambda *a: None)[0]["text"] for job in jobs]
    together = [o["text"] for o in local_worker.run(jobs, lambda *a: None)]
    assert together == alone
    assert alone[0] != alone[1]


class StaggeredFeed:
    """A JobFeed whose jobs arrive at given steps of the worker's loop (take() is called once
    per decoding step); notes the step at which each job finished."""

    def __init__(self, arrivals: dict[int, list[Job]]) -> None:
        self.arrivals = arrivals
        self.steps = 0
        self.outcomes: dict[str, dict] = {}
        self.finished_at_step: dict[str, int] = {}

    def take(self) -> list[Job]:
        self.steps += 1
        return self.arrivals.pop(self.steps - 1, [])

    def finish(self, job: Job, outcome) -> None:
        self.outcomes[job.id] = outcome
        self.finished_at_step[job.id] = self.steps


def test_chats_that_join_a_running_batch_give_what_they_give_alone(local_worker):
    """Continuous batching: chats join a running batch at later steps (their prompts
    prefilled, their caches merged in), leave it as each ends, one is canceled midway; each
    one's tokens, greedy or sampled with its own seed, are those it gives alone."""
    jobs = [
        local_job("greedy", "hi", max_new_tokens=40),
        local_job("sampled", "hello there, how are you? " * 10, temperature=1.0, seed=3,
                  max_new_tokens=25),
        local_job("top-k-p", "x", temperature=0.8, top_k=20, top_p=0.9, seed=4,
                  max_new_tokens=50),
        local_job("late-short", "short one", temperature=1.0, seed=5, max_new_tokens=5),
        local_job("canceled", "again " * 30, temperature=1.0, seed=6, max_new_tokens=30),
    ]
    alone = {job.id: local_worker.run([job], lambda *a: None)[0] for job in jobs}
    feed = StaggeredFeed({0: jobs[:1], 3: jobs[1:3], 10: jobs[3:]})

    def progress(job, percent, outputs):
        if job.id == "canceled" and outputs["tokens"] == 8:
            job.canceled = True  # as the runner does when the client cancels

    local_worker.run_continuously(feed, progress)
    for job in jobs[:4]:
        assert feed.outcomes[job.id]["text"] == alone[job.id]["text"], job.id
        assert feed.outcomes[job.id]["generated_tokens"] == job.inputs["max_new_tokens"]
    canceled = feed.outcomes["canceled"]
    assert canceled["finish_reason"] == "canceled" and canceled["generated_tokens"] == 8
    assert alone["canceled"]["text"].startswith(canceled["text"])
    # Each left the batch the step it ended, the late short chat long before the first one:
    # a chat taken at step s (1-based) makes its first two tokens there (its prefill, then the
    # batch's step) and one per step after; a canceled one leaves at the next step.
    assert feed.finished_at_step["greedy"] == 1 + 40 - 2
    assert feed.finished_at_step["late-short"] == 11 + 5 - 2
    assert feed.finished_at_step["canceled"] == 11 + 8 - 2 + 1


def test_a_failure_inside_generation_fails_the_jobs_with_its_reason(local_worker, monkeypatch):
    """The model raises at its tenth forward: run() returns the error for each job (the runner
    posts it as the job's error) instead of raising or hanging."""
    forward = local_worker.model.forward
    calls = []

    def failing_forward(*a, **kw):
        calls.append(1)
        if len(calls) == 10:
            raise RuntimeError("CUDA out of memory (simulated)")
        return forward(*a, **kw)

    monkeypatch.setattr(local_worker.model, "forward", failing_forward)
    jobs = [local_job("a", temperature=1.0), local_job("b", temperature=1.0)]
    reports = []
    outcomes = local_worker.run(jobs, lambda job, percent, outputs: reports.append(outputs))
    assert [type(o) for o in outcomes] == [RuntimeError, RuntimeError], outcomes
    assert "generation failed: RuntimeError: CUDA out of memory (simulated)" in str(outcomes[0])
    assert reports and reports[-1]["tokens"] <= 9  # it had streamed before failing


def byte_level_tokenizer():
    """A byte-level BPE tokenizer, as real Llama checkpoints have (the tiny model's is
    word-level): a character can span several of its tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(["plain ASCII text, twice and more"] * 4, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_text_decoded_a_token_at_a_time_is_the_whole_decode(local_worker, monkeypatch):
    """new_text() decodes a short window per token, never the whole reply: the pieces join
    into what one decode of every token gives, and no piece ends in half a character."""
    from workers.llama4.worker import Chat

    tokenizer = byte_level_tokenizer()
    monkeypatch.setattr(local_worker, "tokenizer", tokenizer)
    text = "Grüße aus Köln! 日本語のテキスト 🙂🚀 and plain ASCII, twice. " * 2
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.encode()) // 4  # multi-byte characters span several tokens
    chat = Chat(job=local_job("d"), prompt_ids=[], max_new_tokens=len(ids), temperature=0.0,
                top_p=1.0, top_k=0, seed=0, stop=[])
    pieces = []
    for token in ids:
        chat.generated.append(token)
        pieces.append(local_worker.new_text(chat))
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert "日本語" in "".join(pieces) and not any("\ufffd" in p for p in pieces)
    assert chat.decoded_upto == len(ids) and chat.context_from > 0
