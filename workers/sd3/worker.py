"""The Stable Diffusion 3 worker: serves the `sd3` endpoint with diffusers.

`jobhive-worker sd3 --model DIR` loads a diffusers-format SD3 checkpoint (StableDiffusion3Pipeline)
from a local folder; `--tiny` builds a tiny random-weight one offline (workers/tiny/sd3.py). An
image-to-image pipeline shares the loaded components (no second copy in memory).

A batch from the runner is split into groups of compatible jobs (same mode, size, steps, guidance
and strength); each group is one pipeline call whose rows are the images of all its jobs, each
with its own prompt and seed. Previews and cancel go through `callback_on_step_end`: previews are
made on the device, copied back without waiting, and encoded and reported in a thread of their
own, so the denoising loop does not wait for them. A group that runs out of GPU memory is split in
two and retried; a single job that still does not fit fails with a message saying so.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin

from workers.runtime.images import data_url, decode_image
from workers.runtime.media import MediaFile
from workers.runtime.model import Job, ModelWorker, Progress, describe_model

log = logging.getLogger("jobhive.worker.sd3")

MAX_SEED = 2**32 - 1
# SD3's 16 latent channels to RGB: a least-squares fit published with ComfyUI's latent previews
# (comfy/latent_formats.py, SD3). Applied to the scaled latents the transformer works on.
SD3_LATENT_RGB = [
    [-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
    [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
    [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
    [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
    [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
    [-0.1448, -0.1463, -0.1189],
]
SD3_LATENT_RGB_BIAS = [0.2394, 0.2135, 0.1925]
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(eq=False)
class Request:
    """One job's checked settings; its images are rows `rows` of its group's pipeline call."""

    job: Job
    prompt: str
    negative_prompt: str
    seeds: list[int]
    steps: int
    cfg_scale: float
    width: int
    height: int
    image: Image.Image | None
    strength: float
    preview: str
    preview_every: int
    output_format: str
    rows: slice = field(default_factory=lambda: slice(0, 0))

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys run as one pipeline call."""
        mode = "img2img" if self.image is not None else "txt2img"
        strength = self.strength if self.image is not None else None
        return (mode, self.width, self.height, self.steps, self.cfg_scale, strength)

    def settings(self) -> dict[str, Any]:
        """What is embedded in the images and logged."""
        return {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "steps": self.steps,
            "cfg_scale": self.cfg_scale, "width": self.width, "height": self.height,
            "strength": self.strength if self.image is not None else None,
            "mode": self.group_key[0],
        }


def check_request(job: Job, align: int) -> Request:
    """Turns a job's inputs into a Request, before any GPU work.

    Args:
        job (Job): the job; its inputs were validated by the server against endpoint.toml.
        align (int): width and height must be multiples of this (VAE factor x patch size).

    Raises:
        ValueError: with a message naming the input, the value and what would pass.
    """
    inputs = job.inputs
    width, height, steps = inputs["width"], inputs["height"], inputs["steps"]
    for name, value in (("width", width), ("height", height)):
        if value % align:
            low = value - value % align
            raise ValueError(f"`{name}` must be a multiple of {align} (got {value}; nearest: "
                             f"{max(low, align)} or {low + align})")
    image = None
    if inputs.get("image"):
        try:
            image = decode_image(inputs["image"])
        except Exception as e:  # any decoder failure means the client's image is bad
            raise ValueError(f"`image` could not be read ({e})") from e
        if int(steps * inputs["strength"]) < 1:
            raise ValueError(
                f"`strength` x `steps` must be at least 1 for image-to-image (got "
                f"{inputs['strength']} x {steps}); raise one of them")
    seed = inputs["seed"]
    if seed < 0:
        seed = secrets.randbelow(MAX_SEED + 1)
    count = inputs["num_images"]
    return Request(
        job=job, prompt=inputs["prompt"], negative_prompt=inputs["negative_prompt"],
        seeds=[(seed + i) % (MAX_SEED + 1) for i in range(count)], steps=steps,
        cfg_scale=float(inputs["cfg_scale"]), width=width, height=height, image=image,
        strength=float(inputs["strength"]), preview=inputs["preview"],
        preview_every=inputs["preview_every_n_steps"], output_format=inputs["output_format"],
    )


def group_requests(requests: list[Request], max_rows: int) -> list[list[Request]]:
    """Compatible requests together, in arrival order, each group at most max_rows images."""
    groups: dict[tuple[Any, ...], list[list[Request]]] = {}
    for request in requests:
        chunks = groups.setdefault(request.group_key, [[]])
        if chunks[-1] and sum(len(r.seeds) for r in chunks[-1]) + len(request.seeds) > max_rows:
            chunks.append([])
        chunks[-1].append(request)
    return [chunk for chunks in groups.values() for chunk in chunks]


