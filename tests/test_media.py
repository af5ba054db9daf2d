"""api_server.media: data URLs, images through Pillow (and ffmpeg), audio through ffmpeg.

Every sample is made here: images with Pillow, audio with Python's wave module or
`ffmpeg -f lavfi -i sine=...`, an ffmpeg-only image (DPX) with ffmpeg.
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import subprocess
import wave
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from api_server import media
from api_server.media import MediaError, check_audio, check_image, data_url, decode_data_url

# --------------------------------------------------------------------------------------------
# samples


def encode_image(
    fmt: str = "png", size: tuple[int, int] = (32, 16), mode: str = "RGB", **save: object
) -> bytes:
    image = Image.new(mode, size, color=_colour(mode))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **save)
    return buffer.getvalue()


def _colour(mode: str) -> object:
    return {"RGB": (200, 30, 60), "RGBA": (200, 30, 60, 128), "L": 90, "1": 1}.get(mode, 0)


def url(data: bytes, mime: str = "image/png") -> str:
    return data_url(data, mime)


def image(value: str) -> Image.Image:
    """Decodes a data URL that check_image returned."""
    header, _, payload = value.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64"), header
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def mime_of(value: str) -> str:
    return value[len("data:") : value.index(";")]


def check(value: object, **kwargs: object) -> str:
    """check_image with small, explicit defaults."""
    options: dict = {
        "formats": ("jpeg", "png", "webp"),
        "max_size": (64, 64),
        "max_bytes": 1_000_000,
        "auto_convert": False,
    }
    return check_image(value, **{**options, **kwargs})


def ffmpeg_bytes(*args: str) -> bytes:
    """Runs ffmpeg with args (output to stdout) and returns what it wrote."""
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-v", "error", *args, "pipe:1"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def wav_bytes(duration_s: float = 0.25, rate: int = 44100) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(struct.pack("<h", 1000) * int(duration_s * rate))
    return buffer.getvalue()


def sine(fmt: str, duration_s: float = 0.25, rate: int = 44100) -> bytes:
    return ffmpeg_bytes(
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:duration={duration_s}:sample_rate={rate}",
        "-f",
        fmt,
    )


@pytest.fixture(scope="module")
def audio() -> dict[str, bytes]:
    """Quarter-second 44.1 kHz clips in every default format."""
    return {"wav": wav_bytes(), **{fmt: sine(fmt) for fmt in ("mp3", "ogg", "flac")}}


def probe(value: str) -> dict:
    """ffprobe's view of a data URL that check_audio returned."""
    payload = base64.b64decode(value.partition(",")[2])
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", "pipe:0"],
        input=payload,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return json.loads(done.stdout)


def audio_check(value: object, **kwargs: object) -> str:
    options: dict = {
        "formats": ("wav", "mp3", "ogg", "flac"),
        "max_duration_s": 10.0,
        "max_bytes": 10_000_000,
        "sample_rate": None,
        "auto_convert": False,
    }
    return check_audio(value, **{**options, **kwargs})


# --------------------------------------------------------------------------------------------
# data URLs


