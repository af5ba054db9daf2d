"""GPU check: real-size models with random weights, through the real server and workers.

One command for a CUDA host. It builds Stable Diffusion 3.5 medium (transformer, VAE and the three
text encoders as published) and a Llama 4 with Scout's width but fewer layers, from the configs
kept in bench/gpu_configs/, with random weights; saves them and lets `jobhive-worker sd3` and
`jobhive-worker llama4` load them back through from_pretrained, as real weights are; then drives a
real `jobhive-server` and prints one table: images/s at 1024x1024 and 28 steps (batch 1 and 4,
with and without --compile), tokens/s for 1, 8 and 32 chats, time to first token, peak GPU memory.

    python bench/gpu_check.py                   # CUDA host, about 6 minutes (builds cached)
    python bench/gpu_check.py --dry-run         # any host: builds on the meta device, counts
    python bench/gpu_check.py --tiny            # any host: the same runs on the tiny models

Llama with --llama-layers 4 (Scout has 48): every token still runs Scout's full width (5120
wide, 16 experts, 202,048-entry vocabulary), but through 4 decoder layers, so tokens/s is well
above a real Scout's (about 12x fewer layer weights read per token; the output layer is whole)
and the KV cache per token is 1/12 of Scout's. The tokenizer is a word-level one with the
vocabulary's size (random weights write random words); SD3's tokenizers are the tiny build's.

A bare CUDA machine with torch lacks the rest of the stack: `bash bench/gpu_wheels.sh` downloads
those wheels (no torch, no CUDA packages) into bench/wheels/ for the machine to install offline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

# The repository instead of bench/ (whose queue.py would shadow the standard library's queue).
REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

from bench.common import rss_kib, start, start_server, stop, wait_for_line  # noqa: E402
from bench.llama import chat  # noqa: E402
from workers.tiny.build import ensure_built  # noqa: E402

CONFIGS = REPO / "bench" / "gpu_configs"
BUILD_VERSION = 1  # bump when what the builders below make changes (the cache is rebuilt)
SD3_KEY, LLAMA_KEY = "sd3-worker-key", "llama4-worker-key"


# ----- building the models


def sd35_pipeline(device: str) -> Any:
    """SD3.5 medium with random weights (bfloat16, built on `device`; "meta": no memory)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from workers.tiny.sd3 import _CORPUS, train_clip_tokenizer, train_t5_tokenizer

    c = json.loads((CONFIGS / "sd35-medium.json").read_text())
    tokenizer, tokenizer_3 = train_clip_tokenizer(_CORPUS * 4, 600), train_t5_tokenizer(_CORPUS * 4)
    with torch.device(device), default_dtype(torch.bfloat16):
        clip = [CLIPTextModelWithProjection(CLIPTextConfig(
            **c[name], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)) for name in ("text_encoder", "text_encoder_2")]
        t5 = T5EncoderModel(T5Config(**c["text_encoder_3"], pad_token_id=tokenizer_3.pad_token_id,
                                     eos_token_id=tokenizer_3.eos_token_id))
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**c["transformer"]),
            vae=AutoencoderKL(**c["vae"]),
            scheduler=FlowMatchEulerDiscreteScheduler(**c["scheduler"]),
            text_encoder=clip[0], tokenizer=tokenizer,
            text_encoder_2=clip[1], tokenizer_2=tokenizer,
            text_encoder_3=t5, tokenizer_3=tokenizer_3,
        )


def word_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer with `vocab_size` entries (Llama 4's special tokens, then w7, w8,
    ...): any id a random model picks decodes to a word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from workers.tiny.llama4 import CHAT_TEMPLATE, SPECIAL_TOKENS

    words = [*SPECIAL_TOKENS, "<unk>"]
    vocab = {word: i for i, word in enumerate(words)}
    vocab.update((f"w{i}", i) for i in range(len(words), vocab_size))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # (joins the words with spaces)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>", unk_token="<unk>", chat_template=CHAT_TEMPLATE,
        additional_special_tokens=["<|header_start|>", "<|header_end|>", "<|end_of_text|>"],
        padding_side="left", model_max_length=131072,
    )


