"""One endpoint's queue of waiting jobs."""

from __future__ import annotations

from api_server.store.model import Job


class JobQueue:
    """A FIFO of queued jobs with O(1) push, pop from the front and removal, and cheap positions.

    Every client following a queued job asks for its position (an event stream about once a
    second), so positions are indexed once and shared; taking jobs from the front, the
    steady-state change, shifts the index instead of rebuilding it. Only a removal from the
    middle (a cancel) or a requeue at the front rebuilds it, at the next position asked.
    `bytes` counts the queued jobs' inputs, for the endpoint's max_queue_bytes.
    """

    def __init__(self) -> None:
        self.bytes = 0
        self._jobs: dict[str, Job] = {}  # insertion-ordered: the queue order
        self._index: dict[str, int] | None = None  # job id -> place, counted from _shift
        self._shift = 0  # jobs taken from the front since the index was built

    def __len__(self) -> int:
        return len(self._jobs)

    def first(self, ready: bool = False) -> Job | None:
        """The job at the front; with ready, the first with no write in flight (`busy`)."""
        for job in self._jobs.values():
            if not ready or job.busy is None:
                return job
        return None

    def push(self, job: Job) -> None:
        """Adds a job at the back."""
        self._jobs[job.id] = job
        self.bytes += job.inputs_bytes
        if self._index is not None:
            self._index[job.id] = len(self._jobs) - 1 + self._shift

    def push_front(self, job: Job) -> None:
        """Puts a job back at the front (a requeued job has waited longest)."""
        self._jobs = {job.id: job, **{k: v for k, v in self._jobs.items() if k != job.id}}
        self.bytes += job.inputs_bytes
        self._index = None

    def pop_first(self, ready: bool = False) -> Job | None:
        """Takes the job at the front (None when empty); with ready, the first not `busy`."""
        if ready:
            job = self.first(ready=True)
            if job is None:
                return None
            if job is not self.first():
                return self.remove(job.id)  # behind a job being changed: rare
        if not self._jobs:
            return None
        job = self._jobs.pop(next(iter(self._jobs)))
        self.bytes -= job.inputs_bytes
        if self._index is not None:
            del self._index[job.id]
            self._shift += 1
        return job

    def remove(self, job_id: str) -> Job | None:
        """Takes a job out wherever it is; None when it is not queued."""
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self.bytes -= job.inputs_bytes
            self._index = None
        return job

    def position(self, job_id: str) -> int | None:
        """How many jobs are ahead of this one (0: next); None when it is not queued."""
        if self._index is None:
            self._index = {queued: place for place, queued in enumerate(self._jobs)}
            self._shift = 0
        place = self._index.get(job_id)
        return None if place is None else place - self._shift
