"""Typed input and output fields of an endpoint, and the validation of job inputs against them.

Each `[INPUTS.name]` (and `[OUTPUTS.name]`, `[PROGRESS.OUTPUTS.name]`) table of an endpoint.toml
becomes one frozen dataclass below, chosen by its `type` key. `validate_inputs` is a pure function:
it checks a whole job payload and returns every field's error at once.

Image and audio checks decode and may re-encode media (Pillow, ffmpeg): they block, so the server
runs `validate_inputs` in a thread whenever a payload carries such a value (see `has_media`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import orjson

from api_server import media


class FieldError(ValueError):
    """The value of one field is unacceptable; the message says why and what would pass."""


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """What every field type shares.

    Args:
        name (str): the field's key in the job's inputs or outputs.
        description (str, optional, default ""): shown in the schema and on the demo page.
        label (str, optional, default ""): a short human name for forms; the key when empty.
        required (bool | None, optional, default None): None means required unless a default
            is given.
        default (Any, optional, default None): used when the client sends nothing (or null).
    """

    type_name: ClassVar[str]
    binary: ClassVar[bool] = False

    name: str
    description: str = ""
    label: str = ""
    required: bool | None = None
    default: Any = None

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None

    def check(self, value: Any) -> Any:
        """Returns the accepted (possibly converted) value or raises FieldError."""
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        """The field as JSON for `GET /api/v1/endpoints/{name}`."""
        out: dict[str, Any] = {"type": self.type_name}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and value not in (None, "", ()):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        out["required"] = self.is_required
        return out


@dataclass(frozen=True, kw_only=True)
class StringField(FieldSpec):
    """`type = "string"`: text of at most `max_length` characters (auto_convert truncates)."""

    type_name: ClassVar[str] = "string"
    min_length: int = 0
    max_length: int = 65536
    auto_convert: bool = False

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise FieldError(f"must be a string (got {type(value).__name__})")
        if len(value) > self.max_length:
            if self.auto_convert:
                return value[: self.max_length]
            raise FieldError(f"must be at most {self.max_length} characters (got {len(value)})")
        if len(value) < self.min_length:
            raise FieldError(f"must be at least {self.min_length} characters (got {len(value)})")
        return value


@dataclass(frozen=True, kw_only=True)
class NumberField(FieldSpec):
    """Shared by integer and float: bounds, alignment and clamping.

    Args:
        minimum, maximum (optional): inclusive bounds.
        align (optional): the value must be a multiple of this (e.g. 16 for image sizes).
        auto_convert (bool, default False): clamp into bounds and round to `align` instead of
            rejecting.
    """

    minimum: float | None = None
    maximum: float | None = None
    align: float | None = None
    auto_convert: bool = False

    def _number(self, value: Any) -> float | int:
        raise NotImplementedError

    def check(self, value: Any) -> float | int:
        number = self._number(value)
        if self.auto_convert:
            return self._convert(number)
        low_ok = self.minimum is None or number >= self.minimum
        high_ok = self.maximum is None or number <= self.maximum
        if not (low_ok and high_ok):
            raise FieldError(f"must be {self._range_text()} (got {_show(number)})")
        if self.align and not math.isclose(number / self.align, round(number / self.align)):
            below = self._cast(math.floor(number / self.align) * self.align)
            above = self._cast(math.ceil(number / self.align) * self.align)
            raise FieldError(
                f"must be a multiple of {self._cast(self.align)} (got {_show(number)}; "
                f"nearest: {below} or {above})"
            )
        return number

    def _convert(self, number: float | int) -> float | int:
        if self.align:
            number = round(number / self.align) * self.align
            if self.minimum is not None and number < self.minimum:
                number = math.ceil(self.minimum / self.align) * self.align
            if self.maximum is not None and number > self.maximum:
                number = math.floor(self.maximum / self.align) * self.align
        if self.minimum is not None:
            number = max(number, self.minimum)
        if self.maximum is not None:
            number = min(number, self.maximum)
        return self._cast(number)

    def _cast(self, number: float) -> float | int:
        return number

    def _range_text(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"between {self._cast(self.minimum)} and {self._cast(self.maximum)}"
        if self.minimum is not None:
            return f"at least {self._cast(self.minimum)}"
        return f"at most {self._cast(self.maximum)}"  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class IntegerField(NumberField):
    """`type = "integer"`: a whole number (2.0 is taken as 2; 2.5 only with auto_convert)."""

    type_name: ClassVar[str] = "integer"

    def _number(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(f"must be an integer (got {type(value).__name__} {_show(value)})")
        if isinstance(value, float):
            if not math.isfinite(value):
                raise FieldError(f"must be an integer (got {value})")
            if not value.is_integer() and not self.auto_convert:
                raise FieldError(f"must be an integer (got {value})")
            return round(value)
        return value

    def _cast(self, number: float) -> int:
        return round(number)


@dataclass(frozen=True, kw_only=True)
class FloatField(NumberField):
    """`type = "float"`: a finite number."""

    type_name: ClassVar[str] = "float"

    def _number(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(f"must be a number (got {type(value).__name__} {_show(value)})")
        if not math.isfinite(value):
            raise FieldError(f"must be a finite number (got {value})")
        return float(value)

    def _cast(self, number: float) -> float:
        return float(number)


@dataclass(frozen=True, kw_only=True)
class BooleanField(FieldSpec):
    """`type = "boolean"`: JSON true or false."""

    type_name: ClassVar[str] = "boolean"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise FieldError(f"must be true or false (got {_show(value)})")
        return value


@dataclass(frozen=True, kw_only=True)
class SelectionField(FieldSpec):
    """`type = "selection"`: one of the `supported` values."""

    type_name: ClassVar[str] = "selection"
    supported: tuple[Any, ...] = ()

    def check(self, value: Any) -> Any:
        if value not in self.supported or isinstance(value, bool | dict | list):
            choices = ", ".join(repr(v) for v in self.supported)
            raise FieldError(f"must be one of {choices} (got {_show(value)})")
        return value


@dataclass(frozen=True, kw_only=True)
class JsonField(FieldSpec):
    """`type = "json"`: any JSON value of at most `max_bytes` once serialised."""

    type_name: ClassVar[str] = "json"
    max_bytes: int = 65536

    def check(self, value: Any) -> Any:
        size = len(orjson.dumps(value))
        if size > self.max_bytes:
            raise FieldError(f"must be at most {self.max_bytes} bytes of JSON (got {size})")
        return value


@dataclass(frozen=True, kw_only=True)
class ChatContextField(FieldSpec):
    """`type = "chat_context"`: a list of `{role, content}` messages.

    Args:
        roles (tuple[str, ...], default system/user/assistant): the roles accepted.
        max_messages (int, default 256): the longest conversation accepted.
        max_length (int, default 131072): the most characters of content, all messages together.
    """

    type_name: ClassVar[str] = "chat_context"
    roles: tuple[str, ...] = ("system", "user", "assistant")
    max_messages: int = 256
    max_length: int = 131072

    def check(self, value: Any) -> list[dict[str, str]]:
        if not isinstance(value, list) or not value:
            raise FieldError("must be a non-empty list of {role, content} messages")
        if len(value) > self.max_messages:
            raise FieldError(f"must hold at most {self.max_messages} messages (got {len(value)})")
        total = 0
        for i, message in enumerate(value):
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise FieldError(f"message {i} must be an object with exactly role and content")
            role, content = message["role"], message["content"]
            if role not in self.roles:
                raise FieldError(
                    f"message {i}: role must be one of {', '.join(self.roles)} (got {_show(role)})"
                )
            if not isinstance(content, str):
                raise FieldError(f"message {i}: content must be a string")
            total += len(content)
        if total > self.max_length:
            raise FieldError(
                f"must hold at most {self.max_length} characters of content (got {total})"
            )
        return value


@dataclass(frozen=True, kw_only=True)
class ImageField(FieldSpec):
    """`type = "image"`: a base64 image, as a data URL (`data:image/png;base64,...`).

    Args:
        formats (tuple[str, ...], default jpeg/png/webp): Pillow format names accepted.
        max_width, max_height (int, default 4096): size limits in pixels.
        max_bytes (int, default 20 MiB): the largest decoded file.
        auto_convert (bool, default False): shrink an image over the size limits (keeping its
            aspect ratio) and re-encode other formats as `formats[0]` instead of rejecting;
            formats Pillow cannot read are tried through ffmpeg.
    """

    type_name: ClassVar[str] = "image"
    binary: ClassVar[bool] = True
    formats: tuple[str, ...] = ("jpeg", "png", "webp")
    max_width: int = 4096
    max_height: int = 4096
    max_bytes: int = 20 * 1024 * 1024
    auto_convert: bool = False

    def check(self, value: Any) -> str:
        try:
            return media.check_image(
                value,
                formats=self.formats,
                max_size=(self.max_width, self.max_height),
                max_bytes=self.max_bytes,
                auto_convert=self.auto_convert,
            )
        except media.MediaError as e:
            raise FieldError(str(e)) from e


@dataclass(frozen=True, kw_only=True)
class ImageListField(ImageField):
    """`type = "image_list"`: a list of images, each checked as `image`; at most `max_items`."""

    type_name: ClassVar[str] = "image_list"
    max_items: int = 8

    def check(self, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise FieldError("must be a list of images")
        if len(value) > self.max_items:
            raise FieldError(f"must hold at most {self.max_items} images (got {len(value)})")
        checked = []
        for i, item in enumerate(value):
            try:
                checked.append(super().check(item))
            except FieldError as e:
                raise FieldError(f"image {i}: {e}") from e
        return checked


@dataclass(frozen=True, kw_only=True)
class AudioField(FieldSpec):
    """`type = "audio"`: base64 audio as a data URL, probed (and converted) with ffmpeg.

    Args:
        formats (tuple[str, ...], default wav/mp3/ogg/flac): ffmpeg format names accepted.
        max_duration_s (float, default 600): the longest clip accepted, in seconds.
        max_bytes (int, default 50 MiB): the largest decoded file.
        sample_rate (int | None, default None): with auto_convert, resample to this rate (Hz).
        auto_convert (bool, default False): re-encode other formats as `formats[0]`.
    """

    type_name: ClassVar[str] = "audio"
    binary: ClassVar[bool] = True
    formats: tuple[str, ...] = ("wav", "mp3", "ogg", "flac")
    max_duration_s: float = 600.0
    max_bytes: int = 50 * 1024 * 1024
    sample_rate: int | None = None
    auto_convert: bool = False

    def check(self, value: Any) -> str:
        try:
            return media.check_audio(
                value,
                formats=self.formats,
                max_duration_s=self.max_duration_s,
                max_bytes=self.max_bytes,
                sample_rate=self.sample_rate,
                auto_convert=self.auto_convert,
            )
        except media.MediaError as e:
            raise FieldError(str(e)) from e


FIELD_TYPES: Mapping[str, type[FieldSpec]] = {
    cls.type_name: cls
    for cls in (
        StringField,
        IntegerField,
        FloatField,
        BooleanField,
        SelectionField,
        JsonField,
        ChatContextField,
        ImageField,
        ImageListField,
        AudioField,
    )
}


@dataclass(frozen=True)
class Validated:
    """The outcome of `validate_inputs`: accepted values, or one message per bad field."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def has_media(specs: Mapping[str, FieldSpec], payload: Mapping[str, Any]) -> bool:
    """True when the payload carries a value that needs blocking media work to check."""
    return any(payload.get(name) is not None and spec.binary for name, spec in specs.items())


def validate_inputs(specs: Mapping[str, FieldSpec], payload: Any) -> Validated:
    """Checks a job's inputs against the endpoint's fields.

    Args:
        specs (Mapping[str, FieldSpec]): the endpoint's `[INPUTS]`, by name.
        payload (Any): the `inputs` object the client sent.

    Returns:
        Validated: every field's value (defaults filled in, auto_convert applied, optional
        fields without a default set to None) or, when anything is wrong, every error.
    """
    if not isinstance(payload, dict):
        return Validated(errors={"inputs": "must be a JSON object of field values"})
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in payload.keys() - specs.keys():
        errors[name] = f"unknown field; this endpoint accepts: {', '.join(specs) or 'nothing'}"
    for name, spec in specs.items():
        value = payload.get(name)
        if value is None:
            if spec.default is not None:
                values[name] = spec.default
            elif spec.is_required:
                errors[name] = "is required"
            else:
                values[name] = None
            continue
        try:
            values[name] = spec.check(value)
        except FieldError as e:
            errors[name] = str(e)
    return Validated(values=values, errors=errors) if not errors else Validated(errors=errors)
