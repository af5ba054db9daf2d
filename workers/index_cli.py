"""`jobhive-index`: builds, updates, describes and searches a retrieval index (workers/rag).

    jobhive-index build SOURCE... --out INDEX_DIR [--clip tiny|PATH_OR_NAME] [--text-model PATH]
                  [--device cpu|cuda] [--chunk-chars N] [--overlap-chars N] [--ivf-threshold N]
                  [--nprobe N] [--batch-size N] [--force] [--quiet]
    jobhive-index add SOURCE... --index INDEX_DIR [--device D] [--batch-size N] [--quiet]
    jobhive-index info INDEX_DIR [--json]
    jobhive-index search INDEX_DIR [--text Q] [--image FILE] [--top-k N] [--kinds all|text|image]
                  [--device D] [--json]

A progress bar over the files and each file that cannot be read go to stderr as they happen; the
summary line goes to stdout. Exit codes: 0 done (also when some files could not be read: the
summary counts them), 1 failed, 2 usage error (bad options, missing source, not an index...).
torch and the models are imported only by the commands that need them, so --help is quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from workers.runtime.quiet import drop_unactionable_warnings

log = logging.getLogger("jobhive.rag")

USAGE_ERROR = 2


class UsageError(Exception):
    """A mistake in the command line: printed and exit code 2."""


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {value})")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobhive-index",
        description="Build and search a retrieval index of documents (txt, md, html, pdf) and "
        "images (jpg, png, webp): MiniLM for text→text, CLIP for text↔image.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    device_help = "cpu or cuda (default: cuda when torch sees a GPU, else cpu)"

    build = sub.add_parser("build", help="make a new index from files and folders")
    build.add_argument("sources", nargs="+", type=Path, metavar="SOURCE")
    build.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="INDEX_DIR",
        help="the index folder to create (must be new or empty)",
    )
    build.add_argument(
        "--clip",
        default="tiny",
        metavar="tiny|PATH_OR_NAME",
        help="CLIP checkpoint folder or cached model name (e.g. "
        "openai/clip-vit-large-patch14); tiny: a tiny random-weight CLIP built "
        "into INDEX_DIR/tiny-clip, for tests and the demo (default tiny)",
    )
    build.add_argument(
        "--text-model",
        default=None,
        metavar="PATH",
        help="sentence-transformers folder (default: the bundled all-MiniLM-L6-v2)",
    )
    build.add_argument(
        "--chunk-chars",
        type=positive,
        default=800,
        help="most characters per text chunk (default 800)",
    )
    build.add_argument(
        "--overlap-chars",
        type=positive,
        default=150,
        help="characters shared by neighbouring chunks (default 150)",
    )
    build.add_argument(
        "--ivf-threshold",
        type=positive,
        default=None,
        help="vectors from which an index is IVF instead of flat (default 50000)",
    )
    build.add_argument(
        "--nprobe", type=positive, default=None, help="IVF lists scanned per search (default 128)"
    )
    build.add_argument(
        "--force",
        action="store_true",
        help="build even if INDEX_DIR holds an index (replaced) or other files (kept)",
    )

    add = sub.add_parser("add", help="add new and changed files to an index")
    add.add_argument("sources", nargs="+", type=Path, metavar="SOURCE")
    add.add_argument("--index", type=Path, required=True, metavar="INDEX_DIR")
    for p in (build, add):
        p.add_argument("--device", default=None, help=device_help)
        p.add_argument(
            "--batch-size",
            type=positive,
            default=None,
            help="texts or images per model call (default 32)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    info = sub.add_parser("info", help="what an index holds (no model is loaded)")
    info.add_argument("index", type=Path, metavar="INDEX_DIR")
    info.add_argument("--json", action="store_true", help="print JSON")

    search = sub.add_parser("search", help="search an index by text and/or image")
    search.add_argument("index", type=Path, metavar="INDEX_DIR")
    search.add_argument("--text", default=None, help="the query text")
    search.add_argument("--image", type=Path, default=None, help="a query image file")
    search.add_argument("--top-k", type=positive, default=5, help="hits (default 5)")
    search.add_argument(
        "--kinds",
        choices=["all", "text", "image"],
        default="all",
        help="which kinds of hits (default all)",
    )
    search.add_argument("--device", default=None, help=device_help)
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        code = COMMANDS[args.command](args)
    except UsageError as e:
        print(f"jobhive-index: {e}", file=sys.stderr)
        code = USAGE_ERROR
    except KeyboardInterrupt:
        print("jobhive-index: interrupted (what was saved before stays)", file=sys.stderr)
        code = 130
    except (RuntimeError, OSError) as e:  # another writer, a full disk, a CUDA error...
        print(f"jobhive-index: failed: {e}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


def _setup_logging() -> None:
    """Our messages (skipped files...) on stderr; the libraries' info chatter and progress
    bars off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("jobhive-index: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    drop_unactionable_warnings()
    log.setLevel(logging.INFO)
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its notes on odd PDFs, once per page


def _quiet_libraries() -> None:
    """Called once torch and transformers are wanted anyway."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def _device(requested: str | None) -> str:
    if requested:
        if not (requested == "cpu" or requested.startswith("cuda")):
            raise UsageError(f"--device must be cpu, cuda or cuda:N (got {requested!r})")
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_sources(sources: list[Path]) -> None:
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")


def cmd_build(args: argparse.Namespace) -> int:
    from workers.rag.meta import is_index

    out: Path = args.out
    _check_sources(args.sources)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    if is_index(out) and not args.force:
        raise UsageError(
            f"{out} already holds an index: use `jobhive-index add SOURCE... "
            f"--index {out}` to update it, or --force to replace it"
        )
    if out.is_dir() and any(out.iterdir()) and not is_index(out) and not args.force:
        raise UsageError(
            f"{out} is not empty: give a new or empty folder (or --force to build "
            "there anyway; its files are left alone)"
        )
    settings = _settings(args)
    device = _device(args.device)
    _quiet_libraries()
    from workers.rag.index import RagIndex

    started = time.monotonic()
    try:
        index = RagIndex.create(
            out,
            clip=args.clip,
            text_model=args.text_model,
            device=device,
            settings=settings,
            overwrite=args.force,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    with index:
        return _add(index, args, started)


def _settings(args: argparse.Namespace):
    from workers.rag.index import IndexSettings

    given = {
        "chunk_chars": args.chunk_chars,
        "overlap_chars": args.overlap_chars,
        "ivf_threshold": args.ivf_threshold,
        "nprobe": args.nprobe,
        "batch_size": args.batch_size,
    }
    try:
        return IndexSettings(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        # `chunk_chars` and chunk_chars as the options are spelt: --chunk-chars
        message = re.sub(r"`?\b([a-z]+)_([a-z]+)\b`?", r"--\1-\2", str(e))
        raise UsageError(message) from e


def cmd_add(args: argparse.Namespace) -> int:
    _check_sources(args.sources)
    index = _open(args.index, args.device, batch_size=args.batch_size)
    with index:
        return _add(index, args, time.monotonic())


def _open(index_dir: Path, device: str | None, **overrides: Any):
    device = _device(device)
    _quiet_libraries()
    from workers.rag.index import RagIndex

    try:
        return RagIndex.open(index_dir, device=device, **overrides)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


def _add(index, args: argparse.Namespace, started: float) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # log lines above the bar, not through it
        report = index.add(args.sources, progress=not args.quiet)
    print(f"{report.summary()} ({time.monotonic() - started:.1f} s)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from workers.rag.index import index_info

    try:
        info = index_info(args.index)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    settings = " ".join(f"{k}={v}" for k, v in info["settings"].items())
    print(f"index:    {info['index_dir']} (created {info['created_at']})")
    print(f"files:    {info['files']} indexed, {info['files_failed']} failed")
    print(f"items:    {info['text_chunks']} text chunks, {info['images']} images")
    for name in ("text", "clip"):
        faiss = info["faiss"].get(name, {})
        shape = ", ".join(f"{k} {v}" for k, v in faiss.items() if k != "kind")
        print(
            f"{name + ':':9} {faiss.get('kind', '?')} ({shape}); {info['dims'][name]}-d, "
            f"model {info['models'][name]}"
        )
    print(f"settings: {settings}")
    for source, reason in info["failed"]:
        print(f"failed:   {source}: {reason}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if not (args.text and args.text.strip()) and args.image is None:
        raise UsageError("search: give --text, --image or both")
    image = None
    if args.image is not None:
        try:
            image = args.image.read_bytes()
        except OSError as e:
            raise UsageError(f"--image {args.image}: {e.strerror or e}") from e
    from workers.rag.worker import KINDS

    index = _open(args.index, args.device)
    with index:
        try:
            hits = index.search(
                text=args.text, image=image, top_k=args.top_k, kinds=KINDS[args.kinds]
            )
        except ValueError as e:
            raise UsageError(str(e)) from e
    if args.json:
        print(json.dumps([hit.to_json() for hit in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no hits (the index is empty, or holds nothing of the kinds asked for)")
    for rank, hit in enumerate(hits, 1):
        print(_hit_line(rank, hit))
    return 0


def _hit_line(rank: int, hit) -> str:
    """Two lines per hit: where and how it was found, then its text (or image size)."""
    head = (
        f"{rank}. [{hit.kind}] {hit.source}  score {hit.score:.4f}  "
        f"cosine {hit.similarity:.3f}  ({', '.join(hit.found_by)})"
    )
    if hit.kind == "image":
        return f"{head}\n   {hit.width}x{hit.height} image"
    where = f"page {hit.page}, " if hit.page is not None else ""
    text = " ".join((hit.text or "").split())
    text = text if len(text) <= 200 else text[:199] + "…"
    return f"{head}\n   {where}bytes {hit.start_byte}-{hit.end_byte}: {text}"


COMMANDS = {"build": cmd_build, "add": cmd_add, "info": cmd_info, "search": cmd_search}

if __name__ == "__main__":
    main()
