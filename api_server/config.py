"""Server and endpoint configuration: one frozen dataclass per TOML table.

`load_endpoints(dir)` reads every `endpoints/NAME/endpoint.toml`; `load_server_config(path)` reads
the optional server.toml. Both check every key against the dataclass it fills and refuse the whole
configuration with one line per problem (file, key, reason) when anything is unknown or mistyped.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api_server.fields import FIELD_TYPES, MEDIA_TYPE_NAMES, FieldError, FieldSpec
from jobhive.logs import LOG_FORMATS

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A demo page's route: one or more /segments, none empty or starting with a dot.
ROUTE_PATTERN = re.compile(r"^(/[A-Za-z0-9_~-][A-Za-z0-9_.~-]*)+$")
# First route segments the server uses itself (the API, static files, status, planned routes).
RESERVED_ROUTES = ("api", "static", "v1", "health", "metrics", "dashboard", "favicon.ico")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # [SERVER] log_level, --log-level


class ConfigError(Exception):
    """A configuration was refused; `problems` holds one 'file: key: reason' line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServerConfig:
    """The `[SERVER]` table of server.toml; the command line overrides it.

    Args:
        host (str): the address to bind.
        port (int): the TCP port to bind.
        endpoints_dir (str): the folder with one `NAME/endpoint.toml` per endpoint.
        store (str): `sqlite:PATH` (default) for the embedded durable store; `redis://HOST:PORT/DB`,
            `rediss://...` (TLS) or `redis+sentinel://HOST:PORT,HOST:PORT/MASTER/DB` for a Redis
            that several servers share.
        max_body_bytes (int): the largest request body; an endpoint may set a smaller one.
        worker_poll_max_s (float): the longest a worker's job poll is held open.
        client_wait_max_s (float): the longest `?wait=` a client may ask for.
        sweep_interval_s (float): how often expired leases and results are swept.
        worker_seen_ttl_s (float): a worker unseen this long drops out of `/api/v1/status`.
        sse_keepalive_s (float): how often an idle event stream gets a comment line.
        log_level (str): DEBUG, INFO, WARNING or ERROR.
        log_format (str): "text" (default) or "json": one JSON object per line (jobhive/logs.py).
        max_json_depth (int): the deepest nesting of lists and objects a request body may have.
        admin_keys (tuple[str, ...]): keys that see worker addresses in `/api/v1/status`.
        allowed_hosts (tuple[str, ...]): Host header values served (with or without a port);
            empty serves any. Set it when the server is reachable by name, so that a web page
            of another site cannot reach it through DNS rebinding.
        keepalive_timeout_s (float): an idle keep-alive connection is closed after this long.
        header_timeout_s (float): the longest a request's line and headers may take to arrive
            (from the connection's start for its first request); then the connection is closed.
        body_timeout_s (float): a request body, or a response the client does not read, that
            makes no progress for this long drops the connection.
        max_connections (int): the most connections held open; fewer when the open-files limit
            (ulimit -n) is lower. Past it the longest-idle connection is closed for the new one,
            or the new one is refused when none is idle.
        max_file_bytes (int): the largest output file a worker may upload (413 past it).
        max_job_files_bytes (int): the most bytes of files one job may hold (413 past it).
        files_dir (str): where output files are kept, one folder per job; "" (default): beside
            the store's SQLite file, `PATH.files` (with Redis: `jobhive-files` in the working
            folder). Servers sharing a Redis must share this folder too (a network file system).
        durability (str): with Redis, when a change is acknowledged: "everysec" (default; the
            append-only file is fsynced every second, so a power cut of the Redis host can lose
            about the last 1-2 s), "always" (Redis fsyncs before it answers; needs `appendfsync
            always`) or "replicated" (a replica holds the change first: WAIT 1; for Sentinel).
        redis_prefix (str): the prefix of the store's Redis keys (deployments sharing a Redis
            need one each).
        redis_timeout_s (float): the longest a Redis command may take; past it the request is
            answered 503 (Redis away).
        replication_wait_ms (int): with durability "replicated", how long a change waits for a
            replica before it is answered 503.
        aime_enabled (bool): serve AIME's client and worker protocol (api_server/aime) for
            every endpoint; on by itself when AIME endpoint configs are read.
        aime_endpoints_dir (str): AIME endpoint configs to read, as AIME's `-c` takes them:
            a folder searched recursively for `aime_api_endpoint.cfg`, a file, or a
            comma-separated list of files; "" (default): none.
        aime_prefix (str): where AIME's routes are mounted ("/aime": `/aime/{endpoint}`,
            `/aime/worker_job_request`, ...), apart from jobhive's own paths.
        aime_session_ttl_s (float): how long an AIME login's client_session_auth_key lasts.
        server_name (str): this server's `server` label in `/metrics` (each server of a
            deployment needs its own); "" (default): HOST:PORT of the machine's host name and
            `port`, or HOST-PID when `port` is 0.
        metrics_admin_only (bool): `/metrics` answers only a request with one of
            `admin_keys` (401 without a key, 403 with another).
    """

    host: str = "127.0.0.1"
    port: int = 7777
    endpoints_dir: str = "endpoints"
    store: str = "sqlite:jobhive.sqlite3"
    max_body_bytes: int = 32 * 1024 * 1024
    worker_poll_max_s: float = 30.0
    client_wait_max_s: float = 300.0
    sweep_interval_s: float = 0.5
    worker_seen_ttl_s: float = 120.0
    sse_keepalive_s: float = 15.0
    log_level: str = "INFO"
    log_format: str = "text"
    max_json_depth: int = 64
    admin_keys: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    keepalive_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 4096
    max_file_bytes: int = 64 * 1024 * 1024
    max_job_files_bytes: int = 256 * 1024 * 1024
    files_dir: str = ""
    durability: str = "everysec"
    redis_prefix: str = "jobhive"
    redis_timeout_s: float = 5.0
    replication_wait_ms: int = 1000
    aime_enabled: bool = False
    aime_endpoints_dir: str = ""
    aime_prefix: str = "/aime"
    aime_session_ttl_s: float = 7 * 24 * 3600.0
    server_name: str = ""
    metrics_admin_only: bool = False


