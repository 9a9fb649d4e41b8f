"""The search page: static files served by the HTTP front at ``GET /`` and ``/page/<file>``.

The page (``page/``, package data: an installed wheel carries it) is plain HTML, CSS and one
script that calls the HTTP/JSON API of the same origin (Search, SimilarPapers, ``/readyz``); it
needs no build step and loads nothing from elsewhere. The files are read once, when the app is
made, and the page's root element told the server's longest call (``data-max-deadline-ms``):
the page sends no deadline of its own, so the server's default applies, and gives up on an
answer a little past that longest. The responses forbid anything not from this origin and
inline scripts (CSP), and, as every answer of the HTTP front (http_api), type sniffing.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

TYPES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "icon.svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'; object-src 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


ROOT_TAG = b'<html lang="en">'


def add_routes(app: web.Application, max_deadline_s: float) -> None:
    """``GET /`` (index.html) and ``GET /page/<file>`` for the page's files; other names 404.
    ``max_deadline_s``: serve.max_deadline_s, the longest a search may take here."""
    folder = resources.files("papersearch.gateway").joinpath("page")
    files = {name: (folder.joinpath(name).read_bytes(), kind) for name, kind in TYPES.items()}
    html, kind = files["index.html"]
    if html.count(ROOT_TAG) != 1:
        raise RuntimeError(f"page/index.html: expected one {ROOT_TAG.decode()}")
    told = f'<html lang="en" data-max-deadline-ms="{round(max_deadline_s * 1000)}">'
    files["index.html"] = (html.replace(ROOT_TAG, told.encode()), kind)

    def respond(name: str) -> web.Response:
        body, kind = files[name]
        charset = "utf-8" if kind.startswith("text/") else None
        return web.Response(body=body, content_type=kind, charset=charset, headers=HEADERS)

    async def index(_: web.Request) -> web.StreamResponse:
        return respond("index.html")

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        return respond(name)

    app.router.add_get("/", index)
    app.router.add_get("/page/{name}", asset)
