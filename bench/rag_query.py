"""What one retrieval query costs in the worker: embedding the query, the FAISS searches, the
fusion and the metadata reads, on a real index.

    python bench/rag_query.py INDEX_DIR [--device cpu] [--repeat 3]

Text queries are the known questions of examples/corpus_questions.json; image queries are the
indexed images of examples/corpus/images. Prints p50/p99 milliseconds per query for text,
image and both. Build an index first, e.g. `jobhive-index build examples/corpus --out /tmp/idx`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The repository instead of bench/ (whose queue.py would shadow the standard library's).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from PIL import Image  # noqa: E402

from bench.common import percentile  # noqa: E402
from workers.rag.index import RagIndex  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", type=Path, help="an index folder")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over the queries")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()

    known = json.loads((EXAMPLES / "corpus_questions.json").read_text())
    questions = [q["question"] for q in known]
    images = []
    for path in sorted((EXAMPLES / "corpus" / "images").iterdir()):
        if path.suffix in (".png", ".jpg", ".webp"):
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
    with RagIndex.open(args.index, device=args.device) as index:
        stats = index.stats()
        print(f"index {args.index}: {stats['text_chunks']} text chunks, "
              f"{stats['images']} images, device {args.device}")
        cases = {
            "text": [{"text": q} for q in questions],
            "image": [{"image": i} for i in images],
            "text+image": [{"text": q, "image": images[n % len(images)]}
                           for n, q in enumerate(questions)],
        }
        index.search(text="warm up", top_k=args.top_k)  # first calls pay for lazy set-up
        index.search(image=images[0], top_k=args.top_k)
        print(f"{'query':>12} {'queries':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        for name, queries in cases.items():
            times_ms = []
            for _ in range(args.repeat):
                for query in queries:
                    started = time.perf_counter()
                    index.search(**query, top_k=args.top_k)
                    times_ms.append((time.perf_counter() - started) * 1000)
            print(f"{name:>12} {len(times_ms):>8} {percentile(times_ms, 0.5):>8.2f} "
                  f"{percentile(times_ms, 0.99):>8.2f} {statistics.fmean(times_ms):>8.2f}")


if __name__ == "__main__":
    main()
