"""The rag worker: the `rag_search` endpoint.

`jobhive-worker rag --index INDEX_DIR` answers searches by text, by image or both from an index
built by `jobhive-index build` (workers/rag/index.py): hits best first, merged across the text
and CLIP indexes by reciprocal rank fusion.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from workers.rag.grounding import IndexOptions, add_index_arguments, index_models, open_index
from workers.runtime.images import decode_image
from workers.runtime.model import Job, ModelWorker, Progress

log = logging.getLogger("jobhive.worker.rag")

KINDS = {"all": ("text", "image"), "text": ("text",), "image": ("image",)}


class RagWorker(ModelWorker):
    """Searches an index of texts and images; each job is one query."""

    job_type = "rag_search"
    stall_s = 60.0  # a search takes milliseconds and reports nothing

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_index_arguments(parser, required=True)

    settings: IndexOptions

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> IndexOptions:
        options = IndexOptions.from_args(args)
        assert options is not None  # --index is required
        return options

    def __init__(self, settings: IndexOptions) -> None:
        super().__init__(settings)
        self.index: Any = None
        self.stats: dict[str, Any] = {}

    def info(self) -> dict[str, Any]:
        return {"index": str(self.settings.index), **self.stats, **super().info()}

    def load(self) -> None:
        self.index = open_index(self.settings)
        # Read once: info() goes with every poll (on the runner's event loop), and what this
        # worker searches does not change while it runs (its FAISS files are read at open).
        self.stats = self.index.stats()
        self.loaded_models = index_models(self.settings, self.stats)
        log.info("rag: index %s: %s", self.settings.index, self.stats)

    def run(self, batch: list[Job], progress: Progress) -> list[dict[str, Any] | Exception]:
        return [self.search(job) for job in batch]

    def search(self, job: Job) -> dict[str, Any] | Exception:
        inputs = job.inputs
        started = time.perf_counter()
        try:
            image = decode_image(inputs["image"]) if inputs.get("image") else None
        except OSError as e:
            return ValueError(f"`image` could not be read as an image: {e}")
        hits = self.index.search(
            text=inputs.get("text") or None,
            image=image,
            top_k=int(inputs["top_k"]),
            kinds=KINDS[inputs.get("kinds") or "all"],
        )
        return {
            "hits": [{"rank": rank, **hit.to_json()} for rank, hit in enumerate(hits, 1)],
            "search_ms": round((time.perf_counter() - started) * 1000, 2),
        }
