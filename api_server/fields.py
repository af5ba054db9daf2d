"""Typed input and output fields of an endpoint, and the validation of job inputs against them.

Each `[INPUTS.name]` (and `[OUTPUTS.name]`, `[PROGRESS.OUTPUTS.name]`) table of an endpoint.toml
becomes one frozen dataclass below, chosen by its `type` key. `validate_inputs` is a pure function:
it checks a whole job payload and returns every field's error at once.

Image and audio checks decode and may re-encode media (Pillow, ffmpeg): they block, so the server
runs `validate_inputs` in a thread whenever a payload carries such a value (see `has_media`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import orjson

from api_server import media


class FieldError(ValueError):
    """The value of one field is unacceptable; the message says why and what would pass."""


# Integers travel through orjson, which stores 64 bits at most.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


MEDIA_TYPE_NAMES = frozenset({"image", "image_list", "audio"})  # outputs that may be files


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

    def problems(self) -> list[tuple[str, str]]:
        """What is wrong with the spec itself, as (key, reason) pairs; the loader reports them."""
        return []

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
            raise FieldError(f"must be a string (got {type(value).__name__} {_show(value)})")
        if len(value) > self.max_length:
            if self.auto_convert:
                return value[: self.max_length]
            raise FieldError(f"must be at most {self.max_length} characters (got {len(value)})")
        if len(value) < self.min_length:
            raise FieldError(f"must be at least {self.min_length} characters (got {len(value)})")
        return value

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.min_length < 0:
            found.append(("min_length", f"must be at least 0 (got {self.min_length})"))
        if self.max_length < max(self.min_length, 1):
            found.append(
                ("max_length", f"must be at least 1 and min_length (got {self.max_length})")
            )
        return found


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
        if not self._in_range(number):
            raise FieldError(f"must be {self._range_text()} (got {_show(number)})")
        if self.align and not self._aligned(number):
            nearest = " or ".join(str(n) for n in self._nearest(number))
            raise FieldError(
                f"must be a multiple of {self._cast(self.align)} (got {_show(number)}; "
                f"nearest: {nearest})"
            )
        return number

    def _exact(self, number: float | int) -> bool:
        """Whether alignment can be done in exact integer arithmetic."""
        return isinstance(number, int) and float(self.align or 0).is_integer()

    def _aligned(self, number: float | int) -> bool:
        if self._exact(number):
            return number % int(self.align) == 0  # type: ignore[arg-type]
        ratio = number / self.align  # type: ignore[operator]
        # Past 2**53 every float is a whole multiple as far as floats can tell.
        return abs(ratio) >= 2**53 or math.isclose(ratio, round(ratio))

    def _multiples(self, number: float | int) -> tuple[float | int, float | int]:
        """The multiples of align at or just below and at or just above number."""
        if self._exact(number):
            step = int(self.align)  # type: ignore[arg-type]
            below = number - number % step
            return below, below if below == number else below + step
        ratio = number / self.align  # type: ignore[operator]
        if abs(ratio) >= 2**53:
            return number, number
        return math.floor(ratio) * self.align, math.ceil(ratio) * self.align  # type: ignore[operator]

    def _in_range(self, number: float | int) -> bool:
        return (self.minimum is None or number >= self.minimum) and (
            self.maximum is None or number <= self.maximum
        )

    def _nearest(self, number: float | int) -> list[float | int]:
        """The aligned values next to number that also lie within the bounds."""
        nearest = []
        for candidate in self._multiples(number):
            if self._in_range(candidate) and self._cast(candidate) not in nearest:
                nearest.append(self._cast(candidate))
        return nearest

    def _convert(self, number: float | int) -> float | int:
        if self.align:
            below, above = self._multiples(number)
            number = above if (number - below) * 2 >= above - below else below
            if self.minimum is not None and number < self.minimum:
                number = self._multiples(self.minimum)[1]
            if self.maximum is not None and number > self.maximum:
                number = self._multiples(self.maximum)[0]
        if self.minimum is not None:
            number = max(number, self.minimum)
        if self.maximum is not None:
            number = min(number, self.maximum)
        cast = self._cast(number)
        return cast if self._in_range(cast) else number  # rounding must not leave the bounds

    def problems(self) -> list[tuple[str, str]]:
        found = []
        for key in ("minimum", "maximum", "align"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                found.append((key, f"must be a finite number (got {value})"))
        if found:
            return found
        if self.align is not None and self.align <= 0:
            found.append(("align", f"must be greater than 0 (got {self.align})"))
        if self.minimum is not None and self.maximum is not None:
            if self.minimum > self.maximum:
                found.append(("maximum", f"must be at least minimum {self.minimum}"))
            elif self.align and self._multiples(self.minimum)[1] > self.maximum:
                found.append((
                    "align",
                    f"no multiple of {self.align} lies between {self.minimum} and {self.maximum}",
                ))
        return found

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
                raise FieldError(
                    f"must be an integer (got {value}; nearest: {math.floor(value)} or "
                    f"{math.ceil(value)})"
                )
            return self._cast(value)
        return value

    def check(self, value: Any) -> int:
        number = int(super().check(value))
        if not _INT_MIN <= number <= _INT_MAX:
            raise FieldError(f"must be between {_INT_MIN} and {_INT_MAX} (got {_show(number)})")
        return number

    def _cast(self, number: float) -> int:
        return number if isinstance(number, int) else math.floor(number + 0.5)

    def problems(self) -> list[tuple[str, str]]:
        found = super().problems()
        for key in ("minimum", "maximum", "align"):
            value = getattr(self, key)
            if not found and value is not None and not float(value).is_integer():
                found.append((key, f"must be a whole number for an integer field (got {value})"))
        return found


@dataclass(frozen=True, kw_only=True)
class FloatField(NumberField):
    """`type = "float"`: a finite number."""

    type_name: ClassVar[str] = "float"

    def _number(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(f"must be a number (got {type(value).__name__} {_show(value)})")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise FieldError(f"must be a finite number (got {_show(value)})")
        return number

    def _cast(self, number: float) -> float:
        # 15 digits drop the noise of float steps (3 * 0.1 is 0.3, not 0.30000000000000004).
        return float(f"{number:.15g}")


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
    """`type = "selection"`: one of the `supported` values; with `auto_convert`, another
    value becomes the default (or the first supported value) instead of a 400."""

    type_name: ClassVar[str] = "selection"
    supported: tuple[Any, ...] = ()
    auto_convert: bool = False

    def check(self, value: Any) -> Any:
        if value not in self.supported or isinstance(value, bool | dict | list):
            if self.auto_convert:
                return self.default if self.default is not None else self.supported[0]
            choices = ", ".join(repr(v) for v in self.supported)
            raise FieldError(f"must be one of {choices} (got {_show(value)})")
        return self.supported[self.supported.index(value)]  # 1.0 for 1 gives the 1 listed

    def problems(self) -> list[tuple[str, str]]:
        return [] if self.supported else [("supported", "must list at least one value")]


@dataclass(frozen=True, kw_only=True)
class JsonField(FieldSpec):
    """`type = "json"`: any JSON value of at most `max_bytes` once serialised."""

    type_name: ClassVar[str] = "json"
    max_bytes: int = 65536

    def check(self, value: Any) -> Any:
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError as e:
            raise FieldError(
                f"must be JSON nested at most 254 deep with 64-bit integers ({e})"
            ) from e
        if size > self.max_bytes:
            raise FieldError(f"must be at most {self.max_bytes} bytes of JSON (got {size})")
        return value

    def problems(self) -> list[tuple[str, str]]:
        return _at_least_one(self, "max_bytes")


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
            raise FieldError(
                f"must be a non-empty list of {{role, content}} messages (got {_show(value)})"
            )
        if len(value) > self.max_messages:
            raise FieldError(f"must hold at most {self.max_messages} messages (got {len(value)})")
        total = 0
        for i, message in enumerate(value):
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise FieldError(
                    f"message {i} must be an object with exactly role and content "
                    f"(got {_show(message)})"
                )
            role, content = message["role"], message["content"]
            if role not in self.roles:
                raise FieldError(
                    f"message {i}: role must be one of {', '.join(self.roles)} (got {_show(role)})"
                )
            if not isinstance(content, str):
                raise FieldError(
                    f"message {i}: content must be a string (got {type(content).__name__} "
                    f"{_show(content)})"
                )
            total += len(content)
        if total > self.max_length:
            raise FieldError(
                f"must hold at most {self.max_length} characters of content (got {total})"
            )
        return value

    def problems(self) -> list[tuple[str, str]]:
        found = [] if self.roles else [("roles", "must list at least one role")]
        found += _at_least_one(self, "max_messages", "max_length")
        return found


@dataclass(frozen=True, kw_only=True)
class ImageField(FieldSpec):
    """`type = "image"`: a base64 image, as a data URL (`data:image/png;base64,...`).

    Args:
        formats (tuple[str, ...], default jpeg/png/webp): Pillow format names accepted, lower
            case, from `media.IMAGE_FORMATS`.
        max_width, max_height (int, default 4096): size limits in pixels.
        max_bytes (int, default 20 MiB): the largest decoded file.
        auto_convert (bool, default False): shrink an image over the size limits (keeping its
            aspect ratio) and re-encode other formats as `formats[0]` instead of rejecting;
            formats Pillow cannot read are tried through ffmpeg.
        ffmpeg_timeout_s (float, default 30): the longest ffmpeg may take on one image; a
            slower one is refused.
    """

    type_name: ClassVar[str] = "image"
    binary: ClassVar[bool] = True
    formats: tuple[str, ...] = ("jpeg", "png", "webp")
    max_width: int = 4096
    max_height: int = 4096
    max_bytes: int = 20 * 1024 * 1024
    auto_convert: bool = False
    ffmpeg_timeout_s: float = media.FFMPEG_TIMEOUT_S

    def check(self, value: Any) -> str:
        try:
            return media.check_image(
                value,
                formats=self.formats,
                max_size=(self.max_width, self.max_height),
                max_bytes=self.max_bytes,
                auto_convert=self.auto_convert,
                ffmpeg_timeout_s=self.ffmpeg_timeout_s,
            )
        except media.MediaError as e:
            raise FieldError(str(e)) from e

    def problems(self) -> list[tuple[str, str]]:
        found = _at_least_one(self, "max_width", "max_height", "max_bytes")
        found += _above_zero(self, "ffmpeg_timeout_s")
        unknown = [f for f in self.formats if f not in media.IMAGE_FORMATS]
        if not self.formats or unknown:
            found.append((
                "formats",
                f"must list some of {', '.join(media.IMAGE_FORMATS)} (got {list(self.formats)})",
            ))
        return found


@dataclass(frozen=True, kw_only=True)
class ImageListField(ImageField):
    """`type = "image_list"`: a list of images, each checked as `image`; at most `max_items`."""

    type_name: ClassVar[str] = "image_list"
    max_items: int = 8

    def check(self, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise FieldError(f"must be a list of images (got {type(value).__name__})")
        if len(value) > self.max_items:
            raise FieldError(f"must hold at most {self.max_items} images (got {len(value)})")
        checked = []
        for i, item in enumerate(value):
            try:
                checked.append(super().check(item))
            except FieldError as e:
                raise FieldError(f"image {i}: {e}") from e
        return checked

    def problems(self) -> list[tuple[str, str]]:
        return super().problems() + _at_least_one(self, "max_items")


@dataclass(frozen=True, kw_only=True)
class AudioField(FieldSpec):
    """`type = "audio"`: base64 audio as a data URL, probed (and converted) with ffmpeg.

    Args:
        formats (tuple[str, ...], default wav/mp3/ogg/flac): ffmpeg format names accepted.
        max_duration_s (float, default 600): the longest clip accepted, in seconds.
        max_bytes (int, default 50 MiB): the largest decoded file.
        sample_rate (int | None, default None): with auto_convert, resample to this rate (Hz).
        auto_convert (bool, default False): re-encode other formats as `formats[0]`.
        ffmpeg_timeout_s (float, default 30): the longest each ffprobe or ffmpeg run may take
            on one clip; a slower one is refused.
    """

    type_name: ClassVar[str] = "audio"
    binary: ClassVar[bool] = True
    formats: tuple[str, ...] = ("wav", "mp3", "ogg", "flac")
    max_duration_s: float = 600.0
    max_bytes: int = 50 * 1024 * 1024
    sample_rate: int | None = None
    auto_convert: bool = False
    ffmpeg_timeout_s: float = media.FFMPEG_TIMEOUT_S

    def check(self, value: Any) -> str:
        try:
            return media.check_audio(
                value,
                formats=self.formats,
                max_duration_s=self.max_duration_s,
                max_bytes=self.max_bytes,
                sample_rate=self.sample_rate,
                auto_convert=self.auto_convert,
                ffmpeg_timeout_s=self.ffmpeg_timeout_s,
            )
        except media.MediaError as e:
            raise FieldError(str(e)) from e

    def problems(self) -> list[tuple[str, str]]:
        found = _at_least_one(self, "max_bytes")
        if not self.formats:
            found.append(("formats", "must list at least one ffmpeg format name"))
        found += _above_zero(self, "max_duration_s", "ffmpeg_timeout_s")
        if self.sample_rate is not None and self.sample_rate <= 0:
            found.append(("sample_rate", f"must be greater than 0 (got {self.sample_rate})"))
        return found


def _at_least_one(spec: FieldSpec, *keys: str) -> list[tuple[str, str]]:
    """(key, reason) for each of the spec's limits that is below 1."""
    low = [k for k in keys if getattr(spec, k) < 1]
    return [(k, f"must be at least 1 (got {getattr(spec, k)})") for k in low]


def _above_zero(spec: FieldSpec, *keys: str) -> list[tuple[str, str]]:
    """(key, reason) for each of the spec's limits that is not above 0."""
    low = [k for k in keys if not getattr(spec, k) > 0]
    return [(k, f"must be greater than 0 (got {getattr(spec, k)})") for k in low]


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


def validate_inputs(
    specs: Mapping[str, FieldSpec], payload: Any, require_any: Sequence[str] = ()
) -> Validated:
    """Checks a job's inputs against the endpoint's fields.

    Args:
        specs (Mapping[str, FieldSpec]): the endpoint's `[INPUTS]`, by name.
        payload (Any): the `inputs` object the client sent.
        require_any (Sequence[str]): fields of which at least one must be given (not missing,
            null or empty); when none is, each of them gets the error.

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
    given = [n for n in require_any if n in errors or values.get(n) not in (None, "", [])]
    if require_any and not given:
        for name in require_any:
            errors.setdefault(name, f"give at least one of: {', '.join(require_any)}")
    return Validated(values=values, errors=errors) if not errors else Validated(errors=errors)
