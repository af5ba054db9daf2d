"""SD3 worker benchmark: images/s and seconds per image, batch 1 vs batch N, with and without
previews, at a size and step count given on the command line.

It drives the worker's own `run()` in this process (no server: bench/queue.py measures the
queue), with the options `jobhive-worker sd3` takes, so what it measures is what a worker does:
checking inputs, one pipeline call per group of compatible jobs, previews (made, copied back,
JPEG-encoded and reported), VAE decoding and PNG encoding with metadata.

    python bench/sd3.py --tiny --size 64 --steps 4 --batch 4            # CPU, no downloads
    python bench/sd3.py --model /models/sd3-medium --size 1024 --steps 28 --batch 4   # CUDA
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
sys.path[0] = str(Path(__file__).resolve().parents[1])

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
    SD3Worker.add_arguments(parser)
    args = parser.parse_args()
    if args.tiny:
        args.model = str(build_tiny_sd3(args.tiny_dir))
    return args


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
