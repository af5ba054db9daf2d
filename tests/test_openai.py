"""The OpenAI-compatible API under /v1, driven by the official `openai` package (sync and async
clients, streamed and not) against the real server and tiny-model workers: llama4 (chat), sd3
(images) and embed (embeddings), one of each for the whole module, plus a keyed chat endpoint
that no worker serves (keys, rate limits, sizes, cancel on hang-up). The translation itself and
the [OPENAI] table's checks are tested in-process at the end.

Random-weight models say anything: replies are seeded and compared with each other, never with
expected words.
"""

from __future__ import annotations

import base64
import io
import math
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import (
    REPO,
    Process,
    hold_port,
    spawn_server,
    spawn_worker,
    wait_until,
    write_endpoint,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from api_server import openai_wire as wire
from api_server.config import ConfigError, load_endpoint, load_endpoints
from api_server.httputil import ApiError

WORKER_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
CLIENT_KEY = "openai-client-key"
KEYED_TOML = """
[ENDPOINT]
max_body_bytes = 4096
max_queue_length = 5
[WORKER]
job_type = "keyed_chat"
auth_keys = ["keyed-worker-key"]
[CLIENTS]
auth_keys = ["openai-client-key"]
rate_limit_per_s = 0.01
rate_burst = 2
[INPUTS.chat_context]
type = "chat_context"
[INPUTS.max_new_tokens]
type = "integer"
minimum = 1
maximum = 64
default = 16
[OPENAI]
kind = "chat"
models = ["keyed-llama"]
"""
HELLO = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_llama4_dir: Path):
    """The repository's endpoints plus `keyed` (client keys, no worker), one server, and tiny
    llama4, sd3 and embed workers, all started at once (the workers load their models while
    the server starts; they connect once it listens on the port held for it). The tiny SD3
    and CLIP are the ones in ~/.cache/jobhive (built once per machine, as the demo's; a stale
    build is rebuilt): a fresh SD3 build would take most of this module's time."""
    tmp = tmp_path_factory.mktemp("openai")
    shutil.copytree(REPO / "endpoints", tmp / "endpoints")
    write_endpoint(tmp / "endpoints", "keyed", KEYED_TOML)
    workers: list[Process] = []
    with hold_port() as port:
        try:
            for kind, key, extra in (
                ("llama4", "llama4-worker-key", ("--tiny-dir", str(tiny_llama4_dir))),
                ("sd3", "sd3-worker-key", ("--max-batch", "4", "--preview-size", "64")),
                ("embed", "embeddings-worker-key", ()),
            ):
                workers.append(spawn_worker(f"http://127.0.0.1:{port}", "--tiny", "--device",
                                            "cpu", *extra, kind=kind, key=key, env=WORKER_ENV,
                                            ready_timeout_s=None))
            process = spawn_server(tmp / "endpoints", tmp / "jobs.sqlite3", port=port)
            try:
                for worker in workers:
                    worker.wait_for_output(r"loaded in", timeout_s=120)
                yield process
            finally:
                process.stop()
        finally:  # they hold no job by now, and a clean exit of torch takes seconds
            for worker in workers:
                worker.kill()


@pytest.fixture
def client(server: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def keyed(server: Process) -> Iterator[openai.OpenAI]:
    """A client with the `keyed` endpoint's client key."""
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=CLIENT_KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def aclient(server: Process) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused",
                                  max_retries=0) as sdk:
        yield sdk


def job_of(server: Process, job_id: str, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server.url}/api/v1/jobs/{job_id}", headers=headers).json()


# ----- models and errors


def test_models_lists_what_the_caller_may_use(client, keyed):
    names = {m.id for m in client.models.list()}
    assert {"llama4", "rag-chat", "sd3", "all-MiniLM-L6-v2", "clip-text"} <= names
    assert "keyed-llama" not in names  # its endpoint takes client keys
    assert "keyed-llama" in {m.id for m in keyed.models.list()}
    assert client.models.retrieve("sd3").owned_by == "jobhive"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-7")
    assert e.value.code == "model_not_found"


