"""Checking and converting base64 media values: images with Pillow, audio with ffmpeg.

Everything here blocks (decoding, subprocesses): call it from a thread, never the event loop.
Values travel as data URLs (`data:image/png;base64,....`); a bare base64 string is accepted too.
"""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import ffmpeg
from PIL import Image, UnidentifiedImageError

from jobhive import protocol

# Image formats a field may list: plain raster formats Pillow both reads and writes. Nothing
# else is opened with Pillow (EPS, say, would run Ghostscript on a client's file).
IMAGE_FORMATS = (
    "jpeg", "png", "webp", "gif", "bmp", "tiff", "avif", "qoi", "ppm", "tga", "sgi", "pcx",
)
# The largest image auto_convert decodes to shrink it (a 48-megapixel photo fits).
MAX_SHRINK_PIXELS = 50_000_000
# The longest one ffmpeg or ffprobe run may take on a client's value (a field's default).
FFMPEG_TIMEOUT_S = 30.0
_PILLOW_OPEN = tuple(f.upper() for f in IMAGE_FORMATS)  # JPEG covers MPO too
# Pillow's format names -> MIME subtypes for the data URLs we write back (others: image/NAME).
_IMAGE_MIME = {"ppm": "x-portable-pixmap", "tga": "x-tga"}
_AUDIO_MIME = {"wav": "wav", "mp3": "mpeg", "ogg": "ogg", "flac": "flac", "webm": "webm"}
# Demuxers ffmpeg may use on a client's bytes. Without a list, ffmpeg also reads playlists
# (hls, concat) whose entries name files on the server, which would then be sent back.
_FFMPEG_IMAGE_DEMUXERS = (
    "bmp_pipe,dds_pipe,dpx_pipe,exr_pipe,gif_pipe,j2k_pipe,jpeg_pipe,jpegls_pipe,jpegxl_pipe,"
    "pam_pipe,pbm_pipe,pcx_pipe,pfm_pipe,pgm_pipe,pgx_pipe,phm_pipe,png_pipe,ppm_pipe,psd_pipe,"
    "qoi_pipe,sgi_pipe,sunrast_pipe,tiff_pipe,webp_pipe,xbm_pipe,xpm_pipe,xwd_pipe,mov"
)
_FFMPEG_AUDIO_DEMUXERS = (
    "wav", "w64", "mp3", "ogg", "flac", "matroska", "mov", "aac", "aiff", "caf", "au", "amr", "wv",
    "ac3", "eac3",
)


class MediaError(ValueError):
    """The media value is unreadable or outside its limits; the message says which."""


def decode_data_url(value: object, max_bytes: int) -> bytes:
    """Returns the bytes of a base64 value, with or without a `data:...;base64,` prefix (the
    protocol's codec, with a size check before decoding)."""
    if not isinstance(value, str):
        raise MediaError(f"must be a base64 string or data URL (got {type(value).__name__})")
    comma = value.find(",")
    if comma >= 0 and not value.startswith("data:"):
        raise MediaError("must be a data URL of the form data:<mime>;base64,<data>")
    if (len(value) - comma - 1) * 3 // 4 > max_bytes + 3:
        raise MediaError(f"must be at most {max_bytes} bytes "
                         f"(got about {(len(value) - comma - 1) * 3 // 4})")
    try:
        _, data = protocol.decode_data_url(value, validate=True)
    except ValueError as e:
        if str(e).startswith("not a base64 data URL"):
            raise MediaError("must be a data URL of the form data:<mime>;base64,<data>") from e
        raise MediaError(f"is not valid base64 ({e.__cause__ or e})") from e
    if not data:
        raise MediaError("is empty")
    if len(data) > max_bytes:
        raise MediaError(f"must be at most {max_bytes} bytes (got {len(data)})")
    return data


data_url = protocol.encode_data_url


