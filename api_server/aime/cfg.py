"""AIME endpoint configs (`aime_api_endpoint.cfg`, TOML) read as jobhive endpoints.

Each file becomes a `config.Endpoint` (the same queue, leases, keys and validation as an
endpoint.toml) plus an `AimeInfo`: what AIME's protocol needs that jobhive's config has no place
for (the HTTP methods, the category, the descriptions AIME workers encode outputs by). AIME's
keys are mapped to jobhive's (`job_inactivity_timeout` is `lease_s`, `auth_key` is `auth_keys`,
`authorization_keys` are the client keys, field types and their limits); jobhive's own keys
may be used beside them (`max_attempts`, `rate_limit_per_s`, ...). A key jobhive does not
support is not an error (AIME deployments carry demo-page tables, billing keys, ffmpeg
details): it is listed in `AimeConfigs.unsupported`, one 'file: KEY: why' line each, printed
at start-up. A value of the wrong type, a missing name or worker key is an error, as in an
endpoint.toml.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api_server import media
from api_server.aime.sessions import SessionKeys
from api_server.config import (
    ClientsSection,
    ConfigError,
    Endpoint,
    EndpointSection,
    ServerConfig,
    StaticSection,
    WorkerSection,
    build,
    check_positive,
    check_route,
    load_endpoints,
    load_fields,
)

CFG_NAME = "aime_api_endpoint.cfg"  # what AIME's -c looks for in a folder (recursively)
# The inputs AIME adds to every endpoint: protocol parameters, never passed to workers.
IMPLICIT_INPUTS = ("client_session_auth_key", "key", "wait_for_result")
METHODS = ("GET", "POST")
# AIME's server-wide defaults (aime_api_server.cfg) where jobhive's differ: its version,
# job_inactivity_timeout (a lease here) and result_lifetime.
AIME_DEFAULTS = {"version": 0, "lease_s": 360.0, "result_ttl_s": 900.0}
# AIME sets no limit on a worker's batch; its LLM workers ask for up to 256 jobs at once.
DEFAULT_MAX_BATCH = 256

# AIME's field types -> jobhive's.
FIELD_TYPES = {
    "string": "string", "str": "string", "text_context": "string",
    "integer": "integer", "int": "integer", "float": "float",
    "bool": "boolean", "boolean": "boolean", "selection": "selection", "json": "json",
    "chat_context": "chat_context", "image": "image", "image_list": "image_list",
    "audio": "audio",
}
_COMMON_FIELD_KEYS = ("default", "required", "description", "label")
_NUMBER_KEYS = {"minimum": "minimum", "min": "minimum", "maximum": "maximum", "max": "maximum",
                "align": "align", "auto_convert": "auto_convert"}
# Per jobhive type: AIME key -> jobhive key (besides _COMMON_FIELD_KEYS).
_FIELD_KEYS: Mapping[str, Mapping[str, str]] = {
    "string": {"max_length": "max_length", "min_length": "min_length",
               "auto_convert": "auto_convert"},
    "integer": _NUMBER_KEYS,
    "float": _NUMBER_KEYS,
    "boolean": {},
    "selection": {"supported": "supported", "auto_convert": "auto_convert"},
    "json": {"max_bytes": "max_bytes"},
    "chat_context": {"max_messages": "max_messages", "max_length": "max_length",
                     "roles": "roles"},
}
# What `[CLIENTS] provide_worker_meta_data` adds to a result.
WORKER_META_OUTPUTS = ("auth", "worker_interface_version")
_NO_EFFECT = "no effect in jobhive (AIME's ffmpeg details)"


@dataclass(frozen=True)
class AimeInfo:
    """What an endpoint's AIME protocol needs beyond `config.Endpoint`.

    Args:
        source (str): the file it was read from ("" for an endpoint.toml endpoint).
        methods (tuple[str, ...]): the HTTP methods its client routes take (GET, POST).
        category (str | None): `[ENDPOINT] category` ("chat"), shown in its details.
        request_timeout_s (float | None): `[WORKER] request_timeout`: how long a worker's job
            request is held (capped by `[SERVER] worker_poll_max_s`); None: the worker's own.
        provide_worker_meta_data (bool): results name the worker and its interface version.
        text_contexts, chat_contexts (tuple[str, ...]): inputs of AIME's `text_context` and
            `chat_context` types; a job may give one kind, not both.
        inputs, outputs, progress_outputs (Mapping[str, Any]): AIME's field descriptions as
            configured (types, formats, colour spaces): AIME workers encode outputs by them.
    """

    source: str = ""
    methods: tuple[str, ...] = METHODS
    category: str | None = None
    request_timeout_s: float | None = None
    provide_worker_meta_data: bool = False
    text_contexts: tuple[str, ...] = ()
    chat_contexts: tuple[str, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    progress_outputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AimeConfigs:
    """Every AIME config read: the endpoints, their AimeInfo, the keys not supported."""

    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    infos: Mapping[str, AimeInfo] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()


def find_configs(source: str) -> list[Path]:
    """The config files AIME's `-c` would read: a file, a comma-separated list of files, or a
    folder searched recursively for `aime_api_endpoint.cfg`; ConfigError for a path that
    does not exist."""
    found: list[Path] = []
    for part in (p.strip() for p in source.split(",")):
        path = Path(part)
        if not part:
            continue
        if path.is_dir():
            found.extend(sorted(path.rglob(CFG_NAME)))
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError([f"{part}: no AIME endpoint config or folder there"])
    return found


def load_aime_endpoints(paths: list[Path]) -> AimeConfigs:
    """Reads AIME endpoint configs; refuses them all (ConfigError, every problem) if any is
    broken or two share a name."""
    endpoints: dict[str, Endpoint] = {}
    infos: dict[str, AimeInfo] = {}
    unsupported: list[str] = []
    problems: list[str] = []
    for path in paths:
        try:
            endpoint, info, notes = load_aime_endpoint(path)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        unsupported.extend(notes)
        if endpoint.name in endpoints:
            problems.append(f"{path}: ENDPOINT.name: {endpoint.name!r} is already used "
                            f"(by {infos[endpoint.name].source})")
        endpoints[endpoint.name], infos[endpoint.name] = endpoint, info
    if problems:
        raise ConfigError(problems)
    return AimeConfigs(endpoints, infos, tuple(unsupported))


def load_aime_endpoint(path: Path) -> tuple[Endpoint, AimeInfo, list[str]]:
    """Reads one AIME endpoint config.

    Returns:
        tuple[Endpoint, AimeInfo, list[str]]: the endpoint, its AIME facts, and one
        'file: KEY: why' line per key that jobhive does not support.

    Raises:
        ConfigError: the file is not TOML, or a value is missing or of the wrong type.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError([f"{path}: cannot be read as TOML ({e})"]) from e
    problems: list[str] = []
    notes: list[str] = []
    reader = _Reader(path, problems, notes)
    endpoint, info_values = reader.endpoint(_table(data, "ENDPOINT", path, problems))
    worker, request_timeout_s = reader.worker(_table(data, "WORKER", path, problems))
    clients, meta = reader.clients(_table(data, "CLIENTS", path, problems))
    inputs_table = _table(data, "INPUTS", path, problems)
    outputs_table = _table(data, "OUTPUTS", path, problems)
    progress_table = _table(data, "PROGRESS", path, problems)
    progress_outputs_table = _table(progress_table, "OUTPUTS", path, problems, "PROGRESS.")
    reader.other_sections(data, progress_table)
    inputs = load_fields(reader.fields(inputs_table, "INPUTS", True), f"{path}: INPUTS",
                          problems)
    outputs_fields = reader.fields(outputs_table, "OUTPUTS", False)
    if meta:  # the worker's name and interface version travel as outputs
        outputs_fields.update({key: {"type": "string"} for key in WORKER_META_OUTPUTS})
    outputs = load_fields(outputs_fields, f"{path}: OUTPUTS", problems)
    progress_outputs = load_fields(
        reader.fields(progress_outputs_table, "PROGRESS.OUTPUTS", False),
        f"{path}: PROGRESS.OUTPUTS", problems)
    if endpoint is not None and worker is not None:
        worker = dataclasses.replace(worker, job_type=worker.job_type or endpoint.name)
    if problems or endpoint is None or worker is None or clients is None:
        raise ConfigError(problems)
    info = AimeInfo(
        source=str(path),
        request_timeout_s=request_timeout_s,
        provide_worker_meta_data=meta,
        text_contexts=_of_type(inputs_table, "text_context"),
        chat_contexts=_of_type(inputs_table, "chat_context"),
        inputs={k: v for k, v in inputs_table.items() if k not in IMPLICIT_INPUTS},
        outputs=outputs_table,
        progress_outputs=progress_outputs_table,
        **info_values,
    )
    return (Endpoint(endpoint=endpoint, worker=worker, clients=clients, static=StaticSection(),
                     inputs=inputs, outputs=outputs, progress_outputs=progress_outputs,
                     folder=path.parent), info, notes)


