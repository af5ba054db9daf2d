"""A tiny random-weight CLIP built offline, for the retrieval tests and the demo.

`build_tiny_clip(folder)` trains a small byte-level BPE tokenizer in-process (with the `tokenizers`
library) in CLIP's format, builds a transformers CLIPModel from a tiny CLIPConfig (hidden size 32,
2 layers, 32x32 images, 32-d projections) and a CLIPImageProcessor for 32x32 inputs, and saves all
three with save_pretrained. The index then loads the folder through the same from_pretrained path
as real CLIP weights (workers/rag/embed.py). Its embeddings are random projections: an image
finds itself, but "red sneakers" finds nothing in particular.

Token ids come from tokenizer training and are not fixed: nothing should hard-code them. The
weights and the tokenizer must stay together, so an index built with the tiny CLIP keeps its own
copy in INDEX_DIR/tiny-clip/.
"""

from __future__ import annotations

from pathlib import Path

from workers.tiny.build import ensure_built
from workers.tiny.sd3 import train_clip_tokenizer

VERSION = 1  # bump when what is built changes (workers/tiny/build.py: the one rule)
IMAGE_SIZE = 32

_CORPUS = (
    "a photo of red sneakers on a wooden floor. a black cat sleeping on a sofa. "
    "the lighthouse stands on the rocks at dawn; waves break below it. "
    "Invoices, receipts and the quarterly report are in the documents folder. "
    "How do I reset my password? Open the settings page and choose security. "
    "0123456789 !?.,;:'\"()[]{}<>+-*/=_ blue green yellow white dog bird car tree house\n"
)


def _image_processor():
    """CLIP's preprocessing (resize the short side, center crop, normalise) at IMAGE_SIZE."""
    from workers.rag.embed import clip_image_processor_class

    return clip_image_processor_class()(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )


def build_tiny_clip(folder: Path | None = None, seed: int = 0, projection_dim: int = 32) -> Path:
    """Builds the tiny CLIP (model, tokenizer, image processor) into `folder` unless it is there.

    The folder is written beside its final place and renamed, so two processes building at once
    never see half a model.

    Args:
        folder (Path | None, default ~/.cache/jobhive/tiny-clip): where save_pretrained
            writes (created if missing).
        seed (int, default 0): the seed of the random weights.
        projection_dim (int, default 32): the size of its embeddings.

    Returns:
        Path: the folder, ready for CLIPModel / CLIPTokenizer / CLIPImageProcessor.from_pretrained.
    """
    return ensure_built("clip", VERSION, folder,
                        lambda staging: _save_tiny_clip(staging, seed, projection_dim),
                        seed=seed, projection_dim=projection_dim)


def _save_tiny_clip(staging: Path, seed: int, projection_dim: int) -> None:
    import torch
    from transformers import CLIPConfig, CLIPModel

    tokenizer = train_clip_tokenizer([_CORPUS] * 8, vocab_size=500)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _image_processor().save_pretrained(staging)