@dataclass(frozen=True)
class EndpointSection:
    """`[ENDPOINT]`: what the endpoint is and how its jobs are kept.

    Args:
        name (str): the endpoint's name in URLs; defaults to its folder's name.
        title, description (str): shown in listings and on the demo page.
        version (int): the endpoint's own version, for clients to notice changes.
        route (str): where the endpoint's demo page is served; defaults to `/NAME`.
        max_queue_length (int): queued jobs beyond this are refused with 429.
        max_queue_bytes (int): queued jobs' inputs beyond this many bytes are refused with 429
            (they are kept on the store's disk, not in memory).
        lease_s (float): a worker that sends no progress for this long loses the job, which is
            queued again.
        job_timeout_s (float): a job running longer than this (per attempt) fails.
        max_attempts (int): leases that may expire before the job fails.
        result_ttl_s (float): how long a finished job stays readable.
        max_body_bytes (int | None): the largest job submission; None takes the server's.
        require_any (tuple[str, ...]): inputs of which a job must give at least one (a search
            by text, by image or both, say); each must be optional with no default.
    """

    name: str = ""
    title: str = ""
    description: str = ""
    version: int = 1
    route: str = ""
    max_queue_length: int = 1000
    max_queue_bytes: int = 1024**3
    lease_s: float = 60.0
    job_timeout_s: float = 3600.0
    max_attempts: int = 3
    result_ttl_s: float = 3600.0
    max_body_bytes: int | None = None
    require_any: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerSection:
    """`[WORKER]`: who may take this endpoint's jobs.

    Args:
        job_type (str): what workers ask for; defaults to the endpoint's name.
        auth_keys (tuple[str, ...]): worker keys accepted (at least one).
        max_batch (int): the most jobs one worker poll is granted.
    """

    job_type: str = ""
    auth_keys: tuple[str, ...] = ()
    max_batch: int = 16


