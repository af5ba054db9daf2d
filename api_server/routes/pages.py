"""Browser pages: the index (`/`), the dashboard (`/dashboard`), each endpoint's demo page at its
route, and frontend/'s files under `/static/`.

An endpoint's page is its own `[STATIC] page` (one HTML file in its folder, checked by the config
loader) or else the generic page, frontend/endpoint.html, which builds its form from the
endpoint's schema. The files are found once, when the app is built: each gets a route of its own,
so nothing else (a listing, a path out of frontend/, a hidden file) can be asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from aiohttp import web

from api_server.config import Endpoint

FRONTEND = (Path(__file__).parents[2] / "frontend").resolve()

CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
}
# No build step, so no hashed file names: browsers keep the files but check (ETag,
# Last-Modified) before each use, and a new version shows at the next load.
_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Pages run only their own scripts and styles; images and audio may be data: or blob: URLs
# (previews and results); no other site may frame them.
_PAGE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "media-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}


async def _file(root: Path, path: Path, request: web.Request) -> web.StreamResponse:
    """Serves a file found at start-up, if it still resolves to a file inside root (a file
    swapped for a symlink since is not followed out)."""
    real = await asyncio.to_thread(_inside, root, path)
    if real is None:
        raise web.HTTPNotFound()
    headers = {"Content-Type": CONTENT_TYPES[path.suffix], **_HEADERS}
    if path.suffix == ".html":
        headers.update(_PAGE_HEADERS)
    return web.FileResponse(real, headers=headers)


def _inside(root: Path, path: Path) -> Path | None:
    real = path.resolve()
    return real if real.is_relative_to(root) and real.is_file() else None


def static_files(folder: Path = FRONTEND) -> dict[str, Path]:
    """The files served under /static/, by their path in the folder: known types only, no
    hidden files or folders, nothing that resolves (through a symlink) to outside it."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.resolve().is_relative_to(folder)
        and path.suffix in CONTENT_TYPES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }


def page_routes(endpoints: Mapping[str, Endpoint]) -> list[web.RouteDef]:
    """The index, the dashboard, frontend/'s files, and one page per endpoint at its
    `[ENDPOINT] route`."""
    generic = FRONTEND / "endpoint.html"
    return [
        web.get("/", partial(_file, FRONTEND, FRONTEND / "index.html")),
        web.get("/favicon.ico", partial(_file, FRONTEND, FRONTEND / "favicon.svg")),
        web.get("/dashboard", partial(_file, FRONTEND, FRONTEND / "dashboard.html")),
        *(
            web.get(f"/static/{name}", partial(_file, FRONTEND, path))
            for name, path in static_files().items()
        ),
        *(
            web.get(e.endpoint.route, partial(_file, e.folder.resolve(), e.folder / e.static.page))
            if e.static.page
            else web.get(e.endpoint.route, partial(_file, FRONTEND, generic))
            for e in endpoints.values()
        ),
    ]