def _table(data: Any, name: str, path: Path, problems: list[str], prefix: str = "") -> dict:
    value = data.get(name, {})
    if isinstance(value, dict):
        return value
    problems.append(f"{path}: {prefix}{name}: must be a table")
    return {}


def _of_type(inputs: Mapping[str, Any], type_name: str) -> tuple[str, ...]:
    return tuple(k for k, v in inputs.items() if isinstance(v, dict) and v.get("type") == type_name)


class _Reader:
    """Maps one file's AIME tables to jobhive's, adding problems and unsupported-key notes."""

    def __init__(self, path: Path, problems: list[str], notes: list[str]) -> None:
        self.path, self.problems, self.notes = path, problems, notes

    def note(self, key: str, why: str) -> None:
        self.notes.append(f"{self.path}: {key}: {why}")

    def typed(self, table: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
              where: str, what: str) -> Any:
        """table[key] when it is of `kind` (bools are not numbers); else a problem, None."""
        value = table.get(key)
        is_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                            else (kind,))
        if value is None or (isinstance(value, kind) and not is_bool):
            return value
        self.problems.append(f"{self.path}: {where}.{key}: must be {what} (got {value!r})")
        return None

    def endpoint(self, table: dict) -> tuple[EndpointSection | None, dict[str, Any]]:
        native = {f.name for f in dataclasses.fields(EndpointSection)}
        values: dict[str, Any] = dict(AIME_DEFAULTS)
        renamed = {"job_inactivity_timeout": "lease_s", "result_lifetime": "result_ttl_s"}
        unsupported = {
            "max_time_in_queue": "jobhive keeps a queued job until a worker takes it or its "
                                 "client cancels it",
            "demo_url": "AIME's demo pages are not served (jobhive's page is at /NAME)",
            "provide_worker_meta_data": "read from [CLIENTS], as AIME does",
            "input_metering": "no billing backend", "output_metering": "no billing backend",
        }
        info: dict[str, Any] = {}
        for key, value in table.items():
            if key in renamed:
                number = self.typed(table, key, (int, float), "ENDPOINT", "a number of seconds")
                if number is not None:
                    values[renamed[key]] = number
            elif key == "methods":
                info["methods"] = self.methods(value)
            elif key == "category":
                info["category"] = self.typed(table, key, str, "ENDPOINT", "a string")
            elif key in unsupported:
                self.note(f"ENDPOINT.{key}", f"not supported: {unsupported[key]}")
            elif key in native:
                values[key] = value
            else:
                self.note(f"ENDPOINT.{key}", "unknown key; ignored")
        if not isinstance(table.get("name"), str) or not table["name"]:
            self.problems.append(f"{self.path}: ENDPOINT.name: required (the endpoint's name)")
            return None, info
        section = build(EndpointSection, values, f"{self.path}: ENDPOINT", self.problems)
        if section is None:
            return None, info
        section = dataclasses.replace(section, title=section.title or section.name,
                                      route=section.route or f"/{section.name}")
        check_route(section.route, self.path, self.problems)
        check_positive(section, self.path, self.problems)
        return section, info

    def methods(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, list) and value and all(m in METHODS for m in value):
            return tuple(value)
        self.problems.append(f"{self.path}: ENDPOINT.methods: must list GET and/or POST "
                             f"(got {value!r})")
        return METHODS

    def worker(self, table: dict) -> tuple[WorkerSection | None, float | None]:
        values: dict[str, Any] = {"max_batch": DEFAULT_MAX_BATCH}
        timeout_s = self.typed(table, "request_timeout", (int, float), "WORKER", "seconds")
        for key, value in table.items():
            if key == "auth_key":
                if self.typed(table, key, str, "WORKER", "a string") is not None:
                    values["auth_keys"] = [value]
            elif key in ("job_type", "auth_keys", "max_batch"):
                values[key] = value
            elif key == "job_timeout":
                self.note("WORKER.job_timeout", "not read by AIME either; jobhive's is "
                          "[ENDPOINT] job_timeout_s")
            elif key != "request_timeout":
                self.note(f"WORKER.{key}", "unknown key; ignored")
        section = build(WorkerSection, values, f"{self.path}: WORKER", self.problems)
        if section is not None and (not section.auth_keys or "" in section.auth_keys):
            self.problems.append(f"{self.path}: WORKER.auth_key: required: the key AIME "
                                 "workers send (auth_key)")
            return None, timeout_s
        if timeout_s is not None and timeout_s <= 0:
            self.problems.append(f"{self.path}: WORKER.request_timeout: must be > 0")
        return section, timeout_s

    def clients(self, table: dict) -> tuple[ClientsSection | None, bool]:
        values: dict[str, Any] = {"rate_limit_per_s": 0.0}  # AIME limits no client
        meta = self.typed(table, "provide_worker_meta_data", bool, "CLIENTS", "true or false")
        for key, value in table.items():
            if key == "authorization_keys":
                keys = value.values() if isinstance(value, dict) else None
                if keys is None or not all(isinstance(k, str) and k for k in keys):
                    self.problems.append(f"{self.path}: CLIENTS.authorization_keys: must be a "
                                         "table of user = \"key\"")
                else:
                    values["auth_keys"] = sorted(set(keys))
            elif key in ("auth_keys", "rate_limit_per_s", "rate_burst"):
                values[key] = value
            elif key == "client_request_limit":
                if value:
                    self.note("CLIENTS.client_request_limit", "not enforced by AIME; jobhive "
                              "limits by [CLIENTS] rate_limit_per_s (default: no limit)")
            elif key in ("authentication", "authorization"):
                self.note(f"CLIENTS.{key}", "not enforced by AIME; jobhive: an endpoint with "
                          "authorization_keys needs one of them, one without is open")
            elif key != "provide_worker_meta_data":
                self.note(f"CLIENTS.{key}", "unknown key; ignored")
        if "auth_keys" not in values:
            self.note("CLIENTS.authorization_keys", "none: the endpoint is open to any client "
                      "(aime_api_server.cfg's default_authorization_keys are not read)")
        return build(ClientsSection, values, f"{self.path}: CLIENTS", self.problems), bool(meta)

    def other_sections(self, data: dict, progress: dict) -> None:
        known = {"ENDPOINT", "WORKER", "CLIENTS", "INPUTS", "OUTPUTS", "PROGRESS"}
        for section, value in data.items():
            if section == "SESSION":
                if value.get("VARS") if isinstance(value, dict) else value:
                    self.note("SESSION.VARS", "not supported: jobhive keeps no browser sessions")
            elif section in ("STATIC", "JINJA"):
                self.note(section, "not supported: AIME's demo pages are not served")
            elif section not in known:
                self.note(section, "unknown section; ignored")
        for key in progress.keys() - {"OUTPUTS"}:
            self.note(f"PROGRESS.{key}", "unknown key; ignored")

    def fields(self, table: dict, where: str, inputs: bool) -> dict[str, Any]:
        """AIME's field tables as endpoint.toml field tables (for config.load_fields)."""
        out: dict[str, Any] = {}
        for name, spec in table.items():
            here = f"{where}.{name}"
            if inputs and name in IMPLICIT_INPUTS:
                continue  # protocol parameters, read by the routes
            if not isinstance(spec, dict):
                self.problems.append(f"{self.path}: {here}: must be a table of the field's keys")
                continue
            aime_type = spec.get("type", "string")  # AIME's default type
            type_name = FIELD_TYPES.get(aime_type) if isinstance(aime_type, str) else None
            if type_name is None:
                if inputs:
                    self.note(f"{here}.type", f"type {aime_type!r} not supported; the input "
                              "is left out (a job that sends it is refused)")
                    continue
                type_name = "json"  # an output of another type: kept as it comes
                self.note(f"{here}.type", f"type {aime_type!r} not supported; kept as json")
            if not inputs:  # outputs: their type; format and colour space are the worker's
                out[name] = {"type": type_name, **({"description": spec["description"]}
                                                   if "description" in spec else {})}
                continue
            out[name] = self.input_field(spec, here, type_name)
        return out

    def input_field(self, spec: dict, here: str, type_name: str) -> dict[str, Any]:
        if type_name == "image":
            return self.image(spec, here)
        if type_name == "audio":
            return self.audio(spec, here)
        keys = _FIELD_KEYS.get(type_name, {})
        out: dict[str, Any] = {"type": type_name}
        for key, value in spec.items():
            if key in _COMMON_FIELD_KEYS:
                out[key] = value
            elif key in keys:
                out[keys[key]] = value
            elif key != "type":
                self.note(f"{here}.{key}", "not supported; ignored")
        return _required_rule(out)

    def image(self, spec: dict, here: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "image"}
        for key, value in spec.items():
            sub = value if isinstance(value, dict) else {}
            if key in _COMMON_FIELD_KEYS:
                out[key] = value
            elif key == "format":
                self.format_table(sub, f"{here}.format", media.IMAGE_FORMATS, out)
            elif key == "size":
                self.image_size(sub, here, out)
            elif key == "color_space":
                if "rgb" not in [str(s).lower() for s in sub.get("supported", ["rgb"])]:
                    self.note(f"{here}.color_space", "only RGB images are made by jobhive")
            elif key == "resize_method":
                if value != "scale":
                    self.note(f"{here}.resize_method", f"{value!r} not supported: jobhive "
                              "scales (keeping the aspect ratio), never crops")
            elif key in ("check_conversion", "input_temp_file", "output_temp_file"):
                self.note(f"{here}.{key}", _NO_EFFECT)
            elif key != "type":
                self.note(f"{here}.{key}", "not supported; ignored")
        return _required_rule(out)

    def image_size(self, size: dict, here: str, out: dict[str, Any]) -> None:
        maximum = size.get("maximum", size.get("max"))
        if isinstance(maximum, list) and len(maximum) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in maximum):
            out["max_width"], out["max_height"] = maximum
        elif maximum is not None:
            self.problems.append(f"{self.path}: {here}.size.maximum: must be [width, height] "
                                 f"(got {maximum!r})")
        out["auto_convert"] = out.get("auto_convert") or bool(size.get("auto_convert"))
        for key in ("minimum", "min", "align", "default"):
            if key in size:
                self.note(f"{here}.size.{key}", "not supported: jobhive shrinks images over "
                          "the maximum (keeping the aspect ratio) and never enlarges or crops")
        if size.get("keep_aspect_ratio") is False:
            self.note(f"{here}.size.keep_aspect_ratio", "jobhive always keeps it")

    def audio(self, spec: dict, here: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "audio"}
        for key, value in spec.items():
            sub = value if isinstance(value, dict) else {}
            if key in _COMMON_FIELD_KEYS:
                out[key] = value
            elif key == "format":
                self.format_table(sub, f"{here}.format", None, out)
            elif key == "sample_rate" and isinstance(sub.get("default"), int):
                out["sample_rate"] = sub["default"]
                out["auto_convert"] = out.get("auto_convert") or bool(sub.get("auto_convert"))
            elif key == "duration" and isinstance(sub.get("maximum", sub.get("max")), int | float):
                out["max_duration_s"] = sub.get("maximum", sub.get("max"))
            elif key in ("check_conversion", "input_temp_file", "output_temp_file"):
                self.note(f"{here}.{key}", _NO_EFFECT)
            elif key != "type":
                self.note(f"{here}.{key}", "not supported; ignored")
        return _required_rule(out)

    def format_table(self, table: dict, here: str, known: tuple[str, ...] | None,
                     out: dict[str, Any]) -> None:
        """An image's or audio's `format` table into `out`: its formats, and auto_convert."""
        if "supported" in table:
            out["formats"] = self.formats(table, here, known)
        out["auto_convert"] = out.get("auto_convert") or bool(table.get("auto_convert"))

    def formats(self, table: dict, here: str, known: tuple[str, ...] | None) -> list[str]:
        """AIME's `format = {supported, default}` as jobhive's formats: lower case, the
        default first (auto_convert converts to it), JPG as JPEG; unknown ones noted."""
        names = [str(f).lower().replace("jpg", "jpeg") for f in table.get("supported", [])]
        default = str(table.get("default", "")).lower().replace("jpg", "jpeg")
        ordered = [default] if default in names else []
        ordered += [n for n in names if n not in ordered]
        unknown = [n for n in ordered if known is not None and n not in known]
        if unknown:
            self.note(f"{here}.supported", f"{', '.join(unknown)} not supported; left out")
        return [n for n in ordered if n not in unknown] or list(known or ())[:3]


