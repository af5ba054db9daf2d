"""The noop worker: echoes its inputs, after an optional delay with progress steps and previews.

No torch: it serves the `echo` endpoint for tests, the demo and the benchmarks. `--hang-after N`
makes its model thread hang from the N-th batch on, the way a wedged GPU call would (to test
the runner's --stall-s).
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from jobhive.protocol import FILE_MEDIA_TYPES, decode_data_url
from workers.runtime.images import data_url
from workers.runtime.media import MediaFile
from workers.runtime.model import Job, ModelWorker, Progress


def preview_image(step: int, steps: int, size_px: int = 96) -> str:
    """A small JPEG data URL: a bar filled to step/steps, so each preview differs visibly."""
    image = Image.new("RGB", (size_px, size_px), (24, 24, 32))
    draw = ImageDraw.Draw(image)
    fill = round(size_px * step / max(1, steps))
    draw.rectangle((0, size_px - 16, fill, size_px), fill=(240, 180, 40))
    draw.text((6, 6), f"{step}/{steps}", fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return data_url(buffer.getvalue(), "jpeg")


def echoed_image(value: str | None) -> MediaFile | str | None:
    """The input image (a data URL) back as a file, as a model's image output travels; one of a
    type that cannot travel as a file stays a data URL."""
    if value is None:
        return None
    media_type, data = decode_data_url(value)
    return MediaFile(data, media_type) if media_type in FILE_MEDIA_TYPES else value


@dataclass(frozen=True)
class NoopSettings:
    """Args:
    worker_id (str): echoed in every job's outputs, so a test sees which worker ran it.
    hang_after (int | None): from this batch on (1: the first), `run` blocks forever without
        a report; None: never.
    """

    worker_id: str
    hang_after: int | None = None


class NoopWorker(ModelWorker):
    """Echoes each job's inputs. The jobs of a batch advance together, like a GPU batch: the
    batch takes as long as its longest delay."""

    job_type = "echo"
    settings: NoopSettings

    def __init__(self, settings: NoopSettings) -> None:
        super().__init__(settings)
        self.batches = 0  # batches begun; touched by the model thread only
        # No weights: it echoes its inputs (its entry says so on the echo page).
        self.loaded_models = [{"name": "noop", "dtype": None, "device": "cpu", "random": False}]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--hang-after",
            type=int,
            metavar="N",
            help="from the N-th batch on, hang the model thread forever (tests --stall-s)",
        )

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> NoopSettings:
        if args.hang_after is not None and args.hang_after < 1:
            raise ValueError("--hang-after must be at least 1 (the first batch)")
        return NoopSettings(worker_id=args.worker_id, hang_after=args.hang_after)

    def info(self) -> dict[str, Any]:
        return {"model": "noop", **super().info()}

    def run(self, batch: list[Job], progress: Progress) -> list[dict[str, Any] | Exception]:
        self.batches += 1
        if self.settings.hang_after is not None and self.batches >= self.settings.hang_after:
            threading.Event().wait()  # a wedged model: no report, no return, ever
        # 1. Each job's schedule: `steps` reports evenly spread over `delay_s`.
        start = time.monotonic()
        schedule = {
            job.id: [
                start + job.inputs["delay_s"] * (i + 1) / max(1, job.inputs["steps"])
                for i in range(job.inputs["steps"])
            ]
            for job in batch
        }
        # 2. Step through all jobs on one clock, reporting as each step comes due.
        while any(schedule.values()):
            due = min(t[0] for t in schedule.values() if t)
            while (left_s := due - time.monotonic()) > 0:
                progress.alive()  # a long gap between steps is no stall
                time.sleep(min(left_s, 1.0))
            for job in batch:
                times = schedule[job.id]
                if times and times[0] <= time.monotonic() and not job.canceled:
                    times.pop(0)
                    steps = job.inputs["steps"]
                    step = steps - len(times)
                    progress(
                        job,
                        100 * step / steps,
                        {"step": step, "preview": preview_image(step, steps)},
                    )
                elif job.canceled:
                    times.clear()
        # 3. Jobs without steps still honour their delay.
        longest_s = max(job.inputs["delay_s"] for job in batch)
        while (left_s := start + longest_s - time.monotonic()) > 0:
            if all(job.canceled for job in batch):
                break
            progress.alive()
            time.sleep(min(left_s, 0.05))
        # 4. The outputs: the inputs back, or the failure asked for.
        return [self._echo(job) for job in batch]

    def _echo(self, job: Job) -> dict[str, Any] | Exception:
        if job.inputs.get("fail"):
            return RuntimeError(job.inputs["fail"])
        return {
            "text": job.inputs["text"],
            "delay_s": job.inputs["delay_s"],
            "steps": job.inputs["steps"],
            "image": echoed_image(job.inputs.get("image")),
            "worker_id": self.settings.worker_id,
        }
