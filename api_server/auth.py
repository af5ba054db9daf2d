"""Who is calling: the request's key, resolved once per request into a typed `Caller`.

Keys are never compared as strings: each key the config accepts is stored as its SHA-256
digest, and a request's key is hashed once and looked up, so the lookup's timing tells nothing
about the keys. The digest (cut to 32 hex digits) is also what a job stores as its owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from api_server.config import Endpoint, ServerConfig
from api_server.httputil import ApiError

MAX_KEY_LENGTH = 1024


def key_hash(key: str) -> str:
    """What the server keeps of a key: a hash, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Role:
    """What one key may do: be a client of, or a worker for, these endpoints; be an admin."""

    client_of: frozenset[str] = frozenset()
    worker_of: frozenset[str] = frozenset()
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Caller:
    """The request's caller. `owner` is the key's hash ("" when no key was sent)."""

    owner: str
    role: Role

    @property
    def known(self) -> bool:
        """Whether the key is one the config accepts for anything."""
        return bool(self.role.client_of or self.role.worker_of or self.role.admin)

    def client_owner(self, endpoint: Endpoint) -> str:
        """The owner a job submitted by this caller gets: "" on an open endpoint; 401 without
        a key or with an unknown one, 403 with a key of another endpoint."""
        if not endpoint.clients.auth_keys:
            return ""
        if endpoint.name in self.role.client_of:
            return self.owner
        raise self._refusal("client", f"this key is not a client key of {endpoint.name!r}")

    def check_owner(self, owner: str) -> None:
        """401/403 unless this caller may see a job with this owner ("" is anyone's)."""
        if owner and owner != self.owner:
            raise self._refusal("client", "this job was submitted with another client key")

    def worker_endpoints(self, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
        """The endpoints this caller's key may take jobs of; 401 when none."""
        allowed = [e for e in endpoints if e.name in self.role.worker_of]
        if not allowed:
            raise unauthorized("worker")
        return allowed

    def _refusal(self, what: str, why: str) -> ApiError:
        return ApiError(403, why) if self.known else unauthorized(what)


NO_ROLE = Role()
NOBODY = Caller("", NO_ROLE)


def unauthorized(what: str) -> ApiError:
    return ApiError(
        401,
        f"missing or wrong {what} key (send Authorization: Bearer KEY)",
        headers={"WWW-Authenticate": 'Bearer realm="jobhive"'},
    )


class KeyBook:
    """Every key of the config, by hash, with what it may do.

    Args:
        endpoints (Mapping[str, Endpoint]): their [CLIENTS] and [WORKER] keys.
        config (ServerConfig): its admin_keys.
    """

    def __init__(self, endpoints: Mapping[str, Endpoint], config: ServerConfig) -> None:
        clients: dict[str, set[str]] = {}
        workers: dict[str, set[str]] = {}
        for endpoint in endpoints.values():
            for key in endpoint.clients.auth_keys:
                clients.setdefault(key_hash(key), set()).add(endpoint.name)
            for key in endpoint.worker.auth_keys:
                workers.setdefault(key_hash(key), set()).add(endpoint.name)
        admins = {key_hash(key) for key in config.admin_keys}
        self._roles = {
            digest: Role(frozenset(clients.get(digest, ())), frozenset(workers.get(digest, ())),
                         digest in admins)
            for digest in clients.keys() | workers.keys() | admins
        }

    def caller(self, request: web.Request) -> Caller:
        """The caller of a request; 401 for an Authorization header that is not a Bearer key
        of printable UTF-8 (odd bytes, control characters, over MAX_KEY_LENGTH)."""
        header = request.headers.get("Authorization")
        if header is None:
            return NOBODY
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return NOBODY  # another scheme (Basic from a proxy, say): as if none was sent
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad_header("is not UTF-8") from None
        if len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise _bad_header(f"must be printable and at most {MAX_KEY_LENGTH} characters")
        return self.caller_of_owner(key_hash(key))

    def caller_of_key(self, key: str, field: str = "key") -> Caller:
        """The caller a key sent in a request body or query stands for (AIME's `key` and
        `auth_key`); 400 naming `field` when it is not printable text of at most
        MAX_KEY_LENGTH characters."""
        if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise ApiError(400, f"invalid {field}", {
                field: f"must be printable text of at most {MAX_KEY_LENGTH} characters"})
        return self.caller_of_owner(key_hash(key))

    def caller_of_owner(self, owner: str) -> Caller:
        """The caller whose key hashes to `owner` (no role when the config has no such key)."""
        return Caller(owner, self._roles.get(owner, NO_ROLE))


def _bad_header(why: str) -> ApiError:
    error = unauthorized("client or worker")
    error.fields["Authorization"] = f"the key {why}"
    return error