def check_image(
    value: object,
    *,
    formats: Sequence[str],
    max_size: tuple[int, int],
    max_bytes: int,
    auto_convert: bool,
    ffmpeg_timeout_s: float = FFMPEG_TIMEOUT_S,
) -> str:
    """Checks one image value; returns it unchanged, or converted when auto_convert allows.

    Args:
        value (object): the client's value, a base64 string or data URL.
        formats (Sequence[str]): Pillow format names accepted, lower case ("jpeg", "png").
        max_size (tuple[int, int]): the largest (width, height) in pixels.
        max_bytes (int): the largest decoded file in bytes.
        auto_convert (bool): shrink oversize images and re-encode other formats as formats[0];
            formats Pillow cannot read are decoded through ffmpeg first.
        ffmpeg_timeout_s (float): the longest that ffmpeg may take to decode it.

    Returns:
        str: a data URL of an image that meets every limit.
    """
    data = decode_data_url(value, max_bytes)
    decoded_by_ffmpeg = False
    try:
        image = _open_image(data)
    except UnidentifiedImageError as e:
        if not auto_convert:
            raise MediaError(f"is not an image in a supported format ({', '.join(formats)})") from e
        data, decoded_by_ffmpeg = _ffmpeg_to_png(data, ffmpeg_timeout_s), True
        try:
            image = _open_image(data)
        except UnidentifiedImageError as e2:
            raise MediaError("is not an image that Pillow or ffmpeg can read") from e2
    fmt = (image.format or "").lower()
    fmt = "jpeg" if fmt == "mpo" else fmt  # phone cameras' JPEG with a second picture
    width, height = image.size
    max_w, max_h = max_size
    too_big = width > max_w or height > max_h
    if not auto_convert:
        if fmt not in formats:
            raise MediaError(f"must be one of {', '.join(formats)} (got {fmt or 'unknown'})")
        if too_big:
            raise MediaError(f"must be at most {max_w}x{max_h} pixels (got {width}x{height})")
    elif too_big and width * height > MAX_SHRINK_PIXELS:
        # Shrinking a big photo is fine, decoding a decompression bomb is not.
        raise MediaError(
            f"is far over {max_w}x{max_h} pixels (got {width}x{height}; images of at most "
            f"{MAX_SHRINK_PIXELS} pixels are shrunk to fit)"
        )
    try:
        if too_big:
            image.draft(None, (max_w, max_h))  # JPEG decodes at 1/2, 1/4 or 1/8 scale
        image.load()
    except Exception as e:  # a damaged file raises whatever its decoder trips on
        raise MediaError(f"is a damaged {fmt or 'image'} file ({e})") from e
    if fmt in formats and not too_big:
        mime = f"image/{_IMAGE_MIME.get(fmt, fmt)}"
        if not decoded_by_ffmpeg and str(value).startswith(f"data:{mime};base64,"):
            return value  # type: ignore[return-value]  # a str: decode_data_url checked
        return data_url(data, mime)
    out_fmt = fmt if fmt in formats else formats[0]
    if too_big:
        try:
            image.thumbnail((max_w, max_h))
        except Exception as e:
            raise MediaError(f"is a damaged {fmt} file ({e})") from e
    encoded = _encode(image, out_fmt)
    if len(encoded) > max_bytes:
        raise MediaError(
            f"must be at most {max_bytes} bytes (got {len(encoded)} once converted to {out_fmt})"
        )
    return data_url(encoded, f"image/{_IMAGE_MIME.get(out_fmt, out_fmt)}")


def _encode(image: Image.Image, out_fmt: str) -> bytes:
    """Saves image as out_fmt, through RGBA or RGB when the format cannot hold its mode."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    error: Exception | None = None
    for mode in dict.fromkeys([image.mode, "RGBA" if has_alpha else "RGB", "RGB"]):
        buffer = io.BytesIO()
        try:
            converted = image if mode == image.mode else image.convert(mode)
            converted.save(buffer, format=out_fmt.upper())
        except Exception as e:  # e.g. "cannot write mode CMYK as PNG": try the next mode
            error = e
            continue
        return buffer.getvalue()
    raise MediaError(f"could not be converted to {out_fmt} ({error})")


def _open_image(data: bytes) -> Image.Image:
    """Reads the image header; refuses decompression bombs before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_PILLOW_OPEN)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise MediaError(f"has too many pixels to decode safely ({e})") from e
    except UnidentifiedImageError:
        raise
    except Exception as e:  # a damaged header raises whatever its parser trips on
        raise MediaError(f"is a damaged image file ({e})") from e


def _ffmpeg_to_png(data: bytes, timeout_s: float) -> bytes:
    """Decodes the first frame of anything ffmpeg reads (AVIF, HEIC, TIFF variants) to PNG."""
    command = (
        ffmpeg.input("pipe:0", format_whitelist=_FFMPEG_IMAGE_DEMUXERS)
        .output("pipe:1", vframes=1, format="image2pipe", vcodec="png")
        .compile()
    )
    unreadable = "is not an image that Pillow or ffmpeg can read"
    png = _run(command, timeout_s, failed=unreadable, slow="to decode it", stdin=data)
    if not png:
        raise MediaError(unreadable)
    return png