def test_errors_have_openai_shape_and_statuses(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-7", messages=HELLO)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    raw = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json",
                     headers={"Content-Type": "application/json"})
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.post(f"{server.url}/v1/chat/completions", content=b"[1]",
                      headers={"Content-Type": "application/json"}).status_code == 400
    assert httpx.post(f"{server.url}/v1/chat/completions", content=b"x").status_code == 415
    deep = b"[" * 100 + b"]" * 100
    assert httpx.post(f"{server.url}/v1/embeddings", content=deep,
                      headers={"Content-Type": "application/json"}).status_code == 400
    missing = httpx.get(f"{server.url}/v1/completions")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as e:  # a model of another kind
        client.chat.completions.create(model="sd3", messages=HELLO)
    assert e.value.param == "model"


@pytest.mark.parametrize(("path", "body", "param"), [
    ("chat/completions", {"model": 5, "messages": HELLO}, "model"),
    ("chat/completions", {"model": "llama4", "messages": "hi"}, "messages"),
    ("chat/completions", {"model": "llama4", "messages": [{"role": "user", "content": 5}]},
     "messages[0].content"),
    ("chat/completions", {"model": "llama4", "messages": [{"role": "user", "content": "x",
                                                           "name": "n"}]}, "messages[0].name"),
    ("chat/completions", {"model": "llama4", "messages": HELLO, "stream": "yes"}, "stream"),
    ("chat/completions", {"model": "llama4", "messages": HELLO, "bogus": 1}, "bogus"),
    ("chat/completions", {"model": "llama4", "messages": HELLO, "seed": 2**40}, "seed"),
    ("chat/completions", {"model": "llama4", "messages": HELLO, "stop": [1]}, "stop"),
    ("chat/completions", {"model": "llama4",
                          "messages": [{"role": "user", "content": "x" * 140_000}]}, "messages"),
    ("embeddings", {"model": "clip-text", "input": {"a": 1}}, "input"),
    ("embeddings", {"model": "clip-text", "input": "x", "encoding_format": "int8"},
     "encoding_format"),
    ("images/generations", {"model": "sd3"}, "prompt"),
    ("images/generations", {"model": "sd3", "prompt": ["x"]}, "prompt"),
    ("images/generations", {"model": "sd3", "prompt": "x", "size": 1024}, "size"),
])
def test_hostile_bodies_get_a_400_naming_the_parameter(server, path, body, param):
    reply = httpx.post(f"{server.url}/v1/{path}", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param, reply.text


def test_hostile_uploads_and_headers(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(model="sd3", image=("x.png", b"not an image", "image/png"),
                           prompt="x", size="64x64")
    assert e.value.param == "image"
    reply = httpx.post(f"{server.url}/v1/images/edits", json={"model": "sd3", "prompt": "x"})
    assert reply.status_code == 415
    reply = httpx.post(f"{server.url}/v1/chat/completions", headers={"Idempotency-Key": "a b"},
                       json={"model": "llama4", "messages": HELLO})
    assert reply.json()["error"]["param"] == "Idempotency-Key"


def test_unsupported_parameters_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="llama4", messages=[*HELLO, {"role": "tool", "content": "x"}], n=2,
            logprobs=True, response_format={"type": "json_object"}, temperature="hot",
            max_tokens=0, tools=[{"type": "function", "function": {"name": "f"}}],
        )
    message = e.value.body["message"]
    for param in ("messages[2].role", "n:", "logprobs", "response_format", "tools",
                  "temperature", "max_tokens"):
        assert param in message, message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="llama4", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert e.value.param == "messages[0].content[0]"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="llama4", messages=HELLO,
                                       stream_options={"include_usage": True})
    assert e.value.param == "stream_options"


# ----- chat


