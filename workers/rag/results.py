"""What a search returns and how its ranked lists are merged: `Hit` and `fuse` (Reciprocal
Rank Fusion, Cormack, Clarke and Büttcher, SIGIR 2009).

An item's fused score is Σ 1/(RRF_K + rank) over the lists that found it, ranks counted from 1.
Ranks, not raw cosines, are fused: cosines of different models (and of CLIP's text and image
sides) are not on one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

RRF_K = 60
# The ranked lists a search can run: name -> the kind of item it finds.
LISTS = {"text→text": "text", "text→image": "image", "image→image": "image", "image→text": "text"}


@dataclass(frozen=True)
class Hit:
    """One search result.

    `source` is the file's key as indexed: the name of the folder given to `add` and the path
    inside it ("docs/a/b.txt"), or the name of a file given itself. Text hits have `text` and
    byte offsets (txt/md: into the file; html: into its visible text; pdf: into the text of
    `page`, from 1; UTF-8 bytes); image hits have `thumbnail` (a WebP data URL, 128 px at most)
    and the original's `width` and `height`.
    """

    score: float  # fused RRF score, higher is better
    similarity: float  # best cosine similarity among the lists that found it
    kind: str  # "text" | "image"
    source: str
    text: str | None
    thumbnail: str | None
    start_byte: int | None
    end_byte: int | None
    page: int | None
    found_by: tuple[str, ...]  # names of the lists that found it, best rank first
    item_id: int = -1  # the item's row id (stable until its file changes)
    width: int | None = None
    height: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["found_by"] = list(self.found_by)
        return data


def fuse(
    ranked: Sequence[Sequence[tuple[int, float]]], *, k: int = RRF_K
) -> list[tuple[int, float, float, tuple[int, ...]]]:
    """Reciprocal Rank Fusion of ranked lists.

    Args:
        ranked: lists of (id, similarity), best first; an id appears at most once per list.
        k (int, default RRF_K = 60): the rank offset; larger makes the top ranks count less.

    Returns:
        (id, score, best similarity, numbers of the lists that found it, best rank first) for
        every id, by score (ties: higher similarity, then lower id). score = Σ 1/(k + rank).
    """
    found: dict[int, list[Any]] = {}
    for list_no, results in enumerate(ranked):
        for rank, (item_id, similarity) in enumerate(results, start=1):
            entry = found.setdefault(item_id, [0.0, float("-inf"), []])
            entry[0] += 1.0 / (k + rank)
            entry[1] = max(entry[1], float(similarity))
            entry[2].append((rank, list_no))
    fused = [
        (item_id, score, best, tuple(n for _, n in sorted(lists)))
        for item_id, (score, best, lists) in found.items()
    ]
    fused.sort(key=lambda f: (-f[1], -f[2], f[0]))
    return fused
