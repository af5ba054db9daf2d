"""api_server.fields: every field type's rules, and validate_inputs over a whole payload."""

from __future__ import annotations

import base64
import io
import math
import re

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from api_server.fields import (
    FIELD_TYPES,
    AudioField,
    BooleanField,
    ChatContextField,
    FieldError,
    FloatField,
    ImageField,
    ImageListField,
    IntegerField,
    JsonField,
    SelectionField,
    StringField,
    has_media,
    validate_inputs,
)


def rejects(spec, value, message: str) -> None:
    """spec.check(value) raises FieldError and its text holds `message` word for word."""
    with pytest.raises(FieldError) as caught:
        spec.check(value)
    assert message in str(caught.value), f"{message!r} not in {str(caught.value)!r}"


def png_url(size: tuple[int, int] = (8, 8), fmt: str = "PNG", mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, 0).save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def test_every_documented_type_is_registered():
    assert set(FIELD_TYPES) == {
        "string",
        "integer",
        "float",
        "boolean",
        "selection",
        "json",
        "chat_context",
        "image",
        "image_list",
        "audio",
    }


# --------------------------------------------------------------------------------------------
# string


def test_string_accepts_text_up_to_max_length():
    spec = StringField(name="s", max_length=5)
    assert spec.check("") == ""
    assert spec.check("héllo") == "héllo"
    rejects(spec, "héllo!", "must be at most 5 characters (got 6)")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5, "must be a string (got int 5)"),
        (True, "must be a string (got bool True)"),
        (["a"], "must be a string (got list ['a'])"),
        ({"a": 1}, "must be a string (got dict {'a': 1})"),
    ],
)
def test_string_rejects_other_types_naming_the_value(value, message):
    rejects(StringField(name="s"), value, message)


def test_string_min_length_and_auto_convert_truncation():
    spec = StringField(name="s", min_length=2, max_length=4, auto_convert=True)
    assert spec.check("abcdefg") == "abcd"
    rejects(spec, "a", "must be at least 2 characters (got 1)")


def test_string_spec_problems():
    assert StringField(name="s").problems() == []
    assert [k for k, _ in StringField(name="s", min_length=-1).problems()] == ["min_length"]
    assert [k for k, _ in StringField(name="s", max_length=0).problems()] == ["max_length"]
    assert [k for k, _ in StringField(name="s", min_length=5, max_length=3).problems()] == [
        "max_length"
    ]


# --------------------------------------------------------------------------------------------
# integer


def test_integer_accepts_whole_numbers_and_whole_floats():
    spec = IntegerField(name="n")
    assert spec.check(7) == 7
    assert spec.check(-3) == -3
    value = spec.check(2.0)
    assert value == 2
    assert type(value) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2.5, "must be an integer (got 2.5; nearest: 2 or 3)"),
        (True, "must be an integer (got bool True)"),
        (False, "must be an integer (got bool False)"),
        ("5", "must be an integer (got str '5')"),
        ([5], "must be an integer (got list [5])"),
        (math.nan, "must be an integer (got nan)"),
        (math.inf, "must be an integer (got inf)"),
        (-math.inf, "must be an integer (got -inf)"),
    ],
)
def test_integer_rejects_non_integers_naming_the_value(value, message):
    rejects(IntegerField(name="n"), value, message)


def test_integer_bounds_are_inclusive_and_named():
    spec = IntegerField(name="n", minimum=1, maximum=100)
    assert spec.check(1) == 1
    assert spec.check(100) == 100
    rejects(spec, 0, "must be between 1 and 100 (got 0)")
    rejects(spec, 101, "must be between 1 and 100 (got 101)")
    rejects(IntegerField(name="n", minimum=1), -5, "must be at least 1 (got -5)")
    rejects(IntegerField(name="n", maximum=9), 10, "must be at most 9 (got 10)")


def test_integer_auto_convert_clamps_and_rounds():
    spec = IntegerField(name="n", minimum=1, maximum=100, auto_convert=True)
    assert spec.check(-5) == 1
    assert spec.check(1000) == 100
    assert spec.check(1e30) == 100  # what a JSON 1000000000000000000000000000000 parses to
    assert spec.check(2.4) == 2
    assert spec.check(2.5) == 3
    assert type(spec.check(2.5)) is int
    rejects(spec, math.nan, "must be an integer (got nan)")
    rejects(spec, True, "must be an integer (got bool True)")


