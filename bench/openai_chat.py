"""OpenAI adapter benchmark: chat through `/v1/chat/completions` (streamed) against the native
route (submit, then the job's event stream), on one server and one Llama worker.

Starts a real `jobhive-server` (fresh SQLite store) and one `jobhive-worker llama4` on loopback
(bench/llama.py's set-up), then runs rounds of 1 and of N concurrent chats, alternating the two
routes round by round so that drift of the machine falls on both. Both sides use the same HTTP
client (aiohttp, SSE read by hand; no SDK parsing), the same seeds and settings, and exactly
--max-new-tokens tokens per chat (ignore_eos, an extension on /v1). Printed side by side:

- time to first token as the client sees it (request sent to the first text: the native route's
  first progress event with text, /v1's first chunk with content), p50 and p90 over the chats;
- tokens/s of one stream (its tokens / first token to last);
- aggregate tokens/s of the round (all tokens / first request to last answer);
- the adapter's own CPU, in-process: translating a request into a job's inputs, and turning a
  progress report into a chunk (a figure that does not drift with the machine's load).

    python bench/openai_chat.py                        # tiny random-weight model, CPU
    python bench/openai_chat.py --clients 8 --rounds 30 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

# The repository instead of bench/ (whose queue.py would shadow the standard library's queue).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.common import (  # noqa: E402
    REPO,
    percentile,
    start,
    start_server,
    stop,
    wait_for_line,
)
from bench.llama import PROMPT, WORKER_KEY, chat  # noqa: E402

Chat = Callable[[aiohttp.ClientSession, str, int, int], Awaitable[dict[str, Any]]]


async def native_chat(http: aiohttp.ClientSession, url: str, max_new_tokens: int,
                      seed: int) -> dict[str, Any]:
    """bench/llama.py's chat (submit, then SSE), as this benchmark's figures."""
    result = await chat(http, url, max_new_tokens, seed)
    first = result["client_submitted_at"] + result["client_ttft_s"]
    return {"ttft_s": result["client_ttft_s"], "tokens": result["generated_tokens"],
            "started": result["client_submitted_at"], "first": first,
            "done": result["client_done_at"]}


async def openai_chat(http: aiohttp.ClientSession, url: str, max_new_tokens: int,
                      seed: int) -> dict[str, Any]:
    """One streamed chat through /v1/chat/completions, read chunk by chunk."""
    body = {"model": "llama4", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_new_tokens, "seed": seed, "temperature": 0.8, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    started = time.perf_counter()
    first = None
    tokens = 0
    async with http.post(f"{url}/v1/chat/completions", json=body) as reply:
        if reply.status != 200:
            raise RuntimeError(f"chat refused: {reply.status} {await reply.text()}")
        async for raw in reply.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                raise RuntimeError(f"chat failed: {chunk['error']}")
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and not first:
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    done = time.perf_counter()
    if first is None:
        raise RuntimeError("the stream ended without text")
    return {"ttft_s": first - started, "tokens": tokens, "started": started, "first": first,
            "done": done}


async def measure(url: str, clients: int, rounds: int, max_new_tokens: int
                  ) -> dict[tuple[str, int], dict[str, float]]:
    """Rounds of 1 and of `clients` concurrent chats on each route, alternating routes."""
    routes: dict[str, Chat] = {"native": native_chat, "openai": openai_chat}
    chats: dict[tuple[str, int], list[dict[str, Any]]] = {}
    walls: dict[tuple[str, int], list[tuple[int, float]]] = {}
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        for route in routes.values():  # warm-up: first forward, allocator, connections
            await route(http, url, 8, 0)
        for n in sorted({1, clients}):
            for i in range(rounds if n == 1 else max(1, rounds // 4)):
                order = list(routes) if i % 2 == 0 else list(reversed(routes))
                for name in order:
                    began = time.perf_counter()
                    results = await asyncio.gather(
                        *(routes[name](http, url, max_new_tokens, 100 + j) for j in range(n)))
                    wall_s = time.perf_counter() - began
                    chats.setdefault((name, n), []).extend(results)
                    walls.setdefault((name, n), []).append((sum(r["tokens"] for r in results),
                                                            wall_s))
    return {key: summary(results, walls[key]) for key, results in chats.items()}


def summary(results: list[dict[str, Any]], walls: list[tuple[int, float]]) -> dict[str, float]:
    ttfts = [1000 * r["ttft_s"] for r in results]
    streams = [r["tokens"] / (r["done"] - r["first"]) for r in results if r["done"] > r["first"]]
    return {
        "chats": len(results),
        "ttft_p50_ms": percentile(ttfts, 0.5),
        "ttft_p90_ms": percentile(ttfts, 0.9),
        "stream_tok_s": statistics.median(streams),
        "aggregate_tok_s": sum(t for t, _ in walls) / sum(w for _, w in walls),
    }


def adapter_cpu_us(max_new_tokens: int) -> tuple[float, float]:
    """Microseconds of CPU the adapter spends per request (translation, with the endpoint's
    validation as the submit route runs it) and per streamed chunk (delta, JSON, framing)."""
    from api_server import openai_wire as wire
    from api_server.config import load_endpoint
    from api_server.fields import validate_inputs

    endpoint = load_endpoint(REPO / "endpoints" / "llama4_chat" / "endpoint.toml")
    body = {"model": "llama4", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_new_tokens, "seed": 1, "temperature": 0.8, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    rounds = 5000
    started = time.process_time()
    for _ in range(rounds):
        translated, _ = wire.chat_request(body, endpoint, {})
        validate_inputs(endpoint.inputs, translated.inputs)
    per_request = (time.process_time() - started) / rounds
    started = time.process_time()
    for i in range(rounds):
        chunk = wire.chat_chunk("chatcmpl-x", 0, "llama4", {"content": PROMPT[i % 40:][:5]},
                                None, True)
        b"data: %s\n\n" % orjson.dumps(chunk)
    per_chunk = (time.process_time() - started) / rounds
    return 1e6 * per_request, 1e6 * per_chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: the tiny random model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--clients", type=int, default=8, help="concurrent chats (default 8)")
    parser.add_argument("--rounds", type=int, default=30,
                        help="rounds of one chat per route (a quarter as many of N)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    # One torch thread unless told otherwise: on a shared CPU, spinning threads of a tiny model
    # make every figure noise (README: Llama 4 chat).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp) / "bench.sqlite3")
        model = ["--model", args.model] if args.model else ["--tiny"]
        worker = start(["-m", "workers.cli", "llama4", "--server", url, "--key", WORKER_KEY,
                        *model, "--device", args.device, "--dtype", args.dtype,
                        "--max-batch", str(args.clients)])
        try:
            wait_for_line(worker, r"loaded in")
            figures = asyncio.run(measure(url, args.clients, args.rounds, args.max_new_tokens))
        finally:
            stop(worker, server)
    print(f"model {args.model or 'tiny random Llama 4'}, {args.dtype}, chats of "
          f"{args.max_new_tokens} tokens, worker --max-batch {args.clients}")
    print(f"{'route':>7} {'chats':>5} {'runs':>5} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12} "
          f"{'1 stream tok/s':>15} {'aggregate tok/s':>16}")
    for (route, n), f in sorted(figures.items(), key=lambda item: (item[0][1], item[0][0])):
        print(f"{route:>7} {n:>5} {f['chats']:>5} {f['ttft_p50_ms']:>12.2f} "
              f"{f['ttft_p90_ms']:>12.2f} {f['stream_tok_s']:>15.1f} "
              f"{f['aggregate_tok_s']:>16.1f}")
    for n in sorted({1, args.clients}):
        extra = figures[("openai", n)]["ttft_p50_ms"] - figures[("native", n)]["ttft_p50_ms"]
        print(f"/v1 minus native, TTFT p50 with {n} chat(s): {extra:+.2f} ms")
    request_us, chunk_us = adapter_cpu_us(args.max_new_tokens)
    print(f"adapter CPU: {request_us:.1f} µs per request (translation and validation), "
          f"{chunk_us:.1f} µs per chunk")


if __name__ == "__main__":
    main()
