"""Mounts AIME's protocol on an app (called by `create_app` when it is enabled)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from api_server.aime.cfg import AimeInfo, AimeState
from api_server.aime.clients import client_routes
from api_server.aime.sessions import SessionKeys
from api_server.aime.workers import worker_routes
from api_server.state import AIME, CONFIG, ENDPOINTS


def mount(app: web.Application, infos: Mapping[str, AimeInfo]) -> None:
    """Adds AIME's client and worker routes under `[SERVER] aime_prefix`, for every endpoint
    of the app (those of AIME configs, with `infos`, and those of endpoint.toml files)."""
    config = app[CONFIG]
    app[AIME] = AimeState(config.aime_prefix, dict(infos),
                          SessionKeys(app[ENDPOINTS], config.aime_session_ttl_s))
    app.add_routes(worker_routes(config.aime_prefix))  # fixed paths before client `/{name}`
    app.add_routes(client_routes(config.aime_prefix))
