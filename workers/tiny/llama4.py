"""A tiny random-weight Llama 4 built offline, for the tests, the demo and the benchmark.

`build_tiny_llama4(folder)` trains a small byte-level BPE tokenizer in-process (with the
`tokenizers` library), wraps it as a PreTrainedTokenizerFast with Llama-4-style special tokens and
a chat template, builds a Llama4ForCausalLM from a Llama4TextConfig with a few experts and a tiny
hidden size, and saves both with save_pretrained. The worker then loads the folder through the
same from_pretrained path as real weights. Its text is gibberish: the weights are random.

Token ids come from tokenizer training and are not fixed: nothing should hard-code them.
"""

from __future__ import annotations

from pathlib import Path

from workers.tiny.build import ensure_built

VERSION = 1  # bump when what is built changes (workers/tiny/build.py: the one rule)

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
    "0123456789 !?.,;:'\"()[]{}<>+-*/=_ system user assistant\n"
)


def _train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on a small built-in corpus, as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>",
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
