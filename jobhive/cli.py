"""`python -m jobhive ENDPOINT field=value ... [--server URL[,URL...]] [--key KEY]`

Submits one job, shows its progress as a bar on stderr while it runs, and prints its outputs as
JSON on stdout. A failed or canceled job, or a refused request, exits 1 with the message on
stderr; Ctrl-C cancels the job and exits 130.

A value is read as JSON when it parses (`steps=4`, `delay_s=0.5`, `tags='["a","b"]'`) and as a
string otherwise (`text=hello`; quote a string that looks like JSON: `text='"42"'`);
`image=@cat.png` sends the file as a data URL. Given several servers (`--server URL,URL`),
requests go to the next one when one stops answering.

A file output (an image, audio) prints as its reference, with the URL to download it from;
`--save DIR` downloads each into DIR and prints its path instead; `--inline` prints data URLs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import mimetypes
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from jobhive.client import Client, File, Job, new_job_id
from jobhive.errors import JobhiveError
from jobhive.protocol import DEFAULT_SERVER_URL


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobhive",
        description="Run one job on a jobhive server and print its outputs as JSON.",
        epilog="Values are JSON when they parse, else strings; field=@FILE sends a file as a "
        "data URL.",
    )
    parser.add_argument("endpoint", help="the endpoint, e.g. echo")
    parser.add_argument("fields", nargs="*", metavar="field=value", help="the job's inputs")
    parser.add_argument(
        "--server",
        metavar="URL[,URL...]",
        default=os.environ.get("JOBHIVE_SERVER", DEFAULT_SERVER_URL),
        help="the server URL, or several separated by commas (servers sharing one queue: the "
        f"next is tried when one stops answering; default $JOBHIVE_SERVER or "
        f"{DEFAULT_SERVER_URL})",
    )
    parser.add_argument(
        "--key", default=os.environ.get("JOBHIVE_KEY"), help="client key (default $JOBHIVE_KEY)"
    )
    files = parser.add_mutually_exclusive_group()
    files.add_argument("--save", metavar="DIR", type=Path,
                       help="download file outputs into DIR and print their paths")
    files.add_argument("--inline", action="store_true",
                       help="print file outputs as data URLs (the whole file in the JSON)")
    return parser.parse_args(argv)


def field_value(text: str) -> Any:
    """The value of one `field=value` argument (the part after `=`).

    Args:
        text (str): `@PATH` for a file, else JSON or a plain string.

    Returns:
        Any: the file as a data URL, the parsed JSON, or the text itself.
    """
    if text.startswith("@"):
        return data_url(Path(text[1:]))
    try:
        return json.loads(text)
    except ValueError:
        return text


def data_url(path: Path) -> str:
    """The file as a `data:TYPE;base64,...` URL, its type guessed from the file name."""
    mime_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime_type};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """The inputs dict of the `field=value` arguments; ValueError or OSError when one is bad."""
    inputs = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"expected field=value, got {pair!r}")
        inputs[name] = field_value(text)
    return inputs


def follow(client: Client, job: Job) -> Job:
    """Shows the job's progress as a bar on stderr until it finishes; returns the last state."""
    with tqdm(
        total=100,
        file=sys.stderr,
        desc=job.endpoint,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}",
    ) as bar:
        for event in client.stream(job):
            job = event.job
            bar.update((100.0 if job.status == "done" else job.progress) - bar.n)
            bar.set_postfix_str(_state(job))
    return job


def save_files(outputs: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The outputs with each File downloaded into folder (under its name) and replaced by the
    path written."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(value: Any) -> Any:
        return str(value.save(folder / value.name)) if isinstance(value, File) else value

    return {key: [one(v) for v in value] if isinstance(value, list) else one(value)
            for key, value in outputs.items()}


def _state(job: Job) -> str:
    if job.status == "queued" and job.queue_position:
        return f"queued, {job.queue_position} ahead"
    return job.status


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status."""
    args = parse_args(argv)
    try:
        inputs = parse_inputs(args.fields)
        client = Client(args.server, args.key)
    except (ValueError, OSError) as e:
        print(f"jobhive: {e}", file=sys.stderr)
        return 2
    job_id = new_job_id()  # known before submitting, so Ctrl-C can always cancel it
    with client:
        try:
            job = client.submit(args.endpoint, inputs, job_id=job_id)
            outputs = client.result(follow(client, job), inline=args.inline)
            if args.save is not None:
                outputs = save_files(outputs, args.save)
        except KeyboardInterrupt:
            with contextlib.suppress(JobhiveError):
                client.cancel(job_id)
            print(f"jobhive: interrupted; job {job_id} canceled", file=sys.stderr)
            return 130
        except JobhiveError as e:
            print(f"jobhive: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # --save could not write
            print(f"jobhive: {e}", file=sys.stderr)
            return 1

    def reference(file: object) -> Any:  # a File prints as its reference, URL made whole
        if not isinstance(file, File):
            raise TypeError(f"{type(file).__name__} is not JSON")
        return {**file.to_json(), "url": client.server_url + file.url}

    print(json.dumps(outputs, indent=2, ensure_ascii=False, default=reference))
    return 0
