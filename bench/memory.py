"""Server memory: RSS with many queued jobs carrying large images, and RSS per finished tiny job.

1. Queued large inputs: N sd3 jobs, each with the same random-noise PNG of about 4 MB (no worker
   takes them). A queued job's inputs should live in the store's file, not in the server.
2. Finished tiny jobs: M echo jobs run by a noop worker; what each finished job (kept until its
   result TTL) costs the server.

    python bench/memory.py                       # 1,000 x 4 MB queued, 20,000 finished
    python bench/memory.py --queued 200 --finished 5000 --against d8342ed

Prints the server's RSS (and its peak) after each phase, per version.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

from bench.common import rss_kib, source_tree, start, start_server, stop  # noqa: E402
from jobhive.aio import run_loop  # noqa: E402

JSON = {"Content-Type": "application/json"}


def noise_png(size_bytes: int) -> str:
    """A PNG data URL of random pixels (incompressible) of about size_bytes."""
    side = int((size_bytes / 3) ** 0.5)
    pixels = random.Random(0).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def endpoints_for(tree: Path, folder: Path) -> Path:
    """The tree's endpoints with sd3 and echo unlimited in rate and queue (what the bench
    pushes is not what their shipped limits are for)."""
    shutil.copytree(tree / "endpoints", folder)
    has_bytes_limit = "max_queue_bytes" in (tree / "api_server" / "config.py").read_text()
    for name in ("sd3", "echo"):
        path = folder / name / "endpoint.toml"
        text = re.sub(r"(?m)^max_queue_length = .*$", "max_queue_length = 1000000",
                      path.read_text())
        text = re.sub(r"(?m)^rate_limit_per_s = .*$", "rate_limit_per_s = 0", text)
        if has_bytes_limit:
            text = text.replace("[ENDPOINT]\n", "[ENDPOINT]\nmax_queue_bytes = 68719476736\n", 1)
        path.write_text(text)
    return folder


async def submit_all(url: str, bodies: list[bytes], concurrency: int, wait: bool) -> None:
    queue = list(reversed(bodies))
    target = url + ("?wait=30" if wait else "")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:

        async def one() -> None:
            while queue:
                body = queue.pop()
                async with http.post(target, data=body, headers=JSON) as reply:
                    if reply.status not in (200, 202):
                        raise RuntimeError(f"{reply.status}: {(await reply.text())[:300]}")
                    await reply.read()

        await asyncio.gather(*(one() for _ in range(concurrency)))


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run(tree: Path, version: str, queued: int, image_bytes: int, finished: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        endpoints = endpoints_for(tree, Path(tmp) / "endpoints")
        server, url = start_server(Path(tmp) / "bench.sqlite3", tree=tree, endpoints=endpoints)
        try:
            time.sleep(0.5)
            base_kib = rss_kib(server.pid)
            image = noise_png(image_bytes)
            body = b'{"inputs": {"prompt": "x", "image": "%s"}}' % image.encode()
            started = time.perf_counter()
            run_loop(submit_all(f"{url}/api/v1/endpoints/sd3/jobs", [body] * queued, 4, False))
            took_s = time.perf_counter() - started
            queued_kib = rss_kib(server.pid)
            print(f"{version:>9}  {queued} sd3 jobs queued with {len(body) / 1e6:.1f} MB bodies "
                  f"in {took_s:.0f} s: RSS {base_kib / 1024:.0f} -> {queued_kib / 1024:.0f} MB "
                  f"(peak {peak_kib(server.pid) / 1024:.0f} MB)", flush=True)

            worker = start(["-m", "workers.cli", "noop", "--server", url, "--key",
                            "echo-worker-key", "--max-batch", "8", "--log-level", "WARNING"], tree)
            try:
                bodies = [b'{"inputs": {"text": "t%d"}}' % i for i in range(finished)]
                echo = f"{url}/api/v1/endpoints/echo/jobs"
                run_loop(submit_all(echo, bodies[:200], 8, True))  # warm: pools, caches
                before_kib = rss_kib(server.pid)
                run_loop(submit_all(echo, bodies[200:], 8, True))
                after_kib = rss_kib(server.pid)
            finally:
                stop(worker)
            per_job = (after_kib - before_kib) * 1024 / max(1, finished - 200)
            print(f"{version:>9}  {finished - 200} tiny echo jobs finished: RSS "
                  f"{before_kib / 1024:.0f} -> {after_kib / 1024:.0f} MB, "
                  f"{per_job:.0f} bytes per finished job", flush=True)
        finally:
            stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=1000, help="sd3 jobs left queued")
    parser.add_argument("--image-mb", type=float, default=4.0, help="each one's PNG, in MB")
    parser.add_argument("--finished", type=int, default=20000, help="echo jobs run to the end")
    parser.add_argument("--against", metavar="REV", help="also measure this git revision")
    args = parser.parse_args()
    with source_tree(args.against) as previous:
        run(REPO, "this", args.queued, int(args.image_mb * 1e6), args.finished)
        if args.against:
            run(previous, args.against[:9], args.queued, int(args.image_mb * 1e6), args.finished)


if __name__ == "__main__":
    main()
