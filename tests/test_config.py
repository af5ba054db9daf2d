"""api_server.config: endpoint.toml and server.toml loading, and refusing broken configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from api_server.config import (
    ConfigError,
    Endpoint,
    ServerConfig,
    load_endpoint,
    load_endpoints,
    load_server_config,
)
from api_server.fields import (
    ChatContextField,
    FloatField,
    ImageField,
    IntegerField,
    JsonField,
    StringField,
    validate_inputs,
)

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
[WORKER]
auth_keys = ["wk"]
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name / "endpoint.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_endpoint(path)
    return caught.value.problems


def one_problem(path: Path) -> str:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


# --------------------------------------------------------------------------------------------
# good configs


def test_the_shipped_echo_endpoint_loads():
    endpoints = load_endpoints(REPO / "endpoints")
    echo = endpoints["echo"]
    assert isinstance(echo, Endpoint)
    assert echo.name == "echo"
    assert echo.job_type == "echo"
    assert echo.endpoint.title == "Echo"
    assert echo.endpoint.route == "/echo"
    assert echo.worker.auth_keys == ("echo-worker-key",)
    assert echo.worker.max_batch == 64
    assert echo.clients.auth_keys == ()
    assert echo.clients.rate_limit_per_s == 0
    assert set(echo.inputs) == {"text", "delay_s", "steps", "fail", "image"}
    assert isinstance(echo.inputs["delay_s"], FloatField)
    assert isinstance(echo.inputs["image"], ImageField)
    assert echo.inputs["image"].auto_convert is True
    assert set(echo.outputs) == {"text", "delay_s", "steps", "image", "worker_id"}
    assert set(echo.progress_outputs) == {"step", "preview"}
    assert echo.folder == REPO / "endpoints" / "echo"
    result = validate_inputs(echo.inputs, {"text": "hi"})
    assert result.values == {"text": "hi", "delay_s": 0.0, "steps": 0, "fail": None, "image": None}


def test_the_schema_never_shows_keys():
    echo = load_endpoints(REPO / "endpoints")["echo"]
    schema = echo.schema()
    assert schema["name"] == "echo"
    assert schema["client_auth"] is False
    assert schema["inputs"]["steps"] == {
        "type": "integer",
        "description": echo.inputs["steps"].description,
        "default": 0,
        "minimum": 0,
        "maximum": 100,
        "auto_convert": False,
        "required": False,
    }
    assert "echo-worker-key" not in repr(schema)


def test_a_minimal_endpoint_takes_its_names_from_the_folder(tmp_path):
    endpoint = load_endpoint(write(tmp_path, "tiny", MINIMAL))
    assert endpoint.name == "tiny"
    assert endpoint.endpoint.title == "tiny"
    assert endpoint.endpoint.route == "/tiny"
    assert endpoint.job_type == "tiny"
    assert endpoint.inputs == {}
    assert endpoint.endpoint.max_body_bytes is None


def test_every_setting_is_read(tmp_path):
    path = write(
        tmp_path,
        "folder",
        """
[ENDPOINT]
name = "sd3"
title = "Stable Diffusion 3"
description = "Text to image"
version = 4
route = "/draw"
max_queue_length = 10
lease_s = 12.5
job_timeout_s = 100
max_attempts = 2
result_ttl_s = 60
max_body_bytes = 1000000

[WORKER]
job_type = "sd3-medium"
auth_keys = ["w1", "w2"]
max_batch = 4

[CLIENTS]
auth_keys = ["c1"]
rate_limit_per_s = 1.5
rate_burst = 3

[STATIC]
page = "page.html"

[INPUTS.prompt]
type = "string"
max_length = 500
label = "Prompt"

[INPUTS.chat]
type = "chat_context"
default = [{ role = "user", content = "hi" }]

[INPUTS.extra]
type = "json"
default = { tags = ["a", "b"] }

[INPUTS.width]
type = "integer"
minimum = 256
maximum = 1024
align = 64
default = 512
auto_convert = true

[OUTPUTS.images]
type = "image_list"
formats = ["png"]

