"""The browser side over plain HTTP: the index, frontend/'s files under /static/, and each
endpoint's page at its route (its own page, or the generic one). The pages' behaviour is tested
in a real browser by test_browser_pages.py."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from conftest import REPO
from e2e_http import assert_error, echo_variant

FRONTEND = REPO / "frontend"


def raw_get(url: str, path: str) -> int:
    """The status of a GET of `path` exactly as written (no client tidies `..` away)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_index_static_files_and_pages(start_server, endpoints_dir, http):
    custom = echo_variant(endpoints_dir, "custom", ENDPOINT={"route": "/demos/custom"})
    custom.write_text(custom.read_text() + '\n[STATIC]\npage = "page.html"\n')
    (custom.parent / "page.html").write_text("<!doctype html><p>my own page</p>\n")
    server = start_server()
    url = server.url

    index = http.get(url + "/")
    assert index.status_code == 200
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.content == (FRONTEND / "index.html").read_bytes()
    assert index.headers["cache-control"] == "no-cache"
    assert index.headers["x-content-type-options"] == "nosniff"
    assert http.head(url + "/").status_code == 200

    generic = http.get(url + "/echo")
    assert generic.status_code == 200
    assert generic.content == (FRONTEND / "endpoint.html").read_bytes()
    own = http.get(url + "/demos/custom")
    assert (own.status_code, own.text) == (200, "<!doctype html><p>my own page</p>\n")
    assert own.headers["content-type"] == "text/html; charset=utf-8"
    assert_error(http.get(url + "/custom"), 404)  # its route moved
    listing = {e["name"]: e for e in http.get(url + "/api/v1/endpoints").json()["endpoints"]}
    assert listing["custom"]["route"] == "/demos/custom"

    for name, content_type in (
        ("jobhive.js", "text/javascript; charset=utf-8"),  # an ES module needs a JS type
        ("ui.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ):
        reply = http.get(f"{url}/static/{name}")
        assert reply.status_code == 200, name
        assert reply.headers["content-type"] == content_type
        assert reply.content == (FRONTEND / name).read_bytes()
        again = http.get(f"{url}/static/{name}", headers={"If-None-Match": reply.headers["etag"]})
        assert again.status_code == 304  # no-cache: kept, but checked before each use
    assert http.get(url + "/favicon.ico").headers["content-type"] == "image/svg+xml"
    # The dashboard, and the charting library it loads (vendored: its note is not served).
    dashboard = http.get(url + "/dashboard")
    assert dashboard.content == (FRONTEND / "dashboard.html").read_bytes()
    assert "script-src 'self'" in dashboard.headers["content-security-policy"]
    uplot = http.get(url + "/static/vendor/uPlot.iife.min.js")
    assert uplot.headers["content-type"] == "text/javascript; charset=utf-8"
    assert uplot.content == (FRONTEND / "vendor" / "uPlot.iife.min.js").read_bytes()
    assert_error(http.get(url + "/static/vendor/README.md"), 404)


def test_nothing_else_is_served(start_server, http):
    server = start_server()
    for path in ("/static/", "/static", "/static/nope.js", "/static/index", "/nope"):
        assert_error(http.get(server.url + path), 404)
    for path in (
        "/static/../api_server/app.py",
        "/static/%2e%2e/api_server/app.py",
        "/static/..%2fapi_server%2fapp.py",
        "/static//etc/hostname",
        "/static/%2fetc%2fhostname",
        "/echo/../api_server/app.py",
    ):
        assert raw_get(server.url, path) == 404, path


def test_an_endpoint_that_is_another_pages_chat_tab_leads_there(start_server, endpoints_dir,
                                                                 tmp_path, http):
    # rag_chat has no page of its own; the rag_search page names it as its Chat tab.
    server = start_server()
    reply = http.get(server.url + "/rag_chat")
    assert (reply.status_code, reply.headers["location"]) == (302, "/rag_search#chat")
    assert reply.headers["cache-control"] == "no-cache"  # the endpoints may change
    listing = {e["name"]: e for e in http.get(server.url + "/api/v1/endpoints").json()["endpoints"]}
    assert listing["rag_chat"]["route"] == "/rag_chat"  # the listing is as it was
    assert http.get(server.url + "/rag_chat", follow_redirects=True).content == (
        REPO / "endpoints" / "rag_search" / "page.html").read_bytes()

    # Without the search endpoint, rag_chat keeps the generic page.
    alone = tmp_path / "alone"
    alone.mkdir()
    (endpoints_dir / "rag_chat").rename(alone / "rag_chat")
    server = start_server(endpoints=alone, store=tmp_path / "alone.sqlite3")
    reply = http.get(server.url + "/rag_chat")
    assert (reply.status_code, reply.content) == (200, (FRONTEND / "endpoint.html").read_bytes())
