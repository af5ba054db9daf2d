"""The FAISS side of the retrieval index: building, saving, extracting and searching indexes.

Every index holds L2-normalised float32 vectors under inner product (so scores are cosines),
with the metadata row ids as its ids:

- below `ivf_threshold` vectors: IndexIDMap2(IndexFlatIP), exact;
- from `ivf_threshold` on: IndexIVFFlat, trained by k-means on the vectors it holds, with
  nlist = 4·√n lists, capped so that each list gets at least 39 training points (below that
  faiss's k-means warns that its centroids are poor). A search scans `nprobe` of them.

`needs_rebuild` says when the collection has outgrown (or shrunk below) the index it has; a
rebuild extracts every (id, vector) and builds anew. Index files are written to a temporary
name, flushed to disk and renamed, so a crash leaves the old file or the new one, never half.

GPU: where faiss has GPUs and the index runs on CUDA, building an IVF index (k-means training and
adding its vectors) runs on the GPU, and searches use a GPU copy of each index, made again after
each change; the CPU index stays the master that small incremental adds go to, and what is
saved is always a CPU index (faiss.index_gpu_to_cpu). GPU indexes ignore IDSelectors, so a
kind-filtered search on the GPU oversamples and filters, and falls back to the CPU index with an
IDSelector when that does not find enough.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

MIN_POINTS_PER_LIST = 39  # faiss's k-means warns below this many training points per centroid
GPU_MAX_K = 2048  # the most results a faiss GPU search returns per query


def ivf_nlist(n: int) -> int:
    """The number of IVF lists for n vectors: 4·√n, at most n / 39, at least 1."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST))


def is_ivf(index: faiss.Index) -> bool:
    return isinstance(index, faiss.IndexIVF)


