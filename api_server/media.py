"""Checking and converting base64 media values: images with Pillow, audio with ffmpeg.

Everything here blocks (decoding, subprocesses): call it from a thread, never the event loop.
Values travel as data URLs (`data:image/png;base64,....`); a bare base64 string is accepted too.
"""

from __future__ import annotations

import base64
import binascii
import io
import tempfile
import warnings
from collections.abc import Sequence

import ffmpeg
from PIL import Image, UnidentifiedImageError

# Pillow's format names -> MIME subtypes for the data URLs we write back.
_IMAGE_MIME = {"jpeg": "jpeg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp"}
_AUDIO_MIME = {"wav": "wav", "mp3": "mpeg", "ogg": "ogg", "flac": "flac", "webm": "webm"}


class MediaError(ValueError):
    """The media value is unreadable or outside its limits; the message says which."""


def decode_data_url(value: object, max_bytes: int) -> bytes:
    """Returns the bytes of a base64 value, with or without a `data:...;base64,` prefix."""
    if not isinstance(value, str):
        raise MediaError(f"must be a base64 string or data URL (got {type(value).__name__})")
    _, comma, payload = value.partition(",")
    if not comma:
        payload = value
    elif not value.startswith("data:") or ";base64" not in value[: value.index(",")]:
        raise MediaError("must be a data URL of the form data:<mime>;base64,<data>")
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise MediaError(f"must be at most {max_bytes} bytes (got about {len(payload) * 3 // 4})")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as e:
        raise MediaError(f"is not valid base64 ({e})") from e
    if not data:
        raise MediaError("is empty")
    if len(data) > max_bytes:
        raise MediaError(f"must be at most {max_bytes} bytes (got {len(data)})")
    return data


def data_url(data: bytes, mime: str) -> str:
    """Encodes bytes as a `data:<mime>;base64,` URL."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def check_image(
    value: object,
    *,
    formats: Sequence[str],
    max_size: tuple[int, int],
    max_bytes: int,
    auto_convert: bool,
) -> str:
    """Checks one image value; returns it unchanged, or converted when auto_convert allows.

    Args:
        value (object): the client's value, a base64 string or data URL.
        formats (Sequence[str]): Pillow format names accepted, lower case ("jpeg", "png").
        max_size (tuple[int, int]): the largest (width, height) in pixels.
        max_bytes (int): the largest decoded file in bytes.
        auto_convert (bool): shrink oversize images and re-encode other formats as formats[0];
            formats Pillow cannot read are decoded through ffmpeg first.

    Returns:
        str: a data URL of an image that meets every limit.
    """
    data = decode_data_url(value, max_bytes)
    try:
        image = _open_image(data)
    except UnidentifiedImageError as e:
        if not auto_convert:
            raise MediaError(f"is not an image in a supported format ({', '.join(formats)})") from e
        image = _open_image(_ffmpeg_to_png(data))
    fmt = (image.format or "").lower()
    width, height = image.size
    max_w, max_h = max_size
    too_big = width > max_w or height > max_h
    if not auto_convert:
        if fmt not in formats:
            raise MediaError(f"must be one of {', '.join(formats)} (got {fmt or 'unknown'})")
        if too_big:
            raise MediaError(f"must be at most {max_w}x{max_h} pixels (got {width}x{height})")
    elif width * height > 4 * max_w * max_h:
        # Shrinking is fine, decoding a decompression bomb is not.
        raise MediaError(f"is far over {max_w}x{max_h} pixels (got {width}x{height})")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"is a damaged {fmt or 'image'} file ({e})") from e
    if fmt in formats and not too_big:
        return value if str(value).startswith("data:") else data_url(data, f"image/{fmt}")
    if too_big:
        image.thumbnail((max_w, max_h))
    out_fmt = fmt if fmt in formats else formats[0]
    if out_fmt == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=out_fmt.upper())
    return data_url(buffer.getvalue(), f"image/{_IMAGE_MIME.get(out_fmt, out_fmt)}")


def _open_image(data: bytes) -> Image.Image:
    """Reads the image header; refuses decompression bombs before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise MediaError(f"has too many pixels to decode safely ({e})") from e
    except UnidentifiedImageError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"is a damaged image file ({e})") from e


def _ffmpeg_to_png(data: bytes) -> bytes:
    """Decodes the first frame of anything ffmpeg reads (AVIF, HEIC, TIFF variants) to PNG."""
    try:
        png, _ = (
            ffmpeg.input("pipe:0")
            .output("pipe:1", vframes=1, format="image2pipe", vcodec="png")
            .run(input=data, capture_stdout=True, capture_stderr=True, quiet=True)
        )
    except ffmpeg.Error as e:
        raise MediaError("is not an image that Pillow or ffmpeg can read") from e
    if not png:
        raise MediaError("is not an image that Pillow or ffmpeg can read")
    return png


def check_audio(
    value: object,
    *,
    formats: Sequence[str],
    max_duration_s: float,
    max_bytes: int,
    sample_rate: int | None,
    auto_convert: bool,
) -> str:
    """Checks one audio value with ffprobe; converts it with ffmpeg when auto_convert allows.

    Args:
        value (object): the client's value, a base64 string or data URL.
        formats (Sequence[str]): ffmpeg format names accepted ("wav", "mp3", "ogg", "flac").
        max_duration_s (float): the longest clip accepted, in seconds.
        max_bytes (int): the largest decoded file in bytes.
        sample_rate (int | None): with auto_convert, the rate in Hz to resample to.
        auto_convert (bool): re-encode other formats (or other sample rates) as formats[0].

    Returns:
        str: a data URL of audio that meets every limit.
    """
    data = decode_data_url(value, max_bytes)
    with tempfile.NamedTemporaryFile(suffix=".audio") as source:
        source.write(data)
        source.flush()
        try:
            info = ffmpeg.probe(source.name)
        except ffmpeg.Error as e:
            raise MediaError("is not audio that ffmpeg can read") from e
        streams = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
        if not streams:
            raise MediaError("holds no audio stream")
        duration_s = float(info.get("format", {}).get("duration") or 0.0)
        if duration_s > max_duration_s:
            raise MediaError(f"must be at most {max_duration_s:g} s long (got {duration_s:.1f} s)")
        names = set(info["format"].get("format_name", "").split(","))
        fmt = next((f for f in formats if f in names), None)
        rate_ok = sample_rate is None or int(streams[0].get("sample_rate", 0)) == sample_rate
        if fmt is not None and rate_ok:
            return value if str(value).startswith("data:") else data_url(data, f"audio/{fmt}")
        if not auto_convert:
            if fmt is None:
                got = info["format"].get("format_name", "unknown")
                raise MediaError(f"must be one of {', '.join(formats)} (got {got})")
            raise MediaError(f"must be sampled at {sample_rate} Hz")
        out_fmt = formats[0]
        options = {"ar": sample_rate} if sample_rate else {}
        try:
            converted, _ = (
                ffmpeg.input(source.name)
                .output("pipe:1", format=out_fmt, **options)
                .run(capture_stdout=True, capture_stderr=True, quiet=True)
            )
        except ffmpeg.Error as e:
            raise MediaError(f"could not be converted to {out_fmt}") from e
    return data_url(converted, f"audio/{_AUDIO_MIME.get(out_fmt, out_fmt)}")
