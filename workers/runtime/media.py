"""Media outputs: what a model returns for an image or a sound, and how it leaves as a file.

A model puts a `MediaFile` where an output's value goes (or as an item of a list-valued output);
the runner uploads each one to the server as raw bytes (`jobhive.files.upload_file`) and posts
the job's result with the server's file reference in its place. No base64, no megabytes of JSON.

    return {"images": [MediaFile(png, "image/png") for png in pngs], "seeds": seeds}
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from typing import Any

from jobhive.protocol import FILE_MEDIA_TYPES


@dataclass(frozen=True, eq=False)
class MediaFile:
    """One encoded file of a job's outputs.

    Args:
        data (bytes): the encoded bytes (a PNG, a WAV...).
        media_type (str): its media type, one of jobhive.protocol.FILE_MEDIA_TYPES.
    """

    data: bytes
    media_type: str

    def __post_init__(self) -> None:
        if self.media_type not in FILE_MEDIA_TYPES:
            raise ValueError(f"media type {self.media_type!r} cannot travel as a file "
                             f"(one of {', '.join(sorted(FILE_MEDIA_TYPES))})")

    @property
    def suffix(self) -> str:
        """The file name's extension for its media type (".png"), "" when none is known."""
        return {"image/jpeg": ".jpg", "audio/mpeg": ".mp3"}.get(
            self.media_type, mimetypes.guess_extension(self.media_type) or "")


def take_files(outputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, MediaFile]]:
    """Splits a job's outputs into what travels as JSON and the files to upload.

    Each MediaFile, at the top level or in a top-level list, is replaced with the reference the
    server will fill in (`{"file": NAME}`), named after its output key: `image.png`,
    `images-0.png`, `images-1.png`.

    Returns:
        tuple[dict[str, Any], dict[str, MediaFile]]: the outputs with references, and the files
        by name (empty when there are none: the outputs are returned as they are).

    Raises:
        ValueError: two media outputs would have the same file name.
    """
    files: dict[str, MediaFile] = {}

    def named(value: Any, stem: str) -> Any:
        if not isinstance(value, MediaFile):
            return value
        name = f"{stem}{value.suffix}"
        if name in files:  # e.g. an output "images-0" beside the list "images"
            raise ValueError(f"two media outputs would both be the file {name!r}")
        files[name] = value
        return {"file": name}

    kept = {
        key: [named(v, f"{key}-{i}") for i, v in enumerate(value)] if isinstance(value, list)
        else named(value, key)
        for key, value in outputs.items()
    }
    return (kept, files) if files else (outputs, files)
