"""The noop worker: echoes its inputs, after an optional delay with progress steps and previews.

No torch: it serves the `echo` endpoint for tests, the demo and the benchmarks.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from workers.runtime.images import data_url
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


@dataclass(frozen=True)
class NoopSettings:
    """Args:
    worker_id (str): echoed in every job's outputs, so a test sees which worker ran it.
    """

    worker_id: str


class NoopWorker(ModelWorker):
    """Echoes each job's inputs. The jobs of a batch advance together, like a GPU batch: the
    batch takes as long as its longest delay."""

    job_type = "echo"
    settings: NoopSettings

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> NoopSettings:
        return NoopSettings(worker_id=args.worker_id)

    def info(self) -> dict[str, Any]:
        return {"model": "noop"}

    def run(self, batch: list[Job], progress: Progress) -> list[dict[str, Any] | Exception]:
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
            time.sleep(max(0.0, due - time.monotonic()))
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
            "image": job.inputs.get("image"),
            "worker_id": self.settings.worker_id,
        }