[PROGRESS.OUTPUTS.preview]
type = "image"
""",
    )
    (path.parent / "page.html").write_text("<html></html>")
    endpoint = load_endpoint(path)
    section = endpoint.endpoint
    assert (section.name, section.title, section.version, section.route) == (
        "sd3",
        "Stable Diffusion 3",
        4,
        "/draw",
    )
    assert (section.max_queue_length, section.lease_s, section.job_timeout_s) == (10, 12.5, 100)
    assert (section.max_attempts, section.result_ttl_s, section.max_body_bytes) == (2, 60, 1000000)
    assert endpoint.job_type == "sd3-medium"
    assert endpoint.worker.auth_keys == ("w1", "w2")
    assert endpoint.clients.auth_keys == ("c1",)
    assert (endpoint.clients.rate_limit_per_s, endpoint.clients.rate_burst) == (1.5, 3)
    assert endpoint.static.page == "page.html"
    assert endpoint.inputs["prompt"] == StringField(name="prompt", max_length=500, label="Prompt")
    assert endpoint.inputs["width"] == IntegerField(
        name="width", minimum=256, maximum=1024, align=64, default=512, auto_convert=True
    )
    assert endpoint.outputs["images"].formats == ("png",)
    # A default that is a list or table stays the JSON value it is (not a tuple).
    assert endpoint.inputs["chat"] == ChatContextField(
        name="chat", default=[{"role": "user", "content": "hi"}]
    )
    assert endpoint.inputs["extra"] == JsonField(name="extra", default={"tags": ["a", "b"]})
    values = validate_inputs(endpoint.inputs, {"prompt": "x"}).values
    assert values["chat"] == [{"role": "user", "content": "hi"}]
    assert values["extra"] == {"tags": ["a", "b"]}


def test_an_integer_default_written_as_a_float_is_stored_as_an_integer(tmp_path):
    path = write(tmp_path, "e", MINIMAL + '[INPUTS.n]\ntype = "integer"\ndefault = 4.0\n')
    default = load_endpoint(path).inputs["n"].default
    assert default == 4
    assert type(default) is int


# --------------------------------------------------------------------------------------------
# broken configs: every problem names the file, the key and the reason


def test_an_unknown_section_is_named(tmp_path):
    path = write(tmp_path, "e", MINIMAL + "[MODEL]\nsize = 1\n")
    assert one_problem(path) == (
        f"{path}: [MODEL]: unknown section "
        "(known: CLIENTS, ENDPOINT, INPUTS, OPENAI, OUTPUTS, PROGRESS, STATIC, WORKER)"
    )


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ("[ENDPOINT]\ncolour = 1\n", "ENDPOINT.colour"),
        ("[WORKER.extra]\n", "WORKER.extra"),
        ("[CLIENTS]\nkeys = []\n", "CLIENTS.keys"),
        ("[STATIC]\nfile = 'x'\n", "STATIC.file"),
        ('[INPUTS.p]\ntype = "string"\nmaxlength = 3\n', "INPUTS.p.maxlength"),
        ('[OUTPUTS.p]\ntype = "float"\nmin = 3\n', "OUTPUTS.p.min"),
        ('[PROGRESS.OUTPUTS.p]\ntype = "image"\nwidth = 3\n', "PROGRESS.OUTPUTS.p.width"),
        ('[INPUTS.p]\ntype = "string"\nname = "q"\n', "INPUTS.p.name"),
        ('[INPUTS.p]\ntype = "string"\ntype_name = "q"\n', "INPUTS.p.type_name"),
    ],
)
def test_an_unknown_key_is_named_in_every_section(tmp_path, toml, where):
    path = write(tmp_path, "e", MINIMAL + toml)
    problem = one_problem(path)
    assert problem.startswith(f"{path}: {where}: unknown key (known: ")


def test_an_unknown_key_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "e", MINIMAL + "[CLIENTS]\nkeys = []\n")
    assert one_problem(path) == (
        f"{path}: CLIENTS.keys: unknown key (known: auth_keys, rate_burst, rate_limit_per_s)"
    )


def test_an_unknown_progress_table_is_named(tmp_path):
    path = write(tmp_path, "e", MINIMAL + '[PROGRESS.INPUTS.x]\ntype = "string"\n')
    assert one_problem(path) == f"{path}: PROGRESS.INPUTS: unknown key (only [PROGRESS.OUTPUTS])"
    path = write(tmp_path, "f", "PROGRESS = 5\n" + MINIMAL)
    assert one_problem(path).startswith(f"{path}: PROGRESS: must be a table")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[ENDPOINT]\nmax_queue_length = "lots"\n',
            "ENDPOINT.max_queue_length: must be int (got 'lots')",
        ),
        ("[ENDPOINT]\nmax_attempts = 2.5\n", "ENDPOINT.max_attempts: must be int (got 2.5)"),
        ("[ENDPOINT]\nversion = true\n", "ENDPOINT.version: must be int (got True)"),
        ("[ENDPOINT]\nlease_s = '30'\n", "ENDPOINT.lease_s: must be float (got '30')"),
        (
            "[ENDPOINT]\nmax_body_bytes = 'big'\n",
            "ENDPOINT.max_body_bytes: must be int (got 'big')",
        ),
        ("[ENDPOINT]\ntitle = 5\n", "ENDPOINT.title: must be str (got 5)"),
        ("[CLIENTS]\nauth_keys = 'k'\n", "CLIENTS.auth_keys: must be a list of str (got 'k')"),
        ("[CLIENTS]\nauth_keys = [1]\n", "CLIENTS.auth_keys: must be a list of str (got [1])"),
        ("[CLIENTS]\nrate_burst = 1.5\n", "CLIENTS.rate_burst: must be int (got 1.5)"),
        (
            '[INPUTS.p]\ntype = "string"\nmax_length = "9"\n',
            "INPUTS.p.max_length: must be int (got '9')",
        ),
        (
            '[INPUTS.p]\ntype = "integer"\nminimum = "0"\n',
            "INPUTS.p.minimum: must be float (got '0')",
        ),
        (
            '[INPUTS.p]\ntype = "image"\nformats = "png"\n',
            "INPUTS.p.formats: must be a list of str (got 'png')",
        ),
        (
            '[INPUTS.p]\ntype = "boolean"\nrequired = "no"\n',
            "INPUTS.p.required: must be bool (got 'no')",
        ),
        ("[ENDPOINT]\n", None),  # an empty table is fine
    ],
)
def test_a_wrong_value_type_is_named(tmp_path, toml, expected):
    path = write(tmp_path, "e", MINIMAL + toml)
    if expected is None:
        load_endpoint(path)
        return
    assert one_problem(path) == f"{path}: {expected}"


def test_a_section_that_is_not_a_table(tmp_path):
    path = write(tmp_path, "e", "ENDPOINT = 5\nINPUTS = [1]\n" + MINIMAL)
    assert problems_of(path) == [
        f"{path}: ENDPOINT: must be a table",
        f"{path}: INPUTS: must be a table of fields",
    ]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[INPUTS.p]\ntype = "colour"\n', "INPUTS.p.type: unknown type 'colour' (known: string, "),
        ("[INPUTS.p]\ntype = 5\n", "INPUTS.p.type: unknown type 5"),
        ("[INPUTS.p]\nmax_length = 5\n", "INPUTS.p: must be a table with a 'type' key"),
        ('[INPUTS]\np = "string"\n', "INPUTS.p: must be a table with a 'type' key"),
        ('[INPUTS."bad name"]\ntype = "string"\n', "INPUTS.bad name: field names use letters"),
    ],
)
def test_an_unknown_or_missing_field_type_is_named(tmp_path, toml, expected):
    path = write(tmp_path, "e", MINIMAL + toml)
    assert one_problem(path).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            'type = "integer"\nminimum = 0\nmaximum = 100\ndefault = 500',
            "INPUTS.p.default: must be between 0 and 100 (got 500)",
        ),
        (  # auto_convert would clamp a client's value, but a default must be right as written
            'type = "integer"\nmaximum = 100\ndefault = 500\nauto_convert = true',
            "INPUTS.p.default: must be at most 100 (got 500)",
        ),
        (
            'type = "integer"\nalign = 8\ndefault = 12',
            "INPUTS.p.default: must be a multiple of 8 (got 12; nearest: 8 or 16)",
        ),
        ('type = "float"\ndefault = "fast"', "INPUTS.p.default: must be a number (got str 'fast')"),
        ('type = "float"\ndefault = nan', "INPUTS.p.default: must be a finite number (got nan)"),
        (
            'type = "string"\nmax_length = 3\ndefault = "long"',
            "INPUTS.p.default: must be at most 3 characters (got 4)",
        ),
        (
            'type = "selection"\nsupported = ["a", "b"]\ndefault = "c"',
            "INPUTS.p.default: must be one of 'a', 'b' (got 'c')",
        ),
        ('type = "boolean"\ndefault = 1', "INPUTS.p.default: must be true or false (got 1)"),
        (
            'type = "chat_context"\ndefault = []',
            "INPUTS.p.default: must be a non-empty list of {role, content} messages (got [])",
        ),
        ('type = "image"\ndefault = "nope!"', "INPUTS.p.default: is not valid base64"),
    ],
)
def test_a_bad_default_is_named(tmp_path, toml, expected):
    path = write(tmp_path, "e", MINIMAL + "[INPUTS.p]\n" + toml + "\n")
    assert one_problem(path).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            'type = "integer"\nminimum = 10\nmaximum = 1',
            "INPUTS.p.maximum: must be at least minimum 10",
        ),
        ('type = "float"\nalign = 0', "INPUTS.p.align: must be greater than 0 (got 0)"),
        ('type = "float"\nminimum = -inf', "INPUTS.p.minimum: must be a finite number (got -inf)"),
        ('type = "integer"\nmaximum = 2.5', "INPUTS.p.maximum: must be a whole number"),
        (
            'type = "integer"\nminimum = 17\nmaximum = 31\nalign = 16',
            "INPUTS.p.align: no multiple of 16 lies between 17 and 31",
        ),
        ('type = "string"\nmax_length = 0', "INPUTS.p.max_length: must be at least 1"),
        ('type = "selection"', "INPUTS.p.supported: must list at least one value"),
        ('type = "selection"\nsupported = []', "INPUTS.p.supported: must list at least one value"),
        ('type = "json"\nmax_bytes = 0', "INPUTS.p.max_bytes: must be at least 1 (got 0)"),
        ('type = "chat_context"\nroles = []', "INPUTS.p.roles: must list at least one role"),
        ('type = "image"\nformats = []', "INPUTS.p.formats: must list some of jpeg, png"),
        ('type = "image"\nformats = ["png", "svg"]', "INPUTS.p.formats: must list some of"),
        ('type = "image"\nmax_width = 0', "INPUTS.p.max_width: must be at least 1 (got 0)"),
        ('type = "image_list"\nmax_items = 0', "INPUTS.p.max_items: must be at least 1 (got 0)"),
        ('type = "audio"\nformats = []', "INPUTS.p.formats: must list at least one"),
        ('type = "audio"\nsample_rate = -1', "INPUTS.p.sample_rate: must be greater than 0"),
        ('type = "audio"\nmax_duration_s = 0', "INPUTS.p.max_duration_s: must be greater than 0"),
        ('type = "audio"\nffmpeg_timeout_s = 0', "INPUTS.p.ffmpeg_timeout_s: must be greater than"),
        ('type = "image"\nffmpeg_timeout_s = -1', "INPUTS.p.ffmpeg_timeout_s: must be greater"),
    ],
)
def test_an_impossible_field_setting_is_named(tmp_path, toml, expected):
    path = write(tmp_path, "e", MINIMAL + "[INPUTS.p]\n" + toml + "\n")
    assert one_problem(path).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[WORKER]\nmax_batch = 2\n", "WORKER.auth_keys: at least one worker key is required"),
        ("[WORKER]\nauth_keys = []\n", "WORKER.auth_keys: at least one worker key is required"),
        ("", "WORKER.auth_keys: at least one worker key is required"),
        ('[WORKER]\nauth_keys = ["k", ""]\n', "WORKER.auth_keys: a key must not be empty"),
        ('[WORKER]\nauth_keys = ["k"]\nmax_batch = 0\n', "WORKER.max_batch: must be at least 1"),
    ],
)
def test_worker_keys_are_required(tmp_path, toml, expected):
    assert one_problem(write(tmp_path, "e", toml)).endswith(expected)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[ENDPOINT]\nmax_queue_length = 0\n", "ENDPOINT.max_queue_length: must be greater than 0"),
        ("[ENDPOINT]\nlease_s = -1\n", "ENDPOINT.lease_s: must be greater than 0"),
        ("[ENDPOINT]\njob_timeout_s = 0\n", "ENDPOINT.job_timeout_s: must be greater than 0"),
        ("[ENDPOINT]\nmax_attempts = 0\n", "ENDPOINT.max_attempts: must be greater than 0"),
        ("[ENDPOINT]\nresult_ttl_s = 0\n", "ENDPOINT.result_ttl_s: must be greater than 0"),
        ("[ENDPOINT]\nmax_body_bytes = 0\n", "ENDPOINT.max_body_bytes: must be greater than 0"),
        ("[ENDPOINT]\nname = 'has space'\n", "ENDPOINT.name: 'has space' is not a valid endpoint"),
        ("[ENDPOINT]\nroute = 'draw'\n", "ENDPOINT.route: must start with '/' (got 'draw')"),
        ('[CLIENTS]\nauth_keys = [""]\n', "CLIENTS.auth_keys: a key must not be empty"),
        ("[CLIENTS]\nrate_limit_per_s = -1\n", "CLIENTS.rate_limit_per_s: must be 0 (no limit) or"),
        ("[CLIENTS]\nrate_burst = 0\n", "CLIENTS.rate_burst: must be at least 1"),
    ],
)
def test_out_of_range_settings_are_named(tmp_path, toml, expected):
    path = write(tmp_path, "e", MINIMAL + toml)
    assert one_problem(path).startswith(f"{path}: {expected}")


def test_a_folder_name_that_is_not_an_endpoint_name(tmp_path):
    path = write(tmp_path, "bad name", MINIMAL)
    assert one_problem(path) == f"{path}: ENDPOINT.name: 'bad name' is not a valid endpoint name"


def test_require_any_names_optional_inputs_without_defaults(tmp_path):
    inputs = ("[INPUTS.text]\ntype = 'string'\nrequired = false\n"
              "[INPUTS.k]\ntype = 'integer'\ndefault = 3\n")
    path = write(tmp_path, "e", "[ENDPOINT]\nrequire_any = ['text', 'k', 'nope']\n" + MINIMAL
                 + inputs)
    assert problems_of(path) == [
        f"{path}: ENDPOINT.require_any: input 'k' must be optional with no default",
        f"{path}: ENDPOINT.require_any: 'nope' is not an input",
    ]
    path.write_text("[ENDPOINT]\nrequire_any = ['text']\n" + MINIMAL + inputs)
    assert load_endpoint(path).endpoint.require_any == ("text",)


def test_static_page_must_exist_beside_the_toml(tmp_path):
    path = write(tmp_path, "e", MINIMAL + "[STATIC]\npage = 'demo.html'\n")
    assert one_problem(path) == f"{path}: STATIC.page: no file 'demo.html' beside endpoint.toml"
    (path.parent / "demo.html").write_text("<p>hi</p>")
    assert load_endpoint(path).static.page == "demo.html"


@pytest.mark.parametrize("page", ["../outside.html", "/etc/hostname", "notes.txt", "sub/../.."])
def test_static_page_must_be_an_html_file_in_the_endpoints_folder(tmp_path, page):
    path = write(tmp_path, "e", MINIMAL + f"[STATIC]\npage = '{page}'\n")
    (tmp_path / "outside.html").write_text("<p>not yours</p>")
    (path.parent / "notes.txt").write_text("hi")
    assert one_problem(path) == (
        f"{path}: STATIC.page: must name an .html file in the endpoint's folder (got {page!r})"
    )


@pytest.mark.parametrize(
    "route",
    ["/api", "/api/v1/echo", "/static/echo", "/health", "/v1/chat", "/metrics", "/dashboard"],
)
def test_a_route_of_the_servers_own_is_refused(tmp_path, route):
    path = write(tmp_path, "e", MINIMAL + f"[ENDPOINT]\nroute = '{route}'\n")
    assert one_problem(path) == (
        f"{path}: ENDPOINT.route: {route!r} collides with the server's own paths (/api, /static, "
        "/v1, /health, /metrics, /dashboard, /favicon.ico and below)"
    )


def test_an_endpoint_named_like_a_server_path_needs_a_route_of_its_own(tmp_path):
    path = write(tmp_path, "static", MINIMAL)
    assert "ENDPOINT.route: '/static' collides with the server's own paths" in one_problem(path)
    path.write_text(MINIMAL + "[ENDPOINT]\nroute = '/demos/static'\n")
    assert load_endpoint(path).endpoint.route == "/demos/static"


@pytest.mark.parametrize("route", ["/", "/a/", "/a//b", "/.hidden", "/a/../b", "/a b", "/{name}"])
def test_a_route_that_is_not_a_plain_path_is_refused(tmp_path, route):
    path = write(tmp_path, "e", MINIMAL + f"[ENDPOINT]\nroute = '{route}'\n")
    assert one_problem(path).startswith(f"{path}: ENDPOINT.route: must be a path like '/name'")


def test_two_endpoints_with_one_route_are_refused(tmp_path):
    write(tmp_path, "a", MINIMAL + "[ENDPOINT]\nroute = '/demo'\n")
    second = write(tmp_path, "b", MINIMAL + "[ENDPOINT]\nroute = '/demo'\n")
    with pytest.raises(ConfigError) as caught:
        load_endpoints(tmp_path)
    assert caught.value.problems == [
        f"{second}: ENDPOINT.route: '/demo' is already the page of endpoint 'a'"
    ]


@pytest.mark.parametrize(
    "content",
    [b"[ENDPOINT\nname = 1", b"this is not toml at all", b"a = 1\na = 2\n", b"\xff\xfe[WORKER]"],
)
def test_a_file_that_is_not_toml_is_named(tmp_path, content):
    path = write(tmp_path, "e", "")
    path.write_bytes(content)
    problem = one_problem(path)
    assert problem.startswith(f"{path}: cannot be read as TOML (")


def test_several_problems_are_all_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        "e",
        """
