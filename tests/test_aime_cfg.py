"""AIME endpoint configs read as jobhive endpoints (api_server/aime/cfg.py), the session keys
of AIME logins (api_server/aime/sessions.py) and the [SERVER] aime_* settings: in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from api_server.aime.cfg import AimeConfigs, find_configs, load_aime_endpoint, load_with_aime
from api_server.aime.sessions import SessionKeys
from api_server.auth import key_hash
from api_server.config import ConfigError, ServerConfig, load_server_config
from api_server.fields import FieldError, validate_inputs

AIME_CFG = Path(__file__).parent / "data" / "aime" / "echo" / "aime_api_endpoint.cfg"
REPO_ENDPOINTS = Path(__file__).resolve().parents[1] / "endpoints"
MINIMAL = """
[ENDPOINT]
name = "tiny"
[WORKER]
job_type = "tiny"
auth_key = "worker-key"
"""


def write_cfg(folder: Path, text: str, name: str = "aime_api_endpoint.cfg") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_the_test_config_becomes_an_endpoint_with_aimes_names_and_rules() -> None:
    endpoint, info, notes = load_aime_endpoint(AIME_CFG)
    section = endpoint.endpoint
    assert (endpoint.name, section.title, section.version, section.route) == (
        "aime_echo", "AIME echo", 2, "/aime_echo")
    assert (section.max_queue_length, section.lease_s, section.result_ttl_s) == (50, 1.5, 120)
    assert endpoint.worker.job_type == "echo"
    assert endpoint.worker.auth_keys == ("aime-echo-worker-key",)
    assert set(endpoint.clients.auth_keys) == {"aime-client-key", "aime-other-key"}
    assert endpoint.clients.rate_limit_per_s == 0  # AIME limits no client
    assert (info.methods, info.category, info.request_timeout_s) == (("GET", "POST"), "test", 5)
    assert info.provide_worker_meta_data and "auth" in endpoint.outputs
    assert (info.chat_contexts, info.text_contexts) == (("chat_context",), ("text_context",))
    # the implicit protocol inputs are not fields; AIME's descriptions go to workers as they are
    assert "client_session_auth_key" not in endpoint.inputs
    assert info.outputs["images"] == {"type": "image_list", "format": "JPEG",
                                      "color_space": "RGB"}
    inputs = endpoint.inputs
    assert inputs["text"].is_required and inputs["text"].default is None  # required wins
    assert (inputs["steps"].type_name, inputs["steps"].minimum, inputs["steps"].maximum) == (
        "integer", 0, 20)  # "int", min and max are AIME's aliases
    assert inputs["size"].check(500) == 496 and inputs["size"].check(5000) == 2048
    assert inputs["mode"].check("medium") == "fast"  # selection auto_convert: the default
    assert inputs["shout"].type_name == "boolean" and not inputs["shout"].is_required
    image = inputs["image"]
    assert (image.formats, image.max_width, image.max_height, image.auto_convert) == (
        ("jpeg", "png"), 64, 64, True)  # the format's default first: auto_convert's target
    unsupported = "\n".join(notes)
    for key in ("ENDPOINT.demo_url", "ENDPOINT.max_time_in_queue", "STATIC", "JINJA",
                "INPUTS.image.size.minimum", "INPUTS.image.check_conversion",
                "CLIENTS.authorization"):
        assert f"{AIME_CFG}: {key}:" in unsupported


def test_aime_validation_rules_hold_for_a_whole_job() -> None:
    endpoint, _, _ = load_aime_endpoint(AIME_CFG)
    checked = validate_inputs(endpoint.inputs, {"text": "x" * 201, "steps": 21, "bogus": 1})
    assert set(checked.errors) == {"text", "steps", "bogus"}  # every field's error at once
    assert "200" in checked.errors["text"] and "20" in checked.errors["steps"]
    assert validate_inputs(endpoint.inputs, {}).errors == {"text": "is required"}


def test_unsupported_types_and_keys_are_reported_not_refused(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, MINIMAL + """
[ENDPOINT.extra]
[CLIENTS]
authentication = "User"
[INPUTS]
clip.type = "video"
note.type = "string"
note.color = "red"
[OUTPUTS]
blob = { type = "tensor" }
[SESSION.VARS]
counter = { type = "integer", default = 0 }
[ADMIN]
""".replace("[ENDPOINT.extra]\n", ""))
    endpoint, _, notes = load_aime_endpoint(path)
    text = "\n".join(notes)
    assert "clip" not in endpoint.inputs and "INPUTS.clip.type: type 'video'" in text
    assert endpoint.outputs["blob"].type_name == "json"
    for key in ("INPUTS.note.color", "SESSION.VARS", "ADMIN", "CLIENTS.authentication",
                "CLIENTS.authorization_keys: none: the endpoint is open"):
        assert key in text
    assert not endpoint.clients.auth_keys  # no keys: open, and said so


@pytest.mark.parametrize(("text", "expected"), [
    ("[ENDPOINT]\ntitle = 'x'\n[WORKER]\nauth_key = 'k'\n", "ENDPOINT.name: required"),
    (MINIMAL.replace('auth_key = "worker-key"', ""), "WORKER.auth_key: required"),
    (MINIMAL + "request_timeout = 'long'\n", "WORKER.request_timeout: must be"),
    (MINIMAL.replace('name = "tiny"', 'name = "tiny"\njob_inactivity_timeout = "x"'),
     "ENDPOINT.job_inactivity_timeout: must be a number of seconds"),
    (MINIMAL.replace('name = "tiny"', 'name = "tiny"\nmethods = ["PUT"]'),
     "ENDPOINT.methods: must list GET and/or POST"),
    (MINIMAL + "[INPUTS]\nn.type = 'int'\nn.minimum = 'one'\n", "INPUTS.n.minimum: must be"),
    ("[ENDPOINT\n", "cannot be read as TOML"),
])
def test_broken_configs_are_refused_with_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write_cfg(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_aime_endpoint(path)
    assert any(line.startswith(str(path)) and expected in line for line in refused.value.problems)


def test_configs_are_found_as_aimes_c_finds_them(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    first = write_cfg(tmp_path / "a" / "deep", MINIMAL)
    second = write_cfg(tmp_path, MINIMAL.replace("tiny", "other"), "b.cfg")
    assert find_configs(str(tmp_path)) == [first]  # a folder: recursively, by name
    assert find_configs(f"{first}, {second}") == [first, second]
    with pytest.raises(ConfigError, match="no AIME endpoint config"):
        find_configs(str(tmp_path / "missing.cfg"))
    assert find_configs("") == []


def test_aime_and_toml_endpoints_load_together_and_must_not_collide(tmp_path: Path) -> None:
    folder = tmp_path / "endpoints"
    (folder / "tiny").mkdir(parents=True)
    (folder / "tiny" / "endpoint.toml").write_text('[WORKER]\nauth_keys = ["k"]\n')
    write_cfg(folder / "tiny", MINIMAL.replace('"tiny"', '"aime_tiny"'))
    endpoints, aime = load_with_aime(ServerConfig(endpoints_dir=str(folder)))
    assert set(endpoints) == {"tiny", "aime_tiny"} and set(aime.infos) == {"aime_tiny"}
    write_cfg(folder / "tiny", MINIMAL)  # now named like the endpoint.toml's
    with pytest.raises(ConfigError, match=r"'tiny' is also an endpoint\.toml's"):
        load_with_aime(ServerConfig(endpoints_dir=str(folder)))
    only_cfg = ServerConfig(endpoints_dir=str(folder / "tiny" / "aime_api_endpoint.cfg"))
    endpoints, _ = load_with_aime(only_cfg)  # -c naming a .cfg file: AIME's endpoints only
    assert set(endpoints) == {"tiny"}
    under_prefix = MINIMAL.replace('"tiny"', '"aime"')
    write_cfg(folder / "tiny", under_prefix)
    with pytest.raises(ConfigError, match="under \\[SERVER\\] aime_prefix"):
        load_with_aime(ServerConfig(endpoints_dir=str(folder / "tiny" /
                                                       "aime_api_endpoint.cfg")))
    assert load_with_aime(ServerConfig(endpoints_dir=str(tmp_path / "endpoints" / "tiny" /
                                                         "aime_api_endpoint.cfg"),
                                       aime_prefix="/compat"))[1] != AimeConfigs()


@pytest.mark.parametrize("prefix", ["aime", "/api", "/", "/v1/aime", "/a b"])
def test_a_bad_aime_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="aime_prefix"):
        load_server_config(None, aime_prefix=prefix)


def test_session_keys_are_checked_without_server_state() -> None:
    endpoint, _, _ = load_aime_endpoint(AIME_CFG)
    now = [1_000_000.0]
    sessions = SessionKeys({endpoint.name: endpoint}, ttl_s=60, clock=lambda: now[0])
    owner = key_hash("aime-client-key")
    token = sessions.issue("aime_echo", owner)
    restarted = SessionKeys({endpoint.name: endpoint}, ttl_s=60, clock=lambda: now[0])
    assert restarted.owner("aime_echo", token) == owner  # another server, or after a restart
    assert sessions.owner("other_endpoint", token) is None
    assert sessions.owner("aime_echo", token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    assert sessions.owner("aime_echo", "garbage") is None
    now[0] += 61
    assert sessions.owner("aime_echo", token) is None  # expired


def test_selection_auto_convert_without_a_default_takes_the_first_value() -> None:
    from api_server.fields import SelectionField

    spec = SelectionField(name="m", supported=("a", "b"), auto_convert=True)
    assert spec.check("z") == "a"
    with pytest.raises(FieldError):
        SelectionField(name="m", supported=("a", "b")).check("z")


async def test_aime_enabled_serves_endpoint_toml_endpoints_too() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from api_server.app import create_app
    from api_server.config import load_endpoints
    from api_server.store import MemoryJournal

    endpoints = {"echo": load_endpoints(REPO_ENDPOINTS)["echo"]}
    app = create_app(ServerConfig(aime_enabled=True), endpoints, journal=MemoryJournal())
    async with TestClient(TestServer(app)) as client:
        details = await (await client.get("/aime/api/endpoints/echo")).json()
        assert details["parameter_description"]["input"]["steps"]["type"] == "integer"
        submitted = await client.post("/aime/echo", json={"text": "hi", "wait_for_result": False})
        assert submitted.status == 200  # an open endpoint: no key needed
        cmd = await (await client.post("/aime/worker_job_request", json={
            "auth": "w", "job_type": "echo", "auth_key": "echo-worker-key",
            "max_job_batch": 2, "request_timeout": 1})).json()
        assert cmd["cmd"] == "job" and cmd["job_data"][0]["text"] == "hi"
    off = create_app(ServerConfig(), endpoints, journal=MemoryJournal())
    async with TestClient(TestServer(off)) as client:
        assert (await client.post("/aime/worker_job_request", json={})).status == 404
