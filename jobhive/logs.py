"""How jobhive-server and jobhive-worker write their logs: `--log-format text` (the default,
`TIME LEVEL LOGGER: MESSAGE`) or `--log-format json`, one JSON object per line for log shippers.

A JSON line holds `time` (ISO 8601, UTC, milliseconds), `level`, `logger` and `message`, then
the fields of the message: a job line such as `job 3f2a running endpoint=echo worker=w1
attempt=1 waited=0.004s` also gives `job_id`, `event` ("running"), `endpoint`, `worker`,
`attempt` and `waited_s`, numbers as numbers (a value ending in `s` is seconds: `NAME_s`), a
quoted value (`error='...'`) unquoted; a line about a worker (`worker W connected ...`) gives
`worker` too. Fields passed with `extra=` are added as they are, an exception as `exception` (its
traceback as text). The fields never replace the four above.

stdlib json, not python-json-logger: the fields come from parsing the message, which that
library does not do, so a subclass of it would be this module plus a dependency.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")  # --log-format, [SERVER] log_format
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# `key=value` in a message: a quoted value (a repr) or one without spaces.
_PAIR = re.compile(r"(?<![\w.])([A-Za-z_]\w*)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)")
_SUBJECT = re.compile(r"(job|worker) (\S+)(?: (\w+))?")  # job ID EVENT ..., worker ID ...
_NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")
_SECONDS = re.compile(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)s")
_BASE = ("time", "level", "logger", "message")
# What every LogRecord has: anything else on a record came with `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def message_fields(message: str) -> dict[str, Any]:
    """The structured fields of a log message (see the module's docstring).

    Args:
        message (str): the formatted message, e.g. `job 1a running endpoint=echo attempt=1`.

    Returns:
        dict[str, Any]: e.g. {"job_id": "1a", "event": "running", "endpoint": "echo",
        "attempt": 1}; empty for a message without fields.
    """
    fields: dict[str, Any] = {}
    subject = _SUBJECT.match(message)
    if subject and "=" not in subject.group(2):
        if subject.group(1) == "job":
            fields["job_id"] = subject.group(2)
            if subject.group(3):
                fields["event"] = subject.group(3)
        else:
            fields["worker"] = subject.group(2)
    for key, raw in _PAIR.findall(message):
        name, value = _value(key, raw.rstrip(",;:"))
        fields.setdefault(name, value)
    return fields


def _value(key: str, raw: str) -> tuple[str, Any]:
    if raw[:1] in "'\"":
        try:
            return key, ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return key, raw
    if _NUMBER.fullmatch(raw):
        return key, float(raw) if any(c in raw for c in ".e") else int(raw)
    seconds = _SECONDS.fullmatch(raw)
    if seconds:
        return f"{key}_s", float(seconds.group(1))
    return key, raw


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for name, value in message_fields(message).items():
            line.setdefault(name, value)
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                line.setdefault(name, value)
        if record.exc_info:
            line.setdefault("exception", self.formatException(record.exc_info))
        elif record.exc_text:
            line.setdefault("exception", record.exc_text)
        if record.stack_info:
            line.setdefault("stack", self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of `--log-format` (text or json).

    Raises:
        ValueError: another format; the message lists the known ones.
    """
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)} (got {log_format!r})")


def json_line(level: str, logger: str, message: str) -> str:
    """A line as JsonFormatter writes it, for a message printed without logging (the worker
    supervisor's lines)."""
    record = logging.makeLogRecord({"levelname": level, "name": logger, "msg": message})
    return JsonFormatter().format(record)
