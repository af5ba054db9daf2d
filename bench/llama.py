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

With --arrivals, chats come one every --every-s instead (16 of 256 tokens, one every 0.25 s,
worker --max-batch 8, unless told otherwise), to a worker of this tree (continuous batching) and,
with --against REV, to one of git revision REV (an older, statically batching worker) beside
it: time to first token p50 / p99 as the clients see it, total tokens/s (all tokens / first
submit to last result), the longest wait of any chat before its first token, how many chats got
their first token only after all the chats that were running when they came had ended ("waited":
static batching's wait for the running batch), and the TTFT of a chat alone on the idle worker
(the median of 5).

    python bench/llama.py                                    # tiny random-weight model, CPU
    python bench/llama.py --clients 16 --max-new-tokens 256
    python bench/llama.py --model /models/Llama-4-Scout-17B-16E-Instruct --quantize 4bit
    python bench/llama.py --arrivals --against 4b8fa7e       # static (4b8fa7e) vs continuous
    python bench/llama.py --wire --against e8b700a           # whole texts vs their new parts

With --wire, one chat at a time of 250, 500, 1,000 and 2,000 tokens, each followed by one SSE
client: the bytes that client received, its progress events, and the bytes the worker wrote
(its /proc io, sockets and logs), for this tree and, with --against REV, that revision's.
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

from bench.common import (  # noqa: E402
    REPO,
    percentile,
    source_tree,
    start,
    start_server,
    stop,
    wait_for_line,
)

WORKER_KEY = "llama4-worker-key"
PROMPT = "Write a short story about a worker bee who learns to queue jobs. " * 2


async def chat(http: aiohttp.ClientSession, url: str, max_new_tokens: int,
               seed: int) -> dict[str, Any]:
    """Submits one chat and follows it over SSE; returns its outputs plus client_ttft_s and,
    as time.perf_counter() values, client_submitted_at and client_done_at."""
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
                    return {**data["outputs"], "client_ttft_s": first_token_s,
                            "client_submitted_at": submitted,
                            "client_done_at": time.perf_counter()}
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


async def measure_arrivals(url: str, clients: int, max_new_tokens: int,
                           every_s: float) -> dict[str, float]:
    """Chats arriving one every every_s; their TTFTs, total tokens/s, longest wait."""
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        await chat(http, url, 8, 0)  # warm-up
        idle_ttfts_s = [(await chat(http, url, 16, 1 + i))["client_ttft_s"] for i in range(5)]

        async def arrive(i: int) -> dict[str, Any]:
            await asyncio.sleep(i * every_s)
            return await chat(http, url, max_new_tokens, 100 + i)

        results = await asyncio.gather(*(arrive(i) for i in range(clients)))
    ttfts_s = [r["client_ttft_s"] for r in results]
    first_at = [r["client_submitted_at"] + r["client_ttft_s"] for r in results]
    wall_s = (max(r["client_done_at"] for r in results)
              - min(r["client_submitted_at"] for r in results))
    # A chat waited for the others when its first token came only after every chat that ran
    # as it came had ended (static batching: the batch it found running).
    waited = 0
    for r, first in zip(results, first_at, strict=True):
        running = [o for o in results
                   if o["client_submitted_at"] < r["client_submitted_at"] < o["client_done_at"]]
        waited += bool(running) and all(o["client_done_at"] < first for o in running)
    return {
        "idle_ttft_ms": 1000 * statistics.median(idle_ttfts_s),
        "p50_ttft_ms": 1000 * percentile(ttfts_s, 0.5),
        "p99_ttft_ms": 1000 * percentile(ttfts_s, 0.99),
        "tok_s": sum(r["generated_tokens"] for r in results) / wall_s,
        "longest_wait_ms": 1000 * max(ttfts_s),
        "waited": waited,
    }


async def followed_bytes(http: aiohttp.ClientSession, url: str, max_new_tokens: int,
                         worker_pid: int) -> dict[str, float]:
    """--wire: one chat followed over SSE; the bytes its client read and the worker wrote."""
    inputs = {"chat_context": [{"role": "user", "content": PROMPT}], "seed": 7,
              "max_new_tokens": max_new_tokens, "temperature": 0.8, "ignore_eos": True}
    written_before = _written_bytes(worker_pid)
    async with http.post(f"{url}/api/v1/endpoints/llama4_chat/jobs",
                         json={"inputs": inputs}) as reply:
        job = await reply.json()
    read, events = 0, 0
    async with http.get(f"{url}/api/v1/jobs/{job['job_id']}/events") as stream:
        async for raw in stream.content:
            read += len(raw)
            events += raw.startswith(b"event: progress")
    async with http.get(f"{url}/api/v1/jobs/{job['job_id']}") as reply:
        outputs = (await reply.json())["outputs"]
    await asyncio.sleep(0.2)  # (the worker's last writes: its result's answer read, its log)
    return {"tokens": outputs["generated_tokens"], "chars": len(outputs["text"]),
            "sse_bytes": read, "events": events,
            "worker_bytes": _written_bytes(worker_pid) - written_before}


def _written_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def run(args: argparse.Namespace, max_batch: int, tree: Path = REPO) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp) / "bench.sqlite3", tree=tree)
        model = ["--model", args.model] if args.model else ["--tiny"]
        worker = start(["-m", "workers.cli", "llama4", "--server", url, "--key", WORKER_KEY,
                        *model, "--quantize", args.quantize, "--device", args.device,
                        "--dtype", args.dtype, "--max-batch", str(max_batch)], tree)
        try:
            wait_for_line(worker, r"loaded in")
            if args.wire:
                return asyncio.run(measure_wire(url, worker.pid))
            if args.arrivals:
                return asyncio.run(measure_arrivals(url, args.clients, args.max_new_tokens,
                                                    args.every_s))
            return asyncio.run(measure(url, args.clients, args.max_new_tokens))
        finally:
            stop(worker, server)


