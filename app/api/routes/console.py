"""The web console: its page at / and /ui/... (the browser routes), its files under /ui/static."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app import __version__
from app.api.auth import KeyRing
from app.console import INDEX_FILE, assets, shared_modules
from app.errors import NotFoundError

router = APIRouter(include_in_schema=False)
# The version is in the files' path: a browser may keep them for good (a new release is a new
# path) and never runs an old script against a new API; modules import each other relatively.
STATIC_PATH = f"/ui/static/{__version__}"
STATIC_HEADERS = {"Cache-Control": "public, max-age=31536000, immutable",
                  "X-Content-Type-Options": "nosniff"}
# Everything the page loads comes from this server: the browser refuses any other host, so a
# stray link to a CDN fails loudly in development instead of leaking requests in production.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _page() -> str:
    # The shared modules are announced up front, so the browser fetches them beside the entry
    # module instead of discovering them one import at a time.
    preload = "\n  ".join(f'<link rel="modulepreload" href="{STATIC_PATH}/{m}">'
                          for m in shared_modules())
    return INDEX_FILE.read_text().replace("{{preload}}", preload).replace(
        "{{static}}", STATIC_PATH).replace("{{version}}", __version__)


@router.get(STATIC_PATH + "/{path:path}")
async def console_file(path: str) -> Response:
    """A file of the console, from memory (async: no thread is needed to answer). Declared
    before the page's catch-all /ui/{path}."""
    found = assets().get(path)
    if found is None:
        raise NotFoundError(f"the console has no file {path!r}")
    return Response(found.body, media_type=found.media_type, headers=STATIC_HEADERS)


@router.get("/", response_class=HTMLResponse)
@router.get("/ui", response_class=HTMLResponse)
@router.get("/ui/{path:path}", response_class=HTMLResponse)
def console_page(request: Request, path: str = "") -> HTMLResponse:
    """The console's one page; it draws the view its URL names (adapters, train, jobs, ...).
    It says whether the service wants keys (not which), so that a service without keys answers
    the first view with one call less."""
    if path.startswith("static/"):  # a file of another release: a 404, not the page as script
        raise NotFoundError(f"the console has no file {path.removeprefix('static/')!r} (this "
                            f"release serves {STATIC_PATH}/)")
    keys: KeyRing | None = getattr(request.app.state, "keys", None)
    required = "off" if keys is not None and not keys.enabled else "required"
    return HTMLResponse(_page().replace("{{keys}}", required), headers=PAGE_HEADERS)
