"""The web console: its page at / and /ui/... (the browser routes), its files under /ui/static."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app import __version__
from app.console import INDEX_FILE

router = APIRouter(include_in_schema=False)
STATIC_PATH = "/ui/static"
# Everything the page loads comes from this server: the browser refuses any other host, so a
# stray link to a CDN fails loudly in development instead of leaking requests in production.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _page() -> str:
    # Asset URLs carry the version, so a browser never runs an old script against a new API.
    return INDEX_FILE.read_text().replace("{{static}}", STATIC_PATH).replace(
        "{{version}}", __version__)


@router.get("/", response_class=HTMLResponse)
@router.get("/ui", response_class=HTMLResponse)
@router.get("/ui/{path:path}", response_class=HTMLResponse)
def console_page(path: str = "") -> HTMLResponse:
    """The console's one page; it draws the view its URL names (adapters, train, jobs, ...)."""
    return HTMLResponse(_page(), headers=SECURITY_HEADERS)
