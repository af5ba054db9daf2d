"""SD3 worker benchmark: images/s and seconds per image, batch 1 vs batch N, with and without
previews, at a size and step count given on the command line.

It drives the worker's own `run()` in this process (no server: bench/queue.py measures the
queue), with the options `jobhive-worker sd3` takes, so what it measures is what a worker does:
checking inputs, one pipeline call per group of compatible jobs, previews (made, copied back,
JPEG-encoded and reported), VAE decoding and PNG encoding with metadata.

    python bench/sd3.py --tiny --size 64 --steps 4 --batch 4            # CPU, no downloads
    python bench/sd3.py --model /models/sd3-medium --size 1024 --steps 28 --batch 4   # CUDA

With --through-server it measures the whole path instead: a real `jobhive-server` and one
`jobhive-worker sd3 --max-batch N` process, clients submitting jobs of --images images each and
fetching the finished job (and its image files, where outputs are files) as a user would. It
prints images/s, the server's CPU per finished job and the bytes a client reads per job, and
with --against REV the same for that git revision, run alternately in one go:

    python bench/sd3.py --through-server --tiny --device cpu --size 1024 --steps 2 --images 4 \
        --batch 4 --jobs 8 --against 552cb83
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# The repository instead of bench/ (whose queue.py would shadow the standard library's queue).
REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

from workers.runtime.model import Job  # noqa: E402
from workers.sd3.worker import SD3Worker  # noqa: E402
from workers.tiny.sd3 import build_tiny_sd3  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="width and height (default 1024)")
    parser.add_argument("--steps", type=int, default=28, help="denoising steps (default 28)")
    parser.add_argument("--cfg-scale", type=float, default=7.0, help="guidance (default 7)")
    parser.add_argument("--batch", type=int, default=4, help="N: jobs in the big batch (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per scenario (default 3)")
    parser.add_argument("--previews", default="none,latent,vae",
                        help="preview kinds to compare (default none,latent,vae)")
    parser.add_argument("--preview-every", type=int, default=1,
                        help="a preview every N steps (default 1: the worst case)")
    parser.add_argument("--through-server", action="store_true",
                        help="measure through a real server and worker process (see above)")
    parser.add_argument("--images", type=int, default=4, help="images per job (--through-server)")
    parser.add_argument("--jobs", type=int, default=8, help="jobs per round (--through-server)")
    parser.add_argument("--wait-s", type=float, default=300,
                        help="how long a job may take (--through-server; at most 300)")
    parser.add_argument("--against", metavar="REV",
                        help="with --through-server, also run this git revision, alternately")
    parser.add_argument("--tiny", action="store_true", help="the tiny random-weight SD3")
    parser.add_argument("--tiny-dir", help="where the tiny SD3 is built (default its cache)")
    SD3Worker.add_arguments(parser)
    args = parser.parse_args()
    if args.through_server:
        return args
    if args.tiny:
        args.model = str(build_tiny_sd3(args.tiny_dir))
    return args


def through_server(args: argparse.Namespace) -> None:
    """The --through-server mode: this version (and --against REV) end to end."""
    import tempfile

    from bench.common import source_tree

    print(f"# {args.jobs} jobs of {args.images} images at {args.size}x{args.size}, {args.steps} "
          f"steps, worker --max-batch {args.batch}; median of {args.repeat} rounds per version")
    print(f"{'version':>9} {'images/s':>9} {'server CPU ms/job':>18} {'client bytes/job':>17}"
          f" {'job JSON bytes':>15}")
    with source_tree(args.against) as previous, tempfile.TemporaryDirectory() as tmp:
        versions = [(REPO, "this")] + ([(previous, args.against[:9])] if args.against else [])
        figures: dict[str, list[tuple[float, float, float, float]]] = {v: [] for _, v in versions}
        for round_ in range(args.repeat):
            for tree, version in versions[::-1] if round_ % 2 else versions:
                try:
                    figures[version].append(server_round(args, tree, Path(tmp) / version))
                except RuntimeError as e:
                    print(f"{version:>9} failed: {e}", flush=True)
        for _, version in versions:
            if not figures[version]:
                continue
            columns = zip(*figures[version], strict=True)
            images_s, cpu_ms, read_b, json_b = (statistics.median(c) for c in columns)
            print(f"{version:>9} {images_s:>9.2f} {cpu_ms:>18.1f} {read_b:>17,.0f} "
                  f"{json_b:>15,.0f}", flush=True)


def server_round(args: argparse.Namespace, tree: Path, scratch: Path) -> tuple[float, ...]:
    """One version's run: (images/s, server CPU ms per job, bytes read per job, JSON bytes)."""
    import asyncio

    import aiohttp
    import orjson

    from bench.common import start, start_server, stop, wait_for_line
    from bench.queue import cpu_s

    scratch.mkdir(parents=True, exist_ok=True)
    store = scratch / f"jobs-{time.monotonic_ns()}.sqlite3"
    server, url = start_server(store, tree=tree)
    worker = start(["-m", "workers.cli", "sd3", "--server", url, "--key", "sd3-worker-key",
                    "--tiny", "--tiny-dir", str(scratch / "tiny-sd3"), "--device", args.device,
                    "--max-batch", str(args.batch), "--worker-id", "bench"], tree)
    inputs = {"prompt": "a lighthouse at dawn", "steps": args.steps, "width": args.size,
              "height": args.size, "num_images": args.images, "preview": "none"}

    async def one_job(http: aiohttp.ClientSession) -> tuple[int, int]:
        async with http.post(f"{url}/api/v1/endpoints/sd3/jobs?wait={args.wait_s:g}",
                             json={"inputs": inputs}) as reply:
            document = await reply.read()
            if reply.status != 200:  # 202: not finished in wait_s (an old worker drops results)
                raise RuntimeError(f"job not done in {args.wait_s:g} s: {reply.status} "
                                   f"{document[:200]!r}")
        read = len(document)
        for image in orjson.loads(document)["outputs"]["images"]:
            if isinstance(image, dict):  # a file reference: fetched as a user would
                async with http.get(f"{url}{image['url']}") as reply:
                    read += len(await reply.read())
        return read, len(document)

    async def all_jobs() -> tuple[float, float, list[tuple[int, int]]]:
        async with aiohttp.ClientSession() as http:
            await one_job(http)  # warm-up: the model's first call at this size
            before = cpu_s(server.pid)
            started = time.perf_counter()
            sizes = await asyncio.gather(*(one_job(http) for _ in range(args.jobs)))
            return time.perf_counter() - started, cpu_s(server.pid) - before, sizes

    try:
        wait_for_line(worker, r"serving sd3")
        elapsed_s, server_cpu_s, sizes = asyncio.run(all_jobs())
    finally:
        stop(worker, server)
    return (args.jobs * args.images / elapsed_s, 1000 * server_cpu_s / args.jobs,
            statistics.mean(r for r, _ in sizes), statistics.mean(j for _, j in sizes))


