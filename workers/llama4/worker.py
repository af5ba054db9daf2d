"""The llama4 worker: chat completions with tokens streamed as progress.

Serves the `llama4_chat` endpoint with a Hugging Face checkpoint from a local folder: Llama 4
(Llama4ForConditionalGeneration, or Llama4ForCausalLM for a text-only checkpoint) or any other
causal LM with a chat template (Llama 3.x...), in bf16 or 4-bit NF4 (bitsandbytes), spread over
the host's GPUs with device_map. `--tiny` builds and serves a tiny random-weight Llama 4 offline.
With `--index INDEX_DIR` the worker serves `rag_chat` instead: it retrieves sources for each
chat's last user message from the index, puts them numbered in the system prompt and returns
them with the answer (workers/rag/grounding.py).

Chats generate together in one loop of our own, batched continuously: a chat that arrives while
others generate joins them at the next step (its prompt prefilled, its KV cache merged into
theirs: workers/llama4/batch.py), and one that ends leaves at once, its result posted then. Each
row samples with its own seed, temperature, top-k and top-p, stops on its own (end of turn, stop
string, max_new_tokens, cancel) and streams its text so far, and gives the tokens it gives
alone. No streamer thread: a failure in the model reaches the clients as an error, and cancel is
seen at the next token.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workers.llama4 import batch
from workers.llama4.batch import Rows
from workers.rag import grounding
from workers.runtime.model import Job, JobFeed, ModelWorker, Progress, describe_model

log = logging.getLogger("jobhive.worker.llama4")

MAX_STOP_STRINGS = 16


class InputError(ValueError):
    """A job's inputs cannot be served (too long a context, a bad stop list): fails that job."""


@dataclass(eq=False)
class Chat:
    """One job's generation state: its settings, its prompt and what it has produced so far."""

    job: Job
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: list[str]
    ignore_eos: bool = False
    sources: list[dict[str, Any]] | None = None  # rag_chat: the numbered sources in the prompt
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""  # the reply so far, whole characters only
    streamed: str = ""
    decoded_upto: int = 0  # tokens of `generated` whose text is in `text`
    context_from: int = 0  # where the few tokens decoded again as context begin
    finish_reason: str | None = None
    joined_at: float = field(default_factory=time.monotonic)  # when its inputs were checked
    first_token_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class Llama4Settings:
    """How the llama4 worker loads and serves its model (its command-line options).

    Args:
        model (Path): a Hugging Face checkpoint folder (with --tiny, the tiny build's).
        tiny (bool): the model is the tiny random-weight build (its text is gibberish).
        quantize (str): "none" or "4bit" (bitsandbytes NF4).
        device (str): auto (device_map over the GPUs, else CPU), cuda, cuda:N or cpu.
        dtype (str): bfloat16, float16 or float32.
        max_context (int | None): most tokens of prompt plus reply; None: the model's window.
        index (IndexOptions | None): serve rag_chat from this index; None: llama4_chat.
    """

    model: Path
    tiny: bool = False
    quantize: str = "none"
    device: str = "auto"
    dtype: str = "bfloat16"
    max_context: int | None = None
    index: grounding.IndexOptions | None = None


