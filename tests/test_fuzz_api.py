"""Property-based fuzzing of the HTTP API from its own OpenAPI document: no request, however
hostile, gets a 5xx reply, and none goes unanswered.

One real server serves the module: the repository's endpoints, plus `private` (the echo
endpoint behind a client key, so that the key checks are fuzzed too), with no worker, so that
jobs stay where the fixture put them (queued, running, done, canceled). The operations and
their schemas come from `GET /api/v1/openapi.json`. For each operation hypothesis draws
requests: bodies, query values, path segments and headers made from the document's schemas,
and hostile variants of them (wrong types, JSON nested 100 to 2000 deep, numbers past what a
double holds, NUL, lone surrogates and non-UTF-8 bytes in bodies, targets and headers, wrong
content types). `HOSTILE` adds hand-picked requests of the same kinds, one test each, so that
each one reports on its own.

Requests go over a raw socket (`send`): nothing stops a byte from reaching the server. A reply's
head must come within REPLY_TIMEOUT_S (values that hold a request open, `wait` and `wait_s`,
are drawn below WAIT_CAP_S) and its status must be below 500; an event stream is read up to
its first chunk, then closed. The examples are derandomized and bounded: the module runs in
15 to 25 s on 2 cores. A failure shows the exact request and what the server logged for it
(the first failing request hypothesis drew: shrinking is off, see below).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import shutil
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conftest import ECHO_WORKER_KEY, REPO, Process, spawn_server
from e2e_http import RawWorker, echo_variant
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

REPLY_TIMEOUT_S = 5.0  # the longest a reply's head may take (no request here waits longer)
FIRST_CHUNK_S = 0.5  # how long an event stream's first chunk is waited for
WAIT_CAP_S = 0.2  # valid `wait` and `wait_s` values are drawn below this
EXAMPLES = 150  # per operation
CLIENT_KEY = "fuzz-client-key"
PRIVATE_WORKER_KEY = "fuzz-private-worker-key"
ENDPOINT_NAMES = sorted(
    [p.name for p in (REPO / "endpoints").iterdir() if (p / "endpoint.toml").is_file()]
    + ["private"]
)
# Every operation the document must list (the test of the document checks it does): one test
# each below. A route the server gains fails that test until it is added here, and fuzzed.
OPERATIONS = [
    ("get", "/health"),
    ("get", "/api/v1/status"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/endpoints"),
    ("get", "/api/v1/endpoints/{name}"),
    *(("post", f"/api/v1/endpoints/{name}/jobs") for name in ENDPOINT_NAMES),
    ("get", "/api/v1/jobs/{job_id}"),
    ("get", "/api/v1/jobs/{job_id}/events"),
    ("get", "/api/v1/jobs/{job_id}/files/{name}"),
    ("delete", "/api/v1/jobs/{job_id}"),
    ("post", "/api/v1/worker/jobs"),
    ("post", "/api/v1/worker/jobs/{job_id}/progress"),
    ("post", "/api/v1/worker/jobs/{job_id}/result"),
    ("put", "/api/v1/worker/jobs/{job_id}/files/{name}"),
    ("post", "/api/v1/worker/progress"),
    ("post", "/api/v1/worker/results"),
    ("post", "/api/v1/worker/goodbye"),
]


# ----- the raw client


@dataclass(frozen=True)
class Request:
    """One HTTP/1.1 request, sent as these bytes (plus Host, Connection: close and the body's
    framing)."""

    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    chunked: bool = False

    def wire(self, host: bytes) -> bytes:
        lines = [self.method.encode() + b" " + self.target + b" HTTP/1.1", b"Host: " + host,
                 b"Connection: close"]
        lines += [name + b": " + value for name, value in self.headers]
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked")
            body = (b"%x\r\n%s\r\n" % (len(self.body), self.body) if self.body else b"")
            body += b"0\r\n\r\n"
        else:
            if self.body or self.method in ("POST", "PUT"):
                lines.append(b"Content-Length: %d" % len(self.body))
            body = self.body
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def __repr__(self) -> str:
        body = self.body
        shown = repr(body) if len(body) <= 400 else (
            f"{body[:240]!r} ... {body[-80:]!r} ({len(body)} bytes)")
        target = repr(self.target) if len(self.target) <= 400 else (
            f"{self.target[:200]!r} ... {self.target[-60:]!r} ({len(self.target)} bytes)")
        headers = [(n, v if len(v) <= 200 else v[:100] + b"...(%d bytes)" % len(v))
                   for n, v in self.headers]
        chunked = ", chunked" if self.chunked else ""
        return f"{self.method} {target} headers={headers!r} body={shown}{chunked}"


@dataclass(frozen=True)
class Reply:
    status: int
    head: bytes
    body: bytes


_sources = itertools.cycle([(f"127.0.{i // 200 + 1}.{i % 200 + 2}", 0) for i in range(60)])


def send(address: tuple[str, int], request: Request, stream: bool = False) -> Reply:
    """Sends the request on a new connection (from one of 60 loopback addresses, as 60
    clients: the rate limits are per client) and reads the reply: the whole of it, or for
    `stream` its head and first chunk. Fails when no head comes within REPLY_TIMEOUT_S."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    try:
        sock = socket.create_connection(address, REPLY_TIMEOUT_S, source_address=next(_sources))
    except OSError:
        sock = socket.create_connection(address, REPLY_TIMEOUT_S)
    with sock:
        # The server may answer (400, 413) and close before it has read the whole request.
        with contextlib.suppress(OSError):
            sock.sendall(request.wire(b"%s:%d" % (address[0].encode(), address[1])))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = _recv(sock, deadline - time.monotonic())
            if chunk is None:
                raise AssertionError(
                    f"no reply within {REPLY_TIMEOUT_S:g} s (got {data[:200]!r}) to {request!r}")
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        assert match, f"no HTTP reply ({data[:200]!r}) to {request!r}"
        if stream:
            if not body:
                body = _recv(sock, FIRST_CHUNK_S) or b""
        else:
            while (chunk := _recv(sock, deadline - time.monotonic())):
                body += chunk
        return Reply(int(match.group(1)), head, body)


