"""Reading the files of a collection: which files (`walk_sources`), their text chunks with byte
offsets, their images with thumbnails, and the progress bar over them (`Progress`).

Readers by extension (case-insensitive); anything else is not indexed:

- .txt, .md, .markdown: the file as it is (UTF-8, with or without a BOM; a file that is not
  UTF-8 is read as cp1252). Chunk offsets are byte offsets into the file: `data[start:end]`
  decodes back to the chunk's text.
- .html, .htm: the visible text (html.parser; script, style, noscript, template, svg and the
  like dropped; block elements become paragraph breaks). Offsets are UTF-8 byte offsets into
  that extracted text, not into the HTML.
- .pdf: pypdf, page by page; chunks never span pages, carry their page number (1-based), and
  their offsets are UTF-8 byte offsets into that page's extracted text.
- .jpg, .jpeg, .png, .webp: Pillow, turned upright (EXIF orientation) and converted to RGB;
  refused above `max_pixels` before decoding (decompression bombs).

Chunks are about `chunk_chars` characters long and overlap by about `overlap_chars`; a chunk
ends at a paragraph break if there is one in its second half, else at a sentence end, else at a
space (a word is cut only when it is longer than half a chunk), and the next one starts at the
first sentence start in the overlap, else at a word. Chunks are trimmed of surrounding
whitespace; the offsets are those of the trimmed text.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from workers.runtime.images import data_url

TEXT_READERS = {
    ".txt": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
# Raise it with any change here that gives other items for the same file (chunk bounds, text
# extraction, thumbnails): an index records the version that read it, and its next `add` reads
# every file again instead of keeping items made the old way beside new ones.
READER_VERSION = 1
THUMBNAIL_PX = 128  # longest side of the thumbnails stored with image items
# Images are shrunk to this short side before CLIP's own resize (224 for ViT-L/14): enough for
# any CLIP, and a pending batch of them stays small in memory.
CLIP_INPUT_PX = 448
_ORIENTATION = 0x0112  # the EXIF tag
_THUMB_FORMAT = "WEBP" if features.check("webp") else "JPEG"


class ReadError(Exception):
    """A file that cannot be indexed; the message says why (shown with the file's path)."""


@dataclass(frozen=True)
class Chunk:
    """A piece of a document's text and where it came from."""

    text: str
    start_byte: int
    end_byte: int
    page: int | None = None


@dataclass(frozen=True)
class ImageItem:
    """A decoded image: `image` is RGB and at most CLIP_INPUT_PX on its short side."""

    image: Image.Image
    width: int  # of the original, upright
    height: int
    thumbnail: str  # data URL, WebP (JPEG where Pillow has no WebP), THUMBNAIL_PX at most


def file_kind(path: Path) -> str | None:
    """ "text", "image" or None (not indexed) from the file's extension."""
    suffix = path.suffix.lower()
    if suffix in TEXT_READERS:
        return "text"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return None


def walk_sources(
    sources: Sequence[Path], skip: Path | None = None
) -> tuple[list[tuple[str, Path, str]], int]:
    """The files to index under `sources` (folders, walked recursively and in name order, or
    files), each once.

    Hidden files and folders (".name"), `skip` (the index's own folder) and extensions no reader
    takes are left out and counted.

    Returns:
        ([(source key, path, root), ...], how many were left out): the key is the root folder's
        name and the path inside it ("docs/a/b.txt"), or a file's name when the file was given;
        root is the absolute path of the file or folder given.

    Raises:
        FileNotFoundError: a source does not exist.
    """
    roots = [Path(os.path.abspath(s)) for s in sources]
    for given, root in zip(sources, roots, strict=True):
        if not root.exists():
            raise FileNotFoundError(f"{given}: no such file or folder")
    skipped = os.path.realpath(skip) if skip is not None else None
    files, ignored, seen = [], 0, set()
    for root in roots:
        found = [(root.name, root)] if root.is_file() else []
        for folder, subfolders, names in os.walk(root) if root.is_dir() else ():
            subfolders[:] = sorted(
                d
                for d in subfolders
                if not d.startswith(".") and os.path.realpath(Path(folder, d)) != skipped
            )
            ignored += sum(name.startswith(".") for name in names)
            found += [
                (f"{root.name}/{Path(folder, n).relative_to(root).as_posix()}", Path(folder, n))
                for n in sorted(names)
                if not n.startswith(".")
            ]
        for source, path in found:
            if file_kind(path) is None or not path.is_file():
                ignored += 1
            elif source not in seen:
                seen.add(source)
                files.append((source, path, str(root)))
    return files, ignored


# -- text ---------------------------------------------------------------------------------------


def read_chunks(path: Path, data: bytes, chunk_chars: int, overlap_chars: int) -> list[Chunk]:
    """The text chunks of a document, read from its bytes by its extension.

    Raises:
        ReadError: the file cannot be decoded (a broken PDF, an encrypted one...).
    """
    reader = TEXT_READERS[path.suffix.lower()]
    if reader == "pdf":
        return [
            chunk
            for number, page_text in enumerate(pdf_pages(data), start=1)
            for chunk in chunk_text(page_text, chunk_chars, overlap_chars, page=number)
        ]
    if reader == "html":
        return chunk_text(html_text(_decode_html(data)), chunk_chars, overlap_chars)
    text, encoding, skipped = _decode(data)
    chunks = chunk_text(text, chunk_chars, overlap_chars, encoding=encoding)
    if skipped:  # offsets into the file, past its BOM
        chunks = [
            Chunk(c.text, c.start_byte + skipped, c.end_byte + skipped, c.page) for c in chunks
        ]
    return chunks


def _decode(data: bytes) -> tuple[str, str, int]:
    """(text, encoding, bytes skipped): UTF-8 (BOM skipped) or else cp1252 (never fails)."""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8"), "utf-8", bom
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), "cp1252", 0


