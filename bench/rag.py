"""Retrieval index benchmark: FAISS build rate and query latency, flat vs IVF, with IVF recall.

For each collection size it makes N unit vectors of CLIP ViT-L/14's size (768-d), builds them
into an index with the library's own `build_faiss_index` (flat: IndexIDMap2(IndexFlatIP); IVF:
IndexIVFFlat with nlist = 4·√N capped at N/39, k-means training included in the build time),
then times queries through the library's `search_cpu`: one query per call (p50 and p99 over
--queries calls) and all queries in one call (the batch figure, per query). recall@10 is the
share of the flat index's true top 10 that IVF returns, per nprobe.

Two kinds of data: `random` (uniform on the sphere: no structure, the worst case for IVF) and
`clustered` (a low-rank mixture of overlapping clusters, as real embeddings bunch by topic; see
make_data); queries are fresh draws from the same distribution. Rows marked `10%` search with a
filter that allows every 10th id (as the CLIP index keeps one kind of item per list): recall is
then against the flat index under the same filter.

    python bench/rag.py                     # 10k and 100k, both kinds: ~45 s on 2 cores
    python bench/rag.py --sizes 10000 --data clustered --nprobe 8,32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# The repository instead of bench/ (whose queue.py would shadow the standard library's queue).
sys.path[0] = str(Path(__file__).resolve().parents[1])

import faiss  # noqa: E402

from bench.common import percentile  # noqa: E402
from workers.rag.vectors import build_faiss_index, search_cpu  # noqa: E402

K = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k",
                        help="vector counts, k for thousands (default 10k,100k)")
    parser.add_argument("--dim", type=int, default=768, help="dimensions (default 768)")
    parser.add_argument(
        "--data", default="random,clustered", help="random and/or clustered (default both)"
    )
    parser.add_argument("--queries", type=int, default=200, help="queries timed (default 200)")
    parser.add_argument("--nprobe", default="8,32,128", help="IVF nprobe values (default 8,32,128)")
    parser.add_argument(
        "--filtered-nprobe", type=int, default=128, help="nprobe of the filtered IVF row"
    )
    parser.add_argument("--threads", type=int, default=0, help="faiss threads (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def count(text: str) -> int:
    """A vector count as given on the command line: 2000 or 10k."""
    text = text.strip().lower()
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    faiss.normalize_L2(rows)
    return rows


def make_data(kind: str, n: int, queries: int, dim: int, seed: int) -> tuple[np.ndarray, ...]:
    """(database, queries), unit rows.

    random: uniform on the sphere. clustered: a mixture of 1,000 overlapping Gaussian clusters
    in 128 dimensions, projected into `dim` with 30% isotropic noise: low intrinsic dimension and
    clusters, as sentence and CLIP embeddings have (nearest-neighbour cosines ~0.4).
    """
    rng = np.random.default_rng(seed)
    if kind == "random":
        return unit(rng.standard_normal((n, dim))), unit(rng.standard_normal((queries, dim)))
    latent = 128
    projection = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    centres = 0.6 * rng.standard_normal((1000, latent)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        z = centres[rng.integers(0, len(centres), count)]
        rows = (z + rng.standard_normal((count, latent)).astype(np.float32)) @ projection
        noise = rng.standard_normal((count, dim)).astype(np.float32) / np.sqrt(dim)
        return unit(rows + 0.3 * np.linalg.norm(rows, axis=1, keepdims=True) * noise)

    return draw(n), draw(queries)


def timed_build(vectors: np.ndarray, ivf: bool) -> tuple[faiss.Index, float]:
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    started = time.perf_counter()
    index = build_faiss_index(vectors, ids, ivf_threshold=1 if ivf else len(vectors) + 1)
    return index, time.perf_counter() - started


def latencies(
    index: faiss.Index, queries: np.ndarray, nprobe: int, allowed: np.ndarray | None = None
) -> tuple:
    """(p50 ms, p99 ms) of one-query calls, ms per query of one batched call, and the ids."""
    search_cpu(index, queries[:5], K, nprobe=nprobe, allowed=allowed)  # warm up
    times = []
    for row in range(len(queries)):
        started = time.perf_counter()
        search_cpu(index, queries[row : row + 1], K, nprobe=nprobe, allowed=allowed)
        times.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    _, ids = search_cpu(index, queries, K, nprobe=nprobe, allowed=allowed)
    batch_ms = (time.perf_counter() - started) * 1000 / len(queries)
    return percentile(times, 0.5), percentile(times, 0.99), batch_ms, ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def main() -> None:
    args = parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    sizes = [count(s) for s in args.sizes.split(",")]
    probes = [int(p) for p in args.nprobe.split(",")]
    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, dim {args.dim}, "
        f"{args.queries} queries, k={K}; filter 10%: only every 10th id allowed (IDSelector)"
    )
    header = (
        f"{'data':9} {'n':>7} {'index':12} {'nlist':>5} {'nprobe':>6} {'filter':>6} "
        f"{'build s':>7} {'vectors/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'batch ms/q':>10} "
        f"{'recall@10':>9}"
    )
    print(header)
    print("-" * len(header))

    def row(kind, n, name, nlist, nprobe, allowed, build_s, measured, truth):
        p50, p99, batch, found = measured
        print(
            f"{kind:9} {n:>7} {name:12} {nlist:>5} {nprobe:>6} "
            f"{'-' if allowed is None else '10%':>6} {build_s:>7.2f} {n / build_s:>9.0f} "
            f"{p50:>7.2f} {p99:>7.2f} {batch:>10.3f} {recall(found, truth):>9.3f}",
            flush=True,
        )

    for kind in args.data.split(","):
        for n in sizes:
            vectors, queries = make_data(kind, n, args.queries, args.dim, args.seed)
            allowed = np.arange(1, n + 1, 10, dtype=np.int64)
            flat, flat_s = timed_build(vectors, ivf=False)
            truth = {}
            for sel in (None, allowed):
                measured = latencies(flat, queries, 1, sel)
                truth[sel is None] = measured[3]
                row(kind, n, "IndexFlatIP", "-", "-", sel, flat_s, measured, measured[3])
            ivf, ivf_s = timed_build(vectors, ivf=True)
            for nprobe in probes:
                measured = latencies(ivf, queries, nprobe)
                row(kind, n, "IndexIVFFlat", ivf.nlist, nprobe, None, ivf_s, measured, truth[True])
            measured = latencies(ivf, queries, args.filtered_nprobe, allowed)
            row(
                kind,
                n,
                "IndexIVFFlat",
                ivf.nlist,
                args.filtered_nprobe,
                allowed,
                ivf_s,
                measured,
                truth[False],
            )


if __name__ == "__main__":
    main()