def test_data_url_and_bare_base64_decode_to_the_same_bytes():
    data = b"\x00\x01binary\xff"
    assert decode_data_url(url(data, "image/png"), 100) == data
    assert decode_data_url(base64.b64encode(data).decode(), 100) == data


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5, "must be a base64 string or data URL (got int)"),
        (None, "must be a base64 string or data URL (got NoneType)"),
        (b"aGk=", "must be a base64 string or data URL (got bytes)"),
        ("image/png;base64,aGk=", "must be a data URL of the form data:<mime>;base64,<data>"),
        ("data:image/png,aGk=", "must be a data URL of the form data:<mime>;base64,<data>"),
        ("http://example.com/a,png", "must be a data URL"),
        ("data:image/png;base64,not base64!", "is not valid base64"),
        ("aGk", "is not valid base64"),
        ("", "is empty"),
        ("data:image/png;base64,", "is empty"),
    ],
)
def test_bad_data_urls_are_refused_saying_what_would_pass(value, message):
    with pytest.raises(MediaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_data_url(value, 100)


def test_max_bytes_is_checked_before_and_after_decoding():
    assert decode_data_url(url(b"x" * 100), 100) == b"x" * 100
    with pytest.raises(MediaError, match=r"must be at most 99 bytes \(got 100\)"):
        decode_data_url(url(b"x" * 100), 99)
    # Far too long: refused from the text's length, without decoding it.
    with pytest.raises(MediaError, match=r"must be at most 10 bytes \(got about 7500\)"):
        decode_data_url("A" * 10_000, 10)


# --------------------------------------------------------------------------------------------
# images: formats


@pytest.mark.parametrize("fmt", media.IMAGE_FORMATS)
def test_every_supported_format_is_accepted_when_listed(fmt):
    mode = "RGBA" if fmt == "ico" else "RGB"
    data = encode_image(fmt, mode=mode)
    out = check(url(data, f"image/{fmt}"), formats=(fmt,))
    decoded = image(out)
    assert decoded.format.lower() == fmt
    assert decoded.size == (32, 16)


@pytest.mark.parametrize("fmt", [f for f in media.IMAGE_FORMATS if f != "png"])
def test_every_unlisted_format_is_refused_naming_it(fmt):
    data = encode_image(fmt, mode="RGB")
    with pytest.raises(MediaError, match=rf"must be one of png \(got {fmt}\)"):
        check(url(data), formats=("png",))


@pytest.mark.parametrize("fmt", [f for f in media.IMAGE_FORMATS if f not in ("png", "gif")])
def test_auto_convert_reencodes_every_unlisted_format_as_the_first_listed(fmt):
    data = encode_image(fmt, mode="RGB")
    out = check(url(data), formats=("png", "gif"), auto_convert=True)
    assert out.startswith("data:image/png;base64,")
    assert image(out).format == "PNG"
    assert image(out).size == (32, 16)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "PA", "1", "L", "I;16", "I", "CMYK"])
@pytest.mark.parametrize("target", ["jpeg", "png", "webp", "gif", "bmp"])
def test_auto_convert_handles_every_pixel_mode(mode, target):
    source_fmt = "tiff"  # TIFF stores every one of these modes
    data = encode_image(source_fmt, mode=mode)
    out = check(url(data, "image/tiff"), formats=(target,), auto_convert=True)
    assert image(out).format.lower() == target
    assert image(out).size == (32, 16)


def test_rgba_png_becomes_an_rgb_jpeg():
    data = encode_image("png", mode="RGBA")
    out = check(url(data), formats=("jpeg",), auto_convert=True)
    assert out.startswith("data:image/jpeg;base64,")
    assert image(out).mode == "RGB"


def test_cmyk_jpeg_converts_to_png():
    data = encode_image("jpeg", mode="CMYK")
    out = check(url(data, "image/jpeg"), formats=("png",), auto_convert=True)
    assert image(out).format == "PNG"


