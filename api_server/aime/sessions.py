"""AIME's `client_session_auth_key`: what `/{endpoint}/login` hands out for a client key.

AIME keeps each one in the server's memory (lost at a restart, unknown to a second server,
never expiring, never freed). Here it is a signed token, `OWNER.EXPIRES.MAC`: the owner is the
key's hash (what jobs store as their owner), EXPIRES the end of its life in epoch seconds, and
MAC an HMAC-SHA256 over the endpoint, owner and expiry, keyed by a secret derived from the
client key itself. So any server of the deployment, restarted or not, checks it without
storing anything; it works for its endpoint only, until it expires or its key leaves the
config.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

from api_server.auth import key_hash
from api_server.config import Endpoint

_SECRET_PREFIX = b"jobhive aime session\0"  # keeps the secret apart from key_hash's digest


class SessionKeys:
    """Issues and checks session keys for the client keys of the endpoints.

    Args:
        endpoints (Mapping[str, Endpoint]): their `[CLIENTS] auth_keys`.
        ttl_s (float): how long a session key is good for, in seconds.
        clock (Callable[[], float]): epoch seconds (tests pass a fake one).
    """

    def __init__(self, endpoints: Mapping[str, Endpoint], ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._secrets = {
            key_hash(key): hashlib.sha256(_SECRET_PREFIX + key.encode()).digest()
            for endpoint in endpoints.values() for key in endpoint.clients.auth_keys
        }
        self._ttl_s = ttl_s
        self._clock = clock

    def issue(self, endpoint: str, owner: str) -> str:
        """A session key for the client key whose hash is `owner` (one the config holds)."""
        expires = int(self._clock() + self._ttl_s)
        return f"{owner}.{expires}.{self._mac(endpoint, owner, expires)}"

    def owner(self, endpoint: str, session_key: str) -> str | None:
        """The owner a session key stands for at this endpoint; None when it is not one of
        ours, was issued for another endpoint, has expired, or its key is gone."""
        owner, _, rest = session_key.partition(".")
        expires_text, _, mac = rest.partition(".")
        if owner not in self._secrets or not expires_text.isdigit() or len(expires_text) > 12:
            return None
        expires = int(expires_text)
        if expires < self._clock():
            return None
        return owner if hmac.compare_digest(mac, self._mac(endpoint, owner, expires)) else None

    def _mac(self, endpoint: str, owner: str, expires: int) -> str:
        message = f"{endpoint}\0{owner}\0{expires}".encode()
        return hmac.new(self._secrets[owner], message, hashlib.sha256).hexdigest()[:32]
