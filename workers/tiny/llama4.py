"""A tiny random-weight Llama 4 built offline, for the tests, the demo and the benchmark.

`build_tiny_llama4(folder)` makes a word-level tokenizer in-process (with the `tokenizers`
library: every word and punctuation mark of a small built-in text is one token), wraps it as a
PreTrainedTokenizerFast with Llama-4-style special tokens and a chat template, builds a
Llama4ForCausalLM from a Llama4TextConfig with a few experts and a tiny hidden size, and saves
both with save_pretrained. The worker then loads the folder through the same from_pretrained
path as real weights. The weights are random, so the text is random words; but every token is a
whole word or mark (no byte pieces), so it is never half a character. Words the tokenizer does
not know read as <unk>.

Token ids come from tokenizer training and are not fixed: nothing should hard-code them.
"""

from __future__ import annotations

import re
from pathlib import Path

from workers.tiny.build import ensure_built

VERSION = 2  # bump when what is built changes (workers/tiny/build.py: the one rule)

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eot|>",
    "<|finetune_right_pad|>",
]

# Llama 4's chat format, reduced to what a chat of {role, content} messages needs.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|header_start|>' + message['role'] + '<|header_end|>\n\n' + message['content'] "
    "+ '<|eot|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\n\n' }}{% endif %}"
)

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A worker takes jobs from the queue, runs the "
    "model and posts the result back. Hello, how are you today? I am fine, thank you. "
    "Tokens stream to the client as progress, and the final text arrives with the result. "
    "Once upon a time there was a small model that only knew a few hundred words. "
    "It lived in a server by the sea, where the bread was warm and the boots were dry. "
    "Every morning it read the news, made a cup of tea and answered questions about camping, "
    "shoes, tents, rain, mountains, rivers, recipes and the weather. Some days were long; "
    "others were short. Would you like to know more? Yes! No. Maybe: it depends on the light, "
    "the time and what the people want. They asked, it answered; they laughed, it learned. "
    "First, second, third and last: one, two, three, four, five, six, seven, eight, nine, ten. "
    "system user assistant"
)
_PUNCTUATION = ".,;:!?'\"()-"


def _train_tokenizer(vocab_size: int):
    """A word-level tokenizer over _CORPUS's words and marks (at most vocab_size entries), as
    PreTrainedTokenizerFast: spaces become "▁" at the start of the word after them (Metaspace),
    so decoding puts them back and marks stay attached to their word."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),
        pre_tokenizers.Metaspace(),
        pre_tokenizers.Split(Regex(f"[{re.escape(_PUNCTUATION)}]"), behavior="isolated"),
    ])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, "<unk>"], show_progress=False)
    tokenizer.train_from_iterator([_CORPUS, "\n", "\n\n"], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>",
        unk_token="<unk>",
        additional_special_tokens=["<|header_start|>", "<|header_end|>", "<|end_of_text|>"],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def build_tiny_llama4(folder: Path | str | None = None, max_context: int = 2048,
                      seed: int = 0) -> Path:
    """Builds the tiny model and tokenizer into `folder` unless a current build is there.

    Args:
        folder (Path | str | None, default ~/.cache/jobhive/tiny-llama4): where it lives.
        max_context (int, default 2048): the model's window in tokens (max_position_embeddings).
        seed (int, default 0): the seed of the random weights.

    Returns:
        Path: the folder, ready for from_pretrained.
    """
    return ensure_built("llama4", VERSION, folder,
                        lambda staging: _save_tiny_llama4(staging, max_context, seed),
                        max_context=max_context, seed=seed)


def _save_tiny_llama4(staging: Path, max_context: int, seed: int) -> None:
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    tokenizer = _train_tokenizer(vocab_size=600)
    tokenizer.model_max_length = max_context
    config = Llama4TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        intermediate_size_mlp=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
        max_position_embeddings=max_context,
        attention_chunk_size=max_context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Llama4ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