def _required_rule(field_table: dict[str, Any]) -> dict[str, Any]:
    """AIME's rule: `required = true` needs the value even when a default is configured (the
    default is then unused); `required` absent means optional."""
    if field_table.get("required") is True:
        field_table.pop("default", None)
    elif "required" not in field_table:
        field_table["required"] = False
    return field_table


@dataclass(frozen=True)
class AimeState:
    """The AIME protocol's part of a running app (`app[state.AIME]`).

    Args:
        prefix (str): where its routes are mounted (`[SERVER] aime_prefix`).
        infos (Mapping[str, AimeInfo]): the AIME facts of the endpoints read from AIME
            configs (others get theirs from `shapes.info_of`).
        sessions (SessionKeys): issues and checks `client_session_auth_key`s.
    """

    prefix: str
    infos: Mapping[str, AimeInfo]
    sessions: SessionKeys


def load_with_aime(config: ServerConfig) -> tuple[dict[str, Endpoint], AimeConfigs]:
    """Every endpoint the server serves: those of the `-c` folder's endpoint.toml files, and
    those of AIME configs, found where AIME's `-c` finds them: in that same folder (or `-c`
    itself when it names .cfg files) and in `[SERVER] aime_endpoints_dir`.

    Raises:
        ConfigError: a broken config, or two endpoints with one name or page route.
    """
    given = config.endpoints_dir
    names_files = "," in given or Path(given).is_file()
    endpoints = {} if names_files else load_endpoints(Path(given))
    paths = find_configs(given) + find_configs(config.aime_endpoints_dir)
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    aime = load_aime_endpoints(unique) if unique else AimeConfigs()
    problems = []
    for name, endpoint in aime.endpoints.items():
        source = aime.infos[name].source
        if name in endpoints:
            problems.append(f"{source}: ENDPOINT.name: {name!r} is also an endpoint.toml's")
        elif any(e.endpoint.route == endpoint.endpoint.route for e in endpoints.values()):
            problems.append(f"{source}: {endpoint.endpoint.route!r} is already another "
                            "endpoint's page (set [ENDPOINT] route)")
    merged = {**endpoints, **aime.endpoints}
    if config.aime_enabled or aime.endpoints:
        prefix = config.aime_prefix
        problems += [f"endpoint {e.name!r}: its page {e.endpoint.route!r} is under "
                     f"[SERVER] aime_prefix {prefix!r}" for e in merged.values()
                     if (e.endpoint.route + "/").startswith(prefix + "/")]
    if problems:
        raise ConfigError(problems)
    return merged, aime