def test_chat_sync_and_stream_give_the_same_seeded_reply(client):
    settings = {"model": "llama4", "messages": HELLO, "max_tokens": 12, "seed": 5,
                "temperature": 0.9, "top_p": 0.95}
    reply = client.chat.completions.create(**settings)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    chunks = list(client.chat.completions.create(**settings, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == choice.finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage


def test_chat_extensions_and_stop(client):
    reply = client.chat.completions.create(
        model="llama4", messages=HELLO, max_completion_tokens=9, seed=1,
        extra_body={"ignore_eos": True, "top_k": 5})
    assert reply.usage.completion_tokens == 9 and reply.choices[0].finish_reason == "length"
    text = reply.choices[0].message.content
    stop = text[len(text) // 2:][:2]
    if stop.strip():  # cut where a stop string was generated before
        again = client.chat.completions.create(
            model="llama4", messages=HELLO, max_completion_tokens=9, seed=1, stop=[stop],
            extra_body={"ignore_eos": True, "top_k": 5})
        assert again.choices[0].finish_reason == "stop"
        assert text.startswith(again.choices[0].message.content) and stop not in (
            again.choices[0].message.content)


async def test_chat_async_clients(aclient):
    reply = await aclient.chat.completions.create(model="llama4", messages=HELLO, max_tokens=6,
                                                  seed=3)
    stream = await aclient.chat.completions.create(model="llama4", messages=HELLO, max_tokens=6,
                                                   seed=3, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == reply.choices[0].message.content


def test_a_chat_is_a_job_with_an_idempotency_key(client, server):
    first = client.chat.completions.with_raw_response.create(
        model="llama4", messages=HELLO, max_tokens=4, extra_headers={"Idempotency-Key": "oa-1"})
    again = client.chat.completions.create(model="llama4", messages=HELLO, max_tokens=4,
                                           extra_headers={"Idempotency-Key": "oa-1"})
    with pytest.raises(openai.ConflictError):  # the same key with other inputs
        client.chat.completions.create(model="llama4", messages=HELLO, max_tokens=5,
                                       extra_headers={"Idempotency-Key": "oa-1"})
    assert first.headers["X-Job-Id"] == "oa-1" and again.id == first.parse().id == "chatcmpl-oa-1"
    job = job_of(server, "oa-1")
    assert job["endpoint"] == "llama4_chat" and job["status"] == "done"
    assert job["outputs"]["text"] == again.choices[0].message.content


# ----- keys, limits, hang-ups (the keyed endpoint: no worker serves it)


def test_keys_sizes_rate_limits_and_hang_ups(server, keyed):
    url = f"{server.url}/v1"
    with pytest.raises(openai.AuthenticationError), openai.OpenAI(
            base_url=url, api_key="wrong", max_retries=0) as wrong:
        wrong.chat.completions.create(model="keyed-llama", messages=HELLO)
    with pytest.raises(openai.APIStatusError) as e:
        keyed.chat.completions.create(model="keyed-llama",
                                      messages=[{"role": "user", "content": "x" * 5000}])
    assert e.value.status_code == 413
    # A stream whose client hangs up: its job is canceled (burst 2: two submits pass).
    with keyed.chat.completions.create(model="keyed-llama", messages=HELLO, stream=True) as s:
        job_id = s.response.headers["X-Job-Id"]
        assert next(iter(s)).choices[0].delta.role == "assistant"
        assert job_of(server, job_id, CLIENT_KEY)["status"] == "queued"
    wait_until(lambda: job_of(server, job_id, CLIENT_KEY)["status"] == "canceled")
    # A waiting request that times out: canceled too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/chat/completions", timeout=0.5,
                   json={"model": "keyed-llama", "messages": HELLO},
                   headers={"Authorization": f"Bearer {CLIENT_KEY}", "Idempotency-Key": "oa-2"})
    wait_until(lambda: job_of(server, "oa-2", CLIENT_KEY)["status"] == "canceled")
    with pytest.raises(openai.RateLimitError) as e:
        keyed.chat.completions.create(model="keyed-llama", messages=HELLO)
    assert int(e.value.response.headers["Retry-After"]) >= 1
    assert e.value.body["type"] == "rate_limit_error"


# ----- images


def test_images_generate_as_urls_and_base64(client, server):
    reply = client.images.generate(model="sd3", prompt="a lighthouse", n=2, size="64x64",
                                   extra_body={"seed": 3, "steps": 2})
    assert len(reply.data) == 2
    png = httpx.get(reply.data[0].url)
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (64, 64)
    reply = client.images.generate(model="sd3", prompt="a lighthouse", size="80x64",
                                   response_format="b64_json", extra_body={"steps": 1})
    image = Image.open(io.BytesIO(base64.b64decode(reply.data[0].b64_json)))
    assert image.size == (80, 64)
    for bad, param in (({"size": "65x64"}, "size"), ({"size": "big"}, "size"), ({"n": 9}, "n"),
                       ({"quality": "hd"}, "quality"), ({"response_format": "gif"},
                                                        "response_format")):
        with pytest.raises(openai.BadRequestError) as e:
            client.images.generate(model="sd3", prompt="x", **bad)
        assert e.value.param == param, e.value.body


async def test_image_edits_multipart(aclient):
    source = io.BytesIO()
    Image.new("RGB", (96, 96), "red").save(source, "PNG")
    reply = await aclient.images.edit(
        model="sd3", image=("red.png", source.getvalue(), "image/png"), prompt="blue",
        size="64x64", response_format="b64_json", extra_body={"steps": 2, "seed": 1})
    assert Image.open(io.BytesIO(base64.b64decode(reply.data[0].b64_json))).size == (64, 64)
    with pytest.raises(openai.BadRequestError) as e:
        await aclient.images.edit(model="sd3", image=("red.png", source.getvalue(), "image/png"),
                                  mask=("m.png", source.getvalue(), "image/png"), prompt="x")
    assert e.value.param == "mask"


# ----- embeddings


def test_embeddings_float_base64_and_both_models(client):
    texts = ["red sneakers", "a lighthouse at dawn"]
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts,
                                      encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 384
    assert math.isclose(sum(x * x for x in floats.data[0].embedding), 1.0, rel_tol=1e-4)
    assert floats.usage.prompt_tokens > 0
    default = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 asked
    assert default.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)
    clip = client.embeddings.create(model="clip-text", input="red sneakers")
    assert len(clip.data) == 1 and len(clip.data[0].embedding) == 32
    for bad in ([1, 2, 3], [], ["ok", ""], ["x"] * 257):
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model="clip-text", input=bad)
        assert e.value.param == "input"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="clip-text", input="x", dimensions=8)
    assert e.value.param == "dimensions"