def test_integer_align_names_the_nearest_multiples():
    spec = IntegerField(name="width", minimum=16, maximum=1024, align=16)
    assert spec.check(64) == 64
    rejects(spec, 70, "must be a multiple of 16 (got 70; nearest: 64 or 80)")
    rejects(spec, 2.0 * 35, "must be a multiple of 16 (got 70; nearest: 64 or 80)")


def test_integer_align_offers_only_nearest_values_within_the_bounds():
    spec = IntegerField(name="n", minimum=10, maximum=40, align=16)
    rejects(spec, 12, "(got 12; nearest: 16)")  # 0 is below the minimum
    rejects(spec, 36, "(got 36; nearest: 32)")  # 48 is above the maximum


def test_integer_align_is_exact_for_big_numbers():
    spec = IntegerField(name="n", align=16)
    assert spec.check(16 * 10**15) == 16 * 10**15
    rejects(spec, 16 * 10**15 + 1, f"nearest: {16 * 10**15} or {16 * 10**15 + 16}")


def test_integer_auto_convert_aligns_within_bounds():
    spec = IntegerField(name="n", minimum=16, maximum=1020, align=16, auto_convert=True)
    assert spec.check(70) == 64
    assert spec.check(72) == 80  # halfway rounds up
    assert spec.check(3) == 16  # below the minimum: the lowest multiple within bounds
    assert spec.check(1019) == 1008  # 1024 would be over the maximum
    assert spec.check(10**6) == 1008
    assert spec.check(100.7) == 96


def test_integer_outside_64_bits_is_refused():
    spec = IntegerField(name="n")
    assert spec.check(2**63 - 1) == 2**63 - 1
    assert spec.check(-(2**63)) == -(2**63)
    rejects(spec, 2**63, f"must be between {-(2**63)} and {2**63 - 1} (got 92233720368547")
    rejects(spec, 1e30, f"must be between {-(2**63)} and {2**63 - 1}")
    rejects(spec, 10**400, f"must be between {-(2**63)} and")
    rejects(IntegerField(name="n", align=16), 10**400 + 1, "must be a multiple of 16")


def test_integer_spec_problems():
    assert IntegerField(name="n", minimum=0, maximum=10, align=2).problems() == []
    assert IntegerField(name="n", minimum=5, maximum=1).problems() == [
        ("maximum", "must be at least minimum 5")
    ]
    assert [k for k, _ in IntegerField(name="n", align=0).problems()] == ["align"]
    assert [k for k, _ in IntegerField(name="n", align=-8).problems()] == ["align"]
    assert [k for k, _ in IntegerField(name="n", minimum=math.nan).problems()] == ["minimum"]
    assert [k for k, _ in IntegerField(name="n", maximum=math.inf).problems()] == ["maximum"]
    assert IntegerField(name="n", minimum=17, maximum=31, align=16).problems() == [
        ("align", "no multiple of 16 lies between 17 and 31")
    ]


# --------------------------------------------------------------------------------------------
# float


def test_float_accepts_numbers_and_returns_floats():
    spec = FloatField(name="x", minimum=0, maximum=1)
    assert spec.check(0) == 0.0
    assert type(spec.check(1)) is float
    assert spec.check(0.5) == 0.5
    rejects(spec, 1.5, "must be between 0.0 and 1.0 (got 1.5)")
    rejects(spec, -0.1, "must be between 0.0 and 1.0 (got -0.1)")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "must be a finite number (got nan)"),
        (math.inf, "must be a finite number (got inf)"),
        (-math.inf, "must be a finite number (got -inf)"),
        (10**400, "must be a finite number (got 1000000000"),
        (True, "must be a number (got bool True)"),
        ("0.5", "must be a number (got str '0.5')"),
        (None, "must be a number (got NoneType None)"),
    ],
)
def test_float_rejects_non_finite_and_non_numbers(value, message):
    rejects(FloatField(name="x"), value, message)


def test_float_auto_convert_clamps():
    spec = FloatField(name="x", minimum=-1.5, maximum=2.5, auto_convert=True)
    assert spec.check(-7) == -1.5
    assert spec.check(1e300) == 2.5
    assert spec.check(0.25) == 0.25
    rejects(spec, math.inf, "must be a finite number (got inf)")


