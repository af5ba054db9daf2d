"""The worker runtime: the library every model worker uses, and nothing model-specific.

    model.py     ModelWorker, Job, Progress: what a model worker implements and is given
    runner.py    Runner: polls the server, runs batches, relays progress, delivers results
    thread.py    ModelThread: where load() and run() execute, off the event loop
    progress.py  ProgressRelay: the model thread's progress reports, coalesced for the runner
    images.py    images as they travel in jobs
"""

from workers.runtime.model import Job, ModelWorker, Progress
from workers.runtime.runner import Runner, RunnerSettings, WorkerRefused

__all__ = ["Job", "ModelWorker", "Progress", "Runner", "RunnerSettings", "WorkerRefused"]
