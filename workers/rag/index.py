"""A multimodal retrieval index over folders of documents and images, kept in one folder.

Documents are cut into overlapping text chunks (workers/rag/read.py); each chunk is embedded twice:
by a sentence-embedding model (all-MiniLM-L6-v2 unless told otherwise) for text→text, and by
CLIP's text tower for text↔image. Images are embedded by CLIP's image tower
(workers/rag/embed.py). INDEX_DIR then holds:

    meta.sqlite3       files, items (chunks and images) and the index's config row
    text.G.faiss       the text index: MiniLM vectors of the text chunks
    clip.G.faiss       the CLIP index: CLIP vectors of the images AND of the text chunks
    tiny-clip/         the tiny CLIP's weights and tokenizer, when built with clip="tiny"

Both FAISS indexes hold unit float32 vectors under inner product (cosine), with the items' row ids
as ids (workers/rag/vectors.py: flat, then IVF past a size). G is the generation: an `add` writes
new files and then commits the metadata naming them, so a crash at any point leaves the last
committed index whole.

A search runs up to four ranked lists:

    text query:   text→text   (MiniLM, text chunks)     text→image  (CLIP, images)
    image query:  image→image (CLIP, images)            image→text  (CLIP, text chunks)

and fuses them by Reciprocal Rank Fusion (workers/rag/results.py: Σ 1/(60 + rank) over the
lists that found an item). Each list is LIST_DEPTH (50) deep, or top_k if more, so that an item
ranked a little lower by a second list still gets that list's share. The CLIP index holds both
kinds: each CLIP list keeps only its own kind with a FAISS IDSelector (vectors.search_cpu,
which also widens an IVF search as needed).

A file's `source` is the name of the folder given to `add` followed by the file's path inside it,
with "/" (`add(["/data/docs"])` indexes /data/docs/a/b.txt as "docs/a/b.txt"); a file given
itself is its name. It is the file's key: adding the folder again skips files whose size and
mtime (or, failing those, sha256) are unchanged, re-indexes changed ones and drops files that
are gone from it. Two different folders with the same name share keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from workers.rag import vectors
from workers.rag.embed import (
    BUNDLED_TEXT_MODEL,
    ClipEmbedder,
    TextEmbedder,
    load_embedder,
    model_path,
    recorded_path,
)
from workers.rag.meta import (
    FORMAT,
    META,
    TINY_CLIP,
    VERSION,
    IndexSettings,
    Metadata,
    check_index_dir,
    index_info,
    info,
    is_index,
    remove_index_files,
)
from workers.rag.read import (
    READER_VERSION,
    ImageItem,
    Progress,
    ProgressFn,
    ReadError,
    file_kind,
    read_chunks,
    read_image,
    to_rgb,
    walk_sources,
)
from workers.rag.results import LISTS, RRF_K, Hit, fuse
from workers.tiny.clip import build_tiny_clip

__all__ = [
    "RRF_K",
    "AddReport",
    "Hit",
    "IndexSettings",
    "RagIndex",
    "fuse",
    "image_from_bytes",
    "index_info",
    "is_index",
    "remove_index_files",
]

log = logging.getLogger("jobhive.rag")

LIST_DEPTH = 50  # each ranked list is this deep (or top_k, if more) before fusion
CHECKPOINT_EVERY_S = 300.0  # a long `add` saves its progress this often


@dataclass
class AddReport:
    """What an `add` did. files_failed: (source, reason) for each file that could not be read."""

    files_added: int = 0
    files_updated: int = 0
    files_unchanged: int = 0
    files_failed: list[tuple[str, str]] = field(default_factory=list)
    files_ignored: int = 0  # not an indexed extension, or hidden
    files_removed: int = 0  # gone from a folder that was added again
    text_chunks_added: int = 0
    images_added: int = 0

    def summary(self) -> str:
        """One line: "indexed 12 files: 40 text chunks, 5 images; 1 failed, 3 unchanged"."""
        done = self.files_added + self.files_updated
        counts = [f"{len(self.files_failed)} failed", f"{self.files_unchanged} unchanged"]
        if self.files_removed:
            counts.append(f"{self.files_removed} removed")
        if self.files_ignored:
            counts.append(f"{self.files_ignored} ignored")
        return (
            f"indexed {_count(done, 'file')}: {_count(self.text_chunks_added, 'text chunk')}, "
            f"{_count(self.images_added, 'image')}; {', '.join(counts)}"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def image_from_bytes(data: bytes, max_pixels: int = IndexSettings.max_image_pixels) -> Image.Image:
    """An RGB PIL image from a file's bytes, for `search(image=...)`.

    Raises:
        ValueError: the bytes are not an image Pillow can read (or it is too large).
    """
    try:
        return read_image(data, max_pixels).image
    except ReadError as e:
        raise ValueError(f"`image`: {e}") from e


@dataclass
class _Pending:
    """A file read and waiting to be embedded with others."""

    source: str
    root: str
    size: int
    mtime_ns: int
    sha256: str
    kind: str
    existed: bool
    chunks: list = field(default_factory=list)
    image: ImageItem | None = None


class RagIndex:
    """A retrieval index in a folder: `create` or `open` it, `add` files, `search`.

    Thread-safe: one lock around every use (the worker may load in one thread, search in
    another). Use `RagIndex.create` or `RagIndex.open`, not the constructor.
    """

    def __init__(
        self,
        index_dir: Path,
        meta: Metadata,
        clip: ClipEmbedder,
        text: TextEmbedder,
        settings: IndexSettings,
        device: str,
    ) -> None:
        self.dir = index_dir
        self.device = device
        self.settings = settings
        self._meta = meta
        self._clip = clip
        self._text = text
        self._lock = threading.RLock()
        self._faiss = vectors.IndexPair(index_dir, device)
        self._kind_ids: dict[str, np.ndarray] = {}
        recorded = json.loads(meta.config()["settings"])
        # Read by another version of rag_read: the next `add` reads every file again.
        self._reread = recorded.get("reader_version", 0) != READER_VERSION
        self._load_faiss()

    # -- creating and opening -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        index_dir: Path,
        *,
        clip: str = "tiny",
        text_model: str | None = None,
        device: str = "cpu",
        settings: IndexSettings | None = None,
        overwrite: bool = False,
    ) -> RagIndex:
        """Makes a new, empty index in `index_dir` (created if missing).

        Args:
            index_dir (Path): the folder; it must not hold an index unless `overwrite`.
            clip (str, default "tiny"): "tiny" (a tiny random-weight CLIP built into
                INDEX_DIR/tiny-clip), a CLIP checkpoint folder, or a model name in the local
                Hugging Face cache (e.g. openai/clip-vit-large-patch14).
            text_model (str | None, default None): a sentence-transformers folder; None for the
                bundled all-MiniLM-L6-v2.
            device (str, default "cpu"): where the models (and FAISS, on "cuda") run.
            settings (IndexSettings | None, default IndexSettings()): chunking, IVF and batch
                settings, recorded in the index.
            overwrite (bool, default False): replace an index already there (its files only).

        Raises:
            FileExistsError: `index_dir` already holds an index and not `overwrite`.
            ValueError: a model cannot be found or loaded.
        """
        index_dir = Path(index_dir)
        settings = settings or IndexSettings()
        if is_index(index_dir):
            if not overwrite:
                raise FileExistsError(f"{index_dir} already holds an index")
            remove_index_files(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        if clip == "tiny":
            clip_path, clip_record = build_tiny_clip(index_dir / TINY_CLIP), TINY_CLIP
        else:
            clip_path = clip_record = recorded_path(clip)
        text_record = BUNDLED_TEXT_MODEL if text_model is None else recorded_path(text_model)
        clip_embedder = load_embedder(ClipEmbedder, clip_path, device)
        text_embedder = load_embedder(TextEmbedder, text_record, device)
        # The database is made under a temporary name, with empty FAISS files (generation 0),
        # then renamed: a folder is an index once META exists, and then it is whole.
        staging = index_dir / f".{META}.tmp-{os.getpid()}"
        staging.unlink(missing_ok=True)
        Metadata.create(
            staging,
            {
                "format": FORMAT,
                "version": VERSION,
                "clip_model": clip_record,
                "text_model": text_record,
                "clip_dim": clip_embedder.dim,
                "text_dim": text_embedder.dim,
                "settings": json.dumps(_recorded(settings)),
                "faiss": "{}",
                "generation": 0,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        for name, dim in (("text", text_embedder.dim), ("clip", clip_embedder.dim)):
            vectors.write_index(vectors.empty_index(dim), index_dir / f"{name}.0.faiss")
        os.replace(staging, index_dir / META)
        log.info("new index in %s (clip %s, text %s)", index_dir, clip_record, text_record)
        meta = Metadata(index_dir / META)
        return cls(index_dir, meta, clip_embedder, text_embedder, settings, device)

    @classmethod
    def open(
        cls,
        index_dir: Path,
        *,
        device: str = "cpu",
        clip: str | None = None,
        text_model: str | None = None,
        nprobe: int | None = None,
        batch_size: int | None = None,
        ivf_threshold: int | None = None,
    ) -> RagIndex:
        """Opens an index with the models it was built with (or others of the same dims).

        Args:
            index_dir (Path): a folder made by `create` (or `jobhive-index build`).
            device (str, default "cpu"): where the models (and FAISS, on "cuda") run.
            clip, text_model (str | None, default None): model folders to use instead of the
                recorded ones; they must embed in the same number of dimensions (and should be
                the same models, or the results mean little).
            nprobe, batch_size, ivf_threshold (int | None, default None): override the recorded
                settings (and are recorded by the next `add`).

        Raises:
            FileNotFoundError: no such folder, or it holds no index.
            ValueError: not an index this version reads, or a model that does not fit it.
        """
        index_dir = Path(index_dir)
        check_index_dir(index_dir)
        meta = Metadata(index_dir / META)
        try:
            config = meta.config()
            clip_path = clip or model_path(config["clip_model"], index_dir)
            text_path = text_model or model_path(config["text_model"], index_dir)
            clip_embedder = load_embedder(ClipEmbedder, clip_path, device)
            text_embedder = load_embedder(TextEmbedder, text_path, device)
            for name, embedder in (("clip", clip_embedder), ("text", text_embedder)):
                if embedder.dim != config[f"{name}_dim"]:
                    raise ValueError(
                        f"the {name} model {(clip_path, text_path)[name == 'text']!r} embeds in "
                        f"{embedder.dim} dimensions, but the index in {index_dir} was built with "
                        f"{config[f'{name}_model']!r} ({config[f'{name}_dim']} dimensions)"
                    )
            overrides = {"nprobe": nprobe, "batch_size": batch_size, "ivf_threshold": ivf_threshold}
            recorded = json.loads(config["settings"])
            known = {f.name for f in fields(IndexSettings)}  # a newer index may record more
            settings = replace(
                IndexSettings(**{k: v for k, v in recorded.items() if k in known}),
                **{k: v for k, v in overrides.items() if v is not None},
            )
            return cls(index_dir, meta, clip_embedder, text_embedder, settings, device)
        except BaseException:
            meta.close()
            raise

    def close(self) -> None:
        """Closes the database; the index cannot be used after."""
        with self._lock:
            self._meta.close()
            self._faiss.changed()

    def __enter__(self) -> RagIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- adding ---------------------------------------------------------------------------------

    def add(self, sources: Sequence[Path], *, progress: bool | ProgressFn = True) -> AddReport:
        """Indexes the files in `sources` (folders, walked recursively, or files).

        New files are added, changed ones re-indexed (their old items removed), unchanged ones
        skipped, files gone from a folder given again dropped. A file that cannot be read is
        logged (a warning on the "jobhive.rag" logger, with the reason), listed in the report
        and skipped; a file that failed before is tried again.

        Args:
            sources (Sequence[Path]): files and folders; hidden ones (".name") are skipped.
            progress (bool | Callable, default True): True for a tqdm bar on stderr, False for
                none, or a function called as progress(files_done, files_total, source).

        Returns:
            AddReport: counts of what was done, and the failed files with their reasons.

        Raises:
            FileNotFoundError: a source does not exist (checked before anything is done).
        """
        with self._lock:
            if self._reread:
                sources = self._with_recorded_roots(sources)
            files, ignored = walk_sources(sources, skip=self.dir)
            report = AddReport(files_ignored=ignored)
            with Progress(progress, len(files)) as bar:
                self._meta.begin()
                try:
                    self._add_files(files, report, bar)
                    self._prune(sources, {source for source, _, _ in files}, report)
                    self._checkpoint()
                except BaseException:
                    self._meta.rollback()
                    self._load_faiss()  # back to what the committed metadata names
                    raise
            self._reread = False
        return report

    def _with_recorded_roots(self, sources: Sequence[Path]) -> list[Path]:
        """`sources` plus every file and folder indexed before that still exists: what an
        index read by another version of rag_read must read again."""
        given = {os.path.abspath(s) for s in sources}
        roots = [Path(r) for r in self._meta.roots() if r not in given and Path(r).exists()]
        log.warning("%s was read by another version of jobhive: reading all %d of its files "
                    "and folders again", self.dir, len(roots) + len(given))
        return [*sources, *roots]

    def _add_files(
        self, files: list[tuple[str, Path, str]], report: AddReport, bar: Progress
    ) -> None:
        """Reads the files and stores them in groups big enough for batched embedding."""
        pending: list[_Pending] = []
        last_checkpoint = time.monotonic()
        for source, path, root in files:
            try:
                read = self._read(source, path, root)
            except (ReadError, OSError) as e:
                self._fail(source, root, str(e), report)
            else:
                if read is None:
                    report.files_unchanged += 1
                else:
                    pending.append(read)
            bar.step(source)
            chunks = sum(len(p.chunks) for p in pending)
            images = sum(p.image is not None for p in pending)
            if chunks >= 8 * self.settings.batch_size or images >= self.settings.batch_size:
                self._store(pending, report)
                pending = []
                if time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:
                    self._checkpoint()
                    self._meta.begin()
                    last_checkpoint = time.monotonic()
        self._store(pending, report)

    def _read(self, source: str, path: Path, root: str) -> _Pending | None:
        """The file read and chunked (or decoded), or None when it is unchanged."""
        stat = path.stat()
        row = self._meta.file(source)
        indexed = row is not None and row[3] == "indexed" and not self._reread
        if indexed and (row[0], row[1]) == (stat.st_size, stat.st_mtime_ns):
            return None
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if indexed and row[2] == digest:  # touched, not changed
            self._meta.touch(source, len(data), stat.st_mtime_ns, root)
            return None
        kind = file_kind(path)
        pending = _Pending(source, root, len(data), stat.st_mtime_ns, digest, kind, row is not None)
        if kind == "image":
            pending.image = read_image(data, self.settings.max_image_pixels)
        else:
            settings = self.settings
            pending.chunks = read_chunks(path, data, settings.chunk_chars, settings.overlap_chars)
        return pending

    def _fail(self, source: str, root: str, reason: str, report: AddReport) -> None:
        log.warning("skipped %s: %s", source, reason)
        report.files_failed.append((source, reason))
        self._remove_items([source])
        self._meta.set_failed(source, root, file_kind(Path(source)) or "text", reason)

    def _store(self, pending: list[_Pending], report: AddReport) -> None:
        """Embeds the pending files together and stores their items (a file whose embedding
        fails is retried alone, then reported as failed)."""
        if not pending:
            return
        try:
            text_vectors, clip_text_vectors, image_vectors = self._embed(pending)
        except Exception as e:  # a model error on one odd input must not sink the others
            if len(pending) == 1:
                self._fail(pending[0].source, pending[0].root, f"embedding failed: {e}", report)
            else:
                for p in pending:
                    self._store([p], report)
            return
        self._remove_items([p.source for p in pending])
        text_ids, image_ids = [], []
        for p in pending:
            self._meta.set_indexed(p.source, p.root, p.size, p.mtime_ns, p.sha256, p.kind)
            text_ids += self._meta.add_chunks(p.source, p.chunks)
            if p.image is not None:
                image = p.image
                image_ids.append(
                    self._meta.add_image(p.source, image.thumbnail, image.width, image.height)
                )
            report.files_updated += p.existed
            report.files_added += not p.existed
        self._faiss.add("text", text_vectors, text_ids)
        self._faiss.add("clip", clip_text_vectors, text_ids)
        self._faiss.add("clip", image_vectors, image_ids)
        report.text_chunks_added += len(text_ids)
        report.images_added += len(image_ids)
        self._changed()

    def _embed(self, pending: list[_Pending]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(MiniLM vectors of all chunks, CLIP vectors of all chunks, CLIP vectors of images)."""
        texts = [chunk.text for p in pending for chunk in p.chunks]
        images = [p.image.image for p in pending if p.image is not None]
        batch = self.settings.batch_size
        return (
            self._text.embed(texts, batch),
            self._clip.embed_texts(texts, batch),
            self._clip.embed_images(images, batch),
        )

    def _remove_items(self, sources: list[str]) -> None:
        """Deletes the items of these files from the database and both FAISS indexes."""
        ids = self._meta.item_ids(sources) if sources else []
        if len(ids):
            self._faiss.remove(ids)
            self._meta.delete_items(sources)
            self._changed()

    def _prune(self, sources: Sequence[Path], walked: set[str], report: AddReport) -> None:
        """Drops the files of folders given again that are no longer in them."""
        folders = [os.path.abspath(s) for s in sources if Path(s).is_dir()]
        gone = [s for f in folders for s in self._meta.sources_under(f) if s not in walked]
        if gone:
            self._remove_items(gone)
            self._meta.delete_files(gone)
            report.files_removed += len(gone)

    def _checkpoint(self) -> None:
        """Rebuilds FAISS indexes that outgrew their kind, saves both as the next generation and
        commits the open transaction naming it; then deletes older generations."""
        for name in self._faiss.rebuild_if_needed(self.settings.ivf_threshold):
            log.info("rebuilt the %s index: %s", name, self._faiss.describe(0)[name])
        generation = self._generation + 1
        self._faiss.save(generation)
        self._meta.set_generation(generation, _recorded(self.settings), self._describe())
        self._meta.commit()
        self._generation = generation
        self._faiss.drop_others(generation)
        self._changed()

    def _load_faiss(self) -> None:
        """Loads the FAISS files of the committed generation (trying again if an `add` in
        another process commits a newer one and deletes them meanwhile)."""
        for attempt in range(3):
            generation = self._meta.generation()
            try:
                self._faiss.load(generation)
                break
            except RuntimeError:
                if attempt == 2:
                    raise ValueError(
                        f"{self.dir}: the FAISS files of generation {generation} are missing "
                        "or unreadable"
                    ) from None
        self._generation = generation
        self._changed()

    def _changed(self) -> None:
        self._kind_ids.clear()
        self._faiss.changed()

    # -- searching ------------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        image: Image.Image | bytes | None = None,
        *,
        top_k: int = 5,
        kinds: Sequence[str] = ("text", "image"),
    ) -> list[Hit]:
        """Finds the text chunks and images that best match a text, an image, or both.

        Args:
            text (str | None): the query text (blank counts as none).
            image (PIL.Image.Image | bytes | None): the query image, or an image file's bytes.
            top_k (int, default 5): the most hits returned.
            kinds (Sequence[str], default ("text", "image")): which kinds of items to return.

        Returns:
            list[Hit]: best first, fused over the lists run (see the module's docstring); empty
            when the index is.

        Raises:
            ValueError: no query, image bytes that are not an image, bad top_k or kinds.
        """
        # 1. Check inputs
        text = text.strip() if isinstance(text, str) and text.strip() else None
        if isinstance(image, bytes | bytearray):
            image = image_from_bytes(bytes(image), self.settings.max_image_pixels)
        if image is not None and not isinstance(image, Image.Image):
            raise ValueError(f"`image` must be a PIL image or bytes (got {type(image).__name__})")
        if text is None and image is None:
            raise ValueError("give a `text` or an `image` to search for (or both)")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"`top_k` must be a positive integer (got {top_k!r})")
        if isinstance(kinds, str) or not kinds or not set(kinds) <= {"text", "image"}:
            raise ValueError(f"`kinds` must list 'text' and/or 'image' (got {kinds!r})")
        given = {"text": text is not None, "image": image is not None}
        wanted = [n for n, kind in LISTS.items() if kind in kinds and given[n.split("→")[0]]]
        with self._lock:
            # 2. Embed the query with each model it needs
            queries = {}
            if "text→text" in wanted:
                queries["text→text"] = self._text.embed([text])
            if "text→image" in wanted:
                queries["text→image"] = self._clip.embed_texts([text])
            if image is not None:
                vector = self._clip.embed_images([to_rgb(image)])
                queries.update({n: vector for n in ("image→image", "image→text") if n in wanted})
            # 3. Run each ranked list
            depth = max(top_k, LIST_DEPTH)
            ranked = [self._ranked(name, queries[name], depth) for name in wanted]
            # 4. Fuse them, and 5. look the winners up
            fused = fuse(ranked)[:top_k]
            rows = self._meta.hits([item_id for item_id, *_ in fused]) if fused else {}
        return [
            Hit(score, similarity, found_by=tuple(wanted[n] for n in lists), **rows[item_id])
            for item_id, score, similarity, lists in fused
            if item_id in rows
        ]

    def _ranked(self, name: str, query: np.ndarray, depth: int) -> list[tuple[int, float]]:
        """One ranked list: (id, cosine), best first."""
        if name == "text→text":
            return self._faiss.search(
                "text", query, depth, nprobe=self.settings.nprobe, allowed=None
            )
        # The CLIP index holds both kinds: the list keeps its own.
        allowed = self._ids_of(LISTS[name])
        return self._faiss.search(
            "clip", query, depth, nprobe=self.settings.nprobe, allowed=allowed
        )

    def _ids_of(self, kind: str) -> np.ndarray:
        if kind not in self._kind_ids:
            self._kind_ids[kind] = self._meta.ids_of_kind(kind)
        return self._kind_ids[kind]

    # -- describing -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """index_info's figures (live), plus the device and whether FAISS runs on a GPU."""
        with self._lock:
            figures = info(self._meta, self.dir)
            del figures["failed"]  # may be long: failed_files() has it
            figures.update(faiss=self._describe(), settings=asdict(self.settings))
            return {**figures, "device": self.device, "faiss_gpu": self._faiss.gpu is not None}

    def _describe(self) -> dict[str, Any]:
        return self._faiss.describe(self.settings.nprobe)

    def failed_files(self) -> list[tuple[str, str]]:
        """(source, reason) of each file that could not be indexed at its last try."""
        with self._lock:
            return self._meta.failed()

    def items(self) -> list[dict[str, Any]]:
        """Every item's metadata row (id, source, kind, chunk, text, offsets, page...)."""
        with self._lock:
            return self._meta.items()

    def faiss_ids(self) -> dict[str, np.ndarray]:
        """The ids each FAISS index holds, sorted: {"text": ..., "clip": ...} (for checks)."""
        with self._lock:
            return {name: self._faiss.ids(name) for name in self._faiss.NAMES}


def _recorded(settings: IndexSettings) -> dict[str, Any]:
    """What the config row records of how the index reads and searches."""
    return {**asdict(settings), "reader_version": READER_VERSION}