@dataclass(frozen=True)
class ClientsSection:
    """`[CLIENTS]`: who may submit jobs, and how fast.

    Args:
        auth_keys (tuple[str, ...]): client keys accepted; empty means open to anyone.
        rate_limit_per_s (float): sustained submissions per second per client (per key, or per
            address when open); 0 turns the limit off.
        rate_burst (int): submissions a client may make at once before the rate applies.
    """

    auth_keys: tuple[str, ...] = ()
    rate_limit_per_s: float = 20.0
    rate_burst: int = 40


@dataclass(frozen=True)
class StaticSection:
    """`[STATIC]`: an optional custom demo page (HTML file in the endpoint's folder)."""

    page: str = ""


OPENAI_KINDS = ("chat", "images", "embeddings")  # [OPENAI] kind: which /v1 routes serve it
# The inputs each kind fills from an OpenAI request: an endpoint of that kind must declare them.
OPENAI_REQUIRED_INPUTS = {
    "chat": ("chat_context", "max_new_tokens"),
    "images": ("prompt",),
    "embeddings": ("input",),
}
# An OpenAI model name: printable, no spaces ("llama4", "meta-llama/Llama-4-Scout", "sd3:1.5").
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$")


@dataclass(frozen=True)
class OpenAISection:
    """`[OPENAI]`: OpenAI clients reach the endpoint under /v1 (api_server/routes/openai.py).

    Args:
        kind (str): "chat" (/v1/chat/completions), "images" (/v1/images/generations and
            /v1/images/edits) or "embeddings" (/v1/embeddings).
        models (Any): the model names clients ask for (`GET /v1/models` lists them): a list of
            names, or a table of name -> the inputs that name sets on the job (an embeddings
            endpoint's `encoder`, say). Loaded as a dict of name -> inputs.
        max_inputs (int): embeddings: the most texts one request may embed.
        max_stop (int): chat: the most stop strings one request may give (OpenAI's own
            limit is 4).
    """

    kind: str = ""
    models: Any = ()
    max_inputs: int = 256
    max_stop: int = 4


@dataclass(frozen=True)
class Endpoint:
    """One endpoint, as loaded from `endpoints/NAME/endpoint.toml`."""

    endpoint: EndpointSection
    worker: WorkerSection
    clients: ClientsSection
    static: StaticSection
    inputs: Mapping[str, FieldSpec] = field(default_factory=dict)
    outputs: Mapping[str, FieldSpec] = field(default_factory=dict)
    progress_outputs: Mapping[str, FieldSpec] = field(default_factory=dict)
    folder: Path = Path()
    openai: OpenAISection | None = None  # [OPENAI]: served to OpenAI clients under /v1

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def job_type(self) -> str:
        return self.worker.job_type

    @functools.cached_property
    def media_outputs(self) -> frozenset[str] | None:
        """The [OUTPUTS] that may hold file references: those declared image, image_list or
        audio (a json output's {"file": ...} object is its own business); None (any) when the
        endpoint declares no outputs."""
        return _media_keys(self.outputs)

    @functools.cached_property
    def media_progress_outputs(self) -> frozenset[str] | None:
        """As media_outputs, of [PROGRESS.OUTPUTS]."""
        return _media_keys(self.progress_outputs)

    def schema(self) -> dict[str, Any]:
        """The endpoint as JSON for `GET /api/v1/endpoints/{name}` (keys are never shown)."""
        section = dataclasses.asdict(self.endpoint)
        return {
            **section,
            "job_type": self.job_type,
            "client_auth": bool(self.clients.auth_keys),
            "inputs": {name: spec.schema() for name, spec in self.inputs.items()},
            "outputs": {name: spec.schema() for name, spec in self.outputs.items()},
            "progress_outputs": {n: s.schema() for n, s in self.progress_outputs.items()},
        }


def _media_keys(declared: Mapping[str, FieldSpec]) -> frozenset[str] | None:
    if not declared:
        return None
    return frozenset(k for k, spec in declared.items() if spec.type_name in MEDIA_TYPE_NAMES)


