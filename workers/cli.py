"""`jobhive-worker TYPE --server URL[,URL...] --key KEY`: runs one model worker against a server
(or several sharing one queue, tried in turn); with `--gpus all|LIST` or `--processes N`, one
per GPU or N of them (workers/runtime/supervisor.py)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from jobhive.aio import run_loop
from jobhive.logs import LOG_FORMATS, formatter, json_line
from jobhive.protocol import DEFAULT_SERVER_URL, server_urls
from workers.runtime import ModelStalled, ModelWorker, Runner, RunnerSettings, WorkerRefused
from workers.runtime.quiet import drop_unactionable_warnings
from workers.runtime.supervisor import (
    EXIT_REFUSED,
    EXIT_STALLED,
    child_command,
    plan_children,
    supervise,
)

# Worker types: (module:class, one-line help). A type's module is imported only when it is
# chosen, so `noop` runs where torch is not installed.
WORKER_TYPES = {
    "noop": ("workers.noop:NoopWorker", "echoes its inputs (no model; tests, demo, benchmarks)"),
    "sd3": ("workers.sd3.worker:SD3Worker", "Stable Diffusion 3 text-to-image and image-to-image"),
    "llama4": (
        "workers.llama4.worker:Llama4Worker",
        "Llama 4 (or any chat model) with streamed tokens; with --index it serves rag_chat",
    ),
    "rag": ("workers.rag.worker:RagWorker", "search an index of documents and images (rag_search)"),
    "embed": ("workers.rag.embeddings:EmbedWorker",
              "text embeddings from CLIP's text tower and the sentence model (embeddings)"),
}


# The tiny random-weight builds `--tiny` serves (workers/tiny/), by worker type: (builder, what
# its output is). jobhive-worker owns --tiny and --tiny-dir: it builds the model before the
# worker starts and hands it over as --model, so no model package depends on workers/tiny.
TINY_BUILDERS = {
    "sd3": ("workers.tiny.sd3:build_tiny_sd3", "an SD3 whose images are noise"),
    "llama4": ("workers.tiny.llama4:build_tiny_llama4", "a Llama 4 whose text is gibberish"),
    "embed": ("workers.tiny.clip:build_tiny_clip", "a CLIP whose vectors mean nothing"),
}


def _imported(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def load_worker_class(name: str) -> type[ModelWorker]:
    return _imported(WORKER_TYPES[name][0])


def parse_args(argv: list[str] | None) -> tuple[type[ModelWorker], Any, argparse.Namespace]:
    """The worker class, its settings and the parsed command line (--tiny models built)."""
    parser = argparse.ArgumentParser(
        prog="jobhive-worker", description="Take jobs from a jobhive server and run them."
    )
    sub = parser.add_subparsers(dest="type", required=True, metavar="TYPE")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in WORKER_TYPES.items():
        # Only the chosen type is imported (for its own options): the others may need packages
        # this host does not have.
        worker_cls = load_worker_class(name) if name == chosen else None
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--server",
            metavar="URL[,URL...]",
            default=os.environ.get("JOBHIVE_SERVER", DEFAULT_SERVER_URL),
            help="API server URL, or several separated by commas (servers sharing one queue: "
            "the worker moves on to the next when one stops answering; default "
            f"$JOBHIVE_SERVER or {DEFAULT_SERVER_URL})",
        )
        p.add_argument(
            "--key",
            default=os.environ.get("JOBHIVE_WORKER_KEY"),
            help="worker key, one of the endpoint's [WORKER] auth_keys "
            "(default $JOBHIVE_WORKER_KEY)",
        )
        p.add_argument(
            "--worker-id",
            default=f"{socket.gethostname()}-{os.getpid()}",
            help="name in the server's logs and status (default HOST-PID)",
        )
        p.add_argument("--max-batch", type=int, default=1,
                       help="most jobs per batch; for a worker that batches continuously "
                       "(llama4), most jobs running at once (default 1)")
        p.add_argument(
            "--poll-wait-s",
            type=float,
            default=20.0,
            help="how long one poll waits for jobs (default 20)",
        )
        p.add_argument("--burst", action="store_true", help="exit once the queue is empty")
        p.add_argument(
            "--grace-s",
            type=float,
            default=30.0,
            help="on SIGINT/SIGTERM, how long the running batch may finish before "
            "it is handed back (default 30)",
        )
        p.add_argument(
            "--stall-s",
            type=float,
            help="how long a batch may run without a sign of life (a progress report) before "
            "the model is taken "
            f"for hung: its jobs fail and the worker exits with status {EXIT_STALLED} (default "
            f"{(worker_cls or ModelWorker).stall_s:g})",
        )
        p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                       help="text (default) or json: one JSON object per line, for log "
                       "shippers (model libraries' progress bars off)")
        host = p.add_mutually_exclusive_group()
        host.add_argument(
            "--gpus",
            metavar="all|LIST",
            help="run one worker process per GPU, each with its own CUDA_VISIBLE_DEVICES and "
            "worker id ID-gpuN, restarted when it fails: all, or a list such as 0,2",
        )
        host.add_argument(
            "--processes",
            type=int,
            metavar="N",
            help="run N worker processes (worker ids ID-p0...), restarted when they fail",
        )
        if name in TINY_BUILDERS:
            p.add_argument("--tiny", action="store_true",
                           help=f"build (once) and serve a tiny random-weight model offline, "
                           f"{TINY_BUILDERS[name][1]}: for tests and the demo")
            p.add_argument("--tiny-dir", type=Path, default=None,
                           help=f"where --tiny keeps its build (default "
                           f"~/.cache/jobhive/tiny-{name})")
        if worker_cls is not None:
            worker_cls.add_arguments(p)
        p.set_defaults(_worker=name)
    args = parser.parse_args(argv)
    worker_cls = load_worker_class(args._worker)
    if not args.key:
        parser.error("--key (or $JOBHIVE_WORKER_KEY) is required")
    if args.max_batch < 1:
        parser.error("--max-batch must be at least 1")
    try:
        args.server = ",".join(server_urls(args.server, paths=False))
    except ValueError as e:
        parser.error(f"--server: {e}")
    args._children = None  # with --gpus or --processes: the processes a supervisor runs
    if args.gpus is not None or args.processes is not None:
        try:
            args._children = plan_children(
                args.gpus, args.processes, args.worker_id, getattr(args, "device", None)
            )
        except ValueError as e:
            parser.error(str(e))
    if getattr(args, "tiny", False):
        if args.model:
            parser.error("give either --model DIR or --tiny")
        args.model = str(_imported(TINY_BUILDERS[args._worker][0])(args.tiny_dir))
    try:
        settings = worker_cls.settings_from(args)
    except ValueError as e:
        parser.error(str(e))
    return worker_cls, settings, args


def setup_logging(level: str, log_format: str) -> None:
    """Logs to stderr in `log_format` (jobhive/logs.py), from `level` up."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
    root.setLevel(level)


