"""Images as they travel in jobs: base64 data URLs, which the server has already checked."""

from __future__ import annotations

import base64
import io

from PIL import Image


def decode_image(value: str) -> Image.Image:
    """An RGB PIL image from a base64 data URL (or bare base64)."""
    data = base64.b64decode(value.partition(",")[2] if value.startswith("data:") else value)
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def data_url(data: bytes, fmt: str) -> str:
    """A data URL for encoded image bytes of format `fmt` (png, jpeg, webp)."""
    return f"data:image/{fmt};base64," + base64.b64encode(data).decode("ascii")