def test_a_phone_mpo_counts_as_jpeg():
    frames = [Image.new("RGB", (20, 10), "red"), Image.new("RGB", (20, 10), "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    value = url(buffer.getvalue(), "image/jpeg")
    assert check(value, formats=("jpeg",)) == value


def test_an_animated_gif_is_accepted():
    frames = [Image.new("P", (20, 10), i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    value = url(buffer.getvalue(), "image/gif")
    assert check(value, formats=("gif",)) == value


def test_eps_is_never_opened_by_pillow():
    """EPS would run Ghostscript on a client's file; it is refused as unknown instead."""
    data = encode_image("eps", mode="RGB")
    with pytest.raises(MediaError, match=r"is not an image in a supported format \(png\)"):
        check(url(data), formats=("png",))
    with pytest.raises(MediaError, match="is not an image that Pillow or ffmpeg can read"):
        check(url(data), formats=("png",), auto_convert=True)


# --------------------------------------------------------------------------------------------
# images: values in and out


def test_a_good_data_url_comes_back_unchanged():
    value = url(encode_image("png"))
    assert check(value) is value


def test_bare_base64_comes_back_as_a_data_url():
    data = encode_image("webp")
    out = check(base64.b64encode(data).decode())
    assert out == url(data, "image/webp")


def test_a_data_url_with_the_wrong_mime_is_corrected():
    data = encode_image("png")
    assert check(url(data, "image/jpeg")) == url(data, "image/png")
    assert check(url(data, "application/octet-stream")) == url(data, "image/png")


def test_not_an_image_is_refused_listing_the_formats():
    with pytest.raises(
        MediaError, match=r"is not an image in a supported format \(jpeg, png, webp\)"
    ):
        check(url(b"hello, this is text and not a picture"))


def test_garbage_with_auto_convert_is_refused_after_ffmpeg_tries():
    with pytest.raises(MediaError, match="is not an image that Pillow or ffmpeg can read"):
        check(url(b"hello, this is text and not a picture"), auto_convert=True)


def test_max_bytes_refuses_a_big_file():
    data = encode_image("png")
    with pytest.raises(MediaError, match=r"must be at most 50 bytes \(got about \d+\)"):
        check(url(data), max_bytes=50)
    with pytest.raises(
        MediaError, match=rf"must be at most {len(data) - 1} bytes \(got {len(data)}\)"
    ):
        check(url(data), max_bytes=len(data) - 1)


def test_max_bytes_also_bounds_a_converted_file():
    noise = Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="JPEG", quality=5)
    small_jpeg = buffer.getvalue()
    # A tiny noisy JPEG grows well past its own size as a PNG.
    with pytest.raises(MediaError, match="once converted to png"):
        check(url(small_jpeg), formats=("png",), auto_convert=True, max_bytes=len(small_jpeg) + 10)


# --------------------------------------------------------------------------------------------
# images: size limits


def test_size_limits_are_inclusive():
    value = url(encode_image("png", size=(64, 64)))
    assert check(value) is value


@pytest.mark.parametrize("size", [(65, 10), (10, 65), (65, 65)])
def test_over_the_size_limits_is_refused_naming_both(size):
    value = url(encode_image("png", size=size))
    w, h = size
    with pytest.raises(MediaError, match=rf"must be at most 64x64 pixels \(got {w}x{h}\)"):
        check(value)


@pytest.mark.parametrize(
    ("size", "limit", "expected"),
    [
        ((400, 200), (100, 100), (100, 50)),
        ((90, 300), (64, 64), (19, 64)),
        ((50, 50), (64, 32), (32, 32)),
    ],
)
def test_auto_convert_shrinks_keeping_the_aspect_ratio(size, limit, expected):
    value = url(encode_image("png", size=size))
    out = check(value, max_size=limit, auto_convert=True)
    assert image(out).size == expected
    assert image(out).format == "PNG"  # a listed format stays as it is


def test_auto_convert_shrinks_and_converts_at_once():
    value = url(encode_image("bmp", size=(300, 150)), "image/bmp")
    out = check(value, formats=("jpeg",), max_size=(100, 100), auto_convert=True)
    assert image(out).format == "JPEG"
    assert image(out).size == (100, 50)


# --------------------------------------------------------------------------------------------
# images: damaged files and decompression bombs


def _truncated_png() -> bytes:
    noise = Image.frombytes("RGB", (48, 48), random.Random(2).randbytes(48 * 48 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize("auto_convert", [False, True])
def test_a_truncated_image_is_refused_as_damaged(auto_convert):
    with pytest.raises(MediaError, match="is a damaged png file"):
        check(url(_truncated_png()), auto_convert=auto_convert)


def test_a_corrupted_chunk_is_refused_as_damaged():
    data = bytearray(encode_image("png", size=(40, 40)))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # breaks the compressed stream and the chunk's CRC
    with pytest.raises(MediaError, match="damaged"):
        check(url(bytes(data)))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG: tiny on the wire, width*height pixels once decoded."""
    row = b"\x00" + bytes((width + 7) // 8)
    pixels = zlib.compressobj(9)
    body = b"".join(pixels.compress(row) for _ in range(height)) + pixels.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return bomb_png(20000, 20000)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if any pixel data is decoded."""

    def load(self):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize("auto_convert", [False, True])
def test_a_decompression_bomb_is_refused_without_decoding(bomb, no_decoding, auto_convert):
    assert len(bomb) < 200_000  # 400 megapixels in a few kilobytes
    with pytest.raises(MediaError, match="too many pixels to decode safely"):
        check(url(bomb), max_size=(100_000, 100_000), auto_convert=auto_convert)


def test_far_over_the_limits_is_refused_without_decoding(no_decoding):
    value = url(bomb_png(10000, 6000))  # under Pillow's own limit, over what we shrink
    with pytest.raises(MediaError, match=r"is far over 512x512 pixels \(got 10000x6000; "):
        check(value, max_size=(512, 512), auto_convert=True)
    with pytest.raises(MediaError, match=r"must be at most 512x512 pixels \(got 10000x6000\)"):
        check(value, max_size=(512, 512))


def test_a_big_photo_is_shrunk_not_refused():
    photo = encode_image("jpeg", size=(6000, 4000))  # 24 megapixels, a phone's photo
    out = check(url(photo, "image/jpeg"), max_size=(1024, 1024), auto_convert=True)
    assert image(out).size == (1024, 683)
    assert image(out).format == "JPEG"


def test_damaged_files_of_every_format_raise_only_media_errors():
    """Truncations and flipped bytes in every format: a MediaError or a good image, no crash."""
    rng = random.Random(1234)
    for fmt in media.IMAGE_FORMATS:
        good = encode_image(fmt, size=(24, 24), mode="RGB")
        variants = [good[:cut] for cut in (8, 16, 40, len(good) // 2, len(good) - 3)]
        for _ in range(12):
            data = bytearray(good)
            for _ in range(3):
                data[rng.randrange(len(data))] = rng.randrange(256)
            variants.append(bytes(data))
        for data in variants:
            try:
                out = check(url(data), formats=(fmt,), max_bytes=10_000)
            except MediaError:
                continue
            assert out.startswith("data:image/")


# --------------------------------------------------------------------------------------------
# images: formats only ffmpeg reads


@pytest.fixture(scope="module")
def dpx() -> bytes:
    data = ffmpeg_bytes(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=1",
        "-frames:v",
        "1",
        "-f",
        "image2pipe",
        "-vcodec",
        "dpx",
    )
    with pytest.raises(Exception, match="cannot identify"):
        Image.open(io.BytesIO(data))  # the point: Pillow cannot read DPX
    return data


def test_an_ffmpeg_only_format_is_refused_without_auto_convert(dpx):
    with pytest.raises(MediaError, match=r"is not an image in a supported format \(jpeg, png\)"):
        check(url(dpx, "image/x-dpx"), formats=("jpeg", "png"))


@pytest.mark.parametrize("formats", [("png",), ("jpeg", "png"), ("webp",)])
def test_an_ffmpeg_only_format_is_converted_with_auto_convert(dpx, formats):
    out = check(url(dpx, "image/x-dpx"), formats=formats, auto_convert=True)
    fmt = image(out).format.lower()
    assert fmt in formats  # formats[0], or PNG (what ffmpeg decodes to) when PNG is listed
    assert mime_of(out) == f"image/{fmt}"
    assert image(out).size == (64, 48)


def test_an_ffmpeg_only_format_is_shrunk_too(dpx):
    out = check(url(dpx), formats=("png",), max_size=(32, 32), auto_convert=True)
    assert image(out).size == (32, 24)


def test_an_image_that_ffmpeg_cannot_decode_in_time_is_refused(dpx):
    # No ffmpeg starts in a millisecond: the limit is met for sure and the process killed.
    with pytest.raises(MediaError, match=r"took ffmpeg longer than 0.001 s to decode it"):
        check(url(dpx), formats=("png",), auto_convert=True, ffmpeg_timeout_s=0.001)


def test_ffmpeg_does_not_follow_an_image_playlist_to_server_files(tmp_path: Path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode_image("png"))
    for target in (str(secret), f"file:{secret}"):
        playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{target}\n#EXT-X-ENDLIST\n"
        with pytest.raises(MediaError, match="Pillow or ffmpeg"):
            check(url(playlist.encode()), formats=("png",), auto_convert=True)


# --------------------------------------------------------------------------------------------
# audio


@pytest.mark.parametrize(
    ("fmt", "mime"), [("wav", "wav"), ("mp3", "mpeg"), ("ogg", "ogg"), ("flac", "flac")]
)
def test_every_default_audio_format_is_accepted(audio, fmt, mime):
    value = data_url(audio[fmt], f"audio/{mime}")
    assert audio_check(value) is value
    bare = base64.b64encode(audio[fmt]).decode()
    assert audio_check(bare) == value


def test_audio_with_the_wrong_mime_is_corrected(audio):
    assert audio_check(data_url(audio["flac"], "audio/wav")) == data_url(
        audio["flac"], "audio/flac"
    )


@pytest.mark.parametrize("fmt", ["mp3", "ogg", "flac"])
def test_an_unlisted_audio_format_is_refused_naming_it(audio, fmt):
    with pytest.raises(MediaError, match=rf"must be one of wav \(got {fmt}\)"):
        audio_check(data_url(audio[fmt], "audio/x"), formats=("wav",))


@pytest.mark.parametrize("fmt", ["mp3", "ogg", "flac"])
def test_auto_convert_reencodes_audio_as_the_first_format(audio, fmt):
    out = audio_check(data_url(audio[fmt], "audio/x"), formats=("wav",), auto_convert=True)
    assert out.startswith("data:audio/wav;base64,")
    with wave.open(io.BytesIO(base64.b64decode(out.partition(",")[2]))) as clip:
        # A whole WAV header (sizes filled in), readable by the standard library.
        assert abs(clip.getnframes() / clip.getframerate() - 0.25) < 0.1


def test_a_wrong_sample_rate_is_refused_naming_both(audio):
    with pytest.raises(MediaError, match=r"must be sampled at 16000 Hz \(got 44100 Hz\)"):
        audio_check(data_url(audio["wav"], "audio/wav"), sample_rate=16000)


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_auto_convert_resamples(audio, fmt):
    out = audio_check(
        data_url(audio[fmt], "audio/x"), formats=("wav",), sample_rate=16000, auto_convert=True
    )
    with wave.open(io.BytesIO(base64.b64decode(out.partition(",")[2]))) as clip:
        assert clip.getframerate() == 16000
        assert abs(clip.getnframes() / 16000 - 0.25) < 0.1


def test_the_right_sample_rate_passes_unchanged(audio):
    value = data_url(wav_bytes(rate=16000), "audio/wav")
    assert audio_check(value, sample_rate=16000) is value


def test_audio_longer_than_the_limit_is_refused():
    value = data_url(wav_bytes(duration_s=2.0, rate=8000), "audio/wav")
    with pytest.raises(MediaError, match=r"must be at most 1.5 s long \(got 2.0 s\)"):
        audio_check(value, max_duration_s=1.5)
    assert audio_check(value, max_duration_s=2.0) is value


@pytest.mark.parametrize("auto_convert", [False, True])
def test_audio_that_ffmpeg_cannot_read_in_time_is_refused(audio, auto_convert):
    with pytest.raises(MediaError, match=r"took ffmpeg longer than 0.001 s to read it"):
        audio_check(data_url(audio["mp3"], "audio/mpeg"), formats=("wav",),
                    auto_convert=auto_convert, ffmpeg_timeout_s=0.001)


def test_audio_over_max_bytes_is_refused(audio):
    with pytest.raises(MediaError, match="must be at most 1000 bytes"):
        audio_check(data_url(audio["wav"], "audio/wav"), max_bytes=1000)


def test_converted_audio_over_max_bytes_is_refused(audio):
    # Quarter of a second of mp3 is small; the same as wav is not.
    mp3 = audio["mp3"]
    with pytest.raises(MediaError, match="once converted to wav"):
        audio_check(
            data_url(mp3, "audio/mpeg"), formats=("wav",), auto_convert=True, max_bytes=len(mp3) + 1
        )


@pytest.mark.parametrize(
    "payload",
    [b"\x00garbage bytes that are not audio at all" * 20, encode_image("png"), b"RIFF\x00\x00"],
)
@pytest.mark.parametrize("auto_convert", [False, True])
def test_garbage_and_images_are_not_audio(payload, auto_convert):
    with pytest.raises(MediaError, match=r"is not audio that ffmpeg can read|holds no audio"):
        audio_check(data_url(payload, "audio/wav"), auto_convert=auto_convert)


def test_a_video_file_gives_only_its_audio():
    clip = ffmpeg_bytes(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=32x32:rate=5:duration=0.4",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=0.4",
        "-c:v",
        "mjpeg",
        "-c:a",
        "pcm_s16le",
        "-f",
        "matroska",
    )
    out = audio_check(data_url(clip, "video/x-matroska"), formats=("ogg",), auto_convert=True)
    streams = probe(out)["streams"]
    assert [s["codec_type"] for s in streams] == ["audio"]


def test_ffmpeg_does_not_follow_an_audio_playlist_to_server_files(tmp_path: Path):
    """An HLS playlist naming a file on the server must not bring that file back."""
    secret = tmp_path / "secret.mp3"
    secret.write_bytes(sine("mp3"))
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{secret}\n#EXT-X-ENDLIST\n"
    with pytest.raises(MediaError, match="is not audio that ffmpeg can read"):
        audio_check(data_url(playlist.encode(), "audio/x-mpegurl"), auto_convert=True)


def test_non_ascii_is_not_base64():
    with pytest.raises(MediaError, match="is not valid base64"):
        decode_data_url("data:image/png;base64,ÿÿÿÿ", 100)
    with pytest.raises(MediaError, match="is not valid base64"):
        decode_data_url("\x80", 100)
