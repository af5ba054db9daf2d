"""A tiny random-weight Stable Diffusion 3 checkpoint, built offline for tests and the demo.

It uses the real SD3 component classes (SD3Transformer2DModel, AutoencoderKL, two
CLIPTextModelWithProjection, T5EncoderModel, FlowMatchEulerDiscreteScheduler) with tiny configs,
and tokenizers trained here on a few sentences. It is saved with `save_pretrained` and loaded back
by the worker through `StableDiffusion3Pipeline.from_pretrained`, the path real weights take. Its
images are noise: it exercises the code, not the art.

The latent space has SD3's shape (16 channels, 8x downsampling, patch size 2), so sizes align to 16
and the latent previews work as for the real model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from workers.tiny.build import ensure_built

VERSION = 1  # bump when the configs below change (workers/tiny/build.py: the one rule)

_CORPUS = [
    "a photo of a cat sitting on a red chair",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse at dawn",
    "portrait of an old man with a beard, studio lighting",
    "a bowl of fruit on a wooden table, still life",
    "blurry, low quality, deformed, ugly, text, watermark",
]


def train_clip_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer in CLIP's format (words end with "</w>"), trained on `texts`
    (ids differ from one training to the next: never hard-code them)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|startoftext|>", "<|endoftext|>"],
            end_of_word_suffix="</w>",
            initial_alphabet=alphabet,
            show_progress=False,
        ),
    )
    with tempfile.TemporaryDirectory() as folder:
        bpe.model.save(folder)
        vocab = bpe.get_vocab()
        merges = [
            tuple(line.split())
            for line in Path(folder, "merges.txt").read_text().splitlines()[1:]
            if line.strip()
        ]
    for char in alphabet:  # CLIP ends each word with "</w>": every byte needs that form too
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def train_t5_tokenizer(texts: list[str]):
    """A Unigram (SentencePiece-like) tokenizer in T5's format, trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    unigram.train_from_iterator(
        texts,
        trainers.UnigramTrainer(
            vocab_size=200,
            special_tokens=["<pad>", "</s>", "<unk>"],
            unk_token="<unk>",
            show_progress=False,
        ),
    )
    return T5TokenizerFast(
        tokenizer_object=unigram, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        extra_ids=0, model_max_length=256,
    )


def build_tiny_pipeline(seed: int = 0):
    """Builds the tiny SD3 pipeline in memory (random weights from `seed`).

    Returns:
        StableDiffusion3Pipeline: on the CPU, float32.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = train_clip_tokenizer(_CORPUS * 4, vocab_size=600)
    tokenizer_3 = train_t5_tokenizer(_CORPUS * 4)

    def clip_encoder():
        config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
            max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        return CLIPTextModelWithProjection(config)

    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=64, d_ff=128, d_kv=16, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id, decoder_start_token_id=tokenizer_3.pad_token_id,
    ))
    transformer = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=96,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=1.5305, shift_factor=0.0609,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip_encoder(),
        tokenizer=tokenizer,
        text_encoder_2=clip_encoder(),
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=tokenizer_3,
    )


def build_tiny_sd3(folder: Path | str | None = None, seed: int = 0) -> Path:
    """The folder of a saved tiny SD3 checkpoint, built and saved there first if missing.

    Args:
        folder (Path | str | None, default ~/.cache/jobhive/tiny-sd3): where it lives.
        seed (int, default 0): the seed of the random weights.

    Returns:
        Path: a diffusers-format folder (model_index.json and one folder per component).
    """
    return ensure_built("sd3", VERSION, folder,
                        lambda staging: build_tiny_pipeline(seed).save_pretrained(staging),
                        seed=seed)