_SECTIONS = {"ENDPOINT", "WORKER", "CLIENTS", "INPUTS", "OUTPUTS", "PROGRESS", "STATIC",
             "OPENAI"}


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a dataclass field's annotation (the few kinds we use)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_text(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_text(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]  # TOML has no null
        return " or ".join(_type_text(arg) for arg in args)
    return "anything" if hint is Any else getattr(hint, "__name__", None) or str(hint)


def build(cls: type, table: Any, where: str, problems: list[str], **fixed: Any) -> Any:
    """Builds a frozen dataclass from a TOML table, adding a problem line per bad key.

    Args:
        cls (type): the dataclass to fill.
        table (Any): the parsed TOML table (anything else is a problem).
        where (str): "file: SECTION" prefix for problem lines.
        problems (list[str]): collects the problems found.
        **fixed: values that do not come from the table (a field's name).

    Returns:
        Any: the instance, or None when the table had problems.
    """
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init} - fixed.keys()
    found = len(problems)
    for key in table.keys() - known:
        problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
    values = dict(fixed)
    for key in table.keys() & known:
        value = table[key]
        if not _type_ok(value, hints[key]):
            problems.append(f"{where}.{key}: must be {_type_text(hints[key])} (got {value!r})")
            continue
        # Only list-typed settings become tuples; a default stays the JSON value it is.
        values[key] = tuple(value) if typing.get_origin(hints[key]) is tuple else value
    if len(problems) > found:
        return None
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        problems.append(f"{where}: {e}")
        return None


def load_fields(table: Any, where: str, problems: list[str]) -> dict[str, FieldSpec]:
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table of fields")
        return {}
    specs: dict[str, FieldSpec] = {}
    for name, spec_table in table.items():
        here = f"{where}.{name}"
        if not NAME_PATTERN.match(name):
            problems.append(f"{here}: field names use letters, digits, '_', '.', '-'")
            continue
        if not isinstance(spec_table, dict) or "type" not in spec_table:
            problems.append(f"{here}: must be a table with a 'type' key")
            continue
        type_name = spec_table["type"]
        cls = FIELD_TYPES.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            problems.append(
                f"{here}.type: unknown type {type_name!r} (known: {', '.join(FIELD_TYPES)})"
            )
            continue
        rest = {k: v for k, v in spec_table.items() if k != "type"}
        spec = build(cls, rest, here, problems, name=name)
        if spec is None:
            continue
        spec_problems = spec.problems()
        problems.extend(f"{here}.{key}: {reason}" for key, reason in spec_problems)
        if spec_problems:
            continue
        if spec.default is not None:
            # A default must pass as it is written, not only once auto_convert has changed it.
            strict = spec
            if getattr(spec, "auto_convert", False):
                strict = dataclasses.replace(spec, auto_convert=False)  # type: ignore[call-arg]
            try:
                spec = dataclasses.replace(spec, default=strict.check(spec.default))
            except FieldError as e:
                problems.append(f"{here}.default: {e}")
                continue
        specs[name] = spec
    return specs