def test_float_align_tolerates_float_noise_and_names_clean_neighbours():
    spec = FloatField(name="x", align=0.1)
    assert spec.check(0.3) == 0.3  # 0.3 / 0.1 is 2.9999999999999996
    rejects(spec, 0.25, "must be a multiple of 0.1 (got 0.25; nearest: 0.2 or 0.3)")
    quarter = FloatField(name="x", minimum=0, maximum=1, align=0.25)
    rejects(quarter, 0.9, "must be a multiple of 0.25 (got 0.9; nearest: 0.75 or 1.0)")
    rejects(quarter, 0.1, "(got 0.1; nearest: 0.0 or 0.25)")


def test_float_auto_convert_aligns_without_float_noise():
    spec = FloatField(name="x", minimum=0, maximum=1, align=0.1, auto_convert=True)
    assert spec.check(0.26) == 0.3
    assert spec.check(0.71) == 0.7
    assert spec.check(5) == 1.0
    assert spec.check(-5) == 0.0


def test_float_align_with_huge_values_does_not_overflow():
    spec = FloatField(name="x", align=1e-300)
    assert spec.check(1e300) == 1e300
    assert FloatField(name="x", align=1e-300, auto_convert=True).check(1e300) == 1e300


# --------------------------------------------------------------------------------------------
# boolean and selection


def test_boolean_takes_only_true_and_false():
    spec = BooleanField(name="b")
    assert spec.check(True) is True
    assert spec.check(False) is False
    for value, shown in ((1, "1"), (0, "0"), ("true", "'true'"), ([], "[]")):
        rejects(spec, value, f"must be true or false (got {shown})")


def test_selection_takes_a_listed_value():
    spec = SelectionField(name="sampler", supported=("euler", "dpm", 2))
    assert spec.check("euler") == "euler"
    assert spec.check(2) == 2
    assert type(spec.check(2.0)) is int  # the value listed, not the float sent
    rejects(spec, "ddim", "must be one of 'euler', 'dpm', 2 (got 'ddim')")
    rejects(spec, "EULER", "(got 'EULER')")


@pytest.mark.parametrize("value", [True, ["euler"], {"euler": 1}, None, 1])
def test_selection_rejects_what_is_not_listed(value):
    rejects(SelectionField(name="s", supported=("euler", 2, 1.5)), value, "must be one of")


def test_selection_does_not_take_true_for_one():
    rejects(SelectionField(name="s", supported=(0, 1)), True, "must be one of 0, 1 (got True)")


def test_selection_needs_choices():
    assert SelectionField(name="s").problems() == [("supported", "must list at least one value")]


# --------------------------------------------------------------------------------------------
# json


@pytest.mark.parametrize("value", [{"a": [1, 2.5, None, True]}, [], "text", 0, False])
def test_json_takes_any_json_value(value):
    assert JsonField(name="j").check(value) == value


def test_json_max_bytes_counts_the_serialised_form():
    spec = JsonField(name="j", max_bytes=10)
    assert spec.check({"a": 1234}) == {"a": 1234}  # {"a":1234}: 10 bytes
    rejects(spec, {"a": "x" * 20}, "must be at most 10 bytes of JSON (got 28)")


def test_json_that_cannot_be_stored_is_refused():
    deep: list = []
    for _ in range(300):
        deep = [deep]
    rejects(JsonField(name="j"), deep, "must be JSON nested at most 254 deep")
    rejects(JsonField(name="j"), {"n": 2**70}, "64-bit integers")


# --------------------------------------------------------------------------------------------
# chat_context


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
]


def test_chat_context_accepts_a_conversation():
    assert ChatContextField(name="c").check(CHAT) == CHAT


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "must be a non-empty list of {role, content} messages (got [])"),
        ("hi", "must be a non-empty list of {role, content} messages (got 'hi')"),
        ({"role": "user"}, "must be a non-empty list of {role, content} messages (got {'role'"),
        (["hi"], "message 0 must be an object with exactly role and content (got 'hi')"),
        ([{"role": "user"}], "message 0 must be an object with exactly role and content"),
        (
            [{"role": "user", "content": "a", "name": "x"}],
            "message 0 must be an object with exactly role and content",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}],
            "message 1: role must be one of system, user, assistant (got 'robot')",
        ),
        ([{"role": ["user"], "content": "a"}], "message 0: role must be one of"),
        ([{"role": "user", "content": 5}], "message 0: content must be a string (got int 5)"),
        ([{"role": "user", "content": None}], "message 0: content must be a string (got NoneType"),
    ],
)
def test_chat_context_rejects_bad_shapes_saying_which_message(value, message):
    rejects(ChatContextField(name="c"), value, message)


