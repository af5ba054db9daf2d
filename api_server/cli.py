"""`jobhive-server`: loads the endpoints and serves them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.handlers
import signal
import sys
from pathlib import Path

from aiohttp import web

from api_server.aime.cfg import load_with_aime
from api_server.app import create_app
from api_server.config import LOG_LEVELS, ConfigError, load_server_config
from api_server.connections import GuardedSite
from api_server.demo import demo_workers
from api_server.state import CONFIG, CONNECTIONS, ENDPOINTS, STORE
from api_server.store.model import StoreConfigError
from jobhive.aio import run_loop
from jobhive.logs import LOG_FORMATS, formatter, json_line

log = logging.getLogger("jobhive.server")

LOG_FLUSH_S = 0.2  # the longest a log line waits in the buffer
SLOW_CALLBACK_S = 0.1  # with --dev, a callback holding the event loop longer is logged


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jobhive-server", description="Serve the job queues of the endpoints in a folder."
    )
    parser.add_argument("-H", "--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("-p", "--port", type=int, help="port to bind (default 7777)")
    parser.add_argument(
        "-c",
        "--endpoints",
        dest="endpoints_dir",
        help="folder of NAME/endpoint.toml and/or AIME aime_api_endpoint.cfg files (default "
        "./endpoints); or AIME .cfg files, comma-separated",
    )
    parser.add_argument("--config", type=Path, help="server.toml with a [SERVER] table")
    parser.add_argument(
        "--aime-endpoints",
        dest="aime_endpoints_dir",
        help="AIME endpoint configs, as AIME's -c takes them: a folder searched for "
        "aime_api_endpoint.cfg, a file or a comma-separated list ([SERVER] aime_endpoints_dir; "
        "-c finds them too)",
    )
    parser.add_argument(
        "--store",
        help="job store: sqlite:PATH (default sqlite:jobhive.sqlite3), or a Redis that several "
        "servers share: redis://HOST:PORT/DB, rediss://..., "
        "redis+sentinel://HOST:PORT,HOST:PORT/MASTER/DB",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS)
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text (default) or json: one JSON object per line, with the fields of job lines "
        "(job_id, endpoint, worker, attempt, waited_s...) for log shippers; the demo's workers "
        "log the same way",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="also start a demo worker (offline, tiny models) for each endpoint that has one",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="development: DEBUG logs, an access log line per request, and a warning for "
        "anything that blocks the event loop for over 0.1 s",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = load_server_config(
            args.config,
            host=args.host,
            port=args.port,
            endpoints_dir=args.endpoints_dir,
            store=args.store,
            aime_endpoints_dir=args.aime_endpoints_dir,
            log_level="DEBUG" if args.dev else args.log_level,
            log_format=args.log_format,
        )
        endpoints, aime = load_with_aime(config)
    except ConfigError as e:
        say_on_stderr(str(e), args.log_format or "text", "ERROR")
        raise SystemExit(2) from e
    for line in aime.unsupported:  # AIME config keys jobhive does not support (ignored)
        say_on_stderr(f"AIME config key not supported: {line}", config.log_format, "WARNING")
    log_buffer = buffered_logging(config.log_level, config.log_format)
    app = create_app(config, endpoints, aime_infos=aime.infos)
    print(
        f"jobhive-server: endpoints {', '.join(endpoints) or 'none'}; store {config.store}",
        flush=True,
    )
    try:
        run_loop(serve(app, config.host, config.port, access_log=args.dev, demo=args.demo,
                       log_buffer=log_buffer, log_format=config.log_format), debug=args.dev)
    except StoreConfigError as e:  # a Redis that is away, or would lose jobs
        log_buffer.flush()
        say_on_stderr(str(e), config.log_format, "ERROR")
        raise SystemExit(2) from e
    finally:
        log_buffer.flush()


def say_on_stderr(message: str, log_format: str, level: str) -> None:
    """A message of the server's own, before or after its logs: `jobhive-server: MESSAGE`, or
    a JSON line in the json format."""
    print(json_line(level, "jobhive.server", message) if log_format == "json"
          else f"jobhive-server: {message}", file=sys.stderr)


def buffered_logging(level: str, log_format: str = "text") -> logging.handlers.MemoryHandler:
    """Logs to stderr through a buffer: a line per job state change is thousands of lines a
    second under load, and one write() each costs the server more than the job itself. The
    buffer is written every LOG_FLUSH_S (by `serve`), every 256 lines, and at once for warnings.
    In the json format, Python's warnings are logged too (one JSON line each, not two lines of
    text)."""
    stream = logging.StreamHandler()
    stream.setFormatter(formatter(log_format))
    buffer = logging.handlers.MemoryHandler(256, flushLevel=logging.WARNING, target=stream)
    logging.basicConfig(level=level, handlers=[buffer])
    logging.captureWarnings(log_format == "json")
    return buffer


async def flush_logs_forever(buffer: logging.handlers.MemoryHandler) -> None:
    while True:
        await asyncio.sleep(LOG_FLUSH_S)
        buffer.flush()


async def serve(
    app: web.Application,
    host: str,
    port: int,
    access_log: bool,
    demo: bool = False,
    log_buffer: logging.handlers.MemoryHandler | None = None,
    log_format: str = "text",
) -> None:
    """Serves until SIGINT or SIGTERM, then shuts down cleanly (the store flushes). With demo,
    also runs a demo worker for each endpoint that has one (logging in `log_format`)."""
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that hangs up ends its long-poll at once
        keepalive_timeout=app[CONFIG].keepalive_timeout_s,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )
    started_s = asyncio.get_running_loop().time()
    await runner.setup()
    try:
        await GuardedSite(runner, host, port, app[CONNECTIONS]).start()
        bound_host, bound_port = runner.addresses[0][:2]  # the real port when port was 0
        url = f"http://{bound_host}:{bound_port}"
        print(f"jobhive-server: listening on {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = SLOW_CALLBACK_S  # reported in debug mode (--dev)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with contextlib.AsyncExitStack() as stack:
            if log_buffer is not None:
                flusher = asyncio.create_task(flush_logs_forever(log_buffer))
                stack.callback(flusher.cancel)
            if demo:
                served = await stack.enter_async_context(
                    demo_workers(url, app[ENDPOINTS], app[STORE], stop, log_format))
                if log_buffer is not None:  # the workers' `connected` lines before the ready line
                    log_buffer.flush()
                print(f"jobhive-server: demo workers for {', '.join(served) or 'nothing'} ready "
                      f"in {loop.time() - started_s:.0f} s; open {url}/ in a browser, or try\n"
                      f"  curl -X POST '{url}/api/v1/endpoints/echo/jobs?wait=10' "
                      "-H 'Content-Type: application/json' "
                      "-d '{\"inputs\": {\"text\": \"hello\"}}'", flush=True)
            await stop.wait()
            print("jobhive-server: shutting down", flush=True)
    finally:
        await runner.cleanup()

if __name__ == "__main__":
    main()