class Llama4Worker(ModelWorker):
    """Chat with Llama 4 (or any chat model); chats join and leave the running batch at each
    decoding step (continuous batching)."""

    job_type = "llama4_chat"
    stall_s = 60.0  # progress with each streamed token; a long prefill is silent
    takes_jobs_while_running = True
    settings: Llama4Settings

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", help="folder of a Hugging Face checkpoint (config, "
                            "weights, tokenizer with a chat template)")
        parser.add_argument("--quantize", choices=["none", "4bit"], default="none",
                            help="4bit: bitsandbytes NF4 with double quantization")
        parser.add_argument("--device", default="auto",
                            help="auto (all GPUs through device_map, else CPU), cuda, cuda:N "
                            "or cpu (default auto)")
        parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                            default="bfloat16", help="weights and compute dtype (default bfloat16)")
        parser.add_argument("--max-context", type=int, default=None,
                            help="the most tokens of prompt plus reply (default: the model's "
                            "max_position_embeddings)")
        grounding.add_index_arguments(parser, required=False)

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> Llama4Settings:
        if not args.model:  # with --tiny, jobhive-worker has built it and set --model
            raise ValueError("give --model DIR (or --tiny)")
        return Llama4Settings(
            model=Path(args.model), tiny=args.tiny, quantize=args.quantize, device=args.device,
            dtype=args.dtype, max_context=args.max_context,
            index=grounding.IndexOptions.from_args(args),
        )

    def __init__(self, settings: Llama4Settings) -> None:
        super().__init__(settings)
        self.model: Any = None
        self.tokenizer: Any = None
        self.folder = settings.model
        self.max_context = 0
        self.eos_ids: set[int] = set()
        self.index: Any = None

    @property
    def serves(self) -> str:
        return "rag_chat" if self.settings.index else self.job_type

    def info(self) -> dict[str, Any]:
        return {
            "model": "tiny-llama4 (random weights)" if self.settings.tiny else str(self.folder),
            "quantize": self.settings.quantize,
            "dtype": self.settings.dtype,
            "device": str(getattr(self.model, "device", self.settings.device)),
            "max_context": self.max_context,
            **({"index": str(self.settings.index.index)} if self.settings.index else {}),
            **super().info(),
        }

    # ----- loading

    def load(self) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        # 1. The folder (--tiny: built by jobhive-worker first), loaded like real weights.
        config = AutoConfig.from_pretrained(self.folder)
        # 2. The tokenizer, which must bring a chat template.
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        if not self.tokenizer.chat_template:
            raise SystemExit(f"jobhive-worker llama4: {self.folder} has no chat template")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # 3. The model: Llama 4 multimodal checkpoints through their own class, the rest causal.
        model_cls: Any = AutoModelForCausalLM
        if config.model_type == "llama4":
            from transformers import Llama4ForConditionalGeneration

            model_cls = Llama4ForConditionalGeneration
        self.model = model_cls.from_pretrained(self.folder, **self._load_options()).eval()
        # 4. Limits and the tokens that end a turn.
        text_config = config.get_text_config()
        window = getattr(text_config, "max_position_embeddings", None) or 4096
        self.max_context = min(self.settings.max_context or window, window)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {
            *(eos if isinstance(eos, list) else [eos] if eos is not None else []),
            self.tokenizer.eos_token_id,
        } - {None}
        quantized = sum(type(m).__name__ == "Linear4bit" for m in self.model.modules())
        log.info(
            "llama4: %s from %s (%s%s, device %s, context %d tokens)%s",
            type(self.model).__name__, self.folder, self.settings.dtype,
            f", 4-bit NF4 in {quantized} layers" if quantized else "", self.model.device,
            self.max_context, "; tiny random weights: its text is gibberish" if self.settings.tiny
            else "",
        )
        self.loaded_models = [describe_model(
            self.folder, dtype="nf4" if quantized else self.settings.dtype,
            device=str(self.model.device))]
        # 5. For rag_chat, the index its sources come from.
        if self.settings.index:
            self.index = grounding.open_index(self.settings.index)
            stats = self.index.stats()
            log.info("llama4: rag_chat from index %s: %s", self.settings.index.index, stats)
            self.loaded_models += grounding.index_models(self.settings.index, stats)

    def _load_options(self) -> dict[str, Any]:
        """from_pretrained's keyword arguments for --dtype, --quantize and --device."""
        dtype = getattr(torch, self.settings.dtype)
        device = self.settings.device
        if device == "auto":
            device_map: Any = "auto" if torch.cuda.is_available() else {"": "cpu"}
        else:
            device_map = {"": device}
        options: dict[str, Any] = {"dtype": dtype, "device_map": device_map}
        if self.settings.quantize == "4bit":
            from transformers import BitsAndBytesConfig

            options["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
        return options

    # ----- the running batch

    def run_continuously(self, feed: JobFeed, progress: Progress) -> None:
        """Generates the chats of the feed until none is left: each one joins the running
        batch at the step after it arrived and leaves it, its result posted, when it ends."""
        rows: Rows | None = None
        with torch.inference_mode():
            while True:
                # 1. The chats that arrived join: inputs checked (a bad job fails alone, before
                #    any model work), prompts prefilled together, caches merged.
                arrived = feed.take()
                if not arrived and rows is None:
                    return
                if arrived:
                    rows = self.join(rows, arrived, feed, progress)
                # 2. One token for every running row; the rows that ended leave.
                if rows is not None:
                    rows = self.advance(rows, feed, progress)

    def join(self, rows: Rows | None, arrived: list[Job], feed: JobFeed,
             progress: Progress) -> Rows | None:
        """Checks and prefills the chats that arrived, samples their first tokens and merges
        those still going into the running rows."""
        chats = []
        for job in arrived:
            try:
                chats.append(self.prepare_chat(job))
            except InputError as e:
                feed.finish(job, e)
        if not chats:
            return rows
        try:
            new, logits = batch.prefill(self.model, chats, self.tokenizer.pad_token_id)
        except Exception as e:  # the running rows go on; these fail with the reason
            self.fail(chats, e, feed)
            return rows
        new = self.sample_and_leave(new, logits, feed, progress)
        return rows if new is None else batch.merge(rows, new)

    def advance(self, rows: Rows, feed: JobFeed, progress: Progress) -> Rows | None:
        """One decoding step of every row; a failure in the model fails each of them with its
        reason (never a hang: there is no streamer thread to wait on)."""
        try:
            logits = batch.decode(self.model, rows)
        except Exception as e:
            self.fail(rows.chats, e, feed)
            return None
        return self.sample_and_leave(rows, logits, feed, progress)

    def sample_and_leave(self, rows: Rows, logits: torch.Tensor, feed: JobFeed,
                         progress: Progress) -> Rows | None:
        """Each row's next token from its logits; the rows that ended leave, their results
        go (None: none is left)."""
        next_ids = [self.step(chat, logits[i], progress) for i, chat in enumerate(rows.chats)]
        rows.last_ids = torch.tensor(next_ids, device=rows.last_ids.device)
        kept = []
        for i, chat in enumerate(rows.chats):
            if chat.finish_reason:
                feed.finish(chat.job, self.outputs(chat))
            else:
                kept.append(i)
        return batch.keep(rows, kept) if kept else None

    def fail(self, chats: list[Chat], error: Exception, feed: JobFeed) -> None:
        log.exception("generation failed")
        failure = RuntimeError(f"generation failed: {type(error).__name__}: {error}")
        for chat in chats:
            feed.finish(chat.job, failure)

    def prepare_chat(self, job: Job) -> Chat:
        """Checks one job's inputs and tokenizes its chat; raises InputError with the reason."""
        inputs = job.inputs
        stop = inputs.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise InputError(f"`stop` must be a list of non-empty strings (got {stop!r})")
        if len(stop) > MAX_STOP_STRINGS:
            raise InputError(f"`stop` holds at most {MAX_STOP_STRINGS} strings (got {len(stop)})")
        max_new_tokens = int(inputs["max_new_tokens"])
        messages = list(inputs["chat_context"])
        sources = None
        if self.index is not None:
            question = grounding.question_of(messages)
            if not question.strip():
                raise InputError("`chat_context` needs a user message to find sources for")
            # Text passages only: the model reads text, so an image could be named, not seen.
            hits = self.index.search(text=question, top_k=int(inputs["num_sources"]),
                                     kinds=("text",))
            sources = grounding.sources_from(hits)
            messages = grounding.grounded_messages(messages, sources)
        # rag_chat trims by default: its sources may fill the window of a small model.
        trim = bool(inputs.get("trim_context", sources is not None))
        prompt_ids = self.fit_context(messages, max_new_tokens, trim)
        seed = int(inputs["seed"])
        return Chat(
            job=job,
            prompt_ids=prompt_ids,
            max_new_tokens=min(max_new_tokens, self.max_context - len(prompt_ids)),
            temperature=float(inputs["temperature"]),
            top_p=float(inputs.get("top_p", 1.0)),
            top_k=int(inputs.get("top_k", 0)),
            seed=seed if seed >= 0 else random.randrange(2**32),
            stop=stop,
            ignore_eos=bool(inputs.get("ignore_eos")),
            sources=sources,
        )

    def fit_context(self, messages: list[dict[str, str]], max_new_tokens: int,
                    trim: bool) -> list[int]:
        """The prompt's token ids; with `trim`, the oldest turns after the system prompt are
        dropped until the prompt and max_new_tokens fit the window. Raises InputError when the
        prompt leaves no room to answer."""
        ids = self._encode(messages)
        first = 1 if messages[0]["role"] == "system" else 0
        while trim and len(ids) + max_new_tokens > self.max_context and len(messages) > first + 1:
            del messages[first]
            ids = self._encode(messages)
        if len(ids) >= self.max_context:
            raise InputError(
                f"`chat_context` is {len(ids)} tokens once templated; the model's window is "
                f"{self.max_context} tokens, prompt and reply together: shorten the chat"
                + ("" if trim else " or send trim_context=true to drop the oldest turns")
            )
        return ids

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)

    # ----- one token of one row

    def step(self, chat: Chat, logits: torch.Tensor, progress: Progress) -> int:
        """One row's next token: sampled, checked against its stop rules, text streamed.
        Returns the token to feed back (the pad token when the row has finished)."""
        if chat.job.canceled:
            log.info("job %s canceled after %d tokens", chat.job.id, len(chat.generated))
            return self._finish(chat, "canceled")
        token = sample(logits, chat)
        now = time.monotonic()
        chat.first_token_at = chat.first_token_at or now
        if token in self.eos_ids and not chat.ignore_eos:
            return self._finish(chat, "stop")
        chat.generated.append(token)
        before = len(chat.text)
        chat.text += self.new_text(chat)
        text = chat.text
        if chat.stop and len(text) > before:  # only where the new text can complete a stop
            since = max(0, before - max(len(s) for s in chat.stop) + 1)
            cut = min((i for i in (text.find(s, since) for s in chat.stop) if i >= 0), default=-1)
            if cut >= 0:
                chat.text = text[:cut]
                return self._finish(chat, "stop")
        if len(chat.generated) >= chat.max_new_tokens:
            chat.text += self.new_text(chat, flush=True)
            return self._finish(chat, "length")
        visible = text[: len(text) - _held_back(text, chat.stop)]
        if visible != chat.streamed:
            chat.streamed = visible
            outputs: dict[str, Any] = {"text": visible, "tokens": len(chat.generated)}
            if chat.sources is not None:  # progress outputs replace the last ones: resend
                outputs["sources"] = chat.sources
            progress(chat.job, 100 * len(chat.generated) / chat.max_new_tokens, outputs)
        return token

    def new_text(self, chat: Chat, flush: bool = False) -> str:
        """The text that the tokens not yet decoded add to the reply: "" while they end inside
        a character, unless `flush`. Decodes a short window (the last decoded tokens as
        context, then the new ones), never the whole reply again, so a token costs the same at
        the 10th as at the 4000th: the incremental detokenizing of vLLM and TGI."""
        decode = self.tokenizer.decode
        window = chat.generated[chat.context_from:]
        known_tokens = chat.decoded_upto - chat.context_from
        known = decode(window[:known_tokens], skip_special_tokens=True)
        both = decode(window, skip_special_tokens=True)
        # A character takes at most 4 bytes: past 8 waiting tokens the bytes are not UTF-8
        # (a random model) and are let through as U+FFFD, so the window stays short.
        waiting = both.endswith("\ufffd") and len(window) - known_tokens < 8
        if len(both) <= len(known) or (waiting and not flush):
            return ""
        chat.context_from, chat.decoded_upto = chat.decoded_upto, len(chat.generated)
        return both[len(known):]

    def _finish(self, chat: Chat, reason: str) -> int:
        chat.finish_reason = reason
        chat.finished_at = time.monotonic()
        return self.tokenizer.pad_token_id

    def outputs(self, chat: Chat) -> dict[str, Any]:
        """A finished chat's outputs (its times counted from when it joined)."""
        started = chat.joined_at
        elapsed_s = (chat.finished_at or time.monotonic()) - started
        citations = (
            {}
            if chat.sources is None
            else {
                "sources": chat.sources,
                "cited": grounding.cited(chat.text, chat.sources),
            }
        )
        return {
            **citations,
            "text": chat.text,
            "prompt_tokens": len(chat.prompt_ids),
            "generated_tokens": len(chat.generated),
            "finish_reason": chat.finish_reason or "canceled",
            "tokens_per_s": round(len(chat.generated) / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "time_to_first_token_s": round((chat.first_token_at or started) - started, 4),
            "seed": chat.seed,
        }


def sample(logits: torch.Tensor, chat: Chat) -> int:
    """One token from a row's logits: greedy at temperature 0, else top-k, top-p and the row's
    own seeded generator (the same seed gives the same text)."""
    if chat.temperature <= 0:
        return int(logits.argmax())
    logits = logits / chat.temperature
    if 0 < chat.top_k < logits.shape[-1]:
        kth = torch.topk(logits, chat.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < chat.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= chat.top_p  # keeps at least the top one
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    if chat.generator is None:
        chat.generator = torch.Generator(device=logits.device).manual_seed(chat.seed)
    return int(torch.multinomial(logits.softmax(-1), 1, generator=chat.generator))


def _held_back(text: str, stop: list[str]) -> int:
    """How many characters at the end of `text` must not be streamed yet: the start of a stop
    string that the next tokens may complete."""
    held = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                held = max(held, n)
                break
    return held