def llama4_model(device: str, layers: int) -> tuple[Any, Any]:
    """Scout's text model with `layers` decoder layers and random weights (bfloat16, built on
    `device`), and its tokenizer."""
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    c = json.loads((CONFIGS / "llama4-scout-text.json").read_text())
    c.pop("_comment")
    tokenizer = word_tokenizer(c["vocab_size"])
    config = Llama4TextConfig(**{**c, "num_hidden_layers": layers},
                              bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=[tokenizer.eos_token_id],
                              pad_token_id=tokenizer.pad_token_id)
    with torch.device(device), default_dtype(torch.bfloat16):
        model = Llama4ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """Parameters made meanwhile are `dtype` (no float32 copy of 10 billion weights first)."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_sd35(folder: Path) -> Path:
    def save(staging: Path) -> None:
        sd35_pipeline("cuda").save_pretrained(staging)

    return ensure_built("gpu-sd35-medium", BUILD_VERSION, folder, save)


def build_llama4(folder: Path, layers: int) -> Path:
    def save(staging: Path) -> None:
        model, tokenizer = llama4_model("cuda", layers)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return ensure_built("gpu-llama4-scout", BUILD_VERSION, folder, save, layers=layers)


def dry_run(layers: int) -> None:
    """Every model built on the meta device: its configs load, and how big it is."""
    pipe = sd35_pipeline("meta")
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        params = sum(p.numel() for p in getattr(pipe, name).parameters())
        print(f"sd3.5-medium {name:<15} {params / 1e9:7.3f} B parameters, "
              f"{2 * params / 2**30:6.1f} GiB in bfloat16")
    model, tokenizer = llama4_model("meta", layers)
    params = sum(p.numel() for p in model.parameters())
    print(f"llama4 (Scout width, {layers} layers) {params / 1e9:7.3f} B parameters, "
          f"{2 * params / 2**30:6.1f} GiB in bfloat16; tokenizer {len(tokenizer)} entries")


# ----- measuring through the server


class GpuMemory:
    """The peak GPU memory in use (all processes, MiB) while it runs, from nvidia-smi every
    0.2 s; without nvidia-smi (a CPU run), the peak RSS of the process given."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mib, self._stop = pid, 0.0, threading.Event()
        self.kind = "GPU" if shutil.which("nvidia-smi") else "RSS"
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError, RuntimeError, subprocess.SubprocessError):
                self.peak_mib = max(self.peak_mib, self._now_mib())
            if self._stop.wait(0.2):
                return

    def _now_mib(self) -> float:
        if self.kind == "RSS":
            return rss_kib(self.pid) / 1024
        used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                               "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=5, check=True)
        return float(used.stdout.split()[0])


async def image_job(http: aiohttp.ClientSession, url: str, inputs: dict[str, Any]) -> None:
    async with http.post(f"{url}/api/v1/endpoints/sd3/jobs?wait=300",
                         json={"inputs": inputs}) as reply:
        if reply.status != 200:
            raise RuntimeError(f"sd3 job not done: {reply.status} {(await reply.text())[:300]}")


async def images_per_s(url: str, batch: int, size: int, steps: int, rounds: int) -> float:
    """`batch` one-image jobs submitted together (one pipeline call for a worker with
    --max-batch batch), after one untimed round; images/s over `rounds` rounds."""
    inputs = {"prompt": "a lighthouse at dawn", "steps": steps, "width": size, "height": size,
              "num_images": 1, "preview": "none", "seed": 1}
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(image_job(http, url, inputs) for _ in range(batch)))
        started = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(image_job(http, url, inputs) for _ in range(batch)))
        return rounds * batch / (time.perf_counter() - started)


