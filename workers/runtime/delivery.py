"""A job's result entry; how results are cut into requests the server takes, and what replaces
a refused one.

The runner does not know the server's body limit (nor that of a proxy in between, which may be
smaller): it sends a batch's results in one request and, when that is refused with 413, learns
that requests that large do not pass; later batches are packed into requests under it, and the
refused one is sent again in smaller parts, down to one job. A result the server refuses for a
reason a retry cannot fix (a 4xx other than 408/429, one job's result still too large) fails
that job with the server's reason, so its client sees why; nothing is dropped unsaid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from workers.runtime.media import take_files
from workers.runtime.model import Job

log = logging.getLogger("jobhive.worker")

REFUSED = "result refused by the server"  # the start of a refused result's error


@dataclass
class Chunk:
    """Reports (one per job) that travel in one request.

    Attributes:
        reports (list[dict[str, Any]]): the result entries, each with its job_id and lease_id.
        maybe_taken (bool): a request carrying them was cut short after it was sent (the
            connection dropped, or a stop cut the poll that waits beside them): the server
            may hold them already, so a shut-down does not wait for them to be confirmed.
    """

    reports: list[dict[str, Any]]
    maybe_taken: bool = False

    @property
    def job_ids(self) -> str:
        return ", ".join(r["job_id"] for r in self.reports)

    @property
    def what(self) -> str:
        """How a log line names them: "the results of jobs a, b" or "the hand-back of ..."."""
        kind = "hand-back" if all(r.get("release") for r in self.reports) else "results"
        return f"the {kind} of job{'s' * (len(self.reports) > 1)} {self.job_ids}"


def pack(reports: list[dict[str, Any]], budget_bytes: int | None) -> list[Chunk]:
    """The reports in as few chunks as fit budget_bytes each (greedy, in order); one chunk
    when no budget is known. A report larger than the budget goes alone (the server decides)."""
    if budget_bytes is None:
        return [Chunk(reports)]
    chunks: list[Chunk] = []
    size = 0
    for report in reports:
        report_bytes = len(orjson.dumps(report)) + 1  # the comma
        if not chunks or size + report_bytes > budget_bytes:
            chunks.append(Chunk([]))
            size = 0
        chunks[-1].reports.append(report)
        size += report_bytes
    return chunks


def split(chunk: Chunk, budget_bytes: int | None) -> list[Chunk]:
    """A refused chunk of several reports in smaller ones: packed under the budget, and at
    least in halves (sizes are estimates; halving always ends at one report)."""
    parts = pack(chunk.reports, budget_bytes)
    if len(parts) < 2:
        half = len(chunk.reports) // 2
        parts = [Chunk(chunk.reports[:half]), Chunk(chunk.reports[half:])]
    for part in parts:
        part.maybe_taken = chunk.maybe_taken
    return parts


def reason(status: int, data: Any) -> str:
    """The server's reason in a refusal: its `error`, with each field's reason."""
    if not isinstance(data, dict):
        return f"HTTP {status}"
    fields = data.get("fields") if isinstance(data.get("fields"), dict) else {}
    details = "".join(f"; {k}: {v}" for k, v in fields.items())
    return f"{data.get('error') or f'HTTP {status}'}{details}"


def refused(report: dict[str, Any], status: int, why: str) -> dict[str, Any] | None:
    """The error result that replaces a result the server refused, so the job fails with the
    reason; None when the refused report was no job's outputs (an error, a hand-back): there
    is nothing smaller to send, its lease runs out and the job runs again."""
    if "outputs" not in report:
        return None
    return {
        "job_id": report["job_id"],
        "lease_id": report["lease_id"],
        "error": f"{REFUSED} ({status}): {why}"[:1000],
    }


def result_entry(job: Job, outcome: Any) -> dict[str, Any]:
    """A job's result entry from what the model returned for it (outputs, or an Exception),
    serialised here, in the model thread, off the event loop: what cannot travel becomes an
    error; media go apart from the JSON, in `files`, to be uploaded first."""
    if job.canceled:
        log.info("job %s was canceled while running", job.id)
    if isinstance(outcome, Exception):
        return {"error": str(outcome) or type(outcome).__name__}
    if not isinstance(outcome, dict):
        return {"error": f"worker returned {type(outcome).__name__}, not a dict"}
    try:
        outputs, files = take_files(outcome)
        data = orjson.dumps(outputs, option=orjson.OPT_SERIALIZE_NUMPY)
    except (TypeError, ValueError) as e:  # (ValueError: two files of one name)
        return {"error": f"outputs cannot travel: {e}"}
    return {"outputs": orjson.Fragment(data), "files": files}