def jobs(args: argparse.Namespace, count: int, preview: str, round_: int) -> list[Job]:
    return [
        Job(id=f"{round_}-{i}", endpoint="sd3", lease_id="bench", inputs={
            "prompt": f"a photo of a cat number {i}", "negative_prompt": "", "seed": i,
            "steps": args.steps, "cfg_scale": args.cfg_scale, "width": args.size,
            "height": args.size, "num_images": 1, "image": None, "strength": 0.6,
            "preview": preview, "preview_every_n_steps": args.preview_every,
            "output_format": "png",
        })
        for i in range(count)
    ]


def measure(worker: SD3Worker, args: argparse.Namespace, count: int, preview: str) -> list[float]:
    """Seconds per run of `count` one-image jobs (one pipeline call), `repeat` times."""
    reports = 0

    def progress(job: Job, percent: float, outputs: dict[str, Any] | None) -> None:
        nonlocal reports
        reports += 1

    times = []
    for round_ in range(args.repeat):
        started = time.perf_counter()
        outcomes = worker.run(jobs(args, count, preview, round_), progress)
        times.append(time.perf_counter() - started)
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:
            raise SystemExit(f"bench: a job failed: {failed[0]}")
    return times


def main() -> None:
    args = parse_args()
    if args.through_server:
        through_server(args)
        return
    logging.basicConfig(level=logging.WARNING)
    worker = SD3Worker(SD3Worker.settings_from(args))
    started = time.perf_counter()
    worker.load()
    print(f"# model {args.model} on {worker.device} ({str(worker.dtype)[6:]}), loaded in "
          f"{time.perf_counter() - started:.1f} s; {args.size}x{args.size}, {args.steps} steps, "
          f"cfg {args.cfg_scale}, preview every {args.preview_every} step(s), "
          f"median of {args.repeat}")
    kinds = args.previews.split(",")
    for count in sorted({1, args.batch}):  # warm up each batch size (allocator, compile)
        measure(worker, argparse.Namespace(**{**vars(args), "repeat": 1}), count, kinds[-1])
    print(f"{'batch':>5} {'preview':>8} {'images/s':>9} {'s/image':>8} {'vs none':>8}")
    for count in sorted({1, args.batch}):
        base = None
        for kind in kinds:
            run_s = statistics.median(measure(worker, args, count, kind))
            base = run_s if kind == "none" else base
            overhead = f"{100 * (run_s / base - 1):+.1f}%" if base and kind != "none" else ""
            print(f"{count:>5} {kind:>8} {count / run_s:>9.2f} {run_s / count:>8.3f} "
                  f"{overhead:>8}", flush=True)
    worker.reporter.shutdown()


if __name__ == "__main__":
    main()