async def chats(url: str, count: int, max_new_tokens: int) -> tuple[float, str]:
    """`count` chats at once (after one short warm-up chat): aggregate tokens/s, and the median
    time to first token (ms) as the clients saw it / as the worker measured it."""
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        await chat(http, url, 4, 0)
        started = time.perf_counter()
        results = await asyncio.gather(*(chat(http, url, max_new_tokens, 100 + i)
                                         for i in range(count)))
        wall_s = time.perf_counter() - started
    seen = [1000 * r["client_ttft_s"] for r in results if r["client_ttft_s"] is not None]
    worker_ms = statistics.median(1000 * r["time_to_first_token_s"] for r in results)
    client = f"{statistics.median(seen):,.0f}" if seen else "-"  # (none: done before a progress)
    return sum(r["generated_tokens"] for r in results) / wall_s, f"{client} / {worker_ms:,.0f}"


def sd3_rows(args: argparse.Namespace, url: str, model: list[str]) -> Iterator[list[str]]:
    for compiled in (False, True) if args.compile else (False,):
        worker = start(["-m", "workers.cli", "sd3", "--server", url, "--key", SD3_KEY, *model,
                        "--device", args.device, "--max-batch", "4",
                        *(["--compile"] if compiled else [])])
        try:
            wait_for_line(worker, r"loaded in")
            with GpuMemory(worker.pid) as memory:
                for batch in (1, 4):
                    per_s = asyncio.run(images_per_s(url, batch, args.size, args.steps,
                                                     args.rounds))
                    yield [f"sd3 {args.size}px {args.steps} steps", f"batch {batch}",
                           "yes" if compiled else "no", f"{per_s:.3f} images/s", "",
                           f"{memory.peak_mib:,.0f} ({memory.kind})"]
        finally:
            stop(worker)


def llama_rows(args: argparse.Namespace, url: str, model: list[str]) -> Iterator[list[str]]:
    worker = start(["-m", "workers.cli", "llama4", "--server", url, "--key", LLAMA_KEY, *model,
                    "--device", args.device, "--max-batch", "32"])
    try:
        wait_for_line(worker, r"loaded in")
        with GpuMemory(worker.pid) as memory:
            for count in (1, 8, 32):
                tokens_s, ttft_ms = asyncio.run(chats(url, count, args.max_new_tokens))
                yield [f"llama4 {args.max_new_tokens} tokens", f"{count} chat(s)", "no",
                       f"{tokens_s:,.1f} tokens/s", ttft_ms,
                       f"{memory.peak_mib:,.0f} ({memory.kind})"]
    finally:
        stop(worker)


def print_table(rows: Iterator[list[str]]) -> None:
    header = ["run", "load", "compiled", "throughput", "TTFT ms client / worker",
              "peak memory MiB"]
    widths = [24, 10, 8, 20, 23, 18]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), flush=True)
    print("-|-".join("-" * w for w in widths), flush=True)
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path,
                        default=Path.home() / ".cache" / "jobhive" / "gpu-check",
                        help="where the built models are kept (reused when current)")
    parser.add_argument("--llama-layers", type=int, default=4, help="decoder layers (Scout: 48)")
    parser.add_argument("--size", type=int, default=1024, help="image width and height")
    parser.add_argument("--steps", type=int, default=28, help="denoising steps")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per image batch")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per chat")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out the --compile runs (they take a few minutes)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny models instead (CPU: checks the plumbing, not the GPU)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the real-size models on the meta device and print sizes")
    args = parser.parse_args()
    if args.dry_run:
        dry_run(args.llama_layers)
        return
    started = time.perf_counter()
    if args.tiny:
        sd3_model, llama_model = ["--tiny"], ["--tiny"]
    else:
        sd3_model = ["--model", str(build_sd35(args.models_dir / "sd35-medium"))]
        llama_model = ["--model", str(build_llama4(args.models_dir / "llama4-scout",
                                                   args.llama_layers))]
    print(f"# models ready in {time.perf_counter() - started:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp) / "jobs.sqlite3")
        try:
            print_table(row for rows in (sd3_rows(args, url, sd3_model),
                                         llama_rows(args, url, llama_model)) for row in rows)
        finally:
            stop(server)
    print(f"# whole check: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