[ENDPOINT]
lease_s = "soon"
colour = "red"

[WORKER]
max_batch = 2

[INPUTS.a]
type = "colour"

[INPUTS.b]
type = "integer"
maximum = 5
default = 9

[OUTPUTS.c]
type = "string"
size = 3

[EXTRA]
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_endpoint(path)
    problems = sorted(caught.value.problems)
    assert len(problems) == 7, problems
    expected_starts = sorted(
        [
            f"{path}: [EXTRA]: unknown section",
            f"{path}: ENDPOINT.colour: unknown key",
            f"{path}: ENDPOINT.lease_s: must be float (got 'soon')",
            f"{path}: INPUTS.a.type: unknown type 'colour'",
            f"{path}: INPUTS.b.default: must be at most 5 (got 9)",
            f"{path}: OUTPUTS.c.size: unknown key",
            f"{path}: WORKER.auth_keys: at least one worker key is required",
        ]
    )
    for problem, start in zip(problems, expected_starts, strict=True):
        assert problem.startswith(start), (problem, start)
    text = str(caught.value)
    assert text.startswith("invalid configuration:\n  ")
    assert all(problem in text for problem in problems)


def test_problems_in_several_endpoints_are_all_reported(tmp_path):
    write(tmp_path, "a", MINIMAL + "[ENDPOINT]\nx = 1\n")
    write(tmp_path, "b", MINIMAL + "[ENDPOINT]\ny = 1\n")
    write(tmp_path, "c", MINIMAL)
    with pytest.raises(ConfigError) as caught:
        load_endpoints(tmp_path)
    assert [p.split(": ")[1] for p in caught.value.problems] == ["ENDPOINT.x", "ENDPOINT.y"]