def load_endpoint(path: Path) -> Endpoint:
    """Loads one endpoint.toml; raises ConfigError with every problem found."""
    problems: list[str] = []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError([f"{path}: cannot be read as TOML ({e})"]) from e
    for section in data.keys() - _SECTIONS:
        problems.append(
            f"{path}: [{section}]: unknown section (known: {', '.join(sorted(_SECTIONS))})"
        )
    progress = data.get("PROGRESS", {})
    if not isinstance(progress, dict):
        problems.append(f"{path}: PROGRESS: must be a table ([PROGRESS.OUTPUTS.name] fields)")
    else:
        for key in progress.keys() - {"OUTPUTS"}:
            problems.append(f"{path}: PROGRESS.{key}: unknown key (only [PROGRESS.OUTPUTS])")
    folder_name = path.parent.name
    endpoint = build(EndpointSection, data.get("ENDPOINT", {}), f"{path}: ENDPOINT", problems)
    worker = build(WorkerSection, data.get("WORKER", {}), f"{path}: WORKER", problems)
    clients = build(ClientsSection, data.get("CLIENTS", {}), f"{path}: CLIENTS", problems)
    static = build(StaticSection, data.get("STATIC", {}), f"{path}: STATIC", problems)
    openai = None
    if "OPENAI" in data:
        openai = build(OpenAISection, data["OPENAI"], f"{path}: OPENAI", problems)
    inputs = load_fields(data.get("INPUTS", {}), f"{path}: INPUTS", problems)
    outputs = load_fields(data.get("OUTPUTS", {}), f"{path}: OUTPUTS", problems)
    progress_outputs = load_fields(
        progress.get("OUTPUTS", {}) if isinstance(progress, dict) else {},
        f"{path}: PROGRESS.OUTPUTS",
        problems,
    )
    if endpoint is not None:
        name = endpoint.name or folder_name
        if not NAME_PATTERN.match(name):
            problems.append(f"{path}: ENDPOINT.name: {name!r} is not a valid endpoint name")
        route_given = bool(endpoint.route)
        endpoint = dataclasses.replace(
            endpoint, name=name, title=endpoint.title or name, route=endpoint.route or f"/{name}"
        )
        if route_given or NAME_PATTERN.match(name):  # a bad name needs no second line for /NAME
            check_route(endpoint.route, path, problems)
        check_positive(endpoint, path, problems)
        for input_name in endpoint.require_any:
            spec = inputs.get(input_name)
            if spec is None:
                problems.append(f"{path}: ENDPOINT.require_any: {input_name!r} is not an input")
            elif spec.is_required or spec.default is not None:
                problems.append(f"{path}: ENDPOINT.require_any: input {input_name!r} must be "
                                "optional with no default")
    if clients is not None:
        if clients.rate_limit_per_s < 0:
            problems.append(f"{path}: CLIENTS.rate_limit_per_s: must be 0 (no limit) or more")
        if clients.rate_burst < 1:
            problems.append(f"{path}: CLIENTS.rate_burst: must be at least 1")
        if "" in clients.auth_keys:
            problems.append(f"{path}: CLIENTS.auth_keys: a key must not be empty")
    if worker is not None:
        if not worker.auth_keys:
            problems.append(f"{path}: WORKER.auth_keys: at least one worker key is required")
        if "" in worker.auth_keys:
            problems.append(f"{path}: WORKER.auth_keys: a key must not be empty")
        if worker.max_batch < 1:
            problems.append(f"{path}: WORKER.max_batch: must be at least 1")
        if endpoint is not None:
            worker = dataclasses.replace(worker, job_type=worker.job_type or endpoint.name)
    if static is not None and static.page:
        page = (path.parent / static.page).resolve()
        if not page.is_relative_to(path.parent.resolve()) or page.suffix != ".html":
            problems.append(
                f"{path}: STATIC.page: must name an .html file in the endpoint's folder "
                f"(got {static.page!r})"
            )
        elif not page.is_file():
            problems.append(f"{path}: STATIC.page: no file {static.page!r} beside endpoint.toml")
    if openai is not None:
        openai = _checked_openai(openai, inputs, f"{path}: OPENAI", problems)
    if problems:
        raise ConfigError(problems)
    return Endpoint(
        endpoint=endpoint,
        worker=worker,
        clients=clients,
        static=static,
        inputs=inputs,
        outputs=outputs,
        progress_outputs=progress_outputs,
        folder=path.parent,
        openai=openai,
    )