def encode_image(image: Image.Image, fmt: str, metadata: dict[str, Any]) -> bytes:
    """The image as PNG (metadata in text chunks) or JPEG (metadata as EXIF ImageDescription).

    Args:
        image (Image.Image): the RGB image.
        fmt (str): "png" or "jpeg".
        metadata (dict[str, Any]): prompt, seed and settings; stored as JSON.
    """
    buffer = io.BytesIO()
    if fmt == "png":
        text = json.dumps(metadata, ensure_ascii=False)
        info = PngImagePlugin.PngInfo()
        info.add_itxt("parameters", text)
        info.add_text("Software", "jobhive sd3")
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif[0x010E] = json.dumps(metadata)  # ImageDescription: ASCII, so \u escapes
        exif[0x0131] = "jobhive sd3"  # Software
        image.save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_splitting(
    requests: list[Request], run_group: Any, on_oom: Any = None
) -> list[tuple[list[Request], Any]]:
    """Runs a group; on out-of-memory, splits it in two and runs each half (recursively).

    Args:
        requests (list[Request]): one group.
        run_group (Callable[[list[Request]], Any]): runs a group, returns its result.
        on_oom (Callable[[], None] | None): called after each out-of-memory (frees the cache).

    Returns:
        list[tuple[list[Request], Any]]: each part run and its result, or for a single job that
        does not fit, a MemoryError as its result.
    """
    try:
        return [(requests, run_group(requests))]
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        if on_oom is not None:
            on_oom()
        if len(requests) == 1:
            r = requests[0]
            return [(requests, MemoryError(
                f"out of GPU memory for {len(r.seeds)} image(s) of {r.width}x{r.height}; "
                "ask for fewer images or a smaller size"))]
        half = len(requests) // 2
        log.warning("out of memory on %d jobs: splitting and retrying", len(requests))
        return (run_splitting(requests[:half], run_group, on_oom)
                + run_splitting(requests[half:], run_group, on_oom))


