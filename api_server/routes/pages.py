"""Browser pages: the index (`/`), the dashboard (`/dashboard`), each endpoint's demo page at its
route, and frontend/'s files under `/static/`.

An endpoint's page is its own `[STATIC] page` (one HTML file in its folder, checked by the config
loader); else, where another endpoint's page has it as its chat tab (that page names it in
`<meta name="jobhive-chat-endpoint" content="NAME">`, as the rag_search page names rag_chat),
its route redirects to that tab (`/rag_chat` to `/rag_search#chat`); else the generic page,
frontend/endpoint.html, which builds its form from the endpoint's schema. The files are found
once, when the app is built: each gets a route of its own, so nothing else (a listing, a path
out of frontend/, a hidden file) can be asked for.
"""

from __future__ import annotations

import asyncio
import re
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


async def _redirect(location: str, request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(location, headers=_HEADERS)


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


# How a custom page names the endpoint its Chat tab asks (frontend/pages/rag.js reads it too).
_CHAT_META = re.compile(
    r"""<meta\s+name=["']jobhive-chat-endpoint["']\s+content=["']([^"']+)["']""", re.IGNORECASE
)


def chat_tabs(endpoints: Mapping[str, Endpoint]) -> dict[str, str]:
    """The endpoints that are the Chat tab of another endpoint's own page, and that tab's URL.

    Args:
        endpoints (Mapping[str, Endpoint]): the loaded endpoints, by name.

    Returns:
        dict[str, str]: endpoint name -> "ROUTE#chat" of the page whose
        `<meta name="jobhive-chat-endpoint">` names it (a page that cannot be read names none).
    """
    tabs: dict[str, str] = {}
    for e in endpoints.values():
        if not e.static.page:
            continue
        try:
            html = (e.folder / e.static.page).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if (match := _CHAT_META.search(html)) and match.group(1) in endpoints:
            tabs.setdefault(match.group(1), f"{e.endpoint.route}#chat")
    return tabs


def page_routes(endpoints: Mapping[str, Endpoint]) -> list[web.RouteDef]:
    """The index, the dashboard, frontend/'s files, and one page per endpoint at its
    `[ENDPOINT] route` (its own, a redirect to the chat tab of another's, or the generic one)."""
    generic = FRONTEND / "endpoint.html"
    tabs = chat_tabs(endpoints)
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
            else web.get(e.endpoint.route, partial(_redirect, tabs[e.name]))
            if e.name in tabs
            else web.get(e.endpoint.route, partial(_file, FRONTEND, generic))
            for e in endpoints.values()
        ),
    ]
