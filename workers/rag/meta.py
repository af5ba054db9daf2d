"""The retrieval index's metadata: one SQLite file (INDEX_DIR/meta.sqlite3), never pickle.

Three tables: `config` (one row: the models, their dims, the settings, what the FAISS indexes are
and which generation of their files goes with this metadata), `files` (one row per file seen,
indexed or failed, with what tells a changed file from an unchanged one) and `items` (one row per
text chunk or image; its id is its id in the FAISS indexes). See _SCHEMA.

Transactions are explicit: `begin()` ... `commit()` around an `add`; reads need none. Also here:
`IndexSettings` (what the config row records of chunking and searching) and `index_info` (what
an index holds, read without loading any model).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

FORMAT, VERSION = "jobhive-rag", 1
META = "meta.sqlite3"
TINY_CLIP = "tiny-clip"  # where clip="tiny" builds its model, inside INDEX_DIR

_SCHEMA = """
CREATE TABLE config (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format TEXT NOT NULL, version INTEGER NOT NULL,
    clip_model TEXT NOT NULL, text_model TEXT NOT NULL,  -- as recorded (relative: in INDEX_DIR)
    clip_dim INTEGER NOT NULL, text_dim INTEGER NOT NULL,
    settings TEXT NOT NULL,      -- JSON: IndexSettings (chunking, IVF threshold, nprobe...)
                                 -- and reader_version (rag_read.READER_VERSION; 0 if absent)
    faiss TEXT NOT NULL,         -- JSON: what each FAISS index is (kind, vectors, nlist)
    generation INTEGER NOT NULL, -- names the FAISS files that go with this metadata
    created_at TEXT NOT NULL
);
CREATE TABLE files (
    source TEXT PRIMARY KEY,     -- root folder's name + path inside it, "/"-separated
    root TEXT NOT NULL,          -- absolute path of the file or folder given to `add`
    size INTEGER, mtime_ns INTEGER, sha256 TEXT,
    kind TEXT NOT NULL,          -- text | image
    status TEXT NOT NULL,        -- indexed | failed
    error TEXT,                  -- why it failed
    indexed_at REAL NOT NULL
);
CREATE TABLE items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the id in the FAISS indexes; never reused
    source TEXT NOT NULL REFERENCES files(source),
    kind TEXT NOT NULL CHECK (kind IN ('text', 'image')),
    chunk INTEGER NOT NULL,      -- the chunk's number in its file (0 for an image)
    text TEXT,
    start_byte INTEGER,          -- txt/md: into the file; html: into its extracted text;
    end_byte INTEGER,            -- pdf: into the page's extracted text (UTF-8 bytes)
    page INTEGER,                -- pdf: from 1
    thumbnail TEXT,              -- images: a small WebP (or JPEG) data URL
    width INTEGER, height INTEGER
);
CREATE INDEX items_by_source ON items(source);
CREATE INDEX items_by_kind ON items(kind, id);
"""
HIT_COLUMNS = (
    "item_id",
    "kind",
    "source",
    "text",
    "thumbnail",
    "start_byte",
    "end_byte",
    "page",
    "width",
    "height",
)


@dataclass(frozen=True)
class IndexSettings:
    """How an index chunks, embeds and searches; recorded in the index when it is created.

    Attributes:
        chunk_chars (int, default 800): the most characters in a text chunk.
        overlap_chars (int, default 150): about how many characters neighbouring chunks share.
        ivf_threshold (int, default 50_000): from this many vectors on, an index is IVF. Below
            it an exact flat search takes at most ~12 ms (768-d, one query: bench/rag.py), a
            small share of embedding the query; at 100k it takes ~25 ms against ~2.4 ms for IVF
            (nprobe 128), and the k-means training of a rebuild ~7 s on 2 cores.
        nprobe (int, default 128): IVF lists scanned per search (~3% of 1265 lists at 100k
            vectors: recall@10 0.94 on clustered data in bench/rag.py, for ~2 ms); a search for
            one kind in the CLIP index scans nprobe / (that kind's share) lists.
        batch_size (int, default 32): texts or images per model call.
        max_image_pixels (int, default 100_000_000): larger images are refused unread.
    """

    chunk_chars: int = 800
    overlap_chars: int = 150
    ivf_threshold: int = 50_000
    nprobe: int = 128
    batch_size: int = 32
    max_image_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), int) or getattr(self, f.name) < 1:
                raise ValueError(
                    f"`{f.name}` must be a positive integer (got {getattr(self, f.name)!r})"
                )
        if self.chunk_chars < 50:
            raise ValueError(f"`chunk_chars` must be at least 50 (got {self.chunk_chars})")
        if self.overlap_chars >= self.chunk_chars // 2:
            raise ValueError(
                f"`overlap_chars` must be less than half of chunk_chars "
                f"(got {self.overlap_chars} with chunk_chars {self.chunk_chars})"
            )


def is_index(index_dir: Path) -> bool:
    return (Path(index_dir) / META).is_file()


def remove_index_files(index_dir: Path) -> None:
    """Deletes what an index keeps in `index_dir` (and nothing else)."""
    for path in [*index_dir.glob(f"{META}*"), *index_dir.glob("*.faiss")]:
        path.unlink()
    shutil.rmtree(index_dir / TINY_CLIP, ignore_errors=True)


class Metadata:
    """The metadata database of one index.

    Args:
        path (Path): INDEX_DIR/meta.sqlite3.

    Raises:
        ValueError: the file is not an index database this version reads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # Autocommit: transactions are explicit. The worker may load in one thread and search in
        # another, hence check_same_thread=False (RagIndex holds a lock around every use).
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.config()
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise ValueError(f"{path} is not a jobhive index database ({e})") from e
        except BaseException:
            self.db.close()
            raise

    @staticmethod
    def create(path: Path, config: dict[str, Any]) -> None:
        """Writes a new database with its config row (`config` holds every column but id)."""
        db = sqlite3.connect(path)
        with db:
            db.executescript(_SCHEMA)
            names = ", ".join(config)
            db.execute(
                f"INSERT INTO config (id, {names}) VALUES (1, {', '.join('?' * len(config))})",
                list(config.values()),
            )
        db.close()

    def close(self) -> None:
        self.db.close()

    # -- transactions ---------------------------------------------------------------------------

    def begin(self) -> None:
        """Starts a write transaction (waits up to 10 s for another writer, then fails)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise RuntimeError(f"{self.path}: another process is adding to this index ({e})") from e

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    # -- config ---------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The config row; ValueError if it is missing or of another format or a newer version."""
        cursor = self.db.execute("SELECT * FROM config WHERE id=1")
        row = cursor.fetchone()
        if row is None:
            raise ValueError(f"{self.path} is not a jobhive index database (no config row)")
        config = dict(zip([d[0] for d in cursor.description], row, strict=True))
        if config["format"] != FORMAT or config["version"] > VERSION:
            raise ValueError(
                f"{self.path}: index format {config['format']} version {config['version']} "
                f"(this jobhive reads {FORMAT} up to version {VERSION})"
            )
        return config

    def generation(self) -> int:
        return self.db.execute("SELECT generation FROM config").fetchone()[0]

    def set_generation(self, generation: int, settings: dict, faiss: dict) -> None:
        self.db.execute(
            "UPDATE config SET generation=?, settings=?, faiss=? WHERE id=1",
            (generation, json.dumps(settings), json.dumps(faiss)),
        )

    # -- files ----------------------------------------------------------------------------------

    def file(self, source: str) -> tuple[int, int, str, str] | None:
        """(size, mtime_ns, sha256, status) of a file seen before, or None."""
        return self.db.execute(
            "SELECT size, mtime_ns, sha256, status FROM files WHERE source=?", (source,)
        ).fetchone()

    def touch(self, source: str, size: int, mtime_ns: int, root: str) -> None:
        """Records a new mtime for a file whose content did not change."""
        self.db.execute(
            "UPDATE files SET size=?, mtime_ns=?, root=? WHERE source=?",
            (size, mtime_ns, root, source),
        )

    def set_indexed(
        self, source: str, root: str, size: int, mtime_ns: int, sha256: str, kind: str
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, 'indexed', NULL, ?)",
            (source, root, size, mtime_ns, sha256, kind, time.time()),
        )

    def set_failed(self, source: str, root: str, kind: str, reason: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files (source, root, kind, status, error, indexed_at) "
            "VALUES (?, ?, ?, 'failed', ?, ?)",
            (source, root, kind, reason, time.time()),
        )

    def roots(self) -> list[str]:
        """Every file or folder that an `add` was given, as recorded."""
        return [r for (r,) in self.db.execute("SELECT DISTINCT root FROM files ORDER BY root")]

    def sources_under(self, root: str) -> list[str]:
        """The files recorded as found in folder `root`."""
        return [s for (s,) in self.db.execute("SELECT source FROM files WHERE root=?", (root,))]

    def delete_files(self, sources: Sequence[str]) -> None:
        self.db.executemany("DELETE FROM files WHERE source=?", [(s,) for s in sources])

    def failed(self) -> list[tuple[str, str]]:
        return list(
            self.db.execute("SELECT source, error FROM files WHERE status='failed' ORDER BY source")
        )

    # -- items ----------------------------------------------------------------------------------

    def add_chunks(self, source: str, chunks: Sequence[Any]) -> list[int]:
        """Inserts a file's text chunks (rag_read.Chunk); returns their ids, in order."""
        return [
            self.db.execute(
                "INSERT INTO items (source, kind, chunk, text, start_byte, end_byte, page) "
                "VALUES (?, 'text', ?, ?, ?, ?, ?)",
                (source, number, c.text, c.start_byte, c.end_byte, c.page),
            ).lastrowid
            for number, c in enumerate(chunks)
        ]

    def add_image(self, source: str, thumbnail: str, width: int, height: int) -> int:
        return self.db.execute(
            "INSERT INTO items (source, kind, chunk, thumbnail, width, height) "
            "VALUES (?, 'image', 0, ?, ?, ?)",
            (source, thumbnail, width, height),
        ).lastrowid

    def item_ids(self, sources: Sequence[str]) -> np.ndarray:
        """The ids of these files' items."""
        marks = ",".join("?" * len(sources))
        rows = self.db.execute(f"SELECT id FROM items WHERE source IN ({marks})", list(sources))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def delete_items(self, sources: Sequence[str]) -> None:
        marks = ",".join("?" * len(sources))
        self.db.execute(f"DELETE FROM items WHERE source IN ({marks})", list(sources))

    def ids_of_kind(self, kind: str) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM items WHERE kind=? ORDER BY id", (kind,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def hits(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """What a Hit shows of each item, by id (ids without a row are left out)."""
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            "SELECT id, kind, source, text, thumbnail, start_byte, end_byte, page, width, "
            f"height FROM items WHERE id IN ({marks})",
            list(ids),
        )
        return {row[0]: dict(zip(HIT_COLUMNS, row, strict=True)) for row in rows}

    def items(self) -> list[dict[str, Any]]:
        cursor = self.db.execute("SELECT * FROM items ORDER BY id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def counts(self) -> dict[str, int]:
        """files (indexed), files_failed, text_chunks, images."""
        one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "files": one("SELECT COUNT(*) FROM files WHERE status='indexed'"),
            "files_failed": one("SELECT COUNT(*) FROM files WHERE status='failed'"),
            "text_chunks": one("SELECT COUNT(*) FROM items WHERE kind='text'"),
            "images": one("SELECT COUNT(*) FROM items WHERE kind='image'"),
        }


def index_info(index_dir: Path) -> dict[str, Any]:
    """What an index holds, from its metadata alone (no model is loaded): index_dir, files,
    files_failed, text_chunks, images, faiss (kind and size of each index), models, dims,
    settings, created_at, failed ([source, reason] of each file that could not be read).

    Raises:
        FileNotFoundError, ValueError: as RagIndex.open.
    """
    index_dir = Path(index_dir)
    check_index_dir(index_dir)
    meta = Metadata(index_dir / META)
    try:
        return info(meta, index_dir)
    finally:
        meta.close()


def info(meta: Metadata, index_dir: Path) -> dict[str, Any]:
    config = meta.config()
    return {
        "index_dir": str(index_dir),
        **meta.counts(),
        "faiss": json.loads(config["faiss"]),
        "models": {"clip": config["clip_model"], "text": config["text_model"]},
        "dims": {"clip": config["clip_dim"], "text": config["text_dim"]},
        "settings": json.loads(config["settings"]),
        "created_at": config["created_at"],
        "failed": meta.failed(),
    }


def check_index_dir(index_dir: Path) -> None:
    if not index_dir.is_dir():
        raise FileNotFoundError(f"{index_dir}: no such folder")
    if not is_index(index_dir):
        raise FileNotFoundError(
            f"{index_dir} is not a jobhive index (it has no {META}); "
            "make one with `jobhive-index build`"
        )
