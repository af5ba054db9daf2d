"""The sd3 endpoint end to end: the real server, a real `jobhive-worker sd3 --tiny` process.

The tiny model (workers/tiny/sd3.py) has random weights: its images are noise, but it runs the
real SD3 pipeline classes, so sizes, seeds, batching, previews and cancel behave as with real
weights. One server and one worker (max batch 4: the `sd3` fixture of conftest.py) serve the
whole module, and test_browser_sd3.py too (a test reads the worker's lines from its own start
on); the tiny model is built once for them into a temporary folder (--tiny-dir).
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import httpx
import pytest
from conftest import Process, wait_until
from e2e_http import assert_declared
from PIL import Image

from jobhive import Client

TINY = {"width": 64, "height": 64, "steps": 4, "cfg_scale": 5.0, "preview": "none"}


def submit(http: httpx.Client, url: str, wait_s: float = 0, inline: bool = True,
           **inputs) -> dict:
    """Submits; with wait_s, the finished job (its images as data URLs unless not inline)."""
    query = {"wait": wait_s} if wait_s else {}
    if inline:
        query["inline"] = 1
    reply = http.post(f"{url}/api/v1/endpoints/sd3/jobs", params=query, json={"inputs": inputs})
    assert reply.status_code in (200, 202), reply.text
    return reply.json()


def finished(http: httpx.Client, url: str, job_id: str, timeout_s: float = 30) -> dict:
    def done():
        job = http.get(f"{url}/api/v1/jobs/{job_id}?wait=1&inline=1").json()  # data URLs
        return job if job["status"] in ("done", "failed", "canceled") else None

    return wait_until(done, timeout_s=timeout_s)


def picture(value: str) -> Image.Image:
    data = value.partition(",")[2]
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def test_txt2img_several_images_with_seeds_and_metadata(sd3, http):
    server, _ = sd3
    job = submit(http, server.url, wait_s=30, inline=False, prompt="a red cat", seed=1234,
                 num_images=3, output_format="png", **TINY)
    assert job["status"] == "done", job
    outputs = job["outputs"]
    assert_declared(http, server.url, "sd3", outputs)
    assert outputs["seeds"] == [1234, 1235, 1236]
    assert len(outputs["images"]) == 3
    for i, (seed, ref) in enumerate(zip(outputs["seeds"], outputs["images"], strict=True)):
        # Each image is a file of the job, uploaded by the worker as raw PNG bytes.
        assert ref["file"] == f"images-{i}.png" and ref["media_type"] == "image/png"
        download = http.get(f"{server.url}{ref['url']}")
        assert download.status_code == 200 and download.headers["content-type"] == "image/png"
        assert len(download.content) == ref["bytes"]
        image = Image.open(io.BytesIO(download.content))
        image.load()
        assert (image.format, image.size) == ("PNG", (64, 64))
        embedded = json.loads(image.text["parameters"])
        assert embedded["prompt"] == "a red cat" and embedded["seed"] == seed
        assert embedded["steps"] == 4 and embedded["mode"] == "txt2img"
    assert outputs["timing"]["generate_s"] > 0

    random_seed = submit(http, server.url, wait_s=30, seed=-1, **TINY)["outputs"]["seeds"]
    assert len(random_seed) == 1 and 0 <= random_seed[0] < 2**32


def test_a_fixed_seed_gives_the_same_image(sd3, http):
    server, _ = sd3
    runs = [submit(http, server.url, wait_s=30, prompt="a dog", seed=seed, **TINY)["outputs"]
            for seed in (42, 42, 43)]
    pixels = [picture(outputs["images"][0]).tobytes() for outputs in runs]
    assert pixels[0] == pixels[1]
    assert pixels[0] != pixels[2]


def test_img2img_starts_from_the_image(sd3, http):
    server, _ = sd3
    source = submit(http, server.url, wait_s=30, seed=7, **TINY)["outputs"]["images"][0]
    job = submit(http, server.url, wait_s=30, prompt="a dog", seed=8, image=source,
                 strength=0.5, output_format="jpeg", **TINY)
    assert job["status"] == "done", job
    image = picture(job["outputs"]["images"][0])
    assert (image.format, image.size) == ("JPEG", (64, 64))
    embedded = json.loads(image.getexif()[0x010E])
    assert embedded["mode"] == "img2img" and embedded["strength"] == 0.5
    assert embedded["seed"] == 8
    # strength 1 ignores the input; a small strength keeps close to it
    close = submit(http, server.url, wait_s=30, seed=8, image=source, strength=0.25,
                   output_format="png", **{**TINY, "steps": 8})["outputs"]["images"][0]
    far = submit(http, server.url, wait_s=30, seed=8, image=source, strength=1.0,
                 output_format="png", **{**TINY, "steps": 8})["outputs"]["images"][0]

    def distance(value: str) -> float:
        a, b = picture(value).convert("RGB").tobytes(), picture(source).convert("RGB").tobytes()
        return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)

    assert distance(close) < distance(far)


@pytest.mark.parametrize("kind", ["latent", "vae"])
def test_previews_arrive_in_order(sd3, http, kind):
    server, _ = sd3
    with Client(server.url) as client:
        steps = 60 if kind == "latent" else 30
        job = client.submit("sd3", {**TINY, "width": 128, "height": 128, "steps": steps,
                                    "preview": kind, "preview_every_n_steps": 3, "seed": 1})
        seen = []
        for event in client.stream(job):
            outputs = event.job.progress_outputs or {}
            assert_declared(http, server.url, "sd3", event.job.outputs, [outputs])
            if event.event == "progress" and "preview" in outputs:
                seen.append((outputs["step"], outputs["preview_step"], outputs["preview"]))
            last = event
    assert last.event == "result", last.job.error
    assert seen, "no preview arrived"
    steps = [step for step, _, _ in seen]
    preview_steps = [preview_step for _, preview_step, _ in seen]
    assert steps == sorted(steps) and preview_steps == sorted(preview_steps)
    assert all(p % 3 == 0 and p <= s for s, p, _ in seen)
    image = picture(seen[-1][2])
    assert image.format == "JPEG" and max(image.size) <= 64


def test_no_previews_when_none_asked(sd3):
    server, _ = sd3
    with Client(server.url) as client:
        job = client.submit("sd3", {**TINY, "steps": 30, "preview": "none"})
        events = list(client.stream(job))
    assert events[-1].event == "result"
    for event in events:
        assert "preview" not in (event.job.progress_outputs or {})


def _submit_long_job(http: httpx.Client, url: str, seed: int = 3, num_images: int = 4) -> str:
    """A job that takes seconds on the tiny model: 4 images, 100 steps at 512x512 take about
    14 s on 2 CPU cores (256x256 took 2 s on a fast CI host: too short to be sure of a race)."""
    return submit(http, url, prompt="long", seed=seed, width=512, height=512, steps=100,
                  cfg_scale=7.0, num_images=num_images, preview="latent",
                  preview_every_n_steps=5)["job_id"]


def _wait_running(http: httpx.Client, url: str, job_id: str) -> None:
    wait_until(lambda: (http.get(f"{url}/api/v1/jobs/{job_id}").json()["progress_outputs"]
                        or {}).get("step"), timeout_s=30)


def _start_long_job(http: httpx.Client, url: str) -> str:
    job_id = _submit_long_job(http, url)
    _wait_running(http, url, job_id)
    return job_id


def test_cancel_mid_run_stops_the_job_and_frees_the_worker(sd3, http):
    server, worker = sd3
    since = len(worker.output)  # the worker is shared (conftest's sd3): its lines from here on
    job_id = _start_long_job(http, server.url)
    canceled_at = time.monotonic()
    assert http.delete(f"{server.url}/api/v1/jobs/{job_id}").status_code == 200
    job = finished(http, server.url, job_id)
    assert job["status"] == "canceled"
    worker.wait_for_output(r"stopping at step \d+ of 100: every job of the call was canceled",
                           since=since)
    worker.wait_for_output(rf"job {job_id} was canceled while running", timeout_s=10)
    after = submit(http, server.url, wait_s=30, seed=5, **TINY)
    assert after["status"] == "done"
    assert time.monotonic() - canceled_at < 10
    last_step = http.get(f"{server.url}/api/v1/jobs/{job_id}").json()["progress_outputs"]
    assert last_step is None or last_step["step"] < 100


def test_compatible_jobs_run_as_one_batch(sd3, http):
    server, worker = sd3
    since = len(worker.output)
    blocker = _start_long_job(http, server.url)  # keeps the worker busy while the others queue
    same = [submit(http, server.url, prompt=f"cat {i}", seed=100 + i, num_images=1 + i,
                   **TINY)["job_id"] for i in range(2)]
    other = submit(http, server.url, prompt="wide", seed=9, **{**TINY, "width": 96})["job_id"]
    http.delete(f"{server.url}/api/v1/jobs/{blocker}")
    jobs = [finished(http, server.url, job_id) for job_id in [*same, other]]
    assert all(job["status"] == "done" for job in jobs), jobs
    worker.wait_for_output(r"batch of 3 sd3 jobs", timeout_s=10, since=since)
    first, second, wide = (job["outputs"] for job in jobs)
    assert first["seeds"] == [100] and second["seeds"] == [101, 102]
    assert first["timing"]["batch_images"] == second["timing"]["batch_images"] == 3
    assert wide["timing"]["batch_images"] == 1
    assert picture(wide["images"][0]).size == (96, 64)
    # each job of the batch gets its own image: the same as when it runs alone
    alone = submit(http, server.url, wait_s=30, prompt="cat 0", seed=100, **TINY)["outputs"]
    a, b = picture(alone["images"][0]), picture(first["images"][0])
    diff = max(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes(), strict=True))
    assert diff <= 2  # batched matrix products may round differently


def test_a_canceled_job_leaves_its_batch_and_the_others_finish(sd3, http):
    server, worker = sd3
    since = len(worker.output)
    blocker = _start_long_job(http, server.url)
    stays = _submit_long_job(http, server.url, seed=11, num_images=1)
    leaves = _submit_long_job(http, server.url, seed=12, num_images=4)
    http.delete(f"{server.url}/api/v1/jobs/{blocker}")
    _wait_running(http, server.url, leaves)
    assert http.delete(f"{server.url}/api/v1/jobs/{leaves}").status_code == 200
    assert finished(http, server.url, leaves)["status"] == "canceled"
    worker.wait_for_output(r"4 images of canceled jobs leave the batch; 1 go on", since=since)
    job = finished(http, server.url, stays)
    assert job["status"] == "done", job
    assert job["outputs"]["seeds"] == [11]
    assert picture(job["outputs"]["images"][0]).size == (512, 512)


def test_bad_inputs_are_rejected_with_clear_messages(sd3, http):
    server, _ = sd3
    url = f"{server.url}/api/v1/endpoints/sd3/jobs"
    bad = {"width": 72, "steps": 101, "image": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}
    reply = http.post(url, json={"inputs": {**TINY, **bad}})
    assert reply.status_code == 400
    fields = reply.json()["fields"]
    assert "multiple of 16" in fields["width"] and "64 or 80" in fields["width"]
    assert "100" in fields["steps"]
    assert "image" in fields
    # caught by the worker, before any GPU work: no denoising step would run
    image = submit(http, server.url, wait_s=30, seed=1, **TINY)["outputs"]["images"][0]
    job = submit(http, server.url, wait_s=30, image=image, strength=0.1, **TINY)
    assert job["status"] == "failed"
    assert "`strength` x `steps` must be at least 1" in job["error"]


# ----- helpers, without a server


def _job(job_id: str = "j", **inputs):
    from workers.runtime.model import Job

    defaults = {"prompt": "p", "negative_prompt": "", "seed": 5, "steps": 4, "cfg_scale": 5.0,
                "width": 64, "height": 64, "num_images": 1, "image": None, "strength": 0.6,
                "preview": "none", "preview_every_n_steps": 1, "output_format": "png"}
    return Job(id=job_id, endpoint="sd3", inputs={**defaults, **inputs}, lease_id="l")


def test_grouping_keeps_only_compatible_jobs_together():
    from workers.sd3.worker import check_request, group_requests

    requests = [check_request(_job(str(i), **inputs), 16) for i, inputs in enumerate([
        {}, {"width": 128}, {"num_images": 3}, {"steps": 8}, {"num_images": 2}, {},
    ])]
    groups = [[r.job.id for r in group] for group in group_requests(requests, max_rows=4)]
    assert groups == [["0", "2"], ["4", "5"], ["1"], ["3"]]


def test_seeds_and_size_checks():
    from workers.sd3.worker import check_request

    assert check_request(_job(seed=2**32 - 1, num_images=2), 16).seeds == [2**32 - 1, 0]
    assert len(set(check_request(_job(seed=-1, num_images=3), 16).seeds)) == 3
    with pytest.raises(ValueError, match="`height` must be a multiple of 16"):
        check_request(_job(height=100), 16)
    with pytest.raises(ValueError, match="`image` could not be read"):
        check_request(_job(image="data:image/png;base64,AAAA"), 16)


def test_out_of_memory_splits_the_group_and_loses_no_job():
    import torch

    from workers.sd3.worker import check_request, run_splitting

    requests = [check_request(_job(str(i), num_images=1 + (i == 3) * 3), 16) for i in range(4)]
    calls = []

    def run_group(group):
        calls.append([r.job.id for r in group])
        if sum(len(r.seeds) for r in group) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return "ok"

    parts = run_splitting(requests, run_group)
    results = {r.job.id: result for part, result in parts for r in part}
    assert set(results) == {"0", "1", "2", "3"}
    assert results["0"] == results["1"] == results["2"] == "ok"
    assert isinstance(results["3"], MemoryError) and "fewer images" in str(results["3"])
    assert calls[0] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError):
        run_splitting(requests, lambda group: (_ for _ in ()).throw(ValueError("not OOM")))


def test_metadata_is_embedded_in_png_and_jpeg():
    from workers.sd3.worker import encode_image

    image = Image.new("RGB", (16, 16), (10, 20, 30))
    meta = {"prompt": "ünïcode ✓", "seed": 9}
    png = Image.open(io.BytesIO(encode_image(image, "png", meta)))
    assert json.loads(png.text["parameters"]) == meta
    jpeg = Image.open(io.BytesIO(encode_image(image, "jpeg", meta)))
    assert jpeg.format == "JPEG" and json.loads(jpeg.getexif()[0x010E]) == meta


def test_tiny_model_folder_is_a_diffusers_checkpoint(sd3):
    # the module's worker built it through save_pretrained; the layout real weights have
    folder = _tiny_dir(sd3[1])
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    for part in ("transformer", "vae", "text_encoder", "text_encoder_3", "tokenizer_3"):
        assert (folder / part).is_dir()


def _tiny_dir(worker: Process) -> Path:
    args = worker.proc.args
    assert isinstance(args, list)
    return Path(args[args.index("--tiny-dir") + 1])
