"""The worker runtime: the library every model worker uses, and nothing model-specific.

    model.py     ModelWorker, Job, Progress, JobFeed: what a model worker implements and is given
    runner.py    Runner: polls the server, runs batches, relays progress, delivers results
    continuous.py  Session: a worker that takes jobs while it runs (continuous batching)
    link.py      ServerLink: JSON posts, what counts as the server being away, backoff
    delivery.py  result entries, cut into requests the server takes; a refused one fails its job
    thread.py    ModelThread: where load() and run() execute, off the event loop
    progress.py  ProgressRelay: the model thread's progress reports, coalesced for the runner
    media.py     MediaFile: an image or sound a model returns, uploaded as a file of the job
    images.py    images as they travel in job inputs (data URLs) and previews
    supervisor.py  --gpus / --processes: one worker process per GPU, restarted when it fails
"""

from workers.runtime.media import MediaFile
from workers.runtime.model import Job, JobFeed, ModelWorker, Progress
from workers.runtime.runner import ModelStalled, Runner, RunnerSettings, WorkerRefused

__all__ = [
    "Job", "JobFeed", "MediaFile", "ModelStalled", "ModelWorker", "Progress", "Runner",
    "RunnerSettings", "WorkerRefused",
]
