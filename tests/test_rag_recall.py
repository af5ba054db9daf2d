"""Retrieval quality on the shipped demo corpus, with the real all-MiniLM-L6-v2 sentence model.

examples/corpus_questions.json holds known questions, each a paraphrase of one paragraph of
examples/corpus (not a copy of its words), with the file the paragraph is in and a phrase that
appears verbatim in it. A question is found when one of its top 3 text hits comes from that file
and contains the phrase. recall@3 over all questions must reach RECALL_AT_3_MIN; the figure is
printed (shown with `pytest -rA` or `-s`), recorded as the test property `recall_at_3` (in the
JUnit XML of `--junitxml`) and written into the assertion message.

The index is built once for the module with the project's index library (workers/rag/index.py):
a tiny random CLIP, which is enough to check that every shipped image is indexed, and the real
sentence model for the text side, which is what the recall measures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "examples" / "corpus"
QUESTIONS = REPO / "examples" / "corpus_questions.json"
TOP_K = 3
RECALL_AT_3_MIN = 0.9
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
TEXT_SUFFIXES = {".md", ".txt", ".html"}


@dataclass(frozen=True)
class Question:
    question: str
    source: str  # relative to examples/corpus
    phrase: str  # verbatim in the expected paragraph


def load_questions() -> list[Question]:
    return [Question(**row) for row in json.loads(QUESTIONS.read_text(encoding="utf-8"))]


def is_expected(hit, q: Question) -> bool:
    """The hit is the question's paragraph: from the expected file, and holding the phrase."""
    source = Path(str(hit.source))
    return source.parts[-len(Path(q.source).parts) :] == Path(q.source).parts and (
        q.phrase in " ".join(hit.text.split())
    )


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory: pytest.TempPathFactory):
    """The shipped corpus indexed once: tiny random CLIP, real MiniLM, on the CPU."""
    from workers.rag.index import RagIndex

    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        index = RagIndex.create(
            tmp_path_factory.mktemp("rag-recall") / "index", clip="tiny", device="cpu"
        )
        report = index.add([CORPUS], progress=False)
    assert report.files_failed == [], report.files_failed
    yield index
    index.close()


def test_questions_file_matches_the_corpus():
    """Every question names a shipped text file whose text holds its phrase exactly once, and the
    question does not simply quote the phrase."""
    questions = load_questions()
    assert 20 <= len(questions) <= 30
    for q in questions:
        path = CORPUS / q.source
        assert path.suffix in TEXT_SUFFIXES and path.is_file(), q
        assert 10 <= len(q.phrase) <= 40, q
        assert path.read_text(encoding="utf-8").count(q.phrase) == 1, q
        assert q.phrase.lower() not in q.question.lower(), q


@pytest.mark.timeout(120)  # the first test of the module also builds the index (~15 s)
def test_known_questions_find_their_paragraph_in_the_top_3(corpus_index, record_property):
    questions = load_questions()
    missed = []
    for q in questions:
        hits = corpus_index.search(text=q.question, top_k=TOP_K, kinds=("text",))
        assert len(hits) == TOP_K and all(hit.kind == "text" for hit in hits), hits
        if not any(is_expected(hit, q) for hit in hits):
            missed.append(f"{q.question!r} -> {q.source}: got {[str(h.source) for h in hits]}")
    recall = 1 - len(missed) / len(questions)
    figure = f"recall@{TOP_K} = {recall:.3f} ({len(questions) - len(missed)}/{len(questions)})"
    print(f"\nMiniLM on examples/corpus: {figure}")
    record_property("recall_at_3", round(recall, 4))
    assert recall >= RECALL_AT_3_MIN, f"{figure} < {RECALL_AT_3_MIN}; missed:\n" + "\n".join(missed)


def test_every_shipped_image_and_text_file_is_indexed(corpus_index):
    files = [p for p in CORPUS.rglob("*") if p.is_file()]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    texts = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
    assert len(images) >= 4 and len(texts) >= 5
    stats = corpus_index.stats()
    assert stats["images"] == len(images), stats
    assert stats["files"] == len(images) + len(texts) and stats["files_failed"] == 0, stats


def test_the_faq_page_is_indexed_without_its_script_and_style(corpus_index):
    texts = [item["text"] for item in corpus_index.items() if item["kind"] == "text"]
    assert any("Store FAQ - Alder & Pine Outfitters" in text for text in texts)  # the <title>
    for code in ("trackPageview", "faq-quokka-telemetry", "zebra-cookie-banner", "font-family"):
        assert not any(code in text for text in texts), code