def _recv(sock: socket.socket, timeout_s: float) -> bytes | None:
    """Up to 64 KiB; b"" at the end of the stream (or a reset), None at the timeout."""
    if timeout_s <= 0:
        return None
    sock.settimeout(timeout_s)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


# ----- the server under test


@dataclass
class Fuzz:
    server: Process
    address: tuple[str, int]
    document: dict[str, Any]
    jobs: dict[str, str]  # state -> job id
    keys: tuple[str, ...] = (ECHO_WORKER_KEY, CLIENT_KEY, PRIVATE_WORKER_KEY)

    def check(self, request: Request, stream: bool = False) -> Reply:
        """Sends the request; fails on a 5xx (with what the server logged) or no reply."""
        assert self.server.proc.poll() is None, "the server exited:\n" + self.server.text[-3000:]
        logged = len(self.server.output)
        reply = send(self.address, request, stream)
        if reply.status >= 500:
            time.sleep(0.1)  # the log line of the error may still be on its way
            log = "".join(self.server.output[logged:])[-4000:]
            raise AssertionError(
                f"{reply.status} for {request!r}\nreply: {reply.body[:300]!r}\n"
                f"server log:\n{log}")
        return reply


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(REPO / "endpoints", folder / "endpoints")
    echo_variant(folder / "endpoints", "private",
                 WORKER={"job_type": "private", "auth_keys": [PRIVATE_WORKER_KEY]},
                 CLIENTS={"auth_keys": [CLIENT_KEY]})
    server = spawn_server(folder / "endpoints", folder / "jobs.sqlite3")
    try:
        url = httpx.URL(server.url)
        with httpx.Client(base_url=server.url, timeout=10) as http:
            reply = http.get("/api/v1/openapi.json")
            assert reply.status_code == 200, reply.text
            yield Fuzz(server, (url.host, url.port or 80), reply.json(), _make_jobs(http))
    finally:
        server.stop()


def _make_jobs(http: httpx.Client) -> dict[str, str]:
    """Jobs in each state, for the routes that name a job."""
    def submit(job_id: str, endpoint: str = "echo", **headers: str) -> str:
        reply = http.post(f"/api/v1/endpoints/{endpoint}/jobs", headers=headers,
                          json={"inputs": {"text": job_id}, "job_id": job_id})
        assert reply.status_code == 202, reply.text
        return job_id

    worker = RawWorker(http, str(http.base_url), worker_id="fuzz-fixture")
    running = submit("fuzz-running")
    (granted,) = worker.take(wait_s=5)
    assert granted["job_id"] == running
    done = submit("fuzz-done")
    (granted,) = worker.take(wait_s=5)
    # A file named like an endpoint, which the name strategy draws: its downloads are fuzzed.
    reply = http.put(f"/api/v1/worker/jobs/{done}/files/echo", content=b"\x89PNG" * 64,
                     params={"lease_id": granted["lease_id"]},
                     headers={"Authorization": f"Bearer {ECHO_WORKER_KEY}",
                              "Content-Type": "image/png"})
    assert reply.status_code == 200, reply.text
    assert worker.result(granted, outputs={"text": "done", "image": reply.json()}
                         ).status_code == 200
    canceled = submit("fuzz-canceled")
    assert http.delete(f"/api/v1/jobs/{canceled}").status_code == 200
    return {
        "queued": submit("fuzz-queued"),
        "running": running,
        "done": done,
        "canceled": canceled,
        "private": submit("fuzz-private", "private", Authorization=f"Bearer {CLIENT_KEY}"),
    }