_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _decode_html(data: bytes) -> str:
    """HTML as text: UTF-8, else the charset its <meta> declares, else cp1252."""
    text, encoding, _ = _decode(data)
    declared = _CHARSET.search(data[:4096])
    if encoding != "utf-8" and declared:
        try:
            return data.decode(declared.group(1).decode("ascii"), errors="replace")
        except LookupError:  # a charset Python does not know
            pass
    return text


def chunk_spans(text: str, chunk_chars: int, overlap_chars: int) -> list[tuple[int, int]]:
    """Character spans [start, end) of overlapping chunks of `text`, trimmed of whitespace.

    Args:
        text (str): the whole text.
        chunk_chars (int): the most characters in a chunk.
        overlap_chars (int): about how many characters a chunk shares with the one before.
    """
    spans = []
    n, start = len(text), 0
    while True:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            return spans
        end = min(start + chunk_chars, n)
        if end < n:
            end = _break_before(text, start + chunk_chars // 2, end)
        stop = end
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        spans.append((start, stop))
        if end >= n:
            return spans
        start = _overlap_start(text, max(end - overlap_chars, start + 1), end)


_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_SENTENCE = re.compile(r"[.!?。！？][\"')\]]*\s|\n")


def _break_before(text: str, low: int, high: int) -> int:
    """Where to end a chunk in text[low:high]: after its last paragraph break, sentence end or
    space, in that order of preference; `high` if there is none."""
    window = text[low:high]
    for pattern in (_PARAGRAPH, _SENTENCE):
        last = None
        for last in pattern.finditer(window):  # noqa: B007 - the last match is wanted
            pass
        if last is not None:
            return low + last.end()
    space = max(window.rfind(" "), window.rfind("\t"))
    return low + space + 1 if space >= 0 else high


def _overlap_start(text: str, low: int, high: int) -> int:
    """Where the next chunk starts in text[low:high] (the overlap): at its first sentence start,
    else at its first word start, else at `low`."""
    window = text[low:high]
    for match in _SENTENCE.finditer(window):
        if match.end() < len(window):
            return low + match.end()
    if low == 0 or text[low - 1].isspace():
        return low
    space = next((i for i, char in enumerate(window) if char.isspace()), None)
    return low + space + 1 if space is not None else low


def chunk_text(
    text: str,
    chunk_chars: int,
    overlap_chars: int,
    *,
    page: int | None = None,
    encoding: str = "utf-8",
) -> list[Chunk]:
    """Chunks of `text` with byte offsets in `encoding` (see chunk_spans)."""
    chunks, char_pos, byte_pos = [], 0, 0
    for start, end in chunk_spans(text, chunk_chars, overlap_chars):
        # Spans start in increasing order: each offset is counted from the one before.
        start_byte = byte_pos + len(text[char_pos:start].encode(encoding, errors="replace"))
        end_byte = start_byte + len(text[start:end].encode(encoding, errors="replace"))
        chunks.append(Chunk(text[start:end], start_byte, end_byte, page))
        char_pos, byte_pos = start, start_byte
    return chunks


class _VisibleText(HTMLParser):
    """Collects the text a browser would show; blocks become paragraph breaks."""

    SKIP = frozenset(
        {
            "script",
            "style",
            "noscript",
            "template",
            "svg",
            "math",
            "iframe",
            "object",
            "canvas",
            "select",
            "textarea",
        }
    )
    BLOCK = frozenset(
        {
            "p",
            "div",
            "section",
            "article",
            "header",
            "footer",
            "main",
            "nav",
            "aside",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "ul",
            "ol",
            "li",
            "dl",
            "dt",
            "dd",
            "table",
            "tr",
            "blockquote",
            "pre",
            "figure",
            "figcaption",
            "title",
            "hr",
            "form",
            "fieldset",
            "address",
            "details",
            "summary",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag in self.BLOCK:
            self.parts.append("\n\n")
        self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n\n")
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_text(html: str) -> str:
    """The visible text of an HTML document: paragraphs separated by blank lines."""
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    text = re.sub(r"[ \t]*\n[ \t]*", "\n", "".join(parser.parts))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def pdf_pages(data: bytes) -> list[str]:
    """The extracted text of each page of a PDF.

    Raises:
        ReadError: pypdf cannot read it, or it is encrypted with a password.
    """
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ReadError("encrypted PDF (needs a password)")
        return [page.extract_text() or "" for page in reader.pages]
    except ReadError:
        raise
    except Exception as e:  # pypdf raises many kinds (PdfReadError, ValueError, KeyError...)
        raise ReadError(f"unreadable PDF: {type(e).__name__}: {e}") from e


# -- images -------------------------------------------------------------------------------------


def read_image(data: bytes, max_pixels: int) -> ImageItem:
    """Decodes an image file's bytes into an ImageItem (upright RGB, with a thumbnail).

    Args:
        data (bytes): the file's content.
        max_pixels (int): larger images are refused before they are decoded.

    Raises:
        ReadError: not an image Pillow can decode, truncated, or too large.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ReadError(
                    f"image too large: {width}x{height} pixels (the limit is {max_pixels:,})"
                )
            if opened.getexif().get(_ORIENTATION) in (5, 6, 7, 8):  # a quarter turn
                width, height = height, width
            opened.draft("RGB", (CLIP_INPUT_PX, CLIP_INPUT_PX))  # JPEG: decode at a lower scale
            image = to_rgb(ImageOps.exif_transpose(opened))
    except ReadError:
        raise
    except UnidentifiedImageError as e:
        raise ReadError("not an image Pillow can read (unknown or broken format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ReadError(f"image too large: {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ReadError(f"broken image: {e}") from e
    if width * height == 0:
        raise ReadError("empty image (0 pixels)")
    return ImageItem(_shrunk(image, CLIP_INPUT_PX), width, height, thumbnail_url(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in RGB; transparent parts become white (as a page would show them)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: 8 bits kept, not clipped
        grey = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _shrunk(image: Image.Image, short_side: int) -> Image.Image:
    """The image scaled down so its short side is `short_side` (never up)."""
    scale = short_side / min(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def thumbnail_url(image: Image.Image, size: int = THUMBNAIL_PX) -> str:
    """A small WebP (or JPEG) of the image as a data URL."""
    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, _THUMB_FORMAT, quality=75)
    return data_url(buffer.getvalue(), _THUMB_FORMAT.lower())


ProgressFn = Callable[[int, int, str], None]  # (files done, files in all, source)


class Progress:
    """The `progress` argument of `add` as one object: a tqdm bar, a callback, or nothing."""

    def __init__(self, progress: bool | ProgressFn, total: int) -> None:
        self.total, self.done = total, 0
        self.callback = progress if callable(progress) else None
        self.bar = None
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", file=sys.stderr, mininterval=0.5)

    def step(self, source: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.callback is not None:
            self.callback(self.done, self.total, source)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