def test_chat_context_limits_and_roles():
    spec = ChatContextField(name="c", roles=("user", "bot"), max_messages=2, max_length=5)
    assert spec.check([{"role": "bot", "content": "12345"}]) == [
        {"role": "bot", "content": "12345"}
    ]
    rejects(spec, CHAT[1:2] * 3, "must hold at most 2 messages (got 3)")
    rejects(
        spec,
        [{"role": "user", "content": "123"}, {"role": "bot", "content": "456"}],
        "must hold at most 5 characters of content (got 6)",
    )
    rejects(spec, CHAT[:1], "role must be one of user, bot (got 'system')")


def test_chat_context_spec_problems():
    assert ChatContextField(name="c").problems() == []
    keys = [k for k, _ in ChatContextField(name="c", roles=(), max_messages=0).problems()]
    assert keys == ["roles", "max_messages"]


# --------------------------------------------------------------------------------------------
# image, image_list, audio (media.py has the details; here: the field wrappers)


def test_image_field_returns_the_checked_value_and_wraps_errors():
    spec = ImageField(name="img", max_width=16, max_height=16)
    value = png_url()
    assert spec.check(value) == value
    rejects(spec, png_url((17, 8)), "must be at most 16x16 pixels (got 17x8)")
    rejects(spec, 42, "must be a base64 string or data URL (got int)")
    rejects(spec, "data:image/png;base64,@@@@", "is not valid base64")


def test_image_field_auto_convert_converts():
    spec = ImageField(name="img", formats=("jpeg",), max_width=4, max_height=4, auto_convert=True)
    out = spec.check(png_url((8, 4), mode="RGBA"))
    assert out.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(out.partition(",")[2]))).size == (4, 2)


def test_image_field_spec_problems():
    assert ImageField(name="i").problems() == []
    assert ImageField(name="i", formats=()).problems()[0][0] == "formats"
    assert ImageField(name="i", formats=("png", "svg")).problems()[0][0] == "formats"
    assert ImageField(name="i", formats=("PNG",)).problems()[0][0] == "formats"
    assert [k for k, _ in ImageField(name="i", max_width=0, max_bytes=0).problems()] == [
        "max_width",
        "max_bytes",
    ]
    assert [k for k, _ in ImageListField(name="i", max_items=0).problems()] == ["max_items"]


def test_image_list_checks_every_image_and_names_the_bad_one():
    spec = ImageListField(name="imgs", max_items=3, max_width=16, max_height=16)
    good = png_url()
    assert spec.check([]) == []
    assert spec.check([good, good]) == [good, good]
    rejects(spec, [good, png_url((20, 20))], "image 1: must be at most 16x16 pixels (got 20x20)")
    rejects(spec, [good, "nope!"], "image 1: is not valid base64")
    rejects(spec, [good] * 4, "must hold at most 3 images (got 4)")
    rejects(spec, good, "must be a list of images (got str)")


def test_image_list_auto_convert_converts_each():
    spec = ImageListField(name="imgs", formats=("png",), auto_convert=True)
    out = spec.check([png_url(fmt="BMP"), png_url(fmt="GIF", mode="P")])
    assert all(v.startswith("data:image/png;base64,") for v in out)


def test_audio_field_wraps_media_errors():
    spec = AudioField(name="a")
    rejects(
        spec,
        "data:audio/wav;base64," + base64.b64encode(b"noise" * 50).decode(),
        "is not audio that ffmpeg can read",
    )
    rejects(spec, 1.5, "must be a base64 string or data URL (got float)")


def test_audio_field_spec_problems():
    assert AudioField(name="a").problems() == []
    keys = [
        k for k, _ in AudioField(name="a", formats=(), max_duration_s=0, sample_rate=0).problems()
    ]
    assert keys == ["formats", "max_duration_s", "sample_rate"]


# --------------------------------------------------------------------------------------------
# schema