class StepCallback:
    """`callback_on_step_end` of one pipeline call: progress, previews and cancel.

    Previews are computed on the device from an estimate of the final latents (x0, from the last
    two steps of the flow-matching Euler sampler), copied back without blocking, then encoded and
    reported by `reporter`, a single thread: reports keep their order and the loop does not wait.
    """

    def __init__(self, worker: SD3Worker, requests: list[Request], progress: Progress) -> None:
        self.worker = worker
        self.requests = requests
        self.progress = progress
        self.previous: torch.Tensor | None = None
        self.pending: list[Future[None]] = []
        self.latest_preview: dict[str, tuple[str, int]] = {}

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        latents = kwargs["latents"]
        step, steps = i + 1, pipe._num_timesteps
        if all(r.job.canceled for r in self.requests):
            if not pipe._interrupt:
                log.info("sd3: stopping at step %d of %d: every job of the call was canceled",
                         step, steps)
            pipe._interrupt = True  # the loop skips the remaining steps
            return {}
        replaced = self._drop_canceled(kwargs)
        latents = replaced.get("latents", latents)
        x0 = None
        for r in self.requests:
            if r.job.canceled:
                continue
            rgb = None
            if r.preview != "none" and (step % r.preview_every == 0 or step == steps):
                if x0 is None:
                    x0 = self._estimate_x0(pipe, latents)
                rgb = self.worker.preview_pixels(x0[r.rows], r.preview, r.width, r.height)
                if rgb.device.type == "cuda":
                    rgb = rgb.to("cpu", non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                else:
                    event = None
                self.pending.append(self.worker.reporter.submit(
                    self._report, r, step, steps, rgb, event))
            else:
                self.pending.append(self.worker.reporter.submit(
                    self._report, r, step, steps, None, None))
        self.previous = latents
        return replaced

    def _drop_canceled(self, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Text-to-image: takes the rows of jobs canceled since the last step out of the batch,
        so the remaining steps compute only what is still wanted. (The image-to-image pipeline
        does not let a callback replace its pooled embeddings: there a canceled job's rows run
        on until the call ends, or stop with it when every job is canceled.)"""
        latents = kwargs["latents"]
        rows = latents.shape[0]
        gone = [r for r in self.requests if r.job.canceled and r.rows.stop > r.rows.start]
        if not gone or "pooled_prompt_embeds" not in kwargs:
            return {}
        keep: list[int] = []
        for r in self.requests:
            if r.job.canceled:
                r.rows = slice(0, 0)
            else:
                start = len(keep)
                keep.extend(range(r.rows.start, r.rows.stop))
                r.rows = slice(start, len(keep))
        index = torch.tensor(keep, device=latents.device)
        replaced = {"latents": latents[index]}
        for name in ("prompt_embeds", "pooled_prompt_embeds"):
            tensor = kwargs[name]
            copies = tensor.shape[0] // rows  # 2 with guidance: [negatives, positives]
            replaced[name] = tensor[torch.cat([index + k * rows for k in range(copies)])]
        if self.previous is not None:
            self.previous = self.previous[index]
        log.info("sd3: %d images of canceled jobs leave the batch; %d go on",
                 rows - len(keep), len(keep))
        return replaced

    def _estimate_x0(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        """x0 = x_t - sigma_t * v, with v from the last Euler step (the noisy latents at first)."""
        scheduler = pipe.scheduler
        if self.previous is None or scheduler.step_index is None or scheduler.step_index < 1:
            return latents
        sigma = float(scheduler.sigmas[scheduler.step_index])
        sigma_before = float(scheduler.sigmas[scheduler.step_index - 1])
        if sigma == sigma_before:
            return latents
        velocity = (latents.float() - self.previous.float()) / (sigma - sigma_before)
        return latents.float() - sigma * velocity

    def _report(self, r: Request, step: int, steps: int, rgb: torch.Tensor | None,
                event: Any) -> None:
        """In the reporter thread: encodes a preview (if any) and reports the step."""
        if rgb is not None:
            if event is not None:
                event.synchronize()
            self.latest_preview[r.job.id] = (self.worker.preview_jpeg(rgb), step)
        outputs: dict[str, Any] = {"step": step, "steps": steps}
        if r.job.id in self.latest_preview:  # every report carries the latest preview: reports
            preview, preview_step = self.latest_preview[r.job.id]  # are coalesced, and the
            outputs.update(preview=preview, preview_step=preview_step)  # last one must hold it
        self.progress(r.job, 100.0 * step / steps, outputs)

    def wait(self) -> None:
        """Waits until every report of this call has been handed to the runner."""
        for future in self.pending:
            future.result()


@dataclass(frozen=True)
class SD3Settings:
    """How the sd3 worker loads and runs its pipeline (its command-line options).

    Args:
        model (Path): a diffusers-format SD3 folder (with --tiny, the tiny build's).
        tiny (bool): the model is the tiny random-weight build (its images are noise).
        device (str): cuda, cuda:N or cpu.
        dtype (str): auto (bfloat16 on CUDA, else float32), bfloat16, float16 or float32.
        compile (bool): torch.compile the transformer.
        cpu_offload (bool): keep models in CPU memory, moving each to the GPU in turn.
        preview_size (int): longest side of preview JPEGs in pixels.
        max_images_per_call (int): most images in one pipeline call.
    """

    model: Path
    tiny: bool = False
    device: str = "cpu"
    dtype: str = "auto"
    compile: bool = False
    cpu_offload: bool = False
    preview_size: int = 256
    max_images_per_call: int = 16


class SD3Worker(ModelWorker):
    """Stable Diffusion 3 text-to-image and image-to-image, with previews and batching."""

    job_type = "sd3"
    stall_s = 120.0  # progress each denoising step; text encoding and VAE decode are silent
    settings: SD3Settings

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> SD3Settings:
        if not args.model:  # with --tiny, jobhive-worker has built it and set --model
            raise ValueError("give --model DIR (or --tiny)")
        return SD3Settings(
            model=Path(args.model), tiny=args.tiny, device=args.device, dtype=args.dtype,
            compile=args.compile, cpu_offload=args.cpu_offload, preview_size=args.preview_size,
            max_images_per_call=args.max_images_per_call,
        )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", help="a diffusers-format SD3 folder (model_index.json)")
        parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                            help="cuda, cuda:N or cpu (default cuda when present)")
        parser.add_argument("--dtype", choices=["auto", *_DTYPES], default="auto",
                            help="weights and compute type (default bfloat16 on CUDA, else "
                            "float32)")
        parser.add_argument("--compile", action="store_true",
                            help="torch.compile the transformer (slow first job per size)")
        parser.add_argument("--cpu-offload", action="store_true",
                            help="keep models in CPU memory, moving each to the GPU in turn "
                            "(for small cards; slower)")
        parser.add_argument("--preview-size", type=int, default=256,
                            help="longest side of preview JPEGs in pixels (default 256)")
        parser.add_argument("--max-images-per-call", type=int, default=16,
                            help="most images in one pipeline call (default 16)")

    # ----- loading

    def load(self) -> None:
        import diffusers
        import transformers
        from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline

        diffusers.utils.logging.disable_progress_bar()  # progress goes to the server, not a tty
        transformers.utils.logging.disable_progress_bar()
        settings = self.settings
        if not Path(settings.model, "model_index.json").is_file():
            raise SystemExit(
                f"jobhive-worker sd3: {settings.model} is not a diffusers folder (no "
                "model_index.json); fetch one first, e.g. `huggingface-cli download "
                "stabilityai/stable-diffusion-3.5-medium --local-dir DIR`")
        self.device = torch.device(settings.device)
        auto = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = auto if settings.dtype == "auto" else _DTYPES[settings.dtype]
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        pipe = StableDiffusion3Pipeline.from_pretrained(
            settings.model, dtype=self.dtype, local_files_only=True)
        # Attention runs through torch's scaled_dot_product_attention (diffusers' default
        # processor): flash / memory-efficient kernels on CUDA.
        if settings.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if settings.compile:
            pipe.transformer = torch.compile(pipe.transformer)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.loaded_models = [describe_model(settings.model, dtype=str(self.dtype)[6:],
                                             device=str(self.device))]
        self.img2img = StableDiffusion3Img2ImgPipeline(**pipe.components)  # shares the modules
        self.img2img.set_progress_bar_config(disable=True)
        self.align = pipe.vae_scale_factor * pipe.patch_size
        channels = pipe.vae.config.latent_channels
        factors = SD3_LATENT_RGB if channels == 16 else [[1.0 / channels] * 3] * channels
        bias = SD3_LATENT_RGB_BIAS if channels == 16 else [0.5] * 3
        self.latent_rgb = torch.tensor(factors, device=self.device, dtype=torch.float32)
        self.latent_rgb_bias = torch.tensor(bias, device=self.device, dtype=torch.float32)
        self.reporter = ThreadPoolExecutor(1, thread_name_prefix="jobhive-sd3-previews")
        # One small call first, so the first job does not pay for lazy initialisation.
        with torch.inference_mode():
            pipe(prompt="", num_inference_steps=1, width=self.align * 4, height=self.align * 4,
                 output_type="latent")
        log.info("sd3: %s on %s (%s)%s%s", settings.model, self.device, str(self.dtype)[6:],
                 ", compiled" if settings.compile else "",
                 ", CPU offload" if settings.cpu_offload else "")

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {"model": "tiny (random weights)" if s.tiny else str(s.model), "device": s.device,
                "dtype": s.dtype, **super().info()}

    # ----- running a batch

    def run(self, batch: list[Job], progress: Progress) -> list[dict[str, Any] | Exception]:
        # 1. Check inputs: a bad job fails alone, before any GPU work.
        outcomes: dict[str, dict[str, Any] | Exception] = {}
        requests = []
        for job in batch:
            try:
                requests.append(check_request(job, self.align))
            except ValueError as e:
                outcomes[job.id] = e
        # 2. Group compatible jobs: each group is one pipeline call.
        for group in group_requests(requests, self.settings.max_images_per_call):
            # 3. Generate (split and retried on out-of-memory), then 4. encode each job's images.
            try:
                parts = run_splitting(group, lambda g: self._generate(g, progress),
                                      self._free_memory)
            except Exception as e:  # this group fails; the batch's other groups still run
                log.exception("sd3: a group of %d jobs failed", len(group))
                parts = [(group, e)]
            for part, result in parts:
                if isinstance(result, Exception):
                    outcomes.update((r.job.id, result) for r in part)
                    continue
                images, generate_s = result
                for r in part:
                    outcomes[r.job.id] = self._outputs(r, images, generate_s, len(images))
        return [outcomes.get(job.id, RuntimeError("canceled")) for job in batch]

    def _generate(
        self, group: list[Request], progress: Progress
    ) -> tuple[list[Image.Image | None], float]:
        """One pipeline call for a group: its images (None for canceled jobs) and seconds."""
        started = time.monotonic()
        live = [r for r in group if not r.job.canceled]
        if not live:
            return [], 0.0
        row = 0
        for r in live:
            r.rows = slice(row, row + len(r.seeds))
            row += len(r.seeds)
        first = live[0]
        callback = StepCallback(self, live, progress)
        kwargs: dict[str, Any] = dict(
            prompt=[r.prompt for r in live for _ in r.seeds],
            negative_prompt=[r.negative_prompt for r in live for _ in r.seeds],
            generator=[torch.Generator("cpu").manual_seed(s) for r in live for s in r.seeds],
            num_inference_steps=first.steps, guidance_scale=first.cfg_scale,
            width=first.width, height=first.height, output_type="latent",
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "pooled_prompt_embeds"],
        )
        pipe = self.pipe
        if first.image is not None:
            pipe = self.img2img
            kwargs.update(image=[r.image for r in live for _ in r.seeds], strength=first.strength,
                          callback_on_step_end_tensor_inputs=["latents"])
        try:
            with torch.inference_mode():
                latents = pipe(**kwargs).images
                images = self._decode(latents, live)
        finally:
            callback.wait()
        for r in group:  # jobs that left the group have no rows
            if r not in live:
                r.rows = slice(0, 0)
        elapsed_s = time.monotonic() - started
        done = sum(1 for r in live if not r.job.canceled)
        log.info("sd3: %d jobs, %d images of %dx%d, %d steps, %s in %.2f s (%.2f images/s)",
                 done, len(images), first.width, first.height, first.steps,
                 first.group_key[0], elapsed_s, len(images) / elapsed_s)
        return images, elapsed_s

    def _decode(self, latents: torch.Tensor, live: list[Request]) -> list[Image.Image | None]:
        """VAE-decodes the rows of jobs still wanted; None for the rows of canceled jobs."""
        keep = [i for r in live if not r.job.canceled for i in range(r.rows.start, r.rows.stop)]
        images: list[Image.Image | None] = [None] * latents.shape[0]
        if not keep:
            return images
        vae = self.pipe.vae
        chosen = latents[keep].to(vae.dtype)
        chosen = chosen / vae.config.scaling_factor + vae.config.shift_factor
        decoded = vae.decode(chosen, return_dict=False)[0]
        for i, image in zip(keep, self.pipe.image_processor.postprocess(decoded, "pil"),
                            strict=True):
            images[i] = image
        return images

    def _outputs(self, r: Request, images: list[Image.Image | None], generate_s: float,
                 batch_images: int) -> dict[str, Any] | Exception:
        if r.job.canceled or not images:
            return RuntimeError("canceled")
        started = time.monotonic()
        encoded = []
        for seed, image in zip(r.seeds, images[r.rows], strict=True):
            assert image is not None
            metadata = {**r.settings(), "seed": seed, "model": str(self.settings.model)}
            encoded.append(MediaFile(encode_image(image, r.output_format, metadata),
                                     f"image/{r.output_format}"))
        return {
            "images": encoded,
            "seeds": r.seeds,
            "timing": {"generate_s": round(generate_s, 4),
                       "encode_s": round(time.monotonic() - started, 4),
                       "batch_images": batch_images},
        }

    def _free_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ----- previews

    @torch.inference_mode()
    def preview_pixels(self, x0: torch.Tensor, kind: str, width: int, height: int) -> torch.Tensor:
        """A preview of one job's images, side by side: uint8 (H, W, 3) on the device.

        Args:
            x0 (torch.Tensor): the job's estimated final latents (rows, channels, h, w).
            kind (str): "latent" (a linear map of the channels to RGB: nearly free) or "vae"
                (the VAE decodes latents first shrunk to the preview size: cheap, sharper).
            width, height (int): the image size in pixels.
        """
        if kind == "vae":
            vae = self.pipe.vae
            scale = min(1.0, self.settings.preview_size / max(width, height))
            size = (max(1, round(x0.shape[2] * scale)), max(1, round(x0.shape[3] * scale)))
            small = torch.nn.functional.interpolate(x0.float(), size=size, mode="area")
            small = small.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
            rgb = (vae.decode(small, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)
        else:
            rgb = torch.einsum("bchw,cr->brhw", x0.float(), self.latent_rgb)
            rgb = (rgb + self.latent_rgb_bias[None, :, None, None]).clamp(0, 1)
        strip = torch.cat(list(rgb), dim=2)  # (3, h, rows * w)
        return (strip * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()

    def preview_jpeg(self, pixels: torch.Tensor) -> str:
        """A JPEG data URL of preview pixels, its longest side at most --preview-size."""
        image = Image.fromarray(pixels.numpy())
        size = self.settings.preview_size
        if max(image.size) > size:
            image.thumbnail((size, size))
        elif max(image.size) < size // 2:  # latent previews are 1/8 size: show them larger
            factor = max(1, (size // 2) // max(image.size))
            image = image.resize((image.width * factor, image.height * factor),
                                 Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=75)
        return data_url(buffer.getvalue(), "jpeg")
