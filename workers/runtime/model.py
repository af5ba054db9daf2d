"""What a model worker is: a class with `load()` and `run(batch, progress)`.

A model worker never does HTTP: the runner (workers/runtime/runner.py) polls the server, hands
it a batch of jobs in a thread of its own, relays its progress reports and posts what it returns.
Its settings are a frozen dataclass that `settings_from` builds from its command-line options.

    class Upper(ModelWorker):
        job_type = "upper"

        def run(self, batch, progress):
            return [{"text": job.inputs["text"].upper()} for job in batch]

A worker that works in steps (a decoding loop) may instead take jobs while it runs: it sets
`takes_jobs_while_running` and implements `run_continuously(feed, progress)`, which takes the
jobs that arrived from `feed.take()` between two steps and hands each job's outcome to
`feed.finish(job, outcome)` as soon as that job ends. The runner keeps polling meanwhile, for
as many jobs as --max-batch leaves room for, and posts each result at once.

    class Counter(ModelWorker):
        job_type = "count"
        takes_jobs_while_running = True

        def run_continuously(self, feed, progress):
            running = {}
            while (arrived := feed.take()) or running:
                running.update((job, 0) for job in arrived)
                for job in list(running):
                    running[job] += 1  # one step of every running job
                    if running[job] == job.inputs["steps"]:
                        feed.finish(job, {"steps": running.pop(job)})
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol


@dataclass(eq=False)
class Job:
    """One job as a worker sees it.

    Attributes:
        id (str): the job's id.
        endpoint (str): the endpoint it was submitted to.
        inputs (dict[str, Any]): the validated inputs, defaults filled in.
        lease_id (str): the lease this worker holds; the runner sends it with every report.
        attempt (int): 1 for the first try, more when an earlier worker lost the job.
        canceled (bool): set by the runner when the client canceled the job or the lease was
            lost; a model should stop working on the job at its next step.
        server_texts (dict[str, str]): the runner's: the progress texts the server holds, as
            its last answer said; later reports send only what it lacks
            (protocol.progress_delta).
    """

    id: str
    endpoint: str
    inputs: dict[str, Any]
    lease_id: str
    attempt: int = 1
    canceled: bool = False
    lease_s: float = 60.0
    server_texts: dict[str, str] = field(default_factory=dict)


class Progress(Protocol):
    """What a model reports through (the runner's ProgressRelay); both calls are cheap and
    safe from any thread: the runner coalesces the reports and sends them in batches.

    `progress(job, percent, outputs)`: percent from 0 to 100; outputs become the job's progress
    outputs (previews, partial text). `progress.alive()`: no news, but the model is working.
    Either is the sign of life the runner waits for: a batch silent for the worker's
    `stall_s` is taken for a hung model (see ModelWorker.stall_s).
    """

    def __call__(self, job: Job, percent: float, outputs: dict[str, Any] | None = None) -> None:
        ...

    def alive(self) -> None:
        ...


class JobFeed(Protocol):
    """The jobs of a worker that takes jobs while it runs (`run_continuously`); both calls are
    made from the model thread.

    `feed.take()`: the jobs that arrived since the last call (the runner polls for at most
    --max-batch running in all); [] when none did. Once it returned [] while none of the jobs
    taken is still running, the feed is closed: `run_continuously` returns, and the runner's
    next poll starts it again.
    `feed.finish(job, outcome)`: the job ended: its outputs (a dict) or an Exception that fails
    it, posted at once. Every job taken is finished once.
    """

    def take(self) -> list[Job]:
        ...

    def finish(self, job: Job, outcome: dict[str, Any] | Exception) -> None:
        ...


class BatchFeed:
    """A JobFeed of one fixed batch: what `run` gives `run_continuously` (tests, and the
    result a job has alone)."""

    def __init__(self, batch: list[Job]) -> None:
        self._arrived = list(batch)
        self.outcomes: dict[str, dict[str, Any] | Exception] = {}

    def take(self) -> list[Job]:
        arrived, self._arrived = self._arrived, []
        return arrived

    def finish(self, job: Job, outcome: dict[str, Any] | Exception) -> None:
        self.outcomes[job.id] = outcome


class ModelWorker:
    """Base class of every model worker.

    Subclasses set `job_type`, may add command-line options with `add_arguments` and turn them
    into their settings (a frozen dataclass) with `settings_from`, load their model in `load`
    and do the work in `run`. Both run in a thread of their own, so they may block; the
    runner's event loop stays free to talk to the server.
    """

    job_type: ClassVar[str]
    # The longest a batch may run without a sign of life (a progress report or
    # `progress.alive()`) before the runner takes the model for hung: it stops renewing the
    # leases, fails the batch's jobs with "model stalled for N s" and exits with status 3 for
    # its supervisor to start a fresh process (a thread cannot be killed). --stall-s overrides.
    stall_s: ClassVar[float] = 60.0
    # Continuous batching: the runner feeds jobs to a running `run_continuously` between its
    # steps and posts each result as soon as its job ends, instead of calling `run` per batch.
    takes_jobs_while_running: ClassVar[bool] = False

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings
        # The models `load` loaded, each as `describe_model` gives it: sent in `info()`, and
        # what /api/v1/endpoints lists and the pages show as the model serving them.
        self.loaded_models: list[dict[str, Any]] = []

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds this worker's own command-line options."""

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> Any:
        """This worker's settings from its parsed command line (None: it has none).

        Raises:
            ValueError: the options do not fit together; the message says how to fix them.
        """
        return None

    @property
    def serves(self) -> str:
        """The job type this worker takes from the server (its class's `job_type` unless its
        settings choose another, as llama4 with an index serves rag_chat)."""
        return self.job_type

    def info(self) -> dict[str, Any]:
        """What the server shows about this worker: `/api/v1/status` the whole dict, the
        endpoint listing and the pages its `loaded_models` (filled by `load`). Sent with every
        poll, from the runner's event loop: return what is at hand, read no file.

        A worker adding its own keys (a model folder, the device...) keeps the base's:
        `return {"model": ..., **super().info()}`.
        """
        # (getattr: a subclass whose __init__ skips the base's still polls, listing no model)
        return {"loaded_models": getattr(self, "loaded_models", [])}

    def load(self) -> None:
        """Loads the model. Called once, before the first poll."""

    def run(self, batch: list[Job], progress: Progress) -> list[dict[str, Any] | Exception]:
        """Does the work of a batch of jobs.

        Args:
            batch (list[Job]): one or more jobs of the same endpoint (up to --max-batch).
            progress (Progress): call it to report progress and previews; each report also keeps
                the job's lease alive. A step with nothing to report may call
                `progress.alive()`: a batch silent for `stall_s` seconds is failed as hung.
                Check `job.canceled` between steps.

        Returns:
            list[dict[str, Any] | Exception]: one entry per job, in batch order: the job's
            outputs, or an exception to fail that job alone (its message is what the client
            sees). Raising fails the whole batch.

        A worker with `takes_jobs_while_running` has this from `run_continuously`: the batch
        joins at once, and none later.
        """
        if not self.takes_jobs_while_running:
            raise NotImplementedError
        feed = BatchFeed(batch)
        self.run_continuously(feed, progress)
        missing = RuntimeError("the worker ended without a result for this job")
        return [feed.outcomes.get(job.id, missing) for job in batch]

    def run_continuously(self, feed: JobFeed, progress: Progress) -> None:
        """Does the work of jobs that join while others run (with `takes_jobs_while_running`).

        Args:
            feed (JobFeed): `feed.take()` between two steps gives the jobs that arrived;
                `feed.finish(job, outcome)` as each job ends (outputs or an Exception).
            progress (Progress): as for `run`; check `job.canceled` between steps.

        Returns once `feed.take()` gave no job while none was running. Raising fails every
        job taken and not finished yet.
        """
        raise NotImplementedError


# In a model folder built by workers/tiny (tiny random weights): {"model": NAME, ...}.
TINY_STAMP = "jobhive-tiny.json"


def tiny_stamp(folder: Path | str) -> dict[str, Any] | None:
    """The stamp of the tiny build in `folder`, None where it has none (real weights never do).

    Args:
        folder (Path | str): a model folder.

    Returns:
        dict[str, Any] | None: {"model": NAME, "version": ..., **params}: the folder holds the
        tiny random-weight model NAME; None: it is not a tiny build.
    """
    try:
        stamp = json.loads((Path(folder) / TINY_STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and isinstance(stamp.get("model"), str) else None


def describe_model(
    folder: Path | str | None,
    *,
    name: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """One entry of a worker's `loaded_models`: what the pages show as the model serving them.

    A folder built by workers/tiny (its stamp says so: tiny_stamp) is named tiny-NAME
    and marked random; any other folder is named by its last part and never marked random.
    Reads the stamp: call it from `load`, not from `info`.

    Args:
        folder (Path | str | None): the folder the weights were loaded from; None for a model
            that has none (a bundled one: give `name`).
        name (str | None, default None): the name to show; None: from the folder (a model name
            that is no folder, as "openai/clip-vit-large-patch14", is shown as given).
        dtype (str | None, default None): the weights' type as torch names it ("bfloat16"), or
            how they are quantized ("nf4").
        device (str | None, default None): where they run ("cuda:0", "cpu").

    Returns:
        dict[str, Any]: {"name": str, "dtype": str | None, "device": str | None,
        "random": bool}; random is true only for a tiny build.
    """
    stamp = tiny_stamp(folder) if folder is not None else None
    if name is None:
        if stamp is not None:
            name = f"tiny-{stamp['model']}"
        elif folder is not None and Path(folder).is_dir():
            name = Path(folder).resolve().name
        else:
            name = str(folder) if folder is not None else "unknown"
    return {"name": name, "dtype": dtype, "device": device, "random": stamp is not None}