def test_schema_shows_settings_and_requiredness():
    spec = IntegerField(name="steps", minimum=1, maximum=50, default=20, description="Steps")
    assert spec.schema() == {
        "type": "integer",
        "description": "Steps",
        "default": 20,
        "minimum": 1,
        "maximum": 50,
        "auto_convert": False,
        "required": False,
    }
    assert SelectionField(name="s", supported=("a", "b")).schema()["supported"] == ["a", "b"]
    assert StringField(name="s").schema()["required"] is True
    assert StringField(name="s", required=False).schema()["required"] is False


# --------------------------------------------------------------------------------------------
# validate_inputs


SPECS = {
    "prompt": StringField(name="prompt", max_length=20),
    "steps": IntegerField(name="steps", minimum=1, maximum=50, default=20),
    "width": IntegerField(name="width", minimum=64, maximum=1024, align=64, default=512),
    "cfg": FloatField(name="cfg", minimum=0, maximum=20, default=7.5),
    "seed": IntegerField(name="seed", required=False),
    "hires": BooleanField(name="hires", default=False),
    "sampler": SelectionField(name="sampler", supported=("euler", "dpm"), default="euler"),
    "extra": JsonField(name="extra", required=False, max_bytes=100),
    "chat": ChatContextField(name="chat", required=False),
    "image": ImageField(name="image", required=False, max_width=64, max_height=64),
    "images": ImageListField(name="images", required=False, max_items=2),
    "audio": AudioField(name="audio", required=False),
}


def test_defaults_fill_in_and_optional_fields_are_none():
    result = validate_inputs(SPECS, {"prompt": "a cat"})
    assert result.errors == {}
    assert result.values == {
        "prompt": "a cat",
        "steps": 20,
        "width": 512,
        "cfg": 7.5,
        "seed": None,
        "hires": False,
        "sampler": "euler",
        "extra": None,
        "chat": None,
        "image": None,
        "images": None,
        "audio": None,
    }


def test_null_counts_as_not_sent():
    result = validate_inputs(SPECS, {"prompt": "a cat", "steps": None, "seed": None})
    assert result.errors == {}
    assert result.values["steps"] == 20
    assert result.values["seed"] is None


def test_a_missing_required_field_is_named():
    assert validate_inputs(SPECS, {}).errors == {"prompt": "is required"}
    assert validate_inputs(SPECS, {"prompt": None}).errors == {"prompt": "is required"}
    # required = false with no default: optional; required = true with a default: the default
    specs = {"a": StringField(name="a", required=True, default="x")}
    assert validate_inputs(specs, {}).values == {"a": "x"}


def test_falsy_values_are_values_not_missing():
    specs = {
        "n": IntegerField(name="n", default=5),
        "b": BooleanField(name="b", default=True),
        "s": StringField(name="s", default="d"),
    }
    assert validate_inputs(specs, {"n": 0, "b": False, "s": ""}).values == {
        "n": 0,
        "b": False,
        "s": "",
    }


def test_every_bad_field_is_reported_at_once():
    result = validate_inputs(
        SPECS,
        {
            "prompt": 7,
            "steps": 0,
            "width": 100,
            "cfg": float("nan"),
            "hires": "yes",
            "sampler": "ddim",
            "colour": "red",
            "image": "not-base64!",
        },
    )
    assert result.values == {}
    assert result.errors == {
        "prompt": "must be a string (got int 7)",
        "steps": "must be between 1 and 50 (got 0)",
        "width": "must be a multiple of 64 (got 100; nearest: 64 or 128)",
        "cfg": "must be a finite number (got nan)",
        "hires": "must be true or false (got 'yes')",
        "sampler": "must be one of 'euler', 'dpm' (got 'ddim')",
        "colour": "unknown field; this endpoint accepts: " + ", ".join(SPECS),
        "image": result.errors["image"],
    }
    assert result.errors["image"].startswith("is not valid base64")


def test_unknown_fields_are_refused_naming_what_is_accepted():
    assert validate_inputs({}, {"x": 1}).errors == {
        "x": "unknown field; this endpoint accepts: nothing"
    }


def test_require_any_wants_one_of_its_fields_given():
    specs = {"text": StringField(name="text", required=False),
             "image": ImageField(name="image", required=False, max_width=64, max_height=64)}
    wanted = "give at least one of: text, image"
    for payload in ({}, {"text": ""}, {"text": None, "image": None}):
        assert validate_inputs(specs, payload, ("text", "image")).errors == {
            "text": wanted, "image": wanted}
    assert validate_inputs(specs, {"text": "shoes"}, ("text", "image")).values["text"] == "shoes"
    assert validate_inputs(specs, {}).errors == {}  # no rule, no error


