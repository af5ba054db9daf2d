"""What workers may put in a job: only the outputs its endpoint declares.

A worker's progress and result outputs are kept to the keys of the endpoint's [OUTPUTS] and
[PROGRESS.OUTPUTS] tables; others are dropped, with one warning per worker, endpoint and key
(a worker newer than its endpoint config should be heard, not flood the log). An endpoint that
declares no outputs at all takes any keys. How deep and how large outputs may be is bounded
where every request body is read (max_json_depth, max_body_bytes), so no worker can make a job
unreadable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from api_server.config import Endpoint

log = logging.getLogger("jobhive.server")

MAX_WARNINGS = 10_000  # (worker, endpoint, key) triples remembered; past it, no more warnings


class OutputFilter:
    """Drops undeclared output keys, warning once per worker, endpoint and key."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, str, str]] = set()

    def results(self, endpoint: Endpoint, outputs: dict[str, Any], worker: str) -> dict[str, Any]:
        return self._keep(endpoint, endpoint.outputs, outputs, worker, "OUTPUTS")

    def progress(self, endpoint: Endpoint, outputs: dict[str, Any], worker: str) -> dict[str, Any]:
        return self._keep(endpoint, endpoint.progress_outputs, outputs, worker, "PROGRESS.OUTPUTS")

    def _keep(
        self,
        endpoint: Endpoint,
        declared: Mapping[str, Any],
        outputs: dict[str, Any],
        worker: str,
        table: str,
    ) -> dict[str, Any]:
        if not declared or outputs.keys() <= declared.keys():
            return outputs
        for key in outputs.keys() - declared.keys():
            seen = (worker, endpoint.name, f"{table}.{key}")
            if seen not in self._warned and len(self._warned) < MAX_WARNINGS:
                self._warned.add(seen)
                log.warning("worker %s sent %s %r, which endpoint %s does not declare: dropped",
                            worker[:128], table, key[:80], endpoint.name)
        return {k: v for k, v in outputs.items() if k in declared}
