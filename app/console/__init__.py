"""The web console: static files (no build step) that the app serves at / and /ui/."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
INDEX_FILE = STATIC_DIR / "index.html"
VENDOR_DIR = "vendor"
ENTRY_MODULE = "app.js"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str


@cache
def assets() -> dict[str, Asset]:
    """Every file under static/ by its relative path, read once: the console is ~100 KB, and
    answering from memory keeps a first visit's dozen requests cheap for the server."""
    return {p.relative_to(STATIC_DIR).as_posix(): Asset(p.read_bytes(), TYPES.get(
        p.suffix, mimetypes.guess_type(p.name)[0] or "application/octet-stream"))
        for p in sorted(STATIC_DIR.rglob("*")) if p.is_file()}


def shared_modules() -> list[str]:
    """The modules every page needs (not the vendored library, the entry module or the views,
    which are imported when their page is opened)."""
    return [path for path in assets() if path.endswith(".js") and "/" not in path
            and path != ENTRY_MODULE]