def _checked_openai(
    section: OpenAISection, inputs: Mapping[str, FieldSpec], where: str, problems: list[str]
) -> OpenAISection:
    """The [OPENAI] table with its models as a dict of name -> inputs set; a problem line for
    an unknown kind, a bad model name, an input the kind needs that the endpoint lacks, or a
    model's input value its field refuses."""
    if section.kind not in OPENAI_KINDS:
        problems.append(f"{where}.kind: must be one of {', '.join(OPENAI_KINDS)} "
                        f"(got {section.kind!r})")
    for name in OPENAI_REQUIRED_INPUTS.get(section.kind, ()):
        if name not in inputs:
            problems.append(f"{where}.kind: an endpoint of kind {section.kind} needs an "
                            f"input {name!r}")
    for key in ("max_inputs", "max_stop"):
        if getattr(section, key) < 1:
            problems.append(f"{where}.{key}: must be at least 1")
    raw = section.models
    if isinstance(raw, list | tuple) and all(isinstance(name, str) for name in raw):
        raw = {name: {} for name in raw}
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{where}.models: must be a list of model names, or a table of model "
                        "name -> the inputs it sets (at least one)")
        return section
    models: dict[str, dict[str, Any]] = {}
    for name, sets in raw.items():
        if not isinstance(name, str) or not MODEL_NAME_PATTERN.match(name):
            problems.append(f"{where}.models: {name!r} is not a model name (letters, digits and "
                            "_ . : / @ + -, at most 128)")
        elif not isinstance(sets, dict):
            problems.append(f"{where}.models.{name}: must be a table of inputs (got {sets!r})")
        else:
            models[name] = {key: _model_input(inputs, key, value, f"{where}.models.{name}",
                                              problems) for key, value in sets.items()}
    return dataclasses.replace(section, models=models)


def _model_input(
    inputs: Mapping[str, FieldSpec], key: str, value: Any, where: str, problems: list[str]
) -> Any:
    spec = inputs.get(key)
    if spec is None:
        problems.append(f"{where}.{key}: not an input of the endpoint")
        return value
    try:
        return spec.check(value)
    except FieldError as e:
        problems.append(f"{where}.{key}: {e}")
        return value


def check_route(route: str, path: Path, problems: list[str]) -> None:
    if not route.startswith("/"):
        problems.append(f"{path}: ENDPOINT.route: must start with '/' (got {route!r})")
    elif not ROUTE_PATTERN.match(route):
        problems.append(
            f"{path}: ENDPOINT.route: must be a path like '/name' or '/demos/name': '/' and "
            f"segments of letters, digits, '_', '-', '~', '.' (not first) (got {route!r})"
        )
    elif route.split("/")[1] in RESERVED_ROUTES:
        reserved = ", ".join(f"/{r}" for r in RESERVED_ROUTES)
        problems.append(
            f"{path}: ENDPOINT.route: {route!r} collides with the server's own paths "
            f"({reserved} and below)"
        )


def check_positive(section: EndpointSection, path: Path, problems: list[str]) -> None:
    for key in ("max_queue_length", "max_queue_bytes", "lease_s", "job_timeout_s", "max_attempts",
                "result_ttl_s"):
        if getattr(section, key) <= 0:
            problems.append(f"{path}: ENDPOINT.{key}: must be greater than 0")
    if section.max_body_bytes is not None and section.max_body_bytes <= 0:
        problems.append(f"{path}: ENDPOINT.max_body_bytes: must be greater than 0")


def load_endpoints(folder: Path) -> dict[str, Endpoint]:
    """Loads every `folder/*/endpoint.toml`; refuses the lot if any one is broken.

    Returns:
        dict[str, Endpoint]: the endpoints by name.
    """
    if not folder.is_dir():
        raise ConfigError([f"{folder}: endpoints folder not found"])
    endpoints: dict[str, Endpoint] = {}
    models: dict[str, str] = {}  # OpenAI model name -> its endpoint
    problems: list[str] = []
    for path in sorted(folder.glob("*/endpoint.toml")):
        try:
            endpoint = load_endpoint(path)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        if endpoint.name in endpoints:
            problems.append(f"{path}: ENDPOINT.name: {endpoint.name!r} is already used")
        elif same_route := [
            e.name for e in endpoints.values() if e.endpoint.route == endpoint.endpoint.route
        ]:
            problems.append(
                f"{path}: ENDPOINT.route: {endpoint.endpoint.route!r} is already the page of "
                f"endpoint {same_route[0]!r}"
            )
        endpoints[endpoint.name] = endpoint
        for model in endpoint.openai.models if endpoint.openai else ():
            if model in models:
                problems.append(f"{path}: OPENAI.models: {model!r} is already a model of "
                                f"endpoint {models[model]!r}")
            models.setdefault(model, endpoint.name)
    if problems:
        raise ConfigError(problems)
    return endpoints