@pytest.mark.parametrize("payload", [None, [], "text", 3, [{"prompt": "x"}]])
def test_inputs_that_are_not_an_object_are_one_error(payload):
    assert validate_inputs(SPECS, payload).errors == {
        "inputs": "must be a JSON object of field values"
    }


def test_has_media_only_for_binary_values_sent():
    assert has_media(SPECS, {"image": "x"})
    assert has_media(SPECS, {"audio": "x"})
    assert has_media(SPECS, {"images": []})
    assert not has_media(SPECS, {"image": None, "prompt": "x"})
    assert not has_media(SPECS, {"prompt": "x", "unknown_image": "x"})


# --------------------------------------------------------------------------------------------
# property: nothing a client sends makes validate_inputs raise


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: Python's json reads them
    | st.floats()  # NaN and infinities too: Python's json reads them
    | st.text(max_size=30)
    | st.sampled_from(["euler", "data:image/png;base64,", "iVBORw0KGgo=", "AAAA", "user"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["role", "content", "x"]) | st.text(max_size=5), children, max_size=4
        )
    ),
    max_leaves=12,
)
payloads = json_values | st.dictionaries(
    st.sampled_from(sorted(SPECS)) | st.text(max_size=8), json_values, max_size=6
)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(payloads)
def test_validate_inputs_never_raises(payload):
    result = validate_inputs(SPECS, payload)
    assert bool(result.errors) != bool(result.values)
    for name, message in result.errors.items():
        assert isinstance(message, str) and message
        assert name in SPECS or name == "inputs" or message.startswith("unknown field")
    if result.values:
        assert set(result.values) == set(SPECS)
        orjson.dumps(result.values)  # what the store does next must work too


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
    st.integers(-1000, 1000),
    st.integers(0, 2000),
    st.sampled_from([None, 1, 3, 16, 64]),
)
def test_integer_auto_convert_always_lands_on_an_allowed_value(value, low, span, align):
    high = low + span
    spec = IntegerField(name="n", minimum=low, maximum=high, align=align, auto_convert=True)
    if spec.problems():
        return  # no multiple of align in range: the loader refuses such a config
    number = spec.check(value)
    assert type(number) is int
    assert low <= number <= high
    assert align is None or number % align == 0
    IntegerField(name="n", minimum=low, maximum=high, align=align).check(number)


@settings(max_examples=200, deadline=None, database=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([None, 0.1, 0.25, 2.5]))
def test_float_auto_convert_always_lands_on_an_allowed_value(value, align):
    spec = FloatField(name="x", minimum=-10, maximum=10, align=align, auto_convert=True)
    number = spec.check(value)
    assert -10 <= number <= 10
    FloatField(name="x", minimum=-10, maximum=10, align=align).check(number)


def test_error_messages_name_the_value_sent():
    """A spot check over every simple type: the rejected value shows up in its message."""
    cases = [
        (StringField(name="s"), 12345),
        (IntegerField(name="n", maximum=10), 12345),
        (FloatField(name="x", maximum=10), 12345.5),
        (BooleanField(name="b"), 12345),
        (SelectionField(name="s", supported=("a",)), 12345),
        (ChatContextField(name="c"), [{"role": "user", "content": 12345}]),
    ]
    for spec, value in cases:
        with pytest.raises(FieldError) as caught:
            spec.check(value)
        assert re.search(r"12345", str(caught.value)), (spec.type_name, str(caught.value))


def test_integer_bounds_and_align_must_be_whole():
    assert IntegerField(name="n", minimum=0.5).problems() == [
        ("minimum", "must be a whole number for an integer field (got 0.5)")
    ]
    assert [k for k, _ in IntegerField(name="n", align=2.5).problems()] == ["align"]
    assert FloatField(name="x", minimum=0.5, align=2.5).problems() == []


def test_float_auto_convert_rounding_stays_within_bounds():
    tiny = 6.827991108853063e-185  # 15 digits would round it below itself
    spec = FloatField(name="x", minimum=tiny, maximum=tiny, auto_convert=True)
    assert spec.check(0.0) == tiny
