"""Images as they travel in jobs: base64 data URLs, which the server has already checked."""

from __future__ import annotations

import io

from PIL import Image

from jobhive.protocol import decode_data_url, encode_data_url


def decode_image(value: str) -> Image.Image:
    """An RGB PIL image from a base64 data URL (or bare base64)."""
    _, data = decode_data_url(value)
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def data_url(data: bytes, fmt: str) -> str:
    """A data URL for encoded image bytes of format `fmt` (png, jpeg, webp)."""
    return encode_data_url(data, f"image/{fmt}")
