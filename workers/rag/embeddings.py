"""The embed worker: the `embeddings` endpoint (and, through it, OpenAI's /v1/embeddings).

`jobhive-worker embed --model CLIP_DIR` (or `--tiny`: the tiny random CLIP, built offline)
embeds texts with the retrieval index's two encoders (workers/rag/embed.py): CLIP's text tower
(`encoder` "clip": text-to-image space, 77 tokens at most) and the sentence model (`encoder`
"text": all-MiniLM-L6-v2 unless `--text-model` names another). Each embedding is a unit-length
float32 row, sent as base64 of its little-endian bytes (what OpenAI's `encoding_format: base64`
is; a quarter of the size of a JSON list of floats). The texts of a batch's jobs that use the
same encoder are embedded in one call.
"""

from __future__ import annotations

import argparse
import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.rag.embed import ClipEmbedder, TextEmbedder, load_embedder
from workers.rag.grounding import encoder_models
from workers.runtime.model import Job, ModelWorker, Progress

log = logging.getLogger("jobhive.worker.embed")

ENCODERS = ("text", "clip")


@dataclass(frozen=True)
class EmbedSettings:
    """Args:
    clip (Path): a CLIP checkpoint folder (with --tiny, the tiny build's).
    text_model (str | None): a sentence-transformers folder; None: the bundled MiniLM.
    device (str): cpu, cuda or cuda:N.
    batch_size (int): texts per forward pass.
    """

    clip: Path
    text_model: str | None = None
    device: str = "cpu"
    batch_size: int = 32


class EmbedWorker(ModelWorker):
    """Text embeddings from CLIP's text tower or the sentence model, as each job asks."""

    job_type = "embeddings"
    stall_s = 60.0  # a batch of texts takes milliseconds and reports nothing
    settings: EmbedSettings

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", help="CLIP checkpoint folder (or --tiny)")
        parser.add_argument("--text-model", default=None,
                            help="sentence-transformers folder (default: the bundled "
                            "all-MiniLM-L6-v2)")
        parser.add_argument("--device", default=None,
                            help="cpu, cuda or cuda:N (default: cuda when present)")
        parser.add_argument("--batch-size", type=int, default=32,
                            help="texts per forward pass (default 32)")

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> EmbedSettings:
        if not args.model:  # with --tiny, jobhive-worker has built it and set --model
            raise ValueError("give --model CLIP_DIR (or --tiny)")
        if args.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        device = args.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return EmbedSettings(Path(args.model), args.text_model, device, args.batch_size)

    def __init__(self, settings: EmbedSettings) -> None:
        super().__init__(settings)
        self.encoders: dict[str, Any] = {}

    def info(self) -> dict[str, Any]:
        return {"clip": str(self.settings.clip), "text_model": self.settings.text_model
                or "bundled:all-MiniLM-L6-v2", "device": self.settings.device, **super().info()}

    def load(self) -> None:
        self.encoders = {
            "clip": load_embedder(ClipEmbedder, self.settings.clip, self.settings.device),
            "text": load_embedder(TextEmbedder, self.settings.text_model, self.settings.device),
        }
        self.loaded_models = encoder_models(self.settings.clip, self.settings.text_model,
                                            self.settings.device)
        log.info("embed: clip %d-d, text %d-d on %s", self.encoders["clip"].dim,
                 self.encoders["text"].dim, self.settings.device)

    def run(self, batch: list[Job], progress: Progress) -> list[dict[str, Any] | Exception]:
        # 1. Each job's texts, checked (a bad job fails alone).
        texts: dict[str, list[str]] = {}
        outcomes: dict[str, dict[str, Any] | Exception] = {}
        for job in batch:
            try:
                texts[job.id] = texts_of(job.inputs.get("input"))
            except ValueError as e:
                outcomes[job.id] = e
        # 2. One call per encoder for all the texts of the jobs that use it.
        for name in ENCODERS:
            jobs = [job for job in batch if job.id in texts
                    and (job.inputs.get("encoder") or "text") == name]
            if jobs:
                outcomes.update(self.embed(name, jobs, texts))
                progress.alive()
        return [outcomes[job.id] for job in batch]

    def embed(self, name: str, jobs: list[Job], texts: dict[str, list[str]]
              ) -> dict[str, dict[str, Any]]:
        """The outputs of these jobs, their texts embedded together by encoder `name`."""
        encoder = self.encoders[name]
        every = [text for job in jobs for text in texts[job.id]]
        size = self.settings.batch_size
        rows = (encoder.embed_texts(every, size) if name == "clip" else encoder.embed(every, size))
        counts = self.token_counts(name, every)
        outputs, start = {}, 0
        for job in jobs:
            end = start + len(texts[job.id])
            outputs[job.id] = {
                "embeddings": [base64.b64encode(row.astype("<f4").tobytes()).decode()
                               for row in rows[start:end]],
                "prompt_tokens": sum(counts[start:end]),
                "dimensions": int(rows.shape[1]),
                "encoder": name,
            }
            start = end
        return outputs

    def token_counts(self, name: str, texts: list[str]) -> list[int]:
        """The tokens each text was read as (truncated as the encoder truncates it)."""
        if name == "clip":
            clip = self.encoders["clip"]
            ids = clip.tokenizer(texts, truncation=True, max_length=clip.max_tokens)["input_ids"]
        else:
            model = self.encoders["text"].model
            ids = model.tokenizer(texts, truncation=True,
                                  max_length=model.max_seq_length)["input_ids"]
        return [len(row) for row in ids]


def texts_of(value: Any) -> list[str]:
    """A job's `input`: a string or a non-empty list of strings; ValueError otherwise."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("`input` must be a string or a non-empty list of strings")
    return texts