# ----- strategies: values from the document's schemas


class Raw(str):
    """JSON text put into a body as it is (a number past a double, nesting 2000 deep, ...)."""


def encode(value: Any) -> str:
    """JSON text of a value whose leaves may be Raw fragments."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def merged(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """allOf folded into one schema (enough for the document's simple uses of it)."""
    schema = resolve(document, schema)
    if "allOf" not in schema:
        return schema
    out: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = merged(document, part)
        properties = {**out.get("properties", {}), **part.get("properties", {})}
        out.update(part)
        out["properties"] = properties
    return out


JSON_LEAVES = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=20)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def from_schema(
    document: dict[str, Any], schema: dict[str, Any], name: str = ""
) -> st.SearchStrategy:
    """Values that the schema accepts (bounded in size: lists of a few items, short strings)."""
    schema = merged(document, schema)
    if name in ("wait", "wait_s"):  # hold no request open for long
        schema = {**schema, "maximum": min(schema.get("maximum", WAIT_CAP_S), WAIT_CAP_S)}
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if "anyOf" in schema and kind is None and "properties" not in schema:
        return st.one_of([from_schema(document, s, name) for s in schema["anyOf"]])
    if isinstance(kind, list):
        return st.one_of([from_schema(document, {**schema, "type": k}, name) for k in kind])
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        low = schema.get("minLength", 0)
        return st.text(min_size=low, max_size=min(schema.get("maxLength", 40), low + 40))
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        step = int(schema.get("multipleOf", 1))
        return st.integers(None if low is None else -(-int(low) // step),  # exact: no floats
                           None if high is None else int(high) // step).map(lambda n: n * step)
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=False, allow_infinity=False) | st.integers(
            None if low is None else math.ceil(low), None if high is None else math.floor(high))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(from_schema(document, schema.get("items", {})), min_size=low,
                        max_size=min(schema.get("maxItems", low + 3), low + 3))
    if kind == "object":
        return _objects(document, schema)
    return JSON_VALUES


def _objects(document: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy:
    properties = schema.get("properties", {})
    branches = schema.get("anyOf") or [{}]
    choices = []
    for branch in branches:  # anyOf of required names: one strategy where each one is given
        required = {*schema.get("required", []), *branch.get("required", [])}
        forced = set(branch.get("required", []))
        mapping = {
            n: from_schema(document, s, n).filter(lambda v: v not in (None, "", []))
            if n in forced else from_schema(document, s, n)
            for n, s in properties.items() if n in required
        }
        optional = {n: from_schema(document, s, n) for n, s in properties.items()
                    if n not in required}
        choices.append(st.fixed_dictionaries(mapping, optional=optional))
    return st.one_of(choices)


# ----- strategies: hostile values


def nested(depth: int, kind: str, leaf: str = "1") -> Raw:
    opening, closing = {"list": ("[", "]"), "object": ('{"a":', "}"),
                        "mixed": ('[{"a":', "}]")}[kind]
    return Raw(opening * depth + leaf + closing * depth)


# Around the limits: orjson's dumps (254) and loads (1024), Python's recursion (1000).
DEPTHS = [100, 253, 254, 255, 256, 500, 990, 999, 1000, 1001, 1023, 1024, 1025, 2000]
DIGIT_TRAPS = ["²", "³", "①", "1²", "٣²", "1" * 4301, "9" * 5000]  # str.isdigit(), no int()
HUGE_NUMBERS = ["1e400", "-1e400", "1e-400", "1" + "0" * 400, "-" + "9" * 30,
                "18446744073709551616", "9223372036854775808", "-9223372036854775809",
                "0.1e99999", "-0", "4.9e-324", "1.7976931348623157e308"]
WEIRD_STRINGS = ["", "\x00", "a\x00b", "\x00" * 1000, "²", "١٢", "\u202ehello", "\ufeff",
                 "🙂" * 100, "x" * 100_000, "\U0010ffff", "\r\n", "%00", "../../etc/passwd",
                 "<script>", "'; DROP TABLE jobs; --"]
RAW_STRINGS = ['"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '"\\uZZZZ"', '"a', "NaN",
               "Infinity", "-Infinity", "undefined", "01", "1.", ".5", "+1", "0x10", "'a'"]
NESTED = st.builds(nested, st.sampled_from(DEPTHS) | st.integers(100, 2000),
                  st.sampled_from(["list", "object", "mixed"]))
HOSTILE_VALUES = st.one_of(
    NESTED,
    NESTED,
    st.sampled_from(HUGE_NUMBERS).map(Raw),
    st.sampled_from(WEIRD_STRINGS),
    st.sampled_from(RAW_STRINGS).map(Raw),
    st.text(st.characters(codec=None, exclude_categories=[]), max_size=30),  # any code point
    JSON_VALUES,
)
RAW_BODIES = [b"", b"null", b"[]", b'"x"', b"{", b'{"inputs": ', b"\xff\xfe", b"\x00",
              b'{"inputs": {"text": "\xff"}}', b'{"inputs": {}} trailing', b"{}" * 10,
              b'{"a": 1, "a": 2}', b"\xef\xbb\xbf{}", json.dumps({"inputs": {}}).encode("utf-16"),
              b"inputs=1&job_id=2", b"[" * 3000, b'{"a":' * 3000]
HOSTILE_BODIES = st.one_of(
    st.sampled_from(RAW_BODIES),
    st.binary(max_size=64),
    HOSTILE_VALUES.map(lambda v: to_bytes(encode(v))),
)
AUTHORIZATIONS = [b"Bearer \xff", b"Bearer \x00", b"Bearer \xc3\xa9", b"Bearer \xed\xa0\x80",
                  b"Bearer", b"Bearer ", b"Bearer  ", b"Basic Zm9vOmJhcg==",
                  b"Bearer " + b"k" * 6000,
                  b"bearer\t" + CLIENT_KEY.encode(), "Bearer ключ".encode(), b"\xff\xff"]
JSON_TYPES = [b"application/json", b"application/json; charset=utf-8", b"application/x+json",
              b"APPLICATION/JSON"]
CONTENT_TYPES = [b"text/plain", b"application/x-www-form-urlencoded",
                 b"multipart/form-data; boundary=x", b"application/json; charset=utf-16",
                 b"\xff/\xff", b"application/json; charset=\x01", b"", b"*/*"]
HEADER_VALUES = [*(d.encode() for d in DIGIT_TRAPS), b"\xff", b"\x00", b"-1", b"1 2",
                 b"99999999999999999999", b"\xed\xa0\x80", b" ", b"\xe2\x80\xae1"]
# None of these asks for a wait past WAIT_CAP_S, however leniently it is parsed ("٠.١" is 0.1
# for Python's float()): a long wait is no hang.
QUERY_VALUES = [*DIGIT_TRAPS, "", "٠", "٠.١", "0" * 5000, "1" * 5000 + "e-5000", "-1", "nan",
                "NaN", "inf", "-inf", "1e309", "0x0", " 0", "0 ", "+0", "0_0", "1e-320", "\x00",
                "🙂", "-0", "0.1e0", "1/10", "0,1"]
RAW_QUERY_VALUES = [b"%FF", b"%C0%80", b"%ED%A0%80", b"%", b"%%", b"%zz", b"\xff", b"a b"]
PATH_SEGMENTS = [b"%FF", b"%00", b"%C2%B2", b"..", b"%2e%2e", b"%2F", b"x%20y", b"\xff",
                 b"a" * 129, b"a" * 9000, b"%ED%A0%80", b"~", b"fuzz-queued%00"]


def query_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def places_in(document: dict[str, Any], schema: dict[str, Any], depth: int = 3) -> list[tuple]:
    """The paths in a body where a value may go: each property (of nested objects too, and of
    an array's first item), and an unknown key at each level."""
    schema = merged(document, schema)
    branches = [merged(document, b) for b in schema.get("anyOf", [])]
    schema = next((b for b in branches if b.get("type") != "null"), schema) if (
        "type" not in schema and "properties" not in schema) else schema
    places: list[tuple] = [("zz_unknown",)]
    if schema.get("type") == "array" and depth:
        places += [(0, *p) for p in places_in(document, schema.get("items", {}), depth - 1)]
    for name, sub in schema.get("properties", {}).items():
        places.append((name,))
        if depth:
            places += [(name, *p) for p in places_in(document, sub, depth - 1)]
    return places


def put(body: Any, place: tuple, value: Any) -> Any:
    """The body with value at place (containers made or replaced as the path needs)."""
    if not place:
        return value
    key, rest = place[0], place[1:]
    if isinstance(key, int):
        items = list(body) if isinstance(body, list) and body else [None]
        items[0] = put(items[0], rest, value)
        return items
    out = dict(body) if isinstance(body, dict) else {}
    out[key] = put(out.get(key), rest, value)
    return out


def hostile_body(document: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy:
    """A body that the schema accepts; one with one to three hostile values in it (fields at
    any depth, unknown keys); or hostile bytes."""
    valid = from_schema(document, schema)
    places = places_in(document, schema)

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        body = draw(valid)
        for place in draw(st.lists(st.sampled_from(places), min_size=1, max_size=3)):
            body = put(body, place, draw(HOSTILE_VALUES))
        return to_bytes(encode(body))

    return st.one_of(valid.map(lambda b: to_bytes(encode(b))), mutated(), mutated(),
                     HOSTILE_BODIES)


def requests_for(fuzz: Fuzz, method: str, path: str) -> st.SearchStrategy[Request]:
    """Requests for one operation of the document."""
    document = fuzz.document
    operation = document["paths"][path][method]
    parameters = [resolve(document, p) for p in operation.get("parameters", [])]
    job_ids = list(fuzz.jobs.values())
    if method == "delete":  # keep the queued and running jobs as they are for the others
        job_ids = [fuzz.jobs["done"], fuzz.jobs["canceled"], "fuzz-never-submitted"]
    known = {"job_id": job_ids, "name": ENDPOINT_NAMES}
    segments = {  # half the time a job or endpoint that exists: the routes do more with it
        name: st.one_of(
            st.sampled_from([value.encode() for value in values]),
            st.sampled_from([value.encode() for value in values]),
            st.sampled_from(PATH_SEGMENTS),
            st.text(max_size=20).map(lambda t: urllib.parse.quote(t, safe="").encode()),
        )
        for name, values in known.items()
    }

    def quoted(values: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
        return values.map(lambda v: urllib.parse.quote(v, safe="").encode())

    def query_value(p: dict[str, Any]) -> st.SearchStrategy[bytes | None]:
        """Absent, valid, or hostile (a third each): `since` is read only with a valid `wait`."""
        valid = quoted(from_schema(document, p["schema"], p["name"]).map(query_text))
        hostile = quoted(st.sampled_from(QUERY_VALUES)) | st.sampled_from(RAW_QUERY_VALUES)
        return st.one_of(st.none(), valid, hostile)

    queries = {p["name"]: query_value(p) for p in parameters if p["in"] == "query"}
    header_params = {p["name"]: from_schema(document, p["schema"]).map(
        lambda v: query_text(v).encode()) | st.sampled_from(HEADER_VALUES)
        for p in parameters if p["in"] == "header"}
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")

    @st.composite
    def build(draw: st.DrawFn) -> Request:
        target = path.encode()
        for name in re.findall(r"\{(\w+)\}", path):
            target = target.replace(b"{%s}" % name.encode(), draw(segments[name]))
        drawn = [(n.encode(), draw(v)) for n, v in queries.items()]
        pairs = [(n, v) for n, v in drawn if v is not None]
        if draw(st.integers(0, 9)) == 0:
            pairs.append((draw(st.sampled_from([b"x", b"%FF", b"", b"wait"])),
                          draw(st.sampled_from(RAW_QUERY_VALUES))))
        if pairs:
            target += b"?" + b"&".join(n + b"=" + v for n, v in pairs)
        headers: list[tuple[bytes, bytes]] = []
        auth = draw(st.sampled_from(["none", "key", "hostile"]))
        if auth == "key":
            key = draw(st.sampled_from(fuzz.keys))
            headers.append((b"Authorization", b"Bearer " + key.encode()))
        elif auth == "hostile":
            headers.append((b"Authorization", draw(st.sampled_from(AUTHORIZATIONS))))
        for name, values in header_params.items():
            if draw(st.booleans()):
                headers.append((name.encode(), draw(values)))
        data = b""
        if body is not None:
            data = draw(hostile_body(document, body["schema"]))
            # Mostly JSON, which a server may insist on (415) before it reads the body.
            content_type = draw(st.sampled_from(JSON_TYPES) | st.sampled_from(JSON_TYPES)
                                | st.sampled_from([None, *CONTENT_TYPES]))
            if content_type is not None:
                headers.append((b"Content-Type", content_type))
        elif draw(st.integers(0, 4)) == 0:
            data = draw(HOSTILE_BODIES)
        if draw(st.integers(0, 9)) == 0:
            headers.append((b"X-Fuzz", draw(st.sampled_from(HEADER_VALUES))))
        chunked = bool(data) and draw(st.integers(0, 9)) == 0
        return Request(method.upper(), target, tuple(headers), data, chunked)

    return build()


# ----- the tests


def test_the_document_is_openapi_3_1_and_describes_every_operation(fuzz):
    from openapi_spec_validator import validate  # the dev extra has it

    document = fuzz.document
    validate(document)  # raises on any departure from OpenAPI 3.1
    assert document["openapi"].startswith("3.1")
    listed = [(m, p) for p, ops in document["paths"].items() for m in ops]
    assert sorted(listed) == sorted(OPERATIONS)  # and no page route (/, /echo, /static/...)
    # Each endpoint's submit body: its inputs as an object schema, and the job_id pattern.
    schema = document["paths"]["/api/v1/endpoints/sd3/jobs"]["post"]["requestBody"]
    body = schema["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"inputs", "job_id"} and not body["additionalProperties"]
    assert body["properties"]["job_id"]["pattern"] == r"^[A-Za-z0-9_.:-]{1,128}$"
    inputs = body["properties"]["inputs"]
    assert inputs["type"] == "object" and inputs["additionalProperties"] is False
    width = inputs["properties"]["width"]["anyOf"][0]  # optional (a default): null is taken too
    assert (width["type"], width["minimum"], width["maximum"], width["multipleOf"]) == (
        "integer", 64, 1536, 16)
    assert inputs["properties"]["preview"]["anyOf"][0]["enum"] == ["none", "latent", "vae"]
    assert inputs["properties"]["image"]["anyOf"][0]["type"] == "string"
    echo = document["paths"]["/api/v1/endpoints/echo/jobs"]["post"]
    text = echo["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]
    assert text["properties"]["text"]["anyOf"][0]["maxLength"] == 10000
    chat = document["paths"]["/api/v1/endpoints/llama4_chat/jobs"]["post"]["requestBody"]
    chat_inputs = chat["content"]["application/json"]["schema"]["properties"]["inputs"]
    assert chat_inputs["required"] == ["chat_context"]
    context = chat_inputs["properties"]["chat_context"]
    assert context["type"] == "array" and context["maxItems"] == 256
    assert context["items"]["required"] == ["role", "content"]
    assert chat_inputs["properties"]["trim_context"]["anyOf"][0]["type"] == "boolean"
    search = document["paths"]["/api/v1/endpoints/rag_search/jobs"]["post"]["requestBody"]
    search_inputs = search["content"]["application/json"]["schema"]["properties"]["inputs"]
    assert [b["required"] for b in search_inputs["anyOf"]] == [["text"], ["image"]]
    # Security: the private endpoint asks for a key, an open one does not.
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["paths"]["/api/v1/endpoints/private/jobs"]["post"]["security"] == [
        {"bearerAuth": []}]
    assert echo["security"] == []
    assert {"202", "400", "413", "429", "503", "507"} <= set(echo["responses"])
    # Query parameters, and the error body every error status refers to.
    get_job = document["paths"]["/api/v1/jobs/{job_id}"]["get"]
    assert [p["name"] for p in get_job["parameters"]] == ["job_id", "wait", "since",
                                                          "progress_from", "inline"]
    assert get_job["summary"] == "The job's state."
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["fields"]["additionalProperties"] == {"type": "string"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["summary"] and operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                if status >= "400":
                    assert response == {"$ref": f"#/components/responses/Error{status}"}
    poll = document["paths"]["/api/v1/worker/jobs"]["post"]
    assert set(poll["responses"]) >= {"200", "204", "400", "401"}


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_never_get_a_5xx_or_no_reply(fuzz, method, path):
    assert method in fuzz.document["paths"].get(path, {}), f"the document lacks {method} {path}"
    strategy = requests_for(fuzz, method, path)
    stream = path.endswith("/events")

    # No shrinking: a request that hangs would be retried for minutes (and the HOSTILE cases
    # are the small ones); the failure shows the first failing request, exactly.
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(request=strategy)
    def run(request: Request) -> None:
        note(repr(request))
        fuzz.check(request, stream=stream)

    run()


def _get(target: str | bytes, *headers: tuple[bytes, bytes]) -> Request:
    return Request("GET", target.encode() if isinstance(target, str) else target, headers)


def _post(target: str, body: bytes | str, *headers: tuple[bytes, bytes]) -> Request:
    data = body.encode() if isinstance(body, str) else body
    return Request("POST", target.encode(), (*headers, (b"Content-Type", b"application/json")),
                   data)


def _bearer(key: bytes | str) -> tuple[bytes, bytes]:
    return (b"Authorization", b"Bearer " + (key.encode() if isinstance(key, str) else key))


def _submit(inputs: str, job_id: str | None = None) -> str:
    """A submit body of JSON text: inputs (and job_id) as given."""
    return f'{{"inputs": {inputs}' + (f', "job_id": {job_id}' if job_id else "") + "}"


_POLL = '{"worker_id": "fuzz", "job_types": ["echo"], "wait_s": 0, "max_batch": 1}'
_DEEP = str(nested(1000, "list"))
_IMAGE = '"data:image/png;base64,iVBORw0KGgo="'
# Hand-picked hostile requests (functions of the job ids; a list is sent in order), one test
# each.
HOSTILE: dict[str, Callable[[dict[str, str]], Request | list[Request]]] = {
    "since-superscript-two": lambda j: _get(f"/api/v1/jobs/{j['queued']}?wait=0.1&since=%C2%B2"),
    "since-5000-digits": lambda j: _get(f"/api/v1/jobs/{j['queued']}?wait=0.1&since={'1' * 5000}"),
    "since-arabic-digits": lambda j: _get(
        f"/api/v1/jobs/{j['running']}?wait=0.1&since=%D9%A1%D9%A2"),
    "since-invalid-utf8": lambda j: _get(f"/api/v1/jobs/{j['queued']}?wait=0.1&since=%FF"),
    "wait-nan": lambda j: _get(f"/api/v1/jobs/{j['queued']}?wait=nan"),
    "wait-1e309": lambda j: _get(f"/api/v1/jobs/{j['queued']}?wait=1e309"),
    "wait-superscript-two": lambda j: _get(f"/api/v1/jobs/{j['queued']}?wait=%C2%B2"),
    "wait-invalid-utf8": lambda j: _post("/api/v1/endpoints/echo/jobs?wait=%FF", "{}"),
    "last-event-id-superscript-two": lambda j: _get(
        f"/api/v1/jobs/{j['queued']}/events", (b"Last-Event-ID", "²".encode())),
    "last-event-id-5000-digits": lambda j: _get(
        f"/api/v1/jobs/{j['queued']}/events", (b"Last-Event-ID", b"1" * 5000)),
    "last-event-id-byte-ff": lambda j: _get(
        f"/api/v1/jobs/{j['queued']}/events", (b"Last-Event-ID", b"\xff")),
    "last-event-id-huge": lambda j: _get(
        f"/api/v1/jobs/{j['done']}/events", (b"Last-Event-ID", b"9" * 40)),
    "worker-poll-bearer-byte-ff": lambda j: _post("/api/v1/worker/jobs", _POLL, _bearer(b"\xff")),
    "worker-poll-bearer-nul": lambda j: _post("/api/v1/worker/jobs", _POLL, _bearer(b"\x00")),
    "worker-poll-bearer-utf8-surrogate": lambda j: _post(
        "/api/v1/worker/jobs", _POLL, _bearer(b"\xed\xa0\x80")),
    "worker-result-bearer-byte-ff": lambda j: _post(
        f"/api/v1/worker/jobs/{j['running']}/result", '{"lease_id": "x"}', _bearer(b"\xff")),
    "worker-batch-bearer-byte-ff": lambda j: _post(
        "/api/v1/worker/progress", '{"reports": []}', _bearer(b"\xff")),
    "private-submit-bearer-byte-ff": lambda j: _post(
        "/api/v1/endpoints/private/jobs", '{"inputs": {}}', _bearer(b"\xff")),
    "private-job-bearer-byte-ff": lambda j: _get(
        f"/api/v1/jobs/{j['private']}", _bearer(b"\xff")),
    "private-events-bearer-byte-ff": lambda j: _get(
        f"/api/v1/jobs/{j['private']}/events", _bearer(b"\xff")),
    "private-cancel-bearer-byte-ff": lambda j: Request(
        "DELETE", f"/api/v1/jobs/{j['private']}".encode(), (_bearer(b"\xff"),)),
    "private-submit-bearer-unicode": lambda j: _post(
        "/api/v1/endpoints/private/jobs", '{"inputs": {}}', _bearer("ключ".encode())),
    "string-field-nested-1000": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit(f'{{"text": {_DEEP}}}')),
    "string-field-nested-2000": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit(f'{{"text": {nested(2000, "list")}}}')),
    "integer-field-nested-1000": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit(f'{{"steps": {_DEEP}}}')),
    "selection-field-nested-1000": lambda j: _post(
        "/api/v1/endpoints/sd3/jobs", _submit(f'{{"preview": {_DEEP}}}')),
    "chat-message-nested-1000": lambda j: _post(
        "/api/v1/endpoints/llama4_chat/jobs", _submit(f'{{"chat_context": [{_DEEP}]}}')),
    "json-field-nested-1000": lambda j: _post(
        "/api/v1/endpoints/llama4_chat/jobs",
        _submit(f'{{"chat_context": [{{"role": "user", "content": "hi"}}], '
                               f'"stop": {_DEEP}}}')),
    "job-id-nested-1000": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit("{}", _DEEP)),
    "nested-1000-beside-an-image": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit(f'{{"image": {_IMAGE}, "text": {_DEEP}}}')),
    "image-field-nested-1000": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit(f'{{"image": {_DEEP}}}')),
    "float-field-1e400": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit('{"delay_s": 1e400}')),
    "integer-field-2-to-the-64": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit('{"steps": 18446744073709551616}')),
    "integer-field-2-to-the-63": lambda j: _post(
        "/api/v1/endpoints/sd3/jobs", _submit('{"seed": 9223372036854775808}')),
    "lone-surrogate-string": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit('{"text": "\\ud800"}')),
    "nul-in-text": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", _submit('{"text": "a\\u0000b"}')),
    "non-utf8-body": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", b'{"inputs": {"text": "\xff\xfe"}}'),
    "utf16-body": lambda j: _post(
        "/api/v1/endpoints/echo/jobs", '{"inputs": {}}'.encode("utf-16")),
    "form-content-type": lambda j: Request(
        "POST", b"/api/v1/endpoints/echo/jobs",
        ((b"Content-Type", b"application/x-www-form-urlencoded"),), b"inputs=1"),
    "poll-info-nested-300-then-status": lambda j: [
        _post("/api/v1/worker/jobs",
              '{"worker_id": "fuzz-deep", "job_types": ["private"], "wait_s": 0, '
              f'"info": {{"a": {nested(300, "list")}}}}}', _bearer(PRIVATE_WORKER_KEY)),
        _get("/api/v1/status"),
        _get("/api/v1/endpoints"),
    ],
    "job-id-path-invalid-utf8": lambda j: _get("/api/v1/jobs/%FF"),
    "job-id-path-raw-byte-ff": lambda j: _get(b"/api/v1/jobs/\xff"),
    "endpoint-name-path-nul": lambda j: _get("/api/v1/endpoints/%00"),
    "report-outputs-nested-300": lambda j: _post(
        f"/api/v1/worker/jobs/{j['running']}/progress",
        f'{{"lease_id": "not-the-lease", "outputs": {{"a": {nested(300, "list")}}}}}',
        _bearer(ECHO_WORKER_KEY)),
    "batch-report-job-id-nested-1000": lambda j: _post(
        "/api/v1/worker/results", f'{{"reports": [{{"job_id": {_DEEP}, "lease_id": "x"}}]}}',
        _bearer(ECHO_WORKER_KEY)),
    "poll-worker-id-nested-1000": lambda j: _post(
        "/api/v1/worker/jobs", f'{{"worker_id": {_DEEP}, "job_types": ["echo"]}}',
        _bearer(ECHO_WORKER_KEY)),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_request_gets_no_5xx(fuzz, case):
    requests = HOSTILE[case](fuzz.jobs)
    for request in requests if isinstance(requests, list) else [requests]:
        fuzz.check(request, stream=b"/events" in request.target)


def test_the_server_is_still_up(fuzz):
    """After all of the above: alive, and answering at once."""
    assert fuzz.server.proc.poll() is None, fuzz.server.text[-3000:]
    reply = send(fuzz.address, _get("/health"))
    assert reply.status == 200 and json.loads(reply.body) == {"status": "ok"}
