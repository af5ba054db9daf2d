"""Llama worker benchmark: time to first token, tokens/s of one stream, aggregate tokens/s of N.

Starts a real `jobhive-server` (fresh SQLite store) and one `jobhive-worker llama4` on loopback,
then, for each worker --max-batch asked for (1 = one chat at a time, N = the queued chats of a
poll generate together):

- one stream: a chat followed over SSE; TTFT as the client sees it (submit to the first progress
  event with text, which includes the runner's 0.1 s progress coalescing) and as the worker
  measured it (time_to_first_token_s), and the stream's tokens/s;
- N concurrent chats: all submitted at once; aggregate tokens/s = all tokens generated / the wall
  time from the first submit to the last result.

Every chat generates exactly --max-new-tokens tokens (ignore_eos), so runs compare.

    python bench/llama.py                                    # tiny random-weight model, CPU
    python bench/llama.py --clients 16 --max-new-tokens 256
    python bench/llama.py --model /models/Llama-4-Scout-17B-16E-Instruct --quantize 4bit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

# The repository instead of bench/ (whose queue.py would shadow the standard library's queue).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.common import start, start_server, stop, wait_for_line  # noqa: E402

WORKER_KEY = "llama4-worker-key"
PROMPT = "Write a short story about a worker bee who learns to queue jobs. " * 2


async def chat(http: aiohttp.ClientSession, url: str, max_new_tokens: int,
               seed: int) -> dict[str, Any]:
    """Submits one chat and follows it over SSE; returns its outputs plus client_ttft_s."""
    inputs = {"chat_context": [{"role": "user", "content": PROMPT}], "seed": seed,
              "max_new_tokens": max_new_tokens, "temperature": 0.8, "ignore_eos": True}
    submitted = time.perf_counter()
    async with http.post(f"{url}/api/v1/endpoints/llama4_chat/jobs",
                         json={"inputs": inputs}) as reply:
        job = await reply.json()
        if reply.status != 202:
            raise RuntimeError(f"submit refused: {reply.status} {job}")
    first_token_s = None
    async with http.get(f"{url}/api/v1/jobs/{job['job_id']}/events") as events:
        event = ""
        async for raw in events.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data = json.loads(line.partition(":")[2])
                if event == "progress" and data["progress_outputs"] and first_token_s is None:
                    first_token_s = time.perf_counter() - submitted
                elif event == "result":
                    return {**data["outputs"], "client_ttft_s": first_token_s}
                elif event == "error":
                    raise RuntimeError(f"chat failed: {data['error']}")
    raise RuntimeError("event stream ended without a result")


async def measure(url: str, clients: int, max_new_tokens: int) -> dict[str, float]:
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        await chat(http, url, 8, 0)  # warm-up: first forward, allocator, connections
        single = await chat(http, url, max_new_tokens, 1)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(chat(http, url, max_new_tokens, 100 + i) for i in range(clients))
        )
        wall_s = time.perf_counter() - started
    return {
        "client_ttft_ms": 1000 * (single["client_ttft_s"] or 0.0),
        "worker_ttft_ms": 1000 * single["time_to_first_token_s"],
        "single_tok_s": single["tokens_per_s"],
        "aggregate_tok_s": sum(r["generated_tokens"] for r in results) / wall_s,
        "median_ttft_ms_n": 1000 * statistics.median(r["client_ttft_s"] or 0 for r in results),
    }


def run(args: argparse.Namespace, max_batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp) / "bench.sqlite3")
        model = ["--model", args.model] if args.model else ["--tiny"]
        worker = start(["-m", "workers.cli", "llama4", "--server", url, "--key", WORKER_KEY,
                        *model, "--quantize", args.quantize, "--device", args.device,
                        "--dtype", args.dtype, "--max-batch", str(max_batch)])
        try:
            wait_for_line(worker, r"loaded in")
            return asyncio.run(measure(url, args.clients, args.max_new_tokens))
        finally:
            stop(worker, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: the tiny random model)")
    parser.add_argument("--quantize", choices=["none", "4bit"], default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--clients", type=int, default=8, help="concurrent chats (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="worker --max-batch values to compare (default: 1 and --clients)")
    args = parser.parse_args()
    batches = args.batches or sorted({1, args.clients})
    print(f"model {args.model or 'tiny random Llama 4'}, {args.quantize}, {args.dtype}, "
          f"{args.clients} concurrent chats of {args.max_new_tokens} tokens", flush=True)
    print(f"{'batch':>5} {'TTFT ms':>8} {'(worker)':>8} {'1 stream tok/s':>15} "
          f"{'N agg tok/s':>12} {'N median TTFT ms':>17}", flush=True)
    for max_batch in batches:
        r = run(args, max_batch)
        print(f"{max_batch:>5} {r['client_ttft_ms']:>8.1f} {r['worker_ttft_ms']:>8.1f} "
              f"{r['single_tok_s']:>15.1f} {r['aggregate_tok_s']:>12.1f} "
              f"{r['median_ttft_ms_n']:>17.1f}", flush=True)


if __name__ == "__main__":
    main()