def test_duplicate_endpoint_names_are_refused(tmp_path):
    write(tmp_path, "one", MINIMAL + "[ENDPOINT]\nname = 'same'\n")
    second = write(tmp_path, "two", MINIMAL + "[ENDPOINT]\nname = 'same'\n")
    with pytest.raises(ConfigError) as caught:
        load_endpoints(tmp_path)
    assert caught.value.problems == [f"{second}: ENDPOINT.name: 'same' is already used"]


def test_load_endpoints_reads_every_folder_and_ignores_others(tmp_path):
    write(tmp_path, "a", MINIMAL)
    write(tmp_path, "b", MINIMAL)
    (tmp_path / "notes").mkdir()
    (tmp_path / "README.md").write_text("hi")
    assert list(load_endpoints(tmp_path)) == ["a", "b"]


def test_a_missing_endpoints_folder_is_named(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_endpoints(tmp_path / "nowhere")
    assert caught.value.problems == [f"{tmp_path / 'nowhere'}: endpoints folder not found"]


# --------------------------------------------------------------------------------------------
# server.toml


def test_server_defaults_without_a_file():
    assert load_server_config(None) == ServerConfig()


def test_server_toml_is_read_and_overrides_win(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text(
        """
[SERVER]
host = "0.0.0.0"
port = 8080
endpoints_dir = "/srv/endpoints"
store = "sqlite:/var/lib/jobs.sqlite3"
max_body_bytes = 1000
worker_poll_max_s = 5
log_level = "DEBUG"
"""
    )
    config = load_server_config(path)
    assert (config.host, config.port, config.endpoints_dir) == ("0.0.0.0", 8080, "/srv/endpoints")
    assert (config.store, config.max_body_bytes, config.worker_poll_max_s) == (
        "sqlite:/var/lib/jobs.sqlite3",
        1000,
        5,
    )
    assert config.log_level == "DEBUG"
    assert config.client_wait_max_s == ServerConfig().client_wait_max_s
    overridden = load_server_config(path, port=9000, host=None, store="sqlite:x.sqlite3")
    assert (overridden.port, overridden.host, overridden.store) == (
        9000,
        "0.0.0.0",
        "sqlite:x.sqlite3",
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[SERVER]\nport = 'http'\n", "SERVER.port: must be int (got 'http')"),
        ("[SERVER]\nthreads = 4\n",
         "SERVER.threads: unknown key (known: admin_keys, aime_enabled, aime_endpoints_dir, "
         "aime_prefix, aime_session_ttl_s, allowed_hosts, "),
        ("[SERVER]\nport = 8080\n[ENDPOINT]\n", "[ENDPOINT]: unknown section (known: SERVER)"),
        ("SERVER = 1\n", "SERVER: must be a table"),
        (
            "[SERVER]\nlog_level = 'LOUD'\n",
            "SERVER.log_level: must be one of DEBUG, INFO, WARNING, ERROR (got 'LOUD')",
        ),
        ("[SERVER]\nport = 70000\n", "SERVER.port: must be 0 to 65535 (got 70000)"),
        (
            "[SERVER]\nstore = 'jobs.db'\n",
            "SERVER.store: must be sqlite:PATH, redis://HOST:PORT/DB, rediss://... or "
            "redis+sentinel://HOST:PORT,.../MASTER/DB (got 'jobs.db')",
        ),
        (
            "[SERVER]\ndurability = 'eventually'\n",
            "SERVER.durability: must be one of everysec, always, replicated (got 'eventually')",
        ),
        ("[SERVER]\nmax_body_bytes = 0\n", "SERVER.max_body_bytes: must be greater than 0 (got 0)"),
        ("[SERVER]\nsweep_interval_s = -1\n", "SERVER.sweep_interval_s: must be greater than 0"),
        ("[SERVER]\nmetrics_admin_only = true\n",
         "SERVER.metrics_admin_only: needs at least one of admin_keys"),
        ("[SERVER]\nserver_name = \"a\\tb\"\n",  # (a tab)
         "SERVER.server_name: must be printable text of at most 128 characters"),
    ],
)
def test_a_broken_server_toml_is_named(tmp_path, toml, expected):
    path = tmp_path / "server.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_server_config(path)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(f"{path}: {expected}")


def test_a_bad_override_is_named_too():
    with pytest.raises(ConfigError) as caught:
        load_server_config(None, store="postgres://db")
    assert caught.value.problems == [
        "command line: SERVER.store: must be sqlite:PATH, redis://HOST:PORT/DB, rediss://... or "
        "redis+sentinel://HOST:PORT,.../MASTER/DB (got 'postgres://db')"
    ]


def test_a_server_toml_that_is_not_toml(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text("[SERVER\n")
    with pytest.raises(ConfigError, match=r"cannot be read as TOML"):
        load_server_config(path)
    with pytest.raises(ConfigError, match=r"cannot be read as TOML"):
        load_server_config(tmp_path / "missing.toml")


# --------------------------------------------------------------------------------------------
# the server refuses to start


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api_server.cli", "-p", "0", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_server_stops_at_startup_naming_file_key_and_reason(tmp_path):
    broken = tmp_path / "endpoints"
    path = write(
        broken,
        "e",
        MINIMAL + '[INPUTS.steps]\ntype = "integer"\nmaximum = 10\n'
        "default = 50\n[ENDPOINT]\nspeed = 1\n",
    )
    done = run_server("-c", str(broken), "--store", f"sqlite:{tmp_path / 'jobs.sqlite3'}")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert f"{path}: ENDPOINT.speed: unknown key" in done.stderr
    assert f"{path}: INPUTS.steps.default: must be at most 10 (got 50)" in done.stderr
    assert not (tmp_path / "jobs.sqlite3").exists()


def test_the_server_stops_at_startup_on_a_bad_server_toml(tmp_path):
    server_toml = tmp_path / "server.toml"
    server_toml.write_text("[SERVER]\nlog_level = 'LOUD'\n")
    done = run_server(
        "--config",
        str(server_toml),
        "-c",
        str(REPO / "endpoints"),
        "--store",
        f"sqlite:{tmp_path / 'jobs.sqlite3'}",
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert f"{server_toml}: SERVER.log_level: must be one of" in done.stderr