def _run(command: list[str], timeout_s: float, *, failed: str, slow: str,
         stdin: bytes | None = None) -> bytes:
    """Runs ffmpeg or ffprobe and returns its stdout. Raises MediaError(failed) when it fails,
    and kills it past timeout_s (MediaError naming `slow`, what it was doing): ffmpeg-python's
    run() and probe() wait without a limit, and a hostile file must not hold a server process
    for good."""
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise MediaError(f"took ffmpeg longer than {timeout_s:g} s {slow}") from e
    if done.returncode != 0:
        raise MediaError(failed)
    return done.stdout


def check_audio(
    value: object,
    *,
    formats: Sequence[str],
    max_duration_s: float,
    max_bytes: int,
    sample_rate: int | None,
    auto_convert: bool,
    ffmpeg_timeout_s: float = FFMPEG_TIMEOUT_S,
) -> str:
    """Checks one audio value with ffprobe; converts it with ffmpeg when auto_convert allows.

    Args:
        value (object): the client's value, a base64 string or data URL.
        formats (Sequence[str]): ffmpeg format names accepted ("wav", "mp3", "ogg", "flac").
        max_duration_s (float): the longest clip accepted, in seconds.
        max_bytes (int): the largest decoded file in bytes.
        sample_rate (int | None): with auto_convert, the rate in Hz to resample to.
        auto_convert (bool): re-encode other formats (or other sample rates) as formats[0].
        ffmpeg_timeout_s (float): the longest that each ffprobe or ffmpeg run may take.

    Returns:
        str: a data URL of audio that meets every limit.
    """
    data = decode_data_url(value, max_bytes)
    demuxers = ",".join(dict.fromkeys([*formats, *_FFMPEG_AUDIO_DEMUXERS]))
    with tempfile.NamedTemporaryFile(suffix=".audio") as source:
        source.write(data)
        source.flush()
        probe = ["ffprobe", "-show_format", "-show_streams", "-of", "json",
                 "-format_whitelist", demuxers, source.name]
        info = json.loads(_run(probe, ffmpeg_timeout_s, failed="is not audio that ffmpeg can "
                               "read", slow="to read it"))
        streams = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
        if not streams:
            raise MediaError("holds no audio stream")
        container = info.get("format", {})
        try:
            duration_s = float(container.get("duration") or 0.0)
        except ValueError:  # "N/A"
            duration_s = 0.0
        if duration_s > max_duration_s:
            raise MediaError(f"must be at most {max_duration_s:g} s long (got {duration_s:.1f} s)")
        names = set(container.get("format_name", "").split(","))
        fmt = next((f for f in formats if f in names), None)
        rate = streams[0].get("sample_rate", "0")
        rate_ok = sample_rate is None or rate == str(sample_rate)
        if fmt is not None and rate_ok:
            mime = f"audio/{_AUDIO_MIME.get(fmt, fmt)}"
            if str(value).startswith(f"data:{mime};base64,"):
                return value  # type: ignore[return-value]  # a str: decode_data_url checked
            return data_url(data, mime)
        if not auto_convert:
            if fmt is None:
                got = container.get("format_name", "unknown")
                raise MediaError(f"must be one of {', '.join(formats)} (got {got})")
            raise MediaError(f"must be sampled at {sample_rate} Hz (got {rate} Hz)")
        out_fmt = formats[0]
        options = {"ar": sample_rate} if sample_rate else {}
        # A file, not a pipe: muxers seek back to write sizes (WAV) and indexes (MP4).
        with tempfile.NamedTemporaryFile(suffix=f".{out_fmt}") as target:
            command = (
                ffmpeg.input(source.name, format_whitelist=demuxers)
                .output(target.name, format=out_fmt, vn=None, **options)
                .overwrite_output()
                .compile()
            )
            _run(command, ffmpeg_timeout_s, failed=f"could not be converted to {out_fmt}",
                 slow=f"to convert it to {out_fmt}")
            converted = Path(target.name).read_bytes()
    if len(converted) > max_bytes:
        raise MediaError(
            f"must be at most {max_bytes} bytes (got {len(converted)} once converted to {out_fmt})"
        )
    return data_url(converted, f"audio/{_AUDIO_MIME.get(out_fmt, out_fmt)}")
