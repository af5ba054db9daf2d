"""Retrieval as a worker opens it, and the grounding of `rag_chat` in what it retrieves.

`rag_chat` is served by the llama4 worker started with `--index INDEX_DIR`: the worker that
generates also retrieves, so each worker process still serves one job type and a question costs
no second job. The rag worker opens its index through the same options. The functions at the end
turn hits into numbered sources and the chat into a prompt that asks the model to cite them.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.rag.embed import BUNDLED_TEXT_MODEL, model_path
from workers.runtime.model import describe_model


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


@dataclass(frozen=True)
class IndexOptions:
    """Which index a worker opens, and how (the options of add_index_arguments).

    Args:
        index (Path): an index folder built by `jobhive-index build`.
        clip (str | None): CLIP checkpoint to embed queries with; None: the index's own.
        text_model (str | None): sentence-transformers folder; None: the index's own.
        device (str | None): cuda or cpu for the encoders and FAISS; None: cuda when present.
    """

    index: Path
    clip: str | None = None
    text_model: str | None = None
    device: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> IndexOptions | None:
        """The options given, None without --index."""
        if not args.index:
            return None
        return cls(Path(args.index), args.clip, args.text_model, args.index_device)


def open_index(options: IndexOptions) -> Any:
    """Opens the index (imported here: torch and faiss load slowly)."""
    import torch

    from workers.rag.index import RagIndex

    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return RagIndex.open(options.index, device=device, clip=options.clip,
                         text_model=options.text_model)


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


def encoder_models(clip: str | Path, text_model: str | Path | None,
                   device: str) -> list[dict[str, Any]]:
    """The retrieval encoders (CLIP, the sentence model) as `loaded_models` entries.

    Args:
        clip (str | Path): the CLIP folder (or model name) loaded.
        text_model (str | Path | None): the sentence-transformers folder; None or
            BUNDLED_TEXT_MODEL: the bundled all-MiniLM-L6-v2.
        device (str): where both run; float16 on CUDA, else float32 (workers/rag/embed.py).

    Returns:
        list[dict[str, Any]]: [CLIP's entry, the sentence model's] (describe_model).
    """
    dtype = "float16" if device.startswith("cuda") else "float32"
    bundled = text_model is None or str(text_model) == BUNDLED_TEXT_MODEL
    return [
        describe_model(clip, dtype=dtype, device=device),
        describe_model(None if bundled else text_model,
                       name="all-MiniLM-L6-v2" if bundled else None, dtype=dtype, device=device),
    ]


def index_models(options: IndexOptions, stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The encoders an opened index runs its queries through, as `loaded_models` entries.

    Args:
        options (IndexOptions): how the index was opened (--clip and --text-model override the
            models it records).
        stats (dict[str, Any]): its `stats()`: the recorded models and the device.

    Returns:
        list[dict[str, Any]]: encoder_models of the models in use.
    """
    recorded = stats["models"]
    return encoder_models(
        options.clip or model_path(recorded["clip"], options.index),
        options.text_model or model_path(recorded["text"], options.index),
        str(stats["device"]),
    )