async def test_embeddings_async(aclient):
    reply = await aclient.embeddings.create(model="clip-text", input=["a", "b", "c"])
    assert len(reply.data) == 3 and reply.model == "clip-text"


# ----- in-process: the translation and the [OPENAI] table


def repo_endpoint(name: str):
    return load_endpoint(REPO / "endpoints" / name / "endpoint.toml")


def test_chat_translation_names_the_openai_parameters():
    endpoint = repo_endpoint("llama4_chat")
    translated, options = wire.chat_request(
        {"model": "llama4", "messages": [{"role": "developer", "content": "s"},
                                         {"role": "user", "content": [{"type": "text",
                                                                       "text": "a"},
                                                                      {"type": "text",
                                                                       "text": "b"}]}],
         "max_tokens": 7, "stop": "x", "stream": True, "stream_options": {"include_usage": True},
         "user": "u", "n": 1, "presence_penalty": 0, "top_k": 3}, endpoint, {})
    assert translated.inputs == {
        "chat_context": [{"role": "system", "content": "s"}, {"role": "user", "content": "ab"}],
        "max_new_tokens": 7, "stop": ["x"], "top_k": 3}
    assert options == wire.ChatOptions(stream=True, include_usage=True)
    assert translated.params["max_new_tokens"] == "max_tokens"
    with pytest.raises(ApiError) as e:
        wire.chat_request({"messages": HELLO, "chat_context": [], "n": True, "stream": "yes",
                           "max_tokens": 3, "max_completion_tokens": 4}, endpoint, {})
    assert set(e.value.fields) == {"chat_context", "n", "stream", "max_tokens"}
    rag = repo_endpoint("rag_chat")  # no top_p, no stop: refused, not ignored
    with pytest.raises(ApiError) as e:
        wire.chat_request({"messages": HELLO, "top_p": 0.5, "stop": ["x"]}, rag, {})
    assert set(e.value.fields) == {"top_p", "stop"}
    error = wire.renamed(ApiError(400, "bad", {"width": "odd", "seed": "big"}), {"width": "size"})
    assert error.fields == {"size": "odd", "seed": "big"}


def test_images_and_embeddings_translation():
    sd3 = repo_endpoint("sd3")
    translated, response_format = wire.images_request(
        {"prompt": "p", "size": "512x256", "n": 2, "steps": 4}, sd3, {})
    assert translated.inputs == {"prompt": "p", "width": 512, "height": 256, "num_images": 2,
                                 "steps": 4, "preview": "none"}
    assert response_format == "url"
    embeddings = repo_endpoint("embeddings")
    model = embeddings.openai.models["clip-text"]
    translated, encoding = wire.embeddings_request({"input": "x", "encoding_format": "base64"},
                                                   embeddings, model, 8)
    assert translated.inputs == {"encoder": "clip", "input": ["x"]} and encoding == "base64"
    with pytest.raises(ApiError) as e:  # a model's fixed input is not the client's to change
        wire.embeddings_request({"input": "x", "encoder": "text"}, embeddings, model, 8)
    assert set(e.value.fields) == {"encoder"}
    row = base64.b64encode(b"\x00\x00\x80\x3f\x00\x00\x00\xc0").decode()  # 1.0, -2.0
    assert wire.floats(row) == [1.0, -2.0]
    body = wire.error_body(ApiError(429, "slow down", headers={"Retry-After": "2"}))
    assert body == {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                              "code": "rate_limit_exceeded"}}