def load_server_config(path: Path | None, **overrides: Any) -> ServerConfig:
    """Reads server.toml's `[SERVER]` table (when given), then applies non-None overrides."""
    problems: list[str] = []
    config = ServerConfig()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError([f"{path}: cannot be read as TOML ({e})"]) from e
        for section in data.keys() - {"SERVER"}:
            problems.append(f"{path}: [{section}]: unknown section (known: SERVER)")
        config = build(ServerConfig, data.get("SERVER", {}), f"{path}: SERVER", problems)
    if problems:
        raise ConfigError(problems)
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    _check_server(config, f"{path or 'command line'}: SERVER", problems)
    if problems:
        raise ConfigError(problems)
    return config


DURABILITY = ("everysec", "always", "replicated")  # with a Redis store (ServerConfig.durability)


def is_redis_url(store: str) -> bool:
    """Whether a store URL names a Redis (redis://, rediss://, unix://, redis+sentinel://)."""
    return store.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://"))


def sqlite_path(store: str) -> Path | None:
    """The file a `sqlite:PATH` store URL names; None for anything else."""
    scheme, _, rest = store.partition(":")
    return Path(rest) if scheme == "sqlite" and rest else None


def _check_server(config: ServerConfig, where: str, problems: list[str]) -> None:
    if not 0 <= config.port <= 65535:
        problems.append(f"{where}.port: must be 0 to 65535 (got {config.port})")
    if config.log_level not in LOG_LEVELS:
        problems.append(
            f"{where}.log_level: must be one of {', '.join(LOG_LEVELS)} (got {config.log_level!r})"
        )
    if config.log_format not in LOG_FORMATS:
        problems.append(f"{where}.log_format: must be one of {', '.join(LOG_FORMATS)} "
                        f"(got {config.log_format!r})")
    if sqlite_path(config.store) is None and not is_redis_url(config.store):
        problems.append(f"{where}.store: must be sqlite:PATH, redis://HOST:PORT/DB, rediss://... "
                        f"or redis+sentinel://HOST:PORT,.../MASTER/DB (got {config.store!r})")
    if config.durability not in DURABILITY:
        problems.append(f"{where}.durability: must be one of {', '.join(DURABILITY)} "
                        f"(got {config.durability!r})")
    if not config.redis_prefix or not config.redis_prefix.isprintable():
        problems.append(f"{where}.redis_prefix: must be printable text")
    for key in ("max_body_bytes", "worker_poll_max_s", "client_wait_max_s", "sweep_interval_s",
                "redis_timeout_s", "replication_wait_ms", "worker_seen_ttl_s", "sse_keepalive_s",
                "keepalive_timeout_s", "header_timeout_s", "body_timeout_s", "max_connections",
                "max_json_depth", "max_file_bytes", "max_job_files_bytes"):
        if getattr(config, key) <= 0:
            problems.append(f"{where}.{key}: must be greater than 0 (got {getattr(config, key)})")
    if "" in config.admin_keys:
        problems.append(f"{where}.admin_keys: a key must not be empty")
    if config.metrics_admin_only and not config.admin_keys:
        problems.append(f"{where}.metrics_admin_only: needs at least one of admin_keys")
    if not config.server_name.isprintable() or len(config.server_name) > 128:
        problems.append(f"{where}.server_name: must be printable text of at most 128 characters")
    _check_aime(config, where, problems)


def _check_aime(config: ServerConfig, where: str, problems: list[str]) -> None:
    prefix = config.aime_prefix
    if not ROUTE_PATTERN.match(prefix) or prefix.split("/")[1] in RESERVED_ROUTES:
        problems.append(f"{where}.aime_prefix: must be a path like '/aime', apart from the "
                        f"server's own ({', '.join('/' + r for r in RESERVED_ROUTES)}) "
                        f"(got {prefix!r})")
    if not config.aime_session_ttl_s > 0:
        problems.append(f"{where}.aime_session_ttl_s: must be greater than 0")