def empty_index(dim: int) -> faiss.Index:
    """An exact (flat) inner-product index with ids."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def build_faiss_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    ivf_threshold: int,
    gpu: faiss.GpuResources | None = None,
) -> faiss.Index:
    """Builds the index the library uses for these vectors: flat below ivf_threshold, else IVF.

    Args:
        vectors (np.ndarray): (n, d) float32, L2-normalised.
        ids (np.ndarray): (n,) int64 ids (metadata row ids).
        ivf_threshold (int): from this many vectors on, an IndexIVFFlat is trained.
        gpu (faiss.GpuResources | None, default None): train and add on GPU 0 with these.

    Returns:
        faiss.Index: a CPU index (IndexIDMap2(IndexFlatIP) or IndexIVFFlat) holding the vectors.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    if n < ivf_threshold:
        index = empty_index(dim)
        if n:
            index.add_with_ids(vectors, ids)
        return index
    nlist = ivf_nlist(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # nlist is sized for the data: no warning wanted
    if gpu is not None:
        on_gpu = faiss.index_cpu_to_gpu(gpu, 0, index)
        on_gpu.train(vectors)
        on_gpu.add_with_ids(vectors, ids)
        return faiss.index_gpu_to_cpu(on_gpu)
    index.train(vectors)
    index.add_with_ids(vectors, ids)
    return index


def needs_rebuild(index: faiss.Index, ivf_threshold: int) -> bool:
    """Whether the index no longer suits its size: flat past the threshold, IVF below half of it,
    or IVF whose collection grew enough that it wants twice the lists it was trained with."""
    n = index.ntotal
    if not is_ivf(index):
        return n >= ivf_threshold
    return n < ivf_threshold // 2 or ivf_nlist(n) >= 2 * index.nlist


def all_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """Every (ids, vectors) an index holds (for rebuilding it)."""
    dim = index.d
    if is_ivf(index):
        from faiss.contrib.inspect_tools import get_invlist

        ids, rows = [np.zeros(0, np.int64)], [np.zeros((0, dim), np.float32)]
        for list_no in range(index.nlist):
            list_ids, codes = get_invlist(index.invlists, list_no)
            if len(list_ids):
                ids.append(list_ids.astype(np.int64))
                rows.append(codes.view(np.float32).reshape(len(list_ids), dim))
        return np.concatenate(ids), np.concatenate(rows)
    flat = faiss.downcast_index(index.index)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if not index.ntotal:
        return ids, np.zeros((0, dim), np.float32)
    return ids, flat.reconstruct_n(0, index.ntotal)


def describe(index: faiss.Index, nprobe: int) -> dict[str, object]:
    """What an index is, for stats and the index's config row."""
    if is_ivf(index):
        return {
            "kind": "IndexIVFFlat",
            "vectors": int(index.ntotal),
            "nlist": int(index.nlist),
            "nprobe": min(nprobe, int(index.nlist)),
        }
    return {"kind": "IndexFlatIP", "vectors": int(index.ntotal)}


def write_index(index: faiss.Index, path: Path) -> None:
    """Saves a CPU index atomically: a temporary file, flushed to disk, renamed over `path`."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        faiss.write_index(index, str(temporary))
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))  # already the concrete class (IndexIDMap2, IndexIVFFlat)


def search_cpu(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    nprobe: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Searches a CPU index, optionally only among the ids in `allowed` (an IDSelector).

    IVF scans `nprobe` lists, or nprobe / f lists under a filter that allows a share f of the
    vectors. When that still finds fewer results than it could (the allowed ids are rare in the
    lists nearest the query: CLIP's images among text chunks, say), it scans four times as many
    lists, up to all of them, so that results are never missing for want of probing.

    Returns:
        (scores, ids): (m, k) arrays; id -1 where there is no result.
    """
    k = max(1, min(k, index.ntotal))
    selector = faiss.IDSelectorBatch(allowed) if allowed is not None else None
    if not is_ivf(index):
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        return index.search(queries, k, params=params)
    wanted = min(k, index.ntotal if allowed is None else len(allowed))
    # A filter that keeps a share f of the vectors scans 1/f as many lists, so that about as
    # many allowed vectors are compared as an unfiltered search compares vectors.
    share = 1.0 if allowed is None else max(len(allowed), 1) / max(index.ntotal, 1)
    probes = max(1, min(math.ceil(nprobe / share), index.nlist))
    while True:
        params = faiss.SearchParametersIVF(sel=selector, nprobe=probes)
        scores, ids = index.search(queries, k, params=params)
        if probes >= index.nlist or (ids >= 0).sum(axis=1).min() >= wanted:
            return scores, ids
        probes = min(index.nlist, probes * 4)


class GpuSearch:
    """GPU copies of CPU indexes for searching, made on first use after each change."""

    def __init__(self) -> None:
        self.resources = faiss.StandardGpuResources()
        self._copies: dict[str, faiss.Index] = {}

    def forget(self) -> None:
        """Drops the copies (the CPU indexes changed)."""
        self._copies.clear()

    def search(
        self,
        name: str,
        index: faiss.Index,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As search_cpu; filtering oversamples up to GPU_MAX_K, else falls back to the CPU."""
        if name not in self._copies:
            self._copies[name] = faiss.index_cpu_to_gpu(self.resources, 0, index)
            if is_ivf(index):
                faiss.GpuParameterSpace().set_index_parameter(
                    self._copies[name], "nprobe", min(nprobe, index.nlist)
                )
        copy = self._copies[name]
        if allowed is None:
            return copy.search(queries, max(1, min(k, index.ntotal, GPU_MAX_K)))
        depth = max(1, min(GPU_MAX_K, index.ntotal, max(4 * k, 256)))
        scores, ids = copy.search(queries, depth)
        keep = np.isin(ids, allowed)
        if keep.sum(axis=1).min() >= min(k, len(allowed)):
            return _first_kept(scores, ids, keep, k)
        return search_cpu(index, queries, k, nprobe=nprobe, allowed=allowed)


def _first_kept(
    scores: np.ndarray, ids: np.ndarray, keep: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first k kept results of each row, padded with id -1."""
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    for row in range(len(ids)):
        chosen = np.flatnonzero(keep[row])[:k]
        out_scores[row, : len(chosen)] = scores[row, chosen]
        out_ids[row, : len(chosen)] = ids[row, chosen]
    return out_scores, out_ids


class IndexPair:
    """The two FAISS indexes of an index folder ("text" and "clip"), as of one generation.

    Their files are INDEX_DIR/NAME.GENERATION.faiss; `save` writes a new generation beside the
    current one, and `drop_others` deletes the rest once the metadata naming it is committed.

    Args:
        folder (Path): INDEX_DIR.
        device (str): "cuda..." puts searches and IVF training on the GPU where faiss has one.
    """

    NAMES = ("text", "clip")

    def __init__(self, folder: Path, device: str) -> None:
        self.folder = folder
        self.indexes: dict[str, faiss.Index] = {}
        self.gpu = None
        if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources"):
            self.gpu = GpuSearch() if faiss.get_num_gpus() > 0 else None

    def path(self, name: str, generation: int) -> Path:
        return self.folder / f"{name}.{generation}.faiss"

    def load(self, generation: int) -> None:
        """Reads the files of a generation (RuntimeError if one is missing or unreadable)."""
        self.indexes = {name: read_index(self.path(name, generation)) for name in self.NAMES}
        self.changed()

    def save(self, generation: int) -> None:
        for name, index in self.indexes.items():
            write_index(index, self.path(name, generation))

    def drop_others(self, generation: int) -> None:
        """Deletes the files of every generation but this one."""
        for path in self.folder.glob("*.faiss"):
            if path.name.split(".")[1] != str(generation):
                path.unlink(missing_ok=True)

    def changed(self) -> None:
        """To be called after any change: GPU copies are made again at the next search."""
        if self.gpu is not None:
            self.gpu.forget()

    def add(self, name: str, vectors: np.ndarray, ids: Sequence[int]) -> None:
        if len(ids):
            self.indexes[name].add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
            self.changed()

    def remove(self, ids: np.ndarray) -> None:
        """Removes these ids from both indexes."""
        if len(ids):
            for index in self.indexes.values():
                index.remove_ids(ids)
            self.changed()

    def rebuild_if_needed(self, ivf_threshold: int) -> list[str]:
        """Rebuilds each index that no longer suits its size; returns the names rebuilt."""
        rebuilt = []
        gpu = self.gpu.resources if self.gpu is not None else None
        for name, index in self.indexes.items():
            if needs_rebuild(index, ivf_threshold):
                ids, vectors = all_vectors(index)
                self.indexes[name] = build_faiss_index(
                    vectors, ids, ivf_threshold=ivf_threshold, gpu=gpu
                )
                rebuilt.append(name)
        if rebuilt:
            self.changed()
        return rebuilt

    def search(
        self, name: str, query: np.ndarray, k: int, *, nprobe: int, allowed: np.ndarray | None
    ) -> list[tuple[int, float]]:
        """(id, cosine) of the k best vectors of index `name` for one query (among `allowed`
        ids only, if given), best first."""
        index = self.indexes[name]
        if not index.ntotal or (allowed is not None and not len(allowed)):
            return []
        if self.gpu is not None:
            scores, ids = self.gpu.search(name, index, query, k, nprobe=nprobe, allowed=allowed)
        else:
            scores, ids = search_cpu(index, query, k, nprobe=nprobe, allowed=allowed)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def describe(self, nprobe: int) -> dict[str, dict[str, object]]:
        return {name: describe(index, nprobe) for name, index in self.indexes.items()}

    def ids(self, name: str) -> np.ndarray:
        """The ids index `name` holds, sorted."""
        return np.sort(all_vectors(self.indexes[name])[0])
