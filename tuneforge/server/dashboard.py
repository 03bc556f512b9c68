"""The web dashboard: a single page of plain JavaScript modules served at `/`.

`mount(app)` serves `static/index.html` at `/` and the modules, styles and vendored libraries
(`static/vendor/`, each with its licence) under `/ui/`. The files hold no data and need no key;
every piece of data the page shows comes from the API itself (`/v1/...`), called by the page
with the API key the user signs in with (kept in the tab's sessionStorage, sent as the bearer
token: no cookie, so a foreign page cannot ride on it). The few views the API lacks are in
`tuneforge.server.routes.dashboard`, behind the same key and organization checks.

Every dashboard response carries `CSP`: scripts and styles from this server only (no inline
script or style, no `eval`), data calls to this origin only, no framing. The page renders
users' text (dataset lines, model replies, job names) with DOM text nodes, never as HTML.
The Host allowlist of `tuneforge.server.hosts` sits in front of these routes as of any other.

Example:
    >>> app = create_app(settings)   # calls mount(app)
    >>> # then open http://127.0.0.1:8000/ and sign in with an API key
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    """Starlette's static files with the dashboard's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard at `/` and its files under `/ui/`."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=HEADERS)

    app.mount("/ui", _StaticFiles(directory=STATIC_DIR), name="dashboard")
