"""Retrieval: the rag worker (the `rag_search` endpoint) and the grounding of `rag_chat`.

`jobhive-worker rag --index INDEX_DIR` answers searches by text, by image or both from an index
built by `jobhive-index build` (workers/rag_index.py): hits best first, merged across the text
and CLIP indexes by reciprocal rank fusion.

`rag_chat` is served by the llama4 worker started with `--index INDEX_DIR`: the worker that
generates also retrieves, so each worker process still serves one job type and a question costs
no second job. The functions at the end of this module turn hits into numbered sources and
the chat into a prompt that asks the model to cite them.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path
from typing import Any

from workers.base import Job, ModelWorker, Progress
from workers.images import decode_image

log = logging.getLogger("jobhive.worker.rag")

KINDS = {"all": ("text", "image"), "text": ("text",), "image": ("image",)}


def add_index_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The options that open an index: shared by `rag` and `llama4 --index`."""
    parser.add_argument(
        "--index",
        type=Path,
        required=required,
        help="an index folder built by `jobhive-index build`"
        + (
            ""
            if required
            else "; the worker then serves rag_chat, answering from the index with cited sources"
        ),
    )
    parser.add_argument(
        "--clip",
        default=None,
        help="CLIP checkpoint folder or name to embed queries with (default: the "
        "one the index was built with)",
    )
    parser.add_argument(
        "--text-model",
        default=None,
        help="sentence-transformers folder for text queries (default: the one "
        "the index was built with)",
    )
    parser.add_argument(
        "--index-device",
        default=None,
        help="cuda or cpu for the query encoders and FAISS (default: cuda when present)",
    )


def open_index(args: argparse.Namespace) -> Any:
    """Opens the index named by `--index` (imported here: torch and faiss load slowly)."""
    import torch

    from workers.rag_index import RagIndex

    device = args.index_device or ("cuda" if torch.cuda.is_available() else "cpu")
    return RagIndex.open(args.index, device=device, clip=args.clip, text_model=args.text_model)


class RagWorker(ModelWorker):
    """Searches an index of texts and images; each job is one query."""

    job_type = "rag_search"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_index_arguments(parser, required=True)

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.index: Any = None
        self.stats: dict[str, Any] = {}

    def info(self) -> dict[str, Any]:
        return {"index": str(self.args.index), **self.stats}

    def load(self) -> None:
        self.index = open_index(self.args)
        # Read once: info() goes with every poll (on the runner's event loop), and what this
        # worker searches does not change while it runs (its FAISS files are read at open).
        self.stats = self.index.stats()
        log.info("rag: index %s: %s", self.args.index, self.stats)

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


# ----- rag_chat: grounding a chat in retrieved sources

GROUNDING = (
    "Answer the user's question from the numbered sources below. Cite every source you use by "
    "its number in square brackets, like [1] or [2][3]. If the sources do not hold the answer, "
    "say so instead of guessing.\n\nSources:\n"
)
SOURCE_TEXT_CHARS = 1200  # a source's text in the prompt is cut here
CITATION = re.compile(r"\[(\d{1,3})\]")


def question_of(messages: list[dict[str, str]]) -> str:
    """The text to retrieve for: the last user message."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def sources_from(hits: list[Any]) -> list[dict[str, Any]]:
    """Hits as the numbered sources a rag_chat result lists (n from 1, best first)."""
    return [
        {
            "n": n,
            "kind": hit.kind,
            "source": hit.source,
            "text": hit.text,
            "thumbnail": hit.thumbnail,
            "score": hit.score,
        }
        for n, hit in enumerate(hits, 1)
    ]


def grounded_messages(
    messages: list[dict[str, str]], sources: list[dict[str, Any]]
) -> list[dict[str, str]]:
    """The chat with the sources put in its system prompt, numbered as the model must cite
    them; a system prompt of the user's own comes first."""
    lines = [f"[{s['n']}] ({s['source']}) {(s['text'] or '')[:SOURCE_TEXT_CHARS]}" for s in sources]
    grounding = GROUNDING + ("\n".join(lines) if lines else "(none found)")
    if messages and messages[0]["role"] == "system":
        system = {"role": "system", "content": f"{messages[0]['content']}\n\n{grounding}"}
        return [system, *messages[1:]]
    return [{"role": "system", "content": grounding}, *messages]


def cited(text: str, sources: list[dict[str, Any]]) -> list[int]:
    """The source numbers an answer cites, in order of first citation; numbers that name no
    source are left out."""
    numbers = {s["n"] for s in sources}
    found = (int(m) for m in CITATION.findall(text))
    return list(dict.fromkeys(n for n in found if n in numbers))