def _wants_json_logs(argv: list[str]) -> bool:
    """Whether the command line asks for --log-format json (parse_args checks it again)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--log-format")
    return early.parse_known_args(argv)[0].log_format == "json"


def main(argv: list[str] | None = None) -> None:
    drop_unactionable_warnings()  # (before parse_args imports the worker's libraries)
    argv = sys.argv[1:] if argv is None else argv
    if _wants_json_logs(argv):
        # Before parse_args imports the worker's libraries (and builds a --tiny model): their
        # warnings as JSON lines, and no progress bars (they are not JSON).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        logging.captureWarnings(True)
        setup_logging("WARNING", "json")
    worker_cls, model_settings, args = parse_args(argv)
    if args._children:  # --gpus/--processes: this process supervises, the children serve
        tiny_model = args.model if getattr(args, "tiny", False) else None
        command = child_command(argv, tiny_model)
        raise SystemExit(supervise(args._worker, command, args._children, args.log_format))
    setup_logging(args.log_level, args.log_format)
    settings = RunnerSettings(
        server_url=args.server,
        key=args.key,
        worker_id=args.worker_id,
        max_batch=args.max_batch,
        poll_wait_s=args.poll_wait_s,
        burst=args.burst,
        grace_s=args.grace_s,
        stall_s=args.stall_s,
    )
    runner = Runner(worker_cls(model_settings), settings)
    try:
        run_loop(runner.serve())
    except WorkerRefused as e:
        _say_error(str(e), args.log_format)
        raise SystemExit(EXIT_REFUSED) from e
    except ModelStalled as e:
        _say_error(str(e), args.log_format)
        raise SystemExit(EXIT_STALLED) from e


def _say_error(message: str, log_format: str) -> None:
    print(json_line("ERROR", "jobhive.worker", message) if log_format == "json"
          else f"jobhive-worker: {message}", file=sys.stderr)


if __name__ == "__main__":
    main()