def test_openai_table_is_checked(tmp_path: Path):
    base = KEYED_TOML.split("[OPENAI]")[0]
    bad = {
        'kind = "audio"\nmodels = ["m"]': "OPENAI.kind: must be one of chat, images, embeddings",
        'kind = "images"\nmodels = ["m"]': "an endpoint of kind images needs an input 'prompt'",
        'kind = "chat"\nmodels = []': "OPENAI.models: must be a list of model names",
        'kind = "chat"\nmodels = ["has space"]': "is not a model name",
        'kind = "chat"\nmodels = {m = {max_new_tokens = 999}}': "models.m.max_new_tokens",
        'kind = "chat"\nmodels = {m = {nope = 1}}': "models.m.nope: not an input",
        'kind = "chat"\nmodels = ["m"]\ncolour = 1': "OPENAI.colour: unknown key",
    }
    for i, (table, expected) in enumerate(bad.items()):
        path = write_endpoint(tmp_path / str(i), "e", f"{base}[OPENAI]\n{table}\n")
        with pytest.raises(ConfigError) as e:
            load_endpoint(path)
        assert any(expected in line for line in e.value.problems), e.value.problems
    write_endpoint(tmp_path / "dup", "a", KEYED_TOML)
    write_endpoint(tmp_path / "dup", "b", KEYED_TOML.replace("keyed_chat", "b_chat"))
    with pytest.raises(ConfigError) as e:
        load_endpoints(tmp_path / "dup")
    assert "'keyed-llama' is already a model of endpoint 'a'" in e.value.problems[0]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
PARAMS = ["model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
          "stop", "seed", "n", "stream", "stream_options", "tools", "prompt", "size",
          "response_format", "input", "encoding_format", "role", "content", "steps", "user"]
BODIES = st.dictionaries(st.sampled_from(PARAMS), JSON | st.lists(
    st.fixed_dictionaries({"role": JSON, "content": JSON}), max_size=2), max_size=6)


@pytest.fixture(scope="module")
def shipped() -> list:
    return [repo_endpoint(name) for name in ("llama4_chat", "sd3", "embeddings")]


@settings(max_examples=200, deadline=None, database=None)
@given(body=BODIES)
def test_any_json_body_translates_or_is_a_400(shipped, body):
    """Whatever a client sends, the translation answers a 400 naming fields, or inputs."""
    endpoints = shipped
    for translate in (lambda: wire.chat_request(body, endpoints[0], {}),
                      lambda: wire.images_request(body, endpoints[1], {}),
                      lambda: wire.embeddings_request(body, endpoints[2], {}, 4)):
        try:
            translate()
        except ApiError as e:
            assert e.status == 400 and e.fields


def test_the_embed_worker_checks_its_input():
    from workers.rag.embeddings import texts_of

    assert texts_of("a") == ["a"] and texts_of(["a", "b"]) == ["a", "b"]
    for bad in (None, [], [1], {"a": 1}, 3):
        with pytest.raises(ValueError):
            texts_of(bad)


def test_the_endpoint_list_names_each_tiny_model_as_random(server, http):
    listing = http.get(f"{server.url}/api/v1/endpoints").json()["endpoints"]
    models = {e["name"]: e["models"] for e in listing}
    on_cpu = {"device": "cpu", "workers": 1}
    assert models["llama4_chat"] == [
        {"name": "tiny-llama4", "dtype": "bfloat16", "random": True, **on_cpu}]
    assert models["sd3"] == [{"name": "tiny-sd3", "dtype": "float32", "random": True, **on_cpu}]
    assert models["embeddings"] == [
        {"name": "tiny-clip", "dtype": "float32", "random": True, **on_cpu},
        {"name": "all-MiniLM-L6-v2", "dtype": "float32", "random": False, **on_cpu},  # real
    ]
    assert models["keyed"] == []  # no worker