def compare_arrivals(args: argparse.Namespace) -> None:
    """--arrivals: the worker of --against (if given) and this tree's, one after the other."""
    max_batch = (args.batches or [8])[0]
    print(f"model {args.model or 'tiny random Llama 4'}, {args.quantize}, {args.dtype}, "
          f"{args.clients} chats of {args.max_new_tokens} tokens, one every {args.every_s:g} s, "
          f"--max-batch {max_batch}", flush=True)
    print(f"{'worker':>22} {'idle TTFT ms':>12} {'TTFT p50 ms':>11} {'TTFT p99 ms':>11} "
          f"{'tokens/s':>9} {'longest wait ms':>15} {'waited':>6}", flush=True)
    workers = [(f"{args.against} (static)", args.against)] if args.against else []
    workers.append(("this tree", None))
    measured: dict[str, list[dict[str, float]]] = {name: [] for name, _ in workers}
    for _ in range(args.rounds):  # alternating, so that a busy spell of the host hits both
        for name, rev in workers:
            with source_tree(rev) as tree:
                measured[name].append(run(args, max_batch, tree))
            print_arrivals(name, measured[name][-1])
    if args.rounds > 1:
        print(f"median of {args.rounds} rounds:")
        for name, runs in measured.items():
            print_arrivals(name, {key: statistics.median(r[key] for r in runs) for key in runs[0]})


WIRE_TOKENS = (250, 500, 1000, 2000)


async def measure_wire(url: str, worker_pid: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as http:
        await chat(http, url, 8, 0)  # warm-up
        return {n: await followed_bytes(http, url, n, worker_pid) for n in WIRE_TOKENS}


def compare_wire(args: argparse.Namespace) -> None:
    """--wire: the bytes of one followed chat per length, --against's tree first."""
    print(f"model {args.model or 'tiny random Llama 4'}, one chat at a time followed by one "
          "SSE client", flush=True)
    print(f"{'server and worker':>22} {'tokens':>6} {'chars':>6} {'events':>6} "
          f"{'SSE bytes':>10} {'per char':>8} {'worker bytes':>12} {'per char':>8}", flush=True)
    for name, rev in ([(args.against, args.against)] if args.against else []) + \
            [("this tree", None)]:
        with source_tree(rev) as tree:
            for r in run(args, 1, tree).values():
                print(f"{name:>22} {r['tokens']:>6} {r['chars']:>6} {r['events']:>6} "
                      f"{r['sse_bytes']:>10,} {r['sse_bytes'] / r['chars']:>8.1f} "
                      f"{r['worker_bytes']:>12,} {r['worker_bytes'] / r['chars']:>8.1f}",
                      flush=True)


def print_arrivals(name: str, r: dict[str, float]) -> None:
    print(f"{name:>22} {r['idle_ttft_ms']:>12.1f} {r['p50_ttft_ms']:>11.1f} "
          f"{r['p99_ttft_ms']:>11.1f} {r['tok_s']:>9.1f} {r['longest_wait_ms']:>15.1f} "
          f"{r['waited']:>6g}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: the tiny random model)")
    parser.add_argument("--quantize", choices=["none", "4bit"], default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--clients", type=int, default=None,
                        help="concurrent chats (default 8; with --arrivals 16)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens per chat (default 128; with --arrivals 256)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="worker --max-batch values to compare (default: 1 and --clients; "
                        "with --arrivals, the first value, default 8)")
    parser.add_argument("--arrivals", action="store_true",
                        help="chats arriving one every --every-s (default 16 chats of 256 "
                        "tokens) instead of all at once")
    parser.add_argument("--every-s", type=float, default=0.25,
                        help="with --arrivals, the gap between two chats (default 0.25)")
    parser.add_argument("--against", metavar="REV",
                        help="with --arrivals or --wire, also run git revision REV first")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --arrivals, runs of each worker, alternating; then the "
                        "medians (default 1)")
    parser.add_argument("--wire", action="store_true",
                        help="bytes on the wire of one followed chat of 250 to 2,000 tokens")
    args = parser.parse_args()
    if args.wire:
        compare_wire(args)
        return
    if args.arrivals:
        args.clients = args.clients or 16
        args.max_new_tokens = args.max_new_tokens or 256
        compare_arrivals(args)
        return
    args.clients = args.clients or 8
    args.max_new_tokens = args.max_new_tokens or 128
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
